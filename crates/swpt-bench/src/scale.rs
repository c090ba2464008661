//! The scale mode: one swpt-server (AA) and many creditors-agent peers,
//! each a TLS STOMP session held in this process.

use crate::gateway::{devnet_on_free_ports, empty_sink, start_server};
use crate::procfs::{proc_stats, rss_kib};
use futures::{SinkExt, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stomp_codec::{Frame, StompCodec, StompItem};
use swpt_testkit::broker::prepare_transfer;
use swpt_testkit::generate::Devnet;
use tokio_util::codec::Framed;

/// Counters shared by the peers.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connected: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) receipted: AtomicU64,
}

pub async fn run(broker: &str, peers: usize, seconds: u64, every: u64) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("swpt-scale-{}", std::process::id()));
    eprintln!("generating an AA with {peers} creditors-agent peers");
    let (net, port) = devnet_on_free_ports(&dir, peers)?;
    let conn = swpt_testkit::broker::connect(broker).await?;
    let ch = conn.create_channel().await?;
    empty_sink(&ch, "accounts_in", "bench.scale").await?;
    let connections = [("APP_MAX_CONNECTIONS_PER_PEER", "2".to_string())];
    let server = start_server(&net, port, broker, &connections).await?;
    let pid = server.0.id();
    let rss_before = rss_kib(pid);
    let counters = Arc::new(Counters::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut tasks = start_peers(&net, port, every, deadline, &counters).await?;
    let mut peak = rss_before;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(rss_kib(pid));
    }
    while tasks.join_next().await.is_some() {}
    let (cpu, hwm) = proc_stats(pid);
    let c = &counters;
    println!("peers: {peers}, held for {seconds} s, a message every {every} s each");
    println!("connected: {}", c.connected.load(Ordering::Relaxed));
    println!("dropped: {}", c.dropped.load(Ordering::Relaxed));
    println!(
        "messages sent: {}, receipted: {}",
        c.sent.load(Ordering::Relaxed),
        c.receipted.load(Ordering::Relaxed)
    );
    println!(
        "server RSS before: {:.1} MiB, at peak: {:.1} MiB (VmHWM {:.1} MiB)",
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "server RSS per peer: {:.1} KiB",
        (peak.saturating_sub(rss_before)) as f64 / peers.max(1) as f64
    );
    println!("server CPU: {cpu:.2} s");
    drop(server);
    let _ = ch.queue_delete("bench.scale", Default::default()).await;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

/// Starts a STOMP session for every extra CA of `net` against the AA
/// server on `port`, each sending a message every `every` seconds until
/// `deadline` (a failed session counts as dropped).
pub(crate) async fn start_peers(
    net: &Devnet,
    port: u16,
    every: u64,
    deadline: tokio::time::Instant,
    counters: &Arc<Counters>,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let root = swpt_gateway::tls::load_certs(&net.aa_dir.join("root-ca.crt"))?.remove(0);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (_, ca_dir)) in net.extra_cas.iter().enumerate() {
        let mut certs = swpt_gateway::tls::load_certs(&ca_dir.join("server.crt"))?;
        certs.extend(swpt_gateway::tls::load_certs(
            &ca_dir.join("peers/1234abcd/sub-ca.crt"),
        )?);
        let key = swpt_gateway::tls::load_key(&ca_dir.join("server.key"))?;
        let config = Arc::new(swpt_gateway::tls::client_config(certs, key, "1234abcd", &root)?);
        let counters = counters.clone();
        // The creditor subnet the AA gave this peer: 0x10 + i.
        let creditor = ((0x10 + i as i64) << 40) | 1;
        tasks.spawn(async move {
            if peer(config, port, creditor, every, deadline, &counters)
                .await
                .is_err()
            {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        });
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(tasks)
}

/// One peer's TLS STOMP session, connected.
type PeerSession = Framed<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, StompCodec>;

/// Connects to the server on `port` as a peer presenting `config`'s
/// certificate, and opens the STOMP session.
async fn connect(config: Arc<tokio_rustls::rustls::ClientConfig>, port: u16) -> anyhow::Result<PeerSession> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into()?, tcp)
        .await?;
    let mut framed = Framed::new(tls, StompCodec::default());
    let stomp = Frame::new("STOMP")
        .header("accept-version", "1.2")
        .header("host", "/")
        .header("heart-beat", "5000,30000");
    framed.send(stomp).await?;
    match framed.next().await {
        Some(Ok(StompItem::Frame(f))) if f.command == "CONNECTED" => Ok(framed),
        other => anyhow::bail!("no CONNECTED: {other:?}"),
    }
}

/// The SEND of the `n`th PrepareTransfer of `creditor`, asking a receipt.
fn send_frame(creditor: i64, n: u64) -> anyhow::Result<Frame> {
    let mut body = prepare_transfer(n as i64);
    body["creditor_id"] = creditor.into();
    body["coordinator_id"] = creditor.into();
    Ok(Frame::new("SEND")
        .header("destination", "/exchange/accounts_in")
        .header("type", "PrepareTransfer")
        .header("content-type", "application/json")
        .header("receipt", n.to_string())
        .body(serde_json::to_vec(&body)?))
}

/// A peer's SENDs so far and those not yet receipted.
#[derive(Default)]
struct Unreceipted {
    sent: u64,
    outstanding: u64,
}

impl Unreceipted {
    fn sent(&mut self) {
        self.sent += 1;
        self.outstanding += 1;
    }

    /// A RECEIPT for SEND `id` (cumulative): counts what it newly covers.
    fn receipt(&mut self, id: u64, c: &Counters) {
        let newly = (id + 1).saturating_sub(self.sent - self.outstanding);
        c.receipted.fetch_add(newly, Ordering::Relaxed);
        self.outstanding -= newly.min(self.outstanding);
    }
}

pub(crate) async fn peer(
    config: Arc<tokio_rustls::rustls::ClientConfig>,
    port: u16,
    creditor: i64,
    every: u64,
    deadline: tokio::time::Instant,
    c: &Counters,
) -> anyhow::Result<()> {
    let mut framed = connect(config, port).await?;
    c.connected.fetch_add(1, Ordering::Relaxed);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    let mut send = tokio::time::interval(Duration::from_secs(every.max(1)));
    let mut sends = Unreceipted::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = heartbeat.tick() => framed.send(StompItem::HeartBeat).await?,
            _ = send.tick() => {
                framed.send(send_frame(creditor, sends.sent)?).await?;
                c.sent.fetch_add(1, Ordering::Relaxed);
                sends.sent();
            }
            item = framed.next() => match item {
                Some(Ok(StompItem::Frame(f))) if f.command == "RECEIPT" => {
                    sends.receipt(f.get("receipt-id").unwrap_or("0").parse()?, c);
                }
                Some(Ok(StompItem::HeartBeat)) => {}
                other => anyhow::bail!("session ended: {other:?}"),
            }
        }
    }
    // Wait for the last receipts, then leave.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while sends.outstanding > 0 {
            match framed.next().await {
                Some(Ok(StompItem::Frame(f))) if f.command == "RECEIPT" => {
                    sends.receipt(f.get("receipt-id").unwrap_or("0").parse().unwrap_or(0), c);
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    })
    .await;
    Ok(())
}
