//! `swpt-drainer PEER QUEUE`: empties the queue of a deactivated peer,
//! answering as the peer would have, so our node frees what it holds.
//!
//! ```text
//!  RabbitMQ QUEUE ──> Consumer ──> smp_json::client_process ──> drainer_reply ──> publication_from ──> Publisher ──> our `*_in`
//!        ^                              │ invalid                  │ no reply                              │
//!        │                              v                          │                                       │
//!        │                       reject → QUEUE.XQ                 │                                       │
//!        └──── ack multiple up to N, in delivery order, once every earlier reply is confirmed <───────────┘
//! ```
//!
//! - [`run`]: the loop of broker sessions, with the client's back-off
//!   between them (see [`crate::backoff`]);
//! - [`Drain`]: one broker session: a consumer, a confirming publisher,
//!   and the replies in flight, acked in delivery order.
//!
//! Unlike the Python drainer, a message is acked only after its reply's
//! publish is confirmed: a crash may duplicate a reply, never lose one.
//! Started for a peer that is not yet deactivated, it waits (following
//! the node database) until it is.

use crate::backoff::Backoff;
use crate::config::NodeSettings;
use crate::http::{UpCount, UpGuard};
use crate::metrics::InFlight;
use crate::publish::out_message;
use crate::shutdown::Shutdown;
use amqp_bridge::{BridgeError, Consumer, InMessage, Publisher, SharedConnection};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use nodedata::{NodeData, NodeDatabase, PeerData, Snapshot, Watcher};
use prometheus::IntCounter;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the drainer needs to run.
pub struct DrainerSettings {
    pub node: NodeSettings,
    pub peer_id: String,
    pub queue: String,
    pub client_buffer: usize,
    pub server_buffer: usize,
    /// Up while consuming (for `/readyz`).
    pub up: UpCount,
}

/// Runs until shutdown (an empty queue is waited on, not an end). A
/// broker failure ends one session: what it had not acked goes back to the
/// queue, and a new session starts after a back-off.
pub async fn run(s: DrainerSettings, mut shutdown: Shutdown) -> anyhow::Result<()> {
    let db = NodeDatabase::open(&s.node.nodedata_url).map_err(crate::exit::config)?;
    let node = db.node_data().await.map_err(crate::exit::config)?;
    let peer = db
        .peer_data(&s.peer_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("peer {} is not in the node database", s.peer_id))?;
    // The node database is followed while waiting for the deactivation,
    // and for the certificate-expiry metrics: one watcher for both.
    let watching = !peer.is_deactivated() || crate::metrics::served();
    let nodedata = match watching {
        true => Some(watch_nodedata(db.root(), &s).await?),
        false => None,
    };
    let peer = match nodedata {
        Some(nodedata) if !peer.is_deactivated() => {
            match deactivated(nodedata, &s.peer_id, &mut shutdown).await {
                Some(peer) => peer,
                None => return Ok(()),
            }
        }
        _ => peer,
    };
    let broker = SharedConnection::new(s.node.broker());
    tracing::info!("draining \"{}\" for deactivated peer {}", s.queue, s.peer_id);
    let mut backoff = Backoff::new();
    let mut first = true;
    let result = loop {
        let started = Instant::now();
        let drained = match Drain::start(&s, &node, &peer, &broker).await {
            Ok(drain) => drain.run(&mut shutdown, s.node.internal.drain_wait()).await,
            Err(e) => Err(e),
        };
        match drained {
            Ok(()) => break Ok(()),
            // A missing queue on the first try is a set-up mistake, not an
            // outage (the broker may also come up later: that is retried).
            Err(e @ BridgeError::NoQueue(_)) if first => {
                break Err(anyhow::anyhow!("{e} (run configure-queue first)"));
            }
            Err(e) => {
                let what = format!("draining stopped: {e}");
                if !backoff.pause(started.elapsed(), &what, &mut shutdown).await {
                    break Ok(());
                }
            }
        }
        first = false;
    };
    broker.close().await;
    tracing::info!("drainer stopped");
    result
}

/// Starts following the node database (SIGHUP polls at once), with the
/// certificate-expiry metrics when they are on.
async fn watch_nodedata(root: &Path, s: &DrainerSettings) -> anyhow::Result<watch::Receiver<Arc<Snapshot>>> {
    let (nodedata, reload) =
        Watcher::start(root.to_path_buf(), vec![], s.node.internal.nodedata_poll()).await?;
    crate::shutdown::reload_on_sighup(reload);
    crate::metrics::watch_certificates(nodedata.clone(), None);
    Ok(nodedata)
}

/// Waits (saying so once) until the node database shows the peer
/// deactivated; `None` on shutdown.
async fn deactivated(
    mut nodedata: watch::Receiver<Arc<Snapshot>>,
    peer_id: &str,
    shutdown: &mut Shutdown,
) -> Option<Arc<PeerData>> {
    tracing::warn!("peer {peer_id} has not been deactivated; waiting until it is");
    loop {
        let peer = nodedata.borrow_and_update().peer(peer_id);
        if let Some(peer) = peer.filter(|p| p.is_deactivated()) {
            tracing::info!("peer {peer_id} has been deactivated");
            return Some(peer);
        }
        tokio::select! {
            changed = nodedata.changed() => changed.ok()?,
            _ = shutdown.requested() => return None,
        }
    }
}

