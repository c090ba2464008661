//! `swpt-client PEER QUEUE`: sends a queue's messages to a peer (see `swpt_gateway::client`).

use clap::Parser;
use swpt_gateway::client::{self, ClientSettings};
use swpt_gateway::config::{CertArgs, CommonArgs, PeerQueueArgs};
use swpt_gateway::exit::{config, run_main};
use swpt_gateway::http::{HttpArgs, UpCount};
use swpt_gateway::shutdown::Shutdown;

/// Consumes a RabbitMQ queue of messages for one peer and sends them to
/// the peer's STOMP servers; reconnects by itself.
#[derive(Parser, Debug)]
#[command(version = swpt_gateway::VERSION)]
struct Cli {
    #[command(flatten)]
    link: PeerQueueArgs,
    #[command(flatten)]
    cert: CertArgs,
    /// Messages held unconfirmed at most.
    #[arg(short = 'b', long, env = "SWPT_CLIENT_BUFFER", default_value_t = 100)]
    client_buffer: usize,
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
        let settings = ClientSettings {
            nodedata_url: cli.common.nodedata_url,
            broker_url: cli.common.broker_url,
            server_cert: cli.cert.server_cert,
            server_key: cli.cert.server_key,
            peer_id: cli.link.peer_node_id,
            queue: cli.link.queue_name,
            buffer: cli.client_buffer.max(1),
            internal,
            up: up.clone(),
        };
        let shutdown = Shutdown::on_signals();
        let ready = move || match up.get() {
            0 => Err("no link established".to_string()),
            _ => Ok(()),
        };
        swpt_gateway::http::serve(http, std::sync::Arc::new(ready), shutdown.clone());
        client::run(settings, shutdown)
            .await
            .map_err(client::FatalError::into_anyhow)
    })
}
