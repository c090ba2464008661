//! What the tests, the benchmarks and the demo share, kept out of the
//! production binaries' dependency graph:
//!
//! - [`generate`]: writes complete Swaptacular test networks whose
//!   certificates follow the profile of SPEC section 3 (also as the
//!   `swpt-nodedata` binary);
//! - [`Vhost`]: a RabbitMQ virtual host of one test's own, deleted on drop;
//! - [`process`]: the gateway's programs as child processes, and the
//!   local ports they listen on;
//! - [`broker`]: our own AMQP client (lapin), its sink queues and the
//!   messages a node's services send;
//! - [`http`]: a plain GET, for the probes and `/metrics`;
//! - [`shared_data`] and [`skip`]: the Python gateway's test network beside
//!   the repository, and a skip that the test command counts as a skip,
//!   never as a pass.

pub mod broker;
pub mod generate;
pub mod http;
pub mod process;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable naming the file the test command counts skips in.
pub const SKIPS_FILE_VAR: &str = "SWPT_TEST_SKIPS";

/// Records that `test` cannot run here and why: one line on stderr (past
/// the harness's capture) and, when the test command asked for it, one
/// line in the file named by [`SKIPS_FILE_VAR`], which its summary reads.
/// The caller returns right after.
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os(SKIPS_FILE_VAR) {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).create(true).open(path) {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// The Python gateway's test network (`../shared/swpt-test-data` beside
/// the repository), or `None` after recording `test` as skipped.
pub fn shared_data(test: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/swpt-test-data");
    if dir.is_dir() {
        Some(dir)
    } else {
        skip(test, "../shared/swpt-test-data is not beside the repository");
        None
    }
}

/// Runs `rabbitmqctl ARGS`; panics with its error output on failure.
pub fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl must be installed (scripts/ensure-rabbitmq)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A RabbitMQ virtual host of one test's own on the local broker (guest
/// may use it), deleted when the value is dropped, so that tests running
/// side by side never see each other's queues.
pub struct Vhost {
    pub name: String,
    /// `amqp://guest:guest@127.0.0.1:5672/<name>`.
    pub url: String,
}

impl Vhost {
    pub fn new(prefix: &str) -> Vhost {
        let name = format!("swpt-test-{prefix}-{}", std::process::id());
        let _ = Command::new("rabbitmqctl").args(["delete_vhost", &name]).output();
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        let url = format!("amqp://guest:guest@127.0.0.1:5672/{name}");
        Vhost { name, url }
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

/// Copies a directory tree (a node database, to change it in a test).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
