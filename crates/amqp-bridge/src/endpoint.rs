//! Where the broker is and how to talk to it: [`BrokerSettings`] (the
//! URL list, the deadline, a CA file), each URL parsed into an
//! [`Endpoint`] with the query parameters the Python gateway's AMQP
//! library reads, URLs redacted for logs ([`redact_url`]), and the order
//! in which a cluster's nodes are tried ([`try_urls`]).
//!
//! | parameter | meaning |
//! |---|---|
//! | `heartbeat` | seconds between heartbeats (0 disables; not a number: 0, as the Python gateway reads it) |
//! | `timeout` | seconds for connecting (on top of `APP_RMQ_CONNECTION_TIMEOUT_SECONDS`) |
//! | `name` | the connection's name in RabbitMQ |
//! | `auth` | `plain` (default), `amqplain` or `external` (SASL EXTERNAL: the client certificate) |
//! | `cafile`, `capath` | CA certificates (a PEM file, a folder of them) trusted for `amqps://` |
//! | `certfile`, `keyfile` | a client certificate and its key (the key may be in `certfile`) |
//! | `no_verify_ssl` | anything but `0`: the broker's certificate is not checked (a warning at start) |

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

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
/// comma separated, for the nodes of a cluster), how long connecting and
/// each call to the broker may take, and for `amqps://` a CA file (PEM)
/// trusted on top of the system's roots.
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

/// The SASL mechanism a connection logs in with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Auth {
    Plain,
    AmqPlain,
    External,
}

impl Auth {
    pub fn name(self) -> &'static str {
        match self {
            Auth::Plain => "PLAIN",
            Auth::AmqPlain => "AMQPLAIN",
            Auth::External => "EXTERNAL",
        }
    }
}

/// The TLS options of an `amqps://` URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsOptions {
    pub cafile: Option<PathBuf>,
    pub capath: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// `no_verify_ssl`: the broker's certificate is not checked.
    pub no_verify: bool,
}

/// Where one broker URL points and how to log in there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// The heartbeat interval in seconds the URL asks for; otherwise the
    /// broker's proposal is taken.
    pub heartbeat: Option<u16>,
    /// The URL's `timeout`: how long connecting may take.
    pub timeout: Option<Duration>,
    /// The URL's `name`: the connection's name in RabbitMQ.
    pub name: Option<String>,
    pub auth: Auth,
    pub tls_options: TlsOptions,
}

/// Says a warning once per process (per distinct text).
fn warn_once(text: String) {
    static SAID: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if said.get_or_insert_with(HashSet::new).insert(text.clone()) {
        tracing::warn!("{text}");
    }
}

impl Endpoint {
    /// Parses `amqp[s]://user:pass@host:port/vhost?params` (user, password
    /// and vhost percent-decoded; guest/guest and the vhost `/` by default).
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
        // The Python gateway's reading: all of the path after its first
        // slash, percent-decoded; an empty one is "/".
        let vhost = match parsed.path().strip_prefix('/').unwrap_or("") {
            "" => "/".to_string(),
            v => decode(v)?,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let mut e = Endpoint {
            host,
            port,
            tls,
            user,
            password,
            vhost,
            heartbeat: None,
            timeout: None,
            name: None,
            auth: Auth::Plain,
            tls_options: TlsOptions::default(),
        };
        for (key, value) in parsed.query_pairs() {
            e.set(&key, &value, url)?;
        }
        if e.tls_options.no_verify && e.tls {
            warn_once(format!(
                "no_verify_ssl is set in {}: the broker's TLS certificate is NOT checked",
                redact_url(url)
            ));
        }
        Ok(e)
    }

    /// One query parameter, with the Python gateway's meaning.
    fn set(&mut self, key: &str, value: &str, url: &str) -> Result<(), String> {
        let path = || Some(PathBuf::from(value));
        match key {
            "heartbeat" => {
                self.heartbeat = Some(value.parse::<u16>().unwrap_or_else(|_| {
                    warn_once(format!(
                    "heartbeat \"{value}\" in {} is not a number of seconds (0 to 65535): heartbeats are off",
                    redact_url(url)
                ));
                    0
                }))
            }
            "timeout" => match value.parse::<f64>() {
                Ok(s) if s.is_finite() && s > 0.0 => self.timeout = Some(Duration::from_secs_f64(s)),
                _ => warn_once(format!(
                    "timeout \"{value}\" in {} is not a number of seconds: ignored",
                    redact_url(url)
                )),
            },
            "name" => self.name = Some(value.to_string()).filter(|n| !n.is_empty()),
            "auth" => {
                self.auth = match value.to_ascii_lowercase().as_str() {
                    "plain" => Auth::Plain,
                    "amqplain" => Auth::AmqPlain,
                    "external" => Auth::External,
                    _ => {
                        return Err(format!(
                            "unsupported auth \"{value}\" in \"{}\" (plain, amqplain or external)",
                            redact_url(url)
                        ))
                    }
                }
            }
            "cafile" => self.tls_options.cafile = path(),
            "capath" => self.tls_options.capath = path(),
            "certfile" => self.tls_options.certfile = path(),
            "keyfile" => self.tls_options.keyfile = path(),
            "no_verify_ssl" => self.tls_options.no_verify = value != "0",
            other => warn_once(format!(
                "unknown query parameter \"{other}\" in the broker URL {}: ignored",
                redact_url(url)
            )),
        }
        Ok(())
    }
}

