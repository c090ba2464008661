//! The frames layer checked against a kept codec: amq-protocol (the
//! codec lapin is built on, generated from the spec). Over random
//! values, every method and content header we write parses there into
//! what we meant, and every frame a broker sends, written there, is read
//! here as it should be.

use super::codec::{Array, FieldValue, Table};
use super::content::{Assembler, Properties};
use super::method::{Reason, Tune};
use super::{Frame, Method, FRAME_MAX};
use crate::HeaderValue;
use amq_protocol::frame::{gen_frame, parse_frame, AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, queue, AMQPClass, BasicProperties,
};
use amq_protocol::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROUNDS: usize = 300;

fn text(rng: &mut StdRng, max: usize) -> String {
    let n = rng.gen_range(0..=max);
    (0..n).map(|_| rng.gen_range(b' '..=b'~') as char).collect()
}

/// Parses our bytes with amq-protocol: exactly one frame, all consumed.
fn theirs(bytes: &[u8]) -> AMQPFrame {
    let (rest, frame) = parse_frame(bytes).expect("amq-protocol parses our frame");
    assert!(rest.is_empty(), "one frame, nothing left over");
    frame
}

/// Our method, written as a frame on `channel`, parsed by amq-protocol.
fn ours_read_there(m: &Method, channel: u16) -> AMQPClass {
    let mut out = Vec::new();
    super::method_frame(&mut out, channel, m);
    match theirs(&out) {
        AMQPFrame::Method(ch, class) => {
            assert_eq!(ch, channel);
            class
        }
        other => panic!("not a method frame: {other:?}"),
    }
}

/// A frame written by amq-protocol, read by ours.
fn written_there(frame: &AMQPFrame) -> Vec<Frame> {
    let bytes = cookie_factory::gen_simple(gen_frame(frame), Vec::new()).expect("amq-protocol writes");
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (f, used) = super::parse(&bytes[at..], FRAME_MAX as usize)
            .unwrap()
            .expect("a whole frame");
        frames.push(f);
        at += used;
    }
    frames
}

fn their_method(channel: u16, class: AMQPClass) -> Frame {
    let mut frames = written_there(&AMQPFrame::Method(channel, class));
    assert_eq!(frames.len(), 1);
    frames.remove(0)
}

