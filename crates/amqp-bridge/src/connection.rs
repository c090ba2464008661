//! The AMQP connection: broker URLs parsed and redacted, `amqps://` over
//! rustls (the broker's certificate checked against the system's roots and
//! an optional CA file; never a silent fallback to plain text), one
//! connection per process shared by its channels and re-opened when it is
//! lost.

use crate::BridgeError;
use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::Channel;
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, Close, CloseChannel, Nack, Return};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};

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

/// The amqprs connection arguments of a broker URL.
fn open_arguments(url: &str, ca_file: Option<&Path>) -> Result<OpenConnectionArguments, String> {
    let e = Endpoint::parse(url)?;
    let mut args = OpenConnectionArguments::new(&e.host, e.port, &e.user, &e.password);
    args.virtual_host(&e.vhost).connection_name(&program_name());
    if let Some(seconds) = e.heartbeat {
        args.heartbeat(seconds);
    }
    if e.tls {
        args.scheme("amqps")
            .tls_adaptor(crate::tls::adaptor(&e.host, ca_file)?);
    }
    Ok(args.finish())
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

/// Opens one AMQP connection, on the caller's tokio runtime, to one of the
/// broker's URLs: tried in turn from a random one, each within the
/// settings' timeout.
pub async fn connect(broker: &BrokerSettings) -> Result<Connection, BridgeError> {
    let start = rand::random::<usize>();
    connect_from(broker, start).await.map(|(conn, _)| conn)
}

/// Like [`connect`], trying the URLs from the `start`th (modulo their
/// number); also returns which one answered.
async fn connect_from(broker: &BrokerSettings, start: usize) -> Result<(Connection, usize), BridgeError> {
    try_urls(
        broker,
        start,
        |url| async move { connect_one(&url, broker).await },
    )
    .await
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

async fn connect_one(url: &str, broker: &BrokerSettings) -> Result<Connection, BridgeError> {
    let err = |reason: String| BridgeError::Connect {
        url: redact_url(url),
        reason,
    };
    let args = open_arguments(url, broker.ca_file.as_deref()).map_err(err)?;
    let timeout = broker.timeout;
    match tokio::time::timeout(timeout, Connection::open(&args)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err(format!("no answer within {timeout:?}"))),
    }
}

/// A live connection and the signal that it was lost.
#[derive(Clone)]
struct Live {
    conn: Connection,
    lost: watch::Receiver<bool>,
    /// Why RabbitMQ closed the connection, if it did.
    closed: CloseReason,
    /// Which of the broker's URLs it is connected to.
    url_index: usize,
}

/// Numbers the connections opened (see `SharedConnection::up`).
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// One long-lived connection shared by a process, re-opened when it has
/// gone away: the channels of checks and topology, the readiness probe,
/// and the broker node that the process's connections of our own (the
/// publisher's, the consumers') go to; it holds the consumers' one.
pub struct SharedConnection {
    broker: BrokerSettings,
    live: Mutex<Option<Live>>,
    /// The number of the open connection (for readiness probes); 0 when
    /// none is.
    up: Arc<AtomicU64>,
    /// Set by [`SharedConnection::close`]: [`SharedConnection::keep_open`]
    /// stops.
    closed: AtomicBool,
    /// The connection of our own that the process's consumers share.
    pub(crate) consumers: crate::consumer::Consumers,
}

impl SharedConnection {
    pub fn new(broker: BrokerSettings) -> std::sync::Arc<SharedConnection> {
        std::sync::Arc::new(SharedConnection {
            broker,
            live: Mutex::new(None),
            up: Arc::new(AtomicU64::new(0)),
            closed: AtomicBool::new(false),
            consumers: Default::default(),
        })
    }

    /// Whether a connection to the broker is open now (it is opened on
    /// first use, or by [`SharedConnection::keep_open`]).
    pub fn is_up(&self) -> bool {
        if self.up.load(Ordering::Relaxed) == 0 {
            return false;
        }
        match self.live.try_lock() {
            Ok(live) => live
                .as_ref()
                .is_some_and(|l| l.conn.is_open() && !*l.lost.borrow()),
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
                    Ok(live) => lost(live.lost.clone()).await,
                    Err(e) => {
                        tracing::warn!("{e}");
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        });
    }

    /// The live connection, opened (again) if needed: the first time to a
    /// random one of the broker's URLs, after a loss to the next one.
    async fn live(&self) -> Result<Live, BridgeError> {
        let mut guard = self.live.lock().await;
        let start = match guard.as_ref() {
            Some(l) if l.conn.is_open() && !*l.lost.borrow() => return Ok(l.clone()),
            Some(l) => {
                tracing::warn!("the RabbitMQ connection was lost; reconnecting");
                l.url_index + 1
            }
            None => rand::random::<usize>(),
        };
        let (conn, url_index) = connect_from(&self.broker, start).await?;
        let (tx, lost) = watch::channel(false);
        let watched = conn.clone();
        let up = self.up.clone();
        let number = CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1;
        up.store(number, Ordering::Relaxed);
        tokio::spawn(async move {
            // Resolves when the connection ends, by a failure or a close.
            watched.listen_network_io_failure().await;
            // Down, unless a newer connection is up already.
            let _ = up.compare_exchange(number, 0, Ordering::Relaxed, Ordering::Relaxed);
            let _ = tx.send(true);
        });
        let closed = CloseReason::default();
        conn.register_callback(ConnectionWatch(closed.clone())).await?;
        let live = Live {
            conn,
            lost,
            closed,
            url_index,
        };
        *guard = Some(live.clone());
        Ok(live)
    }

    /// How to reach the broker.
    pub(crate) fn broker(&self) -> &BrokerSettings {
        &self.broker
    }

    /// Which of the broker's URLs the live connection uses (opening it if
    /// needed): a process's other connections go to the same node.
    pub(crate) async fn url_index(&self) -> Result<usize, BridgeError> {
        Ok(self.live().await?.url_index)
    }

    /// A new channel on the live connection, watched (see [`Opened`]).
    pub(crate) async fn channel(&self) -> Result<Opened, BridgeError> {
        let live = self.live().await?;
        let channel = match live.conn.open_channel(None).await {
            Ok(ch) => ch,
            Err(e) => {
                // The connection may have died just now: one more try.
                tracing::warn!("opening a RabbitMQ channel failed ({e}); reconnecting");
                self.live.lock().await.take();
                let live = self.live().await?;
                return Opened::watch(live.conn.open_channel(None).await?, live).await;
            }
        };
        Opened::watch(channel, live).await
    }

    /// Closes the connection, if open.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.up.store(0, Ordering::Relaxed);
        self.consumers.close().await;
        if let Some(l) = self.live.lock().await.take() {
            let _ = l.conn.close().await;
        }
    }
}

