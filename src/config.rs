//! The settings shared by the binaries (SPEC section 10): the flags (each
//! with its environment variable; flags win) and the internal `APP_*`
//! settings, which come from the environment only.

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
    /// The RabbitMQ broker (its value, which may hold a password, is never
    /// shown).
    #[arg(
        short = 'u',
        long,
        env = "PROTOCOL_BROKER_URL",
        hide_env_values = true,
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
    pub fn start(&self) -> anyhow::Result<NodeSettings> {
        crate::logging::init(&self.log_level, &self.log_format);
        crate::affinity::apply_from_env()?;
        Ok(NodeSettings {
            nodedata_url: self.nodedata_url.clone(),
            broker_url: self.broker_url.clone(),
            internal: Internal::from_env()?,
        })
    }
}

/// What every program that works for a node starts from: where its node
/// database is, its broker, and the internal settings. The server's, the
/// client's and the drainer's settings hold it as `node`.
pub struct NodeSettings {
    pub nodedata_url: String,
    pub broker_url: String,
    pub internal: Internal,
}

impl NodeSettings {
    /// The node's broker, as the internal settings say to reach it.
    pub fn broker(&self) -> amqp_bridge::BrokerSettings {
        self.internal.broker(&self.broker_url)
    }
}

/// The peer and queue a client, drainer or configure-queue works on.
#[derive(Args, Debug, Clone)]
pub struct PeerQueueArgs {
    /// The peer's node ID.
    pub peer_node_id: String,
    /// The RabbitMQ queue of messages for that peer.
    pub queue_name: String,
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

/// Internal settings (environment only, SPEC section 10), each field named
/// after its variable (`app_ssl_handshake_timeout` is
/// `APP_SSL_HANDSHAKE_TIMEOUT`); the defaults are [`Internal::default`]. The
/// `APP_STOMP_*_MS` ones exist so that tests can shorten the STOMP timing
/// constants.
#[derive(Deserialize, Debug, Clone)]
#[serde(default)]
pub struct Internal {
    pub app_ssl_handshake_timeout: f64,
    /// SPEC's peer cache and per-connection re-check settings: accepted
    /// (and checked) for compatibility, superseded by the node-database
    /// watcher (`app_nodedata_poll_seconds`).
    pub app_max_cached_peers: usize,
    pub app_peers_cache_seconds: f64,
    pub app_peers_check_seconds: f64,
    pub app_rmq_connection_timeout_seconds: f64,
    pub app_rmq_confirmation_timeout_seconds: f64,
    pub app_stomp_server_backlog: u32,
    pub app_max_connections_per_peer: usize,
    /// How long a stopping process may take (SIGTERM or SIGINT): what is
    /// in flight is finished within it, then the process exits.
    pub app_shutdown_grace_seconds: f64,
    /// How often the node database is polled for changes (seconds).
    pub app_nodedata_poll_seconds: f64,
    /// A CA certificate file (PEM) trusted, on top of the system's roots,
    /// for an `amqps://` broker.
    pub app_broker_ca_file: Option<PathBuf>,
    /// The heart-beat we offer to send (ms).
    pub app_stomp_heartbeat_send_ms: u64,
    /// The heart-beat we want to receive (ms).
    pub app_stomp_heartbeat_recv_ms: u64,
    /// Network delay allowed on top of the expected heart-beat (ms).
    pub app_stomp_network_delay_ms: u64,
    /// How often the silence watchdog looks (ms).
    pub app_stomp_watchdog_ms: u64,
    /// CONNECT/CONNECTED deadline (ms).
    pub app_stomp_connect_timeout_ms: u64,
}

impl Default for Internal {
    /// The defaults of SPEC section 10, in one place.
    fn default() -> Internal {
        Internal {
            app_ssl_handshake_timeout: 5.0,
            app_max_cached_peers: 5000,
            app_peers_cache_seconds: 600.0,
            app_peers_check_seconds: 3600.0,
            app_rmq_connection_timeout_seconds: 10.0,
            app_rmq_confirmation_timeout_seconds: 20.0,
            app_stomp_server_backlog: 100,
            app_max_connections_per_peer: 10,
            app_shutdown_grace_seconds: 15.0,
            app_broker_ca_file: None,
            app_nodedata_poll_seconds: 5.0,
            app_stomp_heartbeat_send_ms: 5000,
            app_stomp_heartbeat_recv_ms: 30000,
            app_stomp_network_delay_ms: 10000,
            app_stomp_watchdog_ms: 5000,
            app_stomp_connect_timeout_ms: 10000,
        }
    }
}

/// Checks that each named field holds a valid number of seconds; an error
/// names the field's variable (the field's name in capitals).
macro_rules! check_seconds {
    ($internal:expr, $($field:ident),+) => {
        $(
            let v: f64 = $internal.$field;
            if Duration::try_from_secs_f64(v).is_err() {
                anyhow::bail!("{}: invalid number of seconds {v}", stringify!($field).to_ascii_uppercase());
            }
        )+
    };
}

impl Internal {
    /// Reads the internal settings from the environment.
    pub fn from_env() -> anyhow::Result<Internal> {
        Internal::from_vars(std::env::vars())
    }

