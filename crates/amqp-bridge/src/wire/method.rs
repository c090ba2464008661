//! Every AMQP 0-9-1 method the client sends or receives, one variant
//! each, with one encoder ([`Method::encode`]) and one decoder
//! ([`Method::decode`]). Arguments are borrowed from the frame they were
//! read from; the fields the client always sends alike (`reserved`,
//! `no-wait` false, `insist`) are written here and not carried.
//!
//! A method outside this set is a violation (540 not implemented) when
//! read: the client never asked for anything that would bring it.

use super::codec::{put_bits, put_long_str, put_short_str, put_u16, put_u32, put_u64, Dec, Table};
use super::Violation;

/// The `(class, method)` ids.
pub(crate) mod id {
    pub const CONNECTION_START: (u16, u16) = (10, 10);
    pub const CONNECTION_START_OK: (u16, u16) = (10, 11);
    pub const CONNECTION_TUNE: (u16, u16) = (10, 30);
    pub const CONNECTION_TUNE_OK: (u16, u16) = (10, 31);
    pub const CONNECTION_OPEN: (u16, u16) = (10, 40);
    pub const CONNECTION_OPEN_OK: (u16, u16) = (10, 41);
    pub const CONNECTION_CLOSE: (u16, u16) = (10, 50);
    pub const CONNECTION_CLOSE_OK: (u16, u16) = (10, 51);
    pub const CONNECTION_BLOCKED: (u16, u16) = (10, 60);
    pub const CONNECTION_UNBLOCKED: (u16, u16) = (10, 61);
    pub const CHANNEL_OPEN: (u16, u16) = (20, 10);
    pub const CHANNEL_OPEN_OK: (u16, u16) = (20, 11);
    pub const CHANNEL_FLOW: (u16, u16) = (20, 20);
    pub const CHANNEL_FLOW_OK: (u16, u16) = (20, 21);
    pub const CHANNEL_CLOSE: (u16, u16) = (20, 40);
    pub const CHANNEL_CLOSE_OK: (u16, u16) = (20, 41);
    pub const EXCHANGE_DECLARE: (u16, u16) = (40, 10);
    pub const EXCHANGE_DECLARE_OK: (u16, u16) = (40, 11);
    pub const EXCHANGE_BIND: (u16, u16) = (40, 30);
    pub const EXCHANGE_BIND_OK: (u16, u16) = (40, 31);
    pub const QUEUE_DECLARE: (u16, u16) = (50, 10);
    pub const QUEUE_DECLARE_OK: (u16, u16) = (50, 11);
    pub const QUEUE_BIND: (u16, u16) = (50, 20);
    pub const QUEUE_BIND_OK: (u16, u16) = (50, 21);
    pub const BASIC_QOS: (u16, u16) = (60, 10);
    pub const BASIC_QOS_OK: (u16, u16) = (60, 11);
    pub const BASIC_CONSUME: (u16, u16) = (60, 20);
    pub const BASIC_CONSUME_OK: (u16, u16) = (60, 21);
    pub const BASIC_CANCEL: (u16, u16) = (60, 30);
    pub const BASIC_CANCEL_OK: (u16, u16) = (60, 31);
    pub const BASIC_PUBLISH: (u16, u16) = (60, 40);
    pub const BASIC_RETURN: (u16, u16) = (60, 50);
    pub const BASIC_DELIVER: (u16, u16) = (60, 60);
    pub const BASIC_ACK: (u16, u16) = (60, 80);
    pub const BASIC_REJECT: (u16, u16) = (60, 90);
    pub const BASIC_NACK: (u16, u16) = (60, 120);
    pub const CONFIRM_SELECT: (u16, u16) = (85, 10);
    pub const CONFIRM_SELECT_OK: (u16, u16) = (85, 11);
}

/// A reply code and text, with the method that caused it (for closes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reason<'a> {
    pub code: u16,
    pub text: &'a str,
    pub class: u16,
    pub method: u16,
}

