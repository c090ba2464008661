//! The RabbitMQ side of the gateway, on an AMQP 0-9-1 client of its own.
//!
//! This crate owns everything AMQP: the process-wide [`SharedConnection`]
//! that reconnects by itself (the channels of consumers, checks and
//! topology, the readiness probe; [`shared`]), the confirmed [`Publisher`]
//! the server and the drainer publish with (mandatory, persistent, with
//! the headers of SPEC section 7 in the smallest integer types, on a
//! connection of its own, obeying RabbitMQ's flow control; [`publisher`]),
//! the [`Consumer`] the client and the drainer read their queue with
//! (prefetch, cumulative acks, reject to the dead-letter queue;
//! [`consumer`]), and the `configure-queue` [`topology`] of SPEC section 8.
//! It knows nothing of STOMP or SMP.
//!
//! The layers, each importing only those below it:
//!
//! ```text
//!  consumer, topology          what the gateway does with the broker
//!  shared                      the shared connection, publishers per node
//!  channels, publisher         what a connection's frames mean
//!  conn                        handshake, writer, reader, closes, flow control
//!  endpoint, tls               URLs and their parameters, TLS
//!  wire (codec, method, content)  frames, one typed home per method
//! ```
//!
//! Everything runs on the caller's tokio runtime, without a thread
//! hand-off: frames are encoded into an outbox that a writer task sends a
//! burst at a time, and a reader task hands confirmations, replies and
//! deliveries straight to the publisher's and the channels' queues.

mod channels;
mod conn;
pub mod consumer;
pub mod endpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod publisher;
pub mod shared;
mod tls;
pub mod topology;
mod wire;

pub use channels::InMessage;
pub use consumer::{check_queue, Consumer};
pub use endpoint::{redact_url, BrokerSettings};
pub use publisher::{PendingConfirm, Publisher};
pub use shared::{connect, SharedConnection, SharedPublisher};
pub use topology::check_exchange;

use std::time::Duration;

/// A broker failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BridgeError {
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("RabbitMQ error: {0}")]
    Amqp(String),
    #[error("{0}")]
    NoAnswer(String),
    #[error("the message cannot be published: {0}")]
    TooLarge(String),
    #[error("the queue \"{0}\" does not exist")]
    NoQueue(String),
    #[error("the exchange \"{0}\" does not exist")]
    NoExchange(String),
    #[error("invalid AMQP name \"{0}\" (at most 255 bytes)")]
    Name(String),
    #[error("RabbitMQ returned the message as unroutable (exchange \"{exchange}\", routing key \"{routing_key}\")")]
    Returned { exchange: String, routing_key: String },
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("RabbitMQ did not confirm the message within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the RabbitMQ connection was lost")]
    ConnectionLost,
    #[error("the consumer was cancelled or its channel closed")]
    ConsumerClosed,
}

/// Checks a queue, exchange or routing key name: at most an AMQP short
/// string (a longer one cannot be encoded).
pub(crate) fn checked_name(name: &str) -> Result<&str, BridgeError> {
    if name.len() <= 255 {
        Ok(name)
    } else {
        Err(BridgeError::Name(name.to_string()))
    }
}

/// The value of one message header, as the gateway publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// An integer in the smallest AMQP field type that holds it: `b` (i8),
/// `s` (i16), `u` (u16), `I` (i32), `i` (u32), `l` (i64), tried in that
/// order, as the Python gateway writes them (RabbitMQ's headers exchanges
/// compare types as well as values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmallestInt {
    I8(i8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
}

impl SmallestInt {
    pub fn of(i: i64) -> SmallestInt {
        if let Ok(v) = i8::try_from(i) {
            SmallestInt::I8(v)
        } else if let Ok(v) = i16::try_from(i) {
            SmallestInt::I16(v)
        } else if let Ok(v) = u16::try_from(i) {
            SmallestInt::U16(v)
        } else if let Ok(v) = i32::try_from(i) {
            SmallestInt::I32(v)
        } else if let Ok(v) = u32::try_from(i) {
            SmallestInt::U32(v)
        } else {
            SmallestInt::I64(i)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_integer_types() {
        use SmallestInt::*;
        let cases = [
            (-5, I8(-5)),
            (127, I8(127)),
            (-300, I16(-300)),
            (40_000, U16(40_000)),
            (-70_000, I32(-70_000)),
            (3_000_000_000, U32(3_000_000_000)),
            (i64::MIN, I64(i64::MIN)),
            (1 << 40, I64(1 << 40)),
        ];
        for (i, want) in cases {
            assert_eq!(SmallestInt::of(i), want, "{i}");
        }
        assert!(checked_name(&"q".repeat(256)).is_err());
        assert!(checked_name(&"q".repeat(255)).is_ok());
    }
}
