//! amqp-bridge against the real RabbitMQ: confirmed publishing in order,
//! mandatory returns, header integer types, consumers (acks, rejects,
//! properties, several on one connection, the ends of a channel), a
//! missing queue, heartbeats, a hung or cut broker node, and recovery
//! after a broker restart.

mod common;

use amqp_bridge::{
    BridgeError, BrokerSettings, Consumer, HeaderValue, OutMessage, Publisher, SharedConnection,
};
use common::*;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use lapin::types::{AMQPValue, ShortString};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const WINDOW: usize = 100;

async fn publish_many(publisher: &mut Publisher, n: usize, key: &str) -> Result<Vec<usize>, BridgeError> {
    let headers = [("message-type", HeaderValue::Str("AccountPurge".into()))];
    let mut pending = FuturesOrdered::new();
    let mut confirmed = Vec::with_capacity(n);
    for i in 0..n {
        if pending.len() >= WINDOW {
            let (j, r): (usize, Result<(), BridgeError>) = pending.next().await.unwrap();
            r?;
            confirmed.push(j);
        }
        let body = format!("{{\"n\":{i}}}");
        let confirm = publisher
            .publish(&OutMessage {
                exchange: "ex",
                routing_key: key,
                msg_type: "AccountPurge",
                body: body.as_bytes(),
                headers: headers.to_vec(),
            })
            .await;
        pending.push_back(confirm.map(move |r| (i, r)));
    }
    while let Some((j, r)) = pending.next().await {
        r?;
        confirmed.push(j);
    }
    Ok(confirmed)
}

