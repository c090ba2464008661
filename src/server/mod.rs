//! `swpt-server`: accepts peers' STOMP connections and publishes what they
//! send to our `*_in` exchange.
//!
//! ```text
//!  listener ──TcpStream──> handler: TLS, who is the peer, slot ──> session
//!
//!  session:  peer ──TLS──> Framed<StompCodec> ──SEND──> smp_json::server_process ──> Publisher ──> RabbitMQ
//!                               ^                                                       │        (`*_in`)
//!                               └──── RECEIPT (cumulative, batched) <── confirms ───────┘
//!                               (at most `buffer` unconfirmed: reading pauses when full)
//! ```
//!
//! - this module: the [`ServerContext`] every connection shares, and the
//!   listener ([`bind`], [`serve`]);
//! - [`handler`]: one connection: the TLS handshake, the peer's identity
//!   and connection slot, and how the connection is closed;
//! - [`session`]: the STOMP session over it, joined to a publisher.
//!
//! Connections share one AMQP connection and one confirming channel
//! ([`SharedPublisher`]); each awaits its own confirmations.

mod handler;
mod session;

use crate::config::{CertArgs, Internal, NodeSettings};
use crate::session::Timing;
use crate::shutdown::Shutdown;
use crate::tls::{server_config, PeerRoots};
use amqp_bridge::{SharedConnection, SharedPublisher};
use nodedata::{NodeData, NodeDatabase, ReloadHandle, Snapshot, Watcher};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Everything the connections of one server share.
pub struct ServerContext {
    /// The node database as the watcher last saw it.
    pub nodedata: watch::Receiver<Arc<Snapshot>>,
    /// Asks the watcher to look at once (SIGHUP).
    pub reload: ReloadHandle,
    /// Our own node (read at start: a change of it needs a restart).
    pub node: Arc<NodeData>,
    /// The TLS acceptor of new connections: rebuilt when the server's
    /// certificate or key file changes.
    acceptor: RwLock<TlsAcceptor>,
    pub broker: Arc<SharedConnection>,
    /// One confirming channel for every connection's publishes.
    pub publisher: Arc<SharedPublisher>,
    pub buffer: usize,
    pub internal: Internal,
    pub timing: Timing,
    per_peer: Mutex<HashMap<String, usize>>,
}

/// What a server process is started with (as [`crate::client::ClientSettings`]
/// for a client).
pub struct ServerSettings {
    pub node: NodeSettings,
    pub cert: CertArgs,
    /// SENDs each connection holds unconfirmed at most.
    pub buffer: usize,
}

impl ServerContext {
    /// `/readyz`: ready while RabbitMQ can be reached and does not block
    /// publishing (a memory or disk alarm); the same state feeds the
    /// `swpt_broker_blocked` gauge.
    pub fn readiness(&self) -> crate::http::Readiness {
        let (broker, publisher) = (self.broker.clone(), self.publisher.clone());
        let p = publisher.clone();
        crate::metrics::get().watch_blocked(Box::new(move || p.blocked()));
        Arc::new(move || {
            if let Some(reason) = publisher.blocked() {
                return Err(format!("RabbitMQ blocked publishing: {reason}"));
            }
            match broker.is_up() {
                true => Ok(()),
                false => Err("no connection to RabbitMQ".to_string()),
            }
        })
    }

