//! On a RabbitMQ node of the tests' own (`scripts/node start`; its
//! settings in `SWPT_SOLO_*`), never the shared broker: a memory alarm
//! in the middle of a stream through swpt-client and swpt-server (flow
//! control), a broker reached over TLS with a client certificate and SASL
//! EXTERNAL, and clean closes seen from the broker's log. Run one at a
//! time by `scripts/test`.

mod common;

use amqp_bridge::{BrokerSettings, Consumer, OutMessage, SharedConnection};
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The node's settings, or `None` after recording `test` as skipped.
fn solo(test: &str) -> Option<HashMap<&'static str, String>> {
    let keys = [
        "SWPT_SOLO_NODE",
        "SWPT_SOLO_URL",
        "SWPT_SOLO_AMQPS",
        "SWPT_SOLO_TLS",
        "SWPT_SOLO_LOG",
    ];
    let mut env = HashMap::new();
    for k in keys {
        let Ok(v) = std::env::var(k) else {
            swpt_testkit::skip(
                test,
                "SWPT_SOLO_* are not set (scripts/node start; scripts/node env)",
            );
            return None;
        };
        env.insert(k, v);
    }
    Some(env)
}

fn ctl(node: &str, args: &[&str]) {
    let mut all = vec!["-q", "-n", node];
    all.extend_from_slice(args);
    swpt_testkit::rabbitmqctl(&all);
}

/// `rabbitmqctl list_connections` of the node, with `columns`.
fn list_connections(node: &str, columns: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "-n", node, "list_connections", "--no-table-headers"])
        .args(columns)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many connections `program` holds on the node.
fn connections_of(node: &str, program: &str) -> usize {
    list_connections(node, &["client_properties"])
        .lines()
        .filter(|l| l.contains(&format!("\"{program}\"")))
        .count()
}

