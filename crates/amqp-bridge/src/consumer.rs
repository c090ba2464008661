//! The consumer of one queue: a prefetch window, cumulative acks, and
//! rejects that dead-letter; on a connection of our own that the
//! consumers of a process share, a channel each.
//!
//! ```text
//!  RabbitMQ ──basic.deliver + header + body──> reader task ──push──> channel's deliveries ──next()──> link
//!     ^                                          (assembles)         (one wake-up per burst)            │
//!     └──────── writer task <── outbox <── basic.ack multiple / basic.reject <──────────────────────────┘
//! ```
//!
//! The reader hands a whole delivery straight to its consumer's queue: no
//! task between them, and a burst of deliveries read at once wakes the
//! consumer once. Acks and rejects are encoded into the connection's
//! outbox in call order, and never after the channel closed (its number
//! may already serve another consumer). A channel closed by RabbitMQ, a
//! cancelled consumer (its queue deleted) or a lost connection fail the
//! consumer's next [`Consumer::next`]; what it did not ack goes back to
//! the queue.

use crate::connection::Opened;
use crate::own::{self, ConnState, Out, CLOSE_WAIT};
use crate::wire::{self, method};
use crate::{checked_name, BridgeError, SharedConnection};
use amqprs::channel::QueueDeclareArguments;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One delivery from the queue.
#[derive(Debug)]
pub struct InMessage {
    pub delivery_tag: u64,
    /// The AMQP `type` property (empty when absent).
    pub msg_type: String,
    /// The AMQP `content_type` property (empty when absent).
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Fails with [`BridgeError::NoQueue`] unless `queue` exists (a passive
/// declare, after which RabbitMQ closes the channel with 404 when the
/// queue is missing).
async fn ensure_queue(opened: &Opened, queue: &str) -> Result<(), BridgeError> {
    let passive = QueueDeclareArguments::new(checked_name(queue)?)
        .passive(true)
        .finish();
    match opened.channel.queue_declare(passive).await {
        Ok(_) => Ok(()),
        Err(e) => match opened.reason() {
            Some((404, _)) => Err(BridgeError::NoQueue(queue.to_string())),
            _ => Err(opened.error(e)),
        },
    }
}

/// Whether `queue` exists: `Err(NoQueue)` when it does not.
pub async fn check_queue(conn: &SharedConnection, queue: &str) -> Result<(), BridgeError> {
    let opened = conn.channel().await?;
    let found = ensure_queue(&opened, queue).await;
    let _ = opened.channel.close().await;
    found
}

/// One consumer's channel, as its consumer and the reader see it.
struct Chan {
    number: u16,
    state: Mutex<ChanState>,
    /// A delivery, a reply or the channel's end came.
    notify: Notify,
}

#[derive(Default)]
struct ChanState {
    deliveries: VecDeque<InMessage>,
    /// The reply to the method the consumer waits on.
    reply: Option<wire::Frame>,
    /// Why the consumer can go on no more, with RabbitMQ's reply code
    /// when it closed the channel.
    ended: Option<(BridgeError, Option<u16>)>,
    /// Acks may still be sent: neither side has closed the channel.
    open: bool,
}

impl Chan {
    fn state(&self) -> MutexGuard<'_, ChanState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deliver(&self, m: InMessage) {
        let mut state = self.state();
        let was_empty = state.deliveries.is_empty();
        state.deliveries.push_back(m);
        drop(state);
        if was_empty {
            self.notify.notify_one();
        }
    }

    fn reply(&self, frame: wire::Frame) {
        self.state().reply = Some(frame);
        self.notify.notify_one();
    }

    /// The consumer ends (the first reason counts); with `closed`, the
    /// channel is closed too: nothing more is sent on it.
    fn end(&self, why: BridgeError, code: Option<u16>, closed: bool) {
        let mut state = self.state();
        if state.ended.is_none() {
            state.ended = Some((why, code));
        }
        if closed {
            state.open = false;
        }
        drop(state);
        self.notify.notify_one();
    }

    /// Waits until `take` finds something, or the consumer ended.
    async fn wait<T>(
        &self,
        mut take: impl FnMut(&mut ChanState) -> Option<T>,
    ) -> Result<T, (BridgeError, Option<u16>)> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state();
                if let Some(ended) = &state.ended {
                    return Err(ended.clone());
                }
                if let Some(found) = take(&mut state) {
                    return Ok(found);
                }
            }
            notified.await;
        }
    }
}

