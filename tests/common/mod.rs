//! Test helpers: a RabbitMQ vhost of each test's own, free ports, a
//! generated network, the gateway's binaries as child processes.
#![allow(dead_code)]

use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
#[allow(unused_imports)]
pub use swpt_testkit::broker::{prepare_transfer, prepare_transfer_body, CA_OUT_KEY};
use swpt_testkit::generate::{write_devnet_on_free_ports, Devnet};
#[allow(unused_imports)]
pub use swpt_testkit::process::Proc;
use swpt_testkit::{broker, process};
#[allow(unused_imports)]
pub use swpt_testkit::{shared_data, Vhost};

/// A lapin connection and channel in a test's vhost: the tests watch and
/// feed the broker with a client of their own, not the gateway's.
pub async fn channel(vhost: &Vhost) -> (Connection, Channel) {
    channel_at(&vhost.url).await
}

/// What a test that runs the gateway opens with: a temporary directory
/// holding a generated network (its servers on free ports), a vhost of the
/// test's own, and a lapin connection and channel in it. The test keeps it
/// whole (`let bed = Bed::new(..).await;`), so that each part lives as long
/// as the test, and borrows its parts (`let Bed { net, vhost, ch, .. } =
/// &bed;`).
pub struct Bed {
    pub tmp: tempfile::TempDir,
    pub net: Devnet,
    pub vhost: Vhost,
    pub conn: Connection,
    pub ch: Channel,
}

impl Bed {
    /// Sets it up, the vhost named after `vhost`.
    pub async fn new(vhost: &str) -> Bed {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let net = devnet(tmp.path());
        let vhost = Vhost::new(vhost);
        let (conn, ch) = channel(&vhost).await;
        Bed {
            tmp,
            net,
            vhost,
            conn,
            ch,
        }
    }
}

/// A lapin connection and channel to the broker at `url`.
pub async fn channel_at(url: &str) -> (Connection, Channel) {
    let conn = broker::connect(url).await.unwrap_or_else(|e| panic!("{e}"));
    let ch = conn.create_channel().await.expect("a channel");
    (conn, ch)
}

/// A TCP port of 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    process::free_port().expect("a free port on 127.0.0.1")
}

/// A generated network in `dir`, its servers on free ports.
pub fn devnet(dir: &Path) -> Devnet {
    write_devnet_on_free_ports(dir, 0)
        .unwrap_or_else(|e| panic!("generating a network in {}: {e}", dir.display()))
        .0
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "swpt-server" => PathBuf::from(env!("CARGO_BIN_EXE_swpt-server")),
        "swpt-client" => PathBuf::from(env!("CARGO_BIN_EXE_swpt-client")),
        "swpt-drainer" => PathBuf::from(env!("CARGO_BIN_EXE_swpt-drainer")),
        "configure-queue" => PathBuf::from(env!("CARGO_BIN_EXE_configure-queue")),
        "swpt-doctor" => PathBuf::from(env!("CARGO_BIN_EXE_swpt-doctor")),
        "swpt-broker-check" => PathBuf::from(env!("CARGO_BIN_EXE_swpt-broker-check")),
        _ => panic!("no binary {name}"),
    }
}

/// The command that runs the program `name` for the node of `node_dir`.
pub fn node_command(name: &str, node_dir: &Path, broker: &str) -> Command {
    process::node_command(&bin(name), node_dir, broker)
}

/// Owned `(name, value)` pairs as [`spawn`] takes them.
pub fn env_refs<'a>(pairs: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

