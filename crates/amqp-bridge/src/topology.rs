//! The RabbitMQ topology of `configure-queue` (SPEC section 8).

use crate::{BridgeError, SharedConnection};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::ExchangeKind;
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
    })
}

fn kind(k: &str) -> ExchangeKind {
    match k {
        "topic" => ExchangeKind::Topic,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        "direct" => ExchangeKind::Direct,
        other => ExchangeKind::Custom(other.to_string()),
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declares the topology (idempotent).
pub async fn declare(conn: &SharedConnection, t: &Topology) -> Result<(), TopologyError> {
    let ch = conn.channel().await?;
    for (name, k) in &t.extra_exchanges {
        ch.exchange_declare(name, kind(k), durable_exchange(), FieldTable::default())
            .await
            .map_err(BridgeError::from)?;
    }
    let mut args = FieldTable::default();
    if let Some(alt) = t.alternate_exchange {
        args.insert(
            ShortString::from("alternate-exchange"),
            AMQPValue::LongString(LongString::from(alt)),
        );
    }
    ch.exchange_declare(t.main_exchange, kind(t.main_kind), durable_exchange(), args)
        .await
        .map_err(BridgeError::from)?;
    if let Err(e) = ch
        .exchange_declare(
            &t.peer_exchange,
            kind("x-random"),
            durable_exchange(),
            FieldTable::default(),
        )
        .await
    {
        let text = e.to_string();
        if text.contains("x-random")
            || text.contains("COMMAND_INVALID")
            || text.contains("invalid exchange type")
        {
            return Err(TopologyError::NoRandomExchange(text));
        }
        return Err(BridgeError::from(e).into());
    }
    ch.exchange_bind(
        &t.peer_exchange,
        t.main_exchange,
        &t.binding_key,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .map_err(BridgeError::from)?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(&t.dead_letter_queue, durable, FieldTable::default())
        .await
        .map_err(BridgeError::from)?;
    let mut qargs = FieldTable::default();
    qargs.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from("")),
    );
    qargs.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(LongString::from(t.dead_letter_queue.as_str())),
    );
    ch.queue_declare(&t.queue, durable, qargs)
        .await
        .map_err(BridgeError::from)?;
    ch.queue_bind(
        &t.queue,
        &t.peer_exchange,
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(BridgeError::from)?;
    let _ = ch.close(200, "done").await;
    Ok(())
}
