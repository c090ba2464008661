//! `swpt-bench`: the gateway's demo and its end-to-end benchmarks, run
//! against a real RabbitMQ and the release binaries (found beside this
//! one).
//!
//! ```text
//!  demo / throughput / latency:
//!    publisher ──> CA `creditors_out` ──> QUEUE ──> swpt-client ──TLS/STOMP──> swpt-server ──> AA `accounts_in` ──> bench.arrived
//!  throughput also measures the broker's own limit, in rounds that
//!  alternate with the gateway's:
//!    bench.src ──> lapin consume + republish with confirms ──> bench.dst_x ──> bench.dst
//!    (republished with the routing key and properties the server would
//!    use, so that RabbitMQ does the same work on both paths)
//!  scale: N in-process STOMP peers ──TLS──> one swpt-server
//! ```

mod counting;
mod lapin_client;
mod links;
mod scale;
mod soak;
mod watch;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use swpt_testkit::generate::{write_devnet, Devnet, DevnetOptions};

#[derive(Parser)]
#[command(
    version,
    about = "Demo and end-to-end benchmarks of the Swaptacular STOMP gateway"
)]
struct Cli {
    /// The RabbitMQ broker (a vhost of its own is best).
    #[arg(
        short = 'u',
        long,
        env = "PROTOCOL_BROKER_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672"
    )]
    broker_url: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A local AA + CA network: messages published on the CA side arrive
    /// on the AA side, with a live count and a summary.
    Demo {
        /// How many messages.
        #[arg(short = 'n', long, default_value_t = 1000)]
        count: u64,
        /// Keep the gateway running after the summary (until Ctrl-C).
        #[arg(long)]
        keep: bool,
    },
    /// Throughput of the gateway against the broker's own limit, CPU time
    /// and peak RSS of the gateway processes.
    Throughput {
        #[arg(short = 'n', long, default_value_t = 20_000)]
        count: u64,
        /// The gateway's buffers and the broker loop's window.
        #[arg(short = 'b', long, default_value_t = 100)]
        buffer: usize,
        /// Rounds (each: the limit loop, then the gateway); the figures
        /// printed are the medians.
        #[arg(short = 'r', long, default_value_t = 3)]
        rounds: usize,
        /// Run the gateway with its HTTP endpoint on (APP_HTTP_PORT) and
        /// read its /metrics every second, to measure what counting costs.
        #[arg(long)]
        metrics: bool,
    },
    /// Publish-to-arrival latency at a low steady rate.
    Latency {
        #[arg(short = 'n', long, default_value_t = 500)]
        count: u64,
        /// Messages per second.
        #[arg(short = 'r', long, default_value_t = 50)]
        rate: u64,
    },
    /// The node-database watcher over a database of many peers: the first
    /// load, a poll with nothing changed, a poll after every peer changed,
    /// and how late a 1 ms ticker on the runtime gets meanwhile.
    /// What counting the metrics costs per message, and one scrape.
    Counting {
        #[arg(short = 'n', long, default_value_t = 1_000_000)]
        count: u64,
    },
    /// One swpt-client --links process: many quiet links (every message
    /// arrives, RSS), then busy links (50 against one).
    Links {
        /// Quiet links.
        #[arg(short = 'l', long, default_value_t = 1000)]
        links: usize,
        /// How long the quiet phase sends, in seconds.
        #[arg(short = 's', long, default_value_t = 60)]
        seconds: u64,
        /// Seconds between two messages of one quiet link.
        #[arg(long, default_value_t = 5)]
        every: u64,
        /// Messages of the busy phase.
        #[arg(short = 'n', long, default_value_t = 20_000)]
        count: u64,
    },
    Watch {
        #[arg(short = 'p', long, default_value_t = 5000)]
        peers: usize,
        /// Polls to average.
        #[arg(short = 'n', long, default_value_t = 10)]
        polls: usize,
    },
    /// A swpt-server with many peers and a swpt-client with as many
    /// links, under a steady load for a long time: RSS, open files and
    /// threads sampled every 10 s, their slopes printed; fails when an RSS
    /// grows more than 1 MiB per 10 minutes after the first minute.
    Soak {
        /// Peers connected to the server, and links of the client.
        #[arg(short = 'p', long, default_value_t = 1000)]
        peers: usize,
        /// How long, in minutes.
        #[arg(short = 'm', long, default_value_t = 10)]
        minutes: u64,
        /// Seconds between two messages of one peer (and of one link).
        #[arg(long, default_value_t = 5)]
        every: u64,
    },
    /// One swpt-server and many peers, each heart-beating and sending a
    /// message every few seconds.
    Scale {
        #[arg(short = 'p', long, default_value_t = 1000)]
        peers: usize,
        /// How long to hold the sessions, in seconds.
        #[arg(short = 's', long, default_value_t = 600)]
        seconds: u64,
        /// Seconds between two messages of one peer.
        #[arg(long, default_value_t = 5)]
        every: u64,
    },
}

