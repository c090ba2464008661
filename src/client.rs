//! `swpt-client PEER QUEUE`: streams a RabbitMQ queue to one peer's
//! STOMP server, and reconnects by itself.
//!
//! ```text
//!  RabbitMQ QUEUE ──> Consumer ──delivery──> smp_json::client_process ──SEND──> Framed<StompCodec> ──TLS──> peer
//!        ^   (prefetch = buffer)                   │ invalid                          │
//!        │ ack multiple up to N                     v                                  │
//!        └─────────── reject → QUEUE.XQ     RECEIPT N <───────────────────────────────┘
//! ```
//!
//! One link at a time: connect to a random server of the peer's manifest,
//! send STOMP, then one `select!` loop sends deliveries while fewer than
//! `buffer` are unconfirmed and acks what RECEIPTs confirm (in small
//! batches, see `AckBatch`). When the link ends,
//! the consumer channel is closed (RabbitMQ redelivers what was not
//! acked) and a new link is made after a capped, jittered back-off.

use crate::backoff::Backoff;
use crate::config::Internal;
use crate::session::{parse_heartbeat, Timing, Watchdog};
use crate::tls::client_config;
use amqp_bridge::{Consumer, SharedConnection};
use futures::{FutureExt, SinkExt, StreamExt};
use nodedata::{NodeData, NodeDatabase, PeerData};
use rand::Rng;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stomp_codec::{Frame, StompCodec, StompItem};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

/// What the client needs to run.
pub struct ClientSettings {
    pub nodedata_url: String,
    pub broker_url: String,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub peer_id: String,
    pub queue: String,
    pub buffer: usize,
    pub internal: Internal,
}

