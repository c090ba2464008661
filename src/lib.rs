//! The Swaptacular STOMP peer gateway: the parts the four binaries share.
//!
//! - [`tls`]: rustls configurations and the Swaptacular verifiers;
//! - [`config`]: command-line and environment settings;
//! - [`session`]: the STOMP state machines of both sides;
//! - [`backoff`]: the waits between reconnection attempts;
//! - [`server`], [`client`], [`drainer`]: the pipelines that join a STOMP
//!   session (or a queue) to RabbitMQ.

pub mod backoff;
pub mod client;
pub mod config;
pub mod drainer;
pub mod server;
pub mod session;
pub mod tls;
