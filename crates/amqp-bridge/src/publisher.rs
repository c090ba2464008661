//! The confirmed publisher: a publishing connection of its own, with one
//! confirming channel; publishes pipelined in call order, each with a
//! future that resolves on its confirmation.
//!
//! ```text
//!  publish ──encode──> outbox (bytes) ──one write per wake-up──> writer task ──> RabbitMQ
//!     │                                                                            │
//!     └──> pending (seq, fingerprint, sender) <── reader task: basic.ack / nack, <──┘
//!                                                 basic.return, closes, heartbeats
//! ```
//!
//! A publish is encoded straight into the connection's outbox under the
//! lock that numbers it (1, 2, ... as the broker numbers the channel's
//! messages), so the order on the wire is the call order, and a burst of
//! publishes from many sessions leaves in one write: on a client that
//! writes every publish with a system call of its own, those calls were the
//! largest part of the server's CPU. The frames themselves are in
//! `wire`, the connection's handshake, writer and reader in `own`.
//! Everything else of the gateway (consumers, checks, topology, the
//! readiness probe) is on the [`SharedConnection`]; the publishing
//! connection goes to the same broker node as it, and stays apart from it:
//! RabbitMQ stops reading a connection it blocks for publishing (a memory
//! or disk alarm), which must not stall the acks of consumers.
//!
//! `basic.ack` / `basic.nack` (`multiple` included) settle the pending
//! publishes. A `basic.return` (mandatory, unroutable) carries no delivery
//! tag: it is matched to the oldest unconfirmed message with the same
//! exchange, routing key and body (identical messages are routed alike),
//! whose confirmation then fails as `Returned`. A lost connection, a
//! channel or connection closed by RabbitMQ, or a confirmation overdue
//! fails everything pending, and the publisher with it.

use crate::own::{self, ConnState, Out, CLOSE_WAIT, OUTBOX_LIMIT};
use crate::wire::{self, method, Content};
use crate::{checked_name, BridgeError, HeaderValue, OutMessage, SharedConnection};
use futures::FutureExt;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A pending confirmation; await it to learn the message's fate.
pub type PendingConfirm = futures::future::BoxFuture<'static, Result<(), BridgeError>>;

/// The publishing channel's number.
const CHANNEL: u16 = 1;

/// One unconfirmed publish.
struct Unconfirmed {
    seq: u64,
    sent: Instant,
    fingerprint: u64,
    returned: Option<(String, String)>,
    settle: oneshot::Sender<Result<(), BridgeError>>,
}

impl Unconfirmed {
    /// Resolves the publish's future: acked (and not returned), or why not.
    fn finish(self, acked: bool) {
        let result = match (self.returned, acked) {
            (Some((exchange, routing_key)), _) => Err(BridgeError::Returned {
                exchange,
                routing_key,
            }),
            (None, true) => Ok(()),
            (None, false) => Err(BridgeError::Nacked),
        };
        let _ = self.settle.send(result);
    }
}

fn fingerprint(exchange: &str, routing_key: &str, body: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (exchange, routing_key, body).hash(&mut h);
    h.finish()
}

/// What the publisher, its writer and its reader share.
struct State {
    /// The number the broker gives the next publish.
    next_seq: u64,
    pending: VecDeque<Unconfirmed>,
    out: Out,
    frame_max: usize,
}

impl State {
    /// Settles the publish numbered `tag`, or every one up to it.
    fn settle(&mut self, tag: u64, multiple: bool, ok: bool) {
        if multiple {
            while self.pending.front().is_some_and(|u| u.seq <= tag) {
                if let Some(u) = self.pending.pop_front() {
                    u.finish(ok);
                }
            }
        } else if let Some(i) = self.pending.iter().position(|u| u.seq == tag) {
            if let Some(u) = self.pending.remove(i) {
                u.finish(ok);
            }
        }
    }

    /// Marks the oldest unconfirmed publish that a `basic.return` matches.
    fn mark_returned(&mut self, exchange: String, routing_key: String, body: &[u8]) {
        let fp = fingerprint(&exchange, &routing_key, body);
        if let Some(u) = self
            .pending
            .iter_mut()
            .find(|u| u.fingerprint == fp && u.returned.is_none())
        {
            u.returned = Some((exchange, routing_key));
        }
    }
}

impl ConnState for State {
    fn out(&mut self) -> &mut Out {
        &mut self.out
    }

    /// Fails everything pending, and the publisher: the connection is
    /// gone or no longer to be trusted.
    fn fail_all(&mut self, error: BridgeError) {
        self.out.stop(&error);
        for u in self.pending.drain(..) {
            let _ = u.settle.send(Err(error.clone()));
        }
    }
}