/// One method and its arguments.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Method<'a> {
    ConnectionStart {
        version: (u8, u8),
        server_properties: Table<'a>,
        mechanisms: &'a [u8],
        locales: &'a [u8],
    },
    ConnectionStartOk {
        client_properties: Table<'a>,
        mechanism: &'a str,
        response: &'a [u8],
        locale: &'a str,
    },
    ConnectionTune(Tune),
    ConnectionTuneOk(Tune),
    ConnectionOpen {
        vhost: &'a str,
    },
    ConnectionOpenOk,
    ConnectionClose(Reason<'a>),
    ConnectionCloseOk,
    ConnectionBlocked {
        reason: &'a str,
    },
    ConnectionUnblocked,
    ChannelOpen,
    ChannelOpenOk,
    ChannelFlow {
        active: bool,
    },
    ChannelFlowOk {
        active: bool,
    },
    ChannelClose(Reason<'a>),
    ChannelCloseOk,
    ExchangeDeclare {
        exchange: &'a str,
        kind: &'a str,
        passive: bool,
        durable: bool,
        arguments: Table<'a>,
    },
    ExchangeDeclareOk,
    ExchangeBind {
        destination: &'a str,
        source: &'a str,
        routing_key: &'a str,
        arguments: Table<'a>,
    },
    ExchangeBindOk,
    QueueDeclare {
        queue: &'a str,
        passive: bool,
        durable: bool,
        arguments: Table<'a>,
    },
    QueueDeclareOk {
        queue: &'a str,
        message_count: u32,
        consumer_count: u32,
    },
    QueueBind {
        queue: &'a str,
        exchange: &'a str,
        routing_key: &'a str,
        arguments: Table<'a>,
    },
    QueueBindOk,
    BasicQos {
        prefetch_count: u16,
    },
    BasicQosOk,
    BasicConsume {
        queue: &'a str,
        consumer_tag: &'a str,
        arguments: Table<'a>,
    },
    BasicConsumeOk {
        consumer_tag: &'a str,
    },
    BasicCancel {
        consumer_tag: &'a str,
        no_wait: bool,
    },
    BasicCancelOk {
        consumer_tag: &'a str,
    },
    BasicPublish {
        exchange: &'a str,
        routing_key: &'a str,
        mandatory: bool,
    },
    BasicReturn {
        code: u16,
        text: &'a str,
        exchange: &'a str,
        routing_key: &'a str,
    },
    BasicDeliver {
        consumer_tag: &'a str,
        delivery_tag: u64,
        redelivered: bool,
        exchange: &'a str,
        routing_key: &'a str,
    },
    BasicAck {
        delivery_tag: u64,
        multiple: bool,
    },
    BasicReject {
        delivery_tag: u64,
        requeue: bool,
    },
    BasicNack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
    ConfirmSelect,
    ConfirmSelectOk,
}

/// `connection.tune` and `tune-ok`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tune {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

/// The name of a method by id, as the spec writes it (`queue.declare`).
pub(crate) fn name(m: (u16, u16)) -> String {
    let class = match m.0 {
        10 => "connection",
        20 => "channel",
        40 => "exchange",
        50 => "queue",
        60 => "basic",
        85 => "confirm",
        90 => "tx",
        _ => return format!("method {}.{}", m.0, m.1),
    };
    let method = match m {
        (10, 10) => "start",
        (10, 11) => "start-ok",
        (10, 20) => "secure",
        (10, 30) => "tune",
        (10, 31) => "tune-ok",
        (10, 40) => "open",
        (10, 41) => "open-ok",
        (10, 50) | (20, 40) => "close",
        (10, 51) | (20, 41) => "close-ok",
        (10, 60) => "blocked",
        (10, 61) => "unblocked",
        (10, 70) => "update-secret",
        (20, 10) => "open",
        (20, 11) => "open-ok",
        (85, 10) => "select",
        (85, 11) => "select-ok",
        (20, 20) => "flow",
        (20, 21) => "flow-ok",
        (40, 10) | (50, 10) => "declare",
        (40, 11) | (50, 11) => "declare-ok",
        (40, 30) | (50, 20) => "bind",
        (40, 31) | (50, 21) => "bind-ok",
        (60, 10) => "qos",
        (60, 11) => "qos-ok",
        (60, 20) => "consume",
        (60, 21) => "consume-ok",
        (60, 30) => "cancel",
        (60, 31) => "cancel-ok",
        (60, 40) => "publish",
        (60, 50) => "return",
        (60, 60) => "deliver",
        (60, 70) => "get",
        (60, 80) => "ack",
        (60, 90) => "reject",
        (60, 120) => "nack",
        _ => return format!("{class} method {}", m.1),
    };
    format!("{class}.{method}")
}

/// Whether a method is followed by a content header and body.
pub(crate) fn carries_content(m: (u16, u16)) -> bool {
    matches!(
        m,
        id::BASIC_PUBLISH | id::BASIC_RETURN | id::BASIC_DELIVER | (60, 71)
    )
}

impl Method<'static> {
    /// `channel.close` by us: a normal close.
    pub const CHANNEL_CLOSE: Method<'static> = Method::ChannelClose(Reason {
        code: super::REPLY_SUCCESS,
        text: "",
        class: 0,
        method: 0,
    });
}