/// Why RabbitMQ closed a channel: its reply code and text.
pub(crate) type CloseReason = Arc<std::sync::Mutex<Option<(u16, String)>>>;

/// A channel, and why RabbitMQ closed it, if it did (amqprs reports a closed channel to the caller
/// only as "channel closed"; the reason comes through the callback).
pub(crate) struct Opened {
    pub channel: Channel,
    pub closed: CloseReason,
    /// Why RabbitMQ closed the channel's connection (a hard error such as
    /// an unknown exchange type closes the connection), if it did.
    connection_closed: CloseReason,
}

impl Opened {
    async fn watch(channel: Channel, live: Live) -> Result<Opened, BridgeError> {
        let closed = CloseReason::default();
        channel.register_callback(CloseWatch(closed.clone())).await?;
        Ok(Opened {
            channel,
            closed,
            connection_closed: live.closed,
        })
    }

    /// Why RabbitMQ closed this channel or its connection, if it did.
    pub fn reason(&self) -> Option<(u16, String)> {
        closed_reason(&self.closed).or_else(|| closed_reason(&self.connection_closed))
    }

    /// An amqprs error on this channel, with RabbitMQ's reason when it
    /// closed the channel or the connection.
    pub fn error(&self, e: amqprs::error::Error) -> BridgeError {
        match self.reason() {
            Some((_, text)) => BridgeError::Amqp(text),
            None => e.into(),
        }
    }
}

