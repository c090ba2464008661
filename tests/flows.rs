//! The other directions (AA -> CA, AA -> DA, DA -> AA), a server killed
//! mid-stream, and clean stops on SIGTERM.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Flow<'a> {
    sender: &'a Path,
    receiver: &'a Path,
    receiver_id: &'a str,
    main_exchange: &'a str,
    key: &'a str,
    in_exchange: &'a str,
}

/// Sends `messages` from `sender` to `receiver` through the real binaries
/// and returns what lands in the receiver's `*_in` exchange.
async fn flow(vhost: &Vhost, f: &Flow<'_>, messages: &[(&str, Value)]) -> Vec<Value> {
    let (_c, ch) = channel(vhost).await;
    sink_queue(&ch, f.in_exchange, "received").await;
    let out = run(
        "configure-queue",
        &[f.receiver_id, "outgoing"],
        f.sender,
        &vhost.url,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let port = peer_port(f.sender, f.receiver_id);
    let _server = spawn(
        "swpt-server",
        &[],
        f.receiver,
        &vhost.url,
        &[("SWPT_SERVER_PORT", &port.to_string())],
    );
    wait_port(port).await;
    for (t, v) in messages {
        publish(&ch, f.main_exchange, f.key, t, &serde_json::to_vec(v).unwrap()).await;
    }
    let _client = spawn(
        "swpt-client",
        &[f.receiver_id, "outgoing"],
        f.sender,
        &vhost.url,
        &[],
    );
    let got = collect(&ch, "received", messages.len(), Duration::from_secs(30)).await;
    got.iter()
        .map(|d| serde_json::from_slice(&d.data).unwrap())
        .collect()
}

async fn aa_to_ca(n: &Nodes, vhost: &Vhost) {
    let msgs: Vec<_> = (0..50)
        .map(|i| {
            (
                "AccountUpdate",
                account_update(0x0000010100000000 + i, 0x1234abcd00000001),
            )
        })
        .collect();
    let got = flow(
        vhost,
        &Flow {
            sender: &n.aa,
            receiver: &n.ca,
            receiver_id: &n.ca_id,
            main_exchange: "to_creditors",
            key: "00.00.01.01.00.00.00.00",
            in_exchange: "creditors_in",
        },
        &msgs,
    )
    .await;
    let mut seen = std::collections::HashSet::new();
    for v in got {
        let c = v["creditor_id"].as_i64().unwrap();
        assert_eq!(c >> 32, 0x0000_0801, "moved to the CA's own subnet 000008");
        let mut expected = account_update(
            c - 0x0000_0800_0000_0000 + 0x0000_0100_0000_0000,
            0x1234abcd00000001,
        );
        expected["creditor_id"] = json!(c);
        assert_eq!(v, expected);
        seen.insert(c);
    }
    assert_eq!(seen.len(), 50);
}

async fn aa_to_da_and_back(n: &Nodes, prefix: &str) {
    let purge = json!({"type": "AccountPurge", "debtor_id": 0x1234abcd00000001_i64, "creditor_id": 0,
        "creation_date": "2020-01-01", "ts": "2023-01-01T12:00:00+00:00"});
    let vhost = Vhost::new(&format!("{prefix}-aa2da"));
    let got = flow(
        &vhost,
        &Flow {
            sender: &n.aa,
            receiver: &n.da,
            receiver_id: &n.da_id,
            main_exchange: "to_debtors",
            key: "12.34.ab.cd.00.00.00.01",
            in_exchange: "debtors_in",
        },
        &[("AccountPurge", purge.clone())],
    )
    .await;
    assert_eq!(got, vec![purge]);
    drop(vhost);

    let issuing = json!({"type": "PrepareTransfer", "debtor_id": 0x1234abcd00000001_i64, "creditor_id": 0,
        "coordinator_type": "issuing", "coordinator_id": 0x1234abcd00000001_i64, "coordinator_request_id": 1,
        "min_locked_amount": 0, "max_locked_amount": 10, "recipient": "x",
        "final_interest_rate_ts": "2023-01-01T12:00:00+00:00", "max_commit_delay": 100, "ts": "2023-01-01T12:00:00+00:00"});
    let vhost = Vhost::new(&format!("{prefix}-da2aa"));
    let got = flow(
        &vhost,
        &Flow {
            sender: &n.da,
            receiver: &n.aa,
            receiver_id: "1234abcd",
            main_exchange: "debtors_out",
            key: "",
            in_exchange: "accounts_in",
        },
        &[("PrepareTransfer", issuing.clone())],
    )
    .await;
    assert_eq!(got, vec![issuing]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aa_to_ca_unmasquerades() {
    let tmp = tempfile::tempdir().unwrap();
    aa_to_ca(&generated(tmp.path()), &Vhost::new("aa2ca")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aa_to_ca_shared_network() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(n) = shared("aa_to_ca_shared_network", tmp.path()) else {
        return;
    };
    aa_to_ca(&n, &Vhost::new("aa2ca-shared")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aa_to_da_and_da_to_aa() {
    let tmp = tempfile::tempdir().unwrap();
    aa_to_da_and_back(&generated(tmp.path()), "gen").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aa_to_da_and_da_to_aa_shared_network() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(n) = shared("aa_to_da_and_da_to_aa_shared_network", tmp.path()) else {
        return;
    };
    aa_to_da_and_back(&n, "shared").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_stream_nothing_is_lost() {
    let bed = Bed::new("sigkill").await;
    let Bed { net, vhost, ch, .. } = &bed;
    const N: i64 = 5000;
    let (mut server, client, port) = stream_to_aa(net, vhost, ch, N).await;
    // Let part of the stream through, then kill the server.
    let mut received = Collector::new(ch, "received").await;
    let mut seen = HashSet::new();
    for _ in 0..500 {
        let d = received
            .next(Duration::from_secs(30))
            .await
            .expect("the stream flows");
        seen.insert(request_id(&d));
    }
    server.sigkill();
    let _server = start_server(&net.aa_dir, port, &vhost.url, &[]).await;
    // The client reconnects by itself; every message arrives at least once.
    collect_ids(&mut received, &mut seen, N, Duration::from_secs(90)).await;
    assert_eq!(seen.len() as i64, N);
    client.stop_cleanly("client on SIGTERM").await;
}

/// Restarts the broker's app under a running server and client: run alone
/// (`cargo test -- --ignored --test-threads=1`, as scripts/test does).
/// Both sides lose their AMQP connections mid-stream; the server refuses
/// SENDs it cannot publish, the client reconnects by itself, and every
/// message arrives at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts RabbitMQ; scripts/test runs it alone"]
async fn broker_restart_mid_stream_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let vhost = Vhost::new("broker-restart");
    const N: i64 = 3000;
    let (_server, client) = {
        let (_c, ch) = channel(&vhost).await;
        let (server, client, _) = stream_to_aa(&net, &vhost, &ch, N).await;
        // Nothing is consumed before the restart (an auto-ack consumer
        // would take messages with it): wait until part of the stream is in.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while message_count(&ch, "received").await < 300 {
            assert!(tokio::time::Instant::now() < deadline, "the stream flows");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            message_count(&ch, "to_aa").await > 0,
            "the restart must come mid-stream"
        );
        (server, client)
    };
    let ctl = |a: &str| std::process::Command::new("rabbitmqctl").arg(a).output().unwrap();
    assert!(ctl("stop_app").status.success());
    assert!(ctl("start_app").status.success());
    let (_c, ch) = channel(&vhost).await;
    let mut received = Collector::new(&ch, "received").await;
    let mut seen = HashSet::new();
    collect_ids(&mut received, &mut seen, N, Duration::from_secs(120)).await;
    assert_eq!(seen.len() as i64, N, "every message arrives after the restart");
    assert_eq!(
        message_count(&ch, "to_aa.XQ").await,
        0,
        "nothing was dead-lettered"
    );
    client.stop_cleanly("client on SIGTERM").await;
}

#[test]
fn help_shows_defaults_and_env_names() {
    for (bin_name, needles) in [
        (
            "swpt-server",
            &[
                "SWPT_SERVER_PORT",
                "[default: 1234]",
                "SWPT_SERVER_BUFFER",
                "PROTOCOL_BROKER_URL",
            ][..],
        ),
        (
            "swpt-client",
            &[
                "SWPT_CLIENT_BUFFER",
                "SWPT_SERVER_CERT",
                "<PEER_NODE_ID>",
                "<QUEUE_NAME>",
            ][..],
        ),
        (
            "swpt-drainer",
            &["SWPT_CLIENT_BUFFER", "SWPT_SERVER_BUFFER", "-B"][..],
        ),
        ("configure-queue", &["SWPT_NODEDATA_URL", "APP_LOG_FORMAT"][..]),
    ] {
        let out = std::process::Command::new(bin(bin_name))
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for n in needles {
            assert!(text.contains(n), "{bin_name} --help lacks {n}:\n{text}");
        }
    }
}

#[tokio::test]
async fn json_logs_and_clear_startup_errors() {
    let out = std::process::Command::new(bin("swpt-server"))
        .env("SWPT_NODEDATA_URL", "file:///nonexistent/db")
        .env("APP_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("root-ca.crt"), "the error names the file: {err}");

    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let port = free_port().to_string();
    let args = ["--log-format", "json", "--log-level", "debug", "-p", &port];
    let (mut server, log) = spawn_logged(
        "swpt-server",
        &args,
        &net.aa_dir,
        "amqp://guest:guest@127.0.0.1:5672",
    );
    // A connection that closes before its TLS handshake: a debug record
    // with the address as a field of its own.
    wait_port(port.parse().unwrap()).await;
    wait_for_log(&log, "before the TLS handshake", Duration::from_secs(10)).await;
    server.sigterm();
    let status = server.0.wait().unwrap();
    assert!(status.success(), "SIGTERM stops the server cleanly: {status:?}");
    // Every line on stdout is a JSON object as the Python gateway writes
    // them: asctime, levelname, name and message.
    let log = log.lock().unwrap().clone();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for r in &records {
        for key in ["asctime", "levelname", "name", "message"] {
            assert!(r[key].is_string(), "{key} missing in {r}");
        }
        let t = r["asctime"].as_str().unwrap();
        assert!(
            t.len() == 24 && t.as_bytes()[10] == b'T' && t.ends_with("+0000"),
            "{t}"
        );
        assert!(["DEBUG", "INFO", "WARNING", "ERROR"].contains(&r["levelname"].as_str().unwrap()));
    }
    let listening = records
        .iter()
        .find(|r| r["message"].as_str().unwrap().contains("listening on"));
    assert_eq!(
        listening.expect("the listening record")["levelname"],
        "INFO",
        "{log}"
    );
    let probe = records.iter().find(|r| {
        r["message"]
            .as_str()
            .unwrap()
            .contains("before the TLS handshake")
    });
    let probe = probe.unwrap_or_else(|| panic!("the probe's record:\n{log}"));
    assert_eq!(probe["levelname"], "DEBUG");
    assert!(
        probe["addr"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{probe}"
    );
    assert!(
        probe["name"].as_str().unwrap().starts_with("swpt_gateway."),
        "{probe}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_missing_queue_and_an_unknown_peer() {
    let tmp = tempfile::tempdir().unwrap();
    let n = generated(tmp.path());
    let vhost = Vhost::new("client-fatal");
    let out = run("swpt-client", &["1234abcd", "no_such_queue"], &n.ca, &vhost.url);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the queue \"no_such_queue\" does not exist"),
        "{err}"
    );
    let out = run("swpt-client", &["abcdef12", "q"], &n.ca, &vhost.url);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("abcdef12 is not an active peer"), "{err}");
}

#[tokio::test]
async fn cpu_affinity_pins_every_thread_and_bad_lists_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let port = free_port();
    let server = spawn(
        "swpt-server",
        &[],
        &net.aa_dir,
        "amqp://guest:guest@127.0.0.1:5672",
        &[("SWPT_SERVER_PORT", &port.to_string()), ("APP_CPU_AFFINITY", "0")],
    );
    // Listening: the node database has been read on the blocking pool's
    // threads, which were started after the pinning.
    wait_port(port).await;
    let allowed = |task: &Path| {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .unwrap()
            .to_string();
        line.split_whitespace().nth(1).unwrap_or("").to_string()
    };
    let pid = server.0.id();
    let tasks: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| t.unwrap().path())
        .collect();
    assert!(
        tasks.len() >= 2,
        "the main thread and the blocking pool's: {tasks:?}"
    );
    for task in &tasks {
        assert_eq!(allowed(task), "0", "{}", task.display());
    }
    // Unpinned, a thread may run on every CPU (more than CPU 0 when the
    // machine has several), so the "0" above is the pinning's doing.
    let ours = allowed(Path::new("/proc/thread-self"));
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        assert_ne!(ours, "0", "this test's own thread is not pinned");
    }
    drop(server);

    let out = std::process::Command::new(bin("swpt-server"))
        .env("SWPT_NODEDATA_URL", format!("file://{}", net.aa_dir.display()))
        .env("APP_CPU_AFFINITY", "zero")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad setting is a configuration error"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("APP_CPU_AFFINITY: invalid CPU list 'zero'"));
}
