//! One session of a link (as `server::session` is one of a server
//! connection): a TLS STOMP connection to one of the peer's servers,
//! joined to a consumer of the queue, run until it ends.
//!
//! ```text
//!  Consumer ──on_deliveries──> outgoing (smp_json::client_process) ──SEND──> ClientStream
//!     ^  │ invalid: dead_letter → QUEUE.XQ                                    │
//!     │  v                                                                   v
//!     └── acks: Batch <── on_receipt (cumulative) <── ServerFrame <── on_item
//! ```

use super::{no_queue, ClientSettings, LinkEnd};
use crate::http::UpGuard;
use crate::metrics::{LinkCounters, Raised};
use crate::session::frames::{self, disconnect_frame, send_frame, stomp_frame, ServerFrame};
use crate::session::PeerStream;
use crate::session::{until, Batch, Due, HeartBeats, Liveness, Timing};
use crate::shutdown::Shutdown;
use amqp_bridge::{BridgeError, Consumer, InMessage, SharedConnection};
use futures::{FutureExt, SinkExt, StreamExt};
use nodedata::{NodeData, PeerData, Snapshot};
use rand::Rng;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use stomp_codec::{CodecError, Frame, StompItem};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// The peer's STOMP frames, as the client reads and writes them.
type ClientStream = PeerStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// What one connection of a link works with.
pub(super) struct Context<'a> {
    pub s: &'a ClientSettings,
    pub queue: &'a str,
    /// The link's series.
    pub counters: &'a LinkCounters,
    pub node: &'a NodeData,
    pub peer: &'a PeerData,
    pub connector: &'a TlsConnector,
    pub broker: &'a SharedConnection,
}

/// Makes one connection of a link and runs it to its end.
pub(super) async fn run(
    cx: &Context<'_>,
    nodedata: &mut watch::Receiver<Arc<Snapshot>>,
    shutdown: &mut Shutdown,
) -> LinkEnd {
    if shutdown.is_requested() {
        return LinkEnd::Shutdown;
    }
    let timing = cx.s.node.internal.timing();
    let (session, beats) = match Session::start(cx, &timing).await {
        Ok(started) => started,
        Err(end) => return end,
    };
    session
        .run(Liveness::new(beats, &timing), nodedata, shutdown)
        .await
}

/// A session in progress.
struct Session<'a> {
    s: &'a ClientSettings,
    queue: &'a str,
    node: &'a NodeData,
    peer: &'a PeerData,
    conn: ClientStream,
    consumer: Consumer,
    /// Delivery tags sent and not yet receipted, in order, with when
    /// they were sent (for the receipt histogram).
    inflight: VecDeque<(u64, Instant)>,
    /// The link's series.
    counters: &'a LinkCounters,
    /// Up while the session lives: readiness...
    _ready: UpGuard,
    /// ...and `swpt_client_link_up`.
    _link_up: Raised,
    /// What this connection carried: said when it ends.
    figures: Figures,
    acks: Batch<u64>,
    /// When a DISCONNECT was sent: the deadline for its RECEIPT.
    disconnecting: Option<Instant>,
    /// Whether the session is ending because the peer is no longer active
    /// (otherwise, on shutdown).
    inactive: bool,
}

/// Messages sent and receipted on one connection, and since when.
#[derive(Clone, Copy)]
struct Figures {
    sent: u64,
    receipted: u64,
    since: Instant,
}

impl<'a> Session<'a> {
    /// Connects, says STOMP, and starts consuming.
    async fn start(cx: &Context<'a>, timing: &Timing) -> Result<(Session<'a>, HeartBeats), LinkEnd> {
        let (s, peer) = (cx.s, cx.peer);
        let mut conn = open(peer, cx.connector, timing.connect_timeout)
            .await
            .map_err(LinkEnd::Retry)?;
        let beats = handshake(&mut conn, peer, timing).await.map_err(LinkEnd::Retry)?;
        let consumer = match Consumer::new(cx.broker, cx.queue, s.buffer).await {
            Ok(c) => c,
            Err(e @ BridgeError::NoQueue(_)) => return Err(LinkEnd::Fatal(no_queue(e))),
            Err(e) => return Err(LinkEnd::Retry(e.to_string())),
        };
        let session = Session {
            s,
            queue: cx.queue,
            node: cx.node,
            peer,
            conn,
            consumer,
            inflight: VecDeque::new(),
            counters: cx.counters,
            _ready: s.up.up(),
            _link_up: Raised::new(cx.counters.up.clone()),
            figures: Figures {
                sent: 0,
                receipted: 0,
                since: Instant::now(),
            },
            acks: Batch::new(s.buffer),
            disconnecting: None,
            inactive: false,
        };
        Ok((session, beats))
    }

