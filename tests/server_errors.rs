//! A raw STOMP session over real TLS against a real swpt-server: every
//! ERROR of SPEC section 5, and RECEIPTs only after confirmation.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use stomp_codec::{Frame, StompCodec, StompItem};
use swpt_testkit::generate::Devnet;
use tokio_util::codec::Framed;

type Conn = Framed<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, StompCodec>;

async fn dial(net: &Devnet, port: u16) -> Conn {
    let mut certs = swpt_gateway::tls::load_certs(&net.ca_dir.join("server.crt")).unwrap();
    certs.extend(swpt_gateway::tls::load_certs(&net.ca_dir.join("peers/1234abcd/sub-ca.crt")).unwrap());
    let key = swpt_gateway::tls::load_key(&net.ca_dir.join("server.key")).unwrap();
    let root = swpt_gateway::tls::load_certs(&net.aa_dir.join("root-ca.crt"))
        .unwrap()
        .remove(0);
    let config = swpt_gateway::tls::client_config(certs, key, "1234abcd", &root).unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    Framed::new(tls, StompCodec::default())
}

async fn next_frame(c: &mut Conn) -> Option<Frame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), c.next())
            .await
            .expect("no answer in time")
        {
            Some(Ok(StompItem::Frame(f))) => return Some(f),
            Some(Ok(StompItem::HeartBeat)) => continue,
            _ => return None,
        }
    }
}

fn connect_frame() -> Frame {
    Frame::new("CONNECT")
        .header("accept-version", "1.1,1.2")
        .header("host", "/")
}

fn send_frame(receipt: &str, body: &serde_json::Value) -> Frame {
    Frame::new("SEND")
        .header("destination", "/exchange/accounts_in")
        .header("type", "PrepareTransfer")
        .header("content-type", "application/json")
        .header("receipt", receipt)
        .body(serde_json::to_vec(body).unwrap())
}

fn masqueraded(i: i64) -> serde_json::Value {
    let mut v = prepare_transfer(i);
    v["creditor_id"] = serde_json::json!(0x0000010000000001_i64);
    v["coordinator_id"] = serde_json::json!(0x0000010000000001_i64);
    v
}

