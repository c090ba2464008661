//! The Swaptacular STOMP peer gateway: the parts the four binaries share.
//!
//! The data path, top down (each layer uses only the ones below it):
//!
//! - [`server`], [`client`], [`drainer`]: the pipelines that join a STOMP
//!   session (or a queue) to RabbitMQ; [`doctor`]: the read-only checks of
//!   `swpt-doctor`;
//! - [`session`]: what both STOMP sides share: typed frames, heart-beats
//!   and the watchdog, batched confirmations;
//! - [`publish`]: an SMP publication turned into an AMQP message;
//! - [`tls`]: rustls configurations and the Swaptacular verifiers;
//! - below: the crates `stomp-codec`, `smp-json`, `amqp-bridge`, `nodedata`.
//!
//! Process plumbing: [`config`] (flags and `APP_*` settings), [`http`]
//! (probes and metrics endpoint) and [`metrics`] (what is counted), [`logging`],
//! [`shutdown`] (signals), [`affinity`] (CPU pinning), [`backoff`] (waits
//! between attempts), [`exit`] (exit status).
//!
//! [`programs`]: each program's command line and `main`, which the thin
//! binaries (and `swpt-gateway`, all of them in one) call.

/// The version `--version` shows: the package's, and the git commit the
/// binaries were built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SWPT_GIT_COMMIT"),
    ")"
);

pub mod affinity;
pub mod backoff;
pub mod client;
pub mod config;
pub mod doctor;
pub mod drainer;
pub mod exit;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod programs;
pub mod publish;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod tls;
