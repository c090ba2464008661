//! The server side of one STOMP session (SPEC section 5), joined to a
//! confirming publisher.
//!
//! ```text
//!  ServerStream ──ClientFrame──> on_frame ──SEND──> on_send: smp_json::server_process ──> Publisher
//!   ^                                                                                │
//!   └── RECEIPT <── receipts: Batch <── on_confirmed <── confirms (publish order) <──┘
//! ```
//!
//! The loop reads frames only while fewer than `buffer` publishes are
//! unconfirmed, and turns confirmations (awaited in publish order) into
//! cumulative RECEIPTs, a few at a time. What is confirmed before an
//! ERROR is receipted before it.
//!
//! On shutdown, and when its peer stops being active in the node database
//! (see [`nodedata::Watcher`]), the session drains: it stops reading,
//! waits for the publishes in flight (within the grace period), receipts
//! them, and only then ends with its ERROR, so the client resends nothing
//! that was published.

use super::handler::{codec_error_text, ServerStream};
use super::ServerContext;
use crate::metrics::{self, InFlight, PeerTypes, SendCount};
use crate::publish::out_message;
use crate::session::frames::{self, connected_frame, error_frame, receipt_frame, ClientFrame, Send};
use crate::session::{until, Batch, Due, HeartBeats, Liveness};
use crate::shutdown::Shutdown;
use amqp_bridge::BridgeError;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use nodedata::{PeerData, Snapshot};
use std::convert::Infallible;
use std::sync::Arc;
use stomp_codec::{CodecError, Frame, StompItem};
use tokio::sync::watch;
use tokio::time::Instant;

/// How a session ends: the connection closed or broke (nothing to send),
/// or an ERROR to send before closing.
pub(super) enum End {
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

fn broker_failed(e: BridgeError) -> End {
    tracing::error!("publishing failed: {e}");
    fail(frames::INTERNAL_SERVER_ERROR)
}

/// A confirmed publish: the SEND's receipt ID and message type (its
/// label index), or why it failed.
type Confirm = futures::future::BoxFuture<'static, Result<(String, usize), BridgeError>>;

/// The server side of one STOMP session.
pub(super) struct Session<'a> {
    ctx: &'a ServerContext,
    peer: Arc<PeerData>,
    shutdown: Shutdown,
    destination: String,
    confirms: FuturesOrdered<Confirm>,
    receipts: Batch<String>,
    /// The receipt of a DISCONNECT waiting for the confirms.
    disconnect: Option<String>,
    /// An ERROR waiting for the earlier confirms.
    pending_error: Option<Frame>,
    /// Ending (shutdown, or the peer no longer active): the deadline for
    /// the confirms in flight, and the ERROR to end with.
    draining: Option<(Instant, &'static str)>,
    /// The node database, followed for our peer's state.
    nodedata: watch::Receiver<Arc<Snapshot>>,
    /// The peer's SEND counters.
    counters: PeerTypes,
}

impl<'a> Session<'a> {
    pub(super) fn new(ctx: &'a ServerContext, peer: Arc<PeerData>, shutdown: Shutdown) -> Self {
        Session {
            destination: ctx.node.node_type.stomp_destination(),
            ctx,
            shutdown,
            confirms: FuturesOrdered::new(),
            receipts: Batch::new(ctx.buffer),
            disconnect: None,
            pending_error: None,
            draining: None,
            nodedata: ctx.nodedata.clone(),
            counters: metrics::get().peer_types(&peer.node_id),
            peer,
        }
    }

    fn count(&mut self, what: SendCount, msg_type: usize) {
        self.counters.inc(what, msg_type);
    }

