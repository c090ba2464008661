//! The client against a server that breaks the protocol (SPEC section 5,
//! client side): a fake STOMP server over real TLS, with the AA's real
//! certificate, answers wrongly; the client must log the error, close,
//! reconnect by itself, and never ack the message it could not get
//! receipted.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stomp_codec::{Frame, StompCodec, StompItem};
use tokio_util::codec::Framed;

/// How the fake server breaks the protocol.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// CONNECTED with `version:1.1`.
    WrongVersion,
    /// A RECEIPT instead of CONNECTED.
    ReceiptBeforeConnected,
    /// CONNECTED, then a RECEIPT without `receipt-id` for the first SEND.
    ReceiptWithoutId,
    /// CONNECTED, then CONNECTED again after the first SEND.
    ConnectedTwice,
    /// CONNECTED, then a MESSAGE frame after the first SEND.
    UnknownCommand,
    /// CONNECTED, then a RECEIPT naming a message never sent.
    ReceiptForUnknownMessage,
}

fn connected() -> Frame {
    Frame::new("CONNECTED")
        .header("version", "1.2")
        .header("heart-beat", "0,0")
}

/// Serves `fault` on 127.0.0.1:`port` with the AA's certificate; counts
/// the TLS sessions.
async fn faulty_server(aa_dir: &Path, port: u16, fault: Fault) -> Arc<AtomicUsize> {
    let certs = swpt_gateway::tls::load_certs(&aa_dir.join("server.crt")).unwrap();
    let key = swpt_gateway::tls::load_key(&aa_dir.join("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let sessions = Arc::new(AtomicUsize::new(0));
    let count = sessions.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let mut c = Framed::new(tls, StompCodec::default());
                let _stomp = c.next().await;
                let answer = match fault {
                    Fault::WrongVersion => Frame::new("CONNECTED").header("version", "1.1"),
                    Fault::ReceiptBeforeConnected => Frame::new("RECEIPT").header("receipt-id", "1"),
                    _ => connected(),
                };
                let _ = c.send(answer).await;
                // The first SEND, then the fault.
                loop {
                    match c.next().await {
                        Some(Ok(StompItem::Frame(f))) if f.command == "SEND" => break,
                        Some(Ok(_)) => continue,
                        _ => return,
                    }
                }
                let fault = match fault {
                    Fault::ReceiptWithoutId => Frame::new("RECEIPT"),
                    Fault::ConnectedTwice => connected(),
                    Fault::UnknownCommand => Frame::new("MESSAGE").header("destination", "/x"),
                    Fault::ReceiptForUnknownMessage => Frame::new("RECEIPT").header("receipt-id", "999999"),
                    _ => return,
                };
                let _ = c.send(fault).await;
                while let Some(Ok(_)) = c.next().await {}
            });
        }
    });
    sessions
}

/// Runs our CA client against the faulty server: the error is logged with
/// `expected`, the client comes back (a second session), and the message
/// is still in the queue once the client has stopped.
async fn client_meets(fault: Fault, expected: &str) {
    let bed = Bed::new(&format!("client-{fault:?}")).await;
    let Bed { net, vhost, ch, .. } = &bed;
    configure_queue(&net.ca_dir, "1234abcd", "to_aa", &vhost.url);
    queue_for_aa(ch, 1..2).await;
    let sessions = faulty_server(&net.aa_dir, peer_port(&net.ca_dir, "1234abcd"), fault).await;
    let (client, log) = spawn_logged("swpt-client", &["1234abcd", "to_aa"], &net.ca_dir, &vhost.url);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while sessions.load(Ordering::SeqCst) < 2 || !log.lock().unwrap().contains(expected) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{fault:?}: {} sessions; the client logged:\n{}",
            sessions.load(Ordering::SeqCst),
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .stop_cleanly(&format!("{fault:?}: the client on SIGTERM"))
        .await;
    assert_eq!(
        message_count(ch, "to_aa").await,
        1,
        "{fault:?}: the message was never receipted, so never acked"
    );
    assert_eq!(
        message_count(ch, "to_aa.XQ").await,
        0,
        "{fault:?}: nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_version() {
    client_meets(Fault::WrongVersion, "Received wrong protocol version.").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_before_connected() {
    client_meets(
        Fault::ReceiptBeforeConnected,
        "Received another command before CONNECTED.",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_without_id() {
    client_meets(Fault::ReceiptWithoutId, "RECEIPT command without a receipt ID.").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_twice() {
    client_meets(
        Fault::ConnectedTwice,
        "Received CONNECTED command more than once.",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_command() {
    client_meets(Fault::UnknownCommand, "Received unexpected command \"MESSAGE\".").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_for_a_message_never_sent() {
    client_meets(
        Fault::ReceiptForUnknownMessage,
        "RECEIPT for an unknown message 999999",
    )
    .await;
}
