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
use crate::http::UpCount;
use crate::shutdown::Shutdown;
use crate::tls::client_config;
use amqp_bridge::SharedConnection;
use nodedata::{NodeDatabase, PeerData, Snapshot, Watcher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
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
    /// Counts the links up (for `/readyz`).
    pub up: UpCount,
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
    /// The peer is no longer active: wait until it is again.
    Inactive,
    /// Retry after a back-off.
    Retry(String),
    /// Give up.
    Fatal(FatalError),
}

/// Runs the client until shutdown; reconnects after every failure.
pub async fn run(s: ClientSettings, mut shutdown: Shutdown) -> Result<(), FatalError> {
    let mut nodedata = start(&s).await?;
    let broker = SharedConnection::new(s.internal.broker(&s.broker_url));
    let mut backoff = Backoff::new();
    let mut queue_checked = false;
    let counters = crate::metrics::get().map(|m| m.link(&s.peer_id, &s.queue));
    let result = loop {
        // The peer, the manifest and our certificate are taken afresh for
        // every link; a peer that is not active is waited for.
        let Some(peer) = active_peer(&mut nodedata, &s.peer_id, &mut shutdown).await else {
            break Ok(());
        };
        let node = nodedata.borrow().node.clone();
        let connector = match connector_for(&s, &peer) {
            Ok(c) => c,
            Err(e) => {
                let what = format!("cannot set up TLS for peer {}: {e}", peer.node_id);
                if !backoff.pause(Duration::ZERO, &what, &mut shutdown).await {
                    break Ok(());
                }
                continue;
            }
        };
        if !queue_checked {
            queue_checked = match queue_exists(&broker, &s.queue).await {
                Ok(checked) => checked,
                Err(e) => break Err(e),
            };
        }
        let started = Instant::now();
        let link = link::run(
            &s,
            counters.as_ref(),
            &node,
            &peer,
            &connector,
            &broker,
            &mut nodedata,
            &mut shutdown,
        )
        .await;
        match link {
            LinkEnd::Shutdown => break Ok(()),
            LinkEnd::Inactive => continue,
            LinkEnd::Fatal(e) => break Err(e),
            LinkEnd::Retry(why) => {
                if let Some(c) = &counters {
                    c.reconnects.inc();
                }
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

/// Starts following the node database (SIGHUP polls it at once), after
/// checking what must be right at start: the peer is known, our
/// certificate and key can be read.
async fn start(s: &ClientSettings) -> Result<watch::Receiver<Arc<Snapshot>>, FatalError> {
    let db = NodeDatabase::open(&s.nodedata_url).map_err(config_error)?;
    let files = vec![];
    let (nodedata, reload) = Watcher::start(db.root().to_path_buf(), files, s.internal.nodedata_poll())
        .await
        .map_err(config_error)?;
    crate::shutdown::reload_on_sighup(reload);
    crate::metrics::watch_certificates(nodedata.clone(), Some(s.server_cert.clone()));
    if nodedata.borrow().peer(&s.peer_id).is_none() {
        return Err(FatalError::UnknownPeer(s.peer_id.clone()));
    }
    crate::tls::load_certs(&s.server_cert).map_err(config_error)?;
    crate::tls::load_key(&s.server_key).map_err(config_error)?;
    Ok(nodedata)
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

/// The peer, once it is active (said once when it is not); `None` on
/// shutdown.
async fn active_peer(
    nodedata: &mut watch::Receiver<Arc<Snapshot>>,
    peer_id: &str,
    shutdown: &mut Shutdown,
) -> Option<Arc<PeerData>> {
    let mut said = false;
    loop {
        if let Some(peer) = nodedata.borrow_and_update().active_peer(peer_id) {
            if said {
                tracing::info!("peer {peer_id} is active again");
            }
            return Some(peer);
        }
        if !said {
            tracing::warn!("peer {peer_id} is not active in the node database; waiting until it is");
            said = true;
        }
        tokio::select! {
            changed = nodedata.changed() => changed.ok()?,
            _ = shutdown.requested() => return None,
        }
    }
}

/// The TLS connector for `peer`: we present our leaf (read afresh, so a
/// replaced certificate is used from the next link) and the sub-CA the
/// peer issued for us; we trust the peer's root.
fn connector_for(s: &ClientSettings, peer: &PeerData) -> anyhow::Result<TlsConnector> {
    let own = crate::tls::load_certs(&s.server_cert)?;
    let key = crate::tls::load_key(&s.server_key)?;
    let certs = vec![own[0].clone(), peer.sub_cert.clone()];
    let config = client_config(certs, key, &peer.node_id, &peer.root_cert)?;
    Ok(TlsConnector::from(Arc::new(config)))
}