/// Sends `frames` (after CONNECT when `connect`), returns the ERROR.
async fn error_for(net: &Devnet, port: u16, connect: bool, frames: Vec<Frame>) -> Frame {
    let mut c = dial(net, port).await;
    if connect {
        c.send(connect_frame()).await.unwrap();
        let f = next_frame(&mut c).await.unwrap();
        assert_eq!(f.command, "CONNECTED");
        assert_eq!(f.get("version"), Some("1.2"));
    }
    for f in frames {
        let _ = c.send(f).await;
    }
    loop {
        let f = next_frame(&mut c).await.expect("an ERROR frame");
        if f.command == "ERROR" {
            // The server closes after an ERROR.
            assert!(next_frame(&mut c).await.is_none());
            return f;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_error_and_receipt_order() {
    let bed = Bed::new("errors").await;
    let Bed { net, vhost, ch, .. } = &bed;
    sink_queue(ch, "accounts_in", "aa_received").await;
    let port = net_port(net);
    let _server = start_server(
        &net.aa_dir,
        port,
        &vhost.url,
        &[
            ("APP_STOMP_NETWORK_DELAY_MS", "500"),
            ("APP_STOMP_WATCHDOG_MS", "200"),
            ("APP_STOMP_HEARTBEAT_RECV_MS", "500"),
        ],
    )
    .await;

    let msg = |f: &Frame| f.get("message").unwrap_or("").to_string();
    let good = masqueraded(1);

    let e = error_for(net, port, false, vec![send_frame("1", &good)]).await;
    assert_eq!(msg(&e), "Received another command before CONNECT.");
    let e = error_for(
        net,
        port,
        false,
        vec![Frame::new("CONNECT").header("accept-version", "1.0,1.1")],
    )
    .await;
    assert_eq!(msg(&e), "STOMP 1.2 is not supported by the client.");
    let e = error_for(
        net,
        port,
        false,
        vec![connect_frame().header("heart-beat", "x,1")],
    )
    .await;
    assert_eq!(msg(&e), "Received invalid heart-beat value.");
    let e = error_for(net, port, true, vec![connect_frame()]).await;
    assert_eq!(msg(&e), "Received CONNECT command more than once.");
    let e = error_for(net, port, true, vec![Frame::new("SUBSCRIBE").header("id", "1")]).await;
    assert_eq!(msg(&e), "Received unexpected command \"SUBSCRIBE\".");
    for missing in ["receipt", "type", "destination"] {
        let mut f = send_frame("1", &good);
        f.headers.retain(|(n, _)| n != missing);
        let e = error_for(net, port, true, vec![f]).await;
        assert_eq!(msg(&e), format!("SEND command without a {missing} header."));
    }
    let mut f = send_frame("7", &good);
    f.headers[0].1 = "/exchange/elsewhere".into();
    let e = error_for(net, port, true, vec![f]).await;
    assert_eq!(msg(&e), "Invalid SEND destination \"/exchange/elsewhere\".");
    assert_eq!(e.get("receipt-id"), Some("7"));
    assert_eq!(e.get("type"), Some("PrepareTransfer"));
    assert_eq!(e.get("content-type"), Some("application/json"));
    assert_eq!(e.body, serde_json::to_vec(&good).unwrap());

    // A message failing processing: ERROR with its context, not published.
    let mut bad = good.clone();
    bad["creditor_id"] = serde_json::json!(0x0000090000000001_i64);
    bad["coordinator_id"] = serde_json::json!(0x0000090000000001_i64);
    let e = error_for(net, port, true, vec![send_frame("9", &bad)]).await;
    assert_eq!(msg(&e), "Invalid creditor ID: 0x0000090000000001.");
    assert_eq!(e.get("receipt-id"), Some("9"));
    // One SEND failing each processing rule.
    let mut cases: Vec<(serde_json::Value, &str, String)> = Vec::new();
    let mut v = good.clone();
    v["debtor_id"] = serde_json::json!(5);
    cases.push((
        v,
        "PrepareTransfer",
        "Invalid debtor ID: 0x0000000000000005.".into(),
    ));
    let mut v = good.clone();
    v["coordinator_type"] = serde_json::json!("issuing");
    cases.push((v, "PrepareTransfer", "Invalid PrepareTransfer message.".into()));
    let mut v = good.clone();
    v["coordinator_type"] = serde_json::json!("weird");
    cases.push((v, "PrepareTransfer", "Invalid coordinator type: weird.".into()));
    let mut v = good.clone();
    v["coordinator_type"] = serde_json::json!("agent");
    v["coordinator_id"] = serde_json::json!(0x0000020000000001_i64);
    cases.push((v, "PrepareTransfer", "Invalid coordinator ID.".into()));
    let mut v = good.clone();
    v["ts"] = serde_json::json!("9999-12-31T23:59:59+00:00");
    cases.push((v, "PrepareTransfer", "The message timestamp is".into()));
    cases.push((
        good.clone(),
        "AccountPurge",
        "Invalid message type: AccountPurge.".into(),
    ));
    for (body, t, text) in cases {
        let mut f = send_frame("11", &body);
        f.headers[1].1 = t.into();
        let e = error_for(net, port, true, vec![f]).await;
        assert!(msg(&e).starts_with(&text), "{} != {text}", msg(&e));
        assert_eq!(e.get("receipt-id"), Some("11"));
        assert_eq!(e.get("type"), Some(t));
    }

    let mut plain = send_frame("10", &good);
    plain.headers[2].1 = "text/plain".into();
    let e = error_for(net, port, true, vec![plain]).await;
    assert_eq!(msg(&e), "Unsupported content type: text/plain.");

    // RECEIPTs come only after confirmation, and DISCONNECT's last.
    let mut c = dial(net, port).await;
    c.send(connect_frame()).await.unwrap();
    let connected = next_frame(&mut c).await.unwrap();
    assert_eq!(connected.command, "CONNECTED");
    assert_eq!(
        connected.get("heart-beat"),
        Some("5000,500"),
        "our offer (APP_STOMP_HEARTBEAT_RECV_MS)"
    );
    for i in 0..20 {
        c.send(send_frame(&i.to_string(), &masqueraded(i))).await.unwrap();
    }
    c.send(Frame::new("DISCONNECT").header("receipt", "bye"))
        .await
        .unwrap();
    let mut receipts = Vec::new();
    while let Some(f) = next_frame(&mut c).await {
        assert_eq!(f.command, "RECEIPT");
        receipts.push(f.get("receipt-id").unwrap().to_string());
    }
    assert_eq!(receipts.last().map(String::as_str), Some("bye"));
    // Everything receipted is in the broker, and nothing that failed.
    let got = collect(ch, "aa_received", 20, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 20);
    assert_eq!(message_count(ch, "aa_received").await, 0);

    // A frame after DISCONNECT (while earlier SENDs wait for confirms).
    let mut c = dial(net, port).await;
    c.send(connect_frame()).await.unwrap();
    assert_eq!(next_frame(&mut c).await.unwrap().command, "CONNECTED");
    for i in 100..300 {
        c.feed(send_frame(&i.to_string(), &masqueraded(i))).await.unwrap();
    }
    c.feed(Frame::new("DISCONNECT").header("receipt", "bye"))
        .await
        .unwrap();
    c.send(Frame::new("SEND").header("receipt", "late"))
        .await
        .unwrap();
    let mut last = None;
    while let Some(f) = next_frame(&mut c).await {
        last = Some(f);
    }
    let last = last.unwrap();
    // Either the server saw the late frame before the confirms (ERROR), or
    // every confirm came first and it closed after the DISCONNECT receipt.
    match last.command.as_str() {
        // Nothing was receipted: what was published may or may not be in
        // the broker (the client sends it again).
        "ERROR" => assert_eq!(last.get("message"), Some("Received command after DISCONNECT.")),
        _ => {
            assert_eq!(last.get("receipt-id"), Some("bye"));
            let _ = collect(ch, "aa_received", 200, Duration::from_secs(20)).await;
        }
    }

    // A peer that goes silent after CONNECT is dropped by the watchdog.
    let mut c = dial(net, port).await;
    c.send(connect_frame().header("heart-beat", "100,0"))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut c).await.unwrap().command, "CONNECTED");
    let started = std::time::Instant::now();
    let e = next_frame(&mut c).await.unwrap();
    assert_eq!(e.command, "ERROR");
    assert!(
        e.get("message").unwrap().starts_with("No data received for"),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// Starts the AA's swpt-server on `port` with `env` added, and waits
/// until it listens.
/// The AA's port in the generated network.
fn net_port(net: &Devnet) -> u16 {
    peer_port(&net.ca_dir, "1234abcd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_peer_is_disconnected() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let port = net_port(&net);
    let _server = start_server(
        &net.aa_dir,
        port,
        "amqp://guest:guest@127.0.0.1:5672",
        &[("APP_PEERS_CHECK_SECONDS", "1")],
    )
    .await;
    let mut c = dial(&net, port).await;
    c.send(connect_frame()).await.unwrap();
    assert_eq!(next_frame(&mut c).await.unwrap().command, "CONNECTED");
    // Still active: the periodic check leaves the connection alone.
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), next_frame(&mut c))
            .await
            .is_err()
    );
    std::fs::write(net.aa_dir.join(format!("peers/{}/DEACTIVATED", net.ca_id)), "").unwrap();
    let f = tokio::time::timeout(Duration::from_secs(5), next_frame(&mut c))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.command, "ERROR");
    assert_eq!(f.get("message"), Some("The peer has been deactivated."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heart_beats_connect_deadline_and_connection_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let port = net_port(&net);
    let _server = start_server(
        &net.aa_dir,
        port,
        "amqp://guest:guest@127.0.0.1:5672",
        &[
            ("APP_STOMP_HEARTBEAT_SEND_MS", "100"),
            ("APP_STOMP_CONNECT_TIMEOUT_MS", "500"),
            ("APP_MAX_CONNECTIONS_PER_PEER", "2"),
        ],
    )
    .await;

    // We want heart-beats every 200 ms: the server sends them every
    // max(100, 200) ms.
    let mut c = dial(&net, port).await;
    c.send(connect_frame().header("heart-beat", "0,200"))
        .await
        .unwrap();
    let f = next_frame(&mut c).await.unwrap();
    assert_eq!(f.get("heart-beat"), Some("100,30000"));
    let started = std::time::Instant::now();
    let mut beats = 0;
    while started.elapsed() < Duration::from_millis(1100) {
        match tokio::time::timeout(Duration::from_millis(500), c.next()).await {
            Ok(Some(Ok(StompItem::HeartBeat))) => beats += 1,
            other => panic!("expected heart-beats, got {other:?}"),
        }
    }
    assert!((3..=8).contains(&beats), "{beats} heart-beats in about a second");

    // A second connection of the same peer is fine; a third is refused.
    let mut second = dial(&net, port).await;
    second.send(connect_frame()).await.unwrap();
    assert_eq!(next_frame(&mut second).await.unwrap().command, "CONNECTED");
    let mut third = dial(&net, port).await;
    let _ = third.send(connect_frame()).await;
    let e = next_frame(&mut third).await.unwrap();
    assert_eq!(e.get("message"), Some("Too many connections from one peer."));
    drop((c, second));

    // No CONNECT within the deadline: the server gives up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut idle = dial(&net, port).await;
    let started = std::time::Instant::now();
    let e = next_frame(&mut idle).await.unwrap();
    assert_eq!(e.command, "ERROR");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(next_frame(&mut idle).await.is_none());
}

/// A SEND the broker does not take (no broker, or no queue for its
/// routing key) gets an ERROR and no RECEIPT: the client keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublishable_sends_are_never_receipted() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let port = net_port(&net);
    let good = masqueraded(1);

    // No broker at all.
    let down = start_server(
        &net.aa_dir,
        port,
        "amqp://guest:guest@127.0.0.1:1",
        &[("APP_RMQ_CONNECTION_TIMEOUT_SECONDS", "2")],
    )
    .await;
    let e = error_for(&net, port, true, vec![send_frame("1", &good)]).await;
    assert_eq!(e.get("message"), Some("Internal server error."));
    drop(down);

    // A broker whose accounts_in routes the message nowhere (mandatory).
    let vhost = Vhost::new("unroutable");
    let (_conn, ch) = channel(&vhost).await;
    let durable = lapin::options::ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "accounts_in",
        lapin::ExchangeKind::Topic,
        durable,
        Default::default(),
    )
    .await
    .unwrap();
    let _up = start_server(&net.aa_dir, port, &vhost.url, &[]).await;
    let e = error_for(&net, port, true, vec![send_frame("2", &good)]).await;
    assert_eq!(e.get("message"), Some("Internal server error."));
}
