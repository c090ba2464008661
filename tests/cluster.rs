//! A three-node RabbitMQ cluster (`scripts/cluster start`; its URLs in
//! `SWPT_CLUSTER_URLS`): 20,000 messages CA -> AA through swpt-client and
//! swpt-server on quorum queues; mid-stream the node the server is
//! connected to is stopped. Nothing is lost; the gateway carries on
//! through the other nodes. Run alone by `scripts/test` (it stops a
//! broker node).

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const N: i64 = 20_000;
/// When (distinct arrivals) the node is stopped.
const STOP_AT: usize = 5_000;

fn node_name(n: usize) -> String {
    format!("swpt-c{n}@localhost")
}

/// The cluster node (1-3) `program`'s AMQP connection is on, from the
/// connection name the gateway gives its connections, as node `ask`
/// (one that is running) lists the cluster's connections.
fn node_of(program: &str, urls: &[String], ask: usize) -> Option<usize> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "-n",
            &node_name(ask),
            "list_connections",
            "--no-table-headers",
        ])
        .args(["port", "client_properties"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains(&format!("\"{program}\"")))?;
    let port = line.split_whitespace().next()?;
    urls.iter()
        .position(|u| u.ends_with(&format!(":{port}")))
        .map(|i| i + 1)
}

async fn quorum_sink(ch: &lapin::Channel, exchange: &str, queue: &str) {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    sink_queue_with(ch, exchange, queue, args).await
}

/// Publishes PrepareTransfers `0..n` for the AA, confirms awaited in
/// windows.
async fn fill(ch: &lapin::Channel, n: i64) {
    ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut window = Vec::new();
    for i in 0..n {
        let body = serde_json::to_vec(&prepare_transfer(i)).unwrap();
        let props = lapin::BasicProperties::default()
            .with_type("PrepareTransfer".into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let confirm = ch
            .basic_publish(
                "creditors_out",
                CA_OUT_KEY,
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
            .unwrap();
        window.push(confirm);
        if window.len() == 500 {
            for c in window.drain(..) {
                assert!(c.await.unwrap().is_ack());
            }
        }
    }
    for c in window {
        assert!(c.await.unwrap().is_ack());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the cluster of scripts/cluster; scripts/test runs it alone"]
async fn cluster_node_loss_loses_nothing() {
    let Ok(list) = std::env::var("SWPT_CLUSTER_URLS") else {
        swpt_testkit::skip(
            "cluster_node_loss_loses_nothing",
            "SWPT_CLUSTER_URLS is not set (scripts/cluster start; scripts/cluster urls)",
        );
        return;
    };
    let urls: Vec<String> = list.split(',').map(str::to_string).collect();
    assert_eq!(urls.len(), 3, "{list}");
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());

    // Topology on quorum queues, made through the first node.
    {
        let (conn, ch) = channel_at(&urls[0]).await;
        quorum_sink(&ch, "accounts_in", "cluster.received").await;
        let _ = ch
            .queue_purge("cluster.received", QueuePurgeOptions::default())
            .await;
        let _ = conn.close(200, "ok").await;
    }
    let out = run(
        "configure-queue",
        &["1234abcd", "cluster.to_aa", "--queue-type", "quorum"],
        &net.ca_dir,
        &list,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The gateway, given every node's URL.
    let port = peer_port(&net.ca_dir, "1234abcd");
    let http = free_port();
    let env = [
        ("SWPT_SERVER_PORT", port.to_string()),
        ("APP_HTTP_PORT", http.to_string()),
    ];
    let env = env_refs(&env);
    let (_server, server_log) = spawn_logged_env("swpt-server", &[], &net.aa_dir, &list, &env);
    wait_http(http, "/readyz", 200, Duration::from_secs(30)).await;
    let _client = spawn(
        "swpt-client",
        &["1234abcd", "cluster.to_aa"],
        &net.ca_dir,
        &list,
        &[],
    );
    let victim = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(n) = node_of("swpt-server", &urls, 1) {
                break n;
            }
            assert!(Instant::now() < deadline, "the server's connection is not listed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // The test's own connection, on another node.
    let ours = urls[victim % 3].clone();
    let (_conn, ch) = channel_at(&ours).await;
    let mut received = Collector::new(&ch, "cluster.received").await;
    let filling = {
        let (_c2, ch2) = channel_at(&ours).await;
        tokio::spawn(async move {
            fill(&ch2, N).await;
            drop(_c2);
        })
    };

    let started = Instant::now();
    let mut counts: HashMap<i64, u32> = HashMap::new();
    let mut stopped_at = None;
    while (counts.len() as i64) < N {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {} of {N} arrived (node {victim} stopped at {stopped_at:?})",
            counts.len()
        );
        if let Some(d) = received.next(Duration::from_secs(5)).await {
            *counts.entry(request_id(&d)).or_default() += 1;
        }
        if stopped_at.is_none() && counts.len() >= STOP_AT {
            swpt_testkit::rabbitmqctl(&["-n", &node_name(victim), "stop_app"]);
            stopped_at = Some(counts.len());
        }
    }
    filling.await.unwrap();
    while let Some(d) = received.next(Duration::from_secs(2)).await {
        *counts.entry(request_id(&d)).or_default() += 1;
    }
    let duplicates: u32 = counts.values().map(|c| c - 1).sum();
    println!(
        "cluster: {N} messages in {:.1} s, node {victim} stopped after {} arrivals, {} duplicates",
        started.elapsed().as_secs_f64(),
        stopped_at.unwrap_or(0),
        duplicates
    );
    assert_eq!(counts.len() as i64, N, "every message arrived");
    assert!(stopped_at.is_some(), "the node was stopped mid-stream");
    // The server is connected again, through another node.
    wait_http(http, "/readyz", 200, Duration::from_secs(30)).await;
    let now_on = node_of("swpt-server", &urls, victim % 3 + 1);
    assert!(now_on.is_some_and(|n| n != victim), "{now_on:?}");
    let log = server_log.lock().unwrap().clone();
    assert!(
        log.contains("the RabbitMQ connection was lost; reconnecting"),
        "{log}"
    );
    swpt_testkit::rabbitmqctl(&["-n", &node_name(victim), "start_app"]);
}
