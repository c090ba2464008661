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

use crate::config::Internal;
use crate::session::Timing;
use crate::shutdown::Shutdown;
use crate::tls::{server_config, PeerRoots};
use amqp_bridge::{SharedConnection, SharedPublisher};
use nodedata::{NodeData, NodeDatabase};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

/// Everything the connections of one server share.
pub struct ServerContext {
    pub db: NodeDatabase,
    pub node: Arc<NodeData>,
    pub acceptor: TlsAcceptor,
    pub broker: Arc<SharedConnection>,
    /// One confirming channel for every connection's publishes.
    pub publisher: SharedPublisher,
    pub buffer: usize,
    pub internal: Internal,
    pub timing: Timing,
    per_peer: Mutex<HashMap<String, usize>>,
}

impl ServerContext {
    /// Reads the node data, the certificates and every peer's root, and
    /// prepares the TLS acceptor and the broker connection (opened lazily).
    pub async fn new(
        nodedata_url: &str,
        broker_url: &str,
        cert: &Path,
        key: &Path,
        buffer: usize,
        internal: Internal,
    ) -> anyhow::Result<Arc<ServerContext>> {
        let db = NodeDatabase::open(nodedata_url, internal.peers_cache())?;
        let node = db.node_data().await?;
        let certs = crate::tls::load_certs(cert)?;
        let key = crate::tls::load_key(key)?;
        let roots = PeerRoots::new();
        let n = roots.reload(&db).await?;
        tracing::info!("loaded the roots of {n} peers");
        tokio::spawn(
            roots
                .clone()
                .keep_fresh(db.clone(), internal.peers_check().min(Duration::from_secs(600))),
        );
        let config = server_config(certs, key, node.root_cert.clone(), roots)?;
        let broker = SharedConnection::new(internal.broker(broker_url));
        Ok(Arc::new(ServerContext {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            publisher: SharedPublisher::new(broker.clone(), internal.rmq_confirmation_timeout()),
            broker,
            timing: internal.timing(),
            db,
            node,
            buffer: buffer.max(1),
            internal,
            per_peer: Mutex::new(HashMap::new()),
        }))
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