#[test]
fn every_method_we_write_is_what_we_meant() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    for _ in 0..ROUNDS {
        let (a, b, c) = (text(&mut rng, 255), text(&mut rng, 255), text(&mut rng, 255));
        let ch = rng.gen_range(1..=u16::MAX);
        let (tag, flag, count) = (rng.gen::<u64>(), rng.gen::<bool>(), rng.gen::<u16>());
        let s = |x: &str| ShortString::from(x);
        let value = LongString::from(c.clone().into_bytes());
        let args = [(a.as_str(), FieldValue::LongStr(c.as_bytes()))];
        let mut their_args = FieldTable::default();
        their_args.insert(s(&a), AMQPValue::LongString(value));

        let tune = Tune {
            channel_max: count,
            frame_max: rng.gen(),
            heartbeat: rng.gen(),
        };
        let cases: Vec<(Method, AMQPClass)> = vec![
            (
                Method::ConnectionTuneOk(tune),
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                    channel_max: tune.channel_max,
                    frame_max: tune.frame_max,
                    heartbeat: tune.heartbeat,
                })),
            ),
            (
                Method::ConnectionOpen { vhost: &a },
                AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                    virtual_host: s(&a),
                })),
            ),
            (
                Method::ConnectionClose(Reason {
                    code: count,
                    text: &b,
                    class: 60,
                    method: 40,
                }),
                AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                    reply_code: count,
                    reply_text: s(&b),
                    class_id: 60,
                    method_id: 40,
                })),
            ),
            (
                Method::ConnectionCloseOk,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            ),
            (
                Method::ChannelOpen,
                AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            ),
            (
                Method::ChannelClose(Reason {
                    code: 200,
                    text: &b,
                    class: 0,
                    method: 0,
                }),
                AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: 200,
                    reply_text: s(&b),
                    class_id: 0,
                    method_id: 0,
                })),
            ),
            (
                Method::ChannelCloseOk,
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
            ),
            (
                Method::ChannelFlowOk { active: flag },
                AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk { active: flag })),
            ),
            (
                Method::ConfirmSelect,
                AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select { nowait: false })),
            ),
            (
                Method::ExchangeDeclare {
                    exchange: &a,
                    kind: &b,
                    passive: flag,
                    durable: !flag,
                    arguments: Table::Fields(&args),
                },
                AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                    exchange: s(&a),
                    kind: s(&b),
                    passive: flag,
                    durable: !flag,
                    auto_delete: false,
                    internal: false,
                    nowait: false,
                    arguments: their_args.clone(),
                })),
            ),
            (
                Method::ExchangeBind {
                    destination: &a,
                    source: &b,
                    routing_key: &c,
                    arguments: Table::EMPTY,
                },
                AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                    destination: s(&a),
                    source: s(&b),
                    routing_key: s(&c),
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
            ),
            (
                Method::QueueDeclare {
                    queue: &a,
                    passive: flag,
                    durable: !flag,
                    arguments: Table::Fields(&args),
                },
                AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                    queue: s(&a),
                    passive: flag,
                    durable: !flag,
                    exclusive: false,
                    auto_delete: false,
                    nowait: false,
                    arguments: their_args.clone(),
                })),
            ),
            (
                Method::QueueBind {
                    queue: &a,
                    exchange: &b,
                    routing_key: &c,
                    arguments: Table::EMPTY,
                },
                AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: s(&a),
                    exchange: s(&b),
                    routing_key: s(&c),
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
            ),
            (
                Method::BasicQos {
                    prefetch_count: count,
                },
                AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                    prefetch_count: count,
                    global: false,
                })),
            ),
            (
                Method::BasicConsume {
                    queue: &a,
                    consumer_tag: &b,
                    arguments: Table::EMPTY,
                },
                AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                    queue: s(&a),
                    consumer_tag: s(&b),
                    no_local: false,
                    no_ack: false,
                    exclusive: false,
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
            ),
            (
                Method::BasicCancelOk { consumer_tag: &a },
                AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: s(&a),
                })),
            ),
            (
                Method::BasicPublish {
                    exchange: &a,
                    routing_key: &b,
                    mandatory: flag,
                },
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: s(&a),
                    routing_key: s(&b),
                    mandatory: flag,
                    immediate: false,
                })),
            ),
            (
                Method::BasicAck {
                    delivery_tag: tag,
                    multiple: flag,
                },
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple: flag,
                })),
            ),
            (
                Method::BasicReject {
                    delivery_tag: tag,
                    requeue: flag,
                },
                AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                    delivery_tag: tag,
                    requeue: flag,
                })),
            ),
        ];
        for (ours, want) in cases {
            assert_eq!(ours_read_there(&ours, ch), want, "{ours:?}");
            // And our own decoder reads back what we wrote.
            let mut out = Vec::new();
            super::method_frame(&mut out, ch, &ours);
            let (f, _) = super::parse(&out, FRAME_MAX as usize).unwrap().unwrap();
            assert_eq!(f.method().unwrap().id(), ours.id());
        }
    }
}

#[test]
fn start_ok_with_its_client_properties_and_each_mechanism() {
    let caps = [("publisher_confirms", FieldValue::Bool(true))];
    let props = [
        ("product", FieldValue::LongStr(b"swpt-gateway")),
        ("capabilities", FieldValue::Table(Table::Fields(&caps))),
    ];
    for (mechanism, response) in [("PLAIN", &b"\0u\0p"[..]), ("EXTERNAL", b""), ("AMQPLAIN", b"x")] {
        let m = Method::ConnectionStartOk {
            client_properties: Table::Fields(&props),
            mechanism,
            response,
            locale: "en_US",
        };
        let AMQPClass::Connection(connection::AMQPMethod::StartOk(got)) = ours_read_there(&m, 0) else {
            panic!("not a start-ok");
        };
        assert_eq!(got.mechanism.as_str(), mechanism);
        assert_eq!(got.response.as_bytes(), response);
        assert_eq!(got.locale.as_str(), "en_US");
        let mut want_caps = FieldTable::default();
        want_caps.insert("publisher_confirms".into(), AMQPValue::Boolean(true));
        let mut want = FieldTable::default();
        want.insert("product".into(), AMQPValue::LongString("swpt-gateway".into()));
        want.insert("capabilities".into(), AMQPValue::FieldTable(want_caps));
        assert_eq!(got.client_properties, want);
    }
}

