//! Node-database and certificate changes under running processes: real
//! files edited while the server, the client and the drainer run. The
//! watcher polls every APP_NODEDATA_POLL_SECONDS (5 s by default, 1 s
//! here unless said otherwise); the deadlines asserted are generous, and
//! the measured times are printed.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stomp_codec::{Frame, StompCodec, StompItem};
use swpt_testkit::generate::Devnet;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

type Session = Framed<TlsStream<tokio::net::TcpStream>, StompCodec>;

const POLL: (&str, &str) = ("APP_NODEDATA_POLL_SECONDS", "1");

/// The CA's TLS set-up toward the AA, as its client makes it.
fn ca_tls(net: &Devnet) -> Arc<rustls::ClientConfig> {
    let ca = &net.ca_dir;
    let mut certs = swpt_gateway::tls::load_certs(&ca.join("server.crt")).unwrap();
    certs.truncate(1);
    certs.extend(swpt_gateway::tls::load_certs(&ca.join("peers/1234abcd/sub-ca.crt")).unwrap());
    let key = swpt_gateway::tls::load_key(&ca.join("server.key")).unwrap();
    let root = swpt_gateway::tls::load_certs(&ca.join("peers/1234abcd/root-ca.crt")).unwrap();
    Arc::new(swpt_gateway::tls::client_config(certs, key, "1234abcd", &root[0]).unwrap())
}

/// A STOMP session of the CA with the AA's server: the CONNECTED frame
/// (or the ERROR) and the session.
async fn dial(net: &Devnet, port: u16) -> (Frame, Session) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(ca_tls(net))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut s = Framed::new(tls, StompCodec::default());
    let connect = Frame::new("CONNECT")
        .header("accept-version", "1.2")
        .header("heart-beat", "0,0");
    s.send(connect).await.unwrap();
    (
        next_frame(&mut s, Duration::from_secs(10))
            .await
            .expect("an answer"),
        s,
    )
}

async fn next_frame(s: &mut Session, within: Duration) -> Option<Frame> {
    loop {
        match tokio::time::timeout(within, s.next()).await.ok()?? {
            Ok(StompItem::Frame(f)) => return Some(f),
            Ok(StompItem::HeartBeat) => continue,
            Err(_) => return None,
        }
    }
}

