//! What the gateway counts, for Prometheus (`GET /metrics`, see
//! [`crate::http`]).
//!
//! One process-wide [`Metrics`], made on first use ([`get`]) and always
//! counting, so that no call site asks whether metrics are on; the HTTP
//! listener, when on, serves it ([`serve`]). Counting is atomics on handles
//! looked up once per connection or link ([`PeerTypes`], [`LinkCounters`]),
//! never a label lookup per message. Label values are bounded: peers
//! (node IDs), queues, the SMP message types (`MessageType::ALL`; anything else is
//! `other`) and a few fixed reasons; never message IDs.
//!
//! Every series the process knows of exists from the start, at zero:
//! the fixed reasons when the server starts ([`Metrics::server_started`]),
//! a peer's SEND series when it connects, a link's when it starts; a
//! peer's series are removed when it stops being active in the node
//! database ([`watch_certificates`] sees every change), a link's when it
//! ends. So `rate()` and `absent()` see a peer that has never sent.
//!
//! Certificate expiry gauges are computed when scraped, from what
//! [`watch_certificates`] last read (own certificate file, every peer's
//! root and sub-CA certificate in the node database).

mod expiry;
mod handshake;

pub use expiry::watch_certificates;
use expiry::NotAfter;
pub use handshake::handshake_reason;
use nodedata::Snapshot;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use smp_json::MessageType;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static METRICS: OnceLock<Metrics> = OnceLock::new();
static SERVED: AtomicBool = AtomicBool::new(false);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// The HTTP listener is on: what only a scrape shows (the certificate
/// expiry gauges) is kept from now on.
pub fn serve() -> &'static Metrics {
    SERVED.store(true, Ordering::Relaxed);
    get()
}

/// Whether the metrics are served.
pub fn served() -> bool {
    SERVED.load(Ordering::Relaxed)
}

/// The buckets of the latency histograms (seconds): 0.5 ms to 20 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0,
];

/// The label value of a message type: one of `MessageType::ALL`, or `other`.
const TYPE_LABELS: usize = MessageType::ALL.len() + 1;

fn type_index(msg_type: &str) -> usize {
    MessageType::ALL
        .iter()
        .position(|t| t.as_str() == msg_type)
        .unwrap_or(MessageType::ALL.len())
}

fn type_label(index: usize) -> &'static str {
    MessageType::ALL.get(index).map_or("other", |t| t.as_str())
}

/// Every reason [`handshake_reason`] gives, and `timeout`.
pub const HANDSHAKE_REASONS: [&str; 8] = [
    "closed",
    "certificate",
    "no_certificate",
    "incompatible",
    "alert",
    "protocol",
    "io",
    "timeout",
];

/// Every reason the server refuses a connection after its handshake for.
pub const REFUSAL_REASONS: [&str; 3] = ["invalid_subject", "unknown_peer", "too_many_connections"];

/// Every metric of the gateway, by the part that counts it.
pub struct Metrics {
    registry: Registry,
    server: ServerFamilies,
    confirms: ConfirmFamilies,
    links: LinkFamilies,
    drainer: DrainerFamilies,
    expiry: ExpiryFamilies,
    ready: IntGauge,
    not_after: Mutex<NotAfter>,
    /// Says whether RabbitMQ blocks publishing now (the publisher's state).
    blocked_probe: Mutex<Option<BlockedProbe>>,
    /// The peers with server series, and the links (peer, queue) with
    /// client series: what [`Metrics::forget_inactive`] may remove.
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    peers: HashSet<String>,
    links: HashSet<(String, String)>,
}

/// Why RabbitMQ blocks publishing, if it does.
pub type BlockedProbe = Box<dyn Fn() -> Option<String> + Send>;

/// The server's: connections, SENDs, handshakes.
struct ServerFamilies {
    /// Open server connections, by peer.
    connections: IntGaugeVec,
    sends_received: IntCounterVec,
    sends_published: IntCounterVec,
    sends_refused: IntCounterVec,
    /// TLS handshakes that failed, by reason (see [`handshake_reason`]).
    handshake_failures: IntCounterVec,
    /// Connections closed after the handshake, before a session, by reason.
    connections_refused: IntCounterVec,
}

