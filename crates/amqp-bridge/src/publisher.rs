//! The confirmed publisher: one confirming channel, publishes pipelined
//! in call order, each with a future that resolves on its confirmation.
//!
//! ```text
//!  publish ──> Confirms.pending (seq, fingerprint, sender) ──basic.publish──> writer task ──> RabbitMQ
//!                     ^                                                                   │
//!                     └── Callback: basic.return (marks), basic.ack / nack (settles) <────┘
//! ```
//!
//! amqprs reports confirmations only through channel callbacks, so the
//! publisher numbers its messages as the broker does (1, 2, ... on the
//! channel) and settles them on `basic.ack` / `basic.nack` (`multiple`
//! included). A `basic.return` (mandatory, unroutable) carries no
//! delivery tag: it is matched to the oldest unconfirmed message with the
//! same exchange, routing key and body (identical messages are routed
//! alike), whose confirmation then fails as `Returned`.

use crate::connection::{record_close, CloseReason};
use crate::{checked_name, BridgeError, OutMessage};
use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{BasicPublishArguments, Channel, ConfirmSelectArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use futures::FutureExt;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// A pending confirmation; await it to learn the message's fate.
pub type PendingConfirm = futures::future::BoxFuture<'static, Result<(), BridgeError>>;

/// One unconfirmed publish.
struct Unconfirmed {
    seq: u64,
    sent: Instant,
    fingerprint: u64,
    returned: Option<(String, String)>,
    settle: oneshot::Sender<Result<(), BridgeError>>,
}

/// What the publisher and its channel callback share.
#[derive(Default)]
struct Confirms {
    /// The number the broker gives the next publish.
    next_seq: u64,
    pending: VecDeque<Unconfirmed>,
    /// Why the channel closed, if it did.
    closed: Option<String>,
}

impl Confirms {
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

    /// Fails everything pending, and the publisher: the channel is gone
    /// or no longer to be trusted.
    fn fail_all(&mut self, error: BridgeError) {
        self.closed = Some(error.to_string());
        for u in self.pending.drain(..) {
            let _ = u.settle.send(Err(error.clone()));
        }
    }
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

/// The channel callback: confirmations, returns and a closing channel.
struct Callback {
    confirms: Arc<Mutex<Confirms>>,
    closed: CloseReason,
}

impl Callback {
    fn confirms(&self) -> std::sync::MutexGuard<'_, Confirms> {
        self.confirms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl ChannelCallback for Callback {
    async fn close(&mut self, _channel: &Channel, close: CloseChannel) -> Result<(), amqprs::error::Error> {
        tracing::warn!("RabbitMQ closed a publishing channel: {close}");
        record_close(&self.closed, &close);
        let error = BridgeError::Amqp(format!("the channel was closed: {close}"));
        self.confirms().fail_all(error);
        Ok(())
    }

    async fn cancel(&mut self, _channel: &Channel, _cancel: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }

    async fn flow(&mut self, _channel: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        self.confirms().settle(ack.delivery_tag(), ack.mutiple(), true);
    }

    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        self.confirms()
            .settle(nack.delivery_tag(), nack.multiple(), false);
    }

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        ret: Return,
        _props: BasicProperties,
        content: Vec<u8>,
    ) {
        let fp = fingerprint(ret.exchange(), ret.routing_key(), &content);
        let mut confirms = self.confirms();
        if let Some(u) = confirms
            .pending
            .iter_mut()
            .find(|u| u.fingerprint == fp && u.returned.is_none())
        {
            u.returned = Some((ret.exchange().clone(), ret.routing_key().clone()));
        }
    }
}

/// A publisher with confirms on its own channel. One task publishes with
/// it (the message numbers follow the call order); see
/// [`SharedPublisher`] for many.
pub struct Publisher {
    channel: Channel,
    confirms: Arc<Mutex<Confirms>>,
    lost: watch::Receiver<bool>,
}

impl Publisher {
    /// Opens a confirming channel on `conn`.
    pub async fn new(
        conn: &crate::SharedConnection,
        confirm_timeout: Duration,
    ) -> Result<Publisher, BridgeError> {
        let opened = conn.channel().await?;
        let confirms = Arc::new(Mutex::new(Confirms {
            next_seq: 1,
            ..Confirms::default()
        }));
        let callback = Callback {
            confirms: confirms.clone(),
            closed: opened.closed.clone(),
        };
        opened.channel.register_callback(callback).await?;
        let select = ConfirmSelectArguments::default();
        opened
            .channel
            .confirm_select(select)
            .await
            .map_err(|e| opened.error(e))?;
        tokio::spawn(watchdog(
            Arc::downgrade(&confirms),
            opened.lost.clone(),
            confirm_timeout,
        ));
        Ok(Publisher {
            channel: opened.channel,
            confirms,
            lost: opened.lost,
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
        let props = m.properties()?;
        let mut args = BasicPublishArguments::new(checked_name(m.exchange)?, checked_name(m.routing_key)?);
        args.mandatory(true);
        let (settle, settled) = oneshot::channel();
        {
            let mut confirms = self.confirms.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(why) = &confirms.closed {
                return Err(BridgeError::Amqp(why.clone()));
            }
            let seq = confirms.next_seq;
            confirms.next_seq += 1;
            confirms.pending.push_back(Unconfirmed {
                seq,
                sent: Instant::now(),
                fingerprint: fingerprint(m.exchange, m.routing_key, m.body),
                returned: None,
                settle,
            });
        }
        if let Err(e) = self.channel.basic_publish(props, m.body.to_vec(), args).await {
            let mut confirms = self.confirms.lock().unwrap_or_else(|e| e.into_inner());
            confirms.fail_all(BridgeError::Amqp(format!("publishing failed: {e}")));
            return Err(e.into());
        }
        Ok(settled)
    }

    /// Whether the publisher can still publish (its channel and
    /// connection are up, nothing failed it).
    pub fn usable(&self) -> bool {
        let failed = self
            .confirms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed
            .is_some();
        !failed && self.channel.is_open() && !*self.lost.borrow()
    }

    /// Closes the channel.
    pub async fn close(self) {
        let _ = self.channel.close().await;
    }
}

/// Fails a publisher's pending confirmations when its connection is lost,
/// or when the oldest has waited longer than `timeout`: one timer per
/// publisher, not one per message. Ends with the publisher.
async fn watchdog(confirms: Weak<Mutex<Confirms>>, mut lost: watch::Receiver<bool>, timeout: Duration) {
    let every = (timeout / 4).max(Duration::from_millis(100));
    loop {
        let failure = tokio::select! {
            _ = lost.wait_for(|l| *l) => Some(BridgeError::ConnectionLost),
            _ = tokio::time::sleep(every) => None,
        };
        let Some(confirms) = confirms.upgrade() else {
            return;
        };
        let mut confirms = confirms.lock().unwrap_or_else(|e| e.into_inner());
        let overdue = confirms
            .pending
            .front()
            .is_some_and(|u| u.sent.elapsed() > timeout);
        match failure {
            Some(e) => return confirms.fail_all(e),
            None if overdue => return confirms.fail_all(BridgeError::ConfirmTimeout(timeout)),
            None if confirms.closed.is_some() => return,
            None => {}
        }
    }
}

/// One confirming channel for many publishing tasks (a server's
/// sessions): RabbitMQ allows a connection 2,047 channels by default, and
/// each channel costs memory on both sides. Opened at the first publish,
/// and again after a failure.
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
    /// channel can be opened.
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

    /// Closes the channel, if open.
    pub async fn close(&self) {
        if let Some(p) = self.publisher.lock().await.take() {
            p.close().await;
        }
    }
}