/// A random header value of the gateway's, and what amq-protocol reads.
fn header_value(rng: &mut StdRng) -> (HeaderValue, AMQPValue) {
    match rng.gen_range(0..3) {
        0 => {
            let s = text(rng, 40);
            (HeaderValue::Str(s.clone()), AMQPValue::LongString(s.into()))
        }
        1 => {
            let b = rng.gen();
            (HeaderValue::Bool(b), AMQPValue::Boolean(b))
        }
        _ => {
            let i: i64 = match rng.gen_range(0..4) {
                0 => rng.gen_range(-128..128),
                1 => rng.gen_range(-40_000..70_000),
                2 => rng.gen_range(-3_000_000_000..5_000_000_000),
                _ => rng.gen(),
            };
            let v = match crate::SmallestInt::of(i) {
                crate::SmallestInt::I8(v) => AMQPValue::ShortShortInt(v),
                crate::SmallestInt::I16(v) => AMQPValue::ShortInt(v),
                crate::SmallestInt::U16(v) => AMQPValue::ShortUInt(v),
                crate::SmallestInt::I32(v) => AMQPValue::LongInt(v),
                crate::SmallestInt::U32(v) => AMQPValue::LongUInt(v),
                crate::SmallestInt::I64(v) => AMQPValue::LongLongInt(v),
            };
            (HeaderValue::Int(i), v)
        }
    }
}

#[test]
fn every_publish_we_write_is_what_we_meant() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0002);
    for _ in 0..ROUNDS {
        let names: Vec<&'static str> = vec!["debtor-id", "creditor-id", "message-type", "ca-trade", "x"];
        let mut headers = Vec::new();
        let mut want_headers = FieldTable::default();
        for name in names.iter().take(rng.gen_range(0..=names.len())) {
            let (ours, theirs) = header_value(&mut rng);
            headers.push((*name, ours));
            want_headers.insert((*name).into(), theirs);
        }
        let (exchange, key, kind) = (text(&mut rng, 60), text(&mut rng, 60), text(&mut rng, 30));
        let body: Vec<u8> = (0..rng.gen_range(0..20_000)).map(|_| rng.gen()).collect();
        let frame_max = rng.gen_range(4096..=FRAME_MAX as usize);
        let properties = Properties {
            content_type: Some("application/json"),
            headers: Some(Table::Headers(&headers)),
            delivery_mode: Some(2),
            kind: Some(&kind),
            app_id: Some("swpt_stomp"),
            ..Properties::default()
        };
        let publish = Method::BasicPublish {
            exchange: &exchange,
            routing_key: &key,
            mandatory: true,
        };
        let mut out = Vec::new();
        super::publish(&mut out, 3, &publish, &properties, &body, frame_max).unwrap();
        let mut rest = &out[..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let (r, f) = parse_frame(rest).expect("amq-protocol parses our frames");
            rest = r;
            frames.push(f);
        }
        let AMQPFrame::Method(3, AMQPClass::Basic(basic::AMQPMethod::Publish(p))) = &frames[0] else {
            panic!("not a publish: {:?}", frames[0]);
        };
        assert_eq!(
            (p.exchange.as_str(), p.routing_key.as_str()),
            (exchange.as_str(), key.as_str())
        );
        assert!(p.mandatory && !p.immediate);
        let AMQPFrame::Header(3, 60, h) = &frames[1] else {
            panic!("not a content header");
        };
        assert_eq!(h.body_size, body.len() as u64);
        let want = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(want_headers)
            .with_delivery_mode(2)
            .with_type(kind.as_str().into())
            .with_app_id("swpt_stomp".into());
        assert_eq!(h.properties, want);
        let mut joined = Vec::new();
        for f in &frames[2..] {
            let AMQPFrame::Body(3, chunk) = f else {
                panic!("not a body frame")
            };
            assert!(chunk.len() + 8 <= frame_max, "a body frame over frame_max");
            joined.extend_from_slice(chunk);
        }
        assert_eq!(joined, body);
    }
}

