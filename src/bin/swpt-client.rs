//! `swpt-client PEER QUEUE`: sends a queue's messages to a peer (see `swpt_gateway::client`).

use clap::Parser;
use swpt_gateway::client::{self, ClientSettings};
use swpt_gateway::config::{finish, shutdown_signal, CertArgs, CommonArgs};

/// Consumes a RabbitMQ queue of messages for one peer and sends them to
/// the peer's STOMP servers; reconnects by itself.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// The peer's node ID.
    peer_node_id: String,
    /// The RabbitMQ queue to consume.
    queue_name: String,
    #[command(flatten)]
    cert: CertArgs,
    /// Messages held unconfirmed at most.
    #[arg(short = 'b', long, env = "SWPT_CLIENT_BUFFER", default_value_t = 100)]
    client_buffer: usize,
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    finish(run().await)
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let internal = cli.common.start()?;
    let settings = ClientSettings {
        nodedata_url: cli.common.nodedata_url,
        broker_url: cli.common.broker_url,
        server_cert: cli.cert.server_cert,
        server_key: cli.cert.server_key,
        peer_id: cli.peer_node_id,
        queue: cli.queue_name,
        buffer: cli.client_buffer.max(1),
        internal,
    };
    client::run(settings, shutdown_signal()).await?;
    Ok(())
}
