//! A plain HTTP GET on a local port: how the tests and the benchmarks
//! read the gateway's probes and `/metrics`, with no client library.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long [`get`] waits for the whole answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// `GET path` on 127.0.0.1:`port`, as HTTP/1.0 so that no server answers
/// chunked (Prometheus's API would): the status and the body; status 0
/// when nothing answers.
pub async fn get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if s.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(ANSWER_WITHIN, s.read_to_end(&mut raw)).await;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}