/// A child process, stopped on drop.
pub struct Proc(pub Child, pub &'static str);

impl Proc {
    pub fn stop(&mut self) {
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..50 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// (user + system CPU seconds, peak RSS in KiB) from /proc.
    pub fn stats(&self) -> (f64, u64) {
        proc_stats(self.0.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

pub fn proc_stats(pid: u32) -> (f64, u64) {
    let ticks = 100.0; // CLK_TCK on Linux x86-64
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let cpu = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (cpu / ticks, hwm)
}

/// Context switches (voluntary and not) of every thread of `pid` so far.
pub fn ctx_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// The local RabbitMQ's Erlang VM (`beam.smp`), when it runs on this
/// machine and its /proc entry is readable: its CPU time shows what the
/// broker spends on each path.
fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "beam.smp").then_some(pid)
    })
}

/// CPU seconds of the broker so far (0 when it is not local).
fn broker_cpu(pid: Option<u32>) -> f64 {
    pid.map(|p| proc_stats(p).0).unwrap_or(0.0)
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no binary directory")?.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the workspace first (cargo build --release)",
            path.display()
        );
    }
    Ok(path)
}

pub fn spawn(
    name: &'static str,
    args: &[&str],
    node: &Path,
    broker: &str,
    env: &[(&str, String)],
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(bin(name)?);
    // The gateway logs on its standard output: to the bench's stderr, so
    // that the bench's own output holds only its figures.
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .env("SWPT_NODEDATA_URL", format!("file://{}", node.display()))
        .env("PROTOCOL_BROKER_URL", broker)
        .env("SWPT_SERVER_CERT", node.join("server.crt"))
        .env("SWPT_SERVER_KEY", node.join("server.key"))
        .env("APP_LOG_LEVEL", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(Proc(
        cmd.spawn().with_context(|| format!("starting {name}"))?,
        name,
    ))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(41234)
}

/// A test network written into `dir`, its servers on free ports, with
/// `extra_ca_peers` more creditors agents of the AA; and the AA's port.
fn devnet_on_free_ports(dir: &Path, extra_ca_peers: usize) -> anyhow::Result<(Devnet, u16)> {
    let port = free_port();
    let net = write_devnet(
        dir,
        &DevnetOptions {
            aa_port: port,
            ca_port: free_port(),
            da_port: free_port(),
            extra_ca_peers,
            ..Default::default()
        },
    )?;
    Ok((net, port))
}

/// A connection and a confirming channel, with `queue` bound to the AA's
/// `accounts_in` and empty: where what the gateway publishes is counted.
async fn sink_channel(broker: &str, queue: &str) -> anyhow::Result<(lapin::Connection, Channel)> {
    let conn = lapin_client::connect(broker).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    declare_sink(&ch, "accounts_in", queue).await?;
    ch.queue_purge(queue, QueuePurgeOptions::default()).await?;
    Ok((conn, ch))
}

/// A PrepareTransfer as the CA's services write it.
pub fn prepare_transfer(i: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "PrepareTransfer",
        "debtor_id": 0x1234abcd00000001_i64,
        "creditor_id": 0x0000080000000001_i64,
        "coordinator_type": "direct",
        "coordinator_id": 0x0000080000000001_i64,
        "coordinator_request_id": i,
        "min_locked_amount": 1000,
        "max_locked_amount": 2000,
        "recipient": "5921983fe0e6eb987aeedca54ad3c708-0000080000000001",
        "final_interest_rate_ts": "2023-01-01T12:00:00+00:00",
        "max_commit_delay": 86400,
        "ts": "2023-01-01T12:00:00.123456+00:00",
    }))
    .unwrap_or_default()
}