/// Random field values of every type, as amq-protocol writes them, and
/// what ours must read (compared through a small common form).
fn random_value(rng: &mut StdRng, depth: usize) -> AMQPValue {
    let kinds = if depth > 2 { 14 } else { 17 };
    match rng.gen_range(0..kinds) {
        0 => AMQPValue::Boolean(rng.gen()),
        1 => AMQPValue::ShortShortInt(rng.gen()),
        2 => AMQPValue::ShortShortUInt(rng.gen()),
        3 => AMQPValue::ShortInt(rng.gen()),
        4 => AMQPValue::ShortUInt(rng.gen()),
        5 => AMQPValue::LongInt(rng.gen()),
        6 => AMQPValue::LongUInt(rng.gen()),
        7 => AMQPValue::LongLongInt(rng.gen()),
        8 => AMQPValue::Float(rng.gen()),
        9 => AMQPValue::Double(rng.gen()),
        10 => AMQPValue::DecimalValue(DecimalValue {
            scale: rng.gen(),
            value: rng.gen(),
        }),
        11 => AMQPValue::LongString(text(rng, 30).into()),
        12 => AMQPValue::Timestamp(rng.gen()),
        13 => AMQPValue::Void,
        14 => AMQPValue::ByteArray(ByteArray::from(
            (0..rng.gen_range(0..20)).map(|_| rng.gen()).collect::<Vec<u8>>(),
        )),
        15 => AMQPValue::FieldArray(FieldArray::from(
            (0..rng.gen_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect::<Vec<_>>(),
        )),
        _ => AMQPValue::FieldTable(random_table(rng, depth + 1)),
    }
}

fn random_table(rng: &mut StdRng, depth: usize) -> FieldTable {
    let mut t = FieldTable::default();
    for i in 0..rng.gen_range(0..6) {
        t.insert(format!("k{i}-{}", text(rng, 8)).into(), random_value(rng, depth));
    }
    t
}

/// Whether our decoded value is the one amq-protocol wrote.
fn same(ours: &FieldValue, theirs: &AMQPValue) -> bool {
    match (ours, theirs) {
        (FieldValue::Bool(a), AMQPValue::Boolean(b)) => a == b,
        (FieldValue::I8(a), AMQPValue::ShortShortInt(b)) => a == b,
        (FieldValue::U8(a), AMQPValue::ShortShortUInt(b)) => a == b,
        (FieldValue::I16(a), AMQPValue::ShortInt(b)) => a == b,
        (FieldValue::U16(a), AMQPValue::ShortUInt(b)) => a == b,
        (FieldValue::I32(a), AMQPValue::LongInt(b)) => a == b,
        (FieldValue::U32(a), AMQPValue::LongUInt(b)) => a == b,
        (FieldValue::I64(a), AMQPValue::LongLongInt(b)) => a == b,
        (FieldValue::F32(a), AMQPValue::Float(b)) => a.to_bits() == b.to_bits(),
        (FieldValue::F64(a), AMQPValue::Double(b)) => a.to_bits() == b.to_bits(),
        (FieldValue::Decimal(s, v), AMQPValue::DecimalValue(d)) => *s == d.scale && *v == d.value,
        (FieldValue::LongStr(a), AMQPValue::LongString(b)) => *a == b.as_bytes(),
        (FieldValue::Bytes(a), AMQPValue::ByteArray(b)) => *a == b.as_slice(),
        (FieldValue::Timestamp(a), AMQPValue::Timestamp(b)) => a == b,
        (FieldValue::Void, AMQPValue::Void) => true,
        (FieldValue::Array(a), AMQPValue::FieldArray(b)) => {
            let (a, b) = (a.values(), b.as_slice());
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (FieldValue::Table(a), AMQPValue::FieldTable(b)) => same_table(a, b),
        _ => false,
    }
}

fn same_table(ours: &Table, theirs: &FieldTable) -> bool {
    let entries = ours.entries();
    entries.len() == theirs.inner().len()
        && entries.iter().all(|(k, v)| {
            theirs
                .inner()
                .get(&ShortString::from(*k))
                .is_some_and(|t| same(v, t))
        })
}

#[test]
fn a_delivery_written_by_the_broker_is_read_whole() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0003);
    for _ in 0..ROUNDS {
        let headers = random_table(&mut rng, 0);
        let t = |rng: &mut StdRng| ShortString::from(text(rng, 20));
        let props = BasicProperties::default()
            .with_content_type(t(&mut rng))
            .with_content_encoding(t(&mut rng))
            .with_headers(headers.clone())
            .with_delivery_mode(rng.gen())
            .with_priority(rng.gen())
            .with_correlation_id(t(&mut rng))
            .with_reply_to(t(&mut rng))
            .with_expiration(t(&mut rng))
            .with_message_id(t(&mut rng))
            .with_timestamp(rng.gen())
            .with_type(t(&mut rng))
            .with_user_id(t(&mut rng))
            .with_app_id(t(&mut rng))
            .with_cluster_id(t(&mut rng));
        let body: Vec<u8> = (0..rng.gen_range(0..300_000)).map(|_| rng.gen()).collect();
        let (ch, tag, redelivered) = (rng.gen_range(1..100u16), rng.gen::<u64>(), rng.gen::<bool>());
        let deliver = basic::Deliver {
            consumer_tag: "ctag".into(),
            delivery_tag: tag,
            redelivered,
            exchange: "ex".into(),
            routing_key: "rk".into(),
        };
        let mut frames = written_there(&AMQPFrame::Method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver)),
        ));
        frames.extend(written_there(&AMQPFrame::Header(
            ch,
            60,
            Box::new(AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: props.clone(),
            }),
        )));
        for chunk in body.chunks(FRAME_MAX as usize - 8) {
            frames.extend(written_there(&AMQPFrame::Body(ch, chunk.to_vec())));
        }
        let mut assembler = Assembler::default();
        let mut arrived = None;
        for f in frames {
            if let Some(a) = assembler.push(f).unwrap() {
                arrived = Some(a);
            }
        }
        let a = arrived.expect("the delivery is complete");
        let Method::BasicDeliver {
            consumer_tag,
            delivery_tag,
            redelivered: r,
            exchange,
            routing_key,
        } = a.method.method().unwrap()
        else {
            panic!("not a deliver");
        };
        assert_eq!(
            (consumer_tag, delivery_tag, r, exchange, routing_key),
            ("ctag", tag, redelivered, "ex", "rk")
        );
        let (header, got_body) = a.content.unwrap();
        assert_eq!(got_body, body);
        let (size, p) = Properties::decode(&header.payload).unwrap();
        assert_eq!(size, body.len() as u64);
        let s = |x: Option<&str>, y: &Option<ShortString>| x == y.as_ref().map(|v| v.as_str());
        assert!(s(p.content_type, props.content_type()) && s(p.content_encoding, props.content_encoding()));
        assert!(s(p.correlation_id, props.correlation_id()) && s(p.reply_to, props.reply_to()));
        assert!(s(p.expiration, props.expiration()) && s(p.message_id, props.message_id()));
        assert!(s(p.kind, props.kind()) && s(p.user_id, props.user_id()));
        assert!(s(p.app_id, props.app_id()) && s(p.cluster_id, props.cluster_id()));
        assert_eq!(
            (p.delivery_mode, p.priority, p.timestamp),
            (*props.delivery_mode(), *props.priority(), *props.timestamp())
        );
        assert!(same_table(&p.headers.unwrap(), &headers), "headers {headers:?}");
    }
}