    /// Reads the internal settings from `vars` (the `APP_*` among them).
    fn from_vars(vars: impl Iterator<Item = (String, String)>) -> anyhow::Result<Internal> {
        let vars = vars.filter(|(k, _)| k.starts_with("APP_"));
        let internal: Internal =
            envy::from_iter(vars).map_err(|e| anyhow::anyhow!("invalid internal setting (APP_*): {e}"))?;
        // Validate the durations once, naming the variable at fault.
        check_seconds!(
            internal,
            app_ssl_handshake_timeout,
            app_peers_cache_seconds,
            app_peers_check_seconds,
            app_rmq_connection_timeout_seconds,
            app_rmq_confirmation_timeout_seconds,
            app_shutdown_grace_seconds,
            app_nodedata_poll_seconds
        );
        if internal.app_nodedata_poll_seconds <= 0.0 {
            anyhow::bail!("APP_NODEDATA_POLL_SECONDS must be more than 0");
        }
        if internal.app_max_cached_peers == 0 {
            anyhow::bail!("APP_MAX_CACHED_PEERS must be at least 1");
        }
        Ok(internal)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.app_ssl_handshake_timeout)
    }
    pub fn rmq_connection_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.app_rmq_connection_timeout_seconds)
    }
    pub fn rmq_confirmation_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.app_rmq_confirmation_timeout_seconds)
    }
    /// How often the node database is polled (`APP_NODEDATA_POLL_SECONDS`).
    pub fn nodedata_poll(&self) -> Duration {
        Duration::from_secs_f64(self.app_nodedata_poll_seconds)
    }
    /// How to reach the broker at `url`.
    pub fn broker(&self, url: &str) -> amqp_bridge::BrokerSettings {
        amqp_bridge::BrokerSettings {
            url: url.to_string(),
            timeout: self.rmq_connection_timeout(),
            ca_file: self.app_broker_ca_file.clone(),
        }
    }
    /// The grace period of a stop (`APP_SHUTDOWN_GRACE_SECONDS`).
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.app_shutdown_grace_seconds)
    }
    /// How long a stopping process waits for what is in flight: the grace
    /// period less a second (at least a tenth of it) to close and exit.
    pub fn drain_wait(&self) -> Duration {
        let grace = self.shutdown_grace();
        grace.saturating_sub(Duration::from_secs(1)).max(grace / 10)
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

#[cfg(test)]
mod tests {
    use super::Internal;

    fn read(vars: &[(&str, &str)]) -> anyhow::Result<Internal> {
        Internal::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn a_bad_duration_names_its_variable() {
        for name in [
            "APP_SSL_HANDSHAKE_TIMEOUT",
            "APP_PEERS_CACHE_SECONDS",
            "APP_RMQ_CONFIRMATION_TIMEOUT_SECONDS",
            "APP_SHUTDOWN_GRACE_SECONDS",
        ] {
            for bad in ["-1", "nan", "1e300"] {
                let e = read(&[(name, bad)]).unwrap_err().to_string();
                assert!(
                    e.starts_with(&format!("{name}: invalid number of seconds")),
                    "{e}"
                );
            }
        }
        let e = read(&[("APP_NODEDATA_POLL_SECONDS", "0")])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "APP_NODEDATA_POLL_SECONDS must be more than 0");
    }

    #[test]
    fn settings_come_from_app_variables_only() {
        let internal = read(&[
            ("APP_SHUTDOWN_GRACE_SECONDS", "2.5"),
            ("SHUTDOWN_GRACE_SECONDS", "x"),
        ])
        .unwrap();
        assert_eq!(internal.shutdown_grace().as_millis(), 2500);
        assert_eq!(internal.nodedata_poll().as_secs(), 5);
        let e = read(&[("APP_MAX_CONNECTIONS_PER_PEER", "many")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("APP_MAX_CONNECTIONS_PER_PEER"), "{e}");
    }
}
