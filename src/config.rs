//! Command-line and environment settings shared by the binaries (SPEC
//! section 10). Flags win over environment variables; internal settings
//! come from the environment only.

use clap::Args;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Options every binary takes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// The node database: a file:///absolute/dir URL.
    #[arg(
        short = 'n',
        long,
        env = "SWPT_NODEDATA_URL",
        default_value = "file:///var/lib/swpt-nodedata"
    )]
    pub nodedata_url: String,
    /// The RabbitMQ broker.
    #[arg(
        short = 'u',
        long,
        env = "PROTOCOL_BROKER_URL",
        default_value = "amqp://guest:guest@localhost:5672"
    )]
    pub broker_url: String,
    /// Log level: error, warning, info or debug.
    #[arg(short = 'l', long, env = "APP_LOG_LEVEL", default_value = "info", value_parser = ["error", "warning", "info", "debug"])]
    pub log_level: String,
    /// Log format: text or json (one JSON object per line).
    #[arg(short = 'f', long, env = "APP_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl CommonArgs {
    /// What every program does first: logging as asked, the CPU pinning
    /// of APP_CPU_AFFINITY, then the internal settings (APP_*).
    pub fn start(&self) -> anyhow::Result<Internal> {
        init_logging(&self.log_level, &self.log_format);
        apply_cpu_affinity()?;
        Internal::from_env()
    }
}

/// The server's certificate and key (server and client).
#[derive(Args, Debug, Clone)]
pub struct CertArgs {
    /// The node's server certificate (PEM).
    #[arg(
        short = 'c',
        long,
        env = "SWPT_SERVER_CERT",
        default_value = "/etc/swpt/server.crt"
    )]
    pub server_cert: PathBuf,
    /// The unencrypted private key of the server certificate (PEM).
    #[arg(
        short = 'k',
        long,
        env = "SWPT_SERVER_KEY",
        default_value = "/secrets/swpt-server.key"
    )]
    pub server_key: PathBuf,
}

fn d5() -> f64 {
    5.0
}
fn d5000() -> usize {
    5000
}
fn d600() -> f64 {
    600.0
}
fn d3600() -> f64 {
    3600.0
}
fn d10() -> f64 {
    10.0
}
fn d20() -> f64 {
    20.0
}
fn d100() -> u32 {
    100
}
fn d10u() -> usize {
    10
}
fn hb_send() -> u64 {
    5000
}
fn hb_recv() -> u64 {
    30000
}
fn delay() -> u64 {
    10000
}
fn check() -> u64 {
    5000
}
fn connect_ms() -> u64 {
    10000
}

/// Internal settings (environment only). The `APP_STOMP_*_MS` ones exist
/// so tests can shorten the STOMP timing constants.
#[derive(Deserialize, Debug, Clone)]
pub struct Internal {
    #[serde(default = "d5")]
    pub app_ssl_handshake_timeout: f64,
    #[serde(default = "d5000")]
    pub app_max_cached_peers: usize,
    #[serde(default = "d600")]
    pub app_peers_cache_seconds: f64,
    #[serde(default = "d3600")]
    pub app_peers_check_seconds: f64,
    #[serde(default = "d10")]
    pub app_rmq_connection_timeout_seconds: f64,
    #[serde(default = "d20")]
    pub app_rmq_confirmation_timeout_seconds: f64,
    #[serde(default = "d100")]
    pub app_stomp_server_backlog: u32,
    #[serde(default = "d10u")]
    pub app_max_connections_per_peer: usize,
    /// The heart-beat we offer to send (ms).
    #[serde(default = "hb_send")]
    pub app_stomp_heartbeat_send_ms: u64,
    /// The heart-beat we want to receive (ms).
    #[serde(default = "hb_recv")]
    pub app_stomp_heartbeat_recv_ms: u64,
    /// Network delay allowed on top of the expected heart-beat (ms).
    #[serde(default = "delay")]
    pub app_stomp_network_delay_ms: u64,
    /// How often the silence watchdog looks (ms).
    #[serde(default = "check")]
    pub app_stomp_watchdog_ms: u64,
    /// CONNECT/CONNECTED deadline (ms).
    #[serde(default = "connect_ms")]
    pub app_stomp_connect_timeout_ms: u64,
}

