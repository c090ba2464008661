//! The RabbitMQ topology of `configure-queue` (SPEC section 8).

use crate::{checked_name, BridgeError, SharedConnection};
use amqprs::channel::{
    Channel, ExchangeBindArguments, ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::{FieldTable, FieldValue};
use nodedata::{NodeData, NodeType, PeerData};

/// What `configure-queue` declares for one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub main_exchange: &'static str,
    pub main_kind: &'static str,
    /// `alternate-exchange` argument of the main exchange, if any.
    pub alternate_exchange: Option<&'static str>,
    /// Other exchanges to declare: (name, kind).
    pub extra_exchanges: Vec<(&'static str, &'static str)>,
    pub peer_exchange: String,
    pub binding_key: String,
    pub queue: String,
    pub dead_letter_queue: String,
    /// Quorum queues (replicated over a cluster's nodes) instead of
    /// classic ones, for QUEUE and QUEUE.XQ alike.
    pub quorum: bool,
}

/// Why the topology cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("invalid pairing: we are {0}, the peer is {1}")]
    Pairing(NodeType, NodeType),
    #[error("the peer's subnet has no binding key: {0}")]
    Subnet(#[from] nodedata::SubnetError),
    #[error(
        "RabbitMQ refused the exchange type \"x-random\": enable the rabbitmq_random_exchange plugin \
         (rabbitmq-plugins enable rabbitmq_random_exchange); {0}"
    )]
    NoRandomExchange(String),
    #[error(
        "the queue exists with another type (classic or quorum): {0}; keep its type (--queue-type), \
         or delete the queue (and QUEUE.XQ) first"
    )]
    QueueType(String),
    #[error(transparent)]
    Broker(#[from] BridgeError),
}

/// The topology for `peer` of `node`, routed to `queue`.
pub fn topology_for(node: &NodeData, peer: &PeerData, queue: &str) -> Result<Topology, TopologyError> {
    let (main_exchange, main_kind, alternate_exchange, extra, binding_key) =
        match (node.node_type, peer.node_type) {
            (NodeType::AA, NodeType::CA) => (
                "to_creditors",
                "topic",
                None,
                vec![],
                peer.creditors_subnet.binding_key()?,
            ),
            (NodeType::AA, NodeType::DA) => (
                "to_debtors",
                "topic",
                None,
                vec![],
                peer.debtors_subnet.binding_key()?,
            ),
            (NodeType::CA, NodeType::AA) => (
                "creditors_out",
                "topic",
                Some("ca.loopback_filter"),
                vec![("ca.loopback_filter", "headers")],
                peer.debtors_subnet.binding_key()?,
            ),
            (NodeType::DA, NodeType::AA) => ("debtors_out", "fanout", None, vec![], String::new()),
            (a, b) => return Err(TopologyError::Pairing(a, b)),
        };
    Ok(Topology {
        main_exchange,
        main_kind,
        alternate_exchange,
        extra_exchanges: extra,
        peer_exchange: format!("{}.x.{}", node.node_type.short(), peer.node_id),
        binding_key,
        queue: queue.to_string(),
        dead_letter_queue: format!("{queue}.XQ"),
        quorum: false,
    })
}

/// A table of string arguments.
fn string_args(args: &[(&str, &str)]) -> Result<FieldTable, BridgeError> {
    let mut table = FieldTable::new();
    for (name, value) in args {
        let v = (*value)
            .try_into()
            .map_err(|_| BridgeError::Name(value.to_string()))?;
        let name = (*name)
            .try_into()
            .map_err(|_| BridgeError::Name(name.to_string()))?;
        table.insert(name, FieldValue::S(v));
    }
    Ok(table)
}

/// Declares a durable exchange.
async fn exchange(
    ch: &Channel,
    name: &str,
    kind: &str,
    arguments: FieldTable,
) -> Result<(), amqprs::error::Error> {
    let mut args = ExchangeDeclareArguments::new(name, kind);
    args.durable = true;
    args.arguments = arguments;
    ch.exchange_declare(args).await
}

/// Declares a durable queue.
async fn queue(ch: &Channel, name: &str, arguments: FieldTable) -> Result<(), BridgeError> {
    let args = QueueDeclareArguments::new(checked_name(name)?)
        .durable(true)
        .arguments(arguments)
        .finish();
    ch.queue_declare(args).await?;
    Ok(())
}

/// Declares the topology (idempotent).
pub async fn declare(conn: &SharedConnection, t: &Topology) -> Result<(), TopologyError> {
    let opened = conn.channel().await?;
    let declared = declare_on(&opened.channel, t).await.map_err(|e| match e {
        // RabbitMQ's reason, when it closed the channel.
        TopologyError::Broker(BridgeError::Amqp(text)) => match opened.reason() {
            Some((_, reason)) if reason.contains("x-random") || reason.contains("invalid exchange type") => {
                TopologyError::NoRandomExchange(reason)
            }
            Some((406, reason)) if reason.contains("x-queue-type") => TopologyError::QueueType(reason),
            Some((_, reason)) => TopologyError::Broker(BridgeError::Amqp(reason)),
            None => TopologyError::Broker(BridgeError::Amqp(text)),
        },
        other => other,
    });
    let _ = opened.channel.close().await;
    declared
}

async fn declare_on(ch: &Channel, t: &Topology) -> Result<(), TopologyError> {
    for (name, k) in &t.extra_exchanges {
        exchange(ch, name, k, FieldTable::new())
            .await
            .map_err(BridgeError::from)?;
    }
    let args = match t.alternate_exchange {
        Some(alt) => string_args(&[("alternate-exchange", alt)])?,
        None => FieldTable::new(),
    };
    exchange(ch, t.main_exchange, t.main_kind, args)
        .await
        .map_err(BridgeError::from)?;
    exchange(ch, checked_name(&t.peer_exchange)?, "x-random", FieldTable::new())
        .await
        .map_err(BridgeError::from)?;
    ch.exchange_bind(ExchangeBindArguments::new(
        &t.peer_exchange,
        t.main_exchange,
        &t.binding_key,
    ))
    .await
    .map_err(BridgeError::from)?;
    // Classic queues are declared without `x-queue-type`, as they always
    // were, so that existing ones stay equivalent.
    let typed = |mut args: Vec<(&str, &str)>| {
        if t.quorum {
            args.push(("x-queue-type", "quorum"));
        }
        string_args(&args)
    };
    queue(ch, &t.dead_letter_queue, typed(vec![])?).await?;
    let dead_letters = typed(vec![
        ("x-dead-letter-exchange", ""),
        ("x-dead-letter-routing-key", &t.dead_letter_queue),
    ])?;
    queue(ch, &t.queue, dead_letters).await?;
    ch.queue_bind(QueueBindArguments::new(&t.queue, &t.peer_exchange, ""))
        .await
        .map_err(BridgeError::from)?;
    Ok(())
}

/// Whether `exchange` exists: `Err(NoExchange)` when it does not (a
/// passive declare: nothing is created).
pub async fn check_exchange(conn: &SharedConnection, exchange: &str) -> Result<(), BridgeError> {
    let opened = conn.channel().await?;
    let mut args = ExchangeDeclareArguments::new(checked_name(exchange)?, "topic");
    args.passive = true;
    let found = match opened.channel.exchange_declare(args).await {
        Ok(()) => Ok(()),
        Err(e) => match opened.reason() {
            Some((404, _)) => Err(BridgeError::NoExchange(exchange.to_string())),
            _ => Err(opened.error(e)),
        },
    };
    let _ = opened.channel.close().await;
    found
}
