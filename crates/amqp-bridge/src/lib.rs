//! The RabbitMQ side of the gateway, on lapin.
//!
//! This crate owns everything AMQP: the process-wide [`SharedConnection`]
//! that reconnects by itself, the confirmed [`Publisher`] the server and
//! the drainer publish with (mandatory, persistent, with the headers of
//! SPEC section 7 in the smallest integer types), the [`Consumer`] the
//! client and the drainer read their queue with (prefetch, cumulative
//! acks, reject to the dead-letter queue), and the `configure-queue`
//! [`topology`] of SPEC section 8. It knows nothing of STOMP.

pub mod topology;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// A broker failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("RabbitMQ error: {0}")]
    Amqp(String),
    #[error("the queue \"{0}\" does not exist")]
    NoQueue(String),
    #[error("RabbitMQ returned the message as unroutable (exchange \"{exchange}\", routing key \"{routing_key}\")")]
    Returned { exchange: String, routing_key: String },
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("RabbitMQ did not confirm the message within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the consumer was cancelled or its channel closed")]
    ConsumerClosed,
}

impl From<lapin::Error> for BridgeError {
    fn from(e: lapin::Error) -> Self {
        BridgeError::Amqp(e.to_string())
    }
}

/// Hides the password of an AMQP URL for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Opens one AMQP connection, on the tokio runtime, within `timeout`.
pub async fn connect(url: &str, timeout: Duration) -> Result<Connection, BridgeError> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let err = |reason: String| BridgeError::Connect {
        url: redact_url(url),
        reason,
    };
    match tokio::time::timeout(timeout, Connection::connect(url, props)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err(format!("no answer within {timeout:?}"))),
    }
}

/// One long-lived connection shared by a process, re-opened when it has
/// gone away; hands out channels.
pub struct SharedConnection {
    url: String,
    timeout: Duration,
    conn: Mutex<Option<Arc<Connection>>>,
}

impl SharedConnection {
    pub fn new(url: &str, timeout: Duration) -> Arc<SharedConnection> {
        Arc::new(SharedConnection {
            url: url.to_string(),
            timeout,
            conn: Mutex::new(None),
        })
    }

    /// The live connection, opened (again) if needed.
    pub async fn connection(&self) -> Result<Arc<Connection>, BridgeError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.status().connected() {
                return Ok(c.clone());
            }
            tracing::warn!("the RabbitMQ connection was lost; reconnecting");
        }
        let c = Arc::new(connect(&self.url, self.timeout).await?);
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Closes the connection, if open (call before the runtime ends, so
    /// that lapin's I/O thread stops cleanly).
    pub async fn close(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            let _ = c.close(200, "shutting down").await;
        }
    }

    /// A new channel on the live connection.
    pub async fn channel(&self) -> Result<Channel, BridgeError> {
        let conn = self.connection().await?;
        match conn.create_channel().await {
            Ok(ch) => Ok(ch),
            Err(e) => {
                // The connection may have died just now: one more try.
                tracing::warn!("opening a RabbitMQ channel failed ({e}); reconnecting");
                self.conn.lock().await.take();
                Ok(self.connection().await?.create_channel().await?)
            }
        }
    }
}

/// The value of one message header, as the gateway publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// An AMQP field table from the gateway's headers, with each integer in
/// the smallest type that holds it (`b`, `s`, `u`, `I`, `i`, `l`), as the
/// Python gateway writes them: RabbitMQ's headers exchanges compare types.
pub fn headers_table(headers: &[(&'static str, HeaderValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        let v = match value {
            HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
            HeaderValue::Int(i) => smallest_int(*i),
        };
        table.insert(ShortString::from(*name), v);
    }
    table
}

/// The smallest AMQP integer type that holds `i`.
pub fn smallest_int(i: i64) -> AMQPValue {
    if let Ok(v) = i8::try_from(i) {
        AMQPValue::ShortShortInt(v)
    } else if let Ok(v) = i16::try_from(i) {
        AMQPValue::ShortInt(v)
    } else if let Ok(v) = u16::try_from(i) {
        AMQPValue::ShortUInt(v)
    } else if let Ok(v) = i32::try_from(i) {
        AMQPValue::LongInt(v)
    } else if let Ok(v) = u32::try_from(i) {
        AMQPValue::LongUInt(v)
    } else {
        AMQPValue::LongLongInt(i)
    }
}

/// What the gateway publishes.
#[derive(Clone, Debug)]
pub struct OutMessage<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub msg_type: &'a str,
    pub body: &'a [u8],
    pub headers: Vec<(&'static str, HeaderValue)>,
}

/// How every message is published: mandatory, so that an unroutable one
/// comes back instead of vanishing.
pub const PUBLISH_OPTIONS: BasicPublishOptions = BasicPublishOptions {
    mandatory: true,
    immediate: false,
};

impl OutMessage<'_> {
    /// The AMQP properties the gateway publishes with: JSON content type,
    /// the message type, persistent, `app_id` `swpt_stomp` and the headers.
    pub fn properties(&self) -> BasicProperties {
        BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_type(ShortString::from(self.msg_type))
            .with_delivery_mode(2)
            .with_app_id(ShortString::from("swpt_stomp"))
            .with_headers(headers_table(&self.headers))
    }
}

/// A publisher with confirms on its own channel.
pub struct Publisher {
    channel: Channel,
    confirm_timeout: Duration,
}

/// A pending confirmation; await it to learn the message's fate.
pub type PendingConfirm = futures::future::BoxFuture<'static, Result<(), BridgeError>>;

