//! `swpt-broker-check [URL]`: exits 0 when RabbitMQ accepts a connection
//! (URL, or PROTOCOL_BROKER_URL), 1 otherwise. The container's
//! entrypoint waits with it.

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("swpt-broker-check {}", swpt_gateway::VERSION);
        return std::process::ExitCode::SUCCESS;
    }
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PROTOCOL_BROKER_URL").ok())
        .unwrap_or_else(|| "amqp://guest:guest@localhost:5672".to_string());
    let mut broker = amqp_bridge::BrokerSettings::new(&url, Duration::from_secs(5));
    broker.ca_file = std::env::var_os("APP_BROKER_CA_FILE").map(Into::into);
    match amqp_bridge::connect(&broker).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swpt-broker-check: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
