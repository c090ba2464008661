//! Reads the shared test network of the Python gateway and generated
//! networks, and checks the generated certificates with OpenSSL.

use nodedata::{NodeDatabase, NodeType, PeerData, PeerState, ServerAddr, Subnet};
use std::path::{Path, PathBuf};
use std::process::Command;
use swpt_testkit::generate::{write_devnet, Authority, DevnetOptions, LeafOptions};
use swpt_testkit::{copy_dir, shared_data};

/// The peer, when it is active.
async fn active(db: &NodeDatabase, id: &str) -> Result<Option<std::sync::Arc<PeerData>>, nodedata::DbError> {
    Ok(db.peer_data(id).await?.filter(|p| p.is_active()))
}

fn db(dir: &Path) -> NodeDatabase {
    NodeDatabase::open(&format!("file://{}", dir.display())).unwrap()
}

fn sub(s: &str) -> Subnet {
    Subnet::parse(s).unwrap()
}

const CA_ID: &str = "5921983fe0e6eb987aeedca54ad3c708";
const DA_ID: &str = "060791aeca7637fa3357dfc0299fb4c5";

#[tokio::test]
async fn reads_the_shared_aa_node() {
    let Some(data) = shared_data("reads_the_shared_aa_node") else {
        return;
    };
    let db = db(&data.join("AA"));
    let node = db.node_data().await.unwrap();
    assert_eq!(node.node_type, NodeType::AA);
    assert_eq!(node.node_id, "1234abcd");
    assert_eq!(node.creditors_subnet, Subnet::UNIVERSAL);
    assert_eq!(node.debtors_subnet, sub("1234abcd"));
    assert!(!node.root_cert.is_empty());

    let ca = active(&db, CA_ID).await.unwrap().unwrap();
    assert_eq!(ca.node_type, NodeType::CA);
    assert_eq!(ca.state, PeerState::Active);
    assert_eq!(ca.creditors_subnet, sub("000001"));
    assert_eq!(ca.debtors_subnet, sub("1234abcd"));
    let m = &ca.servers_manifest;
    assert_eq!(
        m.servers,
        vec![ServerAddr {
            host: "127.0.0.1".into(),
            port: 1235
        }]
    );
    assert_eq!(m.host, "/1234abcd", "${{NODE_ID}} is replaced by OUR node ID");
    assert_eq!(m.destination, "/exchange/creditors_in");
    assert_eq!(m.login, None);
    assert_eq!(m.accepted_content_types, vec!["application/json".to_string()]);

    let da = active(&db, DA_ID).await.unwrap().unwrap();
    assert_eq!(da.node_type, NodeType::DA);
    assert_eq!(da.creditors_subnet, Subnet::ZERO);
    assert_eq!(da.debtors_subnet, sub("1234abcd00"));
    assert_eq!(da.servers_manifest.destination, "/exchange/debtors_in");

    let gone = "09cab36b6079e09c32a9dfd60446c469";
    assert!(active(&db, gone).await.unwrap().is_none());
    let p = db.peer_data(gone).await.unwrap().unwrap();
    assert_eq!(p.state, PeerState::Deactivated);
    assert!(p.is_deactivated());
    assert_eq!(p.creditors_subnet, sub("000002"));
    assert_eq!(p.servers_manifest.servers[0].host, "ca.example.com");

    assert!(db.peer_data("00000000").await.unwrap().is_none());
    assert!(db.peer_data("../AA").await.unwrap().is_none());
    let mut ids = db.peer_ids().await.unwrap();
    ids.sort();
    assert_eq!(ids, vec![DA_ID.to_string(), gone.to_string(), CA_ID.to_string()]);
}

