//! The confirmed publisher: a publishing connection of its own, with one
//! confirming channel; publishes pipelined in call order, each with a
//! future that resolves on its confirmation.
//!
//! ```text
//!  publish ──encode──> outbox (bytes) ──one write per wake-up──> writer task ──> RabbitMQ
//!     │                                                                            │
//!     └──> pending (seq, fingerprint, sender) <── reader task: basic.ack / nack, <──┘
//!                                                 basic.return, closes, flow control
//! ```
//!
//! A publish is encoded straight into the connection's outbox under the
//! lock that numbers it (1, 2, ... as the broker numbers the channel's
//! messages), so the order on the wire is the call order, and a burst of
//! publishes from many sessions leaves in one write. The publishing
//! connection stays apart from the shared one (see `shared`): RabbitMQ
//! stops reading a connection it blocks for publishing (a memory or disk
//! alarm), which must not stall the acks of consumers.
//!
//! Flow control is obeyed: while RabbitMQ blocks the connection
//! (`connection.blocked`) or stops the channel (`channel.flow`), nothing
//! of the outbox is written, publishers wait once it is full, and the
//! confirmation deadline does not run (it starts again at the unblock).
//!
//! `basic.ack` / `basic.nack` (`multiple` included) settle the pending
//! publishes. A `basic.return` (mandatory, unroutable) carries no delivery
//! tag: it is matched to the oldest unconfirmed message with the same
//! exchange, routing key and body (identical messages are routed alike),
//! whose confirmation then fails as `Returned`. A lost connection, a
//! channel or connection closed by RabbitMQ, or a confirmation overdue
//! fails everything pending, and the publisher with it.

