//! The soak mode: a swpt-server and a swpt-client under a steady load for
//! a long time, watched for leaks.
//!
//! The server (an AA) holds `peers` STOMP sessions of creditors agents
//! (held in this process, as in the scale mode), each sending a message
//! every `every` seconds; one `swpt-client --links` process of the CA
//! serves `peers` links to that server, each queue fed a message every
//! `every` seconds. Both serve their metrics (scraped every 10 s, so the
//! series are part of what is soaked). Every 10 s the RSS, open files and
//! threads of both are sampled; the slope of each after the first minute
//! (least squares, per hour) is printed, and the run fails when the RSS
//! of either grows more than 1 MiB per 10 minutes.

use crate::gateway::{devnet_on_free_ports, scrape_once, sink_channel, spawn, start_server};
use crate::procfs::rss_kib;
use crate::scale::{start_peers, Counters};
use anyhow::bail;
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swpt_testkit::broker::auto_ack_consumer;
use swpt_testkit::process::free_port;

const ARRIVED: &str = "bench.soak.arrived";
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The RSS growth allowed, per 10 minutes (KiB).
const RSS_LIMIT_KIB_PER_10_MIN: f64 = 1024.0;

/// One sample of a process: seconds since the start, RSS (KiB), open
/// files, threads.
#[derive(Clone, Copy)]
struct Sample {
    at: f64,
    rss: f64,
    fds: f64,
    threads: f64,
}

fn sample(pid: u32, at: f64) -> Sample {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    Sample {
        at,
        rss: rss_kib(pid) as f64,
        fds: fds as f64,
        threads: threads as f64,
    }
}

/// The least-squares slope of `(x, y)` points, per unit of x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// Prints the slopes of one process's samples after the first minute;
/// the RSS slope per 10 minutes, in KiB.
fn report(name: &str, samples: &[Sample]) -> f64 {
    let settled: Vec<Sample> = samples.iter().copied().filter(|s| s.at >= 60.0).collect();
    let per_hour =
        |f: fn(&Sample) -> f64| slope(&settled.iter().map(|s| (s.at, f(s))).collect::<Vec<_>>()) * 3600.0;
    let (first, last) = match (settled.first(), settled.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => return 0.0,
    };
    let rss = per_hour(|s| s.rss);
    println!(
        "{name}: RSS {:.1} -> {:.1} MiB, slope {:+.0} KiB/h ({:+.0} KiB per 10 min); open files {} -> {}, slope {:+.1}/h; threads {} -> {}, slope {:+.1}/h",
        first.rss / 1024.0,
        last.rss / 1024.0,
        rss,
        rss / 6.0,
        first.fds,
        last.fds,
        per_hour(|s| s.fds),
        first.threads,
        last.threads,
        per_hour(|s| s.threads),
    );
    rss / 6.0
}

pub async fn run(broker: &str, peers: usize, minutes: u64, every: u64) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("swpt-soak-{}", std::process::id()));
    eprintln!("generating an AA with {peers} creditors-agent peers");
    let (net, port) = devnet_on_free_ports(&dir, peers)?;
    let (conn, ch) = sink_channel(broker, ARRIVED).await?;
    let file = net.ca_dir.join("links");
    crate::links::queues(&ch, peers, &file).await?;
    let (server_http, client_http) = (free_port()?, free_port()?);
    let env = [
        ("APP_MAX_CONNECTIONS_PER_PEER", (peers + 10).to_string()),
        ("APP_HTTP_PORT", server_http.to_string()),
    ];
    let server = start_server(&net, port, broker, &env).await?;
    let file_arg = file.to_string_lossy().into_owned();
    let client = spawn(
        "swpt-client",
        &["--links", &file_arg],
        &net.ca_dir,
        broker,
        &[("APP_HTTP_PORT", client_http.to_string())],
    )?;
    let result = soak(
        &ch,
        (&net, port, [server_http, client_http]),
        [server.0.id(), client.0.id()],
        peers,
        minutes,
        every,
    )
    .await;
    drop(client);
    drop(server);
    crate::links::delete_queues(&conn, peers).await;
    let _ = ch.queue_delete(ARRIVED, Default::default()).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The soak itself: load, samples, the report and the verdict.