/// The consumers' connection: its channels by number.
struct Channels {
    out: Out,
    open: HashMap<u16, Arc<Chan>>,
    channel_max: u16,
}

impl ConnState for Channels {
    fn out(&mut self) -> &mut Out {
        &mut self.out
    }

    fn fail_all(&mut self, error: BridgeError) {
        if self.out.closed.is_none() {
            self.out.closed = Some(error.to_string());
        }
        for (_, chan) in self.open.drain() {
            chan.end(error.clone(), None, true);
        }
    }
}

type ConsumeConn = own::Conn<Channels>;

impl Channels {
    /// A new channel with the lowest free number.
    fn allocate(&mut self) -> Option<Arc<Chan>> {
        let number = (1..=self.channel_max).find(|n| !self.open.contains_key(n))?;
        let chan = Arc::new(Chan {
            number,
            state: Mutex::new(ChanState {
                open: true,
                ..ChanState::default()
            }),
            notify: Notify::new(),
        });
        self.open.insert(number, chan.clone());
        Some(chan)
    }

    fn chan(&self, number: u16) -> Option<Arc<Chan>> {
        self.open.get(&number).cloned()
    }
}

/// The consumers' connection of a [`SharedConnection`]: opened by the
/// first consumer, again after it is lost; closed with it.
#[derive(Default)]
pub(crate) struct Consumers(tokio::sync::Mutex<Option<(Arc<ConsumeConn>, JoinHandle<()>)>>);

impl Consumers {
    async fn get(&self, shared: &SharedConnection) -> Result<Arc<ConsumeConn>, BridgeError> {
        let mut slot = self.0.lock().await;
        if let Some((conn, _)) = slot.as_ref().filter(|(c, _)| c.usable()) {
            return Ok(conn.clone());
        }
        let opened = own::open_near(shared).await?;
        let conn = Arc::new(ConsumeConn::new(Channels {
            out: Out::new(),
            open: HashMap::new(),
            channel_max: opened.channel_max,
        }));
        let mut partial = HashMap::new();
        let reader = opened.start(&conn, move |conn, frame| handle(conn, frame, &mut partial));
        *slot = Some((conn.clone(), reader));
        Ok(conn)
    }

    /// Closes the connection (what was not acked goes back to the queues).
    pub async fn close(&self) {
        if let Some((conn, mut reader)) = self.0.lock().await.take() {
            conn.close("the connection was closed");
            if tokio::time::timeout(CLOSE_WAIT, &mut reader).await.is_err() {
                reader.abort();
            }
        }
    }
}

/// A delivery whose content is still coming.
struct Partial {
    chan: Arc<Chan>,
    message: InMessage,
    /// The body size, once the content header came.
    size: Option<u64>,
}

