//! The gateway's publications in lapin's terms, for the limit loop
//! (consume and republish as the gateway's server does) of the bench's own
//! AMQP client ([`swpt_testkit::broker`]).

use amqp_bridge::{HeaderValue, OutMessage, SmallestInt};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// How the gateway publishes: mandatory.
pub const PUBLISH_OPTIONS: BasicPublishOptions = BasicPublishOptions {
    mandatory: true,
    immediate: false,
};

/// The properties the gateway publishes `m` with, in lapin's types.
pub fn properties(m: &OutMessage<'_>) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in &m.headers {
        let v = match value {
            HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
            HeaderValue::Int(i) => match SmallestInt::of(*i) {
                SmallestInt::I8(v) => AMQPValue::ShortShortInt(v),
                SmallestInt::I16(v) => AMQPValue::ShortInt(v),
                SmallestInt::U16(v) => AMQPValue::ShortUInt(v),
                SmallestInt::I32(v) => AMQPValue::LongInt(v),
                SmallestInt::U32(v) => AMQPValue::LongUInt(v),
                SmallestInt::I64(v) => AMQPValue::LongLongInt(v),
            },
        };
        table.insert(ShortString::from(*name), v);
    }
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_type(ShortString::from(m.msg_type))
        .with_delivery_mode(2)
        .with_app_id(ShortString::from("swpt_stomp"))
        .with_headers(table)
}
