//! One accepted connection, before and after its STOMP session: the TLS
//! handshake (bounded by `APP_SSL_HANDSHAKE_TIMEOUT`), the peer's identity
//! from its certificate, its connection slot, and the close (an ERROR, if
//! any, then a lingering close so that it is read).

use super::session::{End, Session};
use super::ServerContext;
use crate::metrics;
use crate::session::frames::{self, error_frame};
use crate::session::PeerStream;
use crate::shutdown::Shutdown;
use crate::tls::peer_node_id;
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stomp_codec::{Frame, StompItem};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::Instrument;

/// A peer's STOMP frames, as the server reads and writes them.
pub(super) type ServerStream = PeerStream<TlsStream<TcpStream>>;

/// Runs one connection to its end.
pub(super) async fn handle(ctx: Arc<ServerContext>, stream: TcpStream, addr: SocketAddr, shutdown: Shutdown) {
    let Some(tls) = accept(&ctx, stream, addr).await else {
        return;
    };
    let peer_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    let mut conn = crate::session::framed(tls);
    let peer_id = match peer_cert.as_deref().map(peer_node_id) {
        Some(Ok(id)) => id,
        _ => return refuse(&mut conn, "invalid_subject", frames::INVALID_SUBJECT).await,
    };
    let Some(peer) = ctx.nodedata.borrow().active_peer(&peer_id) else {
        return refuse(&mut conn, "unknown_peer", frames::UNKNOWN_PEER).await;
    };
    let Some(_slot) = ctx.take_slot(&peer_id) else {
        return refuse(&mut conn, "too_many_connections", frames::TOO_MANY_CONNECTIONS).await;
    };
    let _counted = metrics::server_connection(&peer_id);
    let span = tracing::info_span!("peer", peer = %peer_id, %addr);
    async {
        tracing::info!("peer connected");
        match Session::new(&ctx, peer, shutdown).run(&mut conn).await {
            End::Closed => {
                tracing::info!("connection closed");
                let _ = tokio::time::timeout(Duration::from_secs(5), SinkExt::<StompItem>::close(&mut conn))
                    .await;
            }
            End::Error(frame) => close_with_error(&mut conn, frame).await,
        }
    }
    .instrument(span)
    .await
}

/// The TLS handshake; `None` (logged) when it fails or times out.
async fn accept(ctx: &ServerContext, stream: TcpStream, addr: SocketAddr) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(ctx.internal.handshake_timeout(), ctx.acceptor().accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // A port probe or a client that gave up: not worth a warning.
            tracing::debug!(%addr, "connection closed before the TLS handshake: {e}");
            metrics::handshake_failed(metrics::handshake_reason(&e));
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(%addr, "TLS handshake failed: {e}");
            metrics::handshake_failed(metrics::handshake_reason(&e));
            None
        }
        Err(_) => {
            tracing::warn!(%addr, "TLS handshake timed out");
            metrics::handshake_failed("timeout");
            None
        }
    }
}

/// Refuses a connection after its handshake (counted by `reason`).
async fn refuse(conn: &mut ServerStream, reason: &'static str, text: &str) {
    metrics::connection_refused(reason);
    close_with_error(conn, error_frame(text)).await
}

/// Sends an ERROR and closes.
async fn close_with_error(conn: &mut ServerStream, frame: Frame) {
    tracing::warn!(
        message = frame.get("message").unwrap_or(""),
        "protocol error; closing the connection"
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = conn.send(frame).await;
        let _ = SinkExt::<StompItem>::close(conn).await;
    })
    .await;
    // Lingering close: read (and drop) what the peer still sends, for a
    // second at most, so that closing does not reset the connection and
    // destroy the ERROR (and the RECEIPT before it) in the peer's buffers.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = conn.next().await {}
    })
    .await;
}

/// The ERROR text for a malformed byte stream.
pub(super) fn codec_error_text(e: &stomp_codec::CodecError) -> String {
    let mut s = e.to_string();
    if let Some(first) = s.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    format!("{s}.")
}
