//! `swpt-drainer PEER QUEUE`: drains a deactivated peer's queue (see `swpt_gateway::drainer`).

use clap::Parser;
use swpt_gateway::config::{finish, shutdown_signal, CommonArgs};
use swpt_gateway::drainer::{self, DrainerSettings};

/// Consumes the queue of a deactivated peer, acks everything, and
/// publishes the replies the peer would have sent for AccountUpdate,
/// PreparedTransfer and ConfigureAccount.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The deactivated peer's node ID.
    peer_node_id: String,
    /// The RabbitMQ queue to drain.
    queue_name: String,
    /// Messages consumed unacknowledged at most.
    #[arg(short = 'b', long, env = "SWPT_CLIENT_BUFFER", default_value_t = 100)]
    client_buffer: usize,
    /// Replies published unconfirmed at most.
    #[arg(short = 'B', long, env = "SWPT_SERVER_BUFFER", default_value_t = 100)]
    server_buffer: usize,
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() {
    finish(run().await)
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let internal = cli.common.start()?;
    let settings = DrainerSettings {
        nodedata_url: cli.common.nodedata_url,
        broker_url: cli.common.broker_url,
        peer_id: cli.peer_node_id,
        queue: cli.queue_name,
        client_buffer: cli.client_buffer,
        server_buffer: cli.server_buffer,
        internal,
    };
    drainer::run(settings, shutdown_signal()).await
}