/// Why the client stops for good.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error("peer {0} is not an active peer in the node database")]
    UnknownPeer(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// How one link ended.
enum LinkEnd {
    /// Shutdown requested and done.
    Shutdown,
    /// Retry after a back-off.
    Retry(String),
    /// Give up.
    Fatal(FatalError),
}

/// Runs the client until shutdown; reconnects after every failure.
pub async fn run(s: ClientSettings, mut shutdown: watch::Receiver<bool>) -> Result<(), FatalError> {
    let db = NodeDatabase::open(&s.nodedata_url, s.internal.peers_cache()).map_err(anyhow::Error::from)?;
    let node = db.node_data().await.map_err(anyhow::Error::from)?;
    let certs = crate::tls::load_certs(&s.server_cert).map_err(anyhow::Error::from)?;
    let key = crate::tls::load_key(&s.server_key).map_err(anyhow::Error::from)?;
    let broker = SharedConnection::new(&s.broker_url, s.internal.rmq_connection_timeout());
    let timing = s.internal.timing();
    let mut backoff = Backoff::new();
    let mut checked_queue = false;
    loop {
        // The peer is read afresh for every link: a changed manifest or
        // certificate is picked up, and a deactivated peer ends the client.
        let peer = db
            .peer_data(&s.peer_id)
            .await
            .map_err(anyhow::Error::from)?
            .filter(|p| p.is_active())
            .ok_or_else(|| FatalError::UnknownPeer(s.peer_id.clone()))?;
        let connector = connector_for(&certs, &key, &peer)?;
        if !checked_queue {
            match amqp_bridge::check_queue(&broker, &s.queue).await {
                Ok(()) => checked_queue = true,
                Err(e @ amqp_bridge::BridgeError::NoQueue(_)) => {
                    return Err(FatalError::Other(anyhow::anyhow!(
                        "{e} (run configure-queue first)"
                    )))
                }
                // The broker may come up later: the link loop retries.
                Err(e) => tracing::warn!("{e}"),
            }
        }
        let started = Instant::now();
        let end = link(&s, &node, &peer, &connector, &broker, &timing, &mut shutdown).await;
        match end {
            LinkEnd::Shutdown => {
                broker.close().await;
                return Ok(());
            }
            LinkEnd::Fatal(e) => {
                broker.close().await;
                return Err(e);
            }
            LinkEnd::Retry(why) => {
                let wait = backoff.wait(started.elapsed());
                tracing::warn!(
                    "link to peer {} ended: {why}; reconnecting in {:.1}s",
                    peer.node_id,
                    wait.as_secs_f64()
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {
                        broker.close().await;
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The TLS connector for `peer`: we present our leaf and the sub-CA the
/// peer issued for us; we trust the peer's root.
fn connector_for(
    own: &[nodedata::CertificateDer<'static>],
    key: &rustls_pki_types::PrivateKeyDer<'static>,
    peer: &PeerData,
) -> Result<TlsConnector, FatalError> {
    let mut certs = own[..1].to_vec();
    certs.push(peer.sub_cert.clone());
    let config =
        client_config(certs, key.clone_key(), &peer.node_id, &peer.root_cert).map_err(anyhow::Error::from)?;
    Ok(TlsConnector::from(Arc::new(config)))
}

type Conn = Framed<tokio_rustls::client::TlsStream<TcpStream>, StompCodec>;

async fn open(peer: &PeerData, connector: &TlsConnector, timeout: Duration) -> Result<Conn, String> {
    let servers = &peer.servers_manifest.servers;
    let server = &servers[rand::thread_rng().gen_range(0..servers.len())];
    let addr = format!("{}:{}", server.host, server.port);
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(&addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from(server.host.clone())
        .map_err(|e| format!("invalid server name {}: {e}", server.host))?;
    let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| format!("TLS handshake with {addr} timed out"))?
        .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
    tracing::info!("connected to {addr}");
    Ok(Framed::new(tls, StompCodec::default()))
}

/// Sends STOMP and waits for CONNECTED; returns the heart-beat intervals.
async fn handshake(
    framed: &mut Conn,
    peer: &PeerData,
    timing: &Timing,
) -> Result<(Option<Duration>, Option<Duration>), String> {
    let m = &peer.servers_manifest;
    let mut stomp = Frame::new("STOMP")
        .header("accept-version", "1.2")
        .header("host", m.host.clone())
        .header("heart-beat", timing.offer());
    if let Some(login) = &m.login {
        stomp = stomp.header("login", login.clone());
    }
    if let Some(passcode) = &m.passcode {
        stomp = stomp.header("passcode", passcode.clone());
    }
    framed
        .send(stomp)
        .await
        .map_err(|e| format!("sending STOMP failed: {e}"))?;
    let deadline = tokio::time::Instant::now() + timing.connect_timeout;
    loop {
        let item = tokio::time::timeout_at(deadline, framed.next())
            .await
            .map_err(|_| "no CONNECTED frame in time".to_string())?;
        match item {
            None => return Err("the server closed the connection".into()),
            Some(Err(e)) => return Err(format!("protocol error: {e}")),
            Some(Ok(StompItem::HeartBeat)) => continue,
            Some(Ok(StompItem::Frame(f))) => match f.command.as_str() {
                "CONNECTED" => {
                    if f.get("version") != Some("1.2") {
                        return Err("Received wrong protocol version.".into());
                    }
                    let theirs =
                        parse_heartbeat(f.get("heart-beat")).ok_or("Received invalid heart-beat value.")?;
                    return Ok(timing.negotiate(theirs));
                }
                "ERROR" => {
                    return Err(format!(
                        "Received server error \"{}\".",
                        f.get("message").unwrap_or("")
                    ));
                }
                "RECEIPT" => return Err("Received another command before CONNECTED.".into()),
                other => return Err(format!("Received unexpected command \"{other}\".")),
            },
        }
    }
}

async fn link(
    s: &ClientSettings,
    node: &NodeData,
    peer: &PeerData,
    connector: &TlsConnector,
    broker: &SharedConnection,
    timing: &Timing,
    shutdown: &mut watch::Receiver<bool>,
) -> LinkEnd {
    if *shutdown.borrow() {
        return LinkEnd::Shutdown;
    }
    let mut framed = match open(peer, connector, timing.connect_timeout).await {
        Ok(f) => f,
        Err(e) => return LinkEnd::Retry(e),
    };
    let (send_every, expect_every) = match handshake(&mut framed, peer, timing).await {
        Ok(hb) => hb,
        Err(e) => return LinkEnd::Retry(e),
    };
    let prefetch = u16::try_from(s.buffer).unwrap_or(u16::MAX).max(1);
    let mut consumer = match Consumer::new(broker, &s.queue, prefetch).await {
        Ok(c) => c,
        Err(amqp_bridge::BridgeError::NoQueue(q)) => {
            return LinkEnd::Fatal(FatalError::Other(anyhow::anyhow!(
                "the queue \"{q}\" does not exist (run configure-queue first)"
            )))
        }
        Err(e) => return LinkEnd::Retry(e.to_string()),
    };
    let mut acks = AckBatch::new(s.buffer);
    let end = stream(
        s,
        node,
        peer,
        &mut framed,
        &mut consumer,
        &mut acks,
        timing,
        send_every,
        expect_every,
        shutdown,
    )
    .await;
    // What the server receipted is acked before the channel closes.
    acks.flush(&consumer);
    consumer.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), SinkExt::<StompItem>::close(&mut framed)).await;
    end
}

/// Acks in batches: RECEIPTs are acked once a quarter of the buffer has
/// been receipted, when nothing is left in flight, or 2 ms after the
/// first unacked RECEIPT, whichever comes first. Fewer acks mean fewer
/// wake-ups of lapin's I/O thread and of the broker.
struct AckBatch {
    up_to: Option<u64>,
    count: usize,
    batch: usize,
    since: Option<tokio::time::Instant>,
}

impl AckBatch {
    const DELAY: Duration = Duration::from_millis(2);

    fn new(buffer: usize) -> AckBatch {
        AckBatch {
            up_to: None,
            count: 0,
            batch: (buffer / 4).max(1),
            since: None,
        }
    }

    /// One more delivery receipted (cumulatively up to `tag`).
    fn receipted(&mut self, tag: u64) {
        self.up_to = Some(tag);
        self.count += 1;
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    fn full(&self) -> bool {
        self.count >= self.batch
    }

    /// Acks everything receipted so far.
    fn flush(&mut self, consumer: &Consumer) {
        if let Some(tag) = self.up_to.take() {
            consumer.ack_up_to(tag);
        }
        self.count = 0;
        self.since = None;
    }

    /// Resolves when the oldest unacked RECEIPT is due; never when there
    /// is none.
    async fn deadline(&self) {
        match self.since {
            Some(t) => tokio::time::sleep_until(t + Self::DELAY).await,
            None => std::future::pending().await,
        }
    }
}

/// Handles a frame from the server after CONNECTED: a RECEIPT confirms
/// (and, in batches, acks) everything sent up to it; anything else ends
/// the link (`Some`).
fn on_server_frame(
    f: &Frame,
    inflight: &mut VecDeque<u64>,
    acks: &mut AckBatch,
    consumer: &Consumer,
    queue: &str,
) -> Option<LinkEnd> {
    match f.command.as_str() {
        "RECEIPT" => {
            let Some(tag) = f.get("receipt-id").and_then(|r| r.parse::<u64>().ok()) else {
                return Some(LinkEnd::Retry("RECEIPT command without a receipt ID.".into()));
            };
            if !inflight.contains(&tag) {
                return Some(LinkEnd::Retry(format!("RECEIPT for an unknown message {tag}")));
            }
            while inflight.front().is_some_and(|t| *t <= tag) {
                inflight.pop_front();
                acks.receipted(tag);
            }
            if acks.full() || inflight.is_empty() {
                acks.flush(consumer);
            }
            None
        }
        "ERROR" => {
            let message = f.get("message").unwrap_or("");
            // An ERROR about one of our messages (it names its receipt)
            // would come back for that message on every link: dead-letter
            // it, so the link goes on.
            let refused = f.get("receipt-id").and_then(|r| r.parse::<u64>().ok());
            if let Some(tag) = refused.filter(|t| inflight.contains(t)) {
                tracing::error!(
                    delivery_tag = tag,
                    "the server refused a message, rejecting it to {queue}.XQ: {message}"
                );
                consumer.reject(tag);
            }
            Some(LinkEnd::Retry(format!("Received server error \"{message}\".")))
        }
        "CONNECTED" => Some(LinkEnd::Retry(
            "Received CONNECTED command more than once.".into(),
        )),
        other => Some(LinkEnd::Retry(format!(
            "Received unexpected command \"{other}\"."
        ))),
    }
}

/// After a failed write, reads what the server sent before it closed (a
/// RECEIPT to ack, an ERROR naming a message), for a second at most.
/// Otherwise a server that answered a SEND with ERROR and closed would
/// have its RECEIPT and ERROR lost: duplicates, and a link stuck on the
/// refused message.
async fn after_write_failure(
    framed: &mut Conn,
    inflight: &mut VecDeque<u64>,
    acks: &mut AckBatch,
    consumer: &Consumer,
    queue: &str,
    why: String,
) -> LinkEnd {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(Ok(item))) = tokio::time::timeout_at(deadline, framed.next()).await {
        if let StompItem::Frame(f) = item {
            if let Some(end) = on_server_frame(&f, inflight, acks, consumer, queue) {
                return end;
            }
        }
    }
    LinkEnd::Retry(why)
}

/// The SEND frame for one delivery, after the client-side rules.
fn outgoing(
    node: &NodeData,
    peer: &PeerData,
    destination: &str,
    m: &amqp_bridge::InMessage,
) -> Result<Frame, smp_json::ProcessError> {
    let msg = smp_json::client_process(node, peer, &m.msg_type, &m.content_type, &m.body)?;
    Ok(Frame::new("SEND")
        .header("destination", destination)
        .header("type", msg.msg_type.as_str())
        .header("content-type", "application/json")
        .header("persistent", "true")
        .header("receipt", m.delivery_tag.to_string())
        .body(msg.to_json()))
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    s: &ClientSettings,
    node: &NodeData,
    peer: &PeerData,
    framed: &mut Conn,
    consumer: &mut Consumer,
    acks: &mut AckBatch,
    timing: &Timing,
    send_every: Option<Duration>,
    expect_every: Option<Duration>,
    shutdown: &mut watch::Receiver<bool>,
) -> LinkEnd {
    let mut inflight: VecDeque<u64> = VecDeque::new();
    let mut watchdog = Watchdog::new(expect_every, timing);
    let mut heartbeat = tokio::time::interval(send_every.unwrap_or(Duration::from_secs(3600)));
    heartbeat.reset();
    let mut watch = tokio::time::interval(timing.watchdog_every);
    let mut disconnecting: Option<tokio::time::Instant> = None;
    let destination = peer.servers_manifest.destination.clone();
    loop {
        let room = inflight.len() < s.buffer && disconnecting.is_none();
        tokio::select! {
            _ = shutdown.changed(), if disconnecting.is_none() => {
                match inflight.back() {
                    None => return LinkEnd::Shutdown,
                    Some(last) => {
                        let frame = Frame::new("DISCONNECT").header("receipt", last.to_string());
                        if framed.send(frame).await.is_err() {
                            return LinkEnd::Shutdown;
                        }
                        disconnecting = Some(tokio::time::Instant::now() + Duration::from_secs(10));
                    }
                }
            }
            _ = async { match disconnecting { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                tracing::warn!("no RECEIPT for DISCONNECT in time; unconfirmed messages will be redelivered");
                return LinkEnd::Shutdown;
            }
            delivery = consumer.next(), if room => {
                // Take every delivery that is ready already, then flush
                // them in one write.
                let mut next = Some(delivery);
                while let Some(delivery) = next.take() {
                    let m = match delivery {
                        Ok(m) => m,
                        Err(e) => return LinkEnd::Retry(format!("consuming from \"{}\" failed: {e}", s.queue)),
                    };
                    match outgoing(node, peer, &destination, &m) {
                        Ok(frame) => {
                            if let Err(e) = framed.feed(frame).await {
                                let why = format!("sending failed: {e}");
                                return after_write_failure(framed, &mut inflight, acks, consumer, &s.queue, why).await;
                            }
                            inflight.push_back(m.delivery_tag);
                        }
                        Err(e) => {
                            let detail = e.detail().map(|d| format!(" ({d})")).unwrap_or_default();
                            tracing::error!(
                                delivery_tag = m.delivery_tag,
                                "rejecting a message to {}.XQ: {e}{detail}",
                                s.queue
                            );
                            consumer.reject(m.delivery_tag);
                        }
                    }
                    if inflight.len() < s.buffer {
                        next = consumer.next().now_or_never();
                    }
                }
                if let Err(e) = SinkExt::<Frame>::flush(framed).await {
                    let why = format!("sending failed: {e}");
                    return after_write_failure(framed, &mut inflight, acks, consumer, &s.queue, why).await;
                }
            }
            item = framed.next() => {
                watchdog.fed();
                match item {
                    None => return LinkEnd::Retry("the server closed the connection".into()),
                    Some(Err(e)) => return LinkEnd::Retry(format!("protocol error: {e}")),
                    Some(Ok(StompItem::HeartBeat)) => {}
                    Some(Ok(StompItem::Frame(f))) => {
                        if let Some(end) = on_server_frame(&f, &mut inflight, acks, consumer, &s.queue) {
                            return end;
                        }
                        if disconnecting.is_some() && inflight.is_empty() {
                            return LinkEnd::Shutdown;
                        }
                    }
                }
            }
            _ = acks.deadline() => acks.flush(consumer),
            _ = heartbeat.tick(), if send_every.is_some() => {
                if let Err(e) = framed.send(StompItem::HeartBeat).await {
                    let why = format!("sending a heart-beat failed: {e}");
                    return after_write_failure(framed, &mut inflight, acks, consumer, &s.queue, why).await;
                }
            }
            _ = watch.tick() => {
                if watchdog.starved() {
                    return LinkEnd::Retry("no data from the server in time (heart-beats stopped)".into());
                }
            }
        }
    }
}