/// The publishing connection.
type Link = own::Conn<State>;

/// A publisher with confirms on a connection of its own. One task
/// publishes with it (the message numbers follow the call order); see
/// [`SharedPublisher`] for many.
pub struct Publisher {
    link: Arc<Link>,
    reader: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Opens a publishing connection to the broker node `conn` is on, and
    /// a confirming channel on it.
    pub async fn new(conn: &SharedConnection, confirm_timeout: Duration) -> Result<Publisher, BridgeError> {
        let mut opened = own::open_near(conn).await?;
        if let Err(e) = opened.open_confirming_channel(CHANNEL).await {
            return Err(BridgeError::Amqp(format!(
                "opening the publishing channel failed: {e}"
            )));
        }
        let link = Arc::new(Link::new(State {
            next_seq: 1,
            pending: VecDeque::new(),
            out: Out::new(),
            frame_max: opened.frame_max,
        }));
        let mut returning = None;
        let reader = opened.start(&link, move |link, frame| handle(link, &frame, &mut returning));
        tokio::spawn(watchdog(Arc::downgrade(&link), confirm_timeout));
        Ok(Publisher {
            link,
            reader: Some(reader),
        })
    }

    /// Publishes one message (persistent, mandatory, `app_id
    /// swpt_stomp`). The frames are queued for the connection's writer
    /// when this returns, so messages go out in call order without
    /// waiting for each other; the returned future resolves when RabbitMQ
    /// confirms the message, or fails on a nack, a return, a closed
    /// channel, a lost connection or the confirmation timeout.
    pub async fn publish(&mut self, m: &OutMessage<'_>) -> PendingConfirm {
        match self.send(m).await {
            Ok(settled) => Box::pin(settled.map(|r| r.unwrap_or(Err(BridgeError::ConnectionLost)))),
            Err(e) => Box::pin(futures::future::ready(Err(e))),
        }
    }

    async fn send(
        &mut self,
        m: &OutMessage<'_>,
    ) -> Result<oneshot::Receiver<Result<(), BridgeError>>, BridgeError> {
        let (exchange, routing_key) = (checked_name(m.exchange)?, checked_name(m.routing_key)?);
        let msg_type = checked_name(m.msg_type)?;
        for (name, value) in &m.headers {
            checked_name(name)?;
            if let HeaderValue::Str(s) = value {
                if u32::try_from(s.len()).is_err() {
                    return Err(BridgeError::Name(s.clone()));
                }
            }
        }
        let content = Content {
            content_type: "application/json",
            msg_type,
            app_id: "swpt_stomp",
            persistent: true,
            headers: &m.headers,
            body: m.body,
        };
        let (settle, settled) = oneshot::channel();
        let (wake, full) = {
            let mut state = self.link.state();
            if let Some(why) = &state.out.closed {
                return Err(BridgeError::Amqp(why.clone()));
            }
            let wake = state.out.outbox.is_empty();
            let frame_max = state.frame_max;
            wire::publish(
                &mut state.out.outbox,
                CHANNEL,
                exchange,
                routing_key,
                &content,
                frame_max,
            );
            let seq = state.next_seq;
            state.next_seq += 1;
            state.pending.push_back(Unconfirmed {
                seq,
                sent: Instant::now(),
                fingerprint: fingerprint(exchange, routing_key, m.body),
                returned: None,
                settle,
            });
            (wake, state.out.outbox.len() > OUTBOX_LIMIT)
        };
        if wake {
            self.link.wake_writer.notify_one();
        }
        if full {
            self.room().await;
        }
        Ok(settled)
    }

    /// Waits until the outbox is below its limit (or the publisher closed).
    async fn room(&self) {
        loop {
            let drained = self.link.drained.notified();
            {
                let state = self.link.state();
                if state.out.outbox.len() <= OUTBOX_LIMIT || state.out.closed.is_some() {
                    return;
                }
            }
            drained.await;
        }
    }

    /// Whether the publisher can still publish (its connection is up,
    /// nothing failed it).
    pub fn usable(&self) -> bool {
        self.link.usable()
    }

