//! Records the git commit the binaries are built from, for `--version`
//! (`unknown` outside a git checkout, as in a source tarball).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SWPT_GIT_COMMIT={commit}");
    // A new commit changes HEAD or the branch it points to. Only paths
    // that exist are named: cargo takes a missing one (a clone without
    // packed-refs) as always changed, and would rebuild every time.
    println!("cargo:rerun-if-changed=build.rs");
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
