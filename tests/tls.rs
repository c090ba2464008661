//! The TLS rules over real sockets: handshakes that must succeed (shared
//! and generated networks) and a matrix of refusals.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use nodedata::{CertificateDer, NodeType};
use rcgen::{DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use stomp_codec::{Frame, StompCodec, StompItem};
use swpt_testkit::generate::{node_dn, write_peer, Authority, LeafOptions, NodeFiles, PeerLink, Validity};
use tokio_util::codec::Framed;

/// Accepts any server: for the server-side refusal cases.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::try_from(key.serialize_der()).unwrap()
}

fn client_presenting(
    chain: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    match chain {
        Some((certs, key)) => b.with_client_auth_cert(certs, key).unwrap(),
        None => b.with_no_client_auth(),
    }
}

/// What happened: the server's first frame after our CONNECT, or `None`
/// when the connection was refused.
async fn try_session(config: rustls::ClientConfig, port: u16) -> Option<Frame> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .ok()?;
    let mut c = Framed::new(tls, StompCodec::default());
    c.send(Frame::new("CONNECT").header("accept-version", "1.2"))
        .await
        .ok()?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .ok()?
        {
            Some(Ok(StompItem::Frame(f))) => return Some(f),
            Some(Ok(StompItem::HeartBeat)) => continue,
            _ => return None,
        }
    }
}

fn connected(f: &Option<Frame>) -> bool {
    f.as_ref().is_some_and(|f| f.command == "CONNECTED")
}

/// An AA with CA peers in every state, built here so the test holds the
/// root keys.
struct Matrix {
    _tmp: tempfile::TempDir,
    aa: NodeFiles,
    ca: NodeFiles,
    da: NodeFiles,
    port: u16,
    gone: NodeFiles,
    idle: NodeFiles,
}

fn link<'a>(
    peer: &'a NodeFiles,
    subnet: Option<(&'a str, &'a str)>,
    comment: Option<&'a str>,
    marker: Option<&'a str>,
) -> PeerLink<'a> {
    PeerLink {
        peer,
        subnet_file: subnet,
        issued_by_peer_comment: comment,
        marker,
    }
}

fn matrix() -> Matrix {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dir = tmp.path();
    let aa = NodeFiles::create(
        dir.join("aa"),
        Authority::new(NodeType::AA, Some("1234abcd")).unwrap(),
        port,
        None,
    )
    .unwrap();
    let mk_ca = |name: &str| {
        NodeFiles::create(
            dir.join(name),
            Authority::new(NodeType::CA, None).unwrap(),
            1,
            Some("000008"),
        )
        .unwrap()
    };
    let ca = mk_ca("ca");
    let gone = mk_ca("gone");
    let idle = mk_ca("idle");
    let da = NodeFiles::create(
        dir.join("da"),
        Authority::new(NodeType::DA, None).unwrap(),
        1,
        Some("1234abcd00"),
    )
    .unwrap();
    for (peer, subnet, marker) in [
        (&ca, "000001", Some("ACTIVE")),
        (&gone, "000002", Some("DEACTIVATED")),
        (&idle, "000003", None),
    ] {
        write_peer(&aa, &link(peer, Some(("subnet.txt", subnet)), None, marker)).unwrap();
        write_peer(
            peer,
            &link(
                &aa,
                Some(("masq-subnet.txt", subnet)),
                Some(subnet),
                Some("ACTIVE"),
            ),
        )
        .unwrap();
    }
    write_peer(
        &aa,
        &link(&da, Some(("subnet.txt", "1234abcd00")), None, Some("ACTIVE")),
    )
    .unwrap();
    write_peer(&da, &link(&aa, None, Some("1234abcd00"), Some("ACTIVE"))).unwrap();
    Matrix {
        _tmp: tmp,
        aa,
        ca,
        da,
        port,
        gone,
        idle,
    }
}

fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    swpt_gateway::tls::load_certs(path).unwrap()
}

