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
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// A pending confirmation; await it to learn the message's fate.
pub type PendingConfirm = futures::future::BoxFuture<'static, Result<(), BridgeError>>;

/// One unconfirmed publish.
struct Unconfirmed {
    seq: u64,
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

    /// Fails everything pending: the channel is gone.
    fn fail_all(&mut self, why: &str) {
        self.closed = Some(why.to_string());
        for u in self.pending.drain(..) {
            let _ = u.settle.send(Err(BridgeError::Amqp(why.to_string())));
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
        self.confirms()
            .fail_all(&format!("the channel was closed: {close}"));
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
/// it (the message numbers follow the call order).
pub struct Publisher {
    channel: Channel,
    confirms: Arc<Mutex<Confirms>>,
    lost: watch::Receiver<bool>,
    confirm_timeout: Duration,
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
        Ok(Publisher {
            channel: opened.channel,
            confirms,
            lost: opened.lost,
            confirm_timeout,
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
            Ok(settled) => {
                let lost = self.lost.clone();
                let timeout = self.confirm_timeout;
                Box::pin(async move {
                    tokio::select! {
                        r = settled => r.unwrap_or(Err(BridgeError::ConnectionLost)),
                        _ = crate::connection::lost(lost) => Err(BridgeError::ConnectionLost),
                        _ = tokio::time::sleep(timeout) => Err(BridgeError::ConfirmTimeout(timeout)),
                    }
                })
            }
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
                fingerprint: fingerprint(m.exchange, m.routing_key, m.body),
                returned: None,
                settle,
            });
        }
        if let Err(e) = self.channel.basic_publish(props, m.body.to_vec(), args).await {
            let mut confirms = self.confirms.lock().unwrap_or_else(|e| e.into_inner());
            confirms.fail_all(&format!("publishing failed: {e}"));
            return Err(e.into());
        }
        Ok(settled)
    }

    /// Closes the channel.
    pub async fn close(self) {
        let _ = self.channel.close().await;
    }
}