    /// Closes the connection, once what was published is written; waits
    /// (a few seconds at most) for RabbitMQ to acknowledge the close.
    pub async fn close(mut self) {
        self.link.close("the publisher was closed");
        if let Some(mut reader) = self.reader.take() {
            if tokio::time::timeout(CLOSE_WAIT, &mut reader).await.is_err() {
                // A broker that does not answer: drop the connection.
                reader.abort();
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.link.close("the publisher was closed");
    }
}

/// A `basic.return` whose content is still coming.
struct Returning {
    exchange: String,
    routing_key: String,
    size: Option<u64>,
    body: Vec<u8>,
}

/// Handles one frame from RabbitMQ; returns why the connection ends, if
/// it does.
fn handle(
    link: &Link,
    frame: &wire::Frame,
    returning: &mut Option<Returning>,
) -> io::Result<Option<BridgeError>> {
    match frame.kind {
        wire::FRAME_HEADER | wire::FRAME_BODY => {
            let Some(r) = returning.as_mut() else {
                return Ok(None);
            };
            if frame.kind == wire::FRAME_HEADER {
                r.size = frame.body_size();
            } else {
                r.body.extend_from_slice(&frame.payload);
            }
            if r.size.is_some_and(|size| r.body.len() as u64 >= size) {
                if let Some(r) = returning.take() {
                    link.state().mark_returned(r.exchange, r.routing_key, &r.body);
                }
            }
            return Ok(None);
        }
        _ => {}
    }
    let Some((m, mut a)) = frame.method() else {
        return Ok(None);
    };
    if let Some(end) = own::common(link, "publishing", frame.channel, m, frame.args())? {
        return Ok(end);
    }
    match m {
        method::BASIC_ACK | method::BASIC_NACK => {
            let (tag, bits) = (a.u64()?, a.u8()?);
            link.state().settle(tag, bits & 1 == 1, m == method::BASIC_ACK);
        }
        method::BASIC_RETURN => {
            let (_code, _text) = (a.u16()?, a.short_str()?);
            *returning = Some(Returning {
                exchange: a.short_str()?,
                routing_key: a.short_str()?,
                size: None,
                body: Vec::new(),
            });
        }
        method::CHANNEL_CLOSE => {
            let (code, text) = (a.u16()?, a.short_str()?);
            tracing::warn!("RabbitMQ closed the publishing channel: {code} {text}");
            link.send(|o| wire::method_frame(o, frame.channel, method::CHANNEL_CLOSE_OK, |_| {}));
            let why = BridgeError::Amqp(format!("the channel was closed: {code} {text}"));
            // The channel is gone; the connection is closed after it.
            link.state().fail_all(why);
            link.close("the channel was closed");
        }
        other => tracing::debug!("ignored AMQP method {other:?} on the publishing connection"),
    }
    Ok(None)
}

/// Fails a publisher's pending confirmations when the oldest has waited
/// longer than `timeout` (and closes its connection): one timer per
/// publisher, not one per message. Ends with the publisher.
async fn watchdog(link: Weak<Link>, timeout: Duration) {
    let every = (timeout / 4).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(link) = link.upgrade() else {
            return;
        };
        let mut state = link.state();
        if state.out.closed.is_some() {
            return;
        }
        if state.pending.front().is_some_and(|u| u.sent.elapsed() > timeout) {
            state.fail_all(BridgeError::ConfirmTimeout(timeout));
            drop(state);
            link.close("a confirmation was overdue");
            return;
        }
    }
}

/// One publisher (one connection, one confirming channel) for many
/// publishing tasks (a server's sessions): their publishes share the
/// outbox, so a turn in which many sessions publish still ends in one
/// write, and the broker keeps one connection, not one per session.
/// Opened at the first publish, and again after a failure.
pub struct SharedPublisher {
    conn: Arc<crate::SharedConnection>,
    confirm_timeout: Duration,
    publisher: tokio::sync::Mutex<Option<Publisher>>,
}

impl SharedPublisher {
    pub fn new(conn: Arc<crate::SharedConnection>, confirm_timeout: Duration) -> SharedPublisher {
        SharedPublisher {
            conn,
            confirm_timeout,
            publisher: tokio::sync::Mutex::new(None),
        }
    }

    /// Publishes one message, as [`Publisher::publish`]; fails when no
    /// publishing connection can be opened.
    pub async fn publish(&self, m: &OutMessage<'_>) -> Result<PendingConfirm, BridgeError> {
        let mut slot = self.publisher.lock().await;
        if !slot.as_ref().is_some_and(Publisher::usable) {
            *slot = Some(Publisher::new(&self.conn, self.confirm_timeout).await?);
        }
        match slot.as_mut() {
            Some(p) => Ok(p.publish(m).await),
            None => Err(BridgeError::ConnectionLost),
        }
    }

    /// Closes the publishing connection, if open.
    pub async fn close(&self) {
        if let Some(p) = self.publisher.lock().await.take() {
            p.close().await;
        }
    }
}