    /// Runs the session until it ends, then closes it: what the server
    /// receipted is acked before the channel closes.
    async fn run(
        mut self,
        mut liveness: Liveness,
        nodedata: &mut watch::Receiver<Arc<Snapshot>>,
        shutdown: &mut Shutdown,
    ) -> LinkEnd {
        let end = loop {
            let room = self.inflight.len() < self.s.buffer && self.disconnecting.is_none();
            let step = tokio::select! {
                _ = shutdown.requested(), if self.disconnecting.is_none() => self.disconnect(false).await,
                Ok(()) = nodedata.changed(), if self.disconnecting.is_none() => {
                    let active = nodedata.borrow_and_update().active_peer(&self.peer.node_id).is_some();
                    if active {
                        Ok(())
                    } else {
                        tracing::warn!("peer {} is no longer active; ending the link", self.peer.node_id);
                        self.disconnect(true).await
                    }
                }
                _ = until(self.disconnecting) => {
                    tracing::warn!("no RECEIPT for DISCONNECT in time; unconfirmed messages will be redelivered");
                    Err(self.finished())
                }
                delivery = self.consumer.next(), if room => self.on_deliveries(delivery).await,
                item = self.conn.next() => {
                    liveness.fed();
                    self.on_item(item)
                }
                _ = self.acks.due() => {
                    self.flush_acks();
                    Ok(())
                }
                due = liveness.due() => self.on_due(due).await,
            };
            if let Err(end) = step {
                break end;
            }
        };
        self.flush_acks();
        let Figures {
            sent,
            receipted,
            since,
        } = self.figures;
        tracing::info!(
            sent,
            receipted,
            "connection ended after {:.0} s: {sent} messages sent, {receipted} receipted",
            since.elapsed().as_secs_f64()
        );
        self.consumer.close().await;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            SinkExt::<StompItem>::close(&mut self.conn),
        )
        .await;
        end
    }

    /// Ends the session (on shutdown, or for an `inactive` peer): done when
    /// nothing is in flight; otherwise DISCONNECT and wait for its RECEIPT.
    async fn disconnect(&mut self, inactive: bool) -> Result<(), LinkEnd> {
        self.inactive = inactive;
        let Some(&(last, _)) = self.inflight.back() else {
            return Err(self.finished());
        };
        if self.conn.send(disconnect_frame(last)).await.is_err() {
            return Err(self.finished());
        }
        // The RECEIPT is waited for within the grace period of the stop.
        self.disconnecting = Some(Instant::now() + self.s.node.internal.drain_wait());
        Ok(())
    }

    /// How a session that disconnected ends.
    fn finished(&self) -> LinkEnd {
        if self.inactive {
            LinkEnd::Inactive
        } else {
            LinkEnd::Shutdown
        }
    }

    /// Sends `first` and every delivery that is ready already, in one write.
    async fn on_deliveries(&mut self, first: Result<InMessage, BridgeError>) -> Result<(), LinkEnd> {
        let mut next = Some(first);
        while let Some(delivery) = next.take() {
            let m = delivery
                .map_err(|e| LinkEnd::Retry(format!("consuming from \"{}\" failed: {e}", self.queue)))?;
            match outgoing(self.node, self.peer, &m) {
                Ok(frame) => {
                    if let Err(e) = self.conn.feed(frame).await {
                        return Err(self.after_write_failure(format!("sending failed: {e}")).await);
                    }
                    self.inflight.push_back((m.delivery_tag, Instant::now()));
                    self.figures.sent += 1;
                    self.counters.sent.inc();
                }
                Err(e) => {
                    let detail = e.detail().map(|d| format!(" ({d})")).unwrap_or_default();
                    self.dead_letter(m.delivery_tag, &format!("{e}{detail}"));
                }
            }
            if self.inflight.len() < self.s.buffer {
                next = self.consumer.next().now_or_never();
            }
        }
        if let Err(e) = SinkExt::<Frame>::flush(&mut self.conn).await {
            return Err(self.after_write_failure(format!("sending failed: {e}")).await);
        }
        Ok(())
    }

    /// What the socket gave.
    fn on_item(&mut self, item: Option<Result<StompItem, CodecError>>) -> Result<(), LinkEnd> {
        match item {
            None => Err(LinkEnd::Retry("the server closed the connection".into())),
            Some(Err(e)) => Err(LinkEnd::Retry(format!("protocol error: {e}"))),
            Some(Ok(StompItem::HeartBeat)) => Ok(()),
            Some(Ok(StompItem::Frame(f))) => {
                self.on_frame(ServerFrame::from_frame(f))?;
                if self.disconnecting.is_some() && self.inflight.is_empty() {
                    return Err(self.finished());
                }
                Ok(())
            }
        }
    }

    /// A frame from the server after CONNECTED: a RECEIPT confirms (and,
    /// in batches, acks) everything sent up to it; anything else ends the
    /// session.
    fn on_frame(&mut self, frame: ServerFrame) -> Result<(), LinkEnd> {
        match frame {
            ServerFrame::Receipt(id) => self.on_receipt(id),
            ServerFrame::Error { message, receipt_id } => {
                // An ERROR about one of our messages (it names its receipt)
                // would come back for that message on every session:
                // dead-letter it, so the link goes on.
                let refused = receipt_id.and_then(|r| r.parse::<u64>().ok());
                if let Some(tag) = refused.filter(|t| self.inflight.iter().any(|(i, _)| i == t)) {
                    self.dead_letter(tag, &format!("the server refused the message: {message}"));
                }
                Err(LinkEnd::Retry(frames::server_error(&message)))
            }
            ServerFrame::Connected(_) => Err(LinkEnd::Retry(frames::CONNECTED_TWICE.into())),
            ServerFrame::Unexpected(command) => Err(LinkEnd::Retry(frames::unexpected_command(&command))),
        }
    }

    fn on_receipt(&mut self, id: Option<String>) -> Result<(), LinkEnd> {
        let Some(tag) = id.and_then(|r| r.parse::<u64>().ok()) else {
            return Err(LinkEnd::Retry(frames::RECEIPT_WITHOUT_ID.into()));
        };
        if !self.inflight.iter().any(|(t, _)| *t == tag) {
            return Err(LinkEnd::Retry(format!("RECEIPT for an unknown message {tag}")));
        }
        let mut count = 0;
        let now = Instant::now();
        while let Some(&(_, sent)) = self.inflight.front().filter(|(t, _)| *t <= tag) {
            self.inflight.pop_front();
            let c = self.counters;
            c.receipt_seconds.observe(now.duration_since(sent).as_secs_f64());
            c.acked.inc();
            count += 1;
        }
        self.acks.add(tag, count);
        self.figures.receipted += count as u64;
        if self.acks.full() || self.inflight.is_empty() {
            self.flush_acks();
        }
        Ok(())
    }

    /// Rejects a message to the dead-letter queue.
    fn dead_letter(&mut self, tag: u64, why: &str) {
        self.consumer.dead_letter(tag, why);
        self.counters.dead_lettered.inc();
    }

    /// Acks everything receipted so far.
    fn flush_acks(&mut self) {
        if let Some(tag) = self.acks.take() {
            self.consumer.ack_up_to(tag);
        }
    }

    async fn on_due(&mut self, due: Due) -> Result<(), LinkEnd> {
        match due {
            Due::HeartBeat => match self.conn.send(StompItem::HeartBeat).await {
                Ok(()) => Ok(()),
                Err(e) => Err(self
                    .after_write_failure(format!("sending a heart-beat failed: {e}"))
                    .await),
            },
            Due::Silent(_) => Err(LinkEnd::Retry(
                "no data from the server in time (heart-beats stopped)".into(),
            )),
        }
    }

    /// After a failed write, reads what the server sent before it closed
    /// (a RECEIPT to ack, an ERROR naming a message), for a second at
    /// most. Otherwise a server that answered a SEND with ERROR and closed
    /// would have its RECEIPT and ERROR lost: duplicates, and a link stuck
    /// on the refused message.
    async fn after_write_failure(&mut self, why: String) -> LinkEnd {
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Ok(Some(Ok(item))) = tokio::time::timeout_at(deadline, self.conn.next()).await {
            if let StompItem::Frame(f) = item {
                if let Err(end) = self.on_frame(ServerFrame::from_frame(f)) {
                    return end;
                }
            }
        }
        LinkEnd::Retry(why)
    }
}

