//! The channels of a process's shared connection: a [`Channel`] calls a
//! method and waits for its reply (declares, checks, `basic.consume`),
//! and receives the deliveries of its consumer; the connection's reader
//! routes every frame to its channel.
//!
//! ```text
//!  Channel::call ──method──> outbox ──writer──> RabbitMQ
//!       ^                                          │
//!       └── reply / delivery / close ── Chan <── handle (reader task): assembles
//!                                                 basic.deliver + header + body
//! ```
//!
//! The reader hands a whole delivery straight to its channel's queue: no
//! task between them, and a burst of deliveries read at once wakes the
//! consumer once. A frame is queued on a channel only while the channel is
//! the connection's (checked under the connection's lock, under which the
//! reader forgets a closed channel): once closed, its number may serve
//! another channel, which must never get a stale ack.

use crate::own::{self, ConnState, Out, CLOSE_WAIT};
use crate::wire::{self, method};
use crate::{BridgeError, InMessage};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Why a channel can go on no more: the error, and RabbitMQ's reply code
/// and text when it closed the channel (or the connection).
#[derive(Clone, Debug)]
pub(crate) struct Ended {
    pub error: BridgeError,
    pub refused: Option<(u16, String)>,
}

impl Ended {
    fn of(error: BridgeError) -> Ended {
        Ended { error, refused: None }
    }

    /// RabbitMQ's reply code, when it closed the channel or the connection.
    pub fn code(&self) -> Option<u16> {
        self.refused.as_ref().map(|(code, _)| *code)
    }
}

/// One channel, as its owner and the reader see it.
struct Chan {
    number: u16,
    state: Mutex<ChanState>,
    /// A delivery, a reply or the channel's end came.
    notify: Notify,
}

#[derive(Default)]
struct ChanState {
    deliveries: VecDeque<InMessage>,
    /// The reply to the method the owner waits on.
    reply: Option<wire::Frame>,
    ended: Option<Ended>,
    /// Closed by either side (`close-ok` or RabbitMQ's `channel.close`).
    closed: bool,
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

    /// The channel's owner can go on no more (the first reason counts);
    /// with `closed`, the channel is closed too.
    fn end(&self, why: Ended, closed: bool) {
        let mut state = self.state();
        if state.ended.is_none() {
            state.ended = Some(why);
        }
        state.closed |= closed;
        drop(state);
        self.notify.notify_one();
    }

    /// What `take` finds now, or why the channel ended.
    fn now<T>(&self, take: &mut impl FnMut(&mut ChanState) -> Option<T>) -> Option<Result<T, Ended>> {
        let mut state = self.state();
        if let Some(ended) = &state.ended {
            return Some(Err(ended.clone()));
        }
        take(&mut state).map(Ok)
    }

    /// Waits until `take` finds something, or the channel ended. What is
    /// there already is taken without registering as a waiter (a burst of
    /// deliveries is taken one by one).
    async fn wait<T>(&self, mut take: impl FnMut(&mut ChanState) -> Option<T>) -> Result<T, Ended> {
        if let Some(found) = self.now(&mut take) {
            return found;
        }
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(found) = self.now(&mut take) {
                return found;
            }
            notified.await;
        }
    }
}

/// The shared connection's state: its channels by number.
pub(crate) struct Channels {
    out: Out,
    open: HashMap<u16, Arc<Chan>>,
    channel_max: u16,
}

impl ConnState for Channels {
    fn out(&mut self) -> &mut Out {
        &mut self.out
    }

    fn fail_all(&mut self, error: BridgeError) {
        self.out.stop(&error);
        // RabbitMQ's reason, when it closed the connection (an unknown
        // exchange type, say, is a connection error).
        let why = Ended {
            error,
            refused: self.out.refused.clone(),
        };
        for (_, chan) in self.open.drain() {
            chan.end(why.clone(), true);
        }
    }
}

/// A connection of our own with channels.
pub(crate) type ChannelConn = own::Conn<Channels>;

/// Starts the tasks of a connection that serves channels.
pub(crate) fn start(opened: own::Opened) -> (Arc<ChannelConn>, tokio::task::JoinHandle<()>) {
    let conn = Arc::new(ChannelConn::new(Channels {
        out: Out::new(),
        open: HashMap::new(),
        channel_max: opened.channel_max,
    }));
    let mut partial = HashMap::new();
    let reader = opened.start(&conn, move |conn, frame| handle(conn, frame, &mut partial));
    (conn, reader)
}

/// A delivery whose content is still coming.
struct Partial {
    chan: Arc<Chan>,
    message: InMessage,
    /// The body size, once the content header came.
    size: Option<u64>,
}

