//! `swpt-doctor` on clean networks (the shared one, a generated one) and
//! on one broken copy per class of finding, each reported with its file.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};
use swpt_testkit::generate::{write_peer, Authority, LeafOptions, NodeFiles, PeerLink, Validity};

fn doctor(node: &Path, broker: &str, args: &[&str]) -> (Output, String) {
    let mut cmd = node_command("swpt-doctor", node, broker);
    cmd.args(args);
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

const NO_BROKER: &str = "amqp://guest:guest@127.0.0.1:1";

/// The lines that report errors.
fn errors(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("ERROR ")).collect()
}

#[test]
fn a_generated_network_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    for node in [&net.aa_dir, &net.ca_dir, &net.da_dir] {
        let (out, text) = doctor(node, NO_BROKER, &["--strict"]);
        assert_eq!(out.status.code(), Some(0), "{}: {text}", node.display());
        assert!(text.ends_with("0 errors, 0 warnings\n"), "{text}");
    }
}

#[test]
fn the_shared_network_has_only_its_readable_keys() {
    let Some(data) = shared_data("the_shared_network_has_only_its_readable_keys") else {
        return;
    };
    for node in ["AA", "CA", "DA"] {
        let (out, text) = doctor(&data.join(node), NO_BROKER, &[]);
        assert_eq!(out.status.code(), Some(0), "{node}: {text}");
        // The shared test data keeps its keys world-readable (mode 444):
        // the one finding there is, a warning, which --strict fails on.
        assert!(text.ends_with("0 errors, 1 warnings\n"), "{node}: {text}");
        assert!(text.contains("server.key: readable by others"), "{text}");
        let (strict, _) = doctor(&data.join(node), NO_BROKER, &["--strict"]);
        assert_eq!(strict.status.code(), Some(1));
    }
}

/// An AA with one CA peer, written with the generator's parts.
fn pair(dir: &Path, leaf: Option<LeafOptions>) -> (NodeFiles, NodeFiles) {
    let aa = NodeFiles::create(
        dir.join("aa"),
        Authority::new(nodedata::NodeType::AA, Some("1234abcd")).unwrap(),
        1,
        None,
    )
    .unwrap();
    let ca = NodeFiles::create(
        dir.join("ca"),
        Authority::new(nodedata::NodeType::CA, None).unwrap(),
        2,
        Some("000008"),
    )
    .unwrap();
    let link = PeerLink {
        peer: &ca,
        subnet_file: Some(("subnet.txt", "000001")),
        issued_by_peer_comment: None,
        marker: Some("ACTIVE"),
    };
    write_peer(&aa, &link).unwrap();
    if let Some(opts) = leaf {
        let cert = aa.auth.issue_leaf(&aa.server_key, &opts).unwrap();
        std::fs::write(aa.dir.join("server.crt"), cert.pem()).unwrap();
    }
    (aa, ca)
}

#[test]
fn certificates_expired_or_near_expiry_and_a_mismatched_key() {
    let tmp = tempfile::tempdir().unwrap();
    let expired = LeafOptions {
        validity: Validity {
            not_before_days: -30,
            not_after_days: -1,
        },
        ..Default::default()
    };
    let (aa, _) = pair(&tmp.path().join("expired"), Some(expired));
    let (out, text) = doctor(&aa.dir, NO_BROKER, &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        errors(&text).iter().any(|l| l.contains("server.crt: expired on")),
        "{text}"
    );

    let soon = LeafOptions {
        validity: Validity {
            not_before_days: -1,
            not_after_days: 10,
        },
        ..Default::default()
    };
    let (aa, _) = pair(&tmp.path().join("soon"), Some(soon));
    let (out, text) = doctor(&aa.dir, NO_BROKER, &[]);
    assert_eq!(out.status.code(), Some(0), "a warning alone passes: {text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("WARNING ") && l.contains("server.crt: expires in")),
        "{text}"
    );

    let (aa, _) = pair(&tmp.path().join("key"), None);
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(aa.dir.join("server.key"), other.serialize_pem()).unwrap();
    let (out, text) = doctor(&aa.dir, NO_BROKER, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        errors(&text)
            .iter()
            .any(|l| l.contains("server.key: does not match")),
        "{text}"
    );
}

#[test]
fn a_wrong_name_constraint_a_bad_subnet_and_a_bad_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let (aa, ca) = pair(tmp.path(), None);
    let dir = aa.dir.join("peers").join(&ca.auth.node_id);
    let rel = format!("peers/{}", ca.auth.node_id);
    // The CA constrains the certificate it issued for us to someone else.
    let stranger = Authority::new(nodedata::NodeType::AA, Some("abcdef01")).unwrap();
    let sub = ca.auth.issue_peer_cert(&aa.auth, None, Some(&stranger)).unwrap();
    std::fs::write(dir.join("sub-ca.crt"), sub.pem()).unwrap();
    let (out, text) = doctor(&aa.dir, NO_BROKER, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let findings: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let f = findings
        .iter()
        .find(|f| f["file"] == format!("{rel}/sub-ca.crt"))
        .expect("the sub-CA's finding");
    assert_eq!(f["severity"], "error");
    assert!(f["problem"].as_str().unwrap().contains("name constraint"), "{f}");
    assert!(!f["fix"].as_str().unwrap().is_empty());

    std::fs::write(dir.join("subnet.txt"), "xyz\n").unwrap();
    let (_, text) = doctor(&aa.dir, NO_BROKER, &[]);
    assert!(
        errors(&text)
            .iter()
            .any(|l| l.contains(&format!("{rel}/subnet.txt"))),
        "{text}"
    );
    std::fs::write(dir.join("subnet.txt"), "000001\n").unwrap();

    std::fs::write(dir.join("nodeinfo/stomp.toml"), "servers = [").unwrap();
    let (_, text) = doctor(&aa.dir, NO_BROKER, &[]);
    assert!(
        errors(&text)
            .iter()
            .any(|l| l.contains(&format!("{rel}/nodeinfo/stomp.toml"))),
        "{text}"
    );
}

#[test]
fn an_unreadable_database_has_an_exit_status_of_its_own() {
    let out = Command::new(bin("swpt-doctor"))
        .env("SWPT_NODEDATA_URL", "file:///nonexistent/db")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_checks_find_a_missing_queue_and_change_nothing() {
    let bed = Bed::new("doctor").await;
    let Bed { net, vhost, ch, .. } = &bed;
    sink_queue(ch, "accounts_in", "received").await;
    let (out, text) = doctor(&net.aa_dir, &vhost.url, &["--broker"]);
    assert_eq!(out.status.code(), Some(1));
    let missing = format!("exchange aa.x.{}", net.ca_id);
    assert!(
        errors(&text)
            .iter()
            .any(|l| l.contains(&missing) && l.contains("configure-queue")),
        "{text}"
    );
    configure_queue(&net.aa_dir, &net.ca_id, "to_ca", &vhost.url);
    configure_queue(&net.aa_dir, &net.da_id, "to_da", &vhost.url);
    let (out, text) = doctor(&net.aa_dir, &vhost.url, &["--broker"]);
    assert_eq!(out.status.code(), Some(0), "{text}");
    // Unreachable broker: said, with the URL's password hidden.
    let (out, text) = doctor(&net.aa_dir, "amqp://guest:s3cret@127.0.0.1:1/x", &["--broker"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("cannot be reached") && !text.contains("s3cret"),
        "{text}"
    );
}
