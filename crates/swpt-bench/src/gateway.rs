//! The gateway under test: a generated network on free ports, the
//! release binaries started for its nodes (found beside this one), the
//! CA's outgoing queue configured, and the sink where what the AA's server
//! publishes is counted.

use anyhow::{bail, Context};
use lapin::options::{ConfirmSelectOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use std::path::{Path, PathBuf};
use std::time::Duration;
use swpt_testkit::broker;
use swpt_testkit::generate::{write_devnet_on_free_ports, Devnet};
use swpt_testkit::process::{free_port, node_command, wait_port, Proc};

/// Where the gateway's server publishes what arrives (bound to the AA's
/// `accounts_in`).
pub const ARRIVED: &str = "bench.arrived";
/// The CA's queue of messages for the AA.
pub const CA_QUEUE: &str = "bench.to_aa";

/// How long a started server has to listen.
const LISTEN_WITHIN: Duration = Duration::from_secs(10);

/// The release binary `name`, beside this one.
fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no binary directory")?.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the workspace first (cargo build --release)",
            path.display()
        );
    }
    Ok(path)
}

/// Starts the program `name` for the node of `node` with `args` and more
/// environment `env`; it logs only errors, on the bench's stderr, so that
/// the bench's own output holds only its figures.
pub fn spawn(
    name: &str,
    args: &[&str],
    node: &Path,
    broker: &str,
    env: &[(&str, String)],
) -> anyhow::Result<Proc> {
    let mut cmd = node_command(&bin(name)?, node, broker);
    cmd.args(args)
        .stdout(std::io::stderr())
        .env("APP_LOG_LEVEL", "error")
        .envs(env.iter().map(|(k, v)| (k, v)));
    Proc::spawn(&mut cmd).with_context(|| format!("starting {name}"))
}

/// Starts the AA's server of `net` on `port` with more environment `env`,
/// and waits until it listens.
pub async fn start_server(
    net: &Devnet,
    port: u16,
    broker: &str,
    env: &[(&str, String)],
) -> anyhow::Result<Proc> {
    let mut all = vec![("SWPT_SERVER_PORT", port.to_string())];
    all.extend(env.iter().cloned());
    let server = spawn("swpt-server", &[], &net.aa_dir, broker, &all)?;
    wait_port(port, LISTEN_WITHIN).await.context("swpt-server")?;
    Ok(server)
}

/// A test network written into `dir`, its servers on free ports, with
/// `extra_ca_peers` more creditors agents of the AA; and the AA's port.
pub fn devnet_on_free_ports(dir: &Path, extra_ca_peers: usize) -> anyhow::Result<(Devnet, u16)> {
    write_devnet_on_free_ports(dir, extra_ca_peers).with_context(|| format!("generating {}", dir.display()))
}

/// A connection and a confirming channel, with `queue` bound to the AA's
/// `accounts_in` and empty: where what the gateway publishes is counted.
pub async fn sink_channel(broker: &str, queue: &str) -> anyhow::Result<(lapin::Connection, Channel)> {
    let conn = broker::connect(broker).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    empty_sink(&ch, "accounts_in", queue).await?;
    Ok((conn, ch))
}

/// Declares `queue` bound to `exchange` (see [`broker::sink_queue`]), and
/// empties it.
pub async fn empty_sink(ch: &Channel, exchange: &str, queue: &str) -> anyhow::Result<()> {
    broker::sink_queue(ch, exchange, queue, FieldTable::default()).await?;
    ch.queue_purge(queue, QueuePurgeOptions::default()).await?;
    Ok(())
}

/// A generated AA + CA network on free ports, with the CA's outgoing
/// topology configured and the AA's server running.
pub struct Gateway {
    _dir: PathBuf,
    pub net: Devnet,
    pub server: Proc,
    /// The HTTP ports of the server and the client, when metrics are on.
    http: Option<[u16; 2]>,
}

/// Sets up the [`Gateway`] in `dir` (anew), each process holding `buffer`
/// messages unconfirmed at most; with `metrics`, their `/metrics` served
/// and read every second.
pub async fn gateway(
    broker: &str,
    ch: &Channel,
    dir: PathBuf,
    buffer: usize,
    metrics: bool,
) -> anyhow::Result<Gateway> {
    let _ = std::fs::remove_dir_all(&dir);
    let (net, port) = devnet_on_free_ports(&dir, 0)?;
    empty_sink(ch, "accounts_in", ARRIVED).await?;
    configure_queue(&net, broker)?;
    let _ = ch.queue_purge(CA_QUEUE, QueuePurgeOptions::default()).await;
    let http = match metrics {
        true => Some([free_port()?, free_port()?]),
        false => None,
    };
    let mut env = vec![("SWPT_SERVER_BUFFER", buffer.to_string())];
    if let Some([server_http, _]) = http {
        env.push(("APP_HTTP_PORT", server_http.to_string()));
    }
    let server = start_server(&net, port, broker, &env).await?;
    if let Some(ports) = http {
        tokio::spawn(scrape(ports));
    }
    Ok(Gateway {
        _dir: dir,
        net,
        server,
        http,
    })
}

/// `configure-queue 1234abcd CA_QUEUE` for the CA of `net`.
fn configure_queue(net: &Devnet, broker: &str) -> anyhow::Result<()> {
    let out = node_command(&bin("configure-queue")?, &net.ca_dir, broker)
        .args(["1234abcd", CA_QUEUE])
        .output()?;
    if !out.status.success() {
        bail!("configure-queue failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Starts the CA's client of the gateway, holding `buffer` messages
/// unconfirmed at most.
pub fn start_client(g: &Gateway, broker: &str, buffer: usize) -> anyhow::Result<Proc> {
    let mut env = vec![("SWPT_CLIENT_BUFFER", buffer.to_string())];
    if let Some([_, client_http]) = g.http {
        env.push(("APP_HTTP_PORT", client_http.to_string()));
    }
    spawn(
        "swpt-client",
        &["1234abcd", CA_QUEUE],
        &g.net.ca_dir,
        broker,
        &env,
    )
}

/// Reads `/metrics` of the server and the client every second, as a
/// Prometheus with a 1 s scrape interval would (15-60 s is usual).
async fn scrape(ports: [u16; 2]) {
    loop {
        scrape_once(ports).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads `/metrics` of the server and the client once.
pub async fn scrape_once(ports: [u16; 2]) {
    for port in ports {
        swpt_testkit::http::get(port, "/metrics").await;
    }
}