impl<'a> Method<'a> {
    /// The method's `(class, method)` id.
    pub fn id(&self) -> (u16, u16) {
        use Method::*;
        match self {
            ConnectionStart { .. } => id::CONNECTION_START,
            ConnectionStartOk { .. } => id::CONNECTION_START_OK,
            ConnectionTune(_) => id::CONNECTION_TUNE,
            ConnectionTuneOk(_) => id::CONNECTION_TUNE_OK,
            ConnectionOpen { .. } => id::CONNECTION_OPEN,
            ConnectionOpenOk => id::CONNECTION_OPEN_OK,
            ConnectionClose(_) => id::CONNECTION_CLOSE,
            ConnectionCloseOk => id::CONNECTION_CLOSE_OK,
            ConnectionBlocked { .. } => id::CONNECTION_BLOCKED,
            ConnectionUnblocked => id::CONNECTION_UNBLOCKED,
            ChannelOpen => id::CHANNEL_OPEN,
            ChannelOpenOk => id::CHANNEL_OPEN_OK,
            ChannelFlow { .. } => id::CHANNEL_FLOW,
            ChannelFlowOk { .. } => id::CHANNEL_FLOW_OK,
            ChannelClose(_) => id::CHANNEL_CLOSE,
            ChannelCloseOk => id::CHANNEL_CLOSE_OK,
            ExchangeDeclare { .. } => id::EXCHANGE_DECLARE,
            ExchangeDeclareOk => id::EXCHANGE_DECLARE_OK,
            ExchangeBind { .. } => id::EXCHANGE_BIND,
            ExchangeBindOk => id::EXCHANGE_BIND_OK,
            QueueDeclare { .. } => id::QUEUE_DECLARE,
            QueueDeclareOk { .. } => id::QUEUE_DECLARE_OK,
            QueueBind { .. } => id::QUEUE_BIND,
            QueueBindOk => id::QUEUE_BIND_OK,
            BasicQos { .. } => id::BASIC_QOS,
            BasicQosOk => id::BASIC_QOS_OK,
            BasicConsume { .. } => id::BASIC_CONSUME,
            BasicConsumeOk { .. } => id::BASIC_CONSUME_OK,
            BasicCancel { .. } => id::BASIC_CANCEL,
            BasicCancelOk { .. } => id::BASIC_CANCEL_OK,
            BasicPublish { .. } => id::BASIC_PUBLISH,
            BasicReturn { .. } => id::BASIC_RETURN,
            BasicDeliver { .. } => id::BASIC_DELIVER,
            BasicAck { .. } => id::BASIC_ACK,
            BasicReject { .. } => id::BASIC_REJECT,
            BasicNack { .. } => id::BASIC_NACK,
            ConfirmSelect => id::CONFIRM_SELECT,
            ConfirmSelectOk => id::CONFIRM_SELECT_OK,
        }
    }