    /// Runs the session until it ends; the caller then sends the ERROR (if
    /// any) and closes the connection.
    pub(super) async fn run(mut self, conn: &mut ServerStream) -> End {
        match self.drive(conn).await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    async fn drive(&mut self, conn: &mut ServerStream) -> Result<Infallible, End> {
        let mut liveness = Liveness::new(self.connect(conn).await?, &self.ctx.timing);
        loop {
            let reading = self.reading();
            tokio::select! {
                _ = self.shutdown.requested(), if self.draining.is_none() => {
                    self.end_with(frames::CLOSED_BY_SERVER, conn).await?
                }
                _ = until(self.draining.map(|(at, _)| at)) => {
                    tracing::warn!("{} publishes still unconfirmed at the end of the grace period", self.confirms.len());
                    return Err(self.stop(conn).await);
                }
                Some(first) = self.confirms.next(), if !self.confirms.is_empty() => {
                    self.on_confirmed(first, conn).await?
                }
                _ = self.receipts.due() => self.send_receipts(conn).await?,
                item = conn.next(), if reading => {
                    liveness.fed();
                    self.on_item(item, conn).await?;
                    self.read_ready(conn).await?
                }
                due = liveness.due() => on_due(due, conn).await?,
                Ok(()) = self.nodedata.changed(), if self.draining.is_none() => self.check_peer(conn).await?,
            }
        }
    }

    /// Whether to read more frames: fewer than `buffer` publishes
    /// unconfirmed, no ERROR waiting, not ending.
    fn reading(&self) -> bool {
        self.confirms.len() < self.ctx.buffer && self.pending_error.is_none() && self.draining.is_none()
    }

    /// Handles the frames the connection has at hand without waiting for
    /// the socket (a client writes its SENDs in bursts): one turn of the
    /// loop for the burst, not one per frame.
    async fn read_ready(&mut self, conn: &mut ServerStream) -> Result<(), End> {
        while self.reading() {
            match conn.next().now_or_never() {
                Some(item) => self.on_item(item, conn).await?,
                None => break,
            }
        }
        Ok(())
    }

    /// Waits for CONNECT and answers CONNECTED; returns the negotiated
    /// heart-beats.
    async fn connect(&mut self, conn: &mut ServerStream) -> Result<HeartBeats, End> {
        let timing = self.ctx.timing;
        let deadline = tokio::time::Instant::now() + timing.connect_timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, conn.next()).await {
                Err(_) => return Err(fail(frames::CONNECT_NOT_IN_TIME)),
                Ok(None) => return Err(End::Closed),
                Ok(Some(Err(e))) => return Err(fail(&codec_error_text(&e))),
                Ok(Some(Ok(StompItem::HeartBeat))) => continue,
                Ok(Some(Ok(StompItem::Frame(f)))) => f,
            };
            return match ClientFrame::from_frame(frame) {
                ClientFrame::Connect(Ok(theirs)) => {
                    conn.send(connected_frame(timing.offer()))
                        .await
                        .map_err(|_| End::Closed)?;
                    Ok(timing.negotiate(theirs))
                }
                ClientFrame::Connect(Err(text)) => Err(fail(text)),
                ClientFrame::Disconnect { .. } => Err(fail(frames::DISCONNECT_BEFORE_CONNECT)),
                _ => Err(fail(frames::COMMAND_BEFORE_CONNECT)),
            };
        }
    }

    /// Ends the session with the ERROR `message`: stop reading; end once
    /// the publishes in flight are confirmed (and receipted), or at the
    /// drain deadline.
    async fn end_with(&mut self, message: &'static str, conn: &mut ServerStream) -> Result<(), End> {
        self.draining = Some((Instant::now() + self.ctx.internal.drain_wait(), message));
        if self.confirms.is_empty() {
            return Err(self.stop(conn).await);
        }
        tracing::info!(
            "stopping: waiting for {} publishes to be confirmed",
            self.confirms.len()
        );
        Ok(())
    }

    /// Ends a draining session: what is confirmed is receipted; nothing
    /// else is.
    async fn stop(&mut self, conn: &mut ServerStream) -> End {
        if let Err(end) = self.send_receipts(conn).await {
            return end;
        }
        fail(
            self.draining
                .map_or(frames::CLOSED_BY_SERVER, |(_, message)| message),
        )
    }

    /// Confirmations arrived (`first`, and whatever is ready after it). A
    /// failed one ends the session, after the RECEIPT for those before it.
    async fn on_confirmed(
        &mut self,
        first: Result<(String, usize), BridgeError>,
        conn: &mut ServerStream,
    ) -> Result<(), End> {
        let mut next = Some(first);
        while let Some(confirmed) = next.take() {
            match confirmed {
                Ok((receipt, msg_type)) => {
                    self.count(SendCount::Published, msg_type);
                    self.receipts.add(receipt, 1);
                }
                Err(e) => {
                    self.send_receipts(conn).await?;
                    return Err(broker_failed(e));
                }
            }
            next = self.confirms.next().now_or_never().flatten();
        }
        if self.confirms.is_empty() {
            if let Some(frame) = self.pending_error.take() {
                self.send_receipts(conn).await?;
                return Err(frame.into());
            }
            if let Some(receipt) = self.disconnect.take() {
                // The DISCONNECT's receipt confirms everything before it.
                self.receipts.take();
                let _ = conn.send(receipt_frame(&receipt)).await;
                return Err(End::Closed);
            }
            if self.draining.is_some() {
                tracing::info!("stopping: every publish in flight confirmed and receipted");
                return Err(self.stop(conn).await);
            }
        }
        if self.receipts.full() || self.confirms.is_empty() {
            self.send_receipts(conn).await?;
        }
        Ok(())
    }

    /// Sends the RECEIPT for everything confirmed so far.
    async fn send_receipts(&mut self, conn: &mut ServerStream) -> Result<(), End> {
        match self.receipts.take() {
            Some(last) => conn.send(receipt_frame(&last)).await.map_err(|_| End::Closed),
            None => Ok(()),
        }
    }