    /// Reads the node database (and starts watching it), the certificate
    /// and key and every peer's root, and prepares the TLS acceptor and the
    /// broker connection (opened lazily).
    pub async fn new(settings: ServerSettings) -> anyhow::Result<Arc<ServerContext>> {
        let ServerSettings { node, cert, buffer } = settings;
        let broker = SharedConnection::new(node.broker());
        let NodeSettings {
            nodedata_url,
            internal,
            ..
        } = node;
        let (cert, key) = (cert.server_cert.as_path(), cert.server_key.as_path());
        let root = NodeDatabase::open(&nodedata_url)?.root().to_path_buf();
        let files = vec![cert.to_path_buf(), key.to_path_buf()];
        let (nodedata, reload) = Watcher::start(root, files, internal.nodedata_poll()).await?;
        crate::metrics::watch_certificates(nodedata.clone(), Some(cert.to_path_buf()));
        crate::metrics::get().server_started();
        let snapshot = nodedata.borrow().clone();
        let roots = PeerRoots::new();
        roots.update(&snapshot);
        tracing::info!("loaded the roots of {} peers", snapshot.peers.len());
        let acceptor = acceptor(cert, key, &snapshot.node, &roots)?;
        let ctx = Arc::new(ServerContext {
            acceptor: RwLock::new(acceptor),
            publisher: Arc::new(SharedPublisher::new(
                broker.clone(),
                internal.rmq_confirmation_timeout(),
            )),
            broker,
            timing: internal.timing(),
            node: snapshot.node.clone(),
            nodedata: nodedata.clone(),
            reload,
            buffer: buffer.max(1),
            internal,
            per_peer: Mutex::new(HashMap::new()),
        });
        tokio::spawn(follow(
            ctx.clone(),
            nodedata,
            roots,
            cert.to_path_buf(),
            key.to_path_buf(),
        ));
        Ok(ctx)
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes one of `peer`'s connection slots (SPEC's
    /// `APP_MAX_CONNECTIONS_PER_PEER`); `None` when all are taken.
    fn take_slot(self: &Arc<Self>, peer: &str) -> Option<PeerSlot> {
        let mut map = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(peer.to_string()).or_insert(0);
        if *n >= self.internal.app_max_connections_per_peer {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            ctx: self.clone(),
            peer: peer.to_string(),
        })
    }
}

/// The TLS acceptor for our certificate and key.
fn acceptor(cert: &Path, key: &Path, node: &NodeData, roots: &Arc<PeerRoots>) -> anyhow::Result<TlsAcceptor> {
    let certs = crate::tls::load_certs(cert)?;
    let key = crate::tls::load_key(key)?;
    let config = server_config(certs, key, node.root_cert.clone(), roots.clone())?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Follows the node database: new peer roots for the handshakes, and a
/// new acceptor when the certificate or key file changed (open
/// connections go on with the old one). The sessions follow it too, for
/// their own peer.
async fn follow(
    ctx: Arc<ServerContext>,
    mut nodedata: watch::Receiver<Arc<Snapshot>>,
    roots: Arc<PeerRoots>,
    cert: PathBuf,
    key: PathBuf,
) {
    let mut files_generation = nodedata.borrow().files_generation;
    while nodedata.changed().await.is_ok() {
        let snapshot = nodedata.borrow_and_update().clone();
        roots.update(&snapshot);
        if snapshot.files_generation != files_generation {
            files_generation = snapshot.files_generation;
            // A half-written file fails here: the next change retries.
            match acceptor(&cert, &key, &ctx.node, &roots) {
                Ok(a) => {
                    *ctx.acceptor.write().unwrap_or_else(|e| e.into_inner()) = a;
                    tracing::info!("new connections use the new server certificate");
                }
                Err(e) => tracing::error!(
                    "the server certificate or key cannot be used: {e:#}; keeping the old one"
                ),
            }
        }
    }
}

/// One of a peer's connection slots; given back on drop.
struct PeerSlot {
    ctx: Arc<ServerContext>,
    peer: String,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.ctx.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// Binds the listening socket with the configured backlog.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Accepts connections until shutdown, then waits for the open ones to
/// close: each session drains on the same shutdown (see [`session`]),
/// within the grace period.
pub async fn serve(listener: TcpListener, ctx: Arc<ServerContext>, mut shutdown: Shutdown) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    tasks.spawn(handler::handle(ctx.clone(), stream, addr, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!("stopped accepting connections; closing {} open ones", tasks.len());
    // Each session drains within `drain_wait`; the grace period bounds all.
    let closed = tokio::time::timeout(ctx.internal.drain_wait(), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if closed.is_err() {
        tracing::warn!("{} connections did not close in time; cutting them", tasks.len());
        tasks.shutdown().await;
    }
    ctx.publisher.close().await;
    ctx.broker.close().await;
}