async fn soak(
    ch: &lapin::Channel,
    (net, port, http): (&swpt_testkit::generate::Devnet, u16, [u16; 2]),
    pids: [u32; 2],
    peers: usize,
    minutes: u64,
    every: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(minutes * 60);
    let counters = Arc::new(Counters::default());
    let mut sessions = start_peers(net, port, every, deadline, &counters).await?;
    let arrived = Arc::new(AtomicU64::new(0));
    let mut consumer = auto_ack_consumer(ch, ARRIVED).await?;
    let counted = arrived.clone();
    let drain = tokio::spawn(async move {
        while let Some(Ok(_)) = consumer.next().await {
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    eprintln!("soaking for {minutes} min: {peers} peers and {peers} links, a message each every {every} s");
    let load = Load {
        peers,
        every,
        http,
        pids,
    };
    let (samples, queued) = load.run(ch, started, deadline).await?;
    while sessions.join_next().await.is_some() {}
    let expected = queued + counters.sent.load(Ordering::Relaxed);
    let settle = Instant::now();
    while arrived.load(Ordering::Relaxed) < expected && settle.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drain.abort();
    println!(
        "soak: {minutes} min, {peers} peers sending to the server and {peers} links of the client, a message each every {every} s"
    );
    verdict(&counters, queued, arrived.load(Ordering::Relaxed), &samples)
}

/// The client's side of the load, and the sampling of both processes.
struct Load {
    peers: usize,
    every: u64,
    http: [u16; 2],
    pids: [u32; 2],
}

impl Load {
    /// Until `deadline`: a message into each link's queue every `every`
    /// seconds, both processes scraped and sampled every 10 s. Returns the
    /// samples (server, client) and how many messages were queued.
    async fn run(
        &self,
        ch: &lapin::Channel,
        started: Instant,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<([Vec<Sample>; 2], u64)> {
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        let mut queued = 0u64;
        let mut next_fill = tokio::time::Instant::now();
        let mut next_sample = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline {
            if tokio::time::Instant::now() >= next_fill {
                crate::links::fill(ch, self.peers, 1, queued).await?;
                queued += self.peers as u64;
                next_fill += Duration::from_secs(self.every.max(1));
            }
            if tokio::time::Instant::now() >= next_sample {
                scrape_once(self.http).await;
                let at = started.elapsed().as_secs_f64();
                for (i, pid) in self.pids.iter().enumerate() {
                    samples[i].push(sample(*pid, at));
                }
                next_sample += SAMPLE_EVERY;
            }
            tokio::time::sleep_until(next_fill.min(next_sample).min(deadline)).await;
        }
        Ok((samples, queued))
    }
}

/// Prints what was sent and what arrived, and the slopes; fails when a
/// message is missing or an RSS grows faster than the limit.
fn verdict(c: &Counters, queued: u64, arrived: u64, samples: &[Vec<Sample>; 2]) -> anyhow::Result<()> {
    let expected = queued + c.sent.load(Ordering::Relaxed);
    println!(
        "peers connected {}, dropped {}; sent {} (receipted {}) + queued {}; arrived {}",
        c.connected.load(Ordering::Relaxed),
        c.dropped.load(Ordering::Relaxed),
        c.sent.load(Ordering::Relaxed),
        c.receipted.load(Ordering::Relaxed),
        queued,
        arrived
    );
    let growth = [report("server", &samples[0]), report("client", &samples[1])];
    if arrived < expected {
        bail!("{} messages did not arrive", expected - arrived);
    }
    for (name, g) in ["server", "client"].iter().zip(growth) {
        if g > RSS_LIMIT_KIB_PER_10_MIN {
            bail!("the {name}'s RSS grows {g:.0} KiB per 10 minutes (limit {RSS_LIMIT_KIB_PER_10_MIN:.0})");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn slope_is_least_squares() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), 2.0);
        assert_eq!(slope(&[(0.0, 1.0)]), 0.0);
        let noisy = [(0.0, 0.0), (1.0, 2.0), (2.0, 0.0), (3.0, 2.0)];
        assert!((slope(&noisy) - 0.4).abs() < 1e-9);
    }
}
