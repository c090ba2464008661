//! The latency mode: messages at a steady rate, straight through the
//! broker and then through the gateway; percentiles of the time from
//! publish to arrival.

use crate::gateway::{empty_sink, gateway, start_client, ARRIVED};
use anyhow::Context;
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, QueueDeleteOptions};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use swpt_testkit::broker::auto_ack_consumer;
use swpt_testkit::broker::{persistent, prepare_transfer_body, CA_OUT_KEY};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sends `count` messages at `rate` to `exchange`/`key` and returns the
/// sorted times until each arrives in `queue`.
async fn timed_run(
    conn: &lapin::Connection,
    exchange: &str,
    key: &str,
    queue: &str,
    count: u64,
    rate: u64,
) -> anyhow::Result<Vec<Duration>> {
    let ch = conn.create_channel().await?;
    let mut consumer = auto_ack_consumer(&ch, queue).await?;
    let pub_ch = conn.create_channel().await?;
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let mut next = 0;
    while (latencies.len() as u64) < count {
        tokio::select! {
            _ = tick.tick(), if next < count => {
                sent.insert(next, Instant::now());
                // No confirms on this channel: the confirmation resolves at once.
                pub_ch
                    .basic_publish(exchange, key, BasicPublishOptions::default(), &prepare_transfer_body(next as i64), persistent("PrepareTransfer"))
                    .await?
                    .await?;
                next += 1;
            }
            d = tokio::time::timeout(Duration::from_secs(30), consumer.next()) => {
                let d = d.context("no arrival for 30 s")?.context("consumer ended")??;
                let v: serde_json::Value = serde_json::from_slice(&d.data)?;
                if let Some(at) = v["coordinator_request_id"].as_u64().and_then(|i| sent.get(&i)) {
                    latencies.push(at.elapsed());
                }
            }
        }
    }
    let _ = ch.close(200, "done").await;
    latencies.sort();
    Ok(latencies)
}

fn print_latencies(label: &str, latencies: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(latencies, 0.50)),
        ms(percentile(latencies, 0.99)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO))
    );
}

pub async fn run(broker: &str, count: u64, rate: u64) -> anyhow::Result<()> {
    let conn = swpt_testkit::broker::connect(broker).await?;
    let ch = conn.create_channel().await?;
    eprintln!(
        "sending {count} messages at {rate} msg/s, straight through the broker, then through the gateway"
    );
    empty_sink(&ch, "bench.direct_x", "bench.direct").await?;
    let direct = timed_run(&conn, "bench.direct_x", "k", "bench.direct", count, rate).await?;
    let _ = ch
        .queue_delete("bench.direct", QueueDeleteOptions::default())
        .await;

    let dir = std::env::temp_dir().join(format!("swpt-bench-lat-{}", std::process::id()));
    let g = gateway(broker, &ch, dir.clone(), 100, false).await?;
    let _client = start_client(&g, broker, 100)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let via = timed_run(&conn, "creditors_out", CA_OUT_KEY, ARRIVED, count, rate).await?;
    println!("latency publish -> arrival at {rate} msg/s over {count} messages:");
    print_latencies("broker alone (one persistent hop)", &direct);
    print_latencies("through the gateway (two hops, TLS, STOMP)", &via);
    drop(g);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
