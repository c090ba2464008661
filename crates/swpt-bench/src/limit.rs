//! The broker's own limit, measured in rounds that alternate with the
//! gateway's: consume and republish with confirms, each message
//! republished as the AA's server would publish it, so that RabbitMQ does
//! the same work on both paths.
//!
//! ```text
//!  bench.src ──> lapin consume + republish with confirms ──> bench.dst_x ──> bench.dst
//! ```

use crate::gateway::empty_sink;
use crate::lapin_client;
use crate::procfs::Usage;
use crate::traffic::{count_arrivals, fill};
use anyhow::Context;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use swpt_testkit::broker::auto_ack_consumer;
use swpt_testkit::broker::prepare_transfer_body;
use swpt_testkit::generate::Devnet;

const LIMIT_EXCHANGE: &str = "bench.dst_x";
const SOURCE: &str = "bench.src";
const DESTINATION: &str = "bench.dst";

/// One path's figures (the limit loop's here, the gateway's in
/// [`crate::throughput`]): msg/s, CPU µs per message of its own
/// process(es), and of the broker (0 when the broker is not local).
pub struct Figures {
    pub rate: f64,
    pub cpu: f64,
    pub broker: f64,
    /// Context switches per message (of the path's own processes).
    pub switches: f64,
}

/// A republished message's delivery tag and its confirmation.
type Confirmed = (u64, Result<Confirmation, lapin::Error>);

/// The broker's own limit: consume and republish with confirms, each
/// message published as the gateway's server publishes it (`like`: its
/// routing key, headers and properties, mandatory) to a topic exchange
/// bound as `accounts_in` is. Returns messages per second, this process's
/// CPU µs per message (what lapin alone costs for one consume and one
/// confirmed publish, plus draining the destination) and the broker's.
pub async fn broker_limit(
    conn: &Connection,
    broker: Option<u32>,
    like: &smp_json::Publication,
    count: u64,
    window: usize,
) -> anyhow::Result<Figures> {
    let ch = conn.create_channel().await?;
    fill_source(conn, &ch, count, window).await?;
    let src = conn.create_channel().await?;
    src.basic_qos(window.min(u16::MAX as usize) as u16, BasicQosOptions::default())
        .await?;
    let dst = conn.create_channel().await?;
    dst.confirm_select(ConfirmSelectOptions::default()).await?;
    // The destination is drained as the gateway's is (by an auto-ack
    // consumer), so that the broker does the same work on both paths.
    let sink = conn.create_channel().await?;
    let mut drain = auto_ack_consumer(&sink, DESTINATION).await?;
    let drained = tokio::spawn(async move { count_arrivals(&mut drain, count, None).await });
    let before = Usage::of(std::process::id(), broker);
    republish(&src, &dst, like, count).await?;
    let span = drained.await??;
    let used = Usage::of(std::process::id(), broker).since(&before, count);
    for q in [SOURCE, DESTINATION] {
        let _ = ch.queue_delete(q, QueueDeleteOptions::default()).await;
    }
    Ok(Figures {
        rate: span.rate(count),
        cpu: used.cpu,
        broker: used.broker,
        switches: used.switches,
    })
}

/// Declares the loop's queues (the destination bound to its exchange),
/// and fills the source with `count` messages.
async fn fill_source(conn: &Connection, ch: &Channel, count: u64, window: usize) -> anyhow::Result<()> {
    empty_sink(ch, LIMIT_EXCHANGE, DESTINATION).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(SOURCE, durable, FieldTable::default()).await?;
    ch.queue_purge(SOURCE, QueuePurgeOptions::default()).await?;
    let fill_ch = conn.create_channel().await?;
    fill(&fill_ch, "", SOURCE, count, window).await
}