/// Parses a CPU list such as `0`, `1,3` or `0-2`.
pub fn parse_cpu_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b >= libc::CPU_SETSIZE as usize {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => {
                let c: usize = part.parse().ok()?;
                if c >= libc::CPU_SETSIZE as usize {
                    return None;
                }
                cpus.push(c);
            }
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// Applies `APP_CPU_AFFINITY` (a CPU list) to the calling thread, so that
/// the threads it starts afterwards (lapin's I/O thread) share its CPUs.
/// On a small machine shared with RabbitMQ, keeping the gateway's threads
/// on one CPU saves the cross-CPU wake-ups that dominate its cost.
pub fn apply_cpu_affinity() -> anyhow::Result<()> {
    let Ok(list) = std::env::var("APP_CPU_AFFINITY") else {
        return Ok(());
    };
    if list.trim().is_empty() {
        return Ok(());
    }
    let cpus = parse_cpu_list(&list)
        .ok_or_else(|| anyhow::anyhow!("APP_CPU_AFFINITY: invalid CPU list '{list}' (e.g. 0, 1,3 or 0-2)"))?;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET is given
    // numbers below CPU_SETSIZE (checked above); pid 0 is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in &cpus {
            libc::CPU_SET(*cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!("APP_CPU_AFFINITY={list}: {}", std::io::Error::last_os_error());
        }
    }
    tracing::info!("pinned to CPU(s) {list}");
    Ok(())
}

fn secs(v: f64, name: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| anyhow::anyhow!("{name}: invalid number of seconds {v}"))
}

impl Internal {
    /// Reads the internal settings from the environment.
    pub fn from_env() -> anyhow::Result<Internal> {
        let vars = std::env::vars().filter(|(k, _)| k.starts_with("APP_"));
        let internal: Internal =
            envy::from_iter(vars).map_err(|e| anyhow::anyhow!("invalid internal setting (APP_*): {e}"))?;
        // Validate the durations once, naming the variable at fault.
        secs(internal.app_ssl_handshake_timeout, "APP_SSL_HANDSHAKE_TIMEOUT")?;
        secs(internal.app_peers_cache_seconds, "APP_PEERS_CACHE_SECONDS")?;
        secs(internal.app_peers_check_seconds, "APP_PEERS_CHECK_SECONDS")?;
        secs(
            internal.app_rmq_connection_timeout_seconds,
            "APP_RMQ_CONNECTION_TIMEOUT_SECONDS",
        )?;
        secs(
            internal.app_rmq_confirmation_timeout_seconds,
            "APP_RMQ_CONFIRMATION_TIMEOUT_SECONDS",
        )?;
        if internal.app_max_cached_peers == 0 {
            anyhow::bail!("APP_MAX_CACHED_PEERS must be at least 1");
        }
        Ok(internal)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.app_ssl_handshake_timeout)
    }
    pub fn peers_cache(&self) -> nodedata::PeerCacheSettings {
        nodedata::PeerCacheSettings {
            max_cached_peers: self.app_max_cached_peers,
            cache_for: Duration::from_secs_f64(self.app_peers_cache_seconds),
        }
    }
    pub fn peers_check(&self) -> Duration {
        Duration::from_secs_f64(self.app_peers_check_seconds)
    }
    pub fn rmq_connection_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.app_rmq_connection_timeout_seconds)
    }
    pub fn rmq_confirmation_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.app_rmq_confirmation_timeout_seconds)
    }
    pub fn timing(&self) -> crate::session::Timing {
        crate::session::Timing {
            heartbeat_send: Duration::from_millis(self.app_stomp_heartbeat_send_ms),
            heartbeat_recv: Duration::from_millis(self.app_stomp_heartbeat_recv_ms),
            network_delay: Duration::from_millis(self.app_stomp_network_delay_ms),
            watchdog_every: Duration::from_millis(self.app_stomp_watchdog_ms.max(1)),
            connect_timeout: Duration::from_millis(self.app_stomp_connect_timeout_ms),
        }
    }
}

/// Sets up logging: level and text or JSON lines on stderr.
pub fn init_logging(level: &str, format: &str) {
    let level = match level {
        "error" => tracing::Level::ERROR,
        "warning" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        _ => tracing::Level::INFO,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().with_current_span(false).init();
    } else {
        builder.with_ansi(false).init();
    }
}

/// A watch channel that turns true on SIGTERM or SIGINT.
pub fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
        }
        let _ = tx.send(true);
    });
    rx
}

/// Ends the process with the outcome of a program: 0, or 1 with the error
/// on stderr. Exiting here, rather than returning from `main`, keeps the
/// runtime's teardown from racing lapin's I/O thread (which would log
/// spurious errors after a clean shutdown).
pub fn finish(result: anyhow::Result<()>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list("0,2"), Some(vec![0, 2]));
        assert_eq!(parse_cpu_list("0-2, 5"), Some(vec![0, 1, 2, 5]));
        for bad in ["", "x", "2-1", "1,", "-1", "99999"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad}");
        }
    }
}
