//! `swpt-client PEER QUEUE`: streams a RabbitMQ queue to one peer's
//! STOMP server, and reconnects by itself.
//!
//! ```text
//!  RabbitMQ QUEUE ──> Consumer ──delivery──> smp_json::client_process ──SEND──> Framed<StompCodec> ──TLS──> peer
//!        ^   (prefetch = buffer)                   │ invalid                          │
//!        │ ack multiple up to N (batched)          v                                  │
//!        └─────────── reject → QUEUE.XQ     RECEIPT N <───────────────────────────────┘
//! ```
//!
//! - this module: the loop of links: the peer read afresh for each, a
//!   capped, jittered back-off between them ([`crate::backoff`]);
//! - [`link`]: one link: connect to a random server of the peer's
//!   manifest, STOMP handshake, then the [`link::Link`] loop that sends
//!   deliveries while fewer than `buffer` are unconfirmed and acks what
//!   RECEIPTs confirm. When a link ends its consumer channel is closed, so
//!   RabbitMQ redelivers what was not acked.

mod link;

use crate::backoff::Backoff;
use crate::config::Internal;
use crate::shutdown::Shutdown;
use crate::tls::client_config;
use amqp_bridge::SharedConnection;
use nodedata::{NodeDatabase, PeerData};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio_rustls::TlsConnector;

/// What the client needs to run.
pub struct ClientSettings {
    pub nodedata_url: String,
    pub broker_url: String,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub peer_id: String,
    pub queue: String,
    pub buffer: usize,
    pub internal: Internal,
}

/// Why the client stops for good.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error("peer {0} is not an active peer in the node database")]
    UnknownPeer(String),
    /// The node database, certificate or key cannot be used.
    #[error(transparent)]
    Config(anyhow::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl FatalError {
    /// For [`crate::exit::finish`]: a configuration error exits with its
    /// own status.
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            FatalError::Config(e) => crate::exit::config(e),
            other => other.into(),
        }
    }
}

fn config_error(e: impl Into<anyhow::Error>) -> FatalError {
    FatalError::Config(e.into())
}

/// How one link ended.
enum LinkEnd {
    /// Shutdown requested and done.
    Shutdown,
    /// Retry after a back-off.
    Retry(String),
    /// Give up.
    Fatal(FatalError),
}

/// Runs the client until shutdown; reconnects after every failure.
pub async fn run(s: ClientSettings, mut shutdown: Shutdown) -> Result<(), FatalError> {
    let db = NodeDatabase::open(&s.nodedata_url, s.internal.peers_cache()).map_err(config_error)?;
    let node = db.node_data().await.map_err(config_error)?;
    let certs = crate::tls::load_certs(&s.server_cert).map_err(config_error)?;
    let key = crate::tls::load_key(&s.server_key).map_err(config_error)?;
    let broker = SharedConnection::new(s.internal.broker(&s.broker_url));
    let mut backoff = Backoff::new();
    let mut queue_checked = false;
    let result = loop {
        // The peer is read afresh for every link: a changed manifest or
        // certificate is picked up, and a deactivated peer ends the client.
        let peer = match active_peer(&db, &s.peer_id).await {
            Ok(peer) => peer,
            Err(e) => break Err(e),
        };
        let connector = connector_for(&certs, &key, &peer)?;
        if !queue_checked {
            queue_checked = match queue_exists(&broker, &s.queue).await {
                Ok(checked) => checked,
                Err(e) => break Err(e),
            };
        }
        let started = Instant::now();
        match link::run(&s, &node, &peer, &connector, &broker, &mut shutdown).await {
            LinkEnd::Shutdown => break Ok(()),
            LinkEnd::Fatal(e) => break Err(e),
            LinkEnd::Retry(why) => {
                let what = format!("link to peer {} ended: {why}", peer.node_id);
                if !backoff.pause(started.elapsed(), &what, &mut shutdown).await {
                    break Ok(());
                }
            }
        }
    };
    broker.close().await;
    result
}

/// Whether the queue was found (`Ok(false)`: the broker did not answer,
/// and the links will try again); a missing queue is fatal, even while
/// the peer's servers cannot be reached.
async fn queue_exists(broker: &SharedConnection, queue: &str) -> Result<bool, FatalError> {
    match amqp_bridge::check_queue(broker, queue).await {
        Ok(()) => Ok(true),
        Err(e @ amqp_bridge::BridgeError::NoQueue(_)) => Err(no_queue(e)),
        Err(e) => {
            tracing::warn!("{e}");
            Ok(false)
        }
    }
}

/// The error for a missing queue.
fn no_queue(e: amqp_bridge::BridgeError) -> FatalError {
    FatalError::Other(anyhow::anyhow!("{e} (run configure-queue first)"))
}

async fn active_peer(db: &NodeDatabase, peer_id: &str) -> Result<Arc<PeerData>, FatalError> {
    db.peer_data(peer_id)
        .await
        .map_err(anyhow::Error::from)?
        .filter(|p| p.is_active())
        .ok_or_else(|| FatalError::UnknownPeer(peer_id.to_string()))
}

/// The TLS connector for `peer`: we present our leaf and the sub-CA the
/// peer issued for us; we trust the peer's root.
fn connector_for(
    own: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    peer: &PeerData,
) -> Result<TlsConnector, FatalError> {
    let mut certs = own[..1].to_vec();
    certs.push(peer.sub_cert.clone());
    let config =
        client_config(certs, key.clone_key(), &peer.node_id, &peer.root_cert).map_err(anyhow::Error::from)?;
    Ok(TlsConnector::from(Arc::new(config)))
}