/// What RabbitMQ said when it closed the channel.
pub(crate) fn closed_reason(closed: &CloseReason) -> Option<(u16, String)> {
    closed.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Records why RabbitMQ closed the channel.
pub(crate) fn record_close(closed: &CloseReason, close: &CloseChannel) {
    *closed.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((close.reply_code(), close.reply_text().clone()));
}

/// The callback of a channel that neither publishes nor consumes by
/// callback: it records a close.
struct CloseWatch(CloseReason);

#[async_trait::async_trait]
impl ChannelCallback for CloseWatch {
    async fn close(&mut self, _channel: &Channel, close: CloseChannel) -> Result<(), amqprs::error::Error> {
        record_close(&self.0, &close);
        Ok(())
    }
    async fn cancel(&mut self, _channel: &Channel, _cancel: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _channel: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _channel: &Channel, _ack: Ack) {}
    async fn publish_nack(&mut self, _channel: &Channel, _nack: Nack) {}
    async fn publish_return(
        &mut self,
        _channel: &Channel,
        _ret: Return,
        _props: BasicProperties,
        _content: Vec<u8>,
    ) {
    }
}

/// The connection's callback: records a close by RabbitMQ.
struct ConnectionWatch(CloseReason);

#[async_trait::async_trait]
impl ConnectionCallback for ConnectionWatch {
    async fn close(&mut self, _connection: &Connection, close: Close) -> Result<(), amqprs::error::Error> {
        tracing::warn!("RabbitMQ closed the connection: {close}");
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((close.reply_code(), close.reply_text().clone()));
        Ok(())
    }
    async fn blocked(&mut self, _connection: &Connection, reason: String) {
        tracing::warn!("RabbitMQ blocked the connection: {reason}");
    }
    async fn unblocked(&mut self, _connection: &Connection) {
        tracing::info!("RabbitMQ unblocked the connection");
    }
    async fn secret_updated(&mut self, _connection: &Connection) {}
}

/// Resolves once `lost` turns true (or its sender is gone).
async fn lost(mut lost: watch::Receiver<bool>) {
    let _ = lost.wait_for(|l| *l).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(redact_url("amqp://u:s3cret@h:5672/v"), "amqp://u:***@h:5672/v");
        let a = open_arguments("amqp://u%40x:p%2Fw@broker:5673/my%2Fvhost", None).unwrap();
        assert_eq!(a.get_host(), "broker");
        assert_eq!(a.get_port(), 5673);
        assert_eq!(a.get_virtual_host(), "my/vhost");
        let a = open_arguments("amqp://h", None).unwrap();
        assert_eq!((a.get_port(), a.get_virtual_host()), (5672, "/"));
        assert!(open_arguments("http://h", None).is_err_and(|e| e.contains("unsupported scheme")));
        assert!(open_arguments("not a url", None).is_err());
        let a = open_arguments("amqps://u:p@broker/v", None).unwrap();
        assert_eq!((a.get_port(), a.get_scheme()), (5671, Some("amqps")));
        assert!(a.get_tls_adaptor().is_some(), "amqps:// is TLS, never plain text");
        assert_eq!(
            Endpoint::parse("amqp://h/v?heartbeat=7").unwrap().heartbeat,
            Some(7)
        );
        assert_eq!(Endpoint::parse("amqp://h/v").unwrap().heartbeat, None);
        assert!(Endpoint::parse("amqp://u:pw@h/v?heartbeat=x")
            .is_err_and(|e| e.contains("heartbeat") && !e.contains("pw")));
        let several = BrokerSettings::new(" amqp://a/v , amqps://b/v,", Duration::from_secs(1));
        assert_eq!(several.urls(), ["amqp://a/v", "amqps://b/v"]);
        let missing = open_arguments("amqps://u:p@broker/v", Some(Path::new("/nonexistent/ca.pem")));
        assert!(missing.is_err_and(|e| e.contains("/nonexistent/ca.pem")));
    }
}
