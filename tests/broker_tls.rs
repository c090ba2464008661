//! `amqps://`: the gateway reaches RabbitMQ over TLS (rustls), checking
//! the broker's certificate, and never falls back to plain text. The
//! broker's TLS endpoint here is a small TLS-terminating proxy in front
//! of the local RabbitMQ, with a certificate from a CA of the test's own.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// A TLS endpoint on 127.0.0.1 forwarding to RabbitMQ's plain port;
/// returns its port and the CA certificate file that signed its
/// certificate.
async fn tls_endpoint(dir: &Path) -> (u16, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "broker test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let ca_file = dir.join("broker-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    (port, ca_file)
}

fn configure(node: &Path, url: &str, ca_file: Option<&Path>) -> std::process::Output {
    let mut cmd = node_command("configure-queue", node, url);
    cmd.args(["1234abcd", "to_aa"]);
    if let Some(ca) = ca_file {
        cmd.env("APP_BROKER_CA_FILE", ca);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_through_a_tls_broker_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let net = devnet(tmp.path());
    let vhost = Vhost::new("amqps");
    let (port, ca_file) = tls_endpoint(tmp.path()).await;
    let url = format!("amqps://guest:guest@127.0.0.1:{port}/{}", vhost.name);

    // The broker's certificate is checked: without our CA, no connection
    // (and no plain-text fallback).
    let out = configure(&net.ca_dir, &url, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    // A plain amqp:// to the TLS port does not get through either.
    let plain = format!("amqp://guest:guest@127.0.0.1:{port}/{}", vhost.name);
    let mut cmd = node_command("configure-queue", &net.ca_dir, &plain);
    cmd.args(["1234abcd", "to_aa"]);
    let out = cmd
        .env("APP_RMQ_CONNECTION_TIMEOUT_SECONDS", "3")
        .output()
        .unwrap();
    assert!(!out.status.success());

    let out = configure(&net.ca_dir, &url, Some(&ca_file));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (_c, ch) = channel(&vhost).await;
    sink_queue(&ch, "accounts_in", "received").await;
    let ca = ca_file.to_str().unwrap();
    let env = [("APP_BROKER_CA_FILE", ca)];
    let aa_port = peer_port(&net.ca_dir, "1234abcd").to_string();
    let server_env = [("APP_BROKER_CA_FILE", ca), ("SWPT_SERVER_PORT", aa_port.as_str())];
    let _server = spawn("swpt-server", &[], &net.aa_dir, &url, &server_env);
    wait_port(aa_port.parse().unwrap()).await;
    let client = spawn("swpt-client", &["1234abcd", "to_aa"], &net.ca_dir, &url, &env);
    queue_for_aa(&ch, 0..200).await;
    let got = collect(&ch, "received", 200, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 200);
    client.stop_cleanly("the client on SIGTERM").await;
    wait_for_count(&ch, "to_aa", 0, Duration::from_secs(10)).await;
}
