//! Records the git commit the binaries are built from, for `--version`:
//! `SWPT_GIT_REVISION` when set (the image build has no `.git`), else the
//! checkout's, else `unknown` (a source tarball).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SWPT_GIT_REVISION");
    let given = std::env::var("SWPT_GIT_REVISION")
        .ok()
        .map(|r| r.trim().chars().take(12).collect::<String>())
        .filter(|r| !r.is_empty() && r != "unknown");
    let commit = given
        .or_else(checkout_commit)
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

/// The commit of the checkout the build runs in, if any.
fn checkout_commit() -> Option<String> {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
