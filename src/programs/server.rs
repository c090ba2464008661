//! `swpt-server`: accepts peers' STOMP connections (see [`crate::server`]).

use crate::config::{CertArgs, CommonArgs};
use crate::exit::{config, run_main};
use crate::http::HttpArgs;
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
    common: CommonArgs,
    #[command(flatten)]
    http: HttpArgs,
}

/// Runs the program with its command line (`args[0]` its name).
pub fn main(args: Vec<OsString>) -> ! {
    let cli = Cli::parse_from(args);
    run_main(async {
        let (node, http) = super::open(cli.common, &cli.http).await?;
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
