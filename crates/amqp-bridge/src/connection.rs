//! The AMQP connection: broker URLs parsed and redacted, `amqps://` over
//! rustls (the broker's certificate checked against the system's roots and
//! an optional CA file; never a silent fallback to plain text), and the
//! [`SharedConnection`]: one connection per process (of our own, see
//! `own`), shared by its channels (consumers, checks, the topology) and
//! re-opened, on the next of the broker's URLs, when it is lost.

use crate::channels::{self, Channel, ChannelConn};
use crate::own::{self, CLOSE_WAIT};
use crate::BridgeError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Hides the password of an AMQP URL for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// How to reach the broker: its URL (`amqp://` or `amqps://`; several,
/// comma separated, for the nodes of a cluster), how long connecting may
/// take, and for `amqps://` a CA file (PEM) trusted on top of the system's
/// roots.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    pub url: String,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
}

impl BrokerSettings {
    pub fn new(url: &str, timeout: Duration) -> BrokerSettings {
        BrokerSettings {
            url: url.to_string(),
            timeout,
            ca_file: None,
        }
    }

    /// The broker URLs (`url` may list several, comma separated).
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }
}

/// Where one broker URL points: host, port, TLS or not, the credentials
/// and the vhost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// The heartbeat interval in seconds asked for by the URL's
    /// `heartbeat` query parameter (RabbitMQ's URI spec), if any;
    /// otherwise the broker's proposal is taken.
    pub heartbeat: Option<u16>,
}

impl Endpoint {
    /// Parses `amqp[s]://user:pass@host:port/vhost` (user, password and
    /// vhost percent-decoded; guest/guest and the vhost `/` by default).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
        let (port, tls) = match parsed.scheme() {
            "amqp" => (parsed.port().unwrap_or(5672), false),
            "amqps" => (parsed.port().unwrap_or(5671), true),
            other => {
                return Err(format!(
                    "unsupported scheme \"{other}\" (amqp:// or amqps:// expected)"
                ))
            }
        };
        let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or("no host")?;
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| format!("invalid percent-encoding in \"{}\"", redact_url(url)))
        };
        let user = match parsed.username() {
            "" => "guest".to_string(),
            u => decode(u)?,
        };
        let password = match parsed.password() {
            None => "guest".to_string(),
            Some(p) => decode(p)?,
        };
        let vhost = match parsed.path().strip_prefix('/').unwrap_or("") {
            "" => "/".to_string(),
            v => decode(v)?,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let heartbeat = match parsed.query_pairs().find(|(k, _)| k == "heartbeat") {
            None => None,
            Some((_, v)) => Some(v.parse::<u16>().map_err(|_| {
                format!(
                    "invalid heartbeat \"{v}\" (seconds, 0 to 65535) in \"{}\"",
                    redact_url(url)
                )
            })?),
        };
        Ok(Endpoint {
            host,
            port,
            tls,
            user,
            password,
            vhost,
            heartbeat,
        })
    }
}

/// The name our connections show in RabbitMQ (`connection_name`): the
/// program's, so that an operator sees which process holds which.
pub(crate) fn program_name() -> String {
    std::env::args()
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "swpt-gateway".to_string())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Opens a connection to one of the broker's URLs (tried in turn from a
/// random one, each within the settings' timeout) and closes it again:
/// whether the broker takes connections.
pub async fn connect(broker: &BrokerSettings) -> Result<(), BridgeError> {
    let shared = SharedConnection::new(broker.clone());
    let opened = shared.live().await.map(|_| ());
    shared.close().await;
    opened
}

/// Opens something with `open` on one of the broker's URLs, tried in turn
/// from the `start`th (modulo their number); returns it and which URL
/// answered, or every URL's failure.
pub(crate) async fn try_urls<T, F, Fut>(
    broker: &BrokerSettings,
    start: usize,
    open: F,
) -> Result<(T, usize), BridgeError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, BridgeError>>,
{
    let urls = broker.urls();
    if urls.is_empty() {
        return Err(BridgeError::Connect {
            url: String::new(),
            reason: "no broker URL".into(),
        });
    }
    let mut failures = Vec::new();
    for i in 0..urls.len() {
        let at = (start + i) % urls.len();
        match open(urls[at].to_string()).await {
            Ok(opened) => return Ok((opened, at)),
            Err(e) if urls.len() == 1 => return Err(e),
            Err(e) => {
                tracing::warn!("{e}; trying the next broker URL");
                failures.push(e);
            }
        }
    }
    let reasons: Vec<String> = failures.iter().map(|e| e.to_string()).collect();
    Err(BridgeError::Connect {
        url: urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(", "),
        reason: format!("none answered ({})", reasons.join("; ")),
    })
}

/// The live connection.
struct Live {
    conn: Arc<ChannelConn>,
    reader: JoinHandle<()>,
    /// Which of the broker's URLs it is connected to.
    url_index: usize,
}

/// Numbers the connections opened (see `SharedConnection::up`).
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// One long-lived connection shared by a process, re-opened when it has
/// gone away: the channels of the consumers, the checks and the topology,
/// the readiness probe, and the broker node that the publisher's
/// connection goes to.
pub struct SharedConnection {
    broker: BrokerSettings,
    live: Mutex<Option<Live>>,
    /// The number of the open connection (for readiness probes); 0 when
    /// none is.
    up: Arc<AtomicU64>,
    /// Set by [`SharedConnection::close`]: [`SharedConnection::keep_open`]
    /// stops.
    closed: AtomicBool,
}

