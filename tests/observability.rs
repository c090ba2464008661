//! The HTTP endpoints of the running binaries (`APP_HTTP_PORT`): real
//! flows through server, client and drainer, read over HTTP: `/readyz`
//! flips with the broker and the link, the counters match the messages
//! moved, the histograms have samples, the expiry gauges match the
//! certificates.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WAIT: Duration = Duration::from_secs(30);

/// Seconds from now until the first certificate of `pem` expires.
fn expires_in(pem: &Path) -> f64 {
    let text = std::fs::read(pem).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
    let cert = pem.parse_x509().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    (cert.validity().not_after.timestamp() - now) as f64
}

fn close_to(got: Option<f64>, want: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("no {what}"));
    assert!((got - want).abs() <= 5.0, "{what}: {got}, expected about {want}");
}

fn recreate_vhost(vhost: &Vhost) {
    swpt_testkit::rabbitmqctl(&["add_vhost", &vhost.name]);
    swpt_testkit::rabbitmqctl(&["set_permissions", "-p", &vhost.name, "guest", ".*", ".*", ".*"]);
}

/// Runs `swpt-probe` against a port: whether it succeeded, and what it said.
fn run_probe(probe: &Path, port: u16) -> (bool, String) {
    let out = std::process::Command::new(probe)
        .env("APP_HTTP_PORT", port.to_string())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_client_endpoints_follow_a_real_flow() {
    let bed = Bed::new("observe").await;
    let Bed { net, vhost, ch, .. } = &bed;
    sink_queue(ch, "accounts_in", "received").await;
    configure_queue(&net.ca_dir, "1234abcd", "to_aa", &vhost.url);
    let (server_http, client_http) = (free_port(), free_port());
    let port = peer_port(&net.ca_dir, "1234abcd");

    // The client first: alive, not ready while no server listens.
    let client_env = [("APP_HTTP_PORT", client_http.to_string())];
    let client_env = env_refs(&client_env);
    let _client = ca_client(net, &vhost.url, &client_env);
    wait_http(client_http, "/healthz", 200, WAIT).await;
    let why = wait_http(client_http, "/readyz", 503, WAIT).await;
    assert!(why.contains("no link established"), "{why}");
    assert_eq!(http_get(client_http, "/nowhere").await.0, 404);
    // The image's health check: `swpt-probe`, a link to `swpt-gateway`.
    let probe = bed.tmp.path().join("swpt-probe");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_swpt-gateway"), &probe).unwrap();
    let (ok, said) = run_probe(&probe, client_http);
    assert!(
        !ok && said.contains("/readyz: 503") && said.contains("no link established"),
        "{said}"
    );

    let server_env = [
        ("APP_HTTP_PORT", server_http.to_string()),
        ("SWPT_SERVER_PORT", port.to_string()),
    ];
    let server_env = env_refs(&server_env);
    let mut server = spawn("swpt-server", &[], &net.aa_dir, &vhost.url, &server_env);
    wait_http(server_http, "/readyz", 200, WAIT).await;
    wait_http(client_http, "/readyz", 200, WAIT).await;
    let (ok, said) = run_probe(&probe, client_http);
    assert!(ok, "{said}");

    // 200 messages and one the client dead-letters.
    let n = 200;
    queue_for_aa(ch, 0..n / 2).await;
    publish(ch, "creditors_out", CA_OUT_KEY, "PrepareTransfer", b"{not json").await;
    queue_for_aa(ch, n / 2..n).await;
    wait_for_count(ch, "received", n as u32, WAIT).await;

    let ca = &net.ca_id;
    let pt = format!("{{peer=\"{ca}\",type=\"PrepareTransfer\"}}");
    let page = wait_metric(
        server_http,
        &format!("swpt_server_sends_published_total{pt}"),
        n as f64,
        WAIT,
    )
    .await;
    assert_eq!(
        metric(&page, &format!("swpt_server_sends_received_total{pt}")),
        Some(n as f64)
    );
    assert_eq!(
        metric(&page, &format!("swpt_server_sends_refused_total{pt}")),
        Some(0.0)
    );
    assert_eq!(
        metric(&page, &format!("swpt_server_connections{{peer=\"{ca}\"}}")),
        Some(1.0)
    );
    assert_eq!(
        metric(&page, "swpt_publish_confirm_seconds_count"),
        Some(n as f64)
    );
    assert_eq!(metric(&page, "swpt_confirms_pending"), Some(0.0));
    assert_eq!(
        metric(&page, "swpt_broker_blocked"),
        Some(0.0),
        "RabbitMQ does not block the server"
    );
    assert!(metric(&page, "process_resident_memory_bytes").is_some_and(|v| v > 0.0));
    assert!(metric(&page, "process_open_fds").is_some_and(|v| v > 0.0));
    close_to(
        metric(&page, "swpt_own_certificate_expiry_seconds"),
        expires_in(&net.aa_dir.join("server.crt")),
        "server certificate expiry",
    );
    close_to(
        metric(
            &page,
            &format!("swpt_peer_certificate_expiry_seconds{{certificate=\"root\",peer=\"{ca}\"}}"),
        ),
        expires_in(&net.aa_dir.join(format!("peers/{ca}/root-ca.crt"))),
        "peer root expiry",
    );
    close_to(
        metric(
            &page,
            &format!("swpt_peer_certificate_expiry_seconds{{certificate=\"sub-ca\",peer=\"{ca}\"}}"),
        ),
        expires_in(&net.aa_dir.join(format!("peers/{ca}/sub-ca.crt"))),
        "peer sub-CA expiry",
    );

    let link = "{peer=\"1234abcd\",queue=\"to_aa\"}";
    let page = wait_metric(
        client_http,
        &format!("swpt_client_acked_total{link}"),
        n as f64,
        WAIT,
    )
    .await;
    assert_eq!(
        metric(&page, &format!("swpt_client_sent_total{link}")),
        Some(n as f64)
    );
    assert_eq!(
        metric(&page, &format!("swpt_client_dead_lettered_total{link}")),
        Some(1.0)
    );
    assert_eq!(metric(&page, &format!("swpt_client_link_up{link}")), Some(1.0));
    assert_eq!(
        metric(&page, &format!("swpt_client_receipt_seconds_count{link}")),
        Some(n as f64)
    );
    promtool_check("promtool_check_metrics_client", &page);
    let (_, server_page) = http_get(server_http, "/metrics").await;
    promtool_check("promtool_check_metrics_server", &server_page);
    // Connection refused while no server listened: each try counted.
    let tries = metric(&page, &format!("swpt_client_reconnects_total{link}")).unwrap();
    assert!(tries >= 1.0, "{tries}");

    // A TLS handshake that fails is counted by its reason.
    {
        use tokio::io::AsyncWriteExt;
        let mut junk = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        junk.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    }
    wait_metric(
        server_http,
        "swpt_tls_handshake_failures_total{reason=\"protocol\"}",
        1.0,
        WAIT,
    )
    .await;

    // The server goes away: the client's link is down, and it is not
    // ready; it is again once a server is back.
    server.sigkill();
    wait_http(client_http, "/readyz", 503, WAIT).await;
    let page = wait_metric(client_http, &format!("swpt_client_link_up{link}"), 0.0, WAIT).await;
    assert!(metric(&page, &format!("swpt_client_reconnects_total{link}")).is_some_and(|v| v > tries));
    let _server = spawn("swpt-server", &[], &net.aa_dir, &vhost.url, &server_env);
    wait_http(client_http, "/readyz", 200, WAIT).await;
    wait_metric(client_http, &format!("swpt_client_link_up{link}"), 1.0, WAIT).await;

    // The broker goes away (the vhost deleted): the server is not ready;
    // it is again once the broker is back.
    swpt_testkit::rabbitmqctl(&["delete_vhost", &vhost.name]);
    let why = wait_http(server_http, "/readyz", 503, WAIT).await;
    assert!(why.contains("RabbitMQ"), "{why}");
    recreate_vhost(vhost);
    wait_http(server_http, "/readyz", 200, WAIT).await;
}

/// `promtool check metrics` on a page (Prometheus' own lint of the
/// exposition); a machine without promtool records a skip.
fn promtool_check(test: &str, page: &str) {
    use std::io::Write;
    let promtool = std::env::var("SWPT_PROMTOOL").unwrap_or_else(|_| "promtool".to_string());
    let child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        swpt_testkit::skip(
            test,
            &format!("no {promtool} here (Debian's prometheus package has it)"),
        );
        return;
    };
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );
}

