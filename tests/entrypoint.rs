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
