//! entrypoint.sh outside a container, against the built binaries.

use std::path::PathBuf;
use std::process::Command;

fn entrypoint(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_swpt-server"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/entrypoint.sh"))
        .args(args)
        .env("PATH", path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn each_command_reaches_its_binary() {
    for (cmd, marker) in [
        (
            "swpt-server",
            "Accepts mutually authenticated TLS STOMP connections",
        ),
        ("swpt-client", "Consumes a RabbitMQ queue of messages for a peer"),
        ("swpt-drainer", "Consumes the queue of a deactivated peer"),
        ("configure-queue", "Declares the exchanges, bindings and queues"),
    ] {
        let (ok, out) = entrypoint(&[cmd, "--help"], &[]);
        assert!(ok, "{cmd}: {out}");
        assert!(out.contains(marker), "{cmd}: {out}");
    }
    let (ok, out) = entrypoint(&["echo", "anything", "else"], &[]);
    assert!(ok);
    assert_eq!(out.trim(), "anything else");
}

#[test]
fn localhost_is_rewritten_in_the_named_variables() {
    let env = [
        ("DOCKER_HOST_IP", "172.17.0.1"),
        ("SUBSTITUTE_LOCALHOST_IN_VARS", "PROTOCOL_BROKER_URL OTHER_URL"),
        ("PROTOCOL_BROKER_URL", "amqp://guest:guest@localhost:5672"),
        ("OTHER_URL", "http://localhost/x"),
        ("UNTOUCHED", "amqp://localhost:5672"),
    ];
    let (ok, out) = entrypoint(
        &["sh", "-c", "echo $PROTOCOL_BROKER_URL $OTHER_URL $UNTOUCHED"],
        &env,
    );
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        "amqp://guest:guest@172.17.0.1:5672 http://172.17.0.1/x amqp://localhost:5672"
    );
    // A host that merely starts with "localhost" is left alone.
    let env = [
        ("DOCKER_HOST_IP", "172.17.0.1"),
        ("SUBSTITUTE_LOCALHOST_IN_VARS", "U"),
        ("U", "amqp://localhostess:5672"),
    ];
    let (_, out) = entrypoint(&["sh", "-c", "echo $U"], &env);
    assert_eq!(out.trim(), "amqp://localhostess:5672");
}

#[test]
fn every_url_of_a_list_is_rewritten() {
    let env = [
        ("DOCKER_HOST_IP", "10.1.2.3"),
        ("SUBSTITUTE_LOCALHOST_IN_VARS", "U"),
        (
            "U",
            "amqp://guest:guest@localhost:5672,amqp://localhost/vh,amqp://localhostess,amqps://u@localhost",
        ),
    ];
    let (ok, out) = entrypoint(&["sh", "-c", "echo $U"], &env);
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        "amqp://guest:guest@10.1.2.3:5672,amqp://10.1.2.3/vh,amqp://localhostess,amqps://u@10.1.2.3"
    );
}

#[test]
fn the_gateway_comes_from_the_routing_table_without_iproute2() {
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let Some(hex) = route
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[1] == "00000000" && f[2] != "00000000")
        .map(|f| f[2].to_string())
    else {
        swpt_testkit::skip(
            "the_gateway_comes_from_the_routing_table",
            "this machine has no default route",
        );
        return;
    };
    let gw = u32::from_str_radix(&hex, 16).unwrap().to_le_bytes();
    let want = format!("amqp://{}.{}.{}.{}:5672", gw[0], gw[1], gw[2], gw[3]);
    let env = [
        ("SUBSTITUTE_LOCALHOST_IN_VARS", "U"),
        ("U", "amqp://localhost:5672"),
    ];
    let (ok, out) = entrypoint(&["sh", "-c", "echo $U"], &env);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), want);
}

#[test]
fn test_without_a_command_fails() {
    let (ok, out) = entrypoint(
        &["test"],
        &[("PROTOCOL_BROKER_URL", "amqp://guest:guest@127.0.0.1:1")],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("'test' needs a command"), "{out}");
}

#[test]
fn test_command_waits_for_the_broker_then_runs() {
    let (ok, out) = entrypoint(
        &["test", "echo", "ran"],
        &[
            ("PROTOCOL_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672"),
            ("SUBSTITUTE_LOCALHOST_IN_VARS", ""),
        ],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("RabbitMQ is up.") && out.trim_end().ends_with("ran"),
        "{out}"
    );
}
