//! The one place where an SMP [`Publication`] (what `smp-json` decided to
//! publish) becomes an AMQP [`OutMessage`] (what `amqp-bridge` sends):
//! the server and the drainer publish what [`out_message`] makes, and the
//! benchmark builds its like-for-like messages with it too.

use amqp_bridge::{HeaderValue, OutMessage};
use smp_json::Publication;

/// The AMQP message for `p`, to `exchange`.
pub fn out_message<'a>(exchange: &'a str, p: &'a Publication) -> OutMessage<'a> {
    let headers = p
        .headers
        .iter()
        .map(|(name, value)| {
            let value = match value {
                smp_json::HeaderValue::Str(s) => HeaderValue::Str(s.clone()),
                smp_json::HeaderValue::Int(i) => HeaderValue::Int(*i),
                smp_json::HeaderValue::Bool(b) => HeaderValue::Bool(*b),
            };
            (*name, value)
        })
        .collect();
    OutMessage {
        exchange,
        routing_key: &p.routing_key,
        msg_type: p.msg_type.as_str(),
        body: &p.body,
        headers,
    }
}
