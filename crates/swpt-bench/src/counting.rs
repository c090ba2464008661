//! The counting mode: what the metrics cost per message, measured on the
//! very calls the server and the client make for one message (with the
//! metrics on), and what one scrape of `/metrics` costs.

use std::hint::black_box;
use std::time::{Duration, Instant};
use swpt_gateway::metrics::{self, InFlight, PeerTypes, SendCount};

pub fn run(n: u64) -> anyhow::Result<()> {
    let m = metrics::serve();
    let mut types = m.peer_types("1234abcd");
    let link = m.link("1234abcd", "bench.to_aa");
    let n = n.max(1);
    let started = Instant::now();
    for _ in 0..n {
        // The server: a SEND received, published, confirmed.
        let t = PeerTypes::index(black_box("PrepareTransfer"));
        types.inc(SendCount::Received, t);
        let in_flight = InFlight::start();
        in_flight.confirmed();
        types.inc(SendCount::Published, t);
        // The client: a SEND sent, receipted, acked.
        let sent = Instant::now();
        link.sent.inc();
        link.receipt_seconds.observe(sent.elapsed().as_secs_f64());
        link.acked.inc();
    }
    let per_message = started.elapsed().as_nanos() as f64 / n as f64;
    let scrapes = 100;
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..scrapes {
        bytes = black_box(m.render(true)).len();
    }
    let per_scrape: Duration = started.elapsed() / scrapes;
    println!("counting one message (server and client calls together): {per_message:.0} ns");
    println!("one /metrics page ({bytes} bytes, process metrics included): {per_scrape:?}");
    Ok(())
}
