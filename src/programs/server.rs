//! `swpt-server`: accepts peers' STOMP connections (see [`crate::server`]).

use crate::config::CertArgs;
use crate::exit::config;
use crate::server::{bind, serve, ServerContext, ServerSettings};
use crate::shutdown::Shutdown;
use clap::Parser;
use std::ffi::OsString;

/// Accepts mutually authenticated TLS STOMP connections from the node's
/// peers and publishes the messages they send to the node's RabbitMQ.
#[derive(Parser, Debug)]
#[command(name = "swpt-server", version = crate::VERSION)]
struct Cli {
    /// The port to listen on.
    #[arg(short = 'p', long, env = "SWPT_SERVER_PORT", default_value_t = 1234)]
    server_port: u16,
    #[command(flatten)]
    cert: CertArgs,
    /// Messages each connection may hold unconfirmed.
    #[arg(short = 'b', long, env = "SWPT_SERVER_BUFFER", default_value_t = 100)]
    server_buffer: usize,
    #[command(flatten)]
    service: super::ServiceArgs,
}

/// Runs the program with its command line (`args[0]` its name).
pub fn main(args: Vec<OsString>) -> ! {
    super::run_service(args, |cli: Cli, node, http| async move {
        let backlog = node.internal.app_stomp_server_backlog;
        let settings = ServerSettings {
            node,
            cert: cli.cert,
            buffer: cli.server_buffer,
        };
        let ctx = ServerContext::new(settings).await.map_err(config)?;
        crate::shutdown::reload_on_sighup(ctx.reload.clone());
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], cli.server_port));
        let listener = bind(addr, backlog).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tracing::info!("{} {} listening on {addr}", ctx.node.node_type, ctx.node.node_id);
        let shutdown = Shutdown::on_signals();
        if http.is_some() {
            ctx.broker.keep_open(std::time::Duration::from_secs(2));
        }
        let ready = ctx.readiness();
        crate::http::serve(http, ready, shutdown.clone());
        serve(listener, ctx, shutdown).await;
        Ok(())
    })
}

impl super::Service for Cli {
    fn service(&self) -> &super::ServiceArgs {
        &self.service
    }
}
