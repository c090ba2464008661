//! The tests' and the benchmarks' own AMQP client, lapin: independent of
//! the client the gateway is built on, it feeds the broker with messages
//! as a node's services would send them ([`persistent`],
//! [`prepare_transfer`]) and counts what the gateway publishes in sink
//! queues ([`sink_queue`]).

use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::Duration;

/// How long [`connect`] waits for the broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("RabbitMQ at {0} did not answer in 10 s")]
    Silent(String),
    #[error("RabbitMQ at {0}: {1}")]
    Refused(String, lapin::Error),
}

/// A lapin connection on the current tokio runtime.
pub async fn connect(url: &str) -> Result<Connection, ConnectError> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let shown = || amqp_bridge::redact_url(url);
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(ConnectError::Refused(shown(), e)),
        Err(_) => Err(ConnectError::Silent(shown())),
    }
}

/// Declares `exchange` (a durable topic) and a durable `queue` (declared
/// with `args`: its type, say) bound to it with `#`: where what is
/// published to the exchange is counted.
pub async fn sink_queue(ch: &Channel, exchange: &str, queue: &str, args: FieldTable) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange,
        lapin::ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue, durable, args).await?;
    ch.queue_bind(
        queue,
        exchange,
        "#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// A consumer of `queue` that the broker counts as acked on delivery
/// (what arrives is only counted or read).
pub async fn auto_ack_consumer(ch: &Channel, queue: &str) -> lapin::Result<lapin::Consumer> {
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    ch.basic_consume(queue, "", options, FieldTable::default()).await
}

/// The properties a node's services publish an SMP message of `msg_type`
/// with: JSON, persistent.
pub fn persistent(msg_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_type(msg_type.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// The routing key with which the generated CA's services send to the AA
/// `1234abcd` (its debtors subnet).
pub const CA_OUT_KEY: &str = "12.34.ab.cd.00.00.00.01";

/// A PrepareTransfer as the generated CA's services write it (CA subnet
/// 000008), for the AA `1234abcd`, numbered `i`.
pub fn prepare_transfer(i: i64) -> serde_json::Value {
    serde_json::json!({
        "type": "PrepareTransfer",
        "debtor_id": 0x1234abcd00000001_i64,
        "creditor_id": 0x0000080000000001_i64,
        "coordinator_type": "direct",
        "coordinator_id": 0x0000080000000001_i64,
        "coordinator_request_id": i,
        "min_locked_amount": 1000,
        "max_locked_amount": 2000,
        "recipient": "5921983fe0e6eb987aeedca54ad3c708-0000080000000001",
        "final_interest_rate_ts": "2023-01-01T12:00:00+00:00",
        "max_commit_delay": 86400,
        "ts": "2023-01-01T12:00:00.123456+00:00",
    })
}

/// [`prepare_transfer`] as the bytes of a message body.
pub fn prepare_transfer_body(i: i64) -> Vec<u8> {
    prepare_transfer(i).to_string().into_bytes()
}
