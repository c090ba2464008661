//! `swpt-client --links FILE`: many links in one process.
//!
//! ```text
//!  FILE ("PEER QUEUE" lines) ──Watcher──> supervisor ──start/stop──> one task per link
//!                                                                    (serve_link, as PEER QUEUE)
//!  one SharedConnection ──one channel per link──> RabbitMQ
//! ```
//!
//! Every line is an independent link with its own back-off,
//! dead-lettering, watchdog and receipts; the links share the node
//! database's watcher and one AMQP connection. The file is followed with
//! the node database (the watcher stamps it, SIGHUP re-reads it): an
//! added line starts a link, a removed one ends it gracefully (DISCONNECT
//! with receipt, as on SIGTERM). A link that fails for good (its queue is
//! missing, say) is logged and tried again later; it never stops the
//! others.

use super::{serve_link, start, ClientSettings, FatalError, LinkId, Shared};
use crate::shutdown::Shutdown;
use amqp_bridge::SharedConnection;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

/// How long a link that failed for good waits before it is tried again.
const RETRY_FAILED_LINK: Duration = Duration::from_secs(30);

/// Parses a links file: one `PEER QUEUE` per line; `#` starts a comment;
/// blank lines are skipped. An error names the line.
pub fn parse_links(text: &str) -> Result<BTreeSet<LinkId>, String> {
    let mut links = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let [peer, queue] = words[..] else {
            return Err(format!(
                "line {}: expected \"PEER QUEUE\", found \"{line}\"",
                i + 1
            ));
        };
        if !nodedata::is_valid_node_id(peer) {
            return Err(format!("line {}: invalid peer node ID \"{peer}\"", i + 1));
        }
        if queue.len() > 255 {
            return Err(format!("line {}: queue name longer than 255 bytes", i + 1));
        }
        links.insert(LinkId {
            peer: peer.to_string(),
            queue: queue.to_string(),
        });
    }
    Ok(links)
}

fn read_links(file: &Path) -> anyhow::Result<BTreeSet<LinkId>> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    parse_links(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

/// Runs every link of `file` until shutdown, following the file.
pub async fn run_links(s: ClientSettings, file: PathBuf, mut shutdown: Shutdown) -> Result<(), FatalError> {
    let wanted = read_links(&file).map_err(super::config_error)?;
    let nodedata = start(&s, vec![file.clone()]).await?;
    let broker = SharedConnection::new(s.node.broker());
    let drain_wait = s.node.internal.drain_wait();
    let shared = Arc::new(Shared { s, nodedata, broker });
    let mut files_generation = shared.nodedata.borrow().files_generation;
    // The running links, each with the switch that ends it.
    let mut running: HashMap<LinkId, watch::Sender<bool>> = HashMap::new();
    let mut tasks = JoinSet::new();
    update(&shared, &mut running, &mut tasks, wanted);
    let mut nodedata = shared.nodedata.clone();
    loop {
        tokio::select! {
            _ = shutdown.requested() => break,
            changed = nodedata.changed() => {
                if changed.is_err() {
                    break;
                }
                let generation = nodedata.borrow_and_update().files_generation;
                if generation != files_generation {
                    files_generation = generation;
                    match read_links(&file) {
                        Ok(wanted) => update(&shared, &mut running, &mut tasks, wanted),
                        Err(e) => tracing::error!("{e:#}; keeping the links as they are"),
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    for stop in running.values() {
        let _ = stop.send(true);
    }
    // Each link drains within `drain_wait`; then what is left is cut.
    let drained = tokio::time::timeout(drain_wait + Duration::from_millis(500), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.shutdown().await;
    }
    shared.broker.close().await;
    Ok(())
}

/// Starts the links newly `wanted`, stops those no longer wanted.
fn update(
    shared: &Arc<Shared>,
    running: &mut HashMap<LinkId, watch::Sender<bool>>,
    tasks: &mut JoinSet<()>,
    wanted: BTreeSet<LinkId>,
) {
    running.retain(|id, stop| {
        let keep = wanted.contains(id);
        if !keep {
            tracing::info!("link {id} removed from the links file; ending it");
            let _ = stop.send(true);
        }
        keep
    });
    let mut started = 0;
    for id in wanted {
        if running.contains_key(&id) {
            continue;
        }
        let (stop, stopped) = watch::channel(false);
        let span = tracing::info_span!("link", peer = %id.peer, queue = %id.queue);
        tasks.spawn(supervise(shared.clone(), id.clone(), Shutdown::new(stopped)).instrument(span));
        running.insert(id, stop);
        started += 1;
    }
    if started > 0 {
        tracing::info!("{started} links started; {} running", running.len());
    }
}

/// Runs one link; one that fails for good is said and tried again later,
/// until it is removed or the process stops.
async fn supervise(shared: Arc<Shared>, id: LinkId, mut shutdown: Shutdown) {
    loop {
        match serve_link(&shared, &id, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!("link {id} failed: {e:#}; trying again in {RETRY_FAILED_LINK:?}");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_FAILED_LINK) => {}
                    _ = shutdown.requested() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_files() {
        let links = parse_links("# peers\n1234abcd q1\n\n  5678ef00   q2  # second\n1234abcd q1\n").unwrap();
        let got: Vec<String> = links.iter().map(|l| l.to_string()).collect();
        assert_eq!(got, ["1234abcd q1", "5678ef00 q2"]);
        assert!(parse_links("").unwrap().is_empty());
        let e = parse_links("1234abcd q1\n1234abcd\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = parse_links("1234abcd q1 extra\n").unwrap_err();
        assert!(e.contains("PEER QUEUE"), "{e}");
        let e = parse_links("../etc q1\n").unwrap_err();
        assert!(e.contains("invalid peer"), "{e}");
    }
}
