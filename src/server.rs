//! `swpt-server`: accepts peers' STOMP connections and publishes what they
//! send to our `*_in` exchange.
//!
//! ```text
//!  peer ──TLS──> Framed<StompCodec> ──SEND──> smp_json::server_process ──> Publisher ──> RabbitMQ
//!                      ^                                                      │        (`*_in`)
//!                      └──── RECEIPT (cumulative, in order) <── confirms ─────┘
//!                      (at most `buffer` unconfirmed: reading pauses when full)
//! ```
//!
//! One task per connection runs the whole pipeline with `select!`: it
//! reads frames only while fewer than `buffer` publishes are unconfirmed,
//! publishes each valid SEND at once, and turns confirmations (awaited in
//! publish order) into cumulative RECEIPTs, a few at a time
//! (`ReceiptBatch`). Connections share one AMQP
//! connection; each has its own confirming channel.

use crate::config::Internal;
use crate::session::{error_frame, parse_heartbeat, receipt_frame, Timing, Watchdog};
use crate::tls::{peer_node_id, server_config, PeerRoots};
use amqp_bridge::{OutMessage, Publisher, SharedConnection};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use nodedata::{NodeData, NodeDatabase, PeerData};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stomp_codec::{Frame, StompCodec, StompItem};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tracing::Instrument;

/// Everything the connections of one server share.
pub struct ServerContext {
    pub db: NodeDatabase,
    pub node: Arc<NodeData>,
    pub acceptor: TlsAcceptor,
    pub broker: Arc<SharedConnection>,
    pub buffer: usize,
    pub internal: Internal,
    pub timing: Timing,
    per_peer: Mutex<HashMap<String, usize>>,
}

impl ServerContext {
    /// Reads the node data, the certificates and every peer's root, and
    /// prepares the TLS acceptor and the broker connection (opened lazily).
    pub async fn new(
        nodedata_url: &str,
        broker_url: &str,
        cert: &Path,
        key: &Path,
        buffer: usize,
        internal: Internal,
    ) -> anyhow::Result<Arc<ServerContext>> {
        let db = NodeDatabase::open(nodedata_url, internal.peers_cache())?;
        let node = db.node_data().await?;
        let certs = crate::tls::load_certs(cert)?;
        let key = crate::tls::load_key(key)?;
        let roots = PeerRoots::new();
        let n = roots.reload(&db).await?;
        tracing::info!("loaded the roots of {n} peers");
        tokio::spawn(
            roots
                .clone()
                .keep_fresh(db.clone(), internal.peers_check().min(Duration::from_secs(600))),
        );
        let config = server_config(certs, key, node.root_cert.clone(), roots)?;
        Ok(Arc::new(ServerContext {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            broker: SharedConnection::new(broker_url, internal.rmq_connection_timeout()),
            timing: internal.timing(),
            db,
            node,
            buffer: buffer.max(1),
            internal,
            per_peer: Mutex::new(HashMap::new()),
        }))
    }
}

/// Binds the listening socket with the configured backlog.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Accepts connections until `shutdown` turns true, then waits for the
/// connections to close.
pub async fn serve(listener: TcpListener, ctx: Arc<ServerContext>, mut shutdown: watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let ctx = ctx.clone();
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move { handle_connection(ctx, stream, addr, shutdown).await });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!("stopped accepting connections; closing {} open ones", tasks.len());
    while tasks.join_next().await.is_some() {}
    ctx.broker.close().await;
}

/// Counts a peer's open connections; the count drops with the guard.
struct PeerSlot {
    ctx: Arc<ServerContext>,
    peer: String,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.ctx.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

fn take_slot(ctx: &Arc<ServerContext>, peer: &str) -> Option<PeerSlot> {
    let mut map = ctx.per_peer.lock().unwrap_or_else(|e| e.into_inner());
    let n = map.entry(peer.to_string()).or_insert(0);
    if *n >= ctx.internal.app_max_connections_per_peer {
        return None;
    }
    *n += 1;
    Some(PeerSlot {
        ctx: ctx.clone(),
        peer: peer.to_string(),
    })
}

type Conn = Framed<TlsStream<TcpStream>, StompCodec>;

/// The initial read and write buffers of a connection. Small, since a
/// server holds many mostly idle connections; they grow under load.
const FRAMED_CAPACITY: usize = 1024;

/// How a session ends: the connection closed or broke (nothing to send),
/// or an ERROR to send before closing.
enum End {
    Closed,
    Error(Frame),
}

impl From<Frame> for End {
    fn from(frame: Frame) -> End {
        End::Error(frame)
    }
}

/// An [`End`] with an ERROR carrying `message`.
fn fail(message: &str) -> End {
    End::Error(error_frame(message))
}

/// Sends an ERROR and closes.
async fn close_with_error(framed: &mut Conn, frame: Frame) {
    tracing::warn!(
        message = frame.get("message").unwrap_or(""),
        "protocol error; closing the connection"
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = framed.send(frame).await;
        let _ = SinkExt::<StompItem>::close(framed).await;
    })
    .await;
    // Lingering close: read (and drop) what the peer still sends, for a
    // second at most, so that closing does not reset the connection and
    // destroy the ERROR (and the RECEIPT before it) in the peer's buffers.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = framed.next().await {}
    })
    .await;
}

