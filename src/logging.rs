//! Logging as the Python gateway writes it, so that the pipelines built
//! for it (Promtail and Loki parsing `levelname`) keep working: one line
//! per record on standard output,
//!
//! - text: `ASCTIME:LEVELNAME:name:message`, `asctime` as
//!   `%Y-%m-%d %H:%M:%S%z`;
//! - JSON: an object with `asctime` (`%Y-%m-%dT%H:%M:%S%z`), `levelname`
//!   (`DEBUG`, `INFO`, `WARNING`, `ERROR`), `name` and `message`, and our
//!   structured fields (`peer`, `addr`, `delivery_tag`, ...; the spans'
//!   too) as extra top-level keys.
//!
//! `--log-level` filters the gateway's own records (its crates); records
//! of the libraries under it (rustls through the `log` bridge, tokio, ...)
//! are shown from WARNING up. Times are in UTC (`+0000`), as in the
//! containers the gateway runs in.

use std::fmt::Write as _;
use std::io::Write as _;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The crates whose records `--log-level` filters: the libraries and the
/// binaries of this workspace.
const OWN_TARGETS: [&str; 10] = [
    "swpt_gateway",
    "amqp_bridge",
    "nodedata",
    "smp_json",
    "stomp_codec",
    "swpt_server",
    "swpt_client",
    "swpt_drainer",
    "configure_queue",
    "swpt_doctor",
];

/// Sets up logging: `level` is `error`, `warning`, `info` or `debug`;
/// `format` is `text` or `json`.
pub fn init(level: &str, format: &str) {
    let level = match level {
        "error" => LevelFilter::ERROR,
        "warning" => LevelFilter::WARN,
        "debug" => LevelFilter::DEBUG,
        _ => LevelFilter::INFO,
    };
    let filter = OWN_TARGETS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::WARN), |t, own| {
            t.with_target(*own, level)
        });
    let layer = PythonLike {
        json: format == "json",
    }
    .with_filter(filter);
    // `try_init`: a second call (tests) keeps the first set-up.
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Formats records as the Python gateway's `logging` set-up does.
struct PythonLike {
    json: bool,
}

/// The fields of a span, kept in its extensions.
struct SpanFields(Vec<(String, String)>);

/// Collects a record's fields: `message` apart, the others as strings.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.others.push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.others.push((field.name().to_string(), text));
        }
    }
}

impl<S> Layer<S> for PythonLike
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.others));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut extra = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    extra.extend(f.0.iter().cloned());
                }
            }
        }
        extra.extend(fields.others);
        let meta = event.metadata();
        // Records bridged from the `log` crate carry their own target.
        let name = meta.target().replace("::", ".");
        let line = Record {
            level: *meta.level(),
            name: &name,
            message: &fields.message,
            extra: &extra,
        };
        let text = if self.json { line.json() } else { line.text() };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
    }
}

/// One record, ready to be written.
struct Record<'a> {
    level: Level,
    name: &'a str,
    message: &'a str,
    extra: &'a [(String, String)],
}

impl Record<'_> {
    fn levelname(&self) -> &'static str {
        match self.level {
            Level::ERROR => "ERROR",
            Level::WARN => "WARNING",
            Level::INFO => "INFO",
            _ => "DEBUG",
        }
    }

    /// `ASCTIME:LEVELNAME:name:message`, the structured fields after the
    /// message as ` key=value`.
    fn text(&self) -> String {
        let mut line = format!(
            "{}:{}:{}:{}",
            asctime(' '),
            self.levelname(),
            self.name,
            self.message
        );
        for (k, v) in self.extra {
            let _ = write!(line, " {k}={v}");
        }
        line.push('\n');
        line
    }

    fn json(&self) -> String {
        let mut object = serde_json::Map::new();
        object.insert("asctime".into(), asctime('T').into());
        object.insert("levelname".into(), self.levelname().into());
        object.insert("name".into(), self.name.into());
        object.insert("message".into(), self.message.into());
        for (k, v) in self.extra {
            object.entry(k.clone()).or_insert_with(|| v.as_str().into());
        }
        let mut line = serde_json::Value::Object(object).to_string();
        line.push('\n');
        line
    }
}

/// Now, in UTC, as `%Y-%m-%d{sep}%H:%M:%S%z`.
fn asctime(sep: char) -> String {
    let iso = smp_json::Timestamp::now().to_iso();
    let (date, time) = (iso.get(..10).unwrap_or(""), iso.get(11..19).unwrap_or(""));
    format!("{date}{sep}{time}+0000")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_look_like_the_python_gateways() {
        let extra = vec![("peer".to_string(), "1234abcd".to_string())];
        let r = Record {
            level: Level::WARN,
            name: "swpt_gateway.server",
            message: "a \"quoted\" text",
            extra: &extra,
        };
        let text = r.text();
        let parts: Vec<&str> = text.trim_end().splitn(4, ':').collect();
        // The time holds two colons of its own: date and hour, then the rest.
        assert!(
            text.ends_with(":WARNING:swpt_gateway.server:a \"quoted\" text peer=1234abcd\n"),
            "{text}"
        );
        assert_eq!(parts[0].len(), 13, "{text}");
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["levelname"], "WARNING");
        assert_eq!(v["name"], "swpt_gateway.server");
        assert_eq!(v["message"], "a \"quoted\" text");
        assert_eq!(v["peer"], "1234abcd");
        let t = v["asctime"].as_str().unwrap();
        assert_eq!(t.len(), "2026-01-01T00:00:00+0000".len(), "{t}");
        assert!(t.ends_with("+0000") && t.as_bytes()[10] == b'T', "{t}");
    }
}
