//! Swaptacular Messaging Protocol messages.
//!
//! This crate owns the message layer: the SMP message types ([`MessageType::ALL`]) and their
//! validation ([`Message::parse`], SPEC section 6), the processing rules of
//! both directions ([`server_process`], [`client_process`], SPEC section
//! 7), the MD5 routing keys ([`routing_key`]), the AMQP headers of a
//! publication, and the drainer's replies ([`drainer_reply`], SPEC section
//! 9). Everything here is a pure function of (our node, the peer, the
//! message): no I/O, and no panics on any input.

mod process;
mod schema;
pub mod timestamp;

pub use process::{
    as_hex, client_process, drainer_reply, parse_message, publication_from, routing_key, server_process,
    Direction, HeaderValue, ProcessError, Publication, MAX_SECONDS_AHEAD,
};
pub use schema::{FieldValues, Message, MessageType, SchemaError};
pub use timestamp::{now_micros, Timestamp};

#[cfg(test)]
mod tests;
