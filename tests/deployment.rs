//! What an operator meets when deploying: no secret in `--help` or the
//! logs, `--version` with the commit, exit statuses that tell a bad
//! configuration from a failure, private keys kept private.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

const SECRET_URL: &str = "amqp://gateway:s3cret-pw@127.0.0.1:1/vhost";
const BINARIES: [&str; 4] = ["swpt-server", "swpt-client", "swpt-drainer", "configure-queue"];

#[test]
fn help_never_shows_the_broker_password() {
    for name in BINARIES {
        let out = Command::new(bin(name))
            .arg("--help")
            .env("PROTOCOL_BROKER_URL", SECRET_URL)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("PROTOCOL_BROKER_URL"), "{name}: {help}");
        assert!(
            !help.contains("s3cret"),
            "{name} --help shows the password:\n{help}"
        );
    }
}

#[test]
fn version_names_the_commit() {
    for name in BINARIES.iter().chain(&["swpt-broker-check"]) {
        let out = Command::new(bin(name)).arg("--version").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {text}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{name}: {text}");
        let commit = text.split("(commit ").nth(1).and_then(|r| r.split(')').next());
        let commit = commit.unwrap_or_else(|| panic!("{name}: no commit in {text}"));
        assert!(
            commit == "unknown" || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
            "{name}: {text}"
        );
    }
}

#[test]
fn one_binary_runs_every_program_by_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let gateway = env!("CARGO_BIN_EXE_swpt-gateway");
    for name in BINARIES
        .iter()
        .chain(&["swpt-doctor", "swpt-broker-check", "swpt-probe"])
    {
        // Called by a link named as the program, and by its first argument.
        let link = tmp.path().join(name);
        std::os::unix::fs::symlink(gateway, &link).unwrap();
        for out in [
            Command::new(&link).arg("--version").output().unwrap(),
            Command::new(gateway).args([name, "--version"]).output().unwrap(),
        ] {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.starts_with(&format!("{name} ")),
                "{name}: {text}"
            );
        }
    }
    let out = Command::new(gateway).arg("swpt-nothing").output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("no program named \"swpt-nothing\"") && said.contains("swpt-server"),
        "{said}"
    );
}

#[test]
fn configuration_errors_exit_2_runtime_errors_1() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let broker = "amqp://guest:guest@127.0.0.1:5672";
    // A bad internal setting, for every binary.
    for name in BINARIES {
        let out = Command::new(bin(name))
            .args(
                ["1234abcd", "q"]
                    .iter()
                    .take(if name == "swpt-server" { 0 } else { 2 }),
            )
            .env("APP_SSL_HANDSHAKE_TIMEOUT", "-3")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A node database that cannot be read; a key file that is not a key.
    let out = Command::new(bin("swpt-server"))
        .env("SWPT_NODEDATA_URL", "file:///nonexistent/db")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let bad_key = tmp.path().join("bad.key");
    std::fs::write(&bad_key, "not a key").unwrap();
    let mut client = node_command("swpt-client", &net.ca_dir, broker);
    client.args(["1234abcd", "q"]);
    let out = client.env("SWPT_SERVER_KEY", &bad_key).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.key"));
    // SPEC: configure-queue for a peer not in the database exits 1.
    let out = run("configure-queue", &["abcdef01", "q"], &net.aa_dir, broker);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn generated_keys_are_private_and_a_readable_key_is_warned_of() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    for dir in [&net.aa_dir, &net.ca_dir, &net.da_dir] {
        let mode = std::fs::metadata(dir.join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", dir.display());
    }
    let key = net.aa_dir.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The server reads its key once at start, and says so once.
    let port = free_port().to_string();
    let (mut server, log) = spawn_logged(
        "swpt-server",
        &["-p", &port],
        &net.aa_dir,
        "amqp://127.0.0.1:5672",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(wait_for_log(
        &log,
        "is readable by others",
        Duration::from_secs(10),
    ));
    server.sigterm();
    let _ = server.0.wait();
    let log = log.lock().unwrap().clone();
    assert_eq!(log.matches("is readable by others").count(), 1, "{log}");
    assert!(log.contains("chmod 600"), "{log}");
}

#[tokio::test]
async fn broker_errors_hide_the_password() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    // Nothing listens on port 1: the client retries, logging the failure.
    let (mut client, log) = spawn_logged("swpt-client", &["1234abcd", "q"], &net.ca_dir, SECRET_URL);
    wait_for_log(
        &log,
        "cannot connect to RabbitMQ at amqp://gateway:***@127.0.0.1:1/vhost",
        Duration::from_secs(20),
    )
    .await;
    client.sigterm();
    let _ = client.0.wait();
    let log = log.lock().unwrap().clone();
    assert!(!log.contains("s3cret"), "{log}");
    let out = run("configure-queue", &["1234abcd", "q"], &net.ca_dir, SECRET_URL);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success());
    assert!(
        text.contains("gateway:***@") && !text.contains("s3cret"),
        "{text}"
    );
}

/// `major.minor` of a version such as `1.95.0` or `1.95`.
fn minor(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

#[test]
fn one_toolchain_version_for_cargo_the_image_and_ci() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("Cargo.toml declares rust-version");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let builder = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .and_then(|l| l.split('-').next())
        .expect("the Dockerfile builds FROM rust:<version>-...");
    // The toolchain this suite (and so CI) is built with.
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .unwrap();
    let rustc = String::from_utf8_lossy(&rustc.stdout);
    let ci = rustc
        .split_whitespace()
        .nth(1)
        .expect("rustc --version names its version");
    assert_eq!(
        minor(declared),
        minor(builder),
        "Cargo.toml rust-version vs the Dockerfile's builder"
    );
    assert_eq!(
        minor(declared),
        minor(ci),
        "Cargo.toml rust-version vs the toolchain CI builds with ({rustc})"
    );
}
