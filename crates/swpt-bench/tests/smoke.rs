//! The throughput benchmark end to end, small: it must carry every
//! message through a real swpt-client and swpt-server (the debug builds
//! beside this test's binary) and print each figure the README promises.
//! Speed is not asserted here; the figures are for people to read.

use std::path::Path;
use std::process::Command;

/// A vhost of this test's own, deleted on drop.
struct Vhost(String);

impl Vhost {
    fn new() -> Vhost {
        let name = format!("swpt-test-bench-{}", std::process::id());
        let ctl = |args: &[&str]| {
            let out = Command::new("rabbitmqctl")
                .args(args)
                .output()
                .expect("rabbitmqctl must be installed");
            assert!(
                out.status.success(),
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("rabbitmqctl").args(["delete_vhost", &name]).output();
        ctl(&["add_vhost", &name]);
        ctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        Vhost(name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .output();
    }
}

/// The number after `prefix` on the line that starts with it.
fn figure(out: &str, prefix: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line \"{prefix}...\" in:\n{out}"));
    line[prefix.len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no figure after \"{prefix}\" in \"{line}\""))
}

#[test]
fn throughput_runs_both_paths_and_prints_every_figure() {
    let bench = Path::new(env!("CARGO_BIN_EXE_swpt-bench"));
    if !bench.with_file_name("swpt-server").is_file() || !bench.with_file_name("swpt-client").is_file() {
        eprintln!(
            "SKIPPED: the gateway's binaries are not built beside {} (run cargo test --workspace)",
            bench.display()
        );
        return;
    }
    let vhost = Vhost::new();
    let out = Command::new(bench)
        .args(["throughput", "-n", "300", "-b", "20", "-r", "2"])
        .env(
            "PROTOCOL_BROKER_URL",
            format!("amqp://guest:guest@127.0.0.1:5672/{}", vhost.0),
        )
        .output()
        .expect("run swpt-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "swpt-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("300 messages, buffer 20, medians of 2 rounds"),
        "{stdout}"
    );
    for prefix in [
        "broker limit (consume + republish with confirms): ",
        "gateway (swpt-client -> swpt-server over TLS): ",
        "ratio gateway / broker limit: ",
        "CPU per message (server + client): ",
        "peak RSS swpt-server: ",
        "peak RSS swpt-client: ",
    ] {
        assert!(
            figure(&stdout, prefix) > 0.0,
            "{prefix} must be positive:\n{stdout}"
        );
    }
    // RabbitMQ runs on this machine in the test set-up, so its CPU is read.
    assert!(stdout.contains("RabbitMQ CPU per message: "), "{stdout}");
}
