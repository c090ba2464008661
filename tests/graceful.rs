//! Rolling restarts: SIGTERM to the server, the client or the drainer in
//! the middle of a stream of 20,000 messages (the stop lands while the
//! source queue has deliveries in flight, checked before the signal),
//! then a restart: every message arrives exactly once, and the stopped
//! process exits 0 within the grace period.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

const N: i64 = 20_000;
/// `APP_SHUTDOWN_GRACE_SECONDS`'s default.
const GRACE: Duration = Duration::from_secs(15);

/// Counts the ids arriving in `received` (by `id_of`) until all `n` are
/// there, then keeps reading until it has been quiet for a second (to
/// catch late duplicates).
async fn count_ids(
    received: &mut Collector,
    counts: &mut HashMap<i64, u32>,
    id_of: fn(&lapin::message::Delivery) -> i64,
    until: i64,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    while (counts.len() as i64) < until {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {until} distinct messages arrived",
            counts.len()
        );
        if let Some(d) = received.next(Duration::from_secs(5)).await {
            *counts.entry(id_of(&d)).or_default() += 1;
        }
    }
}

/// Reads what is left in `received` until it is quiet for a second.
async fn count_rest(
    received: &mut Collector,
    counts: &mut HashMap<i64, u32>,
    id_of: fn(&lapin::message::Delivery) -> i64,
) {
    while let Some(d) = received.next(Duration::from_secs(1)).await {
        *counts.entry(id_of(&d)).or_default() += 1;
    }
}

fn assert_exactly_once(counts: &HashMap<i64, u32>) {
    let dups: Vec<(&i64, &u32)> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert_eq!(counts.len() as i64, N, "every message arrived");
    assert!(
        dups.is_empty(),
        "{} messages arrived twice or more: {:?}",
        dups.len(),
        &dups[..dups.len().min(10)]
    );
}

