//! `swpt-bench`: the gateway's demo and its end-to-end benchmarks, run
//! against a real RabbitMQ and the release binaries (found beside this
//! one).
//!
//! ```text
//!  demo / throughput / latency:
//!    publisher ──> CA `creditors_out` ──> QUEUE ──> swpt-client ──TLS/STOMP──> swpt-server ──> AA `accounts_in` ──> bench.arrived
//!  throughput also measures the broker's own limit, in rounds that
//!  alternate with the gateway's:
//!    bench.src ──> lapin consume + republish with confirms ──> bench.dst_x ──> bench.dst
//!    (republished with the routing key and properties the server would
//!    use, so that RabbitMQ does the same work on both paths)
//!  scale: N in-process STOMP peers ──TLS──> one swpt-server
//! ```
//!
//! Each mode has its module (`demo`, `throughput` with `limit`,
//! `latency`, `scale`, `soak`, `links`, `watch`, `counting`); below them
//! `gateway` sets up the gateway under test, `traffic` feeds and counts
//! through the bench's own AMQP client, and `procfs` reads what the
//! processes use. This file holds only the command line.

mod counting;
mod demo;
mod gateway;
mod lapin_client;
mod latency;
mod limit;
mod links;
mod procfs;
mod scale;
mod soak;
mod throughput;
mod traffic;
mod watch;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Demo and end-to-end benchmarks of the Swaptacular STOMP gateway"
)]
struct Cli {
    /// The RabbitMQ broker (a vhost of its own is best).
    #[arg(
        short = 'u',
        long,
        env = "PROTOCOL_BROKER_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672"
    )]
    broker_url: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A local AA + CA network: messages published on the CA side arrive
    /// on the AA side, with a live count and a summary.
    Demo {
        /// How many messages.
        #[arg(short = 'n', long, default_value_t = 1000)]
        count: u64,
        /// Keep the gateway running after the summary (until Ctrl-C).
        #[arg(long)]
        keep: bool,
    },
    /// Throughput of the gateway against the broker's own limit, CPU time
    /// and peak RSS of the gateway processes.
    Throughput {
        #[arg(short = 'n', long, default_value_t = 20_000)]
        count: u64,
        /// The gateway's buffers and the broker loop's window.
        #[arg(short = 'b', long, default_value_t = 100)]
        buffer: usize,
        /// Rounds (each: the limit loop, then the gateway); the figures
        /// printed are the medians.
        #[arg(short = 'r', long, default_value_t = 3)]
        rounds: usize,
        /// Run the gateway with its HTTP endpoint on (APP_HTTP_PORT) and
        /// read its /metrics every second, to measure what counting costs.
        #[arg(long)]
        metrics: bool,
    },
    /// Publish-to-arrival latency at a low steady rate.
    Latency {
        #[arg(short = 'n', long, default_value_t = 500)]
        count: u64,
        /// Messages per second.
        #[arg(short = 'r', long, default_value_t = 50)]
        rate: u64,
    },
    /// The node-database watcher over a database of many peers: the first
    /// load, a poll with nothing changed, a poll after every peer changed,
    /// and how late a 1 ms ticker on the runtime gets meanwhile.
    /// What counting the metrics costs per message, and one scrape.
    Counting {
        #[arg(short = 'n', long, default_value_t = 1_000_000)]
        count: u64,
    },
    /// One swpt-client --links process: many quiet links (every message
    /// arrives, RSS), then busy links (50 against one).
    Links {
        /// Quiet links.
        #[arg(short = 'l', long, default_value_t = 1000)]
        links: usize,
        /// How long the quiet phase sends, in seconds.
        #[arg(short = 's', long, default_value_t = 60)]
        seconds: u64,
        /// Seconds between two messages of one quiet link.
        #[arg(long, default_value_t = 5)]
        every: u64,
        /// Messages of the busy phase.
        #[arg(short = 'n', long, default_value_t = 20_000)]
        count: u64,
    },
    Watch {
        #[arg(short = 'p', long, default_value_t = 5000)]
        peers: usize,
        /// Polls to average.
        #[arg(short = 'n', long, default_value_t = 10)]
        polls: usize,
    },
    /// A swpt-server with many peers and a swpt-client with as many
    /// links, under a steady load for a long time: RSS, open files and
    /// threads sampled every 10 s, their slopes printed; fails when an RSS
    /// grows more than 1 MiB per 10 minutes after the first minute.
    Soak {
        /// Peers connected to the server, and links of the client.
        #[arg(short = 'p', long, default_value_t = 1000)]
        peers: usize,
        /// How long, in minutes.
        #[arg(short = 'm', long, default_value_t = 10)]
        minutes: u64,
        /// Seconds between two messages of one peer (and of one link).
        #[arg(long, default_value_t = 5)]
        every: u64,
    },
    /// One swpt-server and many peers, each heart-beating and sending a
    /// message every few seconds.
    Scale {
        #[arg(short = 'p', long, default_value_t = 1000)]
        peers: usize,
        /// How long to hold the sessions, in seconds.
        #[arg(short = 's', long, default_value_t = 600)]
        seconds: u64,
        /// Seconds between two messages of one peer.
        #[arg(long, default_value_t = 5)]
        every: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // With APP_CPU_AFFINITY set, the bench (all its threads, and so the
    // broker-limit loop) runs on the same CPUs as the gateway processes it
    // starts: pinned before the runtime starts its threads.
    swpt_gateway::affinity::apply_from_env()?;
    raise_fd_limit();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

/// Raises this process's open-file limit to its hard limit, so that the
/// scale mode's thousands of sessions fit; the gateway processes started
/// from here inherit it.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to
    // a live rlimit value.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                eprintln!(
                    "cannot raise the open-file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Demo { count, keep } => demo::run(&cli.broker_url, count, keep).await,
        Cmd::Throughput {
            count,
            buffer,
            rounds,
            metrics,
        } => throughput::run(&cli.broker_url, count, buffer, rounds, metrics).await,
        Cmd::Latency { count, rate } => latency::run(&cli.broker_url, count, rate).await,
        Cmd::Scale {
            peers,
            seconds,
            every,
        } => scale::run(&cli.broker_url, peers, seconds, every).await,
        Cmd::Soak {
            peers,
            minutes,
            every,
        } => soak::run(&cli.broker_url, peers, minutes, every).await,
        Cmd::Watch { peers, polls } => watch::run(peers, polls).await,
        Cmd::Counting { count } => counting::run(count),
        Cmd::Links {
            links,
            seconds,
            every,
            count,
        } => links::run(&cli.broker_url, links, seconds, every, count).await,
    }
}
