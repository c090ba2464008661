//! `swpt-client`: streams RabbitMQ queues to peers' STOMP servers, and
//! reconnects by itself; one link (`PEER QUEUE`) or many (`--links FILE`).
//!
//! ```text
//!  RabbitMQ QUEUE ──> Consumer ──delivery──> smp_json::client_process ──SEND──> Framed<StompCodec> ──TLS──> peer
//!        ^   (prefetch = buffer)                   │ invalid                          │
//!        │ ack multiple up to N (batched)          v                                  │
//!        └─────────── reject → QUEUE.XQ     RECEIPT N <───────────────────────────────┘
//! ```
//!
//! - this module: [`run`] (one link), and [`serve_link`], the loop of
//!   one link's connections: the peer read afresh for each, a capped,
//!   jittered back-off between them ([`crate::backoff`]);
//! - [`links`]: many links in one process, the links file followed live;
//! - [`session`]: one connection of a link: connect to a random server of
//!   the peer's manifest, STOMP handshake, then the session loop that
//!   sends deliveries while fewer than `buffer` are unconfirmed and acks
//!   what RECEIPTs confirm. When a session ends its consumer channel is
//!   closed, so RabbitMQ redelivers what was not acked.
//!
//! The words: a *link* is a (peer, queue) pair served for the life of the
//! process, by [`serve_link`]; a *session* is one connection of it.

mod links;
mod session;

pub use links::{parse_links, run_links};

use crate::backoff::Backoff;
use crate::config::{CertArgs, NodeSettings};
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

/// What every link of a client process shares.
pub struct ClientSettings {
    pub node: NodeSettings,
    pub cert: CertArgs,
    /// Messages each link holds unconfirmed at most.
    pub buffer: usize,
    /// Counts the links up (for `/readyz`).
    pub up: UpCount,
}

/// One link: a peer, and the queue of messages for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId {
    pub peer: String,
    pub queue: String,
}

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.peer, self.queue)
    }
}

/// Why a link (or the client) stops for good.
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

/// What the links of one process share: the settings, the node database
/// as last seen, and the AMQP connection (each link has its own channel).
struct Shared {
    s: ClientSettings,
    nodedata: watch::Receiver<Arc<Snapshot>>,
    broker: Arc<SharedConnection>,
}

/// `swpt-client PEER QUEUE`: runs one link until shutdown; reconnects
/// after every failure.
pub async fn run(s: ClientSettings, link: LinkId, mut shutdown: Shutdown) -> Result<(), FatalError> {
    let nodedata = start(&s, Vec::new()).await?;
    if nodedata.borrow().peer(&link.peer).is_none() {
        return Err(FatalError::UnknownPeer(link.peer));
    }
    let broker = SharedConnection::new(s.node.broker());
    let shared = Shared { s, nodedata, broker };
    let result = serve_link(&shared, &link, &mut shutdown).await;
    shared.broker.close().await;
    result
}

/// A link's series, removed when the link ends.
struct LinkSeries<'a>(&'a LinkId);

impl Drop for LinkSeries<'_> {
    fn drop(&mut self) {
        crate::metrics::get().forget_link(&self.0.peer, &self.0.queue);
    }
}

/// Runs one link until shutdown: the peer, its manifest and our
/// certificate are taken afresh for every connection; a peer that is not
/// active is waited for; a failure is retried after a back-off.
async fn serve_link(shared: &Shared, id: &LinkId, shutdown: &mut Shutdown) -> Result<(), FatalError> {
    let s = &shared.s;
    let mut nodedata = shared.nodedata.clone();
    let mut backoff = Backoff::new();
    let mut queue_checked = false;
    let _series = LinkSeries(id);
    loop {
        let Some(peer) = active_peer(&mut nodedata, &id.peer, shutdown).await else {
            return Ok(());
        };
        // At zero from the link's start; made again when its peer is
        // active again (they are removed while it is not).
        let counters = crate::metrics::get().link(&id.peer, &id.queue);
        let node = nodedata.borrow().node.clone();
        let connector = match connector_for(s, &peer) {
            Ok(c) => c,
            Err(e) => {
                let what = format!("cannot set up TLS for peer {}: {e}", peer.node_id);
                if !backoff.pause(Duration::ZERO, &what, shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        if !queue_checked {
            queue_checked = queue_exists(&shared.broker, &id.queue).await?;
        }
        let started = Instant::now();
        let ended = session::run(
            &session::Context {
                s,
                queue: &id.queue,
                counters: &counters,
                node: &node,
                peer: &peer,
                connector: &connector,
                broker: &shared.broker,
            },
            &mut nodedata,
            shutdown,
        )
        .await;
        match ended {
            LinkEnd::Shutdown => return Ok(()),
            LinkEnd::Inactive => continue,
            LinkEnd::Fatal(e) => return Err(e),
            LinkEnd::Retry(why) => {
                counters.reconnects.inc();
                let what = format!("link to peer {} ended: {why}", peer.node_id);
                if !backoff.pause(started.elapsed(), &what, shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Starts following the node database (and `files`; SIGHUP polls at
/// once), after checking that our certificate and key can be read.
async fn start(
    s: &ClientSettings,
    files: Vec<PathBuf>,
) -> Result<watch::Receiver<Arc<Snapshot>>, FatalError> {
    let db = NodeDatabase::open(&s.node.nodedata_url).map_err(config_error)?;
    let (nodedata, reload) = Watcher::start(db.root().to_path_buf(), files, s.node.internal.nodedata_poll())
        .await
        .map_err(config_error)?;
    crate::shutdown::reload_on_sighup(reload);
    crate::metrics::watch_certificates(nodedata.clone(), Some(s.cert.server_cert.clone()));
    crate::tls::load_certs(&s.cert.server_cert).map_err(config_error)?;
    crate::tls::load_key(&s.cert.server_key).map_err(config_error)?;
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
    let own = crate::tls::load_certs(&s.cert.server_cert)?;
    let key = crate::tls::load_key(&s.cert.server_key)?;
    let certs = vec![own[0].clone(), peer.sub_cert.clone()];
    let config = client_config(certs, key, &peer.node_id, &peer.root_cert)?;
    Ok(TlsConnector::from(Arc::new(config)))
}
