//! The alerting rules (`deploy/prometheus/`) and a real Prometheus:
//! promtool checks the rules and runs their unit tests; the
//! PrometheusRule of the kustomize component holds the same groups; a
//! Prometheus (Debian's package) scrapes a running server and client,
//! sees the flow through PromQL, and fires the link-down alert when the
//! server is killed. A machine without promtool or Prometheus records
//! skips.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use yaml_rust2::YamlLoader;

const WAIT: Duration = Duration::from_secs(60);

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

/// The program named by `var`, or `name`, if it runs here; else a skip.
fn tool(test: &str, var: &str, name: &str) -> Option<String> {
    let program = std::env::var(var).unwrap_or_else(|_| name.to_string());
    match Command::new(&program).arg("--version").output() {
        Ok(out) if out.status.success() => Some(program),
        _ => {
            swpt_testkit::skip(
                test,
                &format!("no {program} here (Debian's prometheus package has it)"),
            );
            None
        }
    }
}

#[test]
fn the_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = tool(
        "the_rules_pass_promtool_and_their_unit_tests",
        "SWPT_PROMTOOL",
        "promtool",
    ) else {
        return;
    };
    for args in [
        ["check", "rules", "swpt-rules.yml"],
        ["test", "rules", "swpt-rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(rules_dir())
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.contains("SUCCESS"),
            "promtool {args:?}:\n{said}"
        );
    }
}

#[test]
fn the_prometheus_rule_holds_the_same_groups() {
    let plain = std::fs::read_to_string(rules_dir().join("swpt-rules.yml")).unwrap();
    let plain = &YamlLoader::load_from_str(&plain).unwrap()[0];
    let component = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/components/alerts");
    let rule = std::fs::read_to_string(component.join("prometheusrule.yaml")).unwrap();
    let rule = &YamlLoader::load_from_str(&rule).unwrap()[0];
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    assert_eq!(rule["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    assert_eq!(
        rule["spec"]["groups"], plain["groups"],
        "the PrometheusRule and swpt-rules.yml differ"
    );
    let kustomization = std::fs::read_to_string(component.join("kustomization.yaml")).unwrap();
    let kustomization = &YamlLoader::load_from_str(&kustomization).unwrap()[0];
    assert_eq!(kustomization["kind"].as_str(), Some("Component"));
    assert_eq!(
        kustomization["resources"][0].as_str(),
        Some("prometheusrule.yaml")
    );
    // Every alert the issue asks for is there.
    let names: Vec<&str> = plain["groups"][0]["rules"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for alert in [
        "SwptLinkDown",
        "SwptSendsWithoutReceipts",
        "SwptConfirmsPending",
        "SwptBrokerBlocked",
        "SwptOwnCertificateExpiring",
        "SwptPeerCertificateExpiring",
        "SwptTlsHandshakeFailures",
        "SwptServerNotReady",
    ] {
        assert!(names.contains(&alert), "no {alert} in {names:?}");
    }
}

/// The value of a PromQL query that gives one sample, if it does.
async fn query(port: u16, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (_, body) = http_get(port, &format!("/api/v1/query?query={encoded}")).await;
    let answer: Value = serde_json::from_str(&body).ok()?;
    answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Waits until `promql` gives `want`.
async fn wait_query(port: u16, promql: &str, want: f64) {
    poll_until(WAIT, || async {
        match query(port, promql).await {
            Some(got) if got == want => Ok(()),
            got => Err(format!("{promql} is {got:?}, not {want}")),
        }
    })
    .await
}

/// The rules, every `for:` shortened to 2 s (the durations themselves are
/// the unit tests' business; here the expressions meet real series).
fn quick_rules(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(rules_dir().join("swpt-rules.yml")).unwrap();
    let quick: Vec<String> = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 2s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect();
    let path = dir.join("rules.yml");
    std::fs::write(&path, quick.join("\n")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_sees_the_flow_and_fires_link_down() {
    let test = "a_real_prometheus_sees_the_flow_and_fires_link_down";
    let Some(prometheus) = tool(test, "SWPT_PROMETHEUS", "prometheus") else {
        return;
    };
    let bed = Bed::new("prometheus").await;
    let Bed { net, vhost, ch, .. } = &bed;
    sink_queue(ch, "accounts_in", "received").await;
    configure_queue(&net.ca_dir, "1234abcd", "to_aa", &vhost.url);
    let (server_http, client_http, prom_port) = (free_port(), free_port(), free_port());
    let port = peer_port(&net.ca_dir, "1234abcd");
    let server_env = [
        ("APP_HTTP_PORT", server_http.to_string()),
        ("SWPT_SERVER_PORT", port.to_string()),
    ];
    let mut server = spawn(
        "swpt-server",
        &[],
        &net.aa_dir,
        &vhost.url,
        &env_refs(&server_env),
    );
    let client_env = [("APP_HTTP_PORT", client_http.to_string())];
    let _client = ca_client(net, &vhost.url, &env_refs(&client_env));

    let rules = quick_rules(bed.tmp.path());
    let config = bed.tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: swpt\n    static_configs:\n      - targets: ['127.0.0.1:{server_http}', '127.0.0.1:{client_http}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let _prom = Proc(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                bed.tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    poll_until(WAIT, || async {
        match http_get(prom_port, "/-/ready").await.0 {
            200 => Ok(()),
            s => Err(format!("Prometheus /-/ready: {s}")),
        }
    })
    .await;

    // The flow, seen through PromQL.
    wait_query(prom_port, "swpt_client_link_up{peer=\"1234abcd\"}", 1.0).await;
    let n = 50;
    queue_for_aa(ch, 0..n).await;
    wait_for_count(ch, "received", n as u32, WAIT).await;
    wait_query(prom_port, "sum(swpt_server_sends_published_total)", n as f64).await;
    wait_query(prom_port, "sum(swpt_client_acked_total)", n as f64).await;
    let server_ready = format!("swpt_ready{{instance=\"127.0.0.1:{server_http}\"}}");
    wait_query(prom_port, &server_ready, 1.0).await;

    // The server killed: the client's link goes down, and the alert fires.
    server.sigkill();
    poll_until(WAIT, || async {
        let (_, body) = http_get(prom_port, "/api/v1/alerts").await;
        let alerts: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let firing = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| {
                a["labels"]["alertname"] == "SwptLinkDown"
                    && a["state"] == "firing"
                    && a["labels"]["peer"] == "1234abcd"
            });
        match firing {
            true => Ok(()),
            false => Err(format!("SwptLinkDown not firing: {body}")),
        }
    })
    .await;
}
