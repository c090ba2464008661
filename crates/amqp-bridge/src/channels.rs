//! The channels of a process's shared connection: a [`Channel`] calls a
//! method and waits for its reply (declares, checks, `basic.consume`),
//! within the broker deadline, and receives the deliveries of its
//! consumer; the connection's reader routes every method to its channel.
//!
//! ```text
//!  Channel::call ──method──> outbox ──writer──> RabbitMQ
//!       ^                                          │
//!       └── reply / delivery / close ── Chan <── handle (reader task)
//! ```
//!
//! The reader hands a whole delivery straight to its channel's queue: no
//! task between them, and a burst of deliveries read at once wakes the
//! consumer once. A reply must be the one the channel waits for (503
//! otherwise). A frame is queued on a channel only while the channel is
//! the connection's (checked under the connection's lock, under which the
//! reader forgets a closed channel): once closed, its number may serve
//! another channel, which must never get a stale ack.

use crate::conn::{self, ChannelState, ConnState, Out, CLOSE_WAIT};
use crate::wire::content::Arrival;
use crate::wire::{self, id, method, Method, Properties, Violation};
use crate::BridgeError;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// One delivery from a queue.
#[derive(Debug)]
pub struct InMessage {
    pub delivery_tag: u64,
    /// The AMQP `type` property (empty when absent).
    pub msg_type: String,
    /// The AMQP `content_type` property (empty when absent).
    pub content_type: String,
    pub body: Vec<u8>,
}

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
    /// `channel.close` was sent.
    closing: AtomicBool,
    /// A delivery, a reply or the channel's end came.
    notify: Notify,
}

#[derive(Default)]
struct ChanState {
    deliveries: VecDeque<InMessage>,
    /// The reply the owner waits for, and then the reply.
    awaiting: Option<(u16, u16)>,
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

    /// Takes the reply the owner waits for; anything else is a violation.
    fn reply(&self, frame: wire::Frame, got: (u16, u16)) -> Result<(), Violation> {
        let mut state = self.state();
        if state.awaiting != Some(got) {
            return Err(Violation::new(
                wire::COMMAND_INVALID,
                format!("an unexpected {} on channel {}", method::name(got), self.number),
            ));
        }
        state.awaiting = None;
        state.reply = Some(frame);
        drop(state);
        self.notify.notify_one();
        Ok(())
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
    /// How long a call may wait for its reply.
    deadline: Duration,
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

    fn channel(&self, channel: u16) -> ChannelState {
        match self.open.get(&channel) {
            None => ChannelState::Unknown,
            Some(c) if c.closing.load(Ordering::Relaxed) => ChannelState::Closing,
            Some(_) => ChannelState::Open,
        }
    }

    fn channel_closed(&mut self, channel: u16, by_broker: Option<(u16, String)>) {
        let Some(chan) = self.open.remove(&channel) else {
            return;
        };
        let why = match by_broker {
            Some((code, text)) => Ended {
                error: BridgeError::Amqp(format!("the channel was closed: {code} {text}")),
                refused: Some((code, text)),
            },
            None => Ended::of(BridgeError::ConsumerClosed),
        };
        chan.end(why, true);
    }
}

/// A connection of our own with channels.
pub(crate) type ChannelConn = conn::Conn<Channels>;

/// Starts the tasks of a connection that serves channels; each call on
/// it may wait `deadline` for its reply.
pub(crate) fn start(
    opened: conn::Opened,
    deadline: Duration,
) -> (Arc<ChannelConn>, tokio::task::JoinHandle<()>) {
    let conn = Arc::new(ChannelConn::new(Channels {
        out: Out::new(),
        open: HashMap::new(),
        channel_max: opened.channel_max,
        deadline,
    }));
    let reader = opened.start(&conn, handle);
    (conn, reader)
}

/// Handles one method (with its content) of an open channel.
fn handle(conn: &ChannelConn, arrival: Arrival) -> Result<(), Violation> {
    let number = arrival.method.channel;
    let Some(chan) = conn.state().open.get(&number).cloned() else {
        return Ok(());
    };
    let m = arrival.method.method()?;
    match m {
        Method::BasicDeliver { delivery_tag, .. } => {
            let Some((header, body)) = arrival.content else {
                return Ok(());
            };
            let (_, p) = Properties::decode(&header.payload)?;
            chan.deliver(InMessage {
                delivery_tag,
                msg_type: p.kind.unwrap_or_default().to_string(),
                content_type: p.content_type.unwrap_or_default().to_string(),
                body,
            });
        }
        Method::BasicCancel {
            consumer_tag,
            no_wait,
        } => {
            tracing::warn!("RabbitMQ cancelled a consumer (its queue was deleted?)");
            if !no_wait {
                conn.send(|o| wire::method_frame(o, number, &Method::BasicCancelOk { consumer_tag }));
            }
            chan.end(Ended::of(BridgeError::ConsumerClosed), false);
        }
        other => {
            let got = other.id();
            chan.reply(arrival.method, got)?;
        }
    }
    Ok(())
}

/// A channel of the shared connection; closed when dropped.
pub(crate) struct Channel {
    conn: Arc<ChannelConn>,
    chan: Arc<Chan>,
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
                closing: AtomicBool::new(false),
                notify: Notify::new(),
            });
            state.open.insert(number, chan.clone());
            chan
        };
        // Closes the channel again if the open fails.
        let mut channel = Channel {
            conn: conn.clone(),
            chan,
        };
        channel.call(&Method::ChannelOpen, id::CHANNEL_OPEN_OK).await?;
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
        if !ours || self.chan.closing.load(Ordering::Relaxed) {
            return false;
        }
        frame(&mut state.out.outbox);
        drop(state);
        self.conn.wake_writer.notify_one();
        true
    }

    /// Sends `m` and waits for its reply, which must be `want`, within
    /// the connection's deadline; past it the connection is closed (it is
    /// opened again at the next use) and the error names the method.
    pub async fn call(&mut self, m: &Method<'_>, want: (u16, u16)) -> Result<wire::Frame, Ended> {
        let number = self.chan.number;
        self.chan.state().awaiting = Some(want);
        if !self.send(|o| wire::method_frame(o, number, m)) {
            let ended = self.chan.state().ended.clone();
            return Err(ended.unwrap_or_else(|| Ended::of(BridgeError::ConsumerClosed)));
        }
        let deadline = self.conn.state().deadline;
        match tokio::time::timeout(deadline, self.chan.wait(|s| s.reply.take())).await {
            Ok(reply) => reply,
            Err(_) => {
                let why = conn::no_answer(m.id(), deadline);
                tracing::error!("{why}; closing the connection");
                self.conn.close(&why);
                Err(Ended::of(BridgeError::NoAnswer(why)))
            }
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
        let sent = self.send(|o| wire::method_frame(o, number, &Method::CHANNEL_CLOSE));
        self.chan.closing.store(true, Ordering::Relaxed);
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

/// Closes every open channel of `conn` and waits (a few seconds at most)
/// for their `close-ok`s: the first step of a clean close.
pub(crate) async fn close_all(conn: &ChannelConn) {
    let open: Vec<Arc<Chan>> = {
        let mut state = conn.state();
        let open: Vec<Arc<Chan>> = state.open.values().cloned().collect();
        for chan in &open {
            if !chan.closing.swap(true, Ordering::Relaxed) {
                wire::method_frame(&mut state.out.outbox, chan.number, &Method::CHANNEL_CLOSE);
            }
        }
        open
    };
    conn.wake_writer.notify_one();
    let all = async {
        for chan in &open {
            let _ = chan.wait(|s| s.closed.then_some(())).await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, all).await;
}
