//! `swpt-drainer PEER QUEUE`: drains a deactivated peer's queue (see [`crate::drainer`]).

use crate::config::PeerQueueArgs;
use crate::drainer::{self, DrainerSettings};
use crate::http::UpCount;
use crate::shutdown::Shutdown;
use clap::Parser;
use std::ffi::OsString;

/// Consumes the queue of a deactivated peer, acks everything, and
/// publishes the replies the peer would have sent for AccountUpdate,
/// PreparedTransfer and ConfigureAccount.
#[derive(Parser, Debug)]
#[command(name = "swpt-drainer", version = crate::VERSION)]
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
    service: super::ServiceArgs,
}

/// Runs the program with its command line (`args[0]` its name).
pub fn main(args: Vec<OsString>) -> ! {
    super::run_service(args, |cli: Cli, node, http| async move {
        let up = UpCount::default();
        let settings = DrainerSettings {
            node,
            peer_id: cli.drain.peer_node_id,
            queue: cli.drain.queue_name,
            client_buffer: cli.client_buffer,
            server_buffer: cli.server_buffer,
            up: up.clone(),
        };
        let shutdown = Shutdown::on_signals();
        crate::http::serve(http, up.readiness("not consuming"), shutdown.clone());
        drainer::run(settings, shutdown).await
    })
}

impl super::Service for Cli {
    fn service(&self) -> &super::ServiceArgs {
        &self.service
    }
}
