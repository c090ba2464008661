//! The processing rules of SPEC section 7: what the server checks and
//! changes before publishing a received message, what the client checks
//! and changes before sending one, the routing keys, the AMQP headers and
//! the drainer's replies (SPEC section 9).

use crate::schema::{Message, MessageType, SchemaError};
use crate::timestamp::Timestamp;
use md5::{Digest, Md5};
use nodedata::{NodeData, NodeType, PeerData};
use serde_json::{Map, Value};
use std::fmt;

/// A processing failure; `Display` is the exact text peers see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessError {
    UnsupportedContentType(String),
    InvalidType(String),
    /// The type and, for logs, what was wrong.
    InvalidMessage(String, SchemaError),
    FutureTimestamp(String),
    InvalidCreditorId(i64),
    InvalidDebtorId(i64),
    InvalidCoordinatorType(String),
    /// `Invalid coordinator ID.` (server side).
    InvalidCoordinatorId,
    /// `Invalid coordinator ID: 0x....` (client side).
    InvalidCoordinatorIdValue(i64),
}

/// An i64 as `0x` + 16 lowercase hex digits of its two's complement.
pub fn as_hex(id: i64) -> String {
    format!("0x{:016x}", id as u64)
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessError::UnsupportedContentType(ct) => write!(f, "Unsupported content type: {ct}."),
            ProcessError::InvalidType(t) => write!(f, "Invalid message type: {t}."),
            ProcessError::InvalidMessage(t, _) => write!(f, "Invalid {t} message."),
            ProcessError::FutureTimestamp(secs) => {
                write!(f, "The message timestamp is {secs} seconds in the future.")
            }
            ProcessError::InvalidCreditorId(id) => write!(f, "Invalid creditor ID: {}.", as_hex(*id)),
            ProcessError::InvalidDebtorId(id) => write!(f, "Invalid debtor ID: {}.", as_hex(*id)),
            ProcessError::InvalidCoordinatorType(t) => write!(f, "Invalid coordinator type: {t}."),
            ProcessError::InvalidCoordinatorId => f.write_str("Invalid coordinator ID."),
            ProcessError::InvalidCoordinatorIdValue(id) => {
                write!(f, "Invalid coordinator ID: {}.", as_hex(*id))
            }
        }
    }
}

impl std::error::Error for ProcessError {}

impl ProcessError {
    /// The detail behind the peer-facing text, for logs.
    pub fn detail(&self) -> Option<String> {
        match self {
            ProcessError::InvalidMessage(_, e) => Some(e.to_string()),
            _ => None,
        }
    }
}

/// The routing key of SPEC section 7: MD5 over the 8-byte big-endian
/// two's complement of each number; the digest's first 24 bits as `0`/`1`
/// joined by dots.
pub fn routing_key(ids: &[i64]) -> String {
    let mut md5 = Md5::new();
    for id in ids {
        md5.update(id.to_be_bytes());
    }
    let digest = md5.finalize();
    let mut key = String::with_capacity(47);
    for byte in &digest[..3] {
        for bit in (0..8).rev() {
            if !key.is_empty() {
                key.push('.');
            }
            key.push(if byte >> bit & 1 == 1 { '1' } else { '0' });
        }
    }
    key
}

/// An AMQP header value as the gateway writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// A message ready to be published to our `*_in` exchange.
#[derive(Clone, Debug, PartialEq)]
pub struct Publication {
    pub msg_type: MessageType,
    /// The message written again (JSON).
    pub body: Vec<u8>,
    pub routing_key: String,
    /// In the order SPEC section 7 lists them.
    pub headers: Vec<(&'static str, HeaderValue)>,
}

/// Which way a message travels: to an accounting authority (the *in*
/// types) or from one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToAa,
    FromAa,
}

