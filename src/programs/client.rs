//! `swpt-client PEER QUEUE` or `swpt-client --links FILE`: sends queues'
//! messages to peers (see [`crate::client`]).

use crate::client::{self, ClientSettings, LinkId};
use crate::config::CertArgs;
use crate::http::UpCount;
use crate::shutdown::Shutdown;
use clap::Parser;
use std::ffi::OsString;
use std::path::PathBuf;

/// Consumes a RabbitMQ queue of messages for a peer and sends them to the
/// peer's STOMP servers; reconnects by itself. With --links, one process
/// serves many PEER QUEUE pairs.
#[derive(Parser, Debug)]
#[command(
    name = "swpt-client",
    version = crate::VERSION,
    override_usage = "swpt-client [OPTIONS] <PEER_NODE_ID> <QUEUE_NAME>\n       swpt-client [OPTIONS] --links <LINKS>"
)]
struct Cli {
    /// The peer's node ID.
    #[arg(required_unless_present = "links")]
    peer_node_id: Option<String>,
    /// The RabbitMQ queue of messages for that peer.
    #[arg(required_unless_present = "links")]
    queue_name: Option<String>,
    /// A file of links, one "PEER QUEUE" per line (# comments, blank lines
    /// allowed), instead of PEER QUEUE; followed while running: an added
    /// line starts a link, a removed one ends it.
    #[arg(long, env = "SWPT_CLIENT_LINKS", conflicts_with_all = ["peer_node_id", "queue_name"])]
    links: Option<PathBuf>,
    #[command(flatten)]
    cert: CertArgs,
    /// Messages held unconfirmed at most (per link).
    #[arg(short = 'b', long, env = "SWPT_CLIENT_BUFFER", default_value_t = 100)]
    client_buffer: usize,
    #[command(flatten)]
    service: super::ServiceArgs,
}

/// Runs the program with its command line (`args[0]` its name).
pub fn main(args: Vec<OsString>) -> ! {
    super::run_service(args, |cli: Cli, node, http| async move {
        let up = UpCount::default();
        let settings = ClientSettings {
            node,
            cert: cli.cert,
            buffer: cli.client_buffer.max(1),
            up: up.clone(),
        };
        let shutdown = Shutdown::on_signals();
        crate::http::serve(http, up.readiness("no link established"), shutdown.clone());
        let done = match (cli.links, cli.peer_node_id, cli.queue_name) {
            (Some(file), _, _) => client::run_links(settings, file, shutdown).await,
            (None, Some(peer), Some(queue)) => client::run(settings, LinkId { peer, queue }, shutdown).await,
            _ => unreachable!("clap requires PEER QUEUE or --links"),
        };
        done.map_err(client::FatalError::into_anyhow)
    })
}

impl super::Service for Cli {
    fn service(&self) -> &super::ServiceArgs {
        &self.service
    }
}