/// Handles one frame on the consumers' connection; returns why the
/// connection ends, if it does.
fn handle(
    conn: &ConsumeConn,
    frame: wire::Frame,
    partial: &mut HashMap<u16, Partial>,
) -> io::Result<Option<BridgeError>> {
    if frame.kind == wire::FRAME_HEADER || frame.kind == wire::FRAME_BODY {
        let Some(p) = partial.get_mut(&frame.channel) else {
            return Ok(None);
        };
        if frame.kind == wire::FRAME_HEADER {
            let (size, content_type, msg_type) = frame.content_header()?;
            p.size = Some(size);
            p.message.content_type = content_type;
            p.message.msg_type = msg_type;
        } else if p.message.body.is_empty() {
            p.message.body = frame.payload;
        } else {
            p.message.body.extend_from_slice(&frame.payload);
        }
        if p.size.is_some_and(|size| p.message.body.len() as u64 >= size) {
            if let Some(p) = partial.remove(&frame.channel) {
                p.chan.deliver(p.message);
            }
        }
        return Ok(None);
    }
    let Some((m, mut a)) = frame.method() else {
        return Ok(None);
    };
    if let Some(end) = own::common(conn, "consuming", frame.channel, m, frame.args())? {
        return Ok(end);
    }
    let Some(chan) = conn.state().chan(frame.channel) else {
        tracing::debug!("ignored AMQP method {m:?} on unknown channel {}", frame.channel);
        return Ok(None);
    };
    match m {
        method::BASIC_DELIVER => {
            let _consumer_tag = a.short_str()?;
            let delivery_tag = a.u64()?;
            let message = InMessage {
                delivery_tag,
                msg_type: String::new(),
                content_type: String::new(),
                body: Vec::new(),
            };
            partial.insert(
                frame.channel,
                Partial {
                    chan,
                    message,
                    size: None,
                },
            );
        }
        method::CHANNEL_CLOSE => {
            let (code, text) = (a.u16()?, a.short_str()?);
            if code != 404 {
                tracing::warn!("RabbitMQ closed a consuming channel: {code} {text}");
            }
            partial.remove(&frame.channel);
            chan.end(
                BridgeError::Amqp(format!("the channel was closed: {code} {text}")),
                Some(code),
                true,
            );
            let mut state = conn.state();
            state.open.remove(&frame.channel);
            wire::method_frame(
                &mut state.out.outbox,
                frame.channel,
                method::CHANNEL_CLOSE_OK,
                |_| {},
            );
            drop(state);
            conn.wake_writer.notify_one();
        }
        method::CHANNEL_CLOSE_OK => {
            partial.remove(&frame.channel);
            chan.end(BridgeError::ConsumerClosed, None, true);
            conn.state().open.remove(&frame.channel);
        }
        method::BASIC_CANCEL => {
            tracing::warn!("RabbitMQ cancelled a consumer (its queue was deleted?)");
            chan.end(BridgeError::ConsumerClosed, None, false);
        }
        _ => chan.reply(frame),
    }
    Ok(None)
}

/// A consumer of one queue with a prefetch window.
pub struct Consumer {
    conn: Arc<ConsumeConn>,
    chan: Arc<Chan>,
    queue: String,
    /// `channel.close` was sent.
    closing: bool,
}

impl Consumer {
    /// Starts consuming `queue` (which must exist) with `window`
    /// unacknowledged messages at most (the AMQP prefetch, 1 to 65535).
    pub async fn new(conn: &SharedConnection, queue: &str, window: usize) -> Result<Consumer, BridgeError> {
        let prefetch = u16::try_from(window).unwrap_or(u16::MAX).max(1);
        checked_name(queue)?;
        let own = conn.consumers.get(conn).await?;
        let chan = own
            .state()
            .allocate()
            .ok_or_else(|| BridgeError::Amqp("no free channel on the consuming connection".into()))?;
        // Closes the channel if a step below fails.
        let mut consumer = Consumer {
            conn: own,
            chan,
            queue: queue.to_string(),
            closing: false,
        };
        consumer
            .call(method::CHANNEL_OPEN, method::CHANNEL_OPEN_OK, |o| {
                wire::short_str(o, "")
            })
            .await
            .map_err(|(e, _)| e)?;
        let declared = consumer
            .call(method::QUEUE_DECLARE, method::QUEUE_DECLARE_OK, |o| {
                o.extend_from_slice(&0u16.to_be_bytes());
                wire::short_str(o, queue);
                o.push(0b1); // passive
                o.extend_from_slice(&[0; 4]);
            })
            .await;
        match declared {
            Err((_, Some(404))) => return Err(BridgeError::NoQueue(queue.to_string())),
            other => other.map_err(|(e, _)| e)?,
        };
        consumer
            .call(method::BASIC_QOS, method::BASIC_QOS_OK, |o| {
                o.extend_from_slice(&0u32.to_be_bytes());
                o.extend_from_slice(&prefetch.to_be_bytes());
                o.push(0);
            })
            .await
            .map_err(|(e, _)| e)?;
        consumer
            .call(method::BASIC_CONSUME, method::BASIC_CONSUME_OK, |o| {
                o.extend_from_slice(&0u16.to_be_bytes());
                wire::short_str(o, queue);
                wire::short_str(o, "");
                o.push(0); // acks wanted, not exclusive, a reply wanted
                o.extend_from_slice(&[0; 4]);
            })
            .await
            .map_err(|(e, _)| e)?;
        Ok(consumer)
    }