impl Direction {
    /// What a node of `node_type` receives from its peers.
    pub fn received_by(node_type: NodeType) -> Direction {
        match node_type {
            NodeType::AA => Direction::ToAa,
            NodeType::CA | NodeType::DA => Direction::FromAa,
        }
    }

    /// What a node of `node_type` sends to its peers.
    pub fn sent_by(node_type: NodeType) -> Direction {
        match node_type {
            NodeType::AA => Direction::FromAa,
            NodeType::CA | NodeType::DA => Direction::ToAa,
        }
    }

    fn of(t: MessageType) -> Direction {
        if t.is_in() {
            Direction::ToAa
        } else {
            Direction::FromAa
        }
    }
}

/// Parses a message: content type, a known type travelling in
/// `direction`, schema.
pub fn parse_message(
    msg_type: &str,
    content_type: &str,
    body: &[u8],
    direction: Direction,
) -> Result<Message, ProcessError> {
    if content_type != "application/json" {
        return Err(ProcessError::UnsupportedContentType(content_type.to_string()));
    }
    let t = match MessageType::parse(msg_type) {
        Some(t) if Direction::of(t) == direction => t,
        _ => return Err(ProcessError::InvalidType(msg_type.to_string())),
    };
    Message::parse(t, body).map_err(|e| ProcessError::InvalidMessage(msg_type.to_string(), e))
}

/// How far in the future `ts` may be.
pub const MAX_SECONDS_AHEAD: f64 = 7200.0;

/// The server side: checks and transforms a message received from `peer`
/// before it is published (SPEC section 7, steps 1-7). `now_micros` is the
/// current time in microseconds since the Unix epoch.
pub fn server_process(
    node: &NodeData,
    peer: &PeerData,
    msg_type: &str,
    content_type: &str,
    body: &[u8],
    now_micros: i64,
) -> Result<Publication, ProcessError> {
    let direction = Direction::received_by(node.node_type);
    let msg = parse_message(msg_type, content_type, body, direction)?;
    publication_from(node, peer, msg, now_micros)
}

/// The server-side rules from step 2 on, for a parsed message: the
/// message checked against the peer, moved into our subnet (a CA), given
/// its headers and routing key.
pub fn publication_from(
    node: &NodeData,
    peer: &PeerData,
    mut msg: Message,
    now_micros: i64,
) -> Result<Publication, ProcessError> {
    check_timestamp(&msg, now_micros)?;
    check_subnets(peer, &msg)?;
    let coordinator = checked_coordinator(node, peer, &msg)?;
    let (ca_routing, ca_headers) = match node.node_type {
        NodeType::CA => {
            let (routing, headers) = move_to_ca_subnet(node, peer, &mut msg, coordinator.as_ref())?;
            (routing, Some(headers))
        }
        _ => (None, None),
    };
    let headers = publication_headers(&msg, ca_headers, coordinator.as_ref());
    let routing_key = ca_routing.unwrap_or_else(|| default_routing_key(node.node_type, &msg));
    Ok(Publication {
        msg_type: msg.msg_type,
        body: msg.to_json(),
        routing_key,
        headers,
    })
}

/// A coordinator's id and type, when the message names both.
type Coordinator = (i64, String);

