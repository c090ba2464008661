//! `swpt-broker-check [URL]`: exits 0 when RabbitMQ accepts a connection
//! (URL, or PROTOCOL_BROKER_URL), 1 otherwise. The container's
//! entrypoint waits with it.

use std::ffi::OsString;
use std::time::Duration;

/// Runs the program with its command line (`args[0]` its name).
pub fn main(args: Vec<OsString>) -> ! {
    let arg = args.get(1).map(|a| a.to_string_lossy().into_owned());
    if arg.as_deref() == Some("--version") {
        println!("swpt-broker-check {}", crate::VERSION);
        std::process::exit(0);
    }
    let url = arg
        .or_else(|| std::env::var("PROTOCOL_BROKER_URL").ok())
        .unwrap_or_else(|| "amqp://guest:guest@localhost:5672".to_string());
    let mut broker = amqp_bridge::BrokerSettings::new(&url, Duration::from_secs(5));
    broker.ca_file = std::env::var_os("APP_BROKER_CA_FILE").map(Into::into);
    crate::exit::run_main(async move {
        amqp_bridge::connect(&broker)
            .await
            .map_err(|e| anyhow::anyhow!("swpt-broker-check: {e}"))
    })
}