#[tokio::test]
async fn reads_the_shared_ca_and_da_nodes() {
    let Some(data) = shared_data("reads_the_shared_ca_and_da_nodes") else {
        return;
    };
    let ca = db(&data.join("CA"));
    let node = ca.node_data().await.unwrap();
    assert_eq!(node.node_type, NodeType::CA);
    assert_eq!(node.node_id, CA_ID);
    assert_eq!(node.creditors_subnet, sub("000008"));
    assert_eq!(node.debtors_subnet, Subnet::UNIVERSAL);
    let aa = active(&ca, "1234abcd").await.unwrap().unwrap();
    assert_eq!(aa.node_type, NodeType::AA);
    assert_eq!(aa.creditors_subnet, sub("000001"));
    assert_eq!(aa.debtors_subnet, sub("1234abcd"));
    assert_eq!(aa.servers_manifest.servers.len(), 2, "duplicates are kept");
    assert_eq!(aa.servers_manifest.destination, "/exchange/accounts_in");
    let gone = ca.peer_data("deac00ed").await.unwrap().unwrap();
    assert_eq!(gone.state, PeerState::Deactivated);
    assert!(active(&ca, "deac00ed").await.unwrap().is_none());

    let da = db(&data.join("DA"));
    let node = da.node_data().await.unwrap();
    assert_eq!(node.node_type, NodeType::DA);
    assert_eq!(node.node_id, DA_ID);
    assert_eq!(node.creditors_subnet, Subnet::ZERO);
    assert_eq!(node.debtors_subnet, sub("1234abcd00"));
    let aa = active(&da, "1234abcd").await.unwrap().unwrap();
    assert_eq!(aa.creditors_subnet, Subnet::ZERO);
    assert_eq!(aa.debtors_subnet, sub("1234abcd00"));
}

#[tokio::test]
async fn ca_masquerade_subnet_must_match_our_mask() {
    let Some(data) = shared_data("ca_masquerade_subnet_must_match_our_mask") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&data.join("CA"), tmp.path()).unwrap();
    std::fs::write(tmp.path().join("peers/1234abcd/masq-subnet.txt"), "0001\n").unwrap();
    let err = db(tmp.path())
        .peer_data("1234abcd")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("peers/1234abcd/masq-subnet.txt: "), "{err}");
}

#[tokio::test]
async fn reads_a_generated_network() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write_devnet(tmp.path(), &DevnetOptions::default()).unwrap();
    assert_eq!(net.ca_id.len(), 32);
    assert_eq!(net.da_id.len(), 32);

    let aa = db(&net.aa_dir);
    let node = aa.node_data().await.unwrap();
    assert_eq!(
        (node.node_type, node.node_id.as_str()),
        (NodeType::AA, "1234abcd")
    );
    let ca = active(&aa, &net.ca_id).await.unwrap().unwrap();
    assert_eq!(ca.creditors_subnet, sub("000001"));
    assert_eq!(ca.debtors_subnet, sub("1234abcd"));
    assert_eq!(ca.servers_manifest.servers[0].port, 1235);
    let da = active(&aa, &net.da_id).await.unwrap().unwrap();
    assert_eq!(da.debtors_subnet, sub("1234abcd00"));
    let gone = aa
        .peer_data(net.deactivated_ca_id.as_deref().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(gone.is_deactivated());

    let ca_db = db(&net.ca_dir);
    let node = ca_db.node_data().await.unwrap();
    assert_eq!(node.creditors_subnet, sub("000008"));
    let aa_peer = active(&ca_db, "1234abcd").await.unwrap().unwrap();
    assert_eq!(aa_peer.creditors_subnet, sub("000001"));
    assert_eq!(aa_peer.servers_manifest.servers[0].port, 1234);
    assert!(ca_db
        .peer_data("deac00ed")
        .await
        .unwrap()
        .unwrap()
        .is_deactivated());

    let da_db = db(&net.da_dir);
    assert_eq!(da_db.node_data().await.unwrap().debtors_subnet, sub("1234abcd00"));
    assert!(active(&da_db, "1234abcd").await.unwrap().is_some());
}