/// The lines of a page that name `peer`.
fn peer_series(page: &str, peer: &str) -> usize {
    let label = format!("peer=\"{peer}\"");
    page.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .count()
}

/// Marks `peer` deactivated in the node database at `node`.
fn deactivate(node: &Path, peer: &str) {
    let dir = node.join("peers").join(peer);
    std::fs::remove_file(dir.join("ACTIVE")).unwrap();
    std::fs::write(dir.join("DEACTIVATED"), "").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_exist_at_zero_and_go_with_the_peer() {
    let bed = Bed::new("zero").await;
    let Bed { net, vhost, ch, .. } = &bed;
    sink_queue(ch, "accounts_in", "received").await;
    configure_queue(&net.ca_dir, "1234abcd", "to_aa", &vhost.url);
    let (server_http, client_http) = (free_port(), free_port());
    let port = peer_port(&net.ca_dir, "1234abcd");
    let server_env = [
        ("APP_HTTP_PORT", server_http.to_string()),
        ("SWPT_SERVER_PORT", port.to_string()),
        ("APP_NODEDATA_POLL_SECONDS", "1".to_string()),
    ];
    let _server = spawn(
        "swpt-server",
        &[],
        &net.aa_dir,
        &vhost.url,
        &env_refs(&server_env),
    );
    wait_http(server_http, "/readyz", 200, WAIT).await;
    // Before any connection: every reason at zero, no peer's series.
    let (_, page) = http_get(server_http, "/metrics").await;
    for reason in ["timeout", "certificate", "protocol", "closed"] {
        let series = format!("swpt_tls_handshake_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&page, &series), Some(0.0), "{series}");
    }
    for reason in ["unknown_peer", "invalid_subject", "too_many_connections"] {
        let series = format!("swpt_server_connections_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&page, &series), Some(0.0), "{series}");
    }
    let ca = &net.ca_id;
    assert_eq!(
        peer_series(&page, ca),
        2,
        "only the expiry gauges of the peer:\n{page}"
    );

    let client_env = [
        ("APP_HTTP_PORT", client_http.to_string()),
        ("APP_NODEDATA_POLL_SECONDS", "1".to_string()),
    ];
    let _client = ca_client(net, &vhost.url, &env_refs(&client_env));
    wait_http(client_http, "/readyz", 200, WAIT).await;
    // Connected, nothing sent: the peer's series are there, at zero.
    let page = wait_metric(
        server_http,
        &format!("swpt_server_connections{{peer=\"{ca}\"}}"),
        1.0,
        WAIT,
    )
    .await;
    for msg_type in ["AccountUpdate", "PrepareTransfer", "other"] {
        for family in ["received", "published", "refused"] {
            let series = format!("swpt_server_sends_{family}_total{{peer=\"{ca}\",type=\"{msg_type}\"}}");
            assert_eq!(metric(&page, &series), Some(0.0), "{series}");
        }
    }
    let per_peer = peer_series(&page, ca);
    assert!(per_peer <= 40, "{per_peer} series for one peer:\n{page}");
    let link = "{peer=\"1234abcd\",queue=\"to_aa\"}";
    let (_, page) = http_get(client_http, "/metrics").await;
    for family in ["sent", "acked", "dead_lettered", "reconnects"] {
        let series = format!("swpt_client_{family}_total{link}");
        assert_eq!(metric(&page, &series), Some(0.0), "{series}");
    }
    let per_link = peer_series(&page, "1234abcd");
    assert!(per_link <= 40, "{per_link} series for one link:\n{page}");

    // The peer deactivated: its series go.
    deactivate(&net.aa_dir, ca);
    poll_until(WAIT, || async {
        let (_, page) = http_get(server_http, "/metrics").await;
        match peer_series(&page, ca) {
            0 => Ok(()),
            n => Err(format!("{n} series of the deactivated peer left:\n{page}")),
        }
    })
    .await;
    deactivate(&net.ca_dir, "1234abcd");
    poll_until(WAIT, || async {
        let (_, page) = http_get(client_http, "/metrics").await;
        match peer_series(&page, "1234abcd") {
            0 => Ok(()),
            n => Err(format!("{n} series of the deactivated link left:\n{page}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drainer_endpoints_count_what_it_drains() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let gone = net.deactivated_aa_id.clone().unwrap();
    let vhost = Vhost::new("observe-drain");
    let (_conn, ch) = channel(&vhost).await;
    sink_queue(&ch, "creditors_in", "ca_received").await;
    declare_peer_queue(&ch, "to_gone").await;
    let http = free_port();
    let env = [("APP_HTTP_PORT", http.to_string())];
    let env = env_refs(&env);
    let mut drainer = spawn("swpt-drainer", &[&gone, "to_gone"], &net.ca_dir, &vhost.url, &env);
    wait_http(http, "/readyz", 200, WAIT).await;

    // A ConfigureAccount is answered, a PrepareTransfer is not.
    let debtor = i64::from_str_radix(&gone, 16).unwrap() << 32 | 1;
    let configure = json!({"type": "ConfigureAccount", "debtor_id": debtor, "creditor_id": 0x0000080100000001_i64,
        "negligible_amount": 2.5, "config_data": "", "config_flags": 0, "seqnum": 1, "ts": "2023-01-01T12:00:00+00:00"});
    let mut pt = prepare_transfer(1);
    pt["debtor_id"] = json!(debtor);
    for _ in 0..3 {
        publish(
            &ch,
            "",
            "to_gone",
            "ConfigureAccount",
            &serde_json::to_vec(&configure).unwrap(),
        )
        .await;
    }
    publish(
        &ch,
        "",
        "to_gone",
        "PrepareTransfer",
        &serde_json::to_vec(&pt).unwrap(),
    )
    .await;
    wait_for_count(&ch, "ca_received", 3, WAIT).await;
    let series = format!("{{peer=\"{gone}\",queue=\"to_gone\"}}");
    let page = wait_metric(http, &format!("swpt_drainer_consumed_total{series}"), 4.0, WAIT).await;
    assert_eq!(
        metric(&page, &format!("swpt_drainer_replied_total{series}")),
        Some(3.0)
    );
    assert_eq!(metric(&page, "swpt_publish_confirm_seconds_count"), Some(3.0));
    promtool_check("promtool_check_metrics_drainer", &page);
    // A deactivated peer's certificates page no one: no expiry series.
    assert_eq!(peer_series(&page, &gone), 2, "consumed and replied only:\n{page}");
    drainer.sigterm();
    let _ = drainer.0.wait();
}

#[tokio::test]
async fn a_busy_http_port_is_a_configuration_error() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let mut cmd = node_command(
        "swpt-client",
        &net.ca_dir,
        "amqp://guest:guest@127.0.0.1:5672/none",
    );
    cmd.args(["1234abcd", "to_aa", "--http-port", &port]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("APP_HTTP_PORT") && stderr.contains(&port),
        "{stderr}"
    );
}