/// Dials until the server admits the CA; how long it took.
async fn admitted_within(net: &Devnet, port: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (frame, _) = dial(net, port).await;
        if frame.command == "CONNECTED" {
            return started.elapsed();
        }
        assert_eq!(frame.get("message"), Some("Unknown peer serial number."));
        assert!(started.elapsed() < within, "not admitted within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn aa_peer_dir(net: &Devnet) -> std::path::PathBuf {
    net.aa_dir.join("peers").join(&net.ca_id)
}

/// The AA's server of `net` on a free port, with more environment `env`;
/// and the port.
async fn aa_server_on_free_port(net: &Devnet, env: &[(&str, &str)]) -> (Proc, u16) {
    let port = free_port();
    (
        start_server(&net.aa_dir, port, "amqp://guest:guest@127.0.0.1:5672", env).await,
        port,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_made_active_is_admitted_and_a_deactivated_one_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    std::fs::remove_file(aa_peer_dir(&net).join("ACTIVE")).unwrap();
    let (_server, port) = aa_server_on_free_port(&net, &[POLL]).await;
    let (refused, _) = dial(&net, port).await;
    assert_eq!(refused.get("message"), Some("Unknown peer serial number."));

    std::fs::write(aa_peer_dir(&net).join("ACTIVE"), "").unwrap();
    let took = admitted_within(&net, port, Duration::from_secs(10)).await;
    println!("admitted {took:?} after ACTIVE was created (poll every 1 s)");

    let (connected, mut open) = dial(&net, port).await;
    assert_eq!(connected.command, "CONNECTED");
    std::fs::write(aa_peer_dir(&net).join("DEACTIVATED"), "").unwrap();
    let started = Instant::now();
    let error = next_frame(&mut open, Duration::from_secs(10))
        .await
        .expect("an ERROR within 10 s");
    println!("cut {:?} after DEACTIVATED was created", started.elapsed());
    assert_eq!(error.command, "ERROR");
    assert_eq!(error.get("message"), Some("The peer has been deactivated."));
    let (refused, _) = dial(&net, port).await;
    assert_eq!(refused.get("message"), Some("Unknown peer serial number."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_poll_a_lost_active_file_cuts_within_ten_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let (_server, port) = aa_server_on_free_port(&net, &[]).await;
    let (connected, mut open) = dial(&net, port).await;
    assert_eq!(connected.command, "CONNECTED");
    std::fs::remove_file(aa_peer_dir(&net).join("ACTIVE")).unwrap();
    let started = Instant::now();
    let error = next_frame(&mut open, Duration::from_secs(12))
        .await
        .expect("an ERROR");
    let took = started.elapsed();
    println!("cut {took:?} after ACTIVE was removed (default poll, 5 s)");
    assert_eq!(error.get("message"), Some("The peer has been deactivated."));
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    std::fs::remove_file(aa_peer_dir(&net).join("ACTIVE")).unwrap();
    let (mut server, port) = aa_server_on_free_port(&net, &[("APP_NODEDATA_POLL_SECONDS", "3600")]).await;
    std::fs::write(aa_peer_dir(&net).join("ACTIVE"), "").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (still_refused, _) = dial(&net, port).await;
    assert_eq!(
        still_refused.get("message"),
        Some("Unknown peer serial number."),
        "no poll for an hour"
    );
    server.signal(libc::SIGHUP);
    let took = admitted_within(&net, port, Duration::from_secs(5)).await;
    println!("admitted {took:?} after SIGHUP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_written_file_is_not_a_gone_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let (_server, port) = aa_server_on_free_port(&net, &[POLL]).await;
    let (connected, mut open) = dial(&net, port).await;
    assert_eq!(connected.command, "CONNECTED");
    // The peer's manifest, cut in the middle of a write.
    let manifest = aa_peer_dir(&net).join("nodeinfo/stomp.toml");
    let good = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, &good[..good.len() / 2]).unwrap();
    // Several polls later the session goes on, and new ones are admitted.
    assert!(
        next_frame(&mut open, Duration::from_secs(4)).await.is_none(),
        "the session goes on"
    );
    let (again, _) = dial(&net, port).await;
    assert_eq!(again.command, "CONNECTED", "the peer is still known");
    std::fs::write(&manifest, &good).unwrap();
    // A broken certificate file alike.
    let sub = aa_peer_dir(&net).join("sub-ca.crt");
    let pem = std::fs::read(&sub).unwrap();
    std::fs::write(&sub, &pem[..pem.len() / 3]).unwrap();
    assert!(
        next_frame(&mut open, Duration::from_secs(3)).await.is_none(),
        "the session goes on"
    );
    std::fs::write(&sub, &pem).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_server_certificate_is_used_for_new_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let (_server, port) = aa_server_on_free_port(&net, &[POLL]).await;
    let presented = |s: &Session| s.get_ref().get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (connected, mut open) = dial(&net, port).await;
    assert_eq!(connected.command, "CONNECTED");
    let old = presented(&open);
    for f in ["server.crt", "server.key"] {
        std::fs::copy(net.aa_dir.join("next").join(f), net.aa_dir.join(f)).unwrap();
    }
    let next = swpt_gateway::tls::load_certs(&net.aa_dir.join("next/server.crt")).unwrap();
    let started = Instant::now();
    loop {
        let (frame, s) = dial(&net, port).await;
        assert_eq!(frame.command, "CONNECTED");
        if presented(&s) == next[0].to_vec() {
            break;
        }
        assert_eq!(presented(&s), old);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new certificate in use within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "new certificate in use {:?} after the files were replaced",
        started.elapsed()
    );
    // The connection opened before goes on.
    open.send(StompItem::HeartBeat).await.unwrap();
    assert!(next_frame(&mut open, Duration::from_millis(500)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_waits_while_its_peer_is_deactivated() {
    let bed = Bed::new("reload-client").await;
    let Bed { net, vhost, ch, .. } = &bed;
    sink_queue(ch, "accounts_in", "received").await;
    configure_queue(&net.ca_dir, "1234abcd", "to_aa", &vhost.url);
    let port = peer_port(&net.ca_dir, "1234abcd");
    let _server = start_server(&net.aa_dir, port, &vhost.url, &[]).await;
    let (mut client, log) = spawn_logged_env(
        "swpt-client",
        &["1234abcd", "to_aa"],
        &net.ca_dir,
        &vhost.url,
        &[POLL],
    );
    queue_for_aa(ch, 0..10).await;
    collect(ch, "received", 10, Duration::from_secs(30)).await;
    // Deactivated on the client's side: the link ends, the client waits.
    let aa_at_ca = net.ca_dir.join("peers/1234abcd");
    std::fs::write(aa_at_ca.join("DEACTIVATED"), "").unwrap();
    let started = Instant::now();
    wait_for_log(
        &log,
        "is not active in the node database; waiting",
        Duration::from_secs(10),
    )
    .await;
    println!(
        "the client stopped {:?} after DEACTIVATED was created",
        started.elapsed()
    );
    queue_for_aa(ch, 10..20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        message_count(ch, "to_aa").await,
        10,
        "nothing is sent while the peer is deactivated"
    );
    assert!(
        client.0.try_wait().unwrap().is_none(),
        "the client waits; it does not exit"
    );
    std::fs::remove_file(aa_at_ca.join("DEACTIVATED")).unwrap();
    collect(ch, "received", 10, Duration::from_secs(30)).await;
    assert_eq!(
        log.lock().unwrap().matches("waiting until it is").count(),
        1,
        "said once"
    );
    client.stop_cleanly("the client on SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drainer_waits_for_the_deactivation() {
    let bed = Bed::new("reload-drainer").await;
    let Bed { net, vhost, ch, .. } = &bed;
    declare_peer_queue(ch, "to_ca").await;
    sink_queue(ch, "accounts_in", "replies").await;
    let body = serde_json::to_vec(&account_update(0x0000010000000001, 0x1234abcd00000001)).unwrap();
    publish(ch, "", "to_ca", "AccountUpdate", &body).await;
    let (drainer, log) = spawn_logged_env(
        "swpt-drainer",
        &[&net.ca_id, "to_ca"],
        &net.aa_dir,
        &vhost.url,
        &[POLL],
    );
    wait_for_log(&log, "has not been deactivated; waiting", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        message_count(ch, "to_ca").await,
        1,
        "nothing drained before the deactivation"
    );
    std::fs::write(aa_peer_dir(net).join("DEACTIVATED"), "").unwrap();
    wait_for_log(&log, "has been deactivated", Duration::from_secs(10)).await;
    let started = Instant::now();
    while message_count(ch, "to_ca").await != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not drained; the drainer said:\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = collect(ch, "replies", 1, Duration::from_secs(10)).await;
    let reply: serde_json::Value = serde_json::from_slice(&reply[0].data).unwrap();
    assert_eq!(reply["type"], "ConfigureAccount");
    drainer.stop_cleanly("the drainer on SIGTERM").await;
}
