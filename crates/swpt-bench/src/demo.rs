//! The demo: a local AA + CA network; messages published on the CA side
//! arrive on the AA side, with a live count and a summary.

use crate::gateway::{gateway, start_client, ARRIVED};
use crate::traffic::{arrivals, fill, Progress};
use std::time::{Duration, Instant};
use swpt_testkit::broker::CA_OUT_KEY;

/// How long the gateway has to stop on SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

pub async fn run(broker: &str, count: u64, keep: bool) -> anyhow::Result<()> {
    let conn = swpt_testkit::broker::connect(broker).await?;
    let ch = conn.create_channel().await?;
    let dir = std::env::current_dir()?.join("demo-net");
    eprintln!("generating a test network in {}", dir.display());
    let g = gateway(broker, &ch, dir, 100, false).await?;
    eprintln!(
        "AA {} serving; CA {} sending; publishing {count} PrepareTransfer messages",
        g.net.aa_id, g.net.ca_id
    );
    let pub_ch = conn.create_channel().await?;
    fill(&pub_ch, "creditors_out", CA_OUT_KEY, count, 100).await?;
    let start = Instant::now();
    let mut client = start_client(&g, broker, 100)?;
    let span = arrivals(&ch, ARRIVED, count, Some(Progress::new(count))).await?;
    let secs = (span.last - start).as_secs_f64();
    println!("messages: {count}");
    println!("seconds: {secs:.2}");
    println!("messages per second: {:.0}", count as f64 / secs);
    if keep {
        eprintln!("the gateway keeps running (network in demo-net/); Ctrl-C stops it");
        let _ = tokio::signal::ctrl_c().await;
    }
    client.stop(GRACE);
    let mut server = g.server;
    server.stop(GRACE);
    Ok(())
}