/// The chain `node` presents to the AA: a leaf made by `node`'s root and
/// the sub-CA the AA issued.
fn chain_of(node: &NodeFiles, opts: &LeafOptions) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let leaf = node.auth.issue_leaf(&key, opts).unwrap();
    let mut certs = vec![leaf.der().clone()];
    certs.extend(pem_certs(&node.dir.join("peers/1234abcd/sub-ca.crt")));
    (certs, key_der(&key))
}

fn dn_without_org(id: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationalUnitName, "Creditors Agents");
    dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), id);
    dn
}

/// A chain whose leaf subject holds two serialNumbers (rcgen cannot write
/// one, OpenSSL can), signed by `node`'s root.
fn chain_with_serials(node: &NodeFiles, two: bool) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let dir = node.dir.join(format!("openssl-leaf-{two}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("root.key"), node.auth.key.serialize_pem()).unwrap();
    std::fs::write(dir.join("root.crt"), node.auth.root.pem()).unwrap();
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth,serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .unwrap();
    let id = &node.auth.node_id;
    let mut subject = format!("/O=Swaptacular Nodes Registry/OU=Creditors Agents/serialNumber={id}");
    if two {
        subject.push_str(&format!("/serialNumber={id}"));
    }
    let sh = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "leaf.key",
    ]);
    sh(&[
        "req", "-new", "-key", "leaf.key", "-subj", &subject, "-out", "leaf.csr",
    ]);
    sh(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "root.crt",
        "-CAkey",
        "root.key",
        "-CAcreateserial",
        "-days",
        "30",
        "-extfile",
        "ext.cnf",
        "-out",
        "leaf.crt",
    ]);
    let mut certs = pem_certs(&dir.join("leaf.crt"));
    certs.extend(pem_certs(&node.dir.join("peers/1234abcd/sub-ca.crt")));
    (certs, swpt_gateway::tls::load_key(&dir.join("leaf.key")).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_matrix() {
    let m = matrix();
    let _server = start_server(
        &m.aa.dir,
        m.port,
        "amqp://guest:guest@127.0.0.1:5672",
        &[("APP_SSL_HANDSHAKE_TIMEOUT", "1")],
    )
    .await;
    let ok = LeafOptions::default();

    // The real thing works, for a CA and for a DA.
    assert!(connected(
        &try_session(client_presenting(Some(chain_of(&m.ca, &ok))), m.port).await
    ));
    assert!(connected(
        &try_session(client_presenting(Some(chain_of(&m.da, &ok))), m.port).await
    ));
    // Another certificate before the sub-CA (a server.crt holding more
    // than the leaf) is fine.
    let (mut certs, key) = chain_of(&m.ca, &ok);
    certs.insert(1, m.ca.auth.root.der().clone());
    assert!(connected(
        &try_session(client_presenting(Some((certs, key))), m.port).await
    ));

    let refused = |f: &Option<Frame>| !connected(f);
    // Unknown root.
    let stranger = NodeFiles::create(
        m.aa.dir.join("../stranger"),
        Authority::new(NodeType::CA, None).unwrap(),
        1,
        Some("000008"),
    )
    .unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = stranger.auth.issue_leaf(&key, &ok).unwrap();
    assert!(refused(
        &try_session(
            client_presenting(Some((vec![leaf.der().clone()], key_der(&key)))),
            m.port
        )
        .await
    ));
    // Expired and not yet valid.
    let expired = LeafOptions {
        validity: Validity {
            not_before_days: -400,
            not_after_days: -10,
        },
        ..Default::default()
    };
    assert!(refused(
        &try_session(client_presenting(Some(chain_of(&m.ca, &expired))), m.port).await
    ));
    let future = LeafOptions {
        validity: Validity {
            not_before_days: 10,
            not_after_days: 400,
        },
        ..Default::default()
    };
    assert!(refused(
        &try_session(client_presenting(Some(chain_of(&m.ca, &future))), m.port).await
    ));
    // A leaf naming another peer (the DA), signed by the CA's key.
    let posing = LeafOptions {
        subject: Some(m.da.auth.dn()),
        ..Default::default()
    };
    assert!(refused(
        &try_session(client_presenting(Some(chain_of(&m.ca, &posing))), m.port).await
    ));
    // A sub-CA permitting a different DN.
    let bad_sub =
        m.aa.auth
            .issue_peer_cert(&m.ca.auth, None, Some(&m.da.auth))
            .unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = m.ca.auth.issue_leaf(&key, &ok).unwrap();
    let chain = vec![leaf.der().clone(), bad_sub.der().clone()];
    assert!(refused(
        &try_session(client_presenting(Some((chain, key_der(&key)))), m.port).await
    ));
    // No sub-CA at all, and no certificate at all.
    let key = KeyPair::generate().unwrap();
    let leaf = m.ca.auth.issue_leaf(&key, &ok).unwrap();
    assert!(refused(
        &try_session(
            client_presenting(Some((vec![leaf.der().clone()], key_der(&key)))),
            m.port
        )
        .await
    ));
    assert!(refused(&try_session(client_presenting(None), m.port).await));
    // EKU without clientAuth.
    let server_only = LeafOptions {
        eku: vec![ExtendedKeyUsagePurpose::ServerAuth],
        ..Default::default()
    };
    assert!(refused(
        &try_session(client_presenting(Some(chain_of(&m.ca, &server_only))), m.port).await
    ));
    // Subjects without O=Swaptacular Nodes Registry, or with two serialNumbers.
    let no_org = LeafOptions {
        subject: Some(dn_without_org(&m.ca.auth.node_id)),
        ..Default::default()
    };
    assert!(refused(
        &try_session(client_presenting(Some(chain_of(&m.ca, &no_org))), m.port).await
    ));
    // (The same OpenSSL-made chain with one serialNumber is accepted.)
    assert!(connected(
        &try_session(client_presenting(Some(chain_with_serials(&m.ca, false))), m.port).await
    ));
    assert!(refused(
        &try_session(client_presenting(Some(chain_with_serials(&m.ca, true))), m.port).await
    ));

    // Known but deactivated or not active peers pass TLS and get the ERROR.
    for peer in [&m.gone, &m.idle] {
        let f = try_session(client_presenting(Some(chain_of(peer, &ok))), m.port)
            .await
            .unwrap();
        assert_eq!(f.command, "ERROR");
        assert_eq!(f.get("message"), Some("Unknown peer serial number."));
    }

    // TLS 1.2 only: refused.
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_2",
            "-connect",
            &format!("127.0.0.1:{}", m.port),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a TLS 1.2 handshake must fail");

    // A handshake that stalls is cut after APP_SSL_HANDSHAKE_TIMEOUT (1 s).
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", m.port))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await
    .expect("the server must cut the stalled handshake");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// A one-shot TLS server presenting `cert`, for the client-side cases.
async fn fake_server(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let mut c = Framed::new(tls, StompCodec::default());
                    let _ = c.next().await;
                    let _ = c.send(Frame::new("CONNECTED").header("version", "1.2")).await;
                    let _ = c.next().await;
                }
            });
        }
    });
    port
}