use crate::conn::{self, ChannelState, ConnState, Out, CLOSE_WAIT, OUTBOX_LIMIT};
use crate::wire::content::Arrival;
use crate::wire::{self, codec::Table, id, method, Method, Properties, Violation};
use crate::{checked_name, BridgeError, HeaderValue, OutMessage};
use futures::FutureExt;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
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
    /// RabbitMQ stopped the channel (`channel.flow` inactive).
    flow_stopped: bool,
    /// The publishing channel is open (until a close of either side).
    channel_open: bool,
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
    fn mark_returned(&mut self, exchange: &str, routing_key: &str, body: &[u8]) {
        let fp = fingerprint(exchange, routing_key, body);
        if let Some(u) = self
            .pending
            .iter_mut()
            .find(|u| u.fingerprint == fp && u.returned.is_none())
        {
            u.returned = Some((exchange.to_string(), routing_key.to_string()));
        }
    }

    /// Why RabbitMQ holds publishing, if it does.
    fn blocked(&self) -> Option<String> {
        match (&self.out.blocked, self.flow_stopped) {
            (Some((reason, _)), _) => Some(reason.clone()),
            (None, true) => Some("channel.flow stopped the publishing channel".into()),
            (None, false) => None,
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

    fn held(&mut self) -> bool {
        self.out.blocked.is_some() || self.flow_stopped
    }

    fn flow(&mut self, _channel: u16, active: bool) {
        if self.flow_stopped == active {
            match active {
                true => tracing::warn!("RabbitMQ resumed the publishing channel (channel.flow)"),
                false => tracing::warn!("RabbitMQ stopped the publishing channel (channel.flow)"),
            }
        }
        self.flow_stopped = !active;
        if active {
            self.out.unblocked_at = Some(Instant::now());
        }
    }

    fn channel(&self, channel: u16) -> ChannelState {
        match (channel, self.channel_open) {
            (CHANNEL, true) if self.out.closed.is_some() => ChannelState::Closing,
            (CHANNEL, true) => ChannelState::Open,
            _ => ChannelState::Unknown,
        }
    }

    fn channel_closed(&mut self, _channel: u16, by_broker: Option<(u16, String)>) {
        self.channel_open = false;
        if let Some((code, text)) = by_broker {
            // The channel is gone; the connection is closed after it.
            let why = BridgeError::Amqp(format!("the publishing channel was closed: {code} {text}"));
            self.fail_all(why);
            self.out.stop(&"the publishing channel was closed");
        }
    }
}

/// The publishing connection.
type Link = conn::Conn<State>;

/// A publisher with confirms on a connection of its own. One task
/// publishes with it (the message numbers follow the call order); see
/// `SharedPublisher` for many.
pub struct Publisher {
    link: Arc<Link>,
    reader: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Opens the confirming channel on `opened` (each step within
    /// `deadline`) and starts the connection.
    pub(crate) async fn start(
        mut opened: conn::Opened,
        confirm_timeout: Duration,
        deadline: Duration,
    ) -> Result<Publisher, BridgeError> {
        let steps = [
            (Method::ChannelOpen, id::CHANNEL_OPEN_OK),
            (Method::ConfirmSelect, id::CONFIRM_SELECT_OK),
        ];
        for (m, want) in steps {
            if let Err(e) = opened.call(CHANNEL, &m, want, deadline).await {
                return Err(BridgeError::Amqp(format!(
                    "opening the publishing channel failed: {e}"
                )));
            }
        }
        let link = Arc::new(Link::new(State {
            next_seq: 1,
            pending: VecDeque::new(),
            out: Out::new(),
            frame_max: opened.frame_max,
            flow_stopped: false,
            channel_open: true,
        }));
        let reader = opened.start(&link, handle);
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
    /// channel, a lost connection or the confirmation timeout. A message
    /// whose properties cannot fit in one frame fails alone.
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
        check_encodable(m)?;
        let (exchange, routing_key, msg_type) = (m.exchange, m.routing_key, m.msg_type);
        let publish = Method::BasicPublish {
            exchange,
            routing_key,
            mandatory: true,
        };
        let properties = Properties {
            content_type: Some("application/json"),
            headers: Some(Table::Headers(&m.headers)),
            delivery_mode: Some(2),
            kind: Some(msg_type),
            app_id: Some("swpt_stomp"),
            ..Properties::default()
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
                &publish,
                &properties,
                m.body,
                frame_max,
            )
            .map_err(BridgeError::TooLarge)?;
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
            tokio::pin!(drained);
            drained.as_mut().enable();
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

    /// Why RabbitMQ holds this publisher's messages, if it does (a memory
    /// or disk alarm: `connection.blocked`'s reason).
    pub fn blocked(&self) -> Option<String> {
        self.link.state().blocked()
    }

    /// A handle that tells whether RabbitMQ blocks this publisher.
    pub(crate) fn status(&self) -> Status {
        Status(Arc::downgrade(&self.link))
    }

    /// Closes the publisher cleanly: the channel once what was published
    /// is written, then the connection, each waiting (a few seconds at
    /// most) for RabbitMQ's `close-ok`.
    pub async fn close(mut self) {
        let open = {
            let mut state = self.link.state();
            let open = state.channel_open && state.out.closed.is_none() && !state.held();
            if open {
                wire::method_frame(&mut state.out.outbox, CHANNEL, &Method::CHANNEL_CLOSE);
            }
            open
        };
        if open {
            self.link.wake_writer.notify_one();
            let closed = self.link.until_state(|s| !s.channel_open || s.out.gone);
            let _ = tokio::time::timeout(CLOSE_WAIT, closed).await;
        }
        self.link.close("the publisher was closed");
        if let Some(mut reader) = self.reader.take() {
            if tokio::time::timeout(CLOSE_WAIT * 2, &mut reader).await.is_err() {
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

/// Checks that a message's names and headers can be encoded (short
/// strings of at most 255 bytes, long strings of at most 4 GiB).
fn check_encodable(m: &OutMessage<'_>) -> Result<(), BridgeError> {
    for name in [m.exchange, m.routing_key, m.msg_type] {
        checked_name(name)?;
    }
    for (name, value) in &m.headers {
        checked_name(name)?;
        if let HeaderValue::Str(s) = value {
            if u32::try_from(s.len()).is_err() {
                return Err(BridgeError::Name(s.clone()));
            }
        }
    }
    Ok(())
}

/// Whether RabbitMQ blocks a publisher, without holding it open.
#[derive(Clone)]
pub(crate) struct Status(Weak<Link>);

impl Status {
    pub fn blocked(&self) -> Option<String> {
        self.0.upgrade().and_then(|link| link.state().blocked())
    }
}

/// Handles one method (with its content) on the publishing channel.
fn handle(link: &Link, arrival: Arrival) -> Result<(), Violation> {
    match arrival.method.method()? {
        Method::BasicAck {
            delivery_tag,
            multiple,
        } => link.state().settle(delivery_tag, multiple, true),
        Method::BasicNack {
            delivery_tag,
            multiple,
            ..
        } => link.state().settle(delivery_tag, multiple, false),
        Method::BasicReturn {
            exchange,
            routing_key,
            ..
        } => {
            if let Some((_, body)) = &arrival.content {
                link.state().mark_returned(exchange, routing_key, body);
            }
        }
        other => {
            return Err(Violation::new(
                wire::COMMAND_INVALID,
                format!(
                    "an unexpected {} on the publishing channel",
                    method::name(other.id())
                ),
            ))
        }
    }
    Ok(())
}

/// Fails a publisher's pending confirmations when the oldest has waited
/// longer than `timeout` (and closes its connection): one timer per
/// publisher, not one per message. While RabbitMQ holds publishing, no
/// deadline runs; after it, the wait counts from the unblock. Ends with
/// the publisher.
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
        if state.held() {
            continue;
        }
        let unblocked = state.out.unblocked_at;
        let overdue = state.pending.front().is_some_and(|u| {
            let since = unblocked.map_or(u.sent, |t| t.max(u.sent));
            since.elapsed() > timeout
        });
        if overdue {
            state.fail_all(BridgeError::ConfirmTimeout(timeout));
            drop(state);
            link.close("a confirmation was overdue");
            return;
        }
    }
}
