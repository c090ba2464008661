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
//! Unlike the Python drainer, a message is acked only after its reply's
//! publish is confirmed: a crash may duplicate a reply, never lose one.
//! A broker failure ends one session; the drainer starts another after a
//! back-off (see [`crate::backoff`]), as the client does.

use crate::backoff::Backoff;
use crate::config::Internal;
use amqp_bridge::{BridgeError, Consumer, OutMessage, Publisher, SharedConnection};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use nodedata::{NodeData, NodeDatabase, PeerData};
use std::time::Instant;
use tokio::sync::watch;

/// What the drainer needs to run.
pub struct DrainerSettings {
    pub nodedata_url: String,
    pub broker_url: String,
    pub peer_id: String,
    pub queue: String,
    pub client_buffer: usize,
    pub server_buffer: usize,
    pub internal: Internal,
}

type Pending = futures::future::BoxFuture<'static, (u64, Result<(), BridgeError>)>;

/// Runs until shutdown (an empty queue is waited on, not an end). A
/// broker failure ends one session: what it had not acked goes back to the
/// queue, and a new session starts after a back-off.
pub async fn run(s: DrainerSettings, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let db = NodeDatabase::open(&s.nodedata_url, s.internal.peers_cache())?;
    let node = db.node_data().await?;
    let peer = db
        .peer_data(&s.peer_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("peer {} is not in the node database", s.peer_id))?;
    if !peer.is_deactivated() {
        anyhow::bail!("peer {} has not been deactivated", s.peer_id);
    }
    let broker = SharedConnection::new(&s.broker_url, s.internal.rmq_connection_timeout());
    tracing::info!("draining \"{}\" for deactivated peer {}", s.queue, s.peer_id);
    let mut backoff = Backoff::new();
    let mut first = true;
    loop {
        let started = Instant::now();
        match session(&s, &node, &peer, &broker, &mut shutdown).await {
            Ok(()) => break,
            // A missing queue on the first try is a set-up mistake, not an
            // outage (the broker may also come up later: that is retried).
            Err(e @ BridgeError::NoQueue(_)) if first => {
                broker.close().await;
                anyhow::bail!("{e} (run configure-queue first)");
            }
            Err(e) => {
                let wait = backoff.wait(started.elapsed());
                tracing::warn!(
                    "draining stopped: {e}; starting again in {:.1}s",
                    wait.as_secs_f64()
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
        first = false;
    }
    broker.close().await;
    tracing::info!("drainer stopped");
    Ok(())
}

/// One broker session: consumes, replies and acks until shutdown
/// (`Ok`) or a broker failure (`Err`, with the channels closed so that
/// RabbitMQ redelivers what was not acked).
async fn session(
    s: &DrainerSettings,
    node: &NodeData,
    peer: &PeerData,
    broker: &SharedConnection,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), BridgeError> {
    let prefetch = u16::try_from(s.client_buffer).unwrap_or(u16::MAX).max(1);
    let mut consumer = Consumer::new(broker, &s.queue, prefetch).await?;
    let publisher = match Publisher::new(broker, s.internal.rmq_confirmation_timeout()).await {
        Ok(p) => p,
        Err(e) => {
            consumer.close().await;
            return Err(e);
        }
    };
    let exchange = node.node_type.in_exchange();
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let window = s.server_buffer.max(1);
    let failure = loop {
        tokio::select! {
            _ = shutdown.changed() => break None,
            Some(first) = pending.next(), if !pending.is_empty() => {
                // Ack everything confirmed so far, up to a failure if any.
                let (mut next, mut last, mut failed) = (Some(first), None, None);
                while let Some((tag, result)) = next.take() {
                    match result {
                        Ok(()) => last = Some(tag),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                    next = pending.next().now_or_never().flatten();
                }
                if let Some(tag) = last {
                    consumer.ack_up_to(tag);
                }
                if failed.is_some() {
                    break failed;
                }
            }
            delivery = consumer.next(), if pending.len() < window => {
                let m = match delivery {
                    Ok(m) => m,
                    Err(e) => break Some(e),
                };
                let tag = m.delivery_tag;
                let msg = match smp_json::client_process(node, peer, &m.msg_type, &m.content_type, &m.body) {
                    Ok(msg) => msg,
                    Err(e) => {
                        tracing::error!(delivery_tag = tag, "rejecting a message to {}.XQ: {e}", s.queue);
                        consumer.reject(tag);
                        continue;
                    }
                };
                let reply = smp_json::drainer_reply(&msg, smp_json::Timestamp::now());
                let Some(reply) = reply else {
                    pending.push_back(Box::pin(async move { (tag, Ok(())) }));
                    continue;
                };
                let publication = match smp_json::publication_from(node, peer, reply, smp_json::now_micros()) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(delivery_tag = tag, "cannot build a reply, rejecting to {}.XQ: {e}", s.queue);
                        consumer.reject(tag);
                        continue;
                    }
                };
                let confirm = publisher.publish(&OutMessage {
                    exchange,
                    routing_key: &publication.routing_key,
                    msg_type: publication.msg_type.as_str(),
                    body: &publication.body,
                    headers: &publication.headers,
                });
                pending.push_back(Box::pin(confirm.map(move |r| (tag, r))));
            }
        }
    };
    if failure.is_none() {
        // Shutdown: finish what is under way, acking what is confirmed.
        while let Some((tag, result)) = pending.next().await {
            if result.is_ok() {
                consumer.ack_up_to(tag);
            }
        }
    }
    consumer.close().await;
    publisher.close().await;
    match failure {
        None => Ok(()),
        Some(e) => Err(e),
    }
}
