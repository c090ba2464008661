//! `swpt-drainer PEER QUEUE`: drains a deactivated peer's queue (see `swpt_gateway::drainer`).

use clap::Parser;
use swpt_gateway::config::{CommonArgs, PeerQueueArgs};
use swpt_gateway::drainer::{self, DrainerSettings};
use swpt_gateway::exit::{config, run_main};
use swpt_gateway::http::{HttpArgs, UpCount};
use swpt_gateway::shutdown::Shutdown;

/// Consumes the queue of a deactivated peer, acks everything, and
/// publishes the replies the peer would have sent for AccountUpdate,
/// PreparedTransfer and ConfigureAccount.
#[derive(Parser, Debug)]
#[command(version = swpt_gateway::VERSION)]
struct Cli {
    #[command(flatten)]
    drain: PeerQueueArgs,
    /// Messages consumed unacknowledged at most.
    #[arg(short = 'b', long, env = "SWPT_CLIENT_BUFFER", default_value_t = 100)]
    client_buffer: usize,
    /// Replies published unconfirmed at most.
    #[arg(short = 'B', long, env = "SWPT_SERVER_BUFFER", default_value_t = 100)]
    server_buffer: usize,
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    http: HttpArgs,
}

fn main() {
    run_main(async {
        let cli = Cli::parse();
        let internal = cli.common.start().map_err(config)?;
        let http = cli.http.bind().await.map_err(config)?;
        let up = UpCount::default();
        let settings = DrainerSettings {
            nodedata_url: cli.common.nodedata_url,
            broker_url: cli.common.broker_url,
            peer_id: cli.drain.peer_node_id,
            queue: cli.drain.queue_name,
            client_buffer: cli.client_buffer,
            server_buffer: cli.server_buffer,
            internal,
            up: up.clone(),
        };
        let shutdown = Shutdown::on_signals();
        swpt_gateway::http::serve(http, up.readiness("not consuming"), shutdown.clone());
        drainer::run(settings, shutdown).await
    })
}