    /// Sends a method on the channel and waits for its reply, `want`.
    async fn call(
        &mut self,
        m: (u16, u16),
        want: (u16, u16),
        args: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), (BridgeError, Option<u16>)> {
        let number = self.chan.number;
        if !self.send(|o| wire::method_frame(o, number, m, args)) {
            return Err((BridgeError::ConsumerClosed, None));
        }
        let reply = self.chan.wait(|s| s.reply.take()).await?;
        match reply.method() {
            Some((got, _)) if got == want => Ok(()),
            got => Err((
                BridgeError::Amqp(format!(
                    "unexpected AMQP reply {:?} (expected {want:?})",
                    got.map(|(m, _)| m)
                )),
                None,
            )),
        }
    }

    /// The next delivery; an error when the channel, the consumer or the
    /// connection is gone.
    pub async fn next(&mut self) -> Result<InMessage, BridgeError> {
        self.chan
            .wait(|s| s.deliveries.pop_front())
            .await
            .map_err(|(e, _)| e)
    }

    /// Queues a frame on the channel, unless it is closing or closed (its
    /// number may serve another consumer by then): the check and the
    /// queueing are under the connection's lock, under which the reader
    /// also forgets a closed channel.
    fn send(&self, frame: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut state = self.conn.state();
        let ours = state
            .open
            .get(&self.chan.number)
            .is_some_and(|c| Arc::ptr_eq(c, &self.chan));
        if !ours || self.closing {
            return false;
        }
        frame(&mut state.out.outbox);
        drop(state);
        self.conn.wake_writer.notify_one();
        true
    }

    fn settle(&self, tag: u64, ack: bool) {
        self.send(|o| wire::settle(o, self.chan.number, tag, ack));
    }

    /// Acks every delivery up to and including `tag`. The ack is queued
    /// at once (after everything queued before it) without waiting for
    /// the socket write; a lost channel is reported by the next
    /// [`Consumer::next`].
    pub fn ack_up_to(&self, tag: u64) {
        self.settle(tag, true);
    }

    /// Rejects one delivery without requeueing it: RabbitMQ dead-letters
    /// it (to `<QUEUE>.XQ` with the configure-queue topology). Queued like
    /// [`Consumer::ack_up_to`], so acks and rejects keep their order.
    pub fn reject(&self, tag: u64) {
        self.settle(tag, false);
    }

    /// Dead-letters a delivery the gateway cannot handle (to
    /// `<QUEUE>.XQ` with the configure-queue topology), with an error
    /// log saying why; the queue goes on.
    pub fn dead_letter(&self, tag: u64, why: &str) {
        tracing::error!(
            delivery_tag = tag,
            "rejecting a message to {}.XQ: {why}",
            self.queue
        );
        self.reject(tag);
    }

    /// Sends `channel.close` once, if the channel is open.
    fn start_close(&mut self) -> bool {
        let number = self.chan.number;
        let sent = self.send(|o| wire::channel_close(o, number));
        self.closing = true;
        sent
    }

    /// Closes the channel (unacked deliveries go back to the queue), and
    /// waits a few seconds at most for RabbitMQ to confirm it.
    pub async fn close(mut self) {
        if self.start_close() {
            let closed = self.chan.wait(|s| (!s.open).then_some(()));
            let _ = tokio::time::timeout(CLOSE_WAIT, closed).await;
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.start_close();
    }
}