/// Handles one frame; returns why the connection ends, if it does.
fn handle(
    conn: &ChannelConn,
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
    if let Some(end) = own::common(conn, "shared", frame.channel, m, frame.args())? {
        return Ok(end);
    }
    let Some(chan) = conn.state().open.get(&frame.channel).cloned() else {
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
            let p = Partial {
                chan,
                message,
                size: None,
            };
            partial.insert(frame.channel, p);
        }
        method::CHANNEL_CLOSE => {
            let (code, text) = (a.u16()?, a.short_str()?);
            if code != 404 {
                // 404 is the answer to a check (a passive declare).
                tracing::warn!("RabbitMQ closed channel {}: {code} {text}", frame.channel);
            }
            partial.remove(&frame.channel);
            let error = BridgeError::Amqp(format!("the channel was closed: {code} {text}"));
            let refused = Some((code, text));
            chan.end(Ended { error, refused }, true);
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
            chan.end(Ended::of(BridgeError::ConsumerClosed), true);
            conn.state().open.remove(&frame.channel);
        }
        method::BASIC_CANCEL => {
            tracing::warn!("RabbitMQ cancelled a consumer (its queue was deleted?)");
            chan.end(Ended::of(BridgeError::ConsumerClosed), false);
        }
        _ => chan.reply(frame),
    }
    Ok(None)
}

/// A channel of the shared connection; closed when dropped.
pub(crate) struct Channel {
    conn: Arc<ChannelConn>,
    chan: Arc<Chan>,
    /// `channel.close` was sent.
    closing: bool,
}

impl Channel {
    /// Opens a channel with the lowest free number.
    pub async fn open(conn: &Arc<ChannelConn>) -> Result<Channel, Ended> {
        let chan = {
            let mut state = conn.state();
            if let Some(why) = &state.out.closed {
                return Err(Ended::of(BridgeError::Amqp(why.clone())));
            }
            let free = (1..=state.channel_max).find(|n| !state.open.contains_key(n));
            let Some(number) = free else {
                let full = "no free channel on the connection (RabbitMQ's channel_max)";
                return Err(Ended::of(BridgeError::Amqp(full.into())));
            };
            let chan = Arc::new(Chan {
                number,
                state: Mutex::new(ChanState::default()),
                notify: Notify::new(),
            });
            state.open.insert(number, chan.clone());
            chan
        };
        // Closes the channel again if the open fails.
        let mut channel = Channel {
            conn: conn.clone(),
            chan,
            closing: false,
        };
        channel
            .call(method::CHANNEL_OPEN, method::CHANNEL_OPEN_OK, |o| {
                wire::short_str(o, "")
            })
            .await?;
        Ok(channel)
    }

    /// Queues a frame on the channel, unless it is closing or is no
    /// longer the connection's.
    pub fn send(&self, frame: impl FnOnce(&mut Vec<u8>)) -> bool {
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

    /// Sends method `m` and waits for its reply, which must be `want`.
    pub async fn call(
        &mut self,
        m: (u16, u16),
        want: (u16, u16),
        args: impl FnOnce(&mut Vec<u8>),
    ) -> Result<wire::Frame, Ended> {
        let number = self.chan.number;
        if !self.send(|o| wire::method_frame(o, number, m, args)) {
            let ended = self.chan.state().ended.clone();
            return Err(ended.unwrap_or_else(|| Ended::of(BridgeError::ConsumerClosed)));
        }
        let reply = self.chan.wait(|s| s.reply.take()).await?;
        match reply.method() {
            Some((got, _)) if got == want => Ok(reply),
            got => Err(Ended::of(BridgeError::Amqp(format!(
                "unexpected AMQP reply {:?} (expected {want:?})",
                got.map(|(m, _)| m)
            )))),
        }
    }

    /// The next delivery of the channel's consumer.
    pub async fn delivery(&self) -> Result<InMessage, BridgeError> {
        self.chan
            .wait(|s| s.deliveries.pop_front())
            .await
            .map_err(|e| e.error)
    }

    pub fn number(&self) -> u16 {
        self.chan.number
    }

    /// Sends `channel.close` once, if the channel is open.
    fn start_close(&mut self) -> bool {
        let number = self.chan.number;
        let sent = self.send(|o| wire::channel_close(o, number));
        self.closing = true;
        sent
    }

    /// Closes the channel and waits a few seconds at most for RabbitMQ
    /// to confirm it (a consumer's unacked deliveries go back to its
    /// queue).
    pub async fn close(mut self) {
        if self.start_close() {
            let closed = self.chan.wait(|s| s.closed.then_some(()));
            let _ = tokio::time::timeout(CLOSE_WAIT, closed).await;
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.start_close();
    }
}