fn persistent(msg_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_type(msg_type.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// Publishes `n` messages with confirms, `window` in flight.
async fn fill(ch: &Channel, exchange: &str, key: &str, n: u64, window: usize) -> anyhow::Result<()> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut pending = FuturesOrdered::new();
    for i in 0..n {
        if pending.len() >= window.max(1) {
            if let Some(r) = pending.next().await {
                let _: lapin::publisher_confirm::Confirmation = r?;
            }
        }
        let c = ch
            .basic_publish(
                exchange,
                key,
                BasicPublishOptions::default(),
                &prepare_transfer(i),
                persistent("PrepareTransfer"),
            )
            .await?;
        pending.push_back(c);
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}

async fn declare_sink(ch: &Channel, exchange: &str, queue: &str) -> anyhow::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange,
        lapin::ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        queue,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_purge(queue, QueuePurgeOptions::default()).await?;
    ch.queue_bind(
        queue,
        exchange,
        "#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Prints a live count: a bar on a terminal, plain lines otherwise.
struct Progress {
    total: u64,
    tty: bool,
    last_line: u64,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress {
            total,
            tty: std::io::stderr().is_terminal(),
            last_line: 0,
        }
    }
    fn show(&mut self, done: u64) {
        if self.tty {
            let width = 40;
            let filled = (done * width / self.total.max(1)) as usize;
            eprint!(
                "\r[{}{}] {done}/{}",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                self.total
            );
            let _ = std::io::stderr().flush();
            if done == self.total {
                eprintln!();
            }
        } else if done == self.total || done >= self.last_line + self.total.div_ceil(10) {
            eprintln!("arrived: {done}/{}", self.total);
            self.last_line = done;
        }
    }
}

/// An auto-ack consumer of `queue`.
async fn auto_ack_consumer(ch: &Channel, queue: &str) -> anyhow::Result<lapin::Consumer> {
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    Ok(ch
        .basic_consume(queue, "", options, FieldTable::default())
        .await?)
}

/// Waits (10 s at most) until something listens on 127.0.0.1:`port`.
pub async fn wait_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A generated AA + CA network on free ports, with the CA's outgoing
/// topology configured and the AA's server running.
struct Gateway {
    _dir: PathBuf,
    net: Devnet,
    server: Proc,
    /// The HTTP ports of the server and the client, when metrics are on.
    http: Option<[u16; 2]>,
}

const ARRIVED: &str = "bench.arrived";
const CA_QUEUE: &str = "bench.to_aa";
const CA_KEY: &str = "12.34.ab.cd.00.00.00.01";

async fn gateway(
    broker: &str,
    ch: &Channel,
    dir: PathBuf,
    buffer: usize,
    metrics: bool,
) -> anyhow::Result<Gateway> {
    let _ = std::fs::remove_dir_all(&dir);
    let (net, port) = devnet_on_free_ports(&dir, 0)?;
    declare_sink(ch, "accounts_in", ARRIVED).await?;
    let out = Command::new(bin("configure-queue")?)
        .args(["1234abcd", CA_QUEUE])
        .env("SWPT_NODEDATA_URL", format!("file://{}", net.ca_dir.display()))
        .env("PROTOCOL_BROKER_URL", broker)
        .output()?;
    if !out.status.success() {
        bail!("configure-queue failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = ch.queue_purge(CA_QUEUE, QueuePurgeOptions::default()).await;
    let http = metrics.then(|| [free_port(), free_port()]);
    let mut env = vec![
        ("SWPT_SERVER_PORT", port.to_string()),
        ("SWPT_SERVER_BUFFER", buffer.to_string()),
    ];
    if let Some([server_http, _]) = http {
        env.push(("APP_HTTP_PORT", server_http.to_string()));
    }
    let server = spawn("swpt-server", &[], &net.aa_dir, broker, &env)?;
    wait_port(port).await;
    if let Some(ports) = http {
        tokio::spawn(scrape(ports));
    }
    Ok(Gateway {
        _dir: dir,
        net,
        server,
        http,
    })
}

fn start_client(g: &Gateway, broker: &str, buffer: usize) -> anyhow::Result<Proc> {
    let mut env = vec![("SWPT_CLIENT_BUFFER", buffer.to_string())];
    if let Some([_, client_http]) = g.http {
        env.push(("APP_HTTP_PORT", client_http.to_string()));
    }
    spawn(
        "swpt-client",
        &["1234abcd", CA_QUEUE],
        &g.net.ca_dir,
        broker,
        &env,
    )
}

/// Reads `/metrics` of the server and the client every second, as a
/// Prometheus with a 1 s scrape interval would (15-60 s is usual).
async fn scrape(ports: [u16; 2]) {
    loop {
        scrape_once(ports).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads `/metrics` of the server and the client once.
pub async fn scrape_once(ports: [u16; 2]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for port in ports {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let get = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
            if s.write_all(get).await.is_ok() {
                let mut page = Vec::new();
                let _ = s.read_to_end(&mut page).await;
            }
        }
    }
}

/// The times of the first and the last of `n` arrivals.
struct Span {
    first: Instant,
    last: Instant,
}

impl Span {
    /// Messages per second from the first arrival to the last: start-up
    /// (process start, TLS handshake, consumer set-up) is left out.
    fn rate(&self, n: u64) -> f64 {
        n.saturating_sub(1) as f64 / (self.last - self.first).as_secs_f64().max(1e-9)
    }
}

/// Waits for `n` arrivals in [`ARRIVED`].
async fn arrivals(ch: &Channel, n: u64, mut progress: Option<Progress>) -> anyhow::Result<Span> {
    let mut consumer = auto_ack_consumer(ch, ARRIVED).await?;
    count_arrivals(&mut consumer, n, progress.as_mut()).await
}

/// Counts `n` deliveries of an auto-ack consumer.
async fn count_arrivals(
    consumer: &mut lapin::Consumer,
    n: u64,
    mut progress: Option<&mut Progress>,
) -> anyhow::Result<Span> {
    let mut done = 0;
    let mut first = None;
    while done < n {
        match tokio::time::timeout(Duration::from_secs(60), consumer.next()).await {
            Ok(Some(Ok(_))) => {
                first.get_or_insert_with(Instant::now);
                done += 1;
                if let Some(p) = progress.as_mut() {
                    p.show(done);
                }
            }
            Ok(_) => bail!("the consumer ended"),
            Err(_) => bail!("no message arrived for 60 s ({done} of {n})"),
        }
    }
    let last = Instant::now();
    Ok(Span {
        first: first.unwrap_or(last),
        last,
    })
}

async fn demo(broker: &str, count: u64, keep: bool) -> anyhow::Result<()> {
    let conn = lapin_client::connect(broker).await?;
    let ch = conn.create_channel().await?;
    let dir = std::env::current_dir()?.join("demo-net");
    eprintln!("generating a test network in {}", dir.display());
    let g = gateway(broker, &ch, dir, 100, false).await?;
    eprintln!(
        "AA {} serving; CA {} sending; publishing {count} PrepareTransfer messages",
        g.net.aa_id, g.net.ca_id
    );
    let pub_ch = conn.create_channel().await?;
    fill(&pub_ch, "creditors_out", CA_KEY, count, 100).await?;
    let start = Instant::now();
    let mut client = start_client(&g, broker, 100)?;
    let span = arrivals(&ch, count, Some(Progress::new(count))).await?;
    let secs = (span.last - start).as_secs_f64();
    println!("messages: {count}");
    println!("seconds: {secs:.2}");
    println!("messages per second: {:.0}", count as f64 / secs);
    if keep {
        eprintln!("the gateway keeps running (network in demo-net/); Ctrl-C stops it");
        let _ = tokio::signal::ctrl_c().await;
    }
    client.stop();
    let mut server = g.server;
    server.stop();
    Ok(())
}

const LIMIT_EXCHANGE: &str = "bench.dst_x";

/// The broker's own limit: consume and republish with confirms, each
/// message published as the gateway's server publishes it (`like`: its
/// routing key, headers and properties, mandatory) to a topic exchange
/// bound as `accounts_in` is. Returns messages per second, this process's
/// CPU µs per message (what lapin alone costs for one consume and one
/// confirmed publish, plus draining the destination) and the broker's.
async fn broker_limit(
    conn: &lapin::Connection,
    broker: Option<u32>,
    like: &smp_json::Publication,
    count: u64,
    window: usize,
) -> anyhow::Result<Figures> {
    let props = lapin_client::properties(&swpt_gateway::publish::out_message(LIMIT_EXCHANGE, like));
    let ch = conn.create_channel().await?;
    declare_sink(&ch, LIMIT_EXCHANGE, "bench.dst").await?;
    ch.queue_declare(
        "bench.src",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_purge("bench.src", QueuePurgeOptions::default()).await?;
    let fill_ch = conn.create_channel().await?;
    fill(&fill_ch, "", "bench.src", count, window).await?;

    let src = conn.create_channel().await?;
    src.basic_qos(window.min(u16::MAX as usize) as u16, BasicQosOptions::default())
        .await?;
    let dst = conn.create_channel().await?;
    dst.confirm_select(ConfirmSelectOptions::default()).await?;
    // The destination is drained as the gateway's is (by an auto-ack
    // consumer), so that the broker does the same work on both paths.
    let sink = conn.create_channel().await?;
    let mut drain = auto_ack_consumer(&sink, "bench.dst").await?;
    let drained = tokio::spawn(async move { count_arrivals(&mut drain, count, None).await });
    let (cpu0, broker0) = (proc_stats(std::process::id()).0, broker_cpu(broker));
    let switches0 = ctx_switches(std::process::id());

    let mut consumer = src
        .basic_consume(
            "bench.src",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut pending = FuturesOrdered::new();
    let mut done = 0;
    let mut consumed = 0;
    while done < count {
        tokio::select! {
            Some(r) = pending.next(), if !pending.is_empty() => {
                let (tag, c): (u64, Result<lapin::publisher_confirm::Confirmation, lapin::Error>) = r;
                c?;
                let mut last = tag;
                done += 1;
                while let Some(Some((tag, c))) = futures::FutureExt::now_or_never(pending.next()) {
                    c?;
                    last = tag;
                    done += 1;
                }
                // Queued at once, the socket write not awaited (as the
                // gateway's client acks).
                let src = src.clone();
                let mut ack = Box::pin(async move { src.basic_ack(last, BasicAckOptions { multiple: true }).await });
                match futures::FutureExt::now_or_never(&mut ack) {
                    Some(r) => r?,
                    None => {
                        tokio::spawn(ack);
                    }
                }
            }
            d = consumer.next(), if consumed < count => {
                let d = d.context("consumer ended")??;
                consumed += 1;
                // Pipelined as the gateway's publisher is: the first poll
                // queues the frames, the socket write is not awaited here.
                let (dst, key, props, tag) = (dst.clone(), like.routing_key.clone(), props.clone(), d.delivery_tag);
                let mut publish: futures::future::BoxFuture<'static, _> = Box::pin(async move {
                    dst.basic_publish(LIMIT_EXCHANGE, &key, lapin_client::PUBLISH_OPTIONS, &d.data, props)
                        .await?
                        .await
                });
                let first = futures::FutureExt::now_or_never(&mut publish);
                pending.push_back(async move {
                    (tag, match first { Some(done) => done, None => publish.await })
                });
            }
        }
    }
    let span = drained.await??;
    let (cpu1, broker1) = (proc_stats(std::process::id()).0, broker_cpu(broker));
    let switches = (ctx_switches(std::process::id()) - switches0) as f64 / count as f64;

    for q in ["bench.src", "bench.dst"] {
        let _ = ch.queue_delete(q, QueueDeleteOptions::default()).await;
    }
    let per = |cpu: f64| cpu * 1e6 / count as f64;
    Ok(Figures {
        rate: span.rate(count),
        cpu: per(cpu1 - cpu0),
        broker: per(broker1 - broker0),
        switches,
    })
}

/// What the AA's server publishes for the bench's messages, by its own
/// rules (`smp_json::server_process`): the limit loop republishes with
/// this routing key and these properties, so that the broker does the same
/// work on both paths. It matters: routing a 24-word sharding key through
/// a topic exchange costs RabbitMQ far more than a short key does.
async fn server_publication(net: &Devnet) -> anyhow::Result<smp_json::Publication> {
    let db = nodedata::NodeDatabase::open_dir(&net.aa_dir);
    let node = db.node_data().await?;
    let peer = db
        .peer_data(&net.ca_id)
        .await?
        .context("the generated AA has no CA peer")?;
    // The body as the CA's client sends it.
    let ca = nodedata::NodeDatabase::open_dir(&net.ca_dir);
    let aa_peer = ca
        .peer_data(&net.aa_id)
        .await?
        .context("the generated CA has no AA peer")?;
    let sent = smp_json::client_process(
        &*ca.node_data().await?,
        &aa_peer,
        "PrepareTransfer",
        "application/json",
        &prepare_transfer(0),
    )?;
    Ok(smp_json::server_process(
        &node,
        &peer,
        "PrepareTransfer",
        "application/json",
        &sent.to_json(),
        smp_json::now_micros(),
    )?)
}

/// One path's figures: msg/s, CPU µs per message of its own process(es),
/// and of the broker (0 when the broker is not local).
struct Figures {
    rate: f64,
    cpu: f64,
    broker: f64,
    /// Context switches per message (of the path's own processes).
    switches: f64,
}

/// The gateway's round: its figures (CPU = server + client), each
/// process's CPU µs per message, and the client's peak RSS (KiB).
struct GatewayFigures {
    path: Figures,
    server_cpu: f64,
    client_cpu: f64,
    /// Context switches per message of each process.
    server_switches: f64,
    client_switches: f64,
    client_rss: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The gateway's path once: fills the CA's queue, starts a client and
/// counts the arrivals; the server keeps running between rounds.
async fn gateway_round(
    broker: &str,
    conn: &lapin::Connection,
    ch: &Channel,
    g: &Gateway,
    broker_proc: Option<u32>,
    count: u64,
    buffer: usize,
) -> anyhow::Result<GatewayFigures> {
    let pub_ch = conn.create_channel().await?;
    fill(&pub_ch, "creditors_out", CA_KEY, count, buffer).await?;
    let _ = pub_ch.close(200, "filled").await;
    let mut consumer = auto_ack_consumer(ch, ARRIVED).await?;
    let (server0, broker0) = (g.server.stats().0, broker_cpu(broker_proc));
    let server_switches0 = ctx_switches(g.server.0.id());

    let mut client = start_client(g, broker, buffer)?;
    let span = count_arrivals(&mut consumer, count, None).await?;
    let (server1, broker1) = (g.server.stats().0, broker_cpu(broker_proc));
    let (client_cpu, client_rss) = client.stats();
    let per_message = |n: u64| n as f64 / count as f64;
    let server_switches = per_message(ctx_switches(g.server.0.id()) - server_switches0);
    let client_switches = per_message(ctx_switches(client.0.id()));

    client.stop();
    let _ = ch
        .basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default())
        .await;
    let per = |cpu: f64| cpu * 1e6 / count as f64;
    let (server_cpu, client_cpu) = (per(server1 - server0), per(client_cpu));
    Ok(GatewayFigures {
        path: Figures {
            rate: span.rate(count),
            cpu: server_cpu + client_cpu,
            broker: per(broker1 - broker0),
            switches: server_switches + client_switches,
        },
        server_cpu,
        client_cpu,
        server_switches,
        client_switches,
        client_rss,
    })
}

async fn throughput(
    broker: &str,
    count: u64,
    buffer: usize,
    rounds: usize,
    metrics: bool,
) -> anyhow::Result<()> {
    let conn = lapin_client::connect(broker).await?;
    let ch = conn.create_channel().await?;
    let dir = std::env::temp_dir().join(format!("swpt-bench-{}", std::process::id()));
    let g = gateway(broker, &ch, dir.clone(), buffer, metrics).await?;
    let like = server_publication(&g.net).await?;
    let broker_proc = broker_pid();
    let (mut limits, mut rates, mut ratios) = (vec![], vec![], vec![]);
    let (mut loop_cpu, mut gateway_cpu, mut server_cpu, mut client_cpu) = (vec![], vec![], vec![], vec![]);
    let (mut broker_loop, mut broker_gw) = (vec![], vec![]);
    let (mut cpu_ratios, mut loop_switches, mut server_switches, mut client_switches) =
        (vec![], vec![], vec![], vec![]);
    let mut client_rss = 0;
    for round in 1..=rounds.max(1) {
        eprintln!(
            "round {round}: the broker's own limit ({count} messages, window {buffer}), then the gateway"
        );
        let limit = broker_limit(&conn, broker_proc, &like, count, buffer).await?;
        let gw = gateway_round(broker, &conn, &ch, &g, broker_proc, count, buffer).await?;
        eprintln!(
            "round {round}: limit {:.0} msg/s, gateway {:.0} msg/s, ratio {:.2}",
            limit.rate,
            gw.path.rate,
            gw.path.rate / limit.rate
        );
        limits.push(limit.rate);
        rates.push(gw.path.rate);
        ratios.push(gw.path.rate / limit.rate);
        loop_cpu.push(limit.cpu);
        gateway_cpu.push(gw.path.cpu);
        server_cpu.push(gw.server_cpu);
        client_cpu.push(gw.client_cpu);
        broker_loop.push(limit.broker);
        cpu_ratios.push(gw.path.cpu / limit.cpu);
        loop_switches.push(limit.switches);
        server_switches.push(gw.server_switches);
        client_switches.push(gw.client_switches);
        broker_gw.push(gw.path.broker);
        client_rss = client_rss.max(gw.client_rss);
    }
    let (_, server_rss) = g.server.stats();
    let (server, client) = (median(server_cpu), median(client_cpu));
    println!(
        "{count} messages, buffer {buffer}, medians of {} rounds:",
        rates.len()
    );
    println!(
        "broker limit (consume + republish with confirms): {:.0} msg/s",
        median(limits)
    );
    println!(
        "gateway (swpt-client -> swpt-server over TLS): {:.0} msg/s",
        median(rates)
    );
    println!(
        "ratio gateway / broker limit: {:.2} (median of the rounds' ratios)",
        median(ratios)
    );
    println!(
        "CPU per message (server + client): {:.1} us (server {server:.1}, client {client:.1})",
        median(gateway_cpu)
    );
    println!(
        "CPU per message of the limit loop (one process): {:.1} us",
        median(loop_cpu)
    );
    println!(
        "CPU ratio gateway (server + client) / limit loop: {:.2} (median of the rounds' ratios)",
        median(cpu_ratios)
    );
    println!(
        "context switches per message: server {:.2}, client {:.2}, limit loop {:.2}",
        median(server_switches),
        median(client_switches),
        median(loop_switches)
    );
    if broker_proc.is_some() {
        println!(
            "RabbitMQ CPU per message: {:.1} us on the gateway's path, {:.1} us on the loop's",
            median(broker_gw),
            median(broker_loop)
        );
    }
    println!("peak RSS swpt-server: {:.1} MiB", server_rss as f64 / 1024.0);
    println!("peak RSS swpt-client: {:.1} MiB", client_rss as f64 / 1024.0);
    drop(g);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sends `count` messages at `rate` to `exchange`/`key` and returns the
/// sorted times until each arrives in `queue`.
async fn timed_run(
    conn: &lapin::Connection,
    exchange: &str,
    key: &str,
    queue: &str,
    count: u64,
    rate: u64,
) -> anyhow::Result<Vec<Duration>> {
    let ch = conn.create_channel().await?;
    let mut consumer = auto_ack_consumer(&ch, queue).await?;
    let pub_ch = conn.create_channel().await?;
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let mut next = 0;
    while (latencies.len() as u64) < count {
        tokio::select! {
            _ = tick.tick(), if next < count => {
                sent.insert(next, Instant::now());
                // No confirms on this channel: the confirmation resolves at once.
                pub_ch
                    .basic_publish(exchange, key, BasicPublishOptions::default(), &prepare_transfer(next), persistent("PrepareTransfer"))
                    .await?
                    .await?;
                next += 1;
            }
            d = tokio::time::timeout(Duration::from_secs(30), consumer.next()) => {
                let d = d.context("no arrival for 30 s")?.context("consumer ended")??;
                let v: serde_json::Value = serde_json::from_slice(&d.data)?;
                if let Some(at) = v["coordinator_request_id"].as_u64().and_then(|i| sent.get(&i)) {
                    latencies.push(at.elapsed());
                }
            }
        }
    }
    let _ = ch.close(200, "done").await;
    latencies.sort();
    Ok(latencies)
}

fn print_latencies(label: &str, latencies: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(latencies, 0.50)),
        ms(percentile(latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO))
    );
}

async fn latency(broker: &str, count: u64, rate: u64) -> anyhow::Result<()> {
    let conn = lapin_client::connect(broker).await?;
    let ch = conn.create_channel().await?;
    eprintln!(
        "sending {count} messages at {rate} msg/s, straight through the broker, then through the gateway"
    );
    declare_sink(&ch, "bench.direct_x", "bench.direct").await?;
    let direct = timed_run(&conn, "bench.direct_x", "k", "bench.direct", count, rate).await?;
    let _ = ch
        .queue_delete("bench.direct", QueueDeleteOptions::default())
        .await;

    let dir = std::env::temp_dir().join(format!("swpt-bench-lat-{}", std::process::id()));
    let g = gateway(broker, &ch, dir.clone(), 100, false).await?;
    let _client = start_client(&g, broker, 100)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let via = timed_run(&conn, "creditors_out", CA_KEY, ARRIVED, count, rate).await?;
    println!("latency publish -> arrival at {rate} msg/s over {count} messages:");
    print_latencies("broker alone (one persistent hop)", &direct);
    print_latencies("through the gateway (two hops, TLS, STOMP)", &via);
    drop(g);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // With APP_CPU_AFFINITY set, the bench (all its threads, and so the
    // broker-limit loop) runs on the same CPUs as the gateway processes it
    // starts: pinned before the runtime starts its threads.
    swpt_gateway::affinity::apply_from_env()?;
    raise_fd_limit();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

/// Raises this process's open-file limit to its hard limit, so that the
/// scale mode's thousands of sessions fit; the gateway processes started
/// from here inherit it.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to
    // a live rlimit value.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                eprintln!(
                    "cannot raise the open-file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Demo { count, keep } => demo(&cli.broker_url, count, keep).await,
        Cmd::Throughput {
            count,
            buffer,
            rounds,
            metrics,
        } => throughput(&cli.broker_url, count, buffer, rounds, metrics).await,
        Cmd::Latency { count, rate } => latency(&cli.broker_url, count, rate).await,
        Cmd::Scale {
            peers,
            seconds,
            every,
        } => scale::run(&cli.broker_url, peers, seconds, every).await,
        Cmd::Soak {
            peers,
            minutes,
            every,
        } => soak::run(&cli.broker_url, peers, minutes, every).await,
        Cmd::Watch { peers, polls } => watch::run(peers, polls).await,
        Cmd::Counting { count } => counting::run(count),
        Cmd::Links {
            links,
            seconds,
            every,
            count,
        } => links::run(&cli.broker_url, links, seconds, every, count).await,
    }
}
