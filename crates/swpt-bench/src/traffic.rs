//! The bench's traffic through its own AMQP client (lapin): filling a
//! queue with confirms, and counting arrivals, with a live count on the
//! terminal.

use anyhow::bail;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Channel;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use swpt_testkit::broker::{auto_ack_consumer, persistent, prepare_transfer_body};

/// Publishes `n` messages with confirms, `window` in flight.
pub async fn fill(ch: &Channel, exchange: &str, key: &str, n: u64, window: usize) -> anyhow::Result<()> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut pending = FuturesOrdered::new();
    for i in 0..n {
        if pending.len() >= window.max(1) {
            if let Some(r) = pending.next().await {
                let _: lapin::publisher_confirm::Confirmation = r?;
            }
        }
        let c = ch
            .basic_publish(
                exchange,
                key,
                BasicPublishOptions::default(),
                &prepare_transfer_body(i as i64),
                persistent("PrepareTransfer"),
            )
            .await?;
        pending.push_back(c);
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}

/// Prints a live count: a bar on a terminal, plain lines otherwise.
pub struct Progress {
    total: u64,
    tty: bool,
    last_line: u64,
}

impl Progress {
    pub fn new(total: u64) -> Progress {
        Progress {
            total,
            tty: std::io::stderr().is_terminal(),
            last_line: 0,
        }
    }
    pub fn show(&mut self, done: u64) {
        if self.tty {
            let width = 40;
            let filled = (done * width / self.total.max(1)) as usize;
            eprint!(
                "\r[{}{}] {done}/{}",
                "#".repeat(filled),
                " ".repeat(width as usize - filled),
                self.total
            );
            let _ = std::io::stderr().flush();
            if done == self.total {
                eprintln!();
            }
        } else if done == self.total || done >= self.last_line + self.total.div_ceil(10) {
            eprintln!("arrived: {done}/{}", self.total);
            self.last_line = done;
        }
    }
}

/// The times of the first and the last of `n` arrivals.
pub struct Span {
    pub first: Instant,
    pub last: Instant,
}

impl Span {
    /// Messages per second from the first arrival to the last: start-up
    /// (process start, TLS handshake, consumer set-up) is left out.
    pub fn rate(&self, n: u64) -> f64 {
        n.saturating_sub(1) as f64 / (self.last - self.first).as_secs_f64().max(1e-9)
    }
}

/// Waits for `n` arrivals in `queue`.
pub async fn arrivals(
    ch: &Channel,
    queue: &str,
    n: u64,
    mut progress: Option<Progress>,
) -> anyhow::Result<Span> {
    let mut consumer = auto_ack_consumer(ch, queue).await?;
    count_arrivals(&mut consumer, n, progress.as_mut()).await
}

/// Counts `n` deliveries of an auto-ack consumer.
pub async fn count_arrivals(
    consumer: &mut lapin::Consumer,
    n: u64,
    mut progress: Option<&mut Progress>,
) -> anyhow::Result<Span> {
    let mut done = 0;
    let mut first = None;
    while done < n {
        match tokio::time::timeout(Duration::from_secs(60), consumer.next()).await {
            Ok(Some(Ok(_))) => {
                first.get_or_insert_with(Instant::now);
                done += 1;
                if let Some(p) = progress.as_mut() {
                    p.show(done);
                }
            }
            Ok(_) => bail!("the consumer ended"),
            Err(_) => bail!("no message arrived for 60 s ({done} of {n})"),
        }
    }
    let last = Instant::now();
    Ok(Span {
        first: first.unwrap_or(last),
        last,
    })
}