/// The name our connections show in RabbitMQ (`connection_name`) unless
/// the URL names them: the program's, so that an operator sees which
/// process holds which.
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

/// Opens something with `open` on one of the broker's URLs, tried in turn
/// from the `start`th (modulo their number); returns it and which URL
/// answered, or every URL's failure.
pub(crate) async fn try_urls<T, F, Fut>(
    broker: &BrokerSettings,
    start: usize,
    open: F,
) -> Result<(T, usize), crate::BridgeError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::BridgeError>>,
{
    let urls = broker.urls();
    if urls.is_empty() {
        return Err(crate::BridgeError::Connect {
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
    Err(crate::BridgeError::Connect {
        url: urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(", "),
        reason: format!("none answered ({})", reasons.join("; ")),
    })
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
        let several = BrokerSettings::new(" amqp://a/v , amqps://b/v,", Duration::from_secs(1));
        assert_eq!(several.urls(), ["amqp://a/v", "amqps://b/v"]);
    }

    #[test]
    fn vhosts_as_the_python_gateway_reads_them() {
        for (url, vhost) in [
            ("amqp://h", "/"),
            ("amqp://h/", "/"),
            ("amqp://h//", "/"),
            ("amqp://h/%2F", "/"),
            ("amqp://h/v", "v"),
            ("amqp://h/a/b", "a/b"),
            ("amqp://h/a%2Fb", "a/b"),
            ("amqp://h/sp%20ace", "sp ace"),
            ("amqp://h/v?heartbeat=5", "v"),
        ] {
            assert_eq!(Endpoint::parse(url).unwrap().vhost, vhost, "{url}");
        }
    }

    #[test]
    fn the_python_gateways_query_parameters() {
        let e = Endpoint::parse(
            "amqps://u:p@h/v?heartbeat=7&timeout=2.5&name=gw&auth=EXTERNAL&cafile=/c.pem\
             &capath=/cas&certfile=/crt.pem&keyfile=/key.pem&no_verify_ssl=0",
        )
        .unwrap();
        assert_eq!(e.heartbeat, Some(7));
        assert_eq!(e.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(e.name.as_deref(), Some("gw"));
        assert_eq!(e.auth, Auth::External);
        let t = &e.tls_options;
        assert_eq!(t.cafile.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(t.capath.as_deref(), Some(Path::new("/cas")));
        assert_eq!(t.certfile.as_deref(), Some(Path::new("/crt.pem")));
        assert_eq!(t.keyfile.as_deref(), Some(Path::new("/key.pem")));
        assert!(!t.no_verify, "no_verify_ssl=0 verifies");
        assert!(
            Endpoint::parse("amqps://h/?no_verify_ssl=1")
                .unwrap()
                .tls_options
                .no_verify
        );
        assert!(
            Endpoint::parse("amqps://h/?no_verify_ssl=yes")
                .unwrap()
                .tls_options
                .no_verify
        );
        assert_eq!(
            Endpoint::parse("amqp://h/?auth=amqplain").unwrap().auth,
            Auth::AmqPlain
        );
        assert_eq!(Endpoint::parse("amqp://h/").unwrap().auth, Auth::Plain);
        assert!(Endpoint::parse("amqp://u:pw@h/?auth=kerberos")
            .is_err_and(|e| e.contains("kerberos") && !e.contains("pw")));
        // Not a number: off, as the Python gateway reads it (with a warning).
        assert_eq!(
            Endpoint::parse("amqp://h/v?heartbeat=x").unwrap().heartbeat,
            Some(0)
        );
        assert_eq!(Endpoint::parse("amqp://h/v").unwrap().heartbeat, None);
        // An unknown parameter is warned about, not fatal.
        assert!(Endpoint::parse("amqp://h/v?frobnicate=1").is_ok());
    }
}