impl Publisher {
    /// Opens a confirming channel on `conn`.
    pub async fn new(conn: &SharedConnection, confirm_timeout: Duration) -> Result<Publisher, BridgeError> {
        let channel = conn.channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher {
            channel,
            confirm_timeout,
        })
    }

    /// Publishes one message (persistent, mandatory, `app_id
    /// swpt_stomp`). The frames are queued before this returns, so
    /// messages go out in call order without waiting for each other; the
    /// returned future resolves when RabbitMQ confirms the message, or
    /// fails on a nack, a return, a broken channel or the confirmation
    /// timeout.
    pub fn publish(&self, m: &OutMessage<'_>) -> PendingConfirm {
        let props = m.properties();
        let channel = self.channel.clone();
        let timeout = self.confirm_timeout;
        let exchange = m.exchange.to_string();
        let routing_key = m.routing_key.to_string();
        let body = m.body.to_vec();
        let mut pending: PendingConfirm = Box::pin(async move {
            let sent = channel.basic_publish(&exchange, &routing_key, PUBLISH_OPTIONS, &body, props);
            let confirmed = async move { sent.await?.await };
            match tokio::time::timeout(timeout, confirmed).await {
                Err(_) => Err(BridgeError::ConfirmTimeout(timeout)),
                Ok(Err(e)) => Err(e.into()),
                Ok(Ok(Confirmation::Ack(Some(_)))) | Ok(Ok(Confirmation::Nack(Some(_)))) => {
                    Err(BridgeError::Returned {
                        exchange,
                        routing_key,
                    })
                }
                Ok(Ok(Confirmation::Ack(None))) => Ok(()),
                Ok(Ok(Confirmation::Nack(None))) => Err(BridgeError::Nacked),
                Ok(Ok(Confirmation::NotRequested)) => Ok(()),
            }
        });
        // The first poll takes the delivery tag and queues the frames: do
        // it now, so that the publish order is the call order.
        match futures::FutureExt::now_or_never(&mut pending) {
            Some(done) => Box::pin(futures::future::ready(done)),
            None => pending,
        }
    }

    /// Closes the channel.
    pub async fn close(&self) {
        let _ = self.channel.close(200, "bye").await;
    }
}

/// Polls a lapin call once, so that its frame is queued now (in call
/// order), and lets the rest finish on the runtime.
fn in_background(fut: impl std::future::Future<Output = Result<(), lapin::Error>> + Send + 'static) {
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

/// A consumer of one queue with a prefetch window.
pub struct Consumer {
    channel: Channel,
    consumer: lapin::Consumer,
    queue: String,
}

/// Fails with [`BridgeError::NoQueue`] unless `queue` exists (a passive
/// declare on `channel`, which RabbitMQ closes when the queue is missing).
async fn ensure_queue(channel: &Channel, queue: &str) -> Result<(), BridgeError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match channel.queue_declare(queue, passive, FieldTable::default()).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            if text.contains("NOT_FOUND") || text.contains("404") {
                Err(BridgeError::NoQueue(queue.to_string()))
            } else {
                Err(e.into())
            }
        }
    }
}

/// Whether `queue` exists: `Err(NoQueue)` when it does not.
pub async fn check_queue(conn: &SharedConnection, queue: &str) -> Result<(), BridgeError> {
    let channel = conn.channel().await?;
    ensure_queue(&channel, queue).await?;
    let _ = channel.close(200, "checked").await;
    Ok(())
}

impl Consumer {
    /// Starts consuming `queue` (which must exist) with `window`
    /// unacknowledged messages at most (the AMQP prefetch, 1 to 65535).
    pub async fn new(conn: &SharedConnection, queue: &str, window: usize) -> Result<Consumer, BridgeError> {
        let prefetch = u16::try_from(window).unwrap_or(u16::MAX).max(1);
        let channel = conn.channel().await?;
        ensure_queue(&channel, queue).await?;
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let consumer = channel
            .basic_consume(queue, "", BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        Ok(Consumer {
            channel,
            consumer,
            queue: queue.to_string(),
        })
    }

    /// The next delivery; an error when the channel or consumer is gone.
    pub async fn next(&mut self) -> Result<InMessage, BridgeError> {
        match self.consumer.next().await {
            Some(Ok(d)) => Ok(InMessage {
                delivery_tag: d.delivery_tag,
                msg_type: d
                    .properties
                    .kind()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                content_type: d
                    .properties
                    .content_type()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                body: d.data,
            }),
            Some(Err(e)) => Err(e.into()),
            None => Err(BridgeError::ConsumerClosed),
        }
    }

    /// Acks every delivery up to and including `tag`. The ack is queued
    /// at once (after everything queued before it) and sent by lapin in
    /// the background: the caller does not wait for the socket write. A
    /// failure closes the channel, which the next [`Consumer::next`]
    /// reports.
    pub fn ack_up_to(&self, tag: u64) {
        let channel = self.channel.clone();
        in_background(async move { channel.basic_ack(tag, BasicAckOptions { multiple: true }).await });
    }

    /// Rejects one delivery without requeueing it: RabbitMQ dead-letters
    /// it (to `<QUEUE>.XQ` with the configure-queue topology). Queued like
    /// [`Consumer::ack_up_to`], so acks and rejects keep their order.
    pub fn reject(&self, tag: u64) {
        let channel = self.channel.clone();
        in_background(async move {
            channel
                .basic_reject(tag, BasicRejectOptions { requeue: false })
                .await
        });
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
    pub async fn close(&self) {
        let _ = self.channel.close(200, "bye").await;
    }
}