    /// Writes the method's payload: class, method and arguments.
    pub fn encode(&self, o: &mut Vec<u8>) {
        use Method::*;
        let (class, method) = self.id();
        put_u16(o, class);
        put_u16(o, method);
        match *self {
            ConnectionStart {
                version,
                server_properties,
                mechanisms,
                locales,
            } => {
                o.extend_from_slice(&[version.0, version.1]);
                server_properties.encode(o);
                put_long_str(o, mechanisms);
                put_long_str(o, locales);
            }
            ConnectionStartOk {
                client_properties,
                mechanism,
                response,
                locale,
            } => {
                client_properties.encode(o);
                put_short_str(o, mechanism);
                put_long_str(o, response);
                put_short_str(o, locale);
            }
            ConnectionTune(t) | ConnectionTuneOk(t) => {
                put_u16(o, t.channel_max);
                put_u32(o, t.frame_max);
                put_u16(o, t.heartbeat);
            }
            ConnectionOpen { vhost } => {
                put_short_str(o, vhost);
                put_short_str(o, ""); // capabilities
                put_bits(o, &[false]); // insist
            }
            ConnectionOpenOk => put_short_str(o, ""), // known-hosts
            ConnectionClose(r) | ChannelClose(r) => {
                put_u16(o, r.code);
                put_short_str(o, r.text);
                put_u16(o, r.class);
                put_u16(o, r.method);
            }
            ConnectionBlocked { reason } => put_short_str(o, reason),
            ChannelOpen => put_short_str(o, ""),   // out-of-band
            ChannelOpenOk => put_long_str(o, b""), // channel-id
            ChannelFlow { active } | ChannelFlowOk { active } => put_bits(o, &[active]),
            ExchangeDeclare {
                exchange,
                kind,
                passive,
                durable,
                arguments,
            } => {
                put_u16(o, 0);
                put_short_str(o, exchange);
                put_short_str(o, kind);
                // passive, durable, auto-delete, internal, no-wait
                put_bits(o, &[passive, durable, false, false, false]);
                arguments.encode(o);
            }
            ExchangeBind {
                destination,
                source,
                routing_key,
                arguments,
            } => {
                put_u16(o, 0);
                put_short_str(o, destination);
                put_short_str(o, source);
                put_short_str(o, routing_key);
                put_bits(o, &[false]); // no-wait
                arguments.encode(o);
            }
            QueueDeclare {
                queue,
                passive,
                durable,
                arguments,
            } => {
                put_u16(o, 0);
                put_short_str(o, queue);
                // passive, durable, exclusive, auto-delete, no-wait
                put_bits(o, &[passive, durable, false, false, false]);
                arguments.encode(o);
            }
            QueueDeclareOk {
                queue,
                message_count,
                consumer_count,
            } => {
                put_short_str(o, queue);
                put_u32(o, message_count);
                put_u32(o, consumer_count);
            }
            QueueBind {
                queue,
                exchange,
                routing_key,
                arguments,
            } => {
                put_u16(o, 0);
                put_short_str(o, queue);
                put_short_str(o, exchange);
                put_short_str(o, routing_key);
                put_bits(o, &[false]); // no-wait
                arguments.encode(o);
            }
            BasicQos { prefetch_count } => {
                put_u32(o, 0); // prefetch-size
                put_u16(o, prefetch_count);
                put_bits(o, &[false]); // global
            }
            BasicConsume {
                queue,
                consumer_tag,
                arguments,
            } => {
                put_u16(o, 0);
                put_short_str(o, queue);
                put_short_str(o, consumer_tag);
                // no-local, no-ack, exclusive, no-wait
                put_bits(o, &[false, false, false, false]);
                arguments.encode(o);
            }
            BasicConsumeOk { consumer_tag } | BasicCancelOk { consumer_tag } => {
                put_short_str(o, consumer_tag)
            }
            BasicCancel {
                consumer_tag,
                no_wait,
            } => {
                put_short_str(o, consumer_tag);
                put_bits(o, &[no_wait]);
            }
            BasicPublish {
                exchange,
                routing_key,
                mandatory,
            } => {
                put_u16(o, 0);
                put_short_str(o, exchange);
                put_short_str(o, routing_key);
                put_bits(o, &[mandatory, false]); // immediate: never
            }
            BasicReturn {
                code,
                text,
                exchange,
                routing_key,
            } => {
                put_u16(o, code);
                put_short_str(o, text);
                put_short_str(o, exchange);
                put_short_str(o, routing_key);
            }
            BasicDeliver {
                consumer_tag,
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
            } => {
                put_short_str(o, consumer_tag);
                put_u64(o, delivery_tag);
                put_bits(o, &[redelivered]);
                put_short_str(o, exchange);
                put_short_str(o, routing_key);
            }
            BasicAck {
                delivery_tag,
                multiple,
            } => {
                put_u64(o, delivery_tag);
                put_bits(o, &[multiple]);
            }
            BasicReject {
                delivery_tag,
                requeue,
            } => {
                put_u64(o, delivery_tag);
                put_bits(o, &[requeue]);
            }
            BasicNack {
                delivery_tag,
                multiple,
                requeue,
            } => {
                put_u64(o, delivery_tag);
                put_bits(o, &[multiple, requeue]);
            }
            ConfirmSelect => put_bits(o, &[false]), // no-wait
            ConnectionCloseOk | ConnectionUnblocked | ChannelCloseOk | ExchangeDeclareOk | ExchangeBindOk
            | QueueBindOk | BasicQosOk | ConfirmSelectOk => {}
        }
    }

