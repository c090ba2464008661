//! configure-queue against the real RabbitMQ, for every pairing of the
//! generated and the shared test networks.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// configure-queue, run twice, for every pairing: a key inside the peer's
/// subnet reaches the queue, one outside does not; a rejected message is
/// dead-lettered to QUEUE.XQ.
async fn check_topology(aa: &Path, ca: &Path, da: &Path, ca_id: &str, da_id: &str, vhost: &Vhost) {
    let (_conn, ch) = channel(vhost).await;
    // Publishes return once confirmed, that is once routed.
    ch.confirm_select(Default::default()).await.unwrap();
    // (node, peer, main exchange, a key inside, a key outside)
    let cases = [
        (
            aa,
            ca_id,
            "to_creditors",
            "00.00.01.00.00.00.00.05",
            Some("00.00.02.00.00.00.00.05"),
        ),
        (
            aa,
            da_id,
            "to_debtors",
            "12.34.ab.cd.00.00.00.05",
            Some("12.34.ab.cd.01.00.00.05"),
        ),
        (
            ca,
            "1234abcd",
            "creditors_out",
            "12.34.ab.cd.00.00.00.05",
            Some("12.34.ab.ce.00.00.00.05"),
        ),
        (da, "1234abcd", "debtors_out", "anything", None),
    ];
    for (i, (node, peer, exchange, inside, outside)) in cases.iter().enumerate() {
        let queue = format!("q{i}");
        for _ in 0..2 {
            configure_queue(node, peer, &queue, &vhost.url);
        }
        publish(&ch, exchange, inside, "AccountPurge", b"{}").await;
        if let Some(outside) = outside {
            publish(&ch, exchange, outside, "AccountPurge", b"{}").await;
        }
        assert_eq!(
            message_count(&ch, &queue).await,
            1,
            "{exchange}: only the key inside the subnet arrives"
        );
        // A rejected message goes to QUEUE.XQ.
        let d = ch
            .basic_get(&queue, Default::default())
            .await
            .unwrap()
            .expect("a message");
        ch.basic_reject(
            d.delivery.delivery_tag,
            lapin::options::BasicRejectOptions { requeue: false },
        )
        .await
        .unwrap();
        wait_for_count(&ch, &format!("{queue}.XQ"), 1, Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_queue_routes_by_subnet_for_every_pairing() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let vhost = Vhost::new("topology");
    check_topology(
        &net.aa_dir,
        &net.ca_dir,
        &net.da_dir,
        &net.ca_id,
        &net.da_id,
        &vhost,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_queue_on_the_shared_network() {
    let Some(data) = shared_data("configure_queue_on_the_shared_network") else {
        return;
    };
    let vhost = Vhost::new("topology-shared");
    check_topology(
        &data.join("AA"),
        &data.join("CA"),
        &data.join("DA"),
        "5921983fe0e6eb987aeedca54ad3c708",
        "060791aeca7637fa3357dfc0299fb4c5",
        &vhost,
    )
    .await;
}

/// Puts the random-exchange plugin back (and restarts the broker's app)
/// even when the test fails.
struct PluginBack;

impl Drop for PluginBack {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmq-plugins")
            .args(["enable", "rabbitmq_random_exchange"])
            .output();
        restart_app();
    }
}

fn restart_app() {
    for action in ["stop_app", "start_app"] {
        let out = std::process::Command::new("rabbitmqctl")
            .arg(action)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Disables the random-exchange plugin for a moment: run alone
/// (`cargo test -- --ignored --test-threads=1`, as scripts/test does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "disables a RabbitMQ plugin and restarts the broker; scripts/test runs it alone"]
async fn configure_queue_says_when_the_random_exchange_plugin_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let vhost = Vhost::new("noplugin");
    {
        let _back = PluginBack;
        let out = std::process::Command::new("rabbitmq-plugins")
            .args(["disable", "rabbitmq_random_exchange"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // A running node keeps the exchange type registered: restart the app.
        restart_app();
        let out = run("configure-queue", &["1234abcd", "q"], &net.ca_dir, &vhost.url);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("enable the rabbitmq_random_exchange plugin"),
            "{err}"
        );
    }
    // And with the plugin back, it works.
    configure_queue(&net.ca_dir, "1234abcd", "q", &vhost.url);
}

/// The types of the queues of `vhost` (rabbitmqctl), by name.
fn queue_types(vhost: &Vhost) -> std::collections::HashMap<String, String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "-p",
            &vhost.name,
            "--no-table-headers",
            "name",
            "type",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, t)| (n.trim().to_string(), t.trim().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_queue_declares_quorum_queues_and_refuses_a_type_change() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let vhost = Vhost::new("quorum");
    let args = ["1234abcd", "to_aa", "--queue-type", "quorum"];
    for _ in 0..2 {
        let out = run("configure-queue", &args, &net.ca_dir, &vhost.url);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let types = queue_types(&vhost);
    assert_eq!(
        types.get("to_aa").map(String::as_str),
        Some("quorum"),
        "{types:?}"
    );
    assert_eq!(
        types.get("to_aa.XQ").map(String::as_str),
        Some("quorum"),
        "{types:?}"
    );
    // The default is classic, as before; on the quorum queue it is refused,
    // clearly.
    let out = run("configure-queue", &["1234abcd", "to_aa"], &net.ca_dir, &vhost.url);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("exists with another type") && err.contains("--queue-type"),
        "{err}"
    );
    let out = run("configure-queue", &["1234abcd", "other"], &net.ca_dir, &vhost.url);
    assert!(out.status.success());
    assert_eq!(
        queue_types(&vhost).get("other").map(String::as_str),
        Some("classic")
    );
}
