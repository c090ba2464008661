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

use crate::config::Internal;
use amqp_bridge::{Consumer, OutMessage, Publisher, SharedConnection};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use nodedata::NodeDatabase;
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

type Pending = futures::future::BoxFuture<'static, (u64, Result<(), amqp_bridge::BridgeError>)>;

/// Runs until shutdown (an empty queue is waited on, not an end).
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
    let prefetch = u16::try_from(s.client_buffer).unwrap_or(u16::MAX).max(1);
    let mut consumer = Consumer::new(&broker, &s.queue, prefetch).await?;
    let publisher = Publisher::new(&broker, s.internal.rmq_confirmation_timeout()).await?;
    let exchange = node.node_type.in_exchange();
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    let window = s.server_buffer.max(1);
    tracing::info!("draining \"{}\" for deactivated peer {}", s.queue, s.peer_id);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some((tag, result)) = pending.next(), if !pending.is_empty() => {
                result.map_err(|e| anyhow::anyhow!("publishing a reply failed: {e}"))?;
                let mut last = tag;
                while let Some(Some((tag, result))) = pending.next().now_or_never() {
                    result.map_err(|e| anyhow::anyhow!("publishing a reply failed: {e}"))?;
                    last = tag;
                }
                consumer.ack_up_to(last);
            }
            delivery = consumer.next(), if pending.len() < window => {
                let m = delivery?;
                let tag = m.delivery_tag;
                let msg = match smp_json::client_process(&node, &peer, &m.msg_type, &m.content_type, &m.body) {
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
                let publication = match smp_json::publication_from(&node, &peer, reply, smp_json::now_micros()) {
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
    }
    // Finish what is under way, then stop.
    while let Some((tag, result)) = pending.next().await {
        if result.is_ok() {
            consumer.ack_up_to(tag);
        }
    }
    consumer.close().await;
    publisher.close().await;
    broker.close().await;
    tracing::info!("drainer stopped");
    Ok(())
}