    /// Reads a method payload (class, method and arguments).
    pub fn decode(payload: &'a [u8]) -> Result<Method<'a>, Violation> {
        use Method::*;
        let mut d = Dec::new(payload);
        let m = (d.u16()?, d.u16()?);
        let reason = |d: &mut Dec<'a>| -> Result<Reason<'a>, Violation> {
            Ok(Reason {
                code: d.u16()?,
                text: d.short_str()?,
                class: d.u16()?,
                method: d.u16()?,
            })
        };
        let tune = |d: &mut Dec<'a>| -> Result<Tune, Violation> {
            Ok(Tune {
                channel_max: d.u16()?,
                frame_max: d.u32()?,
                heartbeat: d.u16()?,
            })
        };
        Ok(match m {
            id::CONNECTION_START => ConnectionStart {
                version: (d.u8()?, d.u8()?),
                server_properties: d.table()?,
                mechanisms: d.long_bytes()?,
                locales: d.long_bytes()?,
            },
            id::CONNECTION_START_OK => ConnectionStartOk {
                client_properties: d.table()?,
                mechanism: d.short_str()?,
                response: d.long_bytes()?,
                locale: d.short_str()?,
            },
            id::CONNECTION_TUNE => ConnectionTune(tune(&mut d)?),
            id::CONNECTION_TUNE_OK => ConnectionTuneOk(tune(&mut d)?),
            id::CONNECTION_OPEN => {
                let vhost = d.short_str()?;
                let (_capabilities, _insist) = (d.short_str()?, d.u8()?);
                ConnectionOpen { vhost }
            }
            id::CONNECTION_OPEN_OK => {
                d.short_str()?;
                ConnectionOpenOk
            }
            id::CONNECTION_CLOSE => ConnectionClose(reason(&mut d)?),
            id::CONNECTION_CLOSE_OK => ConnectionCloseOk,
            id::CONNECTION_BLOCKED => ConnectionBlocked {
                reason: d.short_str()?,
            },
            id::CONNECTION_UNBLOCKED => ConnectionUnblocked,
            id::CHANNEL_OPEN => {
                d.short_str()?;
                ChannelOpen
            }
            id::CHANNEL_OPEN_OK => {
                d.long_bytes()?;
                ChannelOpenOk
            }
            id::CHANNEL_FLOW => ChannelFlow {
                active: d.bits::<1>()?[0],
            },
            id::CHANNEL_FLOW_OK => ChannelFlowOk {
                active: d.bits::<1>()?[0],
            },
            id::CHANNEL_CLOSE => ChannelClose(reason(&mut d)?),
            id::CHANNEL_CLOSE_OK => ChannelCloseOk,
            id::EXCHANGE_DECLARE => {
                d.u16()?;
                let (exchange, kind) = (d.short_str()?, d.short_str()?);
                let [passive, durable, ..] = d.bits::<5>()?;
                ExchangeDeclare {
                    exchange,
                    kind,
                    passive,
                    durable,
                    arguments: d.table()?,
                }
            }
            id::EXCHANGE_DECLARE_OK => ExchangeDeclareOk,
            id::EXCHANGE_BIND => {
                d.u16()?;
                let (destination, source, routing_key) = (d.short_str()?, d.short_str()?, d.short_str()?);
                d.u8()?;
                ExchangeBind {
                    destination,
                    source,
                    routing_key,
                    arguments: d.table()?,
                }
            }
            id::EXCHANGE_BIND_OK => ExchangeBindOk,
            id::QUEUE_DECLARE => {
                d.u16()?;
                let queue = d.short_str()?;
                let [passive, durable, ..] = d.bits::<5>()?;
                QueueDeclare {
                    queue,
                    passive,
                    durable,
                    arguments: d.table()?,
                }
            }
            id::QUEUE_DECLARE_OK => QueueDeclareOk {
                queue: d.short_str()?,
                message_count: d.u32()?,
                consumer_count: d.u32()?,
            },
            id::QUEUE_BIND => {
                d.u16()?;
                let (queue, exchange, routing_key) = (d.short_str()?, d.short_str()?, d.short_str()?);
                d.u8()?;
                QueueBind {
                    queue,
                    exchange,
                    routing_key,
                    arguments: d.table()?,
                }
            }
            id::QUEUE_BIND_OK => QueueBindOk,
            id::BASIC_QOS => {
                let (_size, prefetch_count, _global) = (d.u32()?, d.u16()?, d.u8()?);
                BasicQos { prefetch_count }
            }
            id::BASIC_QOS_OK => BasicQosOk,
            id::BASIC_CONSUME => {
                d.u16()?;
                let (queue, consumer_tag) = (d.short_str()?, d.short_str()?);
                d.u8()?;
                BasicConsume {
                    queue,
                    consumer_tag,
                    arguments: d.table()?,
                }
            }
            id::BASIC_CONSUME_OK => BasicConsumeOk {
                consumer_tag: d.short_str()?,
            },
            id::BASIC_CANCEL => BasicCancel {
                consumer_tag: d.short_str()?,
                no_wait: d.bits::<1>()?[0],
            },
            id::BASIC_CANCEL_OK => BasicCancelOk {
                consumer_tag: d.short_str()?,
            },
            id::BASIC_PUBLISH => {
                d.u16()?;
                let (exchange, routing_key) = (d.short_str()?, d.short_str()?);
                BasicPublish {
                    exchange,
                    routing_key,
                    mandatory: d.bits::<2>()?[0],
                }
            }
            id::BASIC_RETURN => BasicReturn {
                code: d.u16()?,
                text: d.short_str()?,
                exchange: d.short_str()?,
                routing_key: d.short_str()?,
            },
            id::BASIC_DELIVER => BasicDeliver {
                consumer_tag: d.short_str()?,
                delivery_tag: d.u64()?,
                redelivered: d.bits::<1>()?[0],
                exchange: d.short_str()?,
                routing_key: d.short_str()?,
            },
            id::BASIC_ACK => {
                let delivery_tag = d.u64()?;
                BasicAck {
                    delivery_tag,
                    multiple: d.bits::<1>()?[0],
                }
            }
            id::BASIC_REJECT => {
                let delivery_tag = d.u64()?;
                BasicReject {
                    delivery_tag,
                    requeue: d.bits::<1>()?[0],
                }
            }
            id::BASIC_NACK => {
                let delivery_tag = d.u64()?;
                let [multiple, requeue] = d.bits::<2>()?;
                BasicNack {
                    delivery_tag,
                    multiple,
                    requeue,
                }
            }
            id::CONFIRM_SELECT => {
                d.u8()?;
                ConfirmSelect
            }
            id::CONFIRM_SELECT_OK => ConfirmSelectOk,
            other => {
                return Err(Violation::new(
                    super::NOT_IMPLEMENTED,
                    format!("{} is not supported by this client", name(other)),
                ))
            }
        })
    }
}
