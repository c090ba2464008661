//! `swpt-doctor`: finds what will break before it breaks (see [`crate::doctor`]).

use crate::config::{CertArgs, CommonArgs, Internal};
use crate::doctor::{check_broker, check_nodedata};
use clap::Parser;
use std::ffi::OsString;

/// Checks the node database, the server certificate and key, and with
/// --broker RabbitMQ; changes nothing. One line per finding, with its
/// severity, the file at fault and what to do. Exit status: 0 clean, 1 an
/// error was found (or a warning, with --strict), 2 a bad command line or
/// setting, 3 the node database cannot be read at all.
#[derive(Parser, Debug)]
#[command(name = "swpt-doctor", version = crate::VERSION)]
struct Cli {
    #[command(flatten)]
    cert: CertArgs,
    /// Also check RabbitMQ: reachable, our *_in exchange, every active
    /// peer's exchange (passive declares only).
    #[arg(long)]
    broker: bool,
    /// Output: text, or json (one object per finding).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
    /// Warnings fail too.
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    common: CommonArgs,
}

const UNREADABLE_EXIT: i32 = 3;

/// Runs the program with its command line (`args[0]` its name).
pub fn main(args: Vec<OsString>) -> ! {
    let cli = Cli::parse_from(args);
    crate::logging::init("error", "text");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let code = match runtime {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("Error: cannot start the tokio runtime: {e}");
            1
        }
    };
    std::process::exit(code)
}

async fn run(cli: Cli) -> i32 {
    let internal = match Internal::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("Error: {e:#}");
            return crate::exit::CONFIG_EXIT;
        }
    };
    let db = match nodedata::NodeDatabase::open(&cli.common.nodedata_url) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("Error: {e}");
            return UNREADABLE_EXIT;
        }
    };
    let (mut found, node, peers) =
        match check_nodedata(&db, &cli.cert.server_cert, &cli.cert.server_key).await {
            Ok(checked) => checked,
            Err(e) => {
                eprintln!("Error: {e}");
                return UNREADABLE_EXIT;
            }
        };
    if cli.broker {
        let broker = internal.broker(&cli.common.broker_url);
        found.0.extend(check_broker(broker, &node, &peers).await.0);
    }
    let out = if cli.format == "json" {
        found.json()
    } else {
        found.text()
    };
    print!("{out}");
    let failed = found.errors() > 0 || (cli.strict && found.warnings() > 0);
    i32::from(failed)
}