    /// What the socket gave.
    async fn on_item(
        &mut self,
        item: Option<Result<StompItem, CodecError>>,
        conn: &mut ServerStream,
    ) -> Result<(), End> {
        match item {
            None => Err(End::Closed),
            Some(Err(CodecError::Io(e))) => {
                tracing::info!("the connection broke: {e}");
                Err(End::Closed)
            }
            Some(Err(e)) => Err(fail(&codec_error_text(&e))),
            Some(Ok(StompItem::HeartBeat)) => Ok(()),
            Some(Ok(StompItem::Frame(frame))) => {
                match self.on_frame(ClientFrame::from_frame(frame), conn).await {
                    Err(end @ End::Error(_)) => {
                        // Receipt what is confirmed before the ERROR, or the
                        // peer sends it again.
                        self.send_receipts(conn).await?;
                        Err(end)
                    }
                    other => other,
                }
            }
        }
    }

    /// One frame after CONNECT.
    async fn on_frame(&mut self, frame: ClientFrame, conn: &mut ServerStream) -> Result<(), End> {
        if self.disconnect.is_some() {
            return Err(fail(frames::COMMAND_AFTER_DISCONNECT));
        }
        match frame {
            ClientFrame::Send(send) => self.on_send(send.map_err(|text| fail(&text))?).await,
            ClientFrame::Connect(_) => Err(fail(frames::CONNECT_TWICE)),
            ClientFrame::Disconnect { receipt } => self.on_disconnect(receipt, conn).await,
            ClientFrame::Unexpected(command) => Err(fail(&frames::unexpected_command(&command))),
        }
    }

    /// DISCONNECT: close now, or once every earlier SEND is confirmed.
    async fn on_disconnect(&mut self, receipt: Option<String>, conn: &mut ServerStream) -> Result<(), End> {
        match receipt {
            None => Err(End::Closed),
            Some(receipt) if self.confirms.is_empty() => {
                let _ = conn.send(receipt_frame(&receipt)).await;
                Err(End::Closed)
            }
            Some(receipt) => {
                self.disconnect = Some(receipt);
                Ok(())
            }
        }
    }

    /// SEND: checked, transformed and published; its receipt waits for the
    /// confirmation.
    async fn on_send(&mut self, send: Send) -> Result<(), End> {
        // The label index of its type.
        let msg_type = PeerTypes::index(&send.msg_type);
        self.count(SendCount::Received, msg_type);
        if send.destination != self.destination {
            self.count(SendCount::Refused, msg_type);
            let text = frames::invalid_destination(&send.destination);
            return Err(send.error(&text).into());
        }
        let processed = smp_json::server_process(
            &self.ctx.node,
            &self.peer,
            &send.msg_type,
            &send.content_type,
            &send.body,
            smp_json::now_micros(),
        );
        let publication = match processed {
            Ok(p) => p,
            Err(e) => {
                self.count(SendCount::Refused, msg_type);
                return self.refuse(&send, e);
            }
        };
        let exchange = self.ctx.node.node_type.in_exchange();
        let message = out_message(exchange, &publication);
        let in_flight = InFlight::start();
        let confirm = self
            .ctx
            .publisher
            .publish(&message)
            .await
            .map_err(broker_failed)?;
        let receipt = send.receipt;
        self.confirms.push_back(Box::pin(confirm.map(move |r| {
            r.map(|()| {
                in_flight.confirmed();
                (receipt, msg_type)
            })
        })));
        Ok(())
    }

    /// A SEND the rules refuse: its ERROR, after the RECEIPT for what came
    /// before it.
    fn refuse(&mut self, send: &Send, e: smp_json::ProcessError) -> Result<(), End> {
        if let Some(detail) = e.detail() {
            tracing::debug!("{e} ({detail})");
        }
        let error = send.error(&e.to_string());
        if self.confirms.is_empty() {
            return Err(error.into());
        }
        self.pending_error = Some(error);
        Ok(())
    }

    /// The node database changed: ends the session when our peer is no
    /// longer active (deactivated, or its `ACTIVE` file gone).
    async fn check_peer(&mut self, conn: &mut ServerStream) -> Result<(), End> {
        let active = self
            .nodedata
            .borrow_and_update()
            .active_peer(&self.peer.node_id)
            .is_some();
        if active {
            return Ok(());
        }
        tracing::warn!("the peer is no longer active; ending its connection");
        self.end_with(frames::DEACTIVATED, conn).await
    }
}

/// A heart-beat to send, or a silent peer.
async fn on_due(due: Due, conn: &mut ServerStream) -> Result<(), End> {
    match due {
        Due::HeartBeat => conn.send(StompItem::HeartBeat).await.map_err(|_| End::Closed),
        Due::Silent(limit) => Err(fail(&frames::silence_text(limit))),
    }
}