pub fn spawn(name: &str, args: &[&str], node_dir: &Path, broker: &str, extra_env: &[(&str, &str)]) -> Proc {
    let mut cmd = node_command(name, node_dir, broker);
    cmd.args(args).envs(extra_env.iter().copied());
    Proc::spawn(&mut cmd).unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

/// Like [`spawn`], with the process's log (its standard output) collected
/// as it comes.
pub fn spawn_logged(
    name: &str,
    args: &[&str],
    node_dir: &Path,
    broker: &str,
) -> (Proc, std::sync::Arc<std::sync::Mutex<String>>) {
    spawn_logged_env(name, args, node_dir, broker, &[])
}

/// Like [`spawn_logged`], with more environment variables (and the log
/// level at info).
pub fn spawn_logged_env(
    name: &str,
    args: &[&str],
    node_dir: &Path,
    broker: &str,
    extra_env: &[(&str, &str)],
) -> (Proc, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut cmd = node_command(name, node_dir, broker);
    cmd.args(args).stdout(Stdio::piped());
    if !extra_env.is_empty() {
        cmd.env("APP_LOG_LEVEL", "info").envs(extra_env.iter().copied());
    }
    let mut child = cmd.spawn().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stdout = child.stdout.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    (Proc(child), log)
}

/// Waits until `log` (see [`spawn_logged`]) holds `needle`; panics after
/// `within`.
pub async fn wait_for_log(log: &std::sync::Mutex<String>, needle: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while !log.lock().unwrap().contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no \"{needle}\" in the log:\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn run(name: &str, args: &[&str], node_dir: &Path, broker: &str) -> std::process::Output {
    let mut cmd = node_command(name, node_dir, broker);
    cmd.args(args);
    cmd.output().unwrap_or_else(|e| panic!("running {name}: {e}"))
}

/// Waits (10 s at most) until `port` accepts connections.
pub async fn wait_port(port: u16) {
    if let Err(e) = process::wait_port(port, Duration::from_secs(10)).await {
        panic!("{e}");
    }
}

/// Declares `exchange` (topic) and a queue bound to it with `#`.
pub async fn sink_queue(ch: &Channel, exchange: &str, queue: &str) {
    sink_queue_with(ch, exchange, queue, FieldTable::default()).await
}

/// Like [`sink_queue`], the queue declared with `args` (its type, say).
pub async fn sink_queue_with(ch: &Channel, exchange: &str, queue: &str, args: FieldTable) {
    broker::sink_queue(ch, exchange, queue, args)
        .await
        .unwrap_or_else(|e| panic!("declaring {exchange} and {queue}: {e}"));
}

pub async fn publish(ch: &Channel, exchange: &str, key: &str, msg_type: &str, body: &[u8]) {
    let options = BasicPublishOptions::default();
    ch.basic_publish(exchange, key, options, body, broker::persistent(msg_type))
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Deliveries unacknowledged in `queue` of `vhost` (rabbitmqctl).
pub fn unacked(vhost: &Vhost, queue: &str) -> u64 {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "-p", &vhost.name, "--no-table-headers"])
        .args(["name", "messages_unacknowledged"])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .find(|(name, _)| name.trim() == queue)
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Polls `probe` every 50 ms until it says `Ok`; panics with what it last
/// said after `within`.
pub async fn poll_until<F, Fut>(within: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let Err(last) = probe().await else {
            return;
        };
        assert!(tokio::time::Instant::now() < deadline, "{last} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until nothing is left unacknowledged in `queue` (every delivery
/// acked by its consumer); panics after `within`.
pub async fn wait_for_acks(vhost: &Vhost, queue: &str, within: Duration) {
    poll_until(within, || async move {
        match unacked(vhost, queue) {
            0 => Ok(()),
            left => Err(format!("\"{queue}\" has {left} deliveries unacknowledged")),
        }
    })
    .await
}

/// Waits until `queue` holds exactly `n` messages; panics after `within`.
pub async fn wait_for_count(ch: &Channel, queue: &str, n: u32, within: Duration) {
    poll_until(within, || async move {
        match message_count(ch, queue).await {
            count if count == n => Ok(()),
            count => Err(format!("\"{queue}\" holds {count} messages, not {n},")),
        }
    })
    .await
}

/// Collects `n` deliveries from `queue` (auto-acked), or panics after
/// `timeout`.
pub async fn collect(
    ch: &Channel,
    queue: &str,
    n: usize,
    timeout: Duration,
) -> Vec<lapin::message::Delivery> {
    let mut collector = Collector::new(ch, queue).await;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match collector.next(left).await {
            Some(d) => out.push(d),
            None => panic!("only {} of {n} messages arrived in {queue}", out.len()),
        }
    }
    let _ = ch
        .basic_cancel(collector.consumer.tag().as_str(), BasicCancelOptions::default())
        .await;
    out
}

pub async fn message_count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue,
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count()
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    swpt_testkit::copy_dir(from, to).unwrap();
}

pub fn peer_port(node: &Path, peer: &str) -> u16 {
    let text = std::fs::read_to_string(node.join(format!("peers/{peer}/nodeinfo/stomp.toml"))).unwrap();
    nodedata::parse_manifest(&text, "x").unwrap().servers[0].port
}

/// Runs `configure-queue PEER QUEUE` for `node`; it must succeed.
pub fn configure_queue(node: &Path, peer: &str, queue: &str, broker: &str) {
    let out = run("configure-queue", &[peer, queue], node, broker);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Publishes PrepareTransfers `ids` into the CA's `creditors_out`, for the
/// AA `1234abcd`.
pub async fn queue_for_aa(ch: &Channel, ids: std::ops::Range<i64>) {
    for i in ids {
        let body = prepare_transfer_body(i);
        publish(ch, "creditors_out", CA_OUT_KEY, "PrepareTransfer", &body).await;
    }
}

/// One long-lived auto-ack consumer, so that nothing delivered is dropped
/// between reads.
pub struct Collector {
    consumer: lapin::Consumer,
}

impl Collector {
    pub async fn new(ch: &Channel, queue: &str) -> Collector {
        let consumer = broker::auto_ack_consumer(ch, queue)
            .await
            .unwrap_or_else(|e| panic!("consuming {queue}: {e}"));
        Collector { consumer }
    }

    /// The next delivery, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<lapin::message::Delivery> {
        match tokio::time::timeout(timeout, self.consumer.next()).await {
            Ok(Some(Ok(d))) => Some(d),
            _ => None,
        }
    }
}

/// The server of the node of `node_dir` on `port`, with more environment
/// `env`, listening.
pub async fn start_server(node_dir: &Path, port: u16, broker: &str, env: &[(&str, &str)]) -> Proc {
    let port_text = port.to_string();
    let mut all = vec![("SWPT_SERVER_PORT", port_text.as_str())];
    all.extend_from_slice(env);
    let server = spawn("swpt-server", &[], node_dir, broker, &all);
    wait_port(port).await;
    server
}

/// The CA's client of `net` for the AA `1234abcd`, serving the queue
/// `to_aa`, with more environment `env`.
pub fn ca_client(net: &Devnet, broker: &str, env: &[(&str, &str)]) -> Proc {
    spawn("swpt-client", &["1234abcd", "to_aa"], &net.ca_dir, broker, env)
}

/// A CA -> AA stream under way: `n` PrepareTransfers queued for the AA,
/// its server listening and the CA's client started; what the AA receives
/// lands in `received`. Returns the server, the client and the server's port.
pub async fn stream_to_aa(net: &Devnet, vhost: &Vhost, ch: &lapin::Channel, n: i64) -> (Proc, Proc, u16) {
    sink_queue(ch, "accounts_in", "received").await;
    configure_queue(&net.ca_dir, "1234abcd", "to_aa", &vhost.url);
    let port = peer_port(&net.ca_dir, "1234abcd");
    let server = start_server(&net.aa_dir, port, &vhost.url, &[]).await;
    queue_for_aa(ch, 0..n).await;
    let client = ca_client(net, &vhost.url, &[]);
    (server, client, port)
}

/// The `coordinator_request_id` of a delivered PrepareTransfer.
pub fn request_id(d: &lapin::message::Delivery) -> i64 {
    let v: Value = serde_json::from_slice(&d.data).unwrap();
    v["coordinator_request_id"].as_i64().unwrap()
}

/// Adds the ids arriving in `received` to `seen` until all `n` are there,
/// or `within` has passed.
pub async fn collect_ids(received: &mut Collector, seen: &mut HashSet<i64>, n: i64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while (seen.len() as i64) < n && tokio::time::Instant::now() < deadline {
        if let Some(d) = received.next(Duration::from_secs(5)).await {
            seen.insert(request_id(&d));
        }
    }
}

pub async fn declare_peer_queue(ch: &lapin::Channel, queue: &str) {
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

/// An AccountUpdate (an AA's message) for `creditor` and `debtor`.
pub fn account_update(creditor: i64, debtor: i64) -> Value {
    serde_json::json!({"type": "AccountUpdate", "debtor_id": debtor, "creditor_id": creditor, "creation_date": "2020-01-01",
        "last_change_ts": "2023-01-01T12:00:00+00:00", "last_change_seqnum": 1, "principal": 100, "interest": 1.5,
        "interest_rate": 2.0, "last_interest_rate_change_ts": "2023-01-01T12:00:00+00:00",
        "last_config_ts": "2023-01-01T12:00:00+00:00", "last_config_seqnum": 1, "negligible_amount": 0.0,
        "config_flags": 0, "config_data": "", "account_id": "acc", "debtor_info_iri": "", "debtor_info_content_type": "",
        "debtor_info_sha256": "", "last_transfer_number": 3, "last_transfer_committed_at": "2023-01-01T12:00:00+00:00",
        "demurrage_rate": -10.0, "commit_period": 100, "transfer_note_max_bytes": 500,
        "ts": "2023-01-01T12:00:00+00:00", "ttl": 10000})
}

#[allow(unused_imports)]
pub use swpt_testkit::http::get as http_get;

/// Waits until `GET path` answers `status`; panics after `within` with
/// the last answer.
pub async fn wait_http(port: u16, path: &str, status: u16, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (got, body) = http_get(port, path).await;
        if got == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} on port {port}: {got} {body:?}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the sample `series` (name and labels, exactly as
/// exposed, e.g. `swpt_x_total{peer="a"}`) in a Prometheus text page.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until the sample `series` of the metrics on `port` is `want`.
pub async fn wait_metric(port: u16, series: &str, want: f64, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (_, page) = http_get(port, "/metrics").await;
        if metric(&page, series) == Some(want) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {:?}, not {want}:\n{page}",
            metric(&page, series)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The three node databases of a network, ready to run.
pub struct Nodes {
    pub aa: PathBuf,
    pub ca: PathBuf,
    pub da: PathBuf,
    pub ca_id: String,
    pub da_id: String,
}

pub fn generated(tmp: &Path) -> Nodes {
    let net: Devnet = devnet(tmp);
    Nodes {
        aa: net.aa_dir,
        ca: net.ca_dir,
        da: net.da_dir,
        ca_id: net.ca_id,
        da_id: net.da_id,
    }
}

/// Points the `servers` of a manifest at 127.0.0.1:`port`, keeping the rest.
pub fn rewrite_servers(manifest: &Path, port: u16) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let start = text.find("servers").unwrap();
    let end = start + text[start..].find(']').unwrap() + 1;
    let new = format!(
        "{}servers = [\"127.0.0.1:{port}\"]{}",
        &text[..start],
        &text[end..]
    );
    std::fs::write(manifest, new).unwrap();
}

/// The Python gateway's test network, copied, on free ports.
pub fn shared(test: &str, tmp: &Path) -> Option<Nodes> {
    let data = shared_data(test)?;
    for node in ["AA", "CA", "DA"] {
        copy_dir(&data.join(node), &tmp.join(node));
    }
    let n = Nodes {
        aa: tmp.join("AA"),
        ca: tmp.join("CA"),
        da: tmp.join("DA"),
        ca_id: "5921983fe0e6eb987aeedca54ad3c708".into(),
        da_id: "060791aeca7637fa3357dfc0299fb4c5".into(),
    };
    let aa_port = free_port();
    rewrite_servers(&n.ca.join("peers/1234abcd/nodeinfo/stomp.toml"), aa_port);
    rewrite_servers(&n.da.join("peers/1234abcd/nodeinfo/stomp.toml"), aa_port);
    rewrite_servers(
        &n.aa.join(format!("peers/{}/nodeinfo/stomp.toml", n.ca_id)),
        free_port(),
    );
    rewrite_servers(
        &n.aa.join(format!("peers/{}/nodeinfo/stomp.toml", n.da_id)),
        free_port(),
    );
    Some(n)
}