/// A new publisher once the shared connection is back (within 10 s);
/// panics with `why` otherwise.
async fn publisher_again(shared: &SharedConnection, why: &str) -> Publisher {
    for _ in 0..50 {
        match shared.publisher(Duration::from_secs(5)).await {
            Ok(p) => return p,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    panic!("{why}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_confirmed_in_order_and_mandatory_returns() {
    let vhost = Vhost::new("publisher");
    let (_c, ch) = channel(&vhost).await;
    sink_queue(&ch, "ex", "sink").await;
    let shared = SharedConnection::new(BrokerSettings::new(&vhost.url, Duration::from_secs(10)));
    let mut publisher = shared.publisher(Duration::from_secs(20)).await.unwrap();
    let confirmed = publish_many(&mut publisher, 10_000, "a.b").await.unwrap();
    assert_eq!(confirmed, (0..10_000).collect::<Vec<_>>());
    assert_eq!(message_count(&ch, "sink").await, 10_000);

    // An exchange with no binding for the key: the message comes back.
    let durable = lapin::options::ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare("lonely", lapin::ExchangeKind::Direct, durable, Default::default())
        .await
        .unwrap();
    // Unroutable messages among routable ones, all in flight at once:
    // exactly the unroutable ones fail, as returned, the others confirm.
    let mut pending = FuturesOrdered::new();
    for i in 0..200 {
        let lonely = i % 7 == 3;
        let body = format!("{{\"n\":{}}}", i % 10);
        let m = OutMessage {
            exchange: if lonely { "lonely" } else { "ex" },
            routing_key: if lonely { "nobody" } else { "a.b" },
            msg_type: "AccountPurge",
            body: body.as_bytes(),
            headers: vec![],
        };
        let confirm = publisher.publish(&m).await;
        pending.push_back(confirm.map(move |r| (lonely, r)));
    }
    let mut returned = 0;
    while let Some((lonely, r)) = pending.next().await {
        match r {
            Err(BridgeError::Returned {
                exchange,
                routing_key,
            }) if lonely => {
                assert_eq!((exchange.as_str(), routing_key.as_str()), ("lonely", "nobody"));
                returned += 1;
            }
            Ok(()) if !lonely => {}
            other => panic!("lonely: {lonely}, {other:?}"),
        }
    }
    assert_eq!(returned, (0..200).filter(|i| i % 7 == 3).count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_headers_use_the_smallest_type() {
    let vhost = Vhost::new("headers");
    let (_c, ch) = channel(&vhost).await;
    sink_queue(&ch, "ex", "sink").await;
    let shared = SharedConnection::new(BrokerSettings::new(&vhost.url, Duration::from_secs(10)));
    let mut publisher = shared.publisher(Duration::from_secs(20)).await.unwrap();
    let headers = [
        ("i8", HeaderValue::Int(-5)),
        ("i16", HeaderValue::Int(-300)),
        ("u16", HeaderValue::Int(40_000)),
        ("i32", HeaderValue::Int(-70_000)),
        ("u32", HeaderValue::Int(3_000_000_000)),
        ("i64", HeaderValue::Int(i64::MIN)),
        ("flag", HeaderValue::Bool(true)),
    ];
    publisher
        .publish(&OutMessage {
            exchange: "ex",
            routing_key: "k",
            msg_type: "AccountPurge",
            body: b"{}",
            headers: headers.to_vec(),
        })
        .await
        .await
        .unwrap();
    let got = collect(&ch, "sink", 1, Duration::from_secs(10)).await;
    let h = got[0].properties.headers().as_ref().unwrap().inner();
    let get = |n: &str| h.get(&ShortString::from(n)).cloned().unwrap();
    assert_eq!(get("i8"), AMQPValue::ShortShortInt(-5));
    assert_eq!(get("i16"), AMQPValue::ShortInt(-300));
    assert_eq!(get("u16"), AMQPValue::ShortUInt(40_000));
    assert_eq!(get("i32"), AMQPValue::LongInt(-70_000));
    assert_eq!(get("u32"), AMQPValue::LongUInt(3_000_000_000));
    assert_eq!(get("i64"), AMQPValue::LongLongInt(i64::MIN));
    assert_eq!(get("flag"), AMQPValue::Boolean(true));
    let p = &got[0].properties;
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("AccountPurge"));
    assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("swpt_stomp"));
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_a_missing_exchange_and_a_new_publisher_after_it() {
    let vhost = Vhost::new("frames");
    let (_c, ch) = channel(&vhost).await;
    sink_queue(&ch, "ex", "sink").await;
    let shared = SharedConnection::new(BrokerSettings::new(&vhost.url, Duration::from_secs(10)));
    let mut publisher = shared.publisher(Duration::from_secs(20)).await.unwrap();
    // Bodies larger than a frame (RabbitMQ's is 128 KiB), split and joined
    // back intact, between small ones.
    let bodies: Vec<Vec<u8>> = [10, 300_000, 131_064, 131_065, 0, 20]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (i * 7 + j % 251) as u8).collect())
        .collect();
    let mut pending = Vec::new();
    for body in &bodies {
        let m = OutMessage {
            exchange: "ex",
            routing_key: "k",
            msg_type: "AccountPurge",
            body,
            headers: vec![],
        };
        pending.push(publisher.publish(&m).await);
    }
    for p in pending {
        p.await.unwrap();
    }
    let got = collect(&ch, "sink", bodies.len(), Duration::from_secs(10)).await;
    let got: Vec<&Vec<u8>> = got.iter().map(|d| &d.data).collect();
    assert_eq!(got, bodies.iter().collect::<Vec<_>>());

    // An exchange that does not exist: RabbitMQ closes the channel; the
    // publish fails with its reason, and so does the publisher.
    let m = OutMessage {
        exchange: "no-such-exchange",
        routing_key: "k",
        msg_type: "AccountPurge",
        body: b"{}",
        headers: vec![],
    };
    let err = publisher.publish(&m).await.await.unwrap_err().to_string();
    assert!(err.contains("404") && err.contains("no-such-exchange"), "{err}");
    assert!(!publisher.usable());
    assert!(publisher.publish(&m).await.await.is_err());
    // A new publisher (a new connection) publishes again.
    let mut publisher = shared.publisher(Duration::from_secs(20)).await.unwrap();
    assert_eq!(publish_many(&mut publisher, 10, "k").await.unwrap().len(), 10);
    publisher.close().await;
    // The first six were taken by `collect`.
    assert_eq!(message_count(&ch, "sink").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_cumulative_ack_and_missing_queue() {
    let vhost = Vhost::new("consumer");
    let (_c, ch) = channel(&vhost).await;
    sink_queue(&ch, "ex", "q").await;
    for i in 0..30 {
        publish(
            &ch,
            "ex",
            "k",
            "AccountPurge",
            format!("{{\"n\":{i}}}").as_bytes(),
        )
        .await;
    }
    let shared = SharedConnection::new(BrokerSettings::new(&vhost.url, Duration::from_secs(10)));
    let mut consumer = Consumer::new(&shared, "q", 10).await.unwrap();
    let mut last = 0;
    for _ in 0..30 {
        let m = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.msg_type, "AccountPurge");
        assert_eq!(m.content_type, "application/json");
        last = m.delivery_tag;
        if last % 10 == 0 {
            // A window's worth, acked with one cumulative ack.
            consumer.ack_up_to(last);
        }
    }
    assert_eq!(last, 30);
    consumer.close().await;
    // Nothing was left unacked: nothing comes back to the queue.
    wait_for_count(&ch, "q", 0, Duration::from_secs(10)).await;

    match Consumer::new(&shared, "no-such-queue", 10).await {
        Err(BridgeError::NoQueue(q)) => assert_eq!(q, "no-such-queue"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a missing queue must be an error"),
    }
}

/// Restarts the broker's app: run alone (`cargo test -- --ignored
/// --test-threads=1`, as scripts/test does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts RabbitMQ; scripts/test runs it alone"]
async fn broker_restart_fails_the_stream_and_the_connection_recovers() {
    let vhost = Vhost::new("restart");
    let (_c, ch) = channel(&vhost).await;
    sink_queue(&ch, "ex", "sink").await;
    let shared = SharedConnection::new(BrokerSettings::new(&vhost.url, Duration::from_secs(10)));
    let mut publisher = shared.publisher(Duration::from_secs(5)).await.unwrap();
    // A consumer of what is published, on the shared connection.
    let mut consumer = Consumer::new(&shared, "sink", 100).await.unwrap();
    let consumed = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), consumer.next()).await {
                Ok(Ok(m)) => {
                    n += 1;
                    consumer.ack_up_to(m.delivery_tag);
                }
                Ok(Err(e)) => return (n, e),
                Err(_) => panic!("the consumer neither got a message nor failed in 30 s"),
            }
        }
    });
    let restart = tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let run = |a: &str| std::process::Command::new("rabbitmqctl").arg(a).output().unwrap();
        assert!(run("stop_app").status.success());
        assert!(run("start_app").status.success());
    });
    let result = publish_many(&mut publisher, 1_000_000, "k").await;
    assert!(result.is_err(), "the stream cut by the restart must fail");
    restart.await.unwrap();
    // The shared connection reconnects for the next publisher.
    let (n, why) = consumed.await.unwrap();
    assert!(n > 0, "the consumer got messages before the restart");
    assert!(
        matches!(why, BridgeError::ConnectionLost | BridgeError::Amqp(_)),
        "{why}"
    );
    let mut publisher = publisher_again(&shared, "the shared connection recovers").await;
    assert_eq!(publish_many(&mut publisher, 100, "k").await.unwrap().len(), 100);
    // A new consumer on the reconnected shared connection.
    let mut consumer = Consumer::new(&shared, "sink", 10).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
    assert!(matches!(m, Ok(Ok(_))), "a delivery after the restart");
}

