//! The throughput mode: rounds of the broker's own limit ([`crate::limit`])
//! and of the gateway's path, with their rates, CPU per message (of each
//! process and of the broker), context switches and peak RSS; medians
//! printed.
//!
//! ```text
//!  publisher ──> CA `creditors_out` ──> QUEUE ──> swpt-client ──TLS/STOMP──> swpt-server ──> AA `accounts_in` ──> bench.arrived
//! ```

use crate::gateway::{gateway, start_client, Gateway, ARRIVED};
use crate::limit::{broker_limit, server_publication, Figures};
use crate::procfs::{broker_pid, proc_stats, Usage};
use crate::traffic::{count_arrivals, fill};
use lapin::options::BasicCancelOptions;
use lapin::Channel;
use std::time::Duration;
use swpt_testkit::broker::auto_ack_consumer;
use swpt_testkit::broker::CA_OUT_KEY;

/// How long the client has to stop on SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

/// The gateway's round: its figures (CPU = server + client), each
/// process's CPU µs per message, and the client's peak RSS (KiB).
struct GatewayFigures {
    path: Figures,
    server_cpu: f64,
    client_cpu: f64,
    /// Context switches per message of each process.
    server_switches: f64,
    client_switches: f64,
    client_rss: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The gateway's path once: fills the CA's queue, starts a client and
/// counts the arrivals; the server keeps running between rounds.
async fn gateway_round(
    broker: &str,
    conn: &lapin::Connection,
    ch: &Channel,
    g: &Gateway,
    broker_proc: Option<u32>,
    count: u64,
    buffer: usize,
) -> anyhow::Result<GatewayFigures> {
    let pub_ch = conn.create_channel().await?;
    fill(&pub_ch, "creditors_out", CA_OUT_KEY, count, buffer).await?;
    let _ = pub_ch.close(200, "filled").await;
    let mut consumer = auto_ack_consumer(ch, ARRIVED).await?;
    let before = Usage::of(g.server.0.id(), broker_proc);
    let mut client = start_client(g, broker, buffer)?;
    let span = count_arrivals(&mut consumer, count, None).await?;
    let server = Usage::of(g.server.0.id(), broker_proc).since(&before, count);
    let used = Usage::of(client.0.id(), None).since(&Usage::zero(), count);
    let (client_cpu, client_switches) = (used.cpu, used.switches);
    let (_, client_rss) = proc_stats(client.0.id());
    client.stop(GRACE);
    let _ = ch
        .basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default())
        .await;
    Ok(GatewayFigures {
        path: Figures {
            rate: span.rate(count),
            cpu: server.cpu + client_cpu,
            broker: server.broker,
            switches: server.switches + client_switches,
        },
        server_cpu: server.cpu,
        client_cpu,
        server_switches: server.switches,
        client_switches,
        client_rss,
    })
}

/// Each round's figures, for their medians.
#[derive(Default)]
struct Rounds {
    limits: Vec<f64>,
    rates: Vec<f64>,
    ratios: Vec<f64>,
    loop_cpu: Vec<f64>,
    gateway_cpu: Vec<f64>,
    server_cpu: Vec<f64>,
    client_cpu: Vec<f64>,
    cpu_ratios: Vec<f64>,
    broker_loop: Vec<f64>,
    broker_gw: Vec<f64>,
    loop_switches: Vec<f64>,
    server_switches: Vec<f64>,
    client_switches: Vec<f64>,
    client_rss: u64,
}

impl Rounds {
    fn add(&mut self, limit: &Figures, gw: &GatewayFigures) {
        self.limits.push(limit.rate);
        self.rates.push(gw.path.rate);
        self.ratios.push(gw.path.rate / limit.rate);
        self.loop_cpu.push(limit.cpu);
        self.gateway_cpu.push(gw.path.cpu);
        self.server_cpu.push(gw.server_cpu);
        self.client_cpu.push(gw.client_cpu);
        self.cpu_ratios.push(gw.path.cpu / limit.cpu);
        self.broker_loop.push(limit.broker);
        self.broker_gw.push(gw.path.broker);
        self.loop_switches.push(limit.switches);
        self.server_switches.push(gw.server_switches);
        self.client_switches.push(gw.client_switches);
        self.client_rss = self.client_rss.max(gw.client_rss);
    }

    /// Prints the medians; the broker's CPU when it is local.
    fn print(self, broker_local: bool, server_rss: u64) {
        let (server, client) = (median(self.server_cpu), median(self.client_cpu));
        let limit = median(self.limits);
        println!("broker limit (consume + republish with confirms): {limit:.0} msg/s");
        let rate = median(self.rates);
        println!("gateway (swpt-client -> swpt-server over TLS): {rate:.0} msg/s");
        let ratio = median(self.ratios);
        println!("ratio gateway / broker limit: {ratio:.2} (median of the rounds' ratios)");
        let cpu = median(self.gateway_cpu);
        println!("CPU per message (server + client): {cpu:.1} us (server {server:.1}, client {client:.1})");
        let loop_cpu = median(self.loop_cpu);
        println!("CPU per message of the limit loop (one process): {loop_cpu:.1} us");
        let cpu_ratio = median(self.cpu_ratios);
        println!(
            "CPU ratio gateway (server + client) / limit loop: {cpu_ratio:.2} (median of the rounds' ratios)"
        );
        println!(
            "context switches per message: server {:.2}, client {:.2}, limit loop {:.2}",
            median(self.server_switches),
            median(self.client_switches),
            median(self.loop_switches)
        );
        if broker_local {
            println!(
                "RabbitMQ CPU per message: {:.1} us on the gateway's path, {:.1} us on the loop's",
                median(self.broker_gw),
                median(self.broker_loop)
            );
        }
        println!("peak RSS swpt-server: {:.1} MiB", server_rss as f64 / 1024.0);
        println!("peak RSS swpt-client: {:.1} MiB", self.client_rss as f64 / 1024.0);
    }
}

pub async fn run(
    broker: &str,
    count: u64,
    buffer: usize,
    rounds: usize,
    metrics: bool,
) -> anyhow::Result<()> {
    let conn = swpt_testkit::broker::connect(broker).await?;
    let ch = conn.create_channel().await?;
    let dir = std::env::temp_dir().join(format!("swpt-bench-{}", std::process::id()));
    let g = gateway(broker, &ch, dir.clone(), buffer, metrics).await?;
    let like = server_publication(&g.net).await?;
    let broker_proc = broker_pid();
    let mut all = Rounds::default();
    for round in 1..=rounds.max(1) {
        eprintln!(
            "round {round}: the broker's own limit ({count} messages, window {buffer}), then the gateway"
        );
        let limit = broker_limit(&conn, broker_proc, &like, count, buffer).await?;
        let gw = gateway_round(broker, &conn, &ch, &g, broker_proc, count, buffer).await?;
        eprintln!(
            "round {round}: limit {:.0} msg/s, gateway {:.0} msg/s, ratio {:.2}",
            limit.rate,
            gw.path.rate,
            gw.path.rate / limit.rate
        );
        all.add(&limit, &gw);
    }
    let (_, server_rss) = proc_stats(g.server.0.id());
    println!(
        "{count} messages, buffer {buffer}, medians of {} rounds:",
        all.rates.len()
    );
    all.print(broker_proc.is_some(), server_rss);
    drop(g);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
