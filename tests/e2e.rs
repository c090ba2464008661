//! End to end: real RabbitMQ, real TLS, the real binaries.

mod common;

use common::*;
use lapin::types::{AMQPValue, ShortString};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

fn header<'a>(d: &'a lapin::message::Delivery, name: &str) -> &'a AMQPValue {
    d.properties
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .get(&ShortString::from(name))
        .unwrap()
}

/// Runs CA -> AA with `n` good messages (and optional poison ones) over the
/// node databases in `aa_dir` and `ca_dir`.
async fn ca_to_aa(vhost: &Vhost, aa_dir: &Path, ca_dir: &Path, aa_port: u16, n: i64, poison: bool) {
    ca_to_aa_with(
        vhost,
        aa_dir,
        ca_dir,
        aa_port,
        n,
        poison.then_some(&b"{not json"[..]),
    )
    .await
}

/// Like `ca_to_aa`, with `poison` (if any) published in the middle.
async fn ca_to_aa_with(
    vhost: &Vhost,
    aa_dir: &Path,
    ca_dir: &Path,
    aa_port: u16,
    n: i64,
    poison: Option<&[u8]>,
) {
    let (_conn, ch) = channel(vhost).await;
    sink_queue(&ch, "accounts_in", "aa_received").await;
    configure_queue(ca_dir, "1234abcd", "to_aa", &vhost.url);
    let port = aa_port.to_string();
    let _server = spawn(
        "swpt-server",
        &[],
        aa_dir,
        &vhost.url,
        &[("SWPT_SERVER_PORT", &port)],
    );
    wait_port(aa_port).await;
    for i in 0..n {
        if let Some(poison) = poison.filter(|_| i == n / 2) {
            publish(&ch, "creditors_out", CA_OUT_KEY, "PrepareTransfer", poison).await;
        }
        queue_for_aa(&ch, i..i + 1).await;
    }
    let _client = spawn("swpt-client", &["1234abcd", "to_aa"], ca_dir, &vhost.url, &[]);
    let got = collect(&ch, "aa_received", n as usize, Duration::from_secs(60)).await;
    let mut seen = std::collections::HashSet::new();
    for d in &got {
        let v: Value = serde_json::from_slice(&d.data).unwrap();
        let mut expected = prepare_transfer(v["coordinator_request_id"].as_i64().unwrap());
        expected["creditor_id"] = json!(0x0000010000000001_i64);
        expected["coordinator_id"] = json!(0x0000010000000001_i64);
        assert_eq!(v, expected);
        seen.insert(v["coordinator_request_id"].as_i64().unwrap());
        assert_eq!(d.properties.kind().as_ref().unwrap().as_str(), "PrepareTransfer");
        assert_eq!(
            d.properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(d.properties.app_id().as_ref().unwrap().as_str(), "swpt_stomp");
        assert_eq!(*d.properties.delivery_mode(), Some(2));
        assert_eq!(
            header(d, "debtor-id"),
            &AMQPValue::LongLongInt(0x1234abcd00000001)
        );
        assert_eq!(
            header(d, "creditor-id"),
            &AMQPValue::LongLongInt(0x0000010000000001)
        );
        assert_eq!(
            header(d, "coordinator-type"),
            &AMQPValue::LongString("direct".into())
        );
        assert_eq!(
            header(d, "message-type"),
            &AMQPValue::LongString("PrepareTransfer".into())
        );
        assert_eq!(
            d.routing_key.as_str(),
            smp_json::routing_key(&[0x1234abcd00000001, 0x0000010000000001])
        );
    }
    assert_eq!(seen.len(), n as usize, "every message arrived");
    // The client acks everything: the queue ends empty.
    wait_for_count(&ch, "to_aa", 0, Duration::from_secs(10)).await;
    if poison.is_some() {
        assert_eq!(
            message_count(&ch, "to_aa.XQ").await,
            1,
            "the poison message is dead-lettered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_to_aa_generated_network_1000_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let vhost = Vhost::new("ca2aa");
    let aa_port = nodedata::parse_manifest(
        &std::fs::read_to_string(net.ca_dir.join("peers/1234abcd/nodeinfo/stomp.toml")).unwrap(),
        "x",
    )
    .unwrap()
    .servers[0]
        .port;
    ca_to_aa(&vhost, &net.aa_dir, &net.ca_dir, aa_port, 1000, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_and_the_rest_arrive() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let vhost = Vhost::new("poison");
    let aa_port = peer_port(&net.ca_dir, "1234abcd");
    ca_to_aa(&vhost, &net.aa_dir, &net.ca_dir, aa_port, 100, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_to_aa_shared_test_network() {
    let Some(data) = shared_data("ca_to_aa_shared_test_network") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let aa = tmp.path().join("AA");
    let ca = tmp.path().join("CA");
    copy_dir(&data.join("AA"), &aa);
    copy_dir(&data.join("CA"), &ca);
    let port = free_port();
    std::fs::write(
        ca.join("peers/1234abcd/nodeinfo/stomp.toml"),
        format!("servers = [\"127.0.0.1:{port}\"]\nhost = \"/\"\ndestination = \"/exchange/accounts_in\"\n"),
    )
    .unwrap();
    let vhost = Vhost::new("shared");
    ca_to_aa(&vhost, &aa, &ca, port, 1000, false).await;
}

/// A message the client passes but the server refuses (its timestamp is
/// three hours ahead) would stop the link for good: the client
/// dead-letters it when the server's ERROR names it, and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_server_refuses_is_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let vhost = Vhost::new("refused");
    let aa_port = peer_port(&net.ca_dir, "1234abcd");
    let mut future = prepare_transfer(-1);
    let ahead = smp_json::Timestamp::from_unix_micros(smp_json::now_micros() + 3 * 3600 * 1_000_000);
    future["ts"] = json!(ahead.to_iso());
    let body = serde_json::to_vec(&future).unwrap();
    ca_to_aa_with(&vhost, &net.aa_dir, &net.ca_dir, aa_port, 100, Some(&body)).await;
}
