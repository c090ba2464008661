//! The consumer of one queue: a prefetch window, cumulative acks, and
//! rejects that dead-letter; a channel of the process's shared
//! connection (see [`crate::channels`] for how deliveries reach it).
//!
//! ```text
//!  RabbitMQ ──basic.deliver + header + body──> reader task ──> channel's deliveries ──next()──> link
//!     ^                                                                                           │
//!     └──────── writer task <── outbox <── basic.ack multiple / basic.reject <────────────────────┘
//! ```
//!
//! Acks and rejects are queued in call order, and never after the channel
//! closed. A channel closed by RabbitMQ, a cancelled consumer (its queue
//! deleted) or a lost connection fail the consumer's next
//! [`Consumer::next`]; what it did not ack goes back to the queue.

use crate::channels::{Channel, InMessage};
use crate::shared::SharedConnection;
use crate::wire::{self, codec::Table, id, Method};
use crate::{checked_name, BridgeError};

/// A passive `queue.declare` on `channel`: [`BridgeError::NoQueue`] when
/// the queue does not exist (RabbitMQ then closes the channel with 404).
async fn ensure_queue(channel: &mut Channel, queue: &str) -> Result<(), BridgeError> {
    checked_name(queue)?;
    let check = Method::QueueDeclare {
        queue,
        passive: true,
        durable: false,
        arguments: Table::EMPTY,
    };
    let declared = channel.call(&check, id::QUEUE_DECLARE_OK).await;
    match declared {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(404) => Err(BridgeError::NoQueue(queue.to_string())),
        Err(e) => Err(e.error),
    }
}

/// Whether `queue` exists: `Err(NoQueue)` when it does not.
pub async fn check_queue(conn: &SharedConnection, queue: &str) -> Result<(), BridgeError> {
    let mut channel = conn.channel().await?;
    let found = ensure_queue(&mut channel, queue).await;
    channel.close().await;
    found
}

/// A consumer of one queue with a prefetch window.
pub struct Consumer {
    channel: Channel,
    queue: String,
}

impl Consumer {
    /// Starts consuming `queue` (which must exist) with `window`
    /// unacknowledged messages at most (the AMQP prefetch, 1 to 65535).
    pub async fn new(conn: &SharedConnection, queue: &str, window: usize) -> Result<Consumer, BridgeError> {
        let prefetch = u16::try_from(window).unwrap_or(u16::MAX).max(1);
        let mut channel = conn.channel().await?;
        ensure_queue(&mut channel, queue).await?;
        let qos = Method::BasicQos {
            prefetch_count: prefetch,
        };
        channel.call(&qos, id::BASIC_QOS_OK).await.map_err(|e| e.error)?;
        let consume = Method::BasicConsume {
            queue,
            consumer_tag: "",
            arguments: Table::EMPTY,
        };
        channel
            .call(&consume, id::BASIC_CONSUME_OK)
            .await
            .map_err(|e| e.error)?;
        Ok(Consumer {
            channel,
            queue: queue.to_string(),
        })
    }

    /// The next delivery; an error when the channel, the consumer or the
    /// connection is gone.
    pub async fn next(&mut self) -> Result<InMessage, BridgeError> {
        self.channel.delivery().await
    }

    fn settle(&self, tag: u64, ack: bool) {
        let number = self.channel.number();
        let m = match ack {
            true => Method::BasicAck {
                delivery_tag: tag,
                multiple: true,
            },
            false => Method::BasicReject {
                delivery_tag: tag,
                requeue: false,
            },
        };
        self.channel.send(|o| wire::method_frame(o, number, &m));
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

    /// Closes the channel (unacked deliveries go back to the queue).
    pub async fn close(self) {
        self.channel.close().await;
    }
}
