//! The connections a process keeps: the [`SharedConnection`] (one per
//! process, shared by its channels: consumers, checks, the topology, the
//! readiness probe; re-opened on the next of the broker's URLs when it is
//! lost, or when a call got no answer) and the publishers, whose
//! connections go to the same broker node ([`SharedConnection::publisher`],
//! and [`SharedPublisher`] for the many sessions of a server).

use crate::channels::{self, Channel, ChannelConn};
use crate::conn::{self, CLOSE_WAIT};
use crate::endpoint::{try_urls, BrokerSettings};
use crate::publisher::{self, PendingConfirm, Publisher};
use crate::{BridgeError, OutMessage};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Opens a connection to one of the broker's URLs (tried in turn from a
/// random one, each within the settings' timeout) and closes it again:
/// whether the broker takes connections.
pub async fn connect(broker: &BrokerSettings) -> Result<(), BridgeError> {
    let shared = SharedConnection::new(broker.clone());
    let opened = shared.live().await.map(|_| ());
    shared.close().await;
    opened
}

/// The live connection.
struct Live {
    conn: Arc<ChannelConn>,
    reader: JoinHandle<()>,
    /// Which of the broker's URLs it is connected to.
    url_index: usize,
}

/// Numbers the connections opened (see `SharedConnection::up`).
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// One long-lived connection shared by a process, re-opened when it has
/// gone away: the channels of the consumers, the checks and the topology,
/// the readiness probe, and the broker node that the publisher's
/// connection goes to.
pub struct SharedConnection {
    broker: BrokerSettings,
    live: Mutex<Option<Live>>,
    /// The number of the open connection (for readiness probes); 0 when
    /// none is.
    up: Arc<AtomicU64>,
    /// Set by [`SharedConnection::close`]: [`SharedConnection::keep_open`]
    /// stops.
    closed: AtomicBool,
}

impl SharedConnection {
    pub fn new(broker: BrokerSettings) -> std::sync::Arc<SharedConnection> {
        std::sync::Arc::new(SharedConnection {
            broker,
            live: Mutex::new(None),
            up: Arc::new(AtomicU64::new(0)),
            closed: AtomicBool::new(false),
        })
    }

    /// Whether a connection to the broker is open now (it is opened on
    /// first use, or by [`SharedConnection::keep_open`]).
    pub fn is_up(&self) -> bool {
        if self.up.load(Ordering::Relaxed) == 0 {
            return false;
        }
        match self.live.try_lock() {
            Ok(live) => live.as_ref().is_some_and(|l| l.conn.usable()),
            // Someone is using it or reconnecting: the flag says.
            Err(_) => true,
        }
    }