/// The SEND frame for one delivery, after the client-side rules.
fn outgoing(node: &NodeData, peer: &PeerData, m: &InMessage) -> Result<Frame, smp_json::ProcessError> {
    let msg = smp_json::client_process(node, peer, &m.msg_type, &m.content_type, &m.body)?;
    let destination = &peer.servers_manifest.destination;
    Ok(send_frame(
        destination,
        msg.msg_type.as_str(),
        m.delivery_tag,
        msg.to_json(),
    ))
}

/// Connects to a random server of the peer's manifest, over TLS.
async fn open(peer: &PeerData, connector: &TlsConnector, timeout: Duration) -> Result<ClientStream, String> {
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
    Ok(crate::session::framed(tls))
}

/// Sends STOMP and waits for CONNECTED; returns the negotiated heart-beats.
async fn handshake(conn: &mut ClientStream, peer: &PeerData, timing: &Timing) -> Result<HeartBeats, String> {
    conn.send(stomp_frame(&peer.servers_manifest, timing.offer()))
        .await
        .map_err(|e| format!("sending STOMP failed: {e}"))?;
    let deadline = Instant::now() + timing.connect_timeout;
    loop {
        let item = tokio::time::timeout_at(deadline, conn.next())
            .await
            .map_err(|_| "no CONNECTED frame in time".to_string())?;
        let frame = match item {
            None => return Err("the server closed the connection".into()),
            Some(Err(e)) => return Err(format!("protocol error: {e}")),
            Some(Ok(StompItem::HeartBeat)) => continue,
            Some(Ok(StompItem::Frame(f))) => f,
        };
        return match ServerFrame::from_frame(frame) {
            ServerFrame::Connected(offer) => Ok(timing.negotiate(offer.map_err(str::to_string)?)),
            ServerFrame::Error { message, .. } => Err(frames::server_error(&message)),
            ServerFrame::Receipt(_) => Err(frames::COMMAND_BEFORE_CONNECTED.into()),
            ServerFrame::Unexpected(command) => Err(frames::unexpected_command(&command)),
        };
    }
}