#[test]
fn what_else_a_broker_sends_is_read_as_it_should_be() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0004);
    for _ in 0..ROUNDS {
        let (tag, multiple, requeue) = (rng.gen::<u64>(), rng.gen::<bool>(), rng.gen::<bool>());
        let (code, reason) = (rng.gen::<u16>(), text(&mut rng, 200));
        let ch = rng.gen_range(1..=u16::MAX);
        let read = |class| their_method(ch, class);

        let f = read(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple,
        })));
        assert!(
            matches!(f.method().unwrap(), Method::BasicAck { delivery_tag, multiple: m } if delivery_tag == tag && m == multiple)
        );
        let f = read(AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: tag,
            multiple,
            requeue,
        })));
        assert!(matches!(f.method().unwrap(),
            Method::BasicNack { delivery_tag, multiple: m, requeue: r } if delivery_tag == tag && m == multiple && r == requeue));
        let f = read(AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code: 312,
            reply_text: reason.as_str().into(),
            exchange: "ex".into(),
            routing_key: "rk".into(),
        })));
        assert!(matches!(f.method().unwrap(),
            Method::BasicReturn { code: 312, text, exchange: "ex", routing_key: "rk" } if text == reason));
        let f = read(AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: reason.as_str().into(),
            nowait: multiple,
        })));
        assert!(
            matches!(f.method().unwrap(), Method::BasicCancel { consumer_tag, no_wait } if consumer_tag == reason && no_wait == multiple)
        );
        let f = read(AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: code,
            reply_text: reason.as_str().into(),
            class_id: 50,
            method_id: 10,
        })));
        assert!(matches!(f.method().unwrap(),
            Method::ChannelClose(r) if r == Reason { code, text: &reason, class: 50, method: 10 }));
        let f = read(AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow {
            active: multiple,
        })));
        assert!(matches!(f.method().unwrap(), Method::ChannelFlow { active } if active == multiple));
        let f = read(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
            queue: reason.as_str().into(),
            message_count: tag as u32,
            consumer_count: 7,
        })));
        assert!(matches!(f.method().unwrap(),
            Method::QueueDeclareOk { queue, message_count, consumer_count: 7 } if queue == reason && message_count == tag as u32));
        let f = their_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: code,
                reply_text: reason.as_str().into(),
                class_id: 0,
                method_id: 0,
            })),
        );
        assert!(
            matches!(f.method().unwrap(), Method::ConnectionClose(r) if r.code == code && r.text == reason)
        );
        let f = their_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: reason.as_str().into(),
            })),
        );
        assert!(matches!(f.method().unwrap(), Method::ConnectionBlocked { reason: r } if r == reason));
        let f = their_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
        );
        assert!(matches!(f.method().unwrap(), Method::ConnectionUnblocked));
        let f = their_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: code,
                frame_max: tag as u32,
                heartbeat: 60,
            })),
        );
        assert!(matches!(f.method().unwrap(),
            Method::ConnectionTune(t) if t == Tune { channel_max: code, frame_max: tag as u32, heartbeat: 60 }));
        let props = random_table(&mut rng, 0);
        let f = their_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: props.clone(),
                mechanisms: "PLAIN AMQPLAIN EXTERNAL".into(),
                locales: "en_US".into(),
            })),
        );
        let Method::ConnectionStart {
            version,
            server_properties,
            mechanisms,
            ..
        } = f.method().unwrap()
        else {
            panic!("not a start");
        };
        assert_eq!((version, mechanisms), ((0, 9), &b"PLAIN AMQPLAIN EXTERNAL"[..]));
        assert!(same_table(&server_properties, &props));
        for (class, id) in [
            (
                AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
                super::id::CONNECTION_OPEN_OK,
            ),
            (
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                super::id::CONNECTION_CLOSE_OK,
            ),
            (
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
                super::id::CHANNEL_OPEN_OK,
            ),
            (
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                super::id::CHANNEL_CLOSE_OK,
            ),
            (
                AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                super::id::CONFIRM_SELECT_OK,
            ),
            (
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
                super::id::EXCHANGE_DECLARE_OK,
            ),
            (
                AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                super::id::EXCHANGE_BIND_OK,
            ),
            (
                AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                super::id::QUEUE_BIND_OK,
            ),
            (
                AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                super::id::BASIC_QOS_OK,
            ),
            (
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: "t".into(),
                })),
                super::id::BASIC_CONSUME_OK,
            ),
        ] {
            assert_eq!(read(class).method().unwrap().id(), id);
        }
        let beat = written_there(&AMQPFrame::Heartbeat(0));
        assert_eq!(
            (beat[0].kind, beat[0].channel, beat[0].payload.len()),
            (super::FRAME_HEARTBEAT, 0, 0)
        );
    }
    // An array of values built here is written as amq-protocol reads it.
    let values = [FieldValue::I32(-7), FieldValue::LongStr(b"x")];
    let mut out = Vec::new();
    FieldValue::Array(Array::Values(&values)).encode(&mut out);
    assert_eq!(out, b"A\x00\x00\x00\x0bI\xff\xff\xff\xf9S\x00\x00\x00\x01x");
}