fn our_client(m: &Matrix) -> rustls::ClientConfig {
    let mut certs = pem_certs(&m.ca.dir.join("server.crt"));
    certs.extend(pem_certs(&m.ca.dir.join("peers/1234abcd/sub-ca.crt")));
    let key = swpt_gateway::tls::load_key(&m.ca.dir.join("server.key")).unwrap();
    let root = pem_certs(&m.aa.dir.join("root-ca.crt")).remove(0);
    swpt_gateway::tls::client_config(certs, key, "1234abcd", &root).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_matrix() {
    let m = matrix();
    let serve = |opts: LeafOptions| {
        let key = KeyPair::generate().unwrap();
        let leaf = m.aa.auth.issue_leaf(&key, &opts).unwrap();
        (leaf.der().clone(), key_der(&key))
    };
    // The right server is accepted.
    let (c, k) = serve(LeafOptions::default());
    assert!(connected(
        &try_session(our_client(&m), fake_server(c, k).await).await
    ));
    // A server whose serialNumber is not the dialled peer.
    let (c, k) = serve(LeafOptions {
        subject: Some(node_dn(NodeType::AA, "deadbeef")),
        ..Default::default()
    });
    assert!(!connected(
        &try_session(our_client(&m), fake_server(c, k).await).await
    ));
    // A server leaf without serverAuth.
    let (c, k) = serve(LeafOptions {
        eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
        ..Default::default()
    });
    assert!(!connected(
        &try_session(our_client(&m), fake_server(c, k).await).await
    ));
    // A server certificate from another root.
    let key = KeyPair::generate().unwrap();
    let other = Authority::new(NodeType::AA, Some("1234abcd")).unwrap();
    let leaf = other.issue_leaf(&key, &LeafOptions::default()).unwrap();
    assert!(!connected(
        &try_session(
            our_client(&m),
            fake_server(leaf.der().clone(), key_der(&key)).await
        )
        .await
    ));
}

/// Handshakes both ways over the Python gateway's real test network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_network_handshakes_both_ways() {
    let Some(data) = shared_data("shared_network_handshakes_both_ways") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for node in ["AA", "CA", "DA"] {
        copy_dir(&data.join(node), &tmp.path().join(node));
    }
    let dialer = |from: &str, to: &str, to_id: &str| {
        let from = tmp.path().join(from);
        let mut certs = pem_certs(&from.join("server.crt"));
        certs.truncate(1);
        certs.extend(pem_certs(&from.join(format!("peers/{to_id}/sub-ca.crt"))));
        let key = swpt_gateway::tls::load_key(&from.join("server.key")).unwrap();
        let root = pem_certs(&from.join(format!("peers/{to_id}/root-ca.crt"))).remove(0);
        let _ = to;
        swpt_gateway::tls::client_config(certs, key, to_id, &root).unwrap()
    };
    let ca_id = "5921983fe0e6eb987aeedca54ad3c708";
    let da_id = "060791aeca7637fa3357dfc0299fb4c5";
    for (server, server_id, client) in [
        ("AA", "1234abcd", "CA"),
        ("AA", "1234abcd", "DA"),
        ("CA", ca_id, "AA"),
        ("DA", da_id, "AA"),
    ] {
        let port = free_port();
        let _s = spawn(
            "swpt-server",
            &[],
            &tmp.path().join(server),
            "amqp://guest:guest@127.0.0.1:5672",
            &[("SWPT_SERVER_PORT", &port.to_string())],
        );
        wait_port(port).await;
        let f = try_session(dialer(client, server, server_id), port).await;
        assert!(connected(&f), "{client} -> {server}: {f:?}");
    }
}