/// Publishes (server and drainer) waiting for RabbitMQ's confirmation, and
/// how long confirmations take.
struct ConfirmFamilies {
    pending: IntGauge,
    seconds: Histogram,
    /// 1 while RabbitMQ blocks publishing (a memory or disk alarm),
    /// read from the publisher at each scrape.
    blocked: IntGauge,
}

/// 1 while the program is ready (`/readyz` answers 200), set at each
/// scrape: what alerts can see of readiness.
fn ready_gauge(r: &Registry) -> IntGauge {
    add(
        r,
        IntGauge::new(
            "swpt_ready",
            "1 while the program is ready (/readyz answers 200), else 0.",
        ),
    )
}

/// The client's, by link (peer and queue).
struct LinkFamilies {
    up: IntGaugeVec,
    sent: IntCounterVec,
    acked: IntCounterVec,
    dead_lettered: IntCounterVec,
    reconnects: IntCounterVec,
    receipt_seconds: HistogramVec,
}

/// The drainer's, by peer and queue.
struct DrainerFamilies {
    consumed: IntCounterVec,
    replied: IntCounterVec,
}

/// Certificate expiry, computed at each scrape from [`NotAfter`].
struct ExpiryFamilies {
    own: Gauge,
    peer: GaugeVec,
}

/// Registers `metric` (names are fixed and unique: a failure is a bug).
fn add<C: Collector + Clone + 'static>(registry: &Registry, metric: Result<C, prometheus::Error>) -> C {
    let metric = metric.expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    add(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    add(r, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn histogram(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
}

const PT: &[&str] = &["peer", "type"];
const PQ: &[&str] = &["peer", "queue"];

impl ServerFamilies {
    fn new(r: &Registry) -> ServerFamilies {
        ServerFamilies {
            connections: gauge(
                r,
                "swpt_server_connections",
                "Open server connections, by peer.",
                &["peer"],
            ),
            sends_received: counter(r, "swpt_server_sends_received_total", "SEND frames received.", PT),
            sends_published: counter(
                r,
                "swpt_server_sends_published_total",
                "SEND frames published and confirmed by RabbitMQ.",
                PT,
            ),
            sends_refused: counter(
                r,
                "swpt_server_sends_refused_total",
                "SEND frames refused with an ERROR.",
                PT,
            ),
            handshake_failures: counter(
                r,
                "swpt_tls_handshake_failures_total",
                "Failed TLS handshakes of the server, by reason.",
                &["reason"],
            ),
            connections_refused: counter(
                r,
                "swpt_server_connections_refused_total",
                "Connections refused after the TLS handshake, by reason.",
                &["reason"],
            ),
        }
    }
}

impl ConfirmFamilies {
    fn new(r: &Registry) -> ConfirmFamilies {
        ConfirmFamilies {
            pending: add(
                r,
                IntGauge::new(
                    "swpt_confirms_pending",
                    "Publishes waiting for RabbitMQ's confirmation.",
                ),
            ),
            seconds: add(
                r,
                Histogram::with_opts(histogram(
                    "swpt_publish_confirm_seconds",
                    "From publish to RabbitMQ's confirmation.",
                )),
            ),
            blocked: add(
                r,
                IntGauge::new(
                    "swpt_broker_blocked",
                    "1 while RabbitMQ blocks publishing (a memory or disk alarm), else 0.",
                ),
            ),
        }
    }
}

impl LinkFamilies {
    fn new(r: &Registry) -> LinkFamilies {
        LinkFamilies {
            up: gauge(
                r,
                "swpt_client_link_up",
                "1 while the link is established, else 0.",
                PQ,
            ),
            sent: counter(r, "swpt_client_sent_total", "Messages sent (SEND).", PQ),
            acked: counter(r, "swpt_client_acked_total", "Messages receipted and acked.", PQ),
            dead_lettered: counter(
                r,
                "swpt_client_dead_lettered_total",
                "Messages rejected to the dead-letter queue.",
                PQ,
            ),
            reconnects: counter(
                r,
                "swpt_client_reconnects_total",
                "Links that ended and are retried.",
                PQ,
            ),
            receipt_seconds: add(
                r,
                HistogramVec::new(
                    histogram("swpt_client_receipt_seconds", "From SEND to its RECEIPT."),
                    PQ,
                ),
            ),
        }
    }
}

impl DrainerFamilies {
    fn new(r: &Registry) -> DrainerFamilies {
        DrainerFamilies {
            consumed: counter(r, "swpt_drainer_consumed_total", "Messages consumed.", PQ),
            replied: counter(
                r,
                "swpt_drainer_replied_total",
                "Replies published and confirmed.",
                PQ,
            ),
        }
    }
}

impl ExpiryFamilies {
    fn new(r: &Registry) -> ExpiryFamilies {
        let peer = Opts::new(
            "swpt_peer_certificate_expiry_seconds",
            "Seconds until a peer's certificate expires (root, or the sub-CA it issued for us).",
        );
        ExpiryFamilies {
            own: add(
                r,
                Gauge::new(
                    "swpt_own_certificate_expiry_seconds",
                    "Seconds until our server certificate expires.",
                ),
            ),
            peer: add(r, GaugeVec::new(peer, &["peer", "certificate"])),
        }
    }
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        // The standard process metrics, under their usual names
        // (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
        // `process_open_fds`...), which generic dashboards expect.
        let process = prometheus::process_collector::ProcessCollector::for_self();
        r.register(Box::new(process)).expect("metric names are unique");
        Metrics {
            server: ServerFamilies::new(&r),
            confirms: ConfirmFamilies::new(&r),
            links: LinkFamilies::new(&r),
            drainer: DrainerFamilies::new(&r),
            expiry: ExpiryFamilies::new(&r),
            ready: ready_gauge(&r),
            not_after: Mutex::new(NotAfter::default()),
            blocked_probe: Mutex::new(None),
            known: Mutex::new(Known::default()),
            registry: r,
        }
    }

    /// The server's fixed series, at zero: every handshake failure and
    /// refusal reason.
    pub fn server_started(&self) {
        for reason in HANDSHAKE_REASONS {
            self.server.handshake_failures.with_label_values(&[reason]);
        }
        for reason in REFUSAL_REASONS {
            self.server.connections_refused.with_label_values(&[reason]);
        }
    }

    /// Removes the series of the peers (server) and links (client) whose
    /// peer is not active in `snapshot`.
    fn forget_inactive(&self, snapshot: &Snapshot) {
        let active = |peer: &str| snapshot.active_peer(peer).is_some();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.peers.retain(|peer| {
            if active(peer) {
                return true;
            }
            let _ = self.server.connections.remove_label_values(&[peer]);
            for index in 0..TYPE_LABELS {
                let labels = [peer.as_str(), type_label(index)];
                for family in [
                    &self.server.sends_received,
                    &self.server.sends_published,
                    &self.server.sends_refused,
                ] {
                    let _ = family.remove_label_values(&labels);
                }
            }
            false
        });
        let gone: Vec<_> = known
            .links
            .iter()
            .filter(|(peer, _)| !active(peer))
            .cloned()
            .collect();
        drop(known);
        for (peer, queue) in gone {
            self.forget_link(&peer, &queue);
        }
    }

    /// Removes the series of a link (it ended, or its peer is not active).
    pub fn forget_link(&self, peer: &str, queue: &str) {
        let l = &[peer, queue];
        let _ = self.links.up.remove_label_values(l);
        for family in [
            &self.links.sent,
            &self.links.acked,
            &self.links.dead_lettered,
            &self.links.reconnects,
        ] {
            let _ = family.remove_label_values(l);
        }
        let _ = self.links.receipt_seconds.remove_label_values(l);
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.links.remove(&(peer.to_string(), queue.to_string()));
    }

    /// Where `swpt_broker_blocked` is read from at each scrape.
    pub fn watch_blocked(&self, probe: BlockedProbe) {
        *self.blocked_probe.lock().unwrap_or_else(|e| e.into_inner()) = Some(probe);
    }

    /// The Prometheus text exposition of every metric, the expiry gauges
    /// computed now, `swpt_ready` from `ready`.
    pub fn render(&self, ready: bool) -> String {
        self.update_expiry(unix_now());
        self.ready.set(i64::from(ready));
        if let Some(probe) = &*self.blocked_probe.lock().unwrap_or_else(|e| e.into_inner()) {
            self.confirms.blocked.set(i64::from(probe().is_some()));
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("cannot encode the metrics: {e}");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn update_expiry(&self, now: i64) {
        let not_after = self.not_after.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(own) = not_after.own {
            self.expiry.own.set((own - now) as f64);
        }
        self.expiry.peer.reset();
        for (peer, kind, at) in &not_after.peers {
            self.expiry
                .peer
                .with_label_values(&[peer.as_str(), kind])
                .set((at - now) as f64);
        }
    }

    /// The per-type SEND counters of one server connection, every series
    /// at zero from now on.
    pub fn peer_types(&'static self, peer: &str) -> PeerTypes {
        let cells = |family: &IntCounterVec| {
            std::array::from_fn(|index| family.with_label_values(&[peer, type_label(index)]))
        };
        let counters = PeerTypes {
            received: cells(&self.server.sends_received),
            published: cells(&self.server.sends_published),
            refused: cells(&self.server.sends_refused),
        };
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.peers.insert(peer.to_string());
        counters
    }

    /// The counters of one client link of `peer` and `queue`, every series
    /// at zero from now on.
    pub fn link(&'static self, peer: &str, queue: &str) -> LinkCounters {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.links.insert((peer.to_string(), queue.to_string()));
        drop(known);
        let l = &[peer, queue];
        LinkCounters {
            up: self.links.up.with_label_values(l),
            sent: self.links.sent.with_label_values(l),
            acked: self.links.acked.with_label_values(l),
            dead_lettered: self.links.dead_lettered.with_label_values(l),
            reconnects: self.links.reconnects.with_label_values(l),
            receipt_seconds: self.links.receipt_seconds.with_label_values(l),
        }
    }

    /// The drainer's counters for `peer` and `queue`: consumed, replied.
    pub fn drainer(&'static self, peer: &str, queue: &str) -> (IntCounter, IntCounter) {
        let l = &[peer, queue];
        (
            self.drainer.consumed.with_label_values(l),
            self.drainer.replied.with_label_values(l),
        )
    }
}

/// One server connection's SEND counters by message type.
pub struct PeerTypes {
    received: [IntCounter; TYPE_LABELS],
    published: [IntCounter; TYPE_LABELS],
    refused: [IntCounter; TYPE_LABELS],
}

/// Which of a connection's counters.
#[derive(Clone, Copy)]
pub enum SendCount {
    Received,
    Published,
    Refused,
}

impl PeerTypes {
    /// The label index of a SEND's `type` header.
    pub fn index(msg_type: &str) -> usize {
        type_index(msg_type)
    }

    /// Counts one SEND of the type at `index`.
    pub fn inc(&mut self, what: SendCount, index: usize) {
        let cells = match what {
            SendCount::Received => &self.received,
            SendCount::Published => &self.published,
            SendCount::Refused => &self.refused,
        };
        if let Some(cell) = cells.get(index) {
            cell.inc();
        }
    }
}

/// One client link's series.
#[derive(Clone)]
pub struct LinkCounters {
    pub up: IntGauge,
    pub sent: IntCounter,
    pub acked: IntCounter,
    pub dead_lettered: IntCounter,
    pub reconnects: IntCounter,
    pub receipt_seconds: Histogram,
}

/// A publish waiting for its confirmation: counted in
/// `swpt_confirms_pending` until dropped; [`InFlight::confirmed`]
/// records its latency.
pub struct InFlight(Instant);

impl InFlight {
    pub fn start() -> InFlight {
        get().confirms.pending.inc();
        InFlight(Instant::now())
    }

    /// RabbitMQ confirmed the publish.
    pub fn confirmed(self) {
        get().confirms.seconds.observe(self.0.elapsed().as_secs_f64());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        get().confirms.pending.dec();
    }
}

/// Counts a failed handshake (`timeout`, or the reason of `e`).
pub fn handshake_failed(reason: &'static str) {
    get().server.handshake_failures.with_label_values(&[reason]).inc();
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A gauge raised by one for as long as the guard lives (an open
/// connection, an established link).
pub struct Raised(IntGauge);

impl Raised {
    pub fn new(gauge: IntGauge) -> Raised {
        gauge.inc();
        Raised(gauge)
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An open server connection of `peer`, counted while it lives.
pub fn server_connection(peer: &str) -> Raised {
    Raised::new(get().server.connections.with_label_values(&[peer]))
}

/// Counts a connection refused after its handshake.
pub fn connection_refused(reason: &'static str) {
    get()
        .server
        .connections_refused
        .with_label_values(&[reason])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metric families a page shows (`# TYPE` lines).
    fn families(page: &str) -> std::collections::HashSet<String> {
        page.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_family_shows_and_the_dashboard_names_only_those() {
        let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let mut types = m.peer_types("1234abcd");
        for what in [SendCount::Received, SendCount::Published, SendCount::Refused] {
            types.inc(what, PeerTypes::index("AccountUpdate"));
        }
        types.inc(SendCount::Refused, PeerTypes::index("NoSuchType"));
        let link = m.link("1234abcd", "q");
        link.receipt_seconds.observe(0.001);
        let (consumed, replied) = m.drainer("1234abcd", "q");
        consumed.inc();
        replied.inc();
        m.server.handshake_failures.with_label_values(&["timeout"]).inc();
        m.server
            .connections_refused
            .with_label_values(&["unknown_peer"])
            .inc();
        m.server.connections.with_label_values(&["1234abcd"]).inc();
        m.not_after
            .lock()
            .unwrap()
            .peers
            .push(("1234abcd".into(), "root", unix_now() + 100));
        m.not_after.lock().unwrap().own = Some(unix_now() + 50);
        m.confirms.seconds.observe(0.002);
        let page = m.render(true);
        assert!(
            page.contains("swpt_server_sends_refused_total{peer=\"1234abcd\",type=\"other\"} 1"),
            "{page}"
        );
        assert!(page.contains("swpt_server_sends_received_total{peer=\"1234abcd\",type=\"AccountUpdate\"} 1"));
        let own = page
            .lines()
            .find_map(|l| l.strip_prefix("swpt_own_certificate_expiry_seconds "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!((49.0..=50.0).contains(&own), "{own}");
        let shown = families(&page);
        assert!(shown.contains("process_resident_memory_bytes"), "{shown:?}");

        // Every metric the Grafana dashboard queries is one we expose.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/swpt-gateway.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut named = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if !(word.starts_with("swpt_") || word.starts_with("process_")) {
                        continue;
                    }
                    let family = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    assert!(shown.contains(family), "the dashboard's {word} is not exposed");
                    named += 1;
                }
            }
        }
        assert!(named >= 15, "{named}");

        // And every metric the alerting rules name.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/swpt-rules.yml");
        let rules = std::fs::read_to_string(path).unwrap();
        let words = rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        let named: Vec<&str> = words.filter(|w| w.starts_with("swpt_")).collect();
        for word in &named {
            assert!(shown.contains(*word), "the rules' {word} is not exposed");
        }
        assert!(named.len() >= 10, "{named:?}");
    }
}
