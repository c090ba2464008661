//! The links mode: one `swpt-client --links FILE` process with many links
//! against one swpt-server.
//!
//! 1. Many quiet links: `links` queues, one message on each every `every`
//!    seconds for `seconds`: every message must arrive, none dropped; the
//!    client's peak RSS and CPU are printed.
//! 2. Busy links: `count` messages spread over 50 links, then the same
//!    over one link: the rates compared.

use crate::gateway::{devnet_on_free_ports, sink_channel, spawn, start_server};
use crate::procfs::proc_stats;
use crate::traffic::count_arrivals;
use anyhow::{bail, Context};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::Channel;
use std::path::Path;
use std::time::{Duration, Instant};
use swpt_testkit::broker::auto_ack_consumer;
use swpt_testkit::broker::{persistent, prepare_transfer_body};
use swpt_testkit::generate::Devnet;
use swpt_testkit::process::Proc;

const ARRIVED: &str = "bench.links.arrived";

pub(crate) fn queue(i: usize) -> String {
    format!("bench.links.{i}")
}

/// Declares `n` durable queues for the AA peer (filled by the bench
/// through the default exchange) and writes the links file naming them.
pub(crate) async fn queues(ch: &Channel, n: usize, file: &Path) -> anyhow::Result<()> {
    let mut lines = String::new();
    for i in 0..n {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(&queue(i), options, FieldTable::default())
            .await?;
        ch.queue_purge(&queue(i), QueuePurgeOptions::default()).await?;
        lines.push_str(&format!("1234abcd {}\n", queue(i)));
    }
    std::fs::write(file, lines).with_context(|| file.display().to_string())?;
    Ok(())
}

/// Publishes `per_queue` messages to each of the first `n` queues, with
/// confirms; message ids start at `first`.
pub(crate) async fn fill(ch: &Channel, n: usize, per_queue: u64, first: u64) -> anyhow::Result<()> {
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut id = first;
    for _ in 0..per_queue {
        for i in 0..n {
            let props = persistent("PrepareTransfer");
            let c = ch
                .basic_publish(
                    "",
                    &queue(i),
                    BasicPublishOptions::default(),
                    &prepare_transfer_body(id as i64),
                    props,
                )
                .await?;
            pending.push(c);
            id += 1;
            if pending.len() >= 500 {
                pending.next().await.transpose()?;
            }
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}

fn client(net: &Devnet, broker: &str, file: &Path) -> anyhow::Result<Proc> {
    let file = file.to_str().context("links file path")?.to_string();
    spawn("swpt-client", &["--links", &file], &net.ca_dir, broker, &[])
}

pub async fn run(broker: &str, links: usize, seconds: u64, every: u64, count: u64) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("swpt-links-{}", std::process::id()));
    let (net, port) = devnet_on_free_ports(&dir, 0)?;
    let (conn, ch) = sink_channel(broker, ARRIVED).await?;
    let connections = [("APP_MAX_CONNECTIONS_PER_PEER", (links + 60).to_string())];
    let _server = start_server(&net, port, broker, &connections).await?;
    let result = quiet(&net, broker, &ch, links, seconds, every).await;
    let result = match result {
        Ok(()) => busy(&net, broker, &ch, count).await,
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&dir);
    drop(_server);
    delete_queues(&conn, links.max(50)).await;
    result
}

/// Deletes the bench's queues: a broker left with a thousand durable
/// queues takes long to restart (they are all recovered at boot).
pub(crate) async fn delete_queues(conn: &lapin::Connection, n: usize) {
    let Ok(ch) = conn.create_channel().await else {
        eprintln!("cannot delete the bench's queues bench.links.*: no channel");
        return;
    };
    for name in (0..n).map(queue).chain([ARRIVED.to_string()]) {
        let _ = ch.queue_delete(&name, QueueDeleteOptions::default()).await;
    }
}

/// Phase 1: many quiet links.
async fn quiet(
    net: &Devnet,
    broker: &str,
    ch: &Channel,
    links: usize,
    seconds: u64,
    every: u64,
) -> anyhow::Result<()> {
    let file = net.ca_dir.join("links");
    queues(ch, links, &file).await?;
    let mut consumer = auto_ack_consumer(ch, ARRIVED).await?;
    let started = Instant::now();
    let client = client(net, broker, &file)?;
    let rounds = (seconds / every.max(1)).max(1);
    eprintln!("{links} links, a message on each every {every} s, {rounds} rounds");
    let mut sent = 0;
    for round in 0..rounds {
        fill(ch, links, 1, sent).await?;
        sent += links as u64;
        let next = started + Duration::from_secs((round + 1) * every);
        tokio::time::sleep_until(next.into()).await;
    }
    let span = count_arrivals(&mut consumer, sent, None).await?;
    let (cpu, rss) = proc_stats(client.0.id());
    let extra = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await;
    if let Ok(Some(_)) = extra {
        bail!("more messages arrived than were sent");
    }
    println!(
        "quiet links: {links} links in one swpt-client, {sent} messages sent, {sent} arrived, none dropped"
    );
    println!(
        "  client peak RSS {:.1} MiB ({:.1} KiB per link), CPU {cpu:.2} s over {:.0} s",
        rss as f64 / 1024.0,
        rss as f64 / links as f64,
        span.last.duration_since(started).as_secs_f64()
    );
    let _ = ch
        .basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default())
        .await;
    drop(client);
    Ok(())
}

/// Phase 2: `count` messages over 50 busy links, then over one.
async fn busy(net: &Devnet, broker: &str, ch: &Channel, count: u64) -> anyhow::Result<()> {
    let mut rates = Vec::new();
    for links in [50usize, 1] {
        let file = net.ca_dir.join(format!("links-{links}"));
        queues(ch, links, &file).await?;
        let per_queue = count / links as u64;
        fill(ch, links, per_queue, 0).await?;
        let total = per_queue * links as u64;
        let mut consumer = auto_ack_consumer(ch, ARRIVED).await?;
        let started = Instant::now();
        let client = client(net, broker, &file)?;
        count_arrivals(&mut consumer, total, None).await?;
        let seconds = started.elapsed().as_secs_f64();
        let (cpu, rss) = proc_stats(client.0.id());
        println!(
            "busy: {total} messages over {links} links: {:.0} msg/s (from the client's start), client CPU {:.1} us/msg, peak RSS {:.1} MiB",
            total as f64 / seconds,
            cpu * 1e6 / total as f64,
            rss as f64 / 1024.0
        );
        rates.push(total as f64 / seconds);
        let _ = ch
            .basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default())
            .await;
        drop(client);
    }
    println!("ratio 50 links / 1 link: {:.2}", rates[0] / rates[1]);
    Ok(())
}
