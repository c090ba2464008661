//! The container image run as the field runs it (`scripts/image smoke`
//! builds it and runs these, ignored otherwise): every program's
//! `--version`, the broker check, configure-queue, server and client
//! through `entrypoint.sh` against the local RabbitMQ, messages end to
//! end, the probes and the health check, SIGTERM within the grace, a
//! read-only root filesystem, uid:gid 1000:1000. Every container uses the
//! host's network (docker/podman/containers.conf).

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);
const PROGRAMS: [&str; 7] = [
    "swpt-server",
    "swpt-client",
    "swpt-drainer",
    "configure-queue",
    "swpt-doctor",
    "swpt-broker-check",
    "swpt-probe",
];
/// Where the node data is mounted, read-only.
const NODEDATA: &str = "/var/lib/swpt-nodedata";

/// The image under test, or a recorded skip saying why there is none.
fn image(test: &str) -> Option<String> {
    let Ok(image) = std::env::var("SWPT_IMAGE") else {
        swpt_testkit::skip(test, "SWPT_IMAGE is not set (scripts/image smoke sets it)");
        return None;
    };
    if !podman(&["image", "exists", &image]).status.success() {
        swpt_testkit::skip(test, &format!("podman cannot run here, or has no image {image}"));
        return None;
    }
    Some(image)
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .env(
            "CONTAINERS_CONF",
            concat!(env!("CARGO_MANIFEST_DIR"), "/docker/podman/containers.conf"),
        )
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A container removed on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.0]);
    }
}

/// `podman run` as the field runs the image: read-only root filesystem
/// without podman's tmpfs mounts (as Kubernetes' readOnlyRootFilesystem),
/// the node data mounted read-only.
fn run_args<'a>(node: Option<&'a str>, env: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["--read-only", "--read-only-tmpfs=false"];
    if let Some(mount) = node {
        args.extend(["-v", mount]);
    }
    for e in env {
        args.extend(["-e", e]);
    }
    args
}

/// The environment of a node's program in the container.
fn node_env(broker: &str, extra: &[(&str, String)]) -> Vec<String> {
    let mut env = vec![
        format!("SWPT_NODEDATA_URL=file://{NODEDATA}"),
        format!("SWPT_SERVER_CERT={NODEDATA}/server.crt"),
        format!("SWPT_SERVER_KEY={NODEDATA}/server.key"),
        format!("PROTOCOL_BROKER_URL={broker}"),
    ];
    env.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
    env
}

fn start(image: &str, name: &str, node: &Path, env: &[String], command: &[&str]) -> Container {
    let mount = format!("{}:{NODEDATA}:ro", node.display());
    let mut args = vec!["run", "-d", "--name", name];
    args.extend(run_args(Some(&mount), env));
    args.push(image);
    args.extend(command);
    let out = podman(&args);
    assert!(out.status.success(), "podman run {name}: {}", text(&out));
    Container(name.to_string())
}

/// The node data readable by the containers' user, as an operator's
/// volume would be (generated keys are 0600 to their maker).
fn give_to_uid_1000(dir: &Path) {
    std::os::unix::fs::chown(dir, Some(1000), Some(1000)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            give_to_uid_1000(&path);
        } else {
            std::os::unix::fs::lchown(&path, Some(1000), Some(1000)).unwrap();
        }
    }
}