/// A TCP forwarder to the local broker: a stand-in for one node of a
/// cluster, counting the connections it took. `cut` ends them (and refuses
/// new ones); `frozen` stops it passing bytes either way while the sockets
/// stay open (a node that hangs).
struct Node {
    port: u16,
    taken: Arc<AtomicUsize>,
    cut: Arc<tokio::sync::Notify>,
    frozen: Arc<AtomicBool>,
}

/// Copies `from` to `to` until either ends, holding the bytes while
/// `frozen` is set.
async fn forward(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn broker_node() -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = Node {
        port: listener.local_addr().unwrap().port(),
        taken: Arc::new(AtomicUsize::new(0)),
        cut: Arc::new(tokio::sync::Notify::new()),
        frozen: Arc::new(AtomicBool::new(false)),
    };
    let (count, stop, frozen) = (node.taken.clone(), node.cut.clone(), node.frozen.clone());
    tokio::spawn(async move {
        let mut open = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((client, _)) = accepted else { return };
                    count.fetch_add(1, Ordering::SeqCst);
                    let Ok(broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                        continue;
                    };
                    let ((cr, cw), (br, bw)) = (client.into_split(), broker.into_split());
                    open.spawn(forward(cr, bw, frozen.clone()));
                    open.spawn(forward(br, cw, frozen.clone()));
                }
                _ = stop.notified() => {
                    open.abort_all();
                    return;
                }
            }
        }
    });
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_urls_a_dead_first_one_and_failover_to_the_next() {
    let vhost = Vhost::new("urls");
    let (_c, ch) = channel(&vhost).await;
    sink_queue(&ch, "ex", "sink").await;
    let url = |port: u16| format!("amqp://guest:guest@127.0.0.1:{port}/{}", vhost.name);
    // A dead URL in the list, in either place: the other one is used.
    for urls in [
        format!("{},{}", url(1), vhost.url),
        format!("{}, {}", vhost.url, url(1)),
    ] {
        let shared = SharedConnection::new(BrokerSettings::new(&urls, Duration::from_secs(5)));
        let mut publisher = shared.publisher(Duration::from_secs(20)).await.unwrap();
        assert_eq!(publish_many(&mut publisher, 10, "k").await.unwrap().len(), 10);
        shared.close().await;
    }
    // Two nodes: the one in use goes away; the next connection goes to
    // the other.
    let (a, b) = (broker_node().await, broker_node().await);
    let urls = format!("{},{}", url(a.port), url(b.port));
    let shared = SharedConnection::new(BrokerSettings::new(&urls, Duration::from_secs(5)));
    let mut publisher = shared.publisher(Duration::from_secs(20)).await.unwrap();
    assert_eq!(publish_many(&mut publisher, 10, "k").await.unwrap().len(), 10);
    // The shared connection and the publishing one, both to one node.
    let (first, other) = match (a.taken.load(Ordering::SeqCst), b.taken.load(Ordering::SeqCst)) {
        (2, 0) => (a, b),
        (0, 2) => (b, a),
        other => panic!("two connections to one node expected: {other:?}"),
    };
    first.cut.notify_one();
    // The connection is gone: what was pending fails, nothing hangs.
    let cut = tokio::time::timeout(Duration::from_secs(30), publish_many(&mut publisher, 1_000, "k")).await;
    assert!(matches!(cut, Ok(Err(_))), "publishing through a cut node fails");
    // The shared connection finds out too (its reader sees the end), so
    // the next use reconnects it, to the next URL.
    let shared_ref = &shared;
    poll_until(Duration::from_secs(10), || async move {
        match shared_ref.is_up() {
            false => Ok(()),
            true => Err("the shared connection still looks up".to_string()),
        }
    })
    .await;
    let mut publisher = publisher_again(&shared, "the other node takes over").await;
    assert_eq!(publish_many(&mut publisher, 10, "k").await.unwrap().len(), 10);
    assert_eq!(
        other.taken.load(Ordering::SeqCst),
        2,
        "both reconnected through the other node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_broker_fails_pending_publishes_by_the_confirmation_timeout() {
    let vhost = Vhost::new("hung");
    let (_c, ch) = channel(&vhost).await;
    sink_queue(&ch, "ex", "sink").await;
    let node = broker_node().await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/{}", node.port, vhost.name);
    let shared = SharedConnection::new(BrokerSettings::new(&url, Duration::from_secs(5)));
    let mut publisher = shared.publisher(Duration::from_secs(2)).await.unwrap();
    assert_eq!(publish_many(&mut publisher, 10, "k").await.unwrap().len(), 10);
    node.frozen.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let hung = tokio::time::timeout(Duration::from_secs(30), publish_many(&mut publisher, 50, "k")).await;
    match hung {
        Ok(Err(BridgeError::ConfirmTimeout(t))) => assert_eq!(t, Duration::from_secs(2)),
        other => panic!("the confirmation timeout expected: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!publisher.usable());
    // Closing a publisher on a hung connection does not hang either.
    tokio::time::timeout(Duration::from_secs(10), publisher.close())
        .await
        .expect("close returns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_publisher_and_find_a_silent_broker() {
    let vhost = Vhost::new("heartbeat");
    let (_c, ch) = channel(&vhost).await;
    sink_queue(&ch, "ex", "sink").await;
    let node = broker_node().await;
    // A one-second heartbeat: RabbitMQ closes a connection that sends
    // nothing for two intervals.
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/{}?heartbeat=1",
        node.port, vhost.name
    );
    let shared = SharedConnection::new(BrokerSettings::new(&url, Duration::from_secs(5)));
    let mut publisher = shared.publisher(Duration::from_secs(20)).await.unwrap();
    assert_eq!(publish_many(&mut publisher, 5, "k").await.unwrap().len(), 5);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        publisher.usable(),
        "idle for four intervals, the connection is kept"
    );
    assert_eq!(publish_many(&mut publisher, 5, "k").await.unwrap().len(), 5);
    // The broker goes silent, with nothing pending: the publisher finds
    // out from the missing heartbeats, not at its next publish.
    node.frozen.store(true, Ordering::SeqCst);
    let publisher = &publisher;
    poll_until(Duration::from_secs(6), || async move {
        match publisher.usable() {
            false => Ok(()),
            true => Err("the publisher still takes a silent broker for alive".to_string()),
        }
    })
    .await;
    assert_eq!(message_count(&ch, "sink").await, 10);
}

/// Publishes to a queue by name through the default exchange, with the
/// given properties.
async fn put(ch: &lapin::Channel, queue: &str, props: lapin::BasicProperties, body: &[u8]) {
    ch.basic_publish("", queue, Default::default(), body, props)
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn next_within(
    consumer: &mut Consumer,
    within: Duration,
) -> Result<amqp_bridge::InMessage, BridgeError> {
    tokio::time::timeout(within, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("no delivery within {within:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_share_one_connection_a_channel_each() {
    let vhost = Vhost::new("consumers");
    let (_c, ch) = channel(&vhost).await;
    declare_peer_queue(&ch, "qa").await;
    declare_peer_queue(&ch, "qb").await;
    let typed = lapin::BasicProperties::default()
        .with_type("AccountPurge".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id("m".into())
        .with_timestamp(7)
        .with_priority(1);
    // A body split over three frames, an empty one, one without
    // properties.
    let large: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    put(&ch, "qa", typed.clone(), &large).await;
    put(&ch, "qa", typed.clone(), b"").await;
    put(&ch, "qa", lapin::BasicProperties::default(), b"{}").await;
    for i in 0..5 {
        put(&ch, "qb", typed.clone(), format!("{{\"b\":{i}}}").as_bytes()).await;
    }
    let node = broker_node().await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/{}", node.port, vhost.name);
    let shared = SharedConnection::new(BrokerSettings::new(&url, Duration::from_secs(5)));
    let mut a = Consumer::new(&shared, "qa", 10).await.unwrap();
    let mut b = Consumer::new(&shared, "qb", 2).await.unwrap();

    let m = next_within(&mut a, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (m.delivery_tag, m.msg_type.as_str(), m.content_type.as_str()),
        (1, "AccountPurge", "application/json")
    );
    assert!(m.body == large, "the large body is joined back byte-exact");
    let m = next_within(&mut a, Duration::from_secs(5)).await.unwrap();
    assert_eq!((m.delivery_tag, m.body.len()), (2, 0));
    let m = next_within(&mut a, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (m.msg_type.as_str(), m.content_type.as_str(), &m.body[..]),
        ("", "", &b"{}"[..])
    );
    a.ack_up_to(3);

    // A window of two: two deliveries, then nothing until an ack.
    let first = next_within(&mut b, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.body, b"{\"b\":0}");
    let second = next_within(&mut b, Duration::from_secs(5)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b.next())
            .await
            .is_err(),
        "prefetch 2"
    );
    b.reject(second.delivery_tag);
    b.ack_up_to(first.delivery_tag);
    let third = next_within(&mut b, Duration::from_secs(5)).await.unwrap();
    assert_eq!(third.body, b"{\"b\":2}");
    wait_for_count(&ch, "qb.XQ", 1, Duration::from_secs(5)).await;
    assert_eq!(
        collect(&ch, "qb.XQ", 1, Duration::from_secs(5)).await[0].data,
        b"{\"b\":1}"
    );

    // Closing one consumer leaves the other going; what b did not ack
    // goes back to its queue.
    b.close().await;
    wait_for_count(&ch, "qb", 3, Duration::from_secs(10)).await;
    wait_for_count(&ch, "qa", 0, Duration::from_secs(10)).await;
    put(&ch, "qa", typed.clone(), b"{\"a\":4}").await;
    let m = next_within(&mut a, Duration::from_secs(5)).await.unwrap();
    assert_eq!((m.delivery_tag, &m.body[..]), (4, &b"{\"a\":4}"[..]));
    a.ack_up_to(4);
    // One connection for the process: not one per consumer.
    assert!(amqp_bridge::check_queue(&shared, "qb.XQ").await.is_ok());
    assert_eq!(node.taken.load(Ordering::SeqCst), 1);
    a.close().await;
    shared.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_on_a_closed_channel_never_reaches_its_next_user() {
    let vhost = Vhost::new("reuse");
    let (_c, ch) = channel(&vhost).await;
    declare_peer_queue(&ch, "q").await;
    let shared = SharedConnection::new(BrokerSettings::new(&vhost.url, Duration::from_secs(5)));
    let mut old = Consumer::new(&shared, "q", 10).await.unwrap();
    // An unknown delivery tag: RabbitMQ closes the channel (406).
    old.ack_up_to(999);
    match next_within(&mut old, Duration::from_secs(5)).await {
        Err(BridgeError::Amqp(why)) => assert!(why.contains("406"), "{why}"),
        other => panic!("the closed channel must fail the consumer: {other:?}"),
    }
    // The channel's number is free again: the new consumer gets it.
    let mut new = Consumer::new(&shared, "q", 10).await.unwrap();
    for i in 0..3 {
        put(&ch, "q", Default::default(), format!("{i}").as_bytes()).await;
    }
    for tag in 1..=3 {
        assert_eq!(
            next_within(&mut new, Duration::from_secs(5))
                .await
                .unwrap()
                .delivery_tag,
            tag
        );
    }
    // The old consumer's ack would ack the new one's deliveries.
    old.ack_up_to(3);
    old.reject(1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(unacked(&vhost, "q"), 3, "the old consumer's ack was sent");
    new.ack_up_to(3);
    wait_for_acks(&vhost, "q", Duration::from_secs(10)).await;
    drop(old);
    new.close().await;
    shared.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_or_a_silent_broker_fails_the_consumer() {
    let vhost = Vhost::new("consumer-end");
    let (_c, ch) = channel(&vhost).await;
    declare_peer_queue(&ch, "gone").await;
    declare_peer_queue(&ch, "q").await;
    let node = broker_node().await;
    let url = format!(
        "amqp://guest:guest@127.0.0.1:{}/{}?heartbeat=1",
        node.port, vhost.name
    );
    let shared = SharedConnection::new(BrokerSettings::new(&url, Duration::from_secs(5)));
    let mut deleted = Consumer::new(&shared, "gone", 10).await.unwrap();
    let mut kept = Consumer::new(&shared, "q", 10).await.unwrap();
    ch.queue_delete("gone", Default::default()).await.unwrap();
    match next_within(&mut deleted, Duration::from_secs(5)).await {
        Err(BridgeError::ConsumerClosed) => {}
        other => panic!("a deleted queue must end its consumer: {other:?}"),
    }
    deleted.close().await;
    put(&ch, "q", Default::default(), b"1").await;
    assert_eq!(
        next_within(&mut kept, Duration::from_secs(5)).await.unwrap().body,
        b"1"
    );
    // The broker goes silent: the consumer learns it from the missing
    // heartbeats, while it waits.
    node.frozen.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    match next_within(&mut kept, Duration::from_secs(10)).await {
        Err(BridgeError::ConnectionLost) => {}
        other => panic!("a silent broker must fail the consumer: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Back: a new consumer gets the unacked delivery again.
    node.frozen.store(false, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut again = loop {
        match Consumer::new(&shared, "q", 10).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "no new consumer: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(
        next_within(&mut again, Duration::from_secs(10))
            .await
            .unwrap()
            .body,
        b"1"
    );
    again.close().await;
    shared.close().await;
}