#[tokio::test]
async fn every_manifest_names_the_given_host() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = DevnetOptions {
        host: "aa-server".to_string(),
        ..Default::default()
    };
    let net = write_devnet(tmp.path(), &opts).unwrap();
    for (node, peer) in [
        (&net.ca_dir, "1234abcd"),
        (&net.da_dir, "1234abcd"),
        (&net.aa_dir, net.ca_id.as_str()),
        (&net.aa_dir, net.da_id.as_str()),
    ] {
        let peer = active(&db(node), peer).await.unwrap().unwrap();
        let server = &peer.servers_manifest.servers[0];
        assert_eq!(server.host, "aa-server", "{}", node.display());
    }
    for node in [&net.aa_dir, &net.ca_dir, &net.da_dir] {
        let own = std::fs::read_to_string(node.join("nodeinfo/stomp.toml")).unwrap();
        assert!(own.contains("\"aa-server:"), "{own}");
    }
}

fn openssl_verify(ca_file: &Path, untrusted: &Path, leaf: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-x509_strict")
        .arg("-CAfile")
        .arg(ca_file)
        .arg("-untrusted")
        .arg(untrusted)
        .arg(leaf)
        .output()
        .expect("openssl must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn openssl_accepts_generated_chains_and_enforces_the_name_constraint() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write_devnet(tmp.path(), &DevnetOptions::default()).unwrap();
    // What each client presents: [its server.crt, its peers/<server>/sub-ca.crt],
    // checked against the server's own root.
    let cases = [
        (&net.ca_dir, &net.aa_dir, "1234abcd".to_string()),
        (&net.da_dir, &net.aa_dir, "1234abcd".to_string()),
        (&net.aa_dir, &net.ca_dir, net.ca_id.clone()),
        (&net.aa_dir, &net.da_dir, net.da_id.clone()),
    ];
    for (client, server, server_id) in cases {
        let (ok, text) = openssl_verify(
            &server.join("root-ca.crt"),
            &client.join(format!("peers/{server_id}/sub-ca.crt")),
            &client.join("server.crt"),
        );
        assert!(ok, "{}: {text}", client.display());
    }

    // A sub-CA that permits another DN: OpenSSL refuses the chain.
    let aa = Authority::new(NodeType::AA, Some("1234abcd")).unwrap();
    let ca = Authority::new(NodeType::CA, None).unwrap();
    let other = Authority::new(NodeType::CA, None).unwrap();
    let bad_sub = aa.issue_peer_cert(&ca, None, Some(&other)).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = ca.issue_leaf(&leaf_key, &LeafOptions::default()).unwrap();
    let dir = tmp.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("root.crt"), aa.root.pem()).unwrap();
    std::fs::write(dir.join("sub.crt"), bad_sub.pem()).unwrap();
    std::fs::write(dir.join("leaf.crt"), leaf.pem()).unwrap();
    let (ok, text) = openssl_verify(&dir.join("root.crt"), &dir.join("sub.crt"), &dir.join("leaf.crt"));
    assert!(!ok, "{text}");
    assert!(text.contains("subtree violation"), "{text}");
}

#[test]
fn generated_certificates_follow_the_profile() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write_devnet(tmp.path(), &DevnetOptions::default()).unwrap();
    let text = |path: PathBuf| {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let leaf = text(net.ca_dir.join("server.crt"));
    let subject = format!(
        "O = Swaptacular Nodes Registry, OU = Creditors Agents, serialNumber = {}",
        net.ca_id
    );
    assert!(leaf.contains(&format!("Subject: {subject}")), "{leaf}");
    assert!(leaf.contains(&format!("Issuer: {subject}")), "{leaf}");
    assert!(leaf.contains("CA:FALSE"));
    assert!(leaf.contains("TLS Web Client Authentication, TLS Web Server Authentication"));
    assert!(leaf.contains("Digital Signature, Key Encipherment"));
    assert!(leaf.contains("Subject Key Identifier") && leaf.contains("Authority Key Identifier"));

    let sub_ca = text(net.aa_dir.join(format!("peers/{}/sub-ca.crt", net.ca_id)));
    assert!(sub_ca.contains(
        "Subject: O = Swaptacular Nodes Registry, OU = Accounting Authorities, serialNumber = 1234abcd"
    ));
    assert!(sub_ca.contains(&format!("Issuer: {subject}")));
    assert!(sub_ca.contains("CA:TRUE, pathlen:0"));
    assert!(sub_ca.contains("X509v3 Name Constraints: critical"));
    assert!(sub_ca.contains(
        "DirName:O = Swaptacular Nodes Registry, OU = Accounting Authorities, serialNumber = 1234abcd"
    ));

    // The AA writes its Netscape comment into the certificates it issues.
    let by_aa = text(net.ca_dir.join("peers/1234abcd/sub-ca.crt"));
    assert!(by_aa.contains("Subnet: 000001"), "{by_aa}");
}

