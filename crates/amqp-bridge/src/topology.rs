//! The RabbitMQ topology of `configure-queue` (SPEC section 8).

use crate::channels::{Channel, Ended};
use crate::shared::SharedConnection;
use crate::wire::codec::{FieldValue, Table};
use crate::wire::{id, Method};
use crate::{checked_name, BridgeError};
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

/// String arguments as a field table's entries.
fn string_args<'a>(args: &[(&'a str, &'a str)]) -> Vec<(&'a str, FieldValue<'a>)> {
    args.iter()
        .map(|(name, value)| (*name, FieldValue::LongStr(value.as_bytes())))
        .collect()
}

/// Declares a durable exchange.
async fn exchange(ch: &mut Channel, name: &str, kind: &str, args: &[(&str, &str)]) -> Result<(), Ended> {
    let args = string_args(args);
    let declare = Method::ExchangeDeclare {
        exchange: name,
        kind,
        passive: false,
        durable: true,
        arguments: Table::Fields(&args),
    };
    ch.call(&declare, id::EXCHANGE_DECLARE_OK).await.map(|_| ())
}

/// Declares a durable queue.
async fn queue(ch: &mut Channel, name: &str, args: &[(&str, &str)]) -> Result<(), Ended> {
    let args = string_args(args);
    let declare = Method::QueueDeclare {
        queue: name,
        passive: false,
        durable: true,
        arguments: Table::Fields(&args),
    };
    ch.call(&declare, id::QUEUE_DECLARE_OK).await.map(|_| ())
}

/// Declares the topology (idempotent).
pub async fn declare(conn: &SharedConnection, t: &Topology) -> Result<(), TopologyError> {
    for name in [&t.peer_exchange, &t.binding_key, &t.queue, &t.dead_letter_queue] {
        checked_name(name)?;
    }
    let mut ch = conn.channel().await?;
    let declared = declare_on(&mut ch, t).await.map_err(|e| {
        // RabbitMQ's reason, when it closed the channel or the connection.
        match e.refused {
            Some((_, text)) if text.contains("x-random") || text.contains("invalid exchange type") => {
                TopologyError::NoRandomExchange(text)
            }
            Some((406, text)) if text.contains("x-queue-type") => TopologyError::QueueType(text),
            Some((_, text)) => TopologyError::Broker(BridgeError::Amqp(text)),
            None => TopologyError::Broker(e.error),
        }
    });
    ch.close().await;
    declared
}

async fn declare_on(ch: &mut Channel, t: &Topology) -> Result<(), Ended> {
    for (name, k) in &t.extra_exchanges {
        exchange(ch, name, k, &[]).await?;
    }
    let alternate: Vec<(&str, &str)> = t
        .alternate_exchange
        .map(|alt| ("alternate-exchange", alt))
        .into_iter()
        .collect();
    exchange(ch, t.main_exchange, t.main_kind, &alternate).await?;
    exchange(ch, &t.peer_exchange, "x-random", &[]).await?;
    let bind = Method::ExchangeBind {
        destination: &t.peer_exchange,
        source: t.main_exchange,
        routing_key: &t.binding_key,
        arguments: Table::EMPTY,
    };
    ch.call(&bind, id::EXCHANGE_BIND_OK).await?;
    // Classic queues are declared without `x-queue-type`, as they always
    // were, so that existing ones stay equivalent.
    let quorum: &[(&str, &str)] = match t.quorum {
        true => &[("x-queue-type", "quorum")],
        false => &[],
    };
    queue(ch, &t.dead_letter_queue, quorum).await?;
    let mut dead_letters = vec![
        ("x-dead-letter-exchange", ""),
        ("x-dead-letter-routing-key", t.dead_letter_queue.as_str()),
    ];
    dead_letters.extend_from_slice(quorum);
    queue(ch, &t.queue, &dead_letters).await?;
    let bind = Method::QueueBind {
        queue: &t.queue,
        exchange: &t.peer_exchange,
        routing_key: "",
        arguments: Table::EMPTY,
    };
    ch.call(&bind, id::QUEUE_BIND_OK).await?;
    Ok(())
}

/// Whether `exchange` exists: `Err(NoExchange)` when it does not (a
/// passive declare: nothing is created).
pub async fn check_exchange(conn: &SharedConnection, exchange: &str) -> Result<(), BridgeError> {
    checked_name(exchange)?;
    let mut ch = conn.channel().await?;
    let check = Method::ExchangeDeclare {
        exchange,
        kind: "topic",
        passive: true,
        durable: false,
        arguments: Table::EMPTY,
    };
    let found = ch.call(&check, id::EXCHANGE_DECLARE_OK).await;
    let found = match found {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(404) => Err(BridgeError::NoExchange(exchange.to_string())),
        Err(e) => Err(e.error),
    };
    ch.close().await;
    found
}
