//! swpt-drainer against the real RabbitMQ: replies for a deactivated peer,
//! the queue ends empty, refusals for active and unknown peers.

mod common;

use common::*;
use lapin::types::{AMQPValue, ShortString};
use serde_json::{json, Value};
use std::time::Duration;

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
    ca_drains(&net.ca_dir, &gone, &Vhost::new("drain")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_drains_the_shared_deactivated_aa_peer() {
    let Some(data) = shared_data("ca_drains_the_shared_deactivated_aa_peer") else {
        return;
    };
    ca_drains(&data.join("CA"), "deac00ed", &Vhost::new("drain-shared")).await;
}

/// The CA at `ca_dir` drains its deactivated AA peer `gone`: two
/// RejectedConfig replies, none for the PrepareTransfer, the queue empty,
/// and a clean stop on SIGTERM.
async fn ca_drains(ca_dir: &std::path::Path, gone: &str, vhost: &Vhost) {
    let (_conn, ch) = channel(vhost).await;
    sink_queue(&ch, "creditors_in", "ca_received").await;
    declare_peer_queue(&ch, "to_gone").await;
    let mut pt = prepare_transfer(1);
    pt["debtor_id"] = json!(GONE_DEBTOR);
    let pt = serde_json::to_vec(&pt).unwrap();
    let ca = serde_json::to_vec(&configure_account()).unwrap();
    publish(&ch, "", "to_gone", "PrepareTransfer", &pt).await;
    publish(&ch, "", "to_gone", "ConfigureAccount", &ca).await;
    publish(&ch, "", "to_gone", "ConfigureAccount", &ca).await;

    let mut drainer = spawn("swpt-drainer", &[gone, "to_gone"], ca_dir, &vhost.url, &[]);
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
    wait_for_count(&ch, "to_gone", 0, Duration::from_secs(5)).await;
    assert_eq!(
        message_count(&ch, "ca_received").await,
        0,
        "the PrepareTransfer gets no reply"
    );
    assert_eq!(message_count(&ch, "to_gone.XQ").await, 0, "nothing was rejected");
    // It keeps waiting on an empty queue, and stops cleanly on SIGTERM.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(drainer.0.try_wait().unwrap().is_none());
    drainer.stop_cleanly("drainer on SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drainer_and_configure_queue_refuse_what_they_must() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let vhost = Vhost::new("refuse");
    // (A peer not yet deactivated is waited for: tests/live_reload.rs.)
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

fn prepared_transfer() -> Value {
    json!({"type": "PreparedTransfer", "debtor_id": 0x1234abcd00000001_i64, "creditor_id": 0x0000020000000001_i64,
        "coordinator_type": "agent", "coordinator_id": 0x0000020000000007_i64, "coordinator_request_id": 42,
        "transfer_id": 99, "locked_amount": 10, "recipient": "r", "prepared_at": "2023-01-01T12:00:00+00:00",
        "demurrage_rate": -1.0, "deadline": "2023-01-02T12:00:00+00:00",
        "final_interest_rate_ts": "2023-01-01T12:00:00+00:00", "ts": "2023-01-01T12:00:00+00:00"})
}

/// The AA drains its deactivated CA peer: a FinalizeTransfer for the
/// PreparedTransfer, a ConfigureAccount for each AccountUpdate.
async fn aa_drains(aa_dir: &std::path::Path, gone: &str, vhost: &Vhost) {
    let (_conn, ch) = channel(vhost).await;
    sink_queue(&ch, "accounts_in", "aa_received").await;
    declare_peer_queue(&ch, "to_gone").await;
    let pt = prepared_transfer();
    publish(
        &ch,
        "",
        "to_gone",
        "PreparedTransfer",
        &serde_json::to_vec(&pt).unwrap(),
    )
    .await;
    for _ in 0..2 {
        publish(
            &ch,
            "",
            "to_gone",
            "AccountUpdate",
            &serde_json::to_vec(&account_update(0x0000020000000001, 0x1234abcd00000001)).unwrap(),
        )
        .await;
    }
    let _drainer = spawn("swpt-drainer", &[gone, "to_gone"], aa_dir, &vhost.url, &[]);
    let got = collect(&ch, "aa_received", 3, Duration::from_secs(30)).await;
    let replies: Vec<Value> = got
        .iter()
        .map(|d| serde_json::from_slice(&d.data).unwrap())
        .collect();
    let fin: Vec<&Value> = replies
        .iter()
        .filter(|v| v["type"] == "FinalizeTransfer")
        .collect();
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0]["committed_amount"], json!(0));
    for f in [
        "transfer_id",
        "coordinator_type",
        "coordinator_id",
        "coordinator_request_id",
        "debtor_id",
        "creditor_id",
    ] {
        assert_eq!(fin[0][f], pt[f], "{f}");
    }
    assert_eq!(fin[0]["transfer_note"], json!(""));
    let cfg: Vec<&Value> = replies
        .iter()
        .filter(|v| v["type"] == "ConfigureAccount")
        .collect();
    assert_eq!(cfg.len(), 2);
    for c in cfg {
        assert_eq!(c["negligible_amount"], json!(1e30));
        assert_eq!(c["config_flags"], json!(1));
        assert_eq!(c["seqnum"], json!(0));
        assert_eq!(c["config_data"], json!(""));
    }
    wait_for_count(&ch, "to_gone", 0, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aa_drains_the_shared_deactivated_ca_peer() {
    let Some(data) = shared_data("aa_drains_the_shared_deactivated_ca_peer") else {
        return;
    };
    let vhost = Vhost::new("aadrain-shared");
    aa_drains(&data.join("AA"), "09cab36b6079e09c32a9dfd60446c469", &vhost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aa_drains_a_generated_deactivated_ca_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let vhost = Vhost::new("aadrain-gen");
    aa_drains(&net.aa_dir, net.deactivated_ca_id.as_deref().unwrap(), &vhost).await;
}

/// Restarts the broker's app: run alone (`cargo test -- --ignored
/// --test-threads=1`, as scripts/test does). The drainer must not die with
/// its broker connection: it starts a new session and answers what comes
/// after the restart, without redelivering what it had acked before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts RabbitMQ; scripts/test runs it alone"]
async fn drainer_outlives_a_broker_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let gone = net.deactivated_aa_id.clone().unwrap();
    let vhost = Vhost::new("drain-restart");
    let ca = serde_json::to_vec(&configure_account()).unwrap();
    let mut drainer = {
        let (_conn, ch) = channel(&vhost).await;
        sink_queue(&ch, "creditors_in", "ca_received").await;
        declare_peer_queue(&ch, "to_gone").await;
        publish(&ch, "", "to_gone", "ConfigureAccount", &ca).await;
        let drainer = spawn("swpt-drainer", &[&gone, "to_gone"], &net.ca_dir, &vhost.url, &[]);
        assert_eq!(
            collect(&ch, "ca_received", 1, Duration::from_secs(30))
                .await
                .len(),
            1
        );
        drainer
    };
    let run = |a: &str| std::process::Command::new("rabbitmqctl").arg(a).output().unwrap();
    assert!(run("stop_app").status.success());
    assert!(run("start_app").status.success());
    let (_conn, ch) = channel(&vhost).await;
    publish(&ch, "", "to_gone", "ConfigureAccount", &ca).await;
    let got = collect(&ch, "ca_received", 1, Duration::from_secs(60)).await;
    let v: Value = serde_json::from_slice(&got[0].data).unwrap();
    assert_eq!(v["type"], json!("RejectedConfig"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(message_count(&ch, "ca_received").await, 0, "one reply, no more");
    assert_eq!(message_count(&ch, "to_gone").await, 0);
    assert!(
        drainer.0.try_wait().unwrap().is_none(),
        "the drainer kept running"
    );
    drainer.stop_cleanly("drainer on SIGTERM").await;
}