async fn handle_connection(
    ctx: Arc<ServerContext>,
    stream: TcpStream,
    addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(ctx.internal.handshake_timeout(), ctx.acceptor.accept(stream)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // A port probe or a client that gave up: not worth a warning.
            tracing::debug!(%addr, "connection closed before the TLS handshake: {e}");
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(%addr, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(%addr, "TLS handshake timed out");
            return;
        }
    };
    let peer_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    let mut framed = Framed::with_capacity(tls, StompCodec::default(), FRAMED_CAPACITY);
    let peer_id = match peer_cert.as_deref().map(peer_node_id) {
        Some(Ok(id)) => id,
        _ => return close_with_error(&mut framed, error_frame("Invalid certificate subject.")).await,
    };
    let peer = match ctx.db.active_peer(&peer_id).await {
        Ok(Some(p)) => p,
        Ok(None) => return close_with_error(&mut framed, error_frame("Unknown peer serial number.")).await,
        Err(e) => {
            tracing::error!("node database: {e}");
            return close_with_error(&mut framed, error_frame("Internal server error.")).await;
        }
    };
    let Some(_slot) = take_slot(&ctx, &peer_id) else {
        return close_with_error(&mut framed, error_frame("Too many connections from one peer.")).await;
    };
    let span = tracing::info_span!("peer", peer = %peer_id, %addr);
    async {
        tracing::info!("peer connected");
        match Session::new(&ctx, peer, shutdown).run(&mut framed).await {
            End::Closed => {
                tracing::info!("connection closed");
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), SinkExt::<StompItem>::close(&mut framed))
                        .await;
            }
            End::Error(frame) => close_with_error(&mut framed, frame).await,
        }
    }
    .instrument(span)
    .await
}

/// Cumulative RECEIPTs in small batches: one goes out once a quarter of
/// the buffer is confirmed, when nothing is left unconfirmed, or 2 ms
/// after the oldest confirmation not yet receipted, whichever comes first.
/// Fewer RECEIPTs mean fewer writes here and fewer acks at the client.
struct ReceiptBatch {
    last: Option<String>,
    count: usize,
    batch: usize,
    since: Option<tokio::time::Instant>,
}

impl ReceiptBatch {
    const DELAY: Duration = Duration::from_millis(2);

    fn new(buffer: usize) -> ReceiptBatch {
        ReceiptBatch {
            last: None,
            count: 0,
            batch: (buffer / 4).max(1),
            since: None,
        }
    }

    /// `count` more SENDs confirmed, the last one with receipt `last`.
    fn confirmed(&mut self, last: String, count: usize) {
        self.last = Some(last);
        self.count += count;
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    fn full(&self) -> bool {
        self.count >= self.batch
    }

    /// Sends the RECEIPT for everything confirmed so far.
    async fn send(&mut self, framed: &mut Conn) -> Result<(), End> {
        self.count = 0;
        self.since = None;
        match self.last.take() {
            Some(last) => framed.send(receipt_frame(&last)).await.map_err(|_| End::Closed),
            None => Ok(()),
        }
    }

    /// Resolves when the oldest unreceipted confirmation is due; never
    /// when there is none.
    async fn deadline(&self) {
        match self.since {
            Some(t) => tokio::time::sleep_until(t + Self::DELAY).await,
            None => std::future::pending().await,
        }
    }
}

/// A confirmed publish: the SEND's receipt ID, or why it failed.
type Confirm = futures::future::BoxFuture<'static, Result<String, amqp_bridge::BridgeError>>;

/// The server side of one STOMP session.
struct Session<'a> {
    ctx: &'a ServerContext,
    peer: Arc<PeerData>,
    shutdown: watch::Receiver<bool>,
    destination: String,
    publisher: Option<Publisher>,
    confirms: FuturesOrdered<Confirm>,
    /// The receipt of a DISCONNECT waiting for the confirms.
    disconnect: Option<String>,
    /// An ERROR waiting for the earlier confirms.
    pending_error: Option<Frame>,
}

impl<'a> Session<'a> {
    fn new(ctx: &'a ServerContext, peer: Arc<PeerData>, shutdown: watch::Receiver<bool>) -> Self {
        Session {
            destination: ctx.node.node_type.stomp_destination(),
            ctx,
            peer,
            shutdown,
            publisher: None,
            confirms: FuturesOrdered::new(),
            disconnect: None,
            pending_error: None,
        }
    }

