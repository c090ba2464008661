//! One client process for many links (`swpt-client --links FILE`): the
//! AA's client sends to the CA and the DA from one process; one peer's
//! server killed leaves the other link unaffected; the links file edited
//! live starts and ends links (nothing lost, nothing twice).

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// `n` AccountUpdates for the CA, published on the AA's side.
async fn to_ca(ch: &lapin::Channel, from: i64, n: i64) {
    for i in from..from + n {
        let v = account_update(0x0000010100000000 + i, 0x1234abcd00000001);
        publish(
            ch,
            "to_creditors",
            "00.00.01.01.00.00.00.00",
            "AccountUpdate",
            &serde_json::to_vec(&v).unwrap(),
        )
        .await;
    }
}

/// `n` AccountPurges for the DA, published on the AA's side.
async fn to_da(ch: &lapin::Channel, n: i64) {
    for _ in 0..n {
        // The DA receives messages about its debtors' root accounts only.
        let v = json!({"type": "AccountPurge", "debtor_id": 0x1234abcd00000001_i64, "creditor_id": 0,
            "creation_date": "2020-01-01", "ts": "2023-01-01T12:00:00+00:00"});
        publish(
            ch,
            "to_debtors",
            "12.34.ab.cd.00.00.00.01",
            "AccountPurge",
            &serde_json::to_vec(&v).unwrap(),
        )
        .await;
    }
}

fn server(node: &Path, port: u16, vhost: &Vhost) -> Proc {
    spawn(
        "swpt-server",
        &[],
        node,
        &vhost.url,
        &[("SWPT_SERVER_PORT", &port.to_string())],
    )
}

async fn one_client_many_peers(n: &Nodes, vhost: &Vhost, tmp: &Path) {
    let (_c, ch) = channel(vhost).await;
    sink_queue(&ch, "creditors_in", "ca_received").await;
    sink_queue(&ch, "debtors_in", "da_received").await;
    configure_queue(&n.aa, &n.ca_id, "to_ca", &vhost.url);
    configure_queue(&n.aa, &n.da_id, "to_da", &vhost.url);
    let (ca_port, da_port) = (peer_port(&n.aa, &n.ca_id), peer_port(&n.aa, &n.da_id));
    let mut ca_server = server(&n.ca, ca_port, vhost);
    let _da_server = server(&n.da, da_port, vhost);
    wait_port(ca_port).await;
    wait_port(da_port).await;

    let links = tmp.join("links");
    let both = format!(
        "# the AA's peers\n{} to_ca\n\n{} to_da  # the DA\n",
        n.ca_id, n.da_id
    );
    std::fs::write(&links, &both).unwrap();
    let env = [("APP_NODEDATA_POLL_SECONDS", "1")];
    let links_arg = links.to_str().unwrap();
    let (mut client, log) = spawn_logged_env("swpt-client", &["--links", links_arg], &n.aa, &vhost.url, &env);
    to_ca(&ch, 0, 20).await;
    to_da(&ch, 20).await;
    wait_for_count(&ch, "ca_received", 20, WAIT).await;
    wait_for_count(&ch, "da_received", 20, WAIT).await;
    // Receipted and acked before the server dies: a message published but
    // not yet receipted would rightly be sent again (at least once).
    wait_for_acks(vhost, "to_ca", WAIT).await;

    // The CA's server dies: the DA's link goes on.
    ca_server.sigkill();
    to_ca(&ch, 20, 20).await;
    to_da(&ch, 20).await;
    wait_for_count(&ch, "da_received", 40, WAIT).await;
    assert_eq!(message_count(&ch, "ca_received").await, 20);
    let _ca_server = server(&n.ca, ca_port, vhost);
    wait_for_count(&ch, "ca_received", 40, WAIT).await;

    // The DA's line removed: its link ends, its messages wait in the queue.
    std::fs::write(&links, format!("{} to_ca\n", n.ca_id)).unwrap();
    wait_for_log(&log, "removed from the links file", WAIT).await;
    // The DA's link has ended (its connection's last line) before more is
    // published for it; until then it may still send what arrives.
    let deadline = tokio::time::Instant::now() + WAIT;
    let ended = |log: &str| {
        log.lines()
            .any(|l| l.contains("connection ended") && l.contains("queue=to_da"))
    };
    while !ended(&log.lock().unwrap()) {
        assert!(tokio::time::Instant::now() < deadline, "{}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    to_da(&ch, 10).await;
    to_ca(&ch, 40, 10).await;
    wait_for_count(&ch, "ca_received", 50, WAIT).await;
    wait_for_count(&ch, "to_da", 10, WAIT).await;
    assert_eq!(message_count(&ch, "da_received").await, 40);
    // ... and back: they are sent, once.
    std::fs::write(&links, &both).unwrap();
    wait_for_count(&ch, "da_received", 50, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(message_count(&ch, "da_received").await, 50);
    assert_eq!(message_count(&ch, "ca_received").await, 50);

    client.sigterm();
    let status = client.0.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", log.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_process_serves_several_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let nodes = generated(tmp.path());
    one_client_many_peers(&nodes, &Vhost::new("links"), tmp.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_process_serves_the_shared_aa_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(nodes) = shared("one_client_process_serves_the_shared_aa_peers", tmp.path()) else {
        return;
    };
    one_client_many_peers(&nodes, &Vhost::new("links-shared"), tmp.path()).await;
}

#[test]
fn a_bad_links_file_is_a_configuration_error() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let links = tmp.path().join("links");
    std::fs::write(&links, "1234abcd to_aa\n1234abcd\n").unwrap();
    let out = run(
        "swpt-client",
        &["--links", links.to_str().unwrap()],
        &net.ca_dir,
        "amqp://127.0.0.1:1/none",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("links") && stderr.contains("line 2"), "{stderr}");
    // PEER QUEUE and --links together are refused by the command line.
    let out = run(
        "swpt-client",
        &["1234abcd", "q", "--links", "x"],
        &net.ca_dir,
        "amqp://127.0.0.1:1/none",
    );
    assert_eq!(out.status.code(), Some(2));
}
