//! `configure-queue PEER QUEUE`: declares the RabbitMQ topology that routes
//! outgoing messages to a peer's queue (SPEC section 8).

use crate::config::{CommonArgs, PeerQueueArgs};
use crate::exit::{config, run_main};
use amqp_bridge::topology::{declare, topology_for};
use amqp_bridge::SharedConnection;
use clap::Parser;
use nodedata::NodeDatabase;
use std::ffi::OsString;

/// Declares the exchanges, bindings and queues (QUEUE and QUEUE.XQ) that
/// route messages for one peer; running it twice is harmless.
#[derive(Parser, Debug)]
#[command(name = "configure-queue", version = crate::VERSION)]
struct Cli {
    #[command(flatten)]
    queue: PeerQueueArgs,
    /// The type of QUEUE and QUEUE.XQ: classic, or quorum (replicated over
    /// the nodes of a RabbitMQ cluster).
    #[arg(long, default_value = "classic", value_parser = ["classic", "quorum"])]
    queue_type: String,
    #[command(flatten)]
    common: CommonArgs,
}

/// Runs the program with its command line (`args[0]` its name).
pub fn main(args: Vec<OsString>) -> ! {
    run_main(run(Cli::parse_from(args)))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.common.start().map_err(config)?;
    let db = NodeDatabase::open(&settings.nodedata_url).map_err(config)?;
    let node = db.node_data().await.map_err(config)?;
    let peer = db
        .peer_data(&cli.queue.peer_node_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("peer {} is not in the node database", cli.queue.peer_node_id))?;
    if peer.is_deactivated() {
        anyhow::bail!("peer {} has been deactivated", cli.queue.peer_node_id);
    }
    let mut topology = topology_for(&node, &peer, &cli.queue.queue_name)?;
    topology.quorum = cli.queue_type == "quorum";
    let broker = SharedConnection::new(settings.broker());
    let declared = declare(&broker, &topology).await;
    broker.close().await;
    declared?;
    tracing::info!(
        "configured {} -> {} (key \"{}\") -> {} (dead letters to {})",
        topology.main_exchange,
        topology.peer_exchange,
        topology.binding_key,
        topology.queue,
        topology.dead_letter_queue
    );
    Ok(())
}
