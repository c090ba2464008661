//! The throughput benchmark end to end, small: it must carry every
//! message through a real swpt-client and swpt-server (the debug builds
//! beside this test's binary) and print each figure the README promises.
//! Speed is not asserted here; the figures are for people to read.

use std::path::Path;
use std::process::Command;
use swpt_testkit::{skip, Vhost};

/// The number after `prefix` on the line that starts with it.
fn figure(out: &str, prefix: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line \"{prefix}...\" in:\n{out}"));
    line[prefix.len()..]
        .split_whitespace()
        .next()
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no figure after \"{prefix}\" in \"{line}\""))
}

/// Runs `swpt-bench ARGS` in a vhost of its own and returns its standard
/// output; `None` (the test skips) when the gateway's binaries are not
/// built beside it.
fn bench(name: &str, args: &[&str]) -> Option<String> {
    let bench = Path::new(env!("CARGO_BIN_EXE_swpt-bench"));
    if !bench.with_file_name("swpt-server").is_file() || !bench.with_file_name("swpt-client").is_file() {
        let why = format!(
            "the gateway's binaries are not built beside {} (run cargo test --workspace)",
            bench.display()
        );
        skip(&format!("swpt-bench {name}"), &why);
        return None;
    }
    let vhost = Vhost::new(&format!("bench-{name}"));
    let out = Command::new(bench)
        .args(args)
        .env("PROTOCOL_BROKER_URL", &vhost.url)
        .output()
        .expect("run swpt-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "swpt-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(stdout)
}

#[test]
fn latency_times_both_paths() {
    let Some(stdout) = bench("latency", &["latency", "-n", "20", "-r", "50"]) else {
        return;
    };
    for prefix in [
        "broker alone (one persistent hop): p50 ",
        "through the gateway (two hops, TLS, STOMP): p50 ",
    ] {
        assert!(
            figure(&stdout, prefix) > 0.0,
            "{prefix} must be positive:\n{stdout}"
        );
    }
}

#[test]
fn scale_holds_every_peer_and_receipts_every_message() {
    let Some(stdout) = bench("scale", &["scale", "-p", "5", "-s", "3", "--every", "1"]) else {
        return;
    };
    assert_eq!(figure(&stdout, "connected: "), 5.0, "{stdout}");
    assert_eq!(figure(&stdout, "dropped: "), 0.0, "{stdout}");
    let sent = figure(&stdout, "messages sent: ");
    assert!(sent >= 5.0, "{stdout}");
    assert!(
        stdout.contains(&format!("receipted: {sent}")),
        "every message receipted:\n{stdout}"
    );
    assert!(figure(&stdout, "server RSS per peer: ") > 0.0, "{stdout}");
}

#[test]
fn throughput_runs_both_paths_and_prints_every_figure() {
    // Enough messages for the CPU time of both processes to span several
    // clock ticks (10 ms; the gateway spends ~25 us a message).
    let Some(stdout) = bench("throughput", &["throughput", "-n", "3000", "-b", "50", "-r", "2"]) else {
        return;
    };
    assert!(
        stdout.contains("3000 messages, buffer 50, medians of 2 rounds"),
        "{stdout}"
    );
    for prefix in [
        "broker limit (consume + republish with confirms): ",
        "gateway (swpt-client -> swpt-server over TLS): ",
        "ratio gateway / broker limit: ",
        "CPU per message (server + client): ",
        "CPU ratio gateway (server + client) / limit loop: ",
        "context switches per message: server ",
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
