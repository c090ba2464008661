//! The watch mode: what the node-database watcher costs with many peers,
//! and that its polls, on the blocking pool, do not stall the runtime.

use nodedata::Watcher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swpt_testkit::generate::{write_devnet, DevnetOptions};

/// This thread's CPU time so far (the watcher's polls run where called).
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid clock id and a live timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t);
    }
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Runs `f` on the blocking pool; its wall and CPU time.
async fn timed<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<(T, Duration, Duration)> {
    Ok(tokio::task::spawn_blocking(move || {
        let (wall, cpu) = (Instant::now(), thread_cpu());
        let out = f();
        (out, wall.elapsed(), thread_cpu() - cpu)
    })
    .await?)
}

/// A ticker on the runtime every 1 ms until `stop`: how late it got at
/// worst.
fn lateness_ticker(stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.tick().await;
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            worst = worst.max(last.elapsed().saturating_sub(Duration::from_millis(1)));
            last = Instant::now();
        }
        worst
    })
}

/// One poll of `watcher` on the blocking pool: the watcher back, whether
/// something changed, the poll's wall and CPU time.
async fn poll(mut watcher: Watcher) -> anyhow::Result<(Watcher, bool, Duration, Duration)> {
    let ((watcher, changed), wall, cpu) = timed(move || {
        let changed = watcher.poll();
        (watcher, changed)
    })
    .await?;
    Ok((watcher, changed, wall, cpu))
}

/// Polls `watcher` `polls` times with nothing changed; the mean wall and
/// CPU time of a poll.
async fn idle_polls(mut watcher: Watcher, polls: usize) -> anyhow::Result<(Watcher, Duration, Duration)> {
    let (mut wall_sum, mut cpu_sum) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..polls.max(1) {
        let (w, changed, wall, cpu) = poll(watcher).await?;
        anyhow::ensure!(!changed, "nothing changed, but the poll says so");
        watcher = w;
        wall_sum += wall;
        cpu_sum += cpu;
    }
    let n = polls.max(1) as u32;
    Ok((watcher, wall_sum / n, cpu_sum / n))
}

pub async fn run(peers: usize, polls: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("swpt-watch-{}", std::process::id()));
    eprintln!("generating an AA with {peers} creditors-agent peers");
    let options = DevnetOptions {
        extra_ca_peers: peers,
        ..Default::default()
    };
    let net = write_devnet(&dir, &options)?;
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = lateness_ticker(stop.clone());
    let root = net.aa_dir.clone();
    let (watcher, wall, cpu) = timed(move || Watcher::first(root, vec![])).await?;
    let watcher = watcher?;
    println!("peers: {}", watcher.snapshot().peers.len());
    println!("first load: {:.0} ms wall, {:.0} ms CPU", ms(wall), ms(cpu));
    let (watcher, wall, cpu) = idle_polls(watcher, polls).await?;
    let n = polls.max(1);
    println!(
        "poll, nothing changed: {:.1} ms wall, {:.1} ms CPU (mean of {n})",
        ms(wall),
        ms(cpu)
    );
    // Every peer changed: each re-read.
    for (id, _) in &net.extra_cas {
        let marker = net.aa_dir.join("peers").join(id).join("ACTIVE");
        std::fs::remove_file(&marker)?;
        std::fs::write(&marker, "")?;
    }
    let (_, changed, wall, cpu) = poll(watcher).await?;
    anyhow::ensure!(changed, "every peer changed, but the poll says nothing did");
    println!(
        "poll, every peer changed: {:.0} ms wall, {:.0} ms CPU",
        ms(wall),
        ms(cpu)
    );
    stop.store(true, Ordering::Relaxed);
    let worst = ticker.await?;
    println!(
        "worst lateness of a 1 ms ticker on the runtime meanwhile: {:.2} ms",
        ms(worst)
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