/// `podman container inspect` of one field.
fn inspect(container: &str, format: &str) -> String {
    let out = podman(&["container", "inspect", "--format", format, container]);
    assert!(out.status.success(), "podman inspect {container}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `podman image inspect`, as JSON.
fn image_config(image: &str) -> serde_json::Value {
    let out = podman(&["image", "inspect", image]);
    assert!(
        out.status.success(),
        "podman image inspect {image}: {}",
        text(&out)
    );
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    all[0].clone()
}

#[test]
#[ignore = "needs a built image: scripts/image smoke"]
fn the_image_is_as_the_field_needs_it() {
    let Some(image) = image("the_image_is_as_the_field_needs_it") else {
        return;
    };
    let config = image_config(&image);
    assert_eq!(config["Config"]["User"], "1000:1000");
    let label = |name: &str| {
        config["Labels"][format!("org.opencontainers.image.{name}")]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let revision = label("revision");
    assert!(
        revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()),
        "{revision}"
    );
    let version = label("version");
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert!(label("source").starts_with("https://"), "{config}");
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "swpt-probe", "/readyz"])
    );
    let env = config["Config"]["Env"].to_string();
    assert!(env.contains("APP_HTTP_PORT=8080"), "{env}");
    // No curl, no iproute2: the programs and the shell's tools only.
    for tool in ["curl", "ip", "openssl"] {
        let out = podman(&[
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            &image,
            "-c",
            &format!("command -v {tool}"),
        ]);
        assert!(!out.status.success(), "{tool} is in the image: {}", text(&out));
    }
    let id = podman(&["run", "--rm", "--entrypoint", "id", &image]);
    let id = String::from_utf8_lossy(&id.stdout);
    assert_eq!(id.trim(), "uid=1000(swpt) gid=1000(swpt) groups=1000(swpt)");
    // Every program answers --version through the entrypoint, naming the
    // revision it was built from.
    for program in PROGRAMS {
        let mut args = vec!["run", "--rm"];
        args.extend(run_args(None, &[]));
        args.extend([image.as_str(), program, "--version"]);
        let out = podman(&args);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{program}: {said}{}", text(&out));
        assert_eq!(
            said.trim(),
            format!("{program} {version} (commit {})", &revision[..12])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a built image: scripts/image smoke"]
async fn the_image_carries_messages_end_to_end() {
    let Some(image) = image("the_image_carries_messages_end_to_end") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    give_to_uid_1000(tmp.path());
    let vhost = Vhost::new("image");
    let (_conn, ch) = channel(&vhost).await;
    sink_queue(&ch, "accounts_in", "received").await;

    let check = |url: &str| {
        let mut args = vec!["run", "--rm"];
        args.extend(run_args(None, &[]));
        args.extend([image.as_str(), "swpt-broker-check", url]);
        podman(&args)
    };
    let out = check(&vhost.url);
    assert!(out.status.success(), "{}", text(&out));
    let out = check("amqp://guest:guest@127.0.0.1:1");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // configure-queue through `entrypoint.sh test`, as an init container.
    let tag = std::process::id();
    let env = node_env(&vhost.url, &[]);
    let mount = format!("{}:{NODEDATA}:ro", net.ca_dir.display());
    let mut args = vec!["run", "--rm"];
    args.extend(run_args(Some(&mount), &env));
    args.extend([image.as_str(), "test", "configure-queue", "1234abcd", "ca_to_aa"]);
    let out = podman(&args);
    assert!(out.status.success(), "configure-queue: {}", text(&out));
    assert!(text(&out).contains("RabbitMQ is up."), "{}", text(&out));

    let (server_http, client_http) = (free_port(), free_port());
    let port = peer_port(&net.ca_dir, "1234abcd");
    let server_env = node_env(
        &vhost.url,
        &[
            ("SWPT_SERVER_PORT", port.to_string()),
            ("APP_HTTP_PORT", server_http.to_string()),
        ],
    );
    let server_name = format!("swpt-image-server-{tag}");
    let server = start(&image, &server_name, &net.aa_dir, &server_env, &[]);
    let client_env = node_env(&vhost.url, &[("APP_HTTP_PORT", client_http.to_string())]);
    let client_name = format!("swpt-image-client-{tag}");
    let client = start(
        &image,
        &client_name,
        &net.ca_dir,
        &client_env,
        &["swpt-client", "1234abcd", "ca_to_aa"],
    );
    wait_http(server_http, "/readyz", 200, WAIT).await;
    wait_http(client_http, "/readyz", 200, WAIT).await;

    let n = 200;
    queue_for_aa(&ch, 0..n).await;
    wait_for_count(&ch, "received", n as u32, WAIT).await;
    let page = wait_metric(
        server_http,
        &format!(
            "swpt_server_sends_published_total{{peer=\"{}\",type=\"PrepareTransfer\"}}",
            net.ca_id
        ),
        n as f64,
        WAIT,
    )
    .await;
    assert!(page.contains("swpt_broker_blocked 0"), "{page}");
    // The image's health check, as the engine runs it.
    for name in [&server_name, &client_name] {
        let out = podman(&["healthcheck", "run", name]);
        assert!(out.status.success(), "health check of {name}: {}", text(&out));
    }

    // SIGTERM: each stops by itself, with status 0, well within the grace.
    for container in [&client, &server] {
        let started = Instant::now();
        let out = podman(&["stop", "-t", "20", &container.0]);
        assert!(out.status.success(), "{}", text(&out));
        let took = started.elapsed();
        let code = inspect(&container.0, "{{.State.ExitCode}}");
        assert_eq!(code, "0", "{} exited with {code}", container.0);
        assert!(
            took < Duration::from_secs(18),
            "{} took {took:?} to stop",
            container.0
        );
        let logs = text(&podman(&["logs", &container.0]));
        assert!(!logs.contains("Read-only file system"), "{logs}");
    }
    assert_eq!(
        message_count(&ch, "received").await,
        n as u32,
        "nothing duplicated"
    );
}