/// A fresh vhost `name` on the node (the peer exchanges of two tests
/// would share one otherwise); its URL.
fn vhost(node: &str, url: &str, name: &str) -> String {
    let _ = std::process::Command::new("rabbitmqctl")
        .args(["-q", "-n", node, "delete_vhost", name])
        .output();
    ctl(node, &["add_vhost", name]);
    ctl(node, &["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]);
    format!("{url}/{name}")
}

const N: i64 = 20_000;
/// When (distinct arrivals) the alarm goes off.
const ALARM_AT: usize = 5_000;
/// The server's confirmation timeout, and how long the alarm lasts.
const CONFIRM_TIMEOUT: u64 = 3;
const ALARM_FOR: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "alarms a broker node of its own (scripts/node); scripts/test runs it alone"]
async fn a_memory_alarm_longer_than_the_confirmation_timeout_loses_and_duplicates_nothing() {
    let test = "a_memory_alarm_longer_than_the_confirmation_timeout_loses_and_duplicates_nothing";
    let Some(solo) = solo(test) else { return };
    let node = &solo["SWPT_SOLO_NODE"];
    let url = &vhost(node, &solo["SWPT_SOLO_URL"], "alarm");
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let (_conn, ch) = channel_at(url).await;
    sink_queue(&ch, "accounts_in", "alarm.received").await;
    let out = run("configure-queue", &["1234abcd", "alarm.to_aa"], &net.ca_dir, url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    queue_for_aa(&ch, 0..N).await;

    let port = peer_port(&net.ca_dir, "1234abcd");
    let http = free_port();
    let env = [
        ("SWPT_SERVER_PORT", port.to_string()),
        ("APP_HTTP_PORT", http.to_string()),
        (
            "APP_RMQ_CONFIRMATION_TIMEOUT_SECONDS",
            CONFIRM_TIMEOUT.to_string(),
        ),
    ];
    let env = env_refs(&env);
    let (server, server_log) = spawn_logged_env("swpt-server", &[], &net.aa_dir, url, &env);
    wait_http(http, "/readyz", 200, Duration::from_secs(30)).await;
    let client = spawn("swpt-client", &["1234abcd", "alarm.to_aa"], &net.ca_dir, url, &[]);
    let mut received = Collector::new(&ch, "alarm.received").await;

    let started = Instant::now();
    let mut counts: HashMap<i64, u32> = HashMap::new();
    let mut alarm = None;
    let mut most_connections = 0;
    while (counts.len() as i64) < N {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {} of {N} arrived",
            counts.len()
        );
        if let Some(d) = received.next(Duration::from_millis(200)).await {
            *counts.entry(request_id(&d)).or_default() += 1;
        }
        if alarm.is_none() && counts.len() >= ALARM_AT {
            ctl(node, &["set_vm_memory_high_watermark", "0.0001"]);
            alarm = Some(Instant::now());
            // Blocked publishing shows in the probe and the gauge.
            let why = wait_http(http, "/readyz", 503, Duration::from_secs(15)).await;
            assert!(why.contains("RabbitMQ blocked publishing:"), "{why}");
            let metrics = wait_http(http, "/metrics", 200, Duration::from_secs(5)).await;
            assert!(metrics.contains("swpt_broker_blocked 1"), "{metrics}");
        }
        if let Some(at) = alarm {
            if at.elapsed() < ALARM_FOR + Duration::from_secs(5) {
                most_connections = most_connections.max(connections_of(node, "swpt-server"));
            }
            if at.elapsed() >= ALARM_FOR && at.elapsed() < ALARM_FOR + Duration::from_secs(1) {
                ctl(node, &["set_vm_memory_high_watermark", "0.4"]);
            }
        }
    }
    // Nothing more comes: no message arrived twice.
    while let Some(d) = received.next(Duration::from_secs(3)).await {
        *counts.entry(request_id(&d)).or_default() += 1;
    }
    let duplicates: u32 = counts.values().map(|c| c - 1).sum();
    println!(
        "alarm: {N} messages in {:.1} s, a {:?} alarm after {ALARM_AT}, {duplicates} duplicates, at most {most_connections} server connections",
        started.elapsed().as_secs_f64(),
        ALARM_FOR
    );
    assert!(alarm.is_some());
    assert_eq!(counts.len() as i64, N, "every message arrived");
    assert_eq!(duplicates, 0, "none twice");
    // The shared connection and one publishing connection, never more.
    assert!(
        most_connections <= 2,
        "{most_connections} server connections during the alarm"
    );
    wait_http(http, "/readyz", 200, Duration::from_secs(10)).await;
    let metrics = wait_http(http, "/metrics", 200, Duration::from_secs(5)).await;
    assert!(metrics.contains("swpt_broker_blocked 0"), "{metrics}");
    let log = server_log.lock().unwrap().clone();
    assert!(
        log.contains("RabbitMQ blocked publishing on the connection"),
        "{log}"
    );
    assert!(
        log.contains("RabbitMQ unblocked publishing on the connection after"),
        "{log}"
    );
    assert!(
        !log.contains("did not confirm"),
        "no confirmation timed out: {log}"
    );
    drop((client, server));
}

#[tokio::test]
#[ignore = "needs the TLS listener and the EXTERNAL plugin of scripts/node"]
async fn a_client_certificate_and_sasl_external_as_the_python_gateway_takes_them() {
    let test = "a_client_certificate_and_sasl_external_as_the_python_gateway_takes_them";
    let Some(solo) = solo(test) else { return };
    let (node, amqps, tls) = (
        &solo["SWPT_SOLO_NODE"],
        &solo["SWPT_SOLO_AMQPS"],
        &solo["SWPT_SOLO_TLS"],
    );
    let url = |cert: &str| {
        format!("{amqps}/?cafile={tls}/ca.pem&certfile={tls}/{cert}.pem&keyfile={tls}/{cert}.key&auth=external&name=ext-test")
    };
    let (_conn, ch) = channel_at(&solo["SWPT_SOLO_URL"]).await;
    sink_queue(&ch, "ext.exchange", "ext.queue").await;

    let conn = SharedConnection::new(BrokerSettings::new(&url("client"), Duration::from_secs(10)));
    let mut publisher = conn.publisher(Duration::from_secs(10)).await.unwrap();
    for i in 0..100 {
        let body = format!("{{\"n\":{i}}}");
        let m = OutMessage {
            exchange: "ext.exchange",
            routing_key: "k",
            msg_type: "T",
            body: body.as_bytes(),
            headers: vec![],
        };
        publisher.publish(&m).await.await.unwrap();
    }
    // Logged in as the certificate's common name, with EXTERNAL.
    let listed = list_connections(node, &["user", "auth_mechanism", "ssl", "client_properties"]);
    let ours: Vec<&str> = listed.lines().filter(|l| l.contains("ext-test")).collect();
    assert_eq!(
        ours.len(),
        2,
        "the shared and the publishing connection: {listed}"
    );
    assert!(
        ours.iter()
            .all(|l| l.starts_with("swpt-external\tEXTERNAL\ttrue")),
        "{listed}"
    );
    let mut consumer = Consumer::new(&conn, "ext.queue", 10).await.unwrap();
    let mut got = 0;
    while got < 100 {
        let m = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap();
        consumer.ack_up_to(m.delivery_tag);
        got += 1;
    }
    consumer.close().await;
    publisher.close().await;
    conn.close().await;

    // A certificate the broker does not trust: refused, clearly.
    let rogue = SharedConnection::new(BrokerSettings::new(&url("rogue"), Duration::from_secs(10)));
    let err = amqp_bridge::check_queue(&rogue, "ext.queue")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot connect to RabbitMQ"), "{err}");
    assert!(
        err.contains("UnknownCA") || err.contains("trust the client certificate"),
        "{err}"
    );
    // no_verify_ssl: the node's certificate (from a CA we were not told
    // of) is taken; without it, refused.
    let unchecked = format!("{amqps}/?no_verify_ssl=1");
    amqp_bridge::connect(&BrokerSettings::new(&unchecked, Duration::from_secs(10)))
        .await
        .unwrap();
    let checked = amqp_bridge::connect(&BrokerSettings::new(amqps, Duration::from_secs(10))).await;
    assert!(
        checked.unwrap_err().to_string().contains("certificate"),
        "an unknown CA is refused"
    );
    // AMQPLAIN, as the Python gateway may be told to log in.
    let amqplain = format!("{}/?auth=amqplain&name=amqplain-test", solo["SWPT_SOLO_URL"]);
    let conn = SharedConnection::new(BrokerSettings::new(&amqplain, Duration::from_secs(10)));
    amqp_bridge::check_queue(&conn, "ext.queue").await.unwrap();
    let listed = list_connections(node, &["auth_mechanism", "client_properties"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("AMQPLAIN") && l.contains("amqplain-test")),
        "{listed}"
    );
    conn.close().await;
    // And SASL EXTERNAL without a certificate gets RabbitMQ's refusal.
    let bare = format!("{amqps}/?cafile={tls}/ca.pem&auth=external");
    let err = amqp_bridge::connect(&BrokerSettings::new(&bare, Duration::from_secs(10)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot connect to RabbitMQ"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reads the log of the broker node of scripts/node"]
/// Seen from a real broker: each program's connections end with a close
/// RabbitMQ logs as such, none as "unexpectedly closed". (RabbitMQ 3.10
/// logs a close as clean once the close frame arrived, even if the socket
/// is shut before its close-ok; the order itself is held by the fake
/// broker's `closes_are_clean_channels_then_the_connection_then_the_socket_after_close_ok`.)
async fn every_program_closes_its_connections_cleanly() {
    let test = "every_program_closes_its_connections_cleanly";
    let Some(solo) = solo(test) else { return };
    let log_path = &solo["SWPT_SOLO_LOG"];
    let url = &vhost(&solo["SWPT_SOLO_NODE"], &solo["SWPT_SOLO_URL"], "close");
    let unclean = || {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        (
            log.matches("unexpectedly closed").count(),
            log.matches("closing AMQP connection").count(),
        )
    };
    let (unclean_before, clean_before) = unclean();
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let (_conn, ch) = channel_at(url).await;
    sink_queue(&ch, "accounts_in", "close.received").await;

    for (program, args, dir) in [
        ("configure-queue", vec!["1234abcd", "close.to_aa"], &net.ca_dir),
        ("swpt-broker-check", vec![url.as_str()], &net.ca_dir),
        ("swpt-doctor", vec!["--broker"], &net.aa_dir),
    ] {
        let out = run(program, &args, dir, url);
        assert!(out.status.code().is_some(), "{program}");
    }
    queue_for_aa(&ch, 0..200).await;
    let port = peer_port(&net.ca_dir, "1234abcd");
    let server = spawn(
        "swpt-server",
        &[],
        &net.aa_dir,
        url,
        &[("SWPT_SERVER_PORT", &port.to_string())],
    );
    wait_port(port).await;
    let client = spawn("swpt-client", &["1234abcd", "close.to_aa"], &net.ca_dir, url, &[]);
    let mut received = Collector::new(&ch, "close.received").await;
    for _ in 0..200 {
        received
            .next(Duration::from_secs(20))
            .await
            .expect("a message through the gateway");
    }
    client.stop_cleanly("swpt-client").await;
    server.stop_cleanly("swpt-server").await;
    // The drainer of a deactivated peer, stopped likewise.
    let drainer = spawn(
        "swpt-drainer",
        &["1234abcd", "close.to_aa"],
        &net.ca_dir,
        url,
        &[],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    drainer.stop_cleanly("swpt-drainer").await;
    // RabbitMQ writes its log a moment later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (unclean_after, clean_after) = unclean();
    assert_eq!(
        unclean_after, unclean_before,
        "connections closed without close/close-ok (see {log_path})"
    );
    assert!(
        clean_after >= clean_before + 6,
        "{} clean closes logged",
        clean_after - clean_before
    );
}