/// A reply in flight: the delivery it answers, and its confirmation.
type Pending = futures::future::BoxFuture<'static, (u64, Result<(), BridgeError>)>;

/// One broker session of the drainer.
struct Drain<'a> {
    node: &'a NodeData,
    peer: &'a PeerData,
    consumer: Consumer,
    publisher: Publisher,
    /// Replies in flight, in delivery order (a message without a reply
    /// is in here too, already done, so that acks keep that order).
    pending: FuturesOrdered<Pending>,
    window: usize,
    /// Consumed and replied.
    counters: (IntCounter, IntCounter),
    _up: UpGuard,
}

impl<'a> Drain<'a> {
    async fn start(
        s: &DrainerSettings,
        node: &'a NodeData,
        peer: &'a PeerData,
        broker: &SharedConnection,
    ) -> Result<Drain<'a>, BridgeError> {
        let consumer = Consumer::new(broker, &s.queue, s.client_buffer).await?;
        let publisher = match broker.publisher(s.node.internal.rmq_confirmation_timeout()).await {
            Ok(p) => p,
            Err(e) => {
                consumer.close().await;
                return Err(e);
            }
        };
        Ok(Drain {
            node,
            peer,
            consumer,
            publisher,
            pending: FuturesOrdered::new(),
            window: s.server_buffer.max(1),
            counters: crate::metrics::get().drainer(&s.peer_id, &s.queue),
            _up: s.up.up(),
        })
    }

    /// Consumes, replies and acks until shutdown (`Ok`) or a broker
    /// failure (`Err`); then closes the channels, so that RabbitMQ
    /// redelivers what was not acked.
    async fn run(mut self, shutdown: &mut Shutdown, drain_wait: Duration) -> Result<(), BridgeError> {
        let result = loop {
            let step = tokio::select! {
                _ = shutdown.requested() => break Ok(()),
                Some(first) = self.pending.next(), if !self.pending.is_empty() => self.on_confirmed(first),
                delivery = self.consumer.next(), if self.pending.len() < self.window => {
                    match delivery {
                        Ok(m) => {
                            self.on_delivery(m).await;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            if let Err(e) = step {
                break Err(e);
            }
        };
        if result.is_ok() {
            self.finish(drain_wait).await;
        }
        self.consumer.close().await;
        self.publisher.close().await;
        result
    }

    /// Shutdown: consumes no more; waits (at most `within`) for the
    /// replies in flight and acks those confirmed, in order, up to the
    /// first that is not. What is not acked goes back to the queue with
    /// its reply unpublished or unconfirmed.
    async fn finish(&mut self, within: Duration) {
        let in_flight = self.pending.len();
        let finished = tokio::time::timeout(within, async {
            while let Some(first) = self.pending.next().await {
                if self.on_confirmed(first).is_err() {
                    break;
                }
            }
        })
        .await;
        if finished.is_err() {
            tracing::warn!("replies still unconfirmed at the end of the grace period (of {in_flight})");
        }
    }

    /// Acks everything confirmed so far (`first` and what is ready after
    /// it), up to a failure if any.
    fn on_confirmed(&mut self, first: (u64, Result<(), BridgeError>)) -> Result<(), BridgeError> {
        let (mut next, mut last, mut failed) = (Some(first), None, Ok(()));
        while let Some((tag, confirmed)) = next.take() {
            if let Err(e) = confirmed {
                failed = Err(e);
                break;
            }
            last = Some(tag);
            next = self.pending.next().now_or_never().flatten();
        }
        if let Some(tag) = last {
            self.consumer.ack_up_to(tag);
        }
        failed
    }

    /// One delivery: its reply published (or none), or the message
    /// dead-lettered when it cannot be handled.
    async fn on_delivery(&mut self, m: InMessage) {
        let tag = m.delivery_tag;
        self.counters.0.inc();
        let msg = match smp_json::client_process(self.node, self.peer, &m.msg_type, &m.content_type, &m.body)
        {
            Ok(msg) => msg,
            Err(e) => return self.consumer.dead_letter(tag, &e.to_string()),
        };
        let Some(reply) = smp_json::drainer_reply(&msg, smp_json::Timestamp::now()) else {
            self.pending.push_back(Box::pin(async move { (tag, Ok(())) }));
            return;
        };
        let publication =
            match smp_json::publication_from(self.node, self.peer, reply, smp_json::now_micros()) {
                Ok(p) => p,
                Err(e) => {
                    return self
                        .consumer
                        .dead_letter(tag, &format!("cannot build a reply: {e}"))
                }
            };
        let message = out_message(self.node.node_type.in_exchange(), &publication);
        let in_flight = InFlight::start();
        let replied = self.counters.1.clone();
        let confirm = self.publisher.publish(&message).await;
        self.pending.push_back(Box::pin(confirm.map(move |r| {
            if r.is_ok() {
                in_flight.confirmed();
                replied.inc();
            }
            (tag, r)
        })));
    }
}