impl SharedConnection {
    pub fn new(broker: BrokerSettings) -> std::sync::Arc<SharedConnection> {
        std::sync::Arc::new(SharedConnection {
            broker,
            live: Mutex::new(None),
            up: Arc::new(AtomicU64::new(0)),
            closed: AtomicBool::new(false),
        })
    }

    /// Whether a connection to the broker is open now (it is opened on
    /// first use, or by [`SharedConnection::keep_open`]).
    pub fn is_up(&self) -> bool {
        if self.up.load(Ordering::Relaxed) == 0 {
            return false;
        }
        match self.live.try_lock() {
            Ok(live) => live.as_ref().is_some_and(|l| l.conn.usable()),
            // Someone is using it or reconnecting: the flag says.
            Err(_) => true,
        }
    }

    /// Keeps a connection open, re-opening it (every `pause` at most)
    /// when it is lost, until [`SharedConnection::close`]; so that
    /// [`SharedConnection::is_up`] tells whether the broker can be reached
    /// before anything is published.
    pub fn keep_open(self: &Arc<Self>, pause: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            while !this.closed.load(Ordering::Relaxed) {
                match this.live().await {
                    Ok((conn, _)) => conn.gone().await,
                    Err(e) => {
                        tracing::warn!("{e}");
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        });
    }

    /// The live connection and the index of its URL, opened (again) if
    /// needed: the first time to a random one of the broker's URLs, after
    /// a loss to the next one.
    async fn live(&self) -> Result<(Arc<ChannelConn>, usize), BridgeError> {
        let mut guard = self.live.lock().await;
        let start = match guard.as_ref() {
            Some(l) if l.conn.usable() => return Ok((l.conn.clone(), l.url_index)),
            Some(l) => {
                tracing::warn!("the RabbitMQ connection was lost; reconnecting");
                l.url_index + 1
            }
            None => rand::random::<usize>(),
        };
        let broker = &self.broker;
        let (opened, url_index) =
            try_urls(broker, start, |url| async move { own::open(&url, broker).await }).await?;
        let (conn, reader) = channels::start(opened);
        let number = CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1;
        self.up.store(number, Ordering::Relaxed);
        let (watched, up) = (conn.clone(), self.up.clone());
        tokio::spawn(async move {
            watched.gone().await;
            // Down, unless a newer connection is up already.
            let _ = up.compare_exchange(number, 0, Ordering::Relaxed, Ordering::Relaxed);
        });
        *guard = Some(Live {
            conn: conn.clone(),
            reader,
            url_index,
        });
        Ok((conn, url_index))
    }

    /// How to reach the broker.
    pub(crate) fn broker(&self) -> &BrokerSettings {
        &self.broker
    }

    /// Which of the broker's URLs the live connection uses (opening it if
    /// needed): a process's other connections go to the same node.
    pub(crate) async fn url_index(&self) -> Result<usize, BridgeError> {
        Ok(self.live().await?.1)
    }

    /// A new channel on the live connection.
    pub(crate) async fn channel(&self) -> Result<Channel, BridgeError> {
        let (conn, _) = self.live().await?;
        match Channel::open(&conn).await {
            Ok(channel) => Ok(channel),
            Err(e) if !conn.usable() => {
                // The connection died just now: one more try.
                tracing::warn!("opening a RabbitMQ channel failed ({}); reconnecting", e.error);
                let (conn, _) = self.live().await?;
                Channel::open(&conn).await.map_err(|e| e.error)
            }
            Err(e) => Err(e.error),
        }
    }

    /// Closes the connection, if open (what consumers did not ack goes
    /// back to their queues).
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.up.store(0, Ordering::Relaxed);
        if let Some(mut l) = self.live.lock().await.take() {
            l.conn.close("the connection was closed");
            if tokio::time::timeout(CLOSE_WAIT, &mut l.reader).await.is_err() {
                l.reader.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(redact_url("amqp://u:s3cret@h:5672/v"), "amqp://u:***@h:5672/v");
        let a = Endpoint::parse("amqp://u%40x:p%2Fw@broker:5673/my%2Fvhost").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.tls, a.vhost.as_str()),
            ("broker", 5673, false, "my/vhost")
        );
        assert_eq!((a.user.as_str(), a.password.as_str()), ("u@x", "p/w"));
        let a = Endpoint::parse("amqp://h").unwrap();
        assert_eq!((a.port, a.vhost.as_str(), a.user.as_str()), (5672, "/", "guest"));
        assert!(Endpoint::parse("http://h").is_err_and(|e| e.contains("unsupported scheme")));
        assert!(Endpoint::parse("not a url").is_err());
        let a = Endpoint::parse("amqps://u:p@broker/v").unwrap();
        assert_eq!((a.port, a.tls), (5671, true), "amqps:// is TLS, never plain text");
        assert_eq!(
            Endpoint::parse("amqp://h/v?heartbeat=7").unwrap().heartbeat,
            Some(7)
        );
        assert_eq!(Endpoint::parse("amqp://h/v").unwrap().heartbeat, None);
        assert!(Endpoint::parse("amqp://u:pw@h/v?heartbeat=x")
            .is_err_and(|e| e.contains("heartbeat") && !e.contains("pw")));
        let several = BrokerSettings::new(" amqp://a/v , amqps://b/v,", Duration::from_secs(1));
        assert_eq!(several.urls(), ["amqp://a/v", "amqps://b/v"]);
        let missing = crate::tls::connector(Some(Path::new("/nonexistent/ca.pem")));
        assert!(missing.is_err_and(|e| e.contains("/nonexistent/ca.pem")));
    }
}
