//! The consumer of one queue: a prefetch window, cumulative acks, and
//! rejects that dead-letter.

use crate::connection::Opened;
use crate::{checked_name, BridgeError, SharedConnection};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicQosArguments, BasicRejectArguments, Channel,
    ConsumerMessage, QueueDeclareArguments,
};
use std::future::Future;
use tokio::sync::{mpsc, watch};

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

impl InMessage {
    fn from_amqp(m: ConsumerMessage) -> Option<InMessage> {
        let deliver = m.deliver?;
        let props = m.basic_properties.unwrap_or_default();
        Some(InMessage {
            delivery_tag: deliver.delivery_tag(),
            msg_type: props.message_type().cloned().unwrap_or_default(),
            content_type: props.content_type().cloned().unwrap_or_default(),
            body: m.content.unwrap_or_default(),
        })
    }
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

/// A consumer of one queue with a prefetch window.
pub struct Consumer {
    channel: Channel,
    deliveries: mpsc::UnboundedReceiver<ConsumerMessage>,
    lost: watch::Receiver<bool>,
    queue: String,
}

impl Consumer {
    /// Starts consuming `queue` (which must exist) with `window`
    /// unacknowledged messages at most (the AMQP prefetch, 1 to 65535).
    pub async fn new(conn: &SharedConnection, queue: &str, window: usize) -> Result<Consumer, BridgeError> {
        let prefetch = u16::try_from(window).unwrap_or(u16::MAX).max(1);
        let opened = conn.channel().await?;
        ensure_queue(&opened, queue).await?;
        let qos = BasicQosArguments::new(0, prefetch, false);
        opened.channel.basic_qos(qos).await.map_err(|e| opened.error(e))?;
        let args = BasicConsumeArguments::new(queue, "").manual_ack(true).finish();
        let consumed = opened.channel.basic_consume_rx(args).await;
        let (_tag, deliveries) = consumed.map_err(|e| opened.error(e))?;
        Ok(Consumer {
            channel: opened.channel,
            deliveries,
            lost: opened.lost,
            queue: queue.to_string(),
        })
    }

    /// The next delivery; an error when the channel, the consumer or the
    /// connection is gone.
    pub async fn next(&mut self) -> Result<InMessage, BridgeError> {
        tokio::select! {
            m = self.deliveries.recv() => m.and_then(InMessage::from_amqp).ok_or(BridgeError::ConsumerClosed),
            _ = crate::connection::lost(self.lost.clone()) => Err(BridgeError::ConnectionLost),
        }
    }

    /// Acks every delivery up to and including `tag`. The ack is queued
    /// at once (after everything queued before it) without waiting for
    /// the socket write; a failure is logged, and the lost channel is
    /// reported by the next [`Consumer::next`].
    pub fn ack_up_to(&self, tag: u64) {
        let channel = self.channel.clone();
        in_order(async move { channel.basic_ack(BasicAckArguments::new(tag, true)).await });
    }

    /// Rejects one delivery without requeueing it: RabbitMQ dead-letters
    /// it (to `<QUEUE>.XQ` with the configure-queue topology). Queued like
    /// [`Consumer::ack_up_to`], so acks and rejects keep their order.
    pub fn reject(&self, tag: u64) {
        let channel = self.channel.clone();
        in_order(async move { channel.basic_reject(BasicRejectArguments::new(tag, false)).await });
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
        let _ = self.channel.close().await;
    }
}

/// Polls a call once, so that its frame is queued now (the writer's
/// queue is fair: a later call cannot overtake it), and lets the rest
/// finish on the runtime.
fn in_order(fut: impl Future<Output = Result<(), amqprs::error::Error>> + Send + 'static) {
    let mut fut = Box::pin(fut);
    match futures::FutureExt::now_or_never(&mut fut) {
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::warn!("RabbitMQ call failed: {e}"),
        None => {
            tokio::spawn(async move {
                if let Err(e) = fut.await {
                    tracing::warn!("RabbitMQ call failed: {e}");
                }
            });
        }
    }
}