/// Consumes `count` messages of the source and republishes each as `like`
/// to the destination; acks the source as the confirmations come.
async fn republish(
    src: &Channel,
    dst: &Channel,
    like: &smp_json::Publication,
    count: u64,
) -> anyhow::Result<()> {
    let props = lapin_client::properties(&swpt_gateway::publish::out_message(LIMIT_EXCHANGE, like));
    let options = BasicConsumeOptions::default();
    let mut consumer = src
        .basic_consume(SOURCE, "", options, FieldTable::default())
        .await?;
    let mut pending = FuturesOrdered::new();
    let (mut done, mut consumed) = (0, 0);
    while done < count {
        tokio::select! {
            Some(first) = pending.next(), if !pending.is_empty() => {
                done += ack_confirmed(src, first, &mut pending)?;
            }
            d = consumer.next(), if consumed < count => {
                let d = d.context("consumer ended")??;
                consumed += 1;
                pending.push_back(publish_like(dst, &like.routing_key, &props, d));
            }
        }
    }
    Ok(())
}

/// Acks (multiple) up to the last of `first` and the confirmations
/// already in; how many that is. Queued at once, the socket write not
/// awaited (as the gateway's client acks).
fn ack_confirmed(
    src: &Channel,
    first: Confirmed,
    pending: &mut FuturesOrdered<BoxFuture<'static, Confirmed>>,
) -> anyhow::Result<u64> {
    let (mut last, c) = first;
    c?;
    let mut n = 1;
    while let Some(Some((tag, c))) = pending.next().now_or_never() {
        c?;
        last = tag;
        n += 1;
    }
    let src = src.clone();
    let mut ack = Box::pin(async move { src.basic_ack(last, BasicAckOptions { multiple: true }).await });
    match (&mut ack).now_or_never() {
        Some(r) => r?,
        None => {
            tokio::spawn(ack);
        }
    }
    Ok(n)
}

/// Republishes `d` with `key` and `props`, pipelined as the gateway's
/// publisher is: the first poll queues the frames, the socket write is not
/// awaited here.
fn publish_like(
    dst: &Channel,
    key: &str,
    props: &BasicProperties,
    d: lapin::message::Delivery,
) -> BoxFuture<'static, Confirmed> {
    let (dst, key, props, tag) = (dst.clone(), key.to_string(), props.clone(), d.delivery_tag);
    let mut publish: BoxFuture<'static, _> = Box::pin(async move {
        dst.basic_publish(
            LIMIT_EXCHANGE,
            &key,
            lapin_client::PUBLISH_OPTIONS,
            &d.data,
            props,
        )
        .await?
        .await
    });
    let first = (&mut publish).now_or_never();
    Box::pin(async move {
        let confirmed = match first {
            Some(done) => done,
            None => publish.await,
        };
        (tag, confirmed)
    })
}

/// What the AA's server publishes for the bench's messages, by its own
/// rules (`smp_json::server_process`): the limit loop republishes with
/// this routing key and these properties, so that the broker does the same
/// work on both paths. It matters: routing a 24-word sharding key through
/// a topic exchange costs RabbitMQ far more than a short key does.
pub async fn server_publication(net: &Devnet) -> anyhow::Result<smp_json::Publication> {
    let db = nodedata::NodeDatabase::open_dir(&net.aa_dir);
    let node = db.node_data().await?;
    let peer = db
        .peer_data(&net.ca_id)
        .await?
        .context("the generated AA has no CA peer")?;
    // The body as the CA's client sends it.
    let ca = nodedata::NodeDatabase::open_dir(&net.ca_dir);
    let aa_peer = ca
        .peer_data(&net.aa_id)
        .await?
        .context("the generated CA has no AA peer")?;
    let sent = smp_json::client_process(
        &*ca.node_data().await?,
        &aa_peer,
        "PrepareTransfer",
        "application/json",
        &prepare_transfer_body(0),
    )?;
    Ok(smp_json::server_process(
        &node,
        &peer,
        "PrepareTransfer",
        "application/json",
        &sent.to_json(),
        smp_json::now_micros(),
    )?)
}