    /// Runs the session until it ends; the caller then sends the ERROR (if
    /// any) and closes the connection.
    async fn run(mut self, framed: &mut Conn) -> End {
        match self.drive(framed).await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    async fn drive(&mut self, framed: &mut Conn) -> Result<std::convert::Infallible, End> {
        let timing = self.ctx.timing;
        let (send_every, expect_every) = self.connect(framed).await?;
        let mut watchdog = Watchdog::new(expect_every, &timing);
        let mut heartbeat = tokio::time::interval(send_every.unwrap_or(Duration::from_secs(3600)));
        heartbeat.reset();
        let mut watch = tokio::time::interval(timing.watchdog_every);
        let check_every = self.ctx.internal.peers_check();
        let first_check = check_every.mul_f64(rand::random::<f64>());
        let mut peer_check = tokio::time::interval_at(tokio::time::Instant::now() + first_check, check_every);
        let mut receipts = ReceiptBatch::new(self.ctx.buffer);
        loop {
            let reading = self.confirms.len() < self.ctx.buffer && self.pending_error.is_none();
            tokio::select! {
                _ = self.shutdown.changed() => {
                    // What is confirmed is receipted; nothing else is.
                    receipts.send(framed).await?;
                    return Err(fail("The connection has been closed by the server."));
                }
                Some(confirmed) = self.confirms.next(), if !self.confirms.is_empty() => {
                    let mut last = confirmed.map_err(|e| self.broker_failed(e))?;
                    let mut count = 1;
                    // Coalesce every confirmation that is ready already.
                    while let Some(Some(next)) = self.confirms.next().now_or_never() {
                        last = next.map_err(|e| self.broker_failed(e))?;
                        count += 1;
                    }
                    if self.confirms.is_empty() {
                        if let Some(frame) = self.pending_error.take() {
                            let _ = framed.feed(receipt_frame(&last)).await;
                            return Err(frame.into());
                        }
                        if let Some(receipt) = self.disconnect.take() {
                            // The DISCONNECT's receipt confirms everything before it.
                            let _ = framed.send(receipt_frame(&receipt)).await;
                            return Err(End::Closed);
                        }
                    }
                    receipts.confirmed(last, count);
                    if receipts.full() || self.confirms.is_empty() {
                        receipts.send(framed).await?;
                    }
                }
                _ = receipts.deadline() => receipts.send(framed).await?,
                item = framed.next(), if reading => {
                    watchdog.fed();
                    match item {
                        None => return Err(End::Closed),
                        Some(Err(stomp_codec::CodecError::Io(e))) => {
                            tracing::info!("the connection broke: {e}");
                            return Err(End::Closed);
                        }
                        Some(Err(e)) => return Err(fail(&codec_error_text(&e))),
                        Some(Ok(StompItem::HeartBeat)) => {}
                        Some(Ok(StompItem::Frame(frame))) => {
                            if let Err(end) = self.on_frame(frame, framed).await {
                                // Receipt what is confirmed before the ERROR,
                                // or the peer sends it again.
                                if let End::Error(_) = end {
                                    receipts.send(framed).await?;
                                }
                                return Err(end);
                            }
                        }
                    }
                }
                _ = heartbeat.tick(), if send_every.is_some() => {
                    if framed.send(StompItem::HeartBeat).await.is_err() {
                        return Err(End::Closed);
                    }
                }
                _ = watch.tick() => {
                    if watchdog.starved() {
                        let secs = expect_every.unwrap_or_default() + timing.network_delay;
                        return Err(fail(&format!("No data received for {:.3} seconds.", secs.as_secs_f64())));
                    }
                }
                _ = peer_check.tick() => {
                    match self.ctx.db.peer_data(&self.peer.node_id).await {
                        Ok(Some(p)) if !p.is_deactivated() => {}
                        Ok(_) => return Err(fail("The peer has been deactivated.")),
                        Err(e) => tracing::warn!("re-checking the peer failed: {e}"),
                    }
                }
            }
        }
    }

    fn broker_failed(&self, e: amqp_bridge::BridgeError) -> End {
        tracing::error!("publishing failed: {e}");
        fail("Internal server error.")
    }

    /// Waits for CONNECT and answers CONNECTED; returns the negotiated
    /// heart-beat intervals.
    async fn connect(&mut self, framed: &mut Conn) -> Result<(Option<Duration>, Option<Duration>), End> {
        let timing = self.ctx.timing;
        let deadline = tokio::time::Instant::now() + timing.connect_timeout;
        loop {
            let item = match tokio::time::timeout_at(deadline, framed.next()).await {
                Err(_) => return Err(fail("The CONNECT command was not received in time.")),
                Ok(None) => return Err(End::Closed),
                Ok(Some(Err(e))) => return Err(fail(&codec_error_text(&e))),
                Ok(Some(Ok(StompItem::HeartBeat))) => continue,
                Ok(Some(Ok(StompItem::Frame(f)))) => f,
            };
            match item.command.as_str() {
                "CONNECT" | "STOMP" => {
                    let versions = item.get("accept-version").unwrap_or("");
                    if !versions.split(',').any(|v| v == "1.2") {
                        return Err(fail("STOMP 1.2 is not supported by the client."));
                    }
                    let theirs = parse_heartbeat(item.get("heart-beat"))
                        .ok_or_else(|| fail("Received invalid heart-beat value."))?;
                    let connected = Frame::new("CONNECTED")
                        .header("version", "1.2")
                        .header("heart-beat", timing.offer());
                    framed.send(connected).await.map_err(|_| End::Closed)?;
                    return Ok(timing.negotiate(theirs));
                }
                "DISCONNECT" => return Err(fail("Received DISCONNECT before CONNECT.")),
                _ => return Err(fail("Received another command before CONNECT.")),
            }
        }
    }

    /// Handles one frame after CONNECT; `Err` ends the session.
    async fn on_frame(&mut self, frame: Frame, framed: &mut Conn) -> Result<(), End> {
        if self.disconnect.is_some() {
            return Err(fail("Received command after DISCONNECT."));
        }
        match frame.command.as_str() {
            "SEND" => self.on_send(frame).await,
            "CONNECT" | "STOMP" => Err(fail("Received CONNECT command more than once.")),
            "DISCONNECT" => match frame.get("receipt") {
                None => Err(End::Closed),
                Some(receipt) if self.confirms.is_empty() => {
                    let _ = framed.send(receipt_frame(receipt)).await;
                    Err(End::Closed)
                }
                Some(receipt) => {
                    self.disconnect = Some(receipt.to_string());
                    Ok(())
                }
            },
            other => Err(fail(&format!("Received unexpected command \"{other}\"."))),
        }
    }

    async fn on_send(&mut self, frame: Frame) -> Result<(), End> {
        let content_type = frame
            .get("content-type")
            .unwrap_or("application/octet-stream")
            .to_string();
        let mut missing = None;
        for name in ["receipt", "type", "destination"] {
            if frame.get(name).is_none() {
                missing = Some(name);
                break;
            }
        }
        if let Some(name) = missing {
            return Err(fail(&format!("SEND command without a {name} header.")));
        }
        let receipt = frame.get("receipt").unwrap_or_default().to_string();
        let msg_type = frame.get("type").unwrap_or_default().to_string();
        let destination = frame.get("destination").unwrap_or_default();
        let with_context = |message: String| {
            error_frame(&message)
                .header("receipt-id", receipt.clone())
                .header("type", msg_type.clone())
                .header("content-type", content_type.clone())
                .body(frame.body.clone())
        };
        if destination != self.destination {
            return Err(with_context(format!("Invalid SEND destination \"{destination}\".")).into());
        }
        let publication = match smp_json::server_process(
            &self.ctx.node,
            &self.peer,
            &msg_type,
            &content_type,
            &frame.body,
            smp_json::now_micros(),
        ) {
            Ok(p) => p,
            Err(e) => {
                if let Some(detail) = e.detail() {
                    tracing::debug!("{e} ({detail})");
                }
                let error = with_context(e.to_string());
                if self.confirms.is_empty() {
                    return Err(error.into());
                }
                // Receipt what came before, then the ERROR.
                self.pending_error = Some(error);
                return Ok(());
            }
        };
        if self.publisher.is_none() {
            let p = Publisher::new(&self.ctx.broker, self.ctx.internal.rmq_confirmation_timeout())
                .await
                .map_err(|e| self.broker_failed(e))?;
            self.publisher = Some(p);
        }
        let publisher = self
            .publisher
            .as_ref()
            .ok_or_else(|| fail("Internal server error."))?;
        let confirm = publisher.publish(&OutMessage {
            exchange: self.ctx.node.node_type.in_exchange(),
            routing_key: &publication.routing_key,
            msg_type: publication.msg_type.as_str(),
            body: &publication.body,
            headers: &publication.headers,
        });
        self.confirms
            .push_back(Box::pin(confirm.map(move |r| r.map(|()| receipt))));
        Ok(())
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.publisher.take() {
            tokio::spawn(async move { p.close().await });
        }
    }
}

/// The ERROR text for a malformed byte stream.
pub fn codec_error_text(e: &stomp_codec::CodecError) -> String {
    let mut s = e.to_string();
    if let Some(first) = s.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    format!("{s}.")
}