/// Waits until `n` distinct ids have arrived, checks that `source` has
/// deliveries in flight, and sends SIGTERM to `proc`: returns how long it
/// took to exit, after asserting it exited 0.
async fn stop_mid_stream(
    ch: &lapin::Channel,
    vhost: &Vhost,
    source: &str,
    received: &mut Collector,
    counts: &mut HashMap<i64, u32>,
    id_of: fn(&lapin::message::Delivery) -> i64,
    mut proc: Proc,
) -> Duration {
    count_ids(received, counts, id_of, N / 5, Duration::from_secs(120)).await;
    let in_flight = unacked(vhost, source);
    let waiting = message_count(ch, source).await;
    proc.sigterm();
    let started = Instant::now();
    assert!(in_flight > 0, "the stop must land while deliveries are in flight");
    assert!(waiting > 0, "the stop must land mid-stream");
    let status = tokio::task::spawn_blocking(move || {
        let child: &mut Child = &mut proc.0;
        child.wait().unwrap()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    println!("SIGTERM with {in_flight} deliveries unacked and {waiting} waiting in \"{source}\"; exited {status:?} after {took:?}");
    assert!(status.success(), "SIGTERM ends the process with 0: {status:?}");
    assert!(took < GRACE, "exited within the grace period: {took:?}");
    took
}

/// After the restart: every message arrives; `last` (the client, or the
/// drainer) stops cleanly; nothing arrived twice, and `source` is empty.
async fn exactly_once_after_restart(
    ch: &lapin::Channel,
    source: &str,
    received: &mut Collector,
    counts: &mut HashMap<i64, u32>,
    id_of: fn(&lapin::message::Delivery) -> i64,
    last: Proc,
) {
    count_ids(received, counts, id_of, N, Duration::from_secs(180)).await;
    last.stop_cleanly("the restarted process on SIGTERM").await;
    count_rest(received, counts, id_of).await;
    assert_exactly_once(counts);
    assert_eq!(message_count(ch, source).await, 0, "every message was acked");
}

/// Large windows, so that many publishes are unconfirmed at any moment.
type Log = std::sync::Arc<std::sync::Mutex<String>>;

const BUFFERS: [(&str, &str); 2] = [("SWPT_SERVER_BUFFER", "1000"), ("SWPT_CLIENT_BUFFER", "1000")];

/// The AA's server of `net` on `port`, with [`BUFFERS`], listening, and
/// its log.
async fn start_server(net: &swpt_testkit::generate::Devnet, vhost: &Vhost, port: u16) -> (Proc, Log) {
    let port = port.to_string();
    let (p, log) = spawn_logged(
        "swpt-server",
        &["-p", &port, "-b", "1000", "-l", "info"],
        &net.aa_dir,
        &vhost.url,
    );
    wait_port(port.parse().unwrap()).await;
    (p, log)
}

/// The CA's client of `net`, with [`BUFFERS`].
fn start_client(net: &swpt_testkit::generate::Devnet, vhost: &Vhost) -> Proc {
    ca_client(net, &vhost.url, &BUFFERS)
}

/// A CA -> AA stream of `N` PrepareTransfers under way.
async fn stream(
    net: &swpt_testkit::generate::Devnet,
    vhost: &Vhost,
    ch: &lapin::Channel,
) -> ((Proc, Log), Proc, u16) {
    sink_queue(ch, "accounts_in", "received").await;
    configure_queue(&net.ca_dir, "1234abcd", "to_aa", &vhost.url);
    let port = peer_port(&net.ca_dir, "1234abcd");
    let server = start_server(net, vhost, port).await;
    queue_for_aa(ch, 0..N).await;
    (server, start_client(net, vhost), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sigterm_mid_stream_loses_and_duplicates_nothing() {
    let bed = Bed::new("graceful-server").await;
    let Bed { net, vhost, ch, .. } = &bed;
    let ((server, log), client, port) = stream(net, vhost, ch).await;
    let mut received = Collector::new(ch, "received").await;
    let mut counts = HashMap::new();
    stop_mid_stream(ch, vhost, "to_aa", &mut received, &mut counts, request_id, server).await;
    // The session drained: it waited for the publishes in flight, and
    // receipted them before it closed.
    let log = log.lock().unwrap().clone();
    let waited = log.lines().find(|l| l.contains("stopping: waiting for"));
    println!("the server: {waited:?}");
    if waited.is_some() {
        assert!(
            log.contains("stopping: every publish in flight confirmed and receipted"),
            "{log}"
        );
    }
    let _server = start_server(net, vhost, port).await.0;
    exactly_once_after_restart(ch, "to_aa", &mut received, &mut counts, request_id, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sigterm_mid_stream_loses_and_duplicates_nothing() {
    let bed = Bed::new("graceful-client").await;
    let Bed { net, vhost, ch, .. } = &bed;
    let (_server, client, _) = stream(net, vhost, ch).await;
    let mut received = Collector::new(ch, "received").await;
    let mut counts = HashMap::new();
    stop_mid_stream(ch, vhost, "to_aa", &mut received, &mut counts, request_id, client).await;
    let client = start_client(net, vhost);
    exactly_once_after_restart(ch, "to_aa", &mut received, &mut counts, request_id, client).await;
}

/// The creditor of a ConfigureAccount reply, less the subnet.
fn reply_id(d: &lapin::message::Delivery) -> i64 {
    let v: Value = serde_json::from_slice(&d.data).unwrap();
    assert_eq!(v["type"], json!("ConfigureAccount"));
    v["creditor_id"].as_i64().unwrap() - 0x0000020000000000_i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drainer_sigterm_mid_stream_publishes_no_reply_twice() {
    let bed = Bed::new("graceful-drainer").await;
    let Bed { net, vhost, ch, .. } = &bed;
    sink_queue(ch, "accounts_in", "replies").await;
    declare_peer_queue(ch, "to_gone").await;
    for i in 0..N {
        let body = serde_json::to_vec(&account_update(0x0000020000000000 + i, 0x1234abcd00000001)).unwrap();
        publish(ch, "", "to_gone", "AccountUpdate", &body).await;
    }
    let gone = net.deactivated_ca_id.clone().unwrap();
    let drainer = spawn("swpt-drainer", &[&gone, "to_gone"], &net.aa_dir, &vhost.url, &[]);
    let mut received = Collector::new(ch, "replies").await;
    let mut counts = HashMap::new();
    stop_mid_stream(
        ch,
        vhost,
        "to_gone",
        &mut received,
        &mut counts,
        reply_id,
        drainer,
    )
    .await;
    let drainer = spawn("swpt-drainer", &[&gone, "to_gone"], &net.aa_dir, &vhost.url, &[]);
    exactly_once_after_restart(ch, "to_gone", &mut received, &mut counts, reply_id, drainer).await;
    assert_eq!(
        message_count(ch, "to_gone.XQ").await,
        0,
        "nothing was dead-lettered"
    );
}