/// A peer added while the server runs: refused until the node-database
/// watcher's next poll (every second here), admitted after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_added_while_the_server_runs_gets_in_on_its_next_attempt() {
    let m = matrix();
    let _server = start_server(
        &m.aa.dir,
        m.port,
        "amqp://guest:guest@127.0.0.1:5672",
        &[("APP_NODEDATA_POLL_SECONDS", "1")],
    )
    .await;
    let newcomer = NodeFiles::create(
        m.aa.dir.join("../newcomer"),
        Authority::new(NodeType::CA, None).unwrap(),
        1,
        Some("000008"),
    )
    .unwrap();
    write_peer(
        &newcomer,
        &link(
            &m.aa,
            Some(("masq-subnet.txt", "000004")),
            Some("000004"),
            Some("ACTIVE"),
        ),
    )
    .unwrap();
    let chain = || chain_of(&newcomer, &LeafOptions::default());
    // Not in the database yet: refused.
    assert!(!connected(
        &try_session(client_presenting(Some(chain())), m.port).await
    ));
    write_peer(
        &m.aa,
        &link(&newcomer, Some(("subnet.txt", "000004")), None, Some("ACTIVE")),
    )
    .unwrap();
    // In the database: admitted after the next poll.
    let mut admitted = false;
    for _ in 0..40 {
        if connected(&try_session(client_presenting(Some(chain())), m.port).await) {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(admitted, "the new peer was never admitted");
}
