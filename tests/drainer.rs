//! swpt-drainer against the real RabbitMQ: replies for a deactivated peer,
//! the queue ends empty, refusals for active and unknown peers.

mod common;

use common::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::{json, Value};
use std::time::Duration;

async fn declare_peer_queue(ch: &lapin::Channel, queue: &str) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(&format!("{queue}.XQ"), durable, FieldTable::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(LongString::from(format!("{queue}.XQ").as_str())),
    );
    ch.queue_declare(queue, durable, args).await.unwrap();
}

/// A debtor of the deactivated AA `deac00ed`.
const GONE_DEBTOR: i64 = 0xdeac00ed00000001_u64 as i64;

/// A regular (not trade) account of the CA: bits 32-39 are not zero.
const REGULAR_CREDITOR: i64 = 0x0000080100000001;

fn configure_account() -> Value {
    json!({"type": "ConfigureAccount", "debtor_id": GONE_DEBTOR, "creditor_id": REGULAR_CREDITOR,
        "negligible_amount": 2.5, "config_data": "cfg", "config_flags": 0, "seqnum": 7, "ts": "2023-01-01T12:00:00+00:00"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_drains_a_deactivated_aa_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let gone = net.deactivated_aa_id.clone().unwrap();
    let vhost = Vhost::new("drain");
    let (_conn, ch) = vhost.channel().await;
    sink_queue(&ch, "creditors_in", "ca_received").await;
    declare_peer_queue(&ch, "to_gone").await;
    let mut pt = prepare_transfer(1);
    pt["debtor_id"] = json!(GONE_DEBTOR);
    let pt = serde_json::to_vec(&pt).unwrap();
    let ca = serde_json::to_vec(&configure_account()).unwrap();
    publish(&ch, "", "to_gone", "PrepareTransfer", &pt).await;
    publish(&ch, "", "to_gone", "ConfigureAccount", &ca).await;
    publish(&ch, "", "to_gone", "ConfigureAccount", &ca).await;

    let mut drainer = spawn("swpt-drainer", &[&gone, "to_gone"], &net.ca_dir, &vhost.url, &[]);
    let got = collect(&ch, "ca_received", 2, Duration::from_secs(30)).await;
    for d in &got {
        let v: Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(v["type"], json!("RejectedConfig"));
        assert_eq!(
            v["creditor_id"],
            json!(REGULAR_CREDITOR),
            "the original creditor ID"
        );
        assert_eq!(v["debtor_id"], json!(GONE_DEBTOR));
        assert_eq!(v["config_ts"], json!("2023-01-01T12:00:00+00:00"));
        assert_eq!(v["config_seqnum"], json!(7));
        assert_eq!(v["config_data"], json!("cfg"));
        assert_eq!(v["negligible_amount"], json!(2.5));
        assert_eq!(v["rejection_code"], json!("NO_CONNECTION_TO_DEBTOR"));
        let h = d.properties.headers().as_ref().unwrap().inner();
        assert_eq!(
            h.get(&ShortString::from("ca-creditors")),
            Some(&AMQPValue::Boolean(true))
        );
        assert_eq!(
            h.get(&ShortString::from("ca-trade")),
            Some(&AMQPValue::Boolean(false))
        );
    }
    for _ in 0..50 {
        if message_count(&ch, "to_gone").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(message_count(&ch, "to_gone").await, 0);
    assert_eq!(
        message_count(&ch, "ca_received").await,
        0,
        "the PrepareTransfer gets no reply"
    );
    assert_eq!(message_count(&ch, "to_gone.XQ").await, 0, "nothing was rejected");
    // It keeps waiting on an empty queue, and stops cleanly on SIGTERM.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(drainer.0.try_wait().unwrap().is_none());
    drainer.sigterm();
    let status = tokio::task::spawn_blocking(move || drainer.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drainer_and_configure_queue_refuse_what_they_must() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let vhost = Vhost::new("refuse");
    let out = run("swpt-drainer", &["1234abcd", "q"], &net.ca_dir, &vhost.url);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has not been deactivated"));
    let out = run("swpt-drainer", &["abcdef01", "q"], &net.ca_dir, &vhost.url);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not in the node database"));
    let gone = net.deactivated_aa_id.clone().unwrap();
    let out = run("swpt-drainer", &[&gone, "missing_queue"], &net.ca_dir, &vhost.url);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("configure-queue", &[&gone, "q"], &net.ca_dir, &vhost.url);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has been deactivated"));
    let out = run("configure-queue", &["abcdef01", "q"], &net.ca_dir, &vhost.url);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_queue_routes_by_subnet_for_every_pairing() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let vhost = Vhost::new("topology");
    let (_conn, ch) = vhost.channel().await;
    // (node, peer, main exchange, a key inside, a key outside)
    let cases = [
        (
            &net.aa_dir,
            net.ca_id.clone(),
            "to_creditors",
            "00.00.01.00.00.00.00.05",
            Some("00.00.02.00.00.00.00.05"),
        ),
        (
            &net.aa_dir,
            net.da_id.clone(),
            "to_debtors",
            "12.34.ab.cd.00.00.00.05",
            Some("12.34.ab.cd.01.00.00.05"),
        ),
        (
            &net.ca_dir,
            "1234abcd".to_string(),
            "creditors_out",
            "12.34.ab.cd.00.00.00.05",
            Some("12.34.ab.ce.00.00.00.05"),
        ),
        (
            &net.da_dir,
            "1234abcd".to_string(),
            "debtors_out",
            "anything",
            None,
        ),
    ];
    for (i, (node, peer, exchange, inside, outside)) in cases.iter().enumerate() {
        let queue = format!("q{i}");
        for _ in 0..2 {
            let out = run("configure-queue", &[peer, &queue], node, &vhost.url);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        publish(&ch, exchange, inside, "AccountPurge", b"{}").await;
        if let Some(outside) = outside {
            publish(&ch, exchange, outside, "AccountPurge", b"{}").await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            message_count(&ch, &queue).await,
            1,
            "{exchange}: only the key inside the subnet arrives"
        );
    }
}