/// The two headers a CA adds, telling its creditors and trade services
/// apart.
type CaHeaders = [(&'static str, HeaderValue); 2];

fn check_timestamp(msg: &Message, now_micros: i64) -> Result<(), ProcessError> {
    let secs_ahead = (msg.ts_micros - now_micros) as f64 / 1e6;
    if secs_ahead > MAX_SECONDS_AHEAD {
        return Err(ProcessError::FutureTimestamp(format!("{secs_ahead:.0}")));
    }
    Ok(())
}

fn check_subnets(peer: &PeerData, msg: &Message) -> Result<(), ProcessError> {
    if !peer.creditors_subnet.matches(msg.creditor_id) {
        return Err(ProcessError::InvalidCreditorId(msg.creditor_id));
    }
    if !peer.debtors_subnet.matches(msg.debtor_id) {
        return Err(ProcessError::InvalidDebtorId(msg.debtor_id));
    }
    Ok(())
}

/// The message's coordinator, checked: a type the two node types allow,
/// an id that type allows.
fn checked_coordinator(
    node: &NodeData,
    peer: &PeerData,
    msg: &Message,
) -> Result<Option<Coordinator>, ProcessError> {
    let (Some(coordinator_id), Some(ct)) = (msg.coordinator_id, msg.coordinator_type.clone()) else {
        return Ok(None);
    };
    let ca = node.node_type == NodeType::CA || peer.node_type == NodeType::CA;
    let da = node.node_type == NodeType::DA || peer.node_type == NodeType::DA;
    if (ca && ct != "direct" && ct != "agent") || (da && ct != "issuing") {
        return Err(ProcessError::InvalidCoordinatorType(ct));
    }
    let ok = match ct.as_str() {
        "direct" => coordinator_id == msg.creditor_id,
        "agent" => peer.creditors_subnet.matches(coordinator_id),
        "issuing" => coordinator_id == msg.debtor_id && msg.creditor_id == 0,
        _ => true,
    };
    if !ok {
        return Err(ProcessError::InvalidCoordinatorId);
    }
    Ok(Some((coordinator_id, ct)))
}

/// A CA's step: the creditor (and coordinator) ids moved from the peer's
/// subnet into ours; an agent's transfer is routed by its coordinator.
/// Returns that routing key, if any, and the CA's two headers.
fn move_to_ca_subnet(
    node: &NodeData,
    peer: &PeerData,
    msg: &mut Message,
    coordinator: Option<&Coordinator>,
) -> Result<(Option<String>, CaHeaders), ProcessError> {
    let trade_account = msg.creditor_id & 0xff_0000_0000 == 0;
    let notification =
        msg.msg_type == MessageType::AccountTransfer && msg.coordinator_type.as_deref() == Some("agent");
    let mut trade_transfer = false;
    let mut routing = None;
    let moved = peer
        .creditors_subnet
        .change_subnet(msg.creditor_id, &node.creditors_subnet)
        .map_err(|_| ProcessError::InvalidCreditorId(msg.creditor_id))?;
    msg.set_creditor_id(moved);
    if let Some((coordinator_id, ct)) = coordinator {
        let moved = peer
            .creditors_subnet
            .change_subnet(*coordinator_id, &node.creditors_subnet)
            .map_err(|_| ProcessError::InvalidCoordinatorId)?;
        msg.set_coordinator_id(moved);
        if ct == "agent" {
            trade_transfer = true;
            routing = Some(routing_key(&[moved]));
        }
    }
    let headers = [
        (
            "ca-creditors",
            HeaderValue::Bool(!(trade_account || trade_transfer)),
        ),
        (
            "ca-trade",
            HeaderValue::Bool(trade_account || trade_transfer || notification),
        ),
    ];
    Ok((routing, headers))
}

/// The publication's headers: the message type and ids, a CA's two, the
/// coordinator's.
fn publication_headers(
    msg: &Message,
    ca_headers: Option<CaHeaders>,
    coordinator: Option<&Coordinator>,
) -> Vec<(&'static str, HeaderValue)> {
    let mut headers = vec![
        (
            "message-type",
            HeaderValue::Str(msg.msg_type.as_str().to_string()),
        ),
        ("debtor-id", HeaderValue::Int(msg.debtor_id)),
        ("creditor-id", HeaderValue::Int(msg.creditor_id)),
    ];
    if let Some(ca) = ca_headers {
        headers.extend(ca);
    }
    if let (Some(id), Some((_, ct))) = (msg.coordinator_id, coordinator) {
        headers.push(("coordinator-id", HeaderValue::Int(id)));
        headers.push(("coordinator-type", HeaderValue::Str(ct.clone())));
    }
    headers
}

/// The routing key by node type: an AA's by debtor and creditor, a CA's by
/// creditor, a DA's by debtor.
fn default_routing_key(node_type: NodeType, msg: &Message) -> String {
    match node_type {
        NodeType::AA => routing_key(&[msg.debtor_id, msg.creditor_id]),
        NodeType::CA => routing_key(&[msg.creditor_id]),
        NodeType::DA => routing_key(&[msg.debtor_id]),
    }
}

/// The client side: checks and transforms a message from our queue before
/// it is sent to `peer` (SPEC section 7, "Sent by the client"). Returns
/// the message with its body written again.
pub fn client_process(
    node: &NodeData,
    peer: &PeerData,
    msg_type: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Message, ProcessError> {
    let direction = Direction::sent_by(node.node_type);
    let mut msg = parse_message(msg_type, content_type, body, direction)?;
    if node.node_type == NodeType::CA {
        let moved = node
            .creditors_subnet
            .change_subnet(msg.creditor_id, &peer.creditors_subnet)
            .map_err(|_| ProcessError::InvalidCreditorId(msg.creditor_id))?;
        msg.set_creditor_id(moved);
        if let (Some(id), Some("direct" | "agent")) = (msg.coordinator_id, msg.coordinator_type.as_deref()) {
            let moved = node
                .creditors_subnet
                .change_subnet(id, &peer.creditors_subnet)
                .map_err(|_| ProcessError::InvalidCoordinatorIdValue(id))?;
            msg.set_coordinator_id(moved);
        }
    }
    if !peer.creditors_subnet.matches(msg.creditor_id) {
        return Err(ProcessError::InvalidCreditorId(msg.creditor_id));
    }
    if !peer.debtors_subnet.matches(msg.debtor_id) {
        return Err(ProcessError::InvalidDebtorId(msg.debtor_id));
    }
    Ok(msg)
}

/// The reply a deactivated peer would have sent to `msg` (a message as
/// the client would have sent it), if its type gets one (SPEC section 9).
pub fn drainer_reply(msg: &Message, now: Timestamp) -> Option<Message> {
    let f = &msg.fields;
    let copy = |out: &mut Map<String, Value>, names: &[&str]| {
        for &n in names {
            if let Some(v) = f.get(n) {
                out.insert(n.to_string(), v.clone());
            }
        }
    };
    let mut out = Map::new();
    copy(&mut out, &["creditor_id", "debtor_id"]);
    let now = Value::String(now.to_iso());
    let reply_type = match msg.msg_type {
        MessageType::AccountUpdate => {
            out.insert("negligible_amount".into(), Value::from(1e30));
            out.insert("config_data".into(), Value::from(""));
            out.insert("config_flags".into(), Value::from(1));
            out.insert("seqnum".into(), Value::from(0));
            MessageType::ConfigureAccount
        }
        MessageType::PreparedTransfer => {
            copy(
                &mut out,
                &[
                    "transfer_id",
                    "coordinator_type",
                    "coordinator_id",
                    "coordinator_request_id",
                ],
            );
            out.insert("committed_amount".into(), Value::from(0));
            out.insert("transfer_note".into(), Value::from(""));
            out.insert("transfer_note_format".into(), Value::from(""));
            MessageType::FinalizeTransfer
        }
        MessageType::ConfigureAccount => {
            copy(&mut out, &["config_flags", "negligible_amount", "config_data"]);
            out.insert("config_ts".into(), f.get("ts")?.clone());
            out.insert("config_seqnum".into(), f.get("seqnum")?.clone());
            out.insert("rejection_code".into(), Value::from("NO_CONNECTION_TO_DEBTOR"));
            MessageType::RejectedConfig
        }
        _ => return None,
    };
    out.insert("type".into(), Value::from(reply_type.as_str()));
    out.insert("ts".into(), now);
    let body = serde_json::to_vec(&out).ok()?;
    Message::parse(reply_type, &body).ok()
}