async fn broken(net_dir: &Path, edit: impl FnOnce(&Path)) -> String {
    edit(net_dir);
    let db = db(net_dir);
    match db.node_data().await {
        Err(e) => e.to_string(),
        Ok(_) => {
            let mut errors = String::new();
            for id in db.peer_ids().await.unwrap() {
                if let Err(e) = db.peer_data(&id).await {
                    errors.push_str(&e.to_string());
                }
            }
            errors
        }
    }
}

#[tokio::test]
async fn bad_databases_give_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write_devnet(
        tmp.path(),
        &DevnetOptions {
            deactivated: false,
            ..Default::default()
        },
    )
    .unwrap();
    let fresh = |name: &str| {
        let d = tmp.path().join(name);
        copy_dir(&net.aa_dir, &d).unwrap();
        d
    };
    let ca = net.ca_id.clone();

    let e = broken(&fresh("missing"), |d| {
        std::fs::remove_file(d.join("db/nodetype")).unwrap()
    })
    .await;
    assert!(e.starts_with("db/nodetype: "), "{e}");
    let e = broken(&fresh("type"), |d| {
        std::fs::write(d.join("db/nodetype"), "Bankers\n").unwrap()
    })
    .await;
    assert_eq!(e, "db/nodetype: unknown node type 'Bankers'");
    let e = broken(&fresh("subnet"), |d| {
        std::fs::write(d.join(format!("peers/{ca}/subnet.txt")), "zz\n").unwrap()
    })
    .await;
    assert_eq!(e, format!("peers/{ca}/subnet.txt: invalid subnet 'zz'"));
    let manifest = format!("peers/{ca}/nodeinfo/stomp.toml");
    let e = broken(&fresh("toml"), |d| {
        std::fs::write(d.join(&manifest), "servers = [").unwrap()
    })
    .await;
    assert!(e.starts_with(&format!("{manifest}: invalid TOML")), "{e}");
    let e = broken(&fresh("empty"), |d| {
        std::fs::write(
            d.join(&manifest),
            "servers = []\nhost = \"/\"\ndestination = \"/x\"\n",
        )
        .unwrap()
    })
    .await;
    assert_eq!(e, format!("{manifest}: the server list is empty"));
    let e = broken(&fresh("port"), |d| {
        std::fs::write(
            d.join(&manifest),
            "servers = [\"127.0.0.1:70000\"]\nhost = \"/\"\ndestination = \"/x\"\n",
        )
        .unwrap()
    })
    .await;
    assert!(e.contains("invalid port '70000'"), "{e}");
    let e = broken(&fresh("pairing"), |d| {
        std::fs::write(
            d.join(format!("peers/{ca}/nodetype.txt")),
            "Accounting Authorities\n",
        )
        .unwrap()
    })
    .await;
    assert!(e.contains("invalid peer pairing"), "{e}");
    let e = broken(&fresh("cert"), |d| {
        std::fs::write(d.join("root-ca.crt"), "# nothing here\n").unwrap()
    })
    .await;
    assert_eq!(e, "root-ca.crt: no PEM certificate found");

    let err = NodeDatabase::open("http://x/y").err().unwrap();
    assert!(err.to_string().contains("only file:///absolute/dir"));
}
