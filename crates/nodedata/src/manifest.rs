//! The servers manifest of a peer (`nodeinfo/stomp.toml`).

use serde::Deserialize;

/// One server of a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Where and how to reach a peer's STOMP servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StompManifest {
    /// Servers; a duplicate raises that server's odds of being picked.
    pub servers: Vec<ServerAddr>,
    /// The CONNECT `host` header, `${NODE_ID}` replaced.
    pub host: String,
    /// The SEND `destination` header, `${NODE_ID}` replaced.
    pub destination: String,
    pub login: Option<String>,
    pub passcode: Option<String>,
    /// Always contains `application/json`.
    pub accepted_content_types: Vec<String>,
}

#[derive(Deserialize)]
struct RawManifest {
    servers: Vec<String>,
    host: String,
    destination: String,
    login: Option<String>,
    passcode: Option<String>,
    #[serde(rename = "accepted-content-types")]
    accepted_content_types: Option<Vec<String>>,
}

/// Parses a manifest; `node_id` is OUR node ID, put in place of every
/// `${NODE_ID}` in `host`, `destination` and `login`.
pub fn parse_manifest(text: &str, node_id: &str) -> Result<StompManifest, String> {
    let raw: RawManifest = toml::from_str(text).map_err(|e| format!("invalid TOML: {}", e.message()))?;
    if raw.servers.is_empty() {
        return Err("the server list is empty".to_string());
    }
    let servers = raw
        .servers
        .iter()
        .map(|s| parse_server(s))
        .collect::<Result<Vec<_>, _>>()?;
    let subst = |s: &str| s.replace("${NODE_ID}", node_id);
    let mut accepted = raw.accepted_content_types.unwrap_or_default();
    if !accepted.iter().any(|c| c == "application/json") {
        accepted.push("application/json".to_string());
    }
    Ok(StompManifest {
        servers,
        host: subst(&raw.host),
        destination: subst(&raw.destination),
        login: raw.login.as_deref().map(subst),
        passcode: raw.passcode,
        accepted_content_types: accepted,
    })
}

fn parse_server(s: &str) -> Result<ServerAddr, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid server '{s}': expected host:port"))?;
    if !is_valid_host(host) {
        return Err(format!("invalid server '{s}': invalid host '{host}'"));
    }
    let port: u16 = match port.parse() {
        Ok(p) if p >= 1 && port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => return Err(format!("invalid server '{s}': invalid port '{port}'")),
    };
    Ok(ServerAddr {
        host: host.to_string(),
        port,
    })
}

/// A valid DNS name or IPv4 address.
fn is_valid_host(host: &str) -> bool {
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_substitution() {
        let m = parse_manifest(
            "servers = [\"127.0.0.1:1235\", \"a.example.com:1\"]\nhost = \"/${NODE_ID}\"\n\
             destination = \"/exchange/${NODE_ID}\"\nlogin = \"u-${NODE_ID}\"\npasscode = \"p${NODE_ID}\"\nextra = 1\n",
            "1234abcd",
        )
        .unwrap();
        assert_eq!(
            m.servers[0],
            ServerAddr {
                host: "127.0.0.1".into(),
                port: 1235
            }
        );
        assert_eq!(m.servers[1].to_string(), "a.example.com:1");
        assert_eq!(m.host, "/1234abcd");
        assert_eq!(m.destination, "/exchange/1234abcd");
        assert_eq!(m.login.as_deref(), Some("u-1234abcd"));
        assert_eq!(m.passcode.as_deref(), Some("p${NODE_ID}"));
        assert_eq!(m.accepted_content_types, vec!["application/json".to_string()]);
    }

    #[test]
    fn rejects_bad_manifests() {
        let cases = [
            ("servers = []\nhost = \"/\"\ndestination = \"/d\"", "empty"),
            (
                "servers = [\"h:0\"]\nhost = \"/\"\ndestination = \"/d\"",
                "invalid port '0'",
            ),
            (
                "servers = [\"h:65536\"]\nhost = \"/\"\ndestination = \"/d\"",
                "invalid port",
            ),
            (
                "servers = [\"h:+1\"]\nhost = \"/\"\ndestination = \"/d\"",
                "invalid port",
            ),
            (
                "servers = [\"-h:1\"]\nhost = \"/\"\ndestination = \"/d\"",
                "invalid host",
            ),
            (
                "servers = [\"h_x:1\"]\nhost = \"/\"\ndestination = \"/d\"",
                "invalid host",
            ),
            (
                "servers = [\"h\"]\nhost = \"/\"\ndestination = \"/d\"",
                "host:port",
            ),
            ("servers = [\"h:1\"]\ndestination = \"/d\"", "invalid TOML"),
            ("servers = [", "invalid TOML"),
        ];
        for (text, want) in cases {
            let err = parse_manifest(text, "x").unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
