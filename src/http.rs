//! The HTTP listener of the probes and the metrics (off unless
//! `--http-port` / `APP_HTTP_PORT` is given), on hyper:
//!
//! - `GET /healthz`: 200 while the process runs (liveness);
//! - `GET /readyz`: 200 when the program can do its job, else 503 with
//!   the reason (see [`Readiness`]); 503 once it is stopping;
//! - `GET /metrics`: every metric of [`crate::metrics`], in the
//!   Prometheus text format.
//!
//! It serves until the process exits, so that probes keep answering
//! during a graceful stop.

use crate::shutdown::Shutdown;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Whether the program can do its job now: `Err` says why not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The HTTP listener's settings (server, client and drainer).
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// Serve /healthz, /readyz and /metrics over HTTP on this port (off
    /// when not given).
    #[arg(long, env = "APP_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// The address the HTTP listener binds to.
    #[arg(long, env = "APP_HTTP_BIND", default_value = "0.0.0.0")]
    pub http_bind: IpAddr,
}

impl HttpArgs {
    /// Serves the metrics and binds the listener, when a port is given
    /// (call it before the work starts: the certificate expiry is watched
    /// only when served).
    pub async fn bind(&self) -> anyhow::Result<Option<TcpListener>> {
        let Some(port) = self.http_port else {
            return Ok(None);
        };
        crate::metrics::serve();
        let addr = SocketAddr::new(self.http_bind, port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (APP_HTTP_PORT, APP_HTTP_BIND): {e}"))?;
        Ok(Some(listener))
    }
}

/// A count of what is up (links established, a consumer consuming):
/// ready while more than zero.
#[derive(Clone, Default, Debug)]
pub struct UpCount(Arc<AtomicUsize>);

impl UpCount {
    /// Counts one more up, until the guard is dropped.
    pub fn up(&self) -> UpGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        UpGuard(self.0.clone())
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Ready while something is up; otherwise not, saying `why`.
    pub fn readiness(&self, why: &'static str) -> Readiness {
        let up = self.clone();
        Arc::new(move || match up.get() {
            0 => Err(why.to_string()),
            _ => Ok(()),
        })
    }
}

/// One thing up, for as long as it lives.
#[derive(Debug)]
pub struct UpGuard(Arc<AtomicUsize>);

impl Drop for UpGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves the endpoints on `listener` (if any) in the background.
pub fn serve(listener: Option<TcpListener>, ready: Readiness, shutdown: Shutdown) {
    let Some(listener) = listener else {
        return;
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("serving /healthz, /readyz and /metrics on http://{addr}");
    }
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (ready, shutdown) = (ready.clone(), shutdown.clone());
            let service = service_fn(move |req| {
                let response = respond(&req, &ready, &shutdown);
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(async move {
                let served = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = served.await {
                    tracing::debug!("HTTP connection ended: {e}");
                }
            });
        }
    });
}

/// The answer to one request.
fn respond(req: &Request<Incoming>, ready: &Readiness, shutdown: &Shutdown) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness(ready, shutdown) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
        },
        "/metrics" => {
            let page = crate::metrics::get().render(readiness(ready, shutdown).is_ok());
            let mut r = text(StatusCode::OK, page);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

/// What `/readyz` says: not ready once stopping, else the program's state.
fn readiness(ready: &Readiness, shutdown: &Shutdown) -> Result<(), String> {
    if shutdown.is_requested() {
        Err("stopping".to_string())
    } else {
        ready()
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

/// A GET of this host's probes (`swpt-probe`): the status and the body.
pub async fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{addr}{path}: not an HTTP answer: {:?}", head.lines().next()))?;
    Ok((status, body.to_string()))
}
