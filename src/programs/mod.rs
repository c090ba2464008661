//! The programs: each one's command line and `main`. The thin binaries
//! of `src/bin` call them, and so does `swpt-gateway`, all of them in one
//! binary (the container image's), which runs the program named by the
//! name it was called by (a link named `swpt-server`) or by its first
//! argument.

use std::ffi::OsString;
use std::path::Path;

pub mod broker_check;
pub mod client;
pub mod configure_queue;
pub mod doctor;
pub mod drainer;
pub mod probe;
pub mod server;

/// A program's `main`: its command line in, never returns.
pub type Main = fn(Vec<OsString>) -> !;

/// Every program, by the name it is called by.
pub const PROGRAMS: [(&str, Main); 7] = [
    ("swpt-server", server::main),
    ("swpt-client", client::main),
    ("swpt-drainer", drainer::main),
    ("configure-queue", configure_queue::main),
    ("swpt-doctor", doctor::main),
    ("swpt-broker-check", broker_check::main),
    ("swpt-probe", probe::main),
];

/// The program a name calls, if any.
fn program(name: &OsString) -> Option<Main> {
    let name = Path::new(name).file_name()?.to_str()?;
    PROGRAMS.iter().find(|(n, _)| *n == name).map(|(_, main)| *main)
}

/// `swpt-gateway`'s `main`: runs the program named by `args[0]` (a link),
/// or by `args[1]` (`swpt-gateway swpt-server --help`).
pub fn dispatch(mut args: Vec<OsString>) -> ! {
    if let Some(main) = args.first().and_then(program) {
        main(args)
    }
    if let Some(main) = args.get(1).and_then(program) {
        args.remove(0);
        main(args)
    }
    let names: Vec<&str> = PROGRAMS.iter().map(|(n, _)| *n).collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("--version") => {
            println!("swpt-gateway {}", crate::VERSION);
            std::process::exit(0)
        }
        Some("--help" | "-h") => {
            println!("{}", usage(&names));
            std::process::exit(0)
        }
        Some(other) => eprintln!("swpt-gateway: no program named {other:?}"),
        None => {}
    }
    eprintln!("{}", usage(&names));
    std::process::exit(crate::exit::CONFIG_EXIT)
}

/// The arguments of every program that serves a node (the server, the
/// client, the drainer): the common ones and the HTTP listener's.
#[derive(clap::Args, Debug)]
pub struct ServiceArgs {
    #[command(flatten)]
    common: crate::config::CommonArgs,
    #[command(flatten)]
    http: crate::http::HttpArgs,
}

/// A command line that holds [`ServiceArgs`].
trait Service: clap::Parser {
    fn service(&self) -> &ServiceArgs;
}

/// Runs a program that serves a node, to its end: its command line
/// parsed, logging set up as asked, the node's settings read and the HTTP
/// listener bound when one is asked for; then `serve` with them.
fn run_service<C, F>(
    args: Vec<OsString>,
    serve: impl FnOnce(C, crate::config::NodeSettings, Option<tokio::net::TcpListener>) -> F,
) -> !
where
    C: Service,
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let cli = C::parse_from(args);
    crate::exit::run_main(async move {
        let service = cli.service();
        let node = service.common.start().map_err(crate::exit::config)?;
        let http = service.http.bind().await.map_err(crate::exit::config)?;
        serve(cli, node, http).await
    })
}

fn usage(names: &[&str]) -> String {
    format!(
        "Usage: swpt-gateway PROGRAM [ARGS...], or a link to it named as the program\nPrograms: {}",
        names.join(", ")
    )
}