    /// Keeps a connection open, re-opening it (every `pause` at most)
    /// when it is lost, until [`SharedConnection::close`]; so that
    /// [`SharedConnection::is_up`] tells whether the broker can be reached
    /// before anything is published.
    pub fn keep_open(self: &Arc<Self>, pause: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            while !this.closed.load(Ordering::Relaxed) {
                match this.live().await {
                    Ok((conn, _)) => conn.gone().await,
                    Err(e) => {
                        tracing::warn!("{e}");
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        });
    }

    /// The live connection and the index of its URL, opened (again) if
    /// needed: the first time to a random one of the broker's URLs, after
    /// a loss to the next one.
    async fn live(&self) -> Result<(Arc<ChannelConn>, usize), BridgeError> {
        let mut guard = self.live.lock().await;
        let start = match guard.as_ref() {
            Some(l) if l.conn.usable() => return Ok((l.conn.clone(), l.url_index)),
            Some(l) => {
                tracing::warn!("the RabbitMQ connection was lost; reconnecting");
                l.url_index + 1
            }
            None => rand::random::<usize>(),
        };
        let broker = &self.broker;
        let (opened, url_index) =
            try_urls(broker, start, |url| async move { conn::open(&url, broker).await }).await?;
        let (conn, reader) = channels::start(opened, broker.timeout);
        let number = CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1;
        self.up.store(number, Ordering::Relaxed);
        let (watched, up) = (conn.clone(), self.up.clone());
        tokio::spawn(async move {
            watched.gone().await;
            // Down, unless a newer connection is up already.
            let _ = up.compare_exchange(number, 0, Ordering::Relaxed, Ordering::Relaxed);
        });
        *guard = Some(Live {
            conn: conn.clone(),
            reader,
            url_index,
        });
        Ok((conn, url_index))
    }

    /// A new channel on the live connection.
    pub(crate) async fn channel(&self) -> Result<Channel, BridgeError> {
        let (conn, _) = self.live().await?;
        match Channel::open(&conn).await {
            Ok(channel) => Ok(channel),
            Err(e) if !conn.usable() && !matches!(e.error, BridgeError::NoAnswer(_)) => {
                // The connection died just now: one more try.
                tracing::warn!("opening a RabbitMQ channel failed ({}); reconnecting", e.error);
                let (conn, _) = self.live().await?;
                Channel::open(&conn).await.map_err(|e| e.error)
            }
            Err(e) => Err(e.error),
        }
    }

    /// A confirmed publisher on a connection of its own, to the broker
    /// node the shared connection is on.
    pub async fn publisher(&self, confirm_timeout: Duration) -> Result<Publisher, BridgeError> {
        let (_, start) = self.live().await?;
        let broker = &self.broker;
        let (opened, _) =
            try_urls(broker, start, |url| async move { conn::open(&url, broker).await }).await?;
        Publisher::start(opened, confirm_timeout, broker.timeout).await
    }

    /// Closes the connection cleanly, if open: its channels (what
    /// consumers did not ack goes back to their queues), then the
    /// connection, each waiting a few seconds at most for RabbitMQ.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.up.store(0, Ordering::Relaxed);
        if let Some(mut l) = self.live.lock().await.take() {
            if l.conn.usable() {
                channels::close_all(&l.conn).await;
            }
            l.conn.close("the connection was closed");
            if tokio::time::timeout(CLOSE_WAIT * 2, &mut l.reader).await.is_err() {
                l.reader.abort();
            }
        }
    }
}

/// One publisher (one connection, one confirming channel) for many
/// publishing tasks (a server's sessions): their publishes share the
/// outbox, so a turn in which many sessions publish still ends in one
/// write, and the broker keeps one connection, not one per session.
/// Opened at the first publish, and again after a failure (never while
/// RabbitMQ merely blocks the one there is).
pub struct SharedPublisher {
    conn: Arc<SharedConnection>,
    confirm_timeout: Duration,
    publisher: Mutex<Option<Publisher>>,
    /// The current publisher's flow-control state, for probes.
    status: std::sync::Mutex<Option<publisher::Status>>,
}

impl SharedPublisher {
    pub fn new(conn: Arc<SharedConnection>, confirm_timeout: Duration) -> SharedPublisher {
        SharedPublisher {
            conn,
            confirm_timeout,
            publisher: Mutex::new(None),
            status: std::sync::Mutex::new(None),
        }
    }

    /// Publishes one message, as [`Publisher::publish`]; fails when no
    /// publishing connection can be opened.
    pub async fn publish(&self, m: &OutMessage<'_>) -> Result<PendingConfirm, BridgeError> {
        let mut slot = self.publisher.lock().await;
        if !slot.as_ref().is_some_and(Publisher::usable) {
            if let Some(old) = slot.take() {
                // The replaced connection's tasks end (close-ok or deadline).
                tokio::spawn(old.close());
            }
            let p = self.conn.publisher(self.confirm_timeout).await?;
            *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.status());
            *slot = Some(p);
        }
        match slot.as_mut() {
            Some(p) => Ok(p.publish(m).await),
            None => Err(BridgeError::ConnectionLost),
        }
    }

    /// Why RabbitMQ blocks publishing now (a memory or disk alarm), if it
    /// does.
    pub fn blocked(&self) -> Option<String> {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.as_ref().and_then(publisher::Status::blocked)
    }

    /// Closes the publishing connection, if open.
    pub async fn close(&self) {
        if let Some(p) = self.publisher.lock().await.take() {
            p.close().await;
        }
    }
}
