//! `swpt-doctor`: finds what will break before it breaks. Read-only: it
//! reads the node database, our certificate and key, and (with
//! `--broker`) asks RabbitMQ with passive declares only.
//!
//! ```text
//!  node database ──> own node checks ──┐
//!               └──> each peer checks ─┼──> findings (severity, file, what to do) ──> text / JSON
//!  RabbitMQ (passive declares) ────────┘
//! ```

use crate::tls::{check_sub_ca, load_certs, load_key, peer_node_id, SWAPTACULAR_ORG};
use nodedata::{NodeData, NodeDatabase, NodeType, PeerData, PeerState};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One thing found, in one file.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The file (or broker object) at fault.
    pub file: String,
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

/// What the doctor found.
#[derive(Default, Debug)]
pub struct Findings(pub Vec<Finding>);

impl Findings {
    fn add(&mut self, severity: Severity, file: impl Into<String>, problem: impl Into<String>, fix: &str) {
        self.0.push(Finding {
            severity,
            file: file.into(),
            problem: problem.into(),
            fix: fix.to_string(),
        });
    }
    fn error(&mut self, file: impl Into<String>, problem: impl Into<String>, fix: &str) {
        self.add(Severity::Error, file, problem, fix);
    }
    fn warning(&mut self, file: impl Into<String>, problem: impl Into<String>, fix: &str) {
        self.add(Severity::Warning, file, problem, fix);
    }

    pub fn errors(&self) -> usize {
        self.0.iter().filter(|f| f.severity == Severity::Error).count()
    }

    pub fn warnings(&self) -> usize {
        self.0.len() - self.errors()
    }

    /// One line per finding: `SEVERITY file: problem (fix)`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.0 {
            let level = match f.severity {
                Severity::Error => "ERROR",
                Severity::Warning => "WARNING",
            };
            out.push_str(&format!("{level} {}: {} ({})\n", f.file, f.problem, f.fix));
        }
        out.push_str(&format!(
            "{} errors, {} warnings\n",
            self.errors(),
            self.warnings()
        ));
        out
    }

    /// One JSON object per finding, one per line.
    pub fn json(&self) -> String {
        self.0
            .iter()
            .filter_map(|f| serde_json::to_string(f).ok())
            .map(|l| l + "\n")
            .collect()
    }
}

/// Days before expiry from which a certificate is warned of.
const WARN_DAYS: i64 = 30;

/// The node database could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("the node database cannot be read: {0}")]
pub struct Unreadable(pub nodedata::DbError);

/// Checks our node and every peer; `Err` when the database cannot be
/// read at all (no node ID, type or root).
pub async fn check_nodedata(
    db: &NodeDatabase,
    cert: &Path,
    key: &Path,
) -> Result<(Findings, Arc<NodeData>, Vec<Arc<PeerData>>), Unreadable> {
    let node = db.node_data().await.map_err(Unreadable)?;
    let mut found = Findings::default();
    check_own(&mut found, &node, cert, key);
    let mut peers = Vec::new();
    for id in peer_dirs(db.root()) {
        let dir = format!("peers/{id}");
        match db.peer_data(&id).await {
            Ok(Some(peer)) => {
                check_peer(&mut found, &node, &peer, &dir, &db.root().join(&dir));
                peers.push(peer);
            }
            Ok(None) => found.warning(
                format!("{dir}/sub-ca.crt"),
                "missing: the directory is not a peer",
                "add the certificate the peer issued for us, or remove the directory",
            ),
            Err(e) => found.error(
                e.to_string(),
                "the peer cannot be read",
                "fix or replace the file",
            ),
        }
    }
    Ok((found, node, peers))
}

fn peer_dirs(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(root.join("peers"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn check_own(found: &mut Findings, node: &NodeData, cert: &Path, key: &Path) {
    let cert_file = cert.display().to_string();
    let key_file = key.display().to_string();
    let certs = match load_certs(cert) {
        Ok(c) => c,
        Err(e) => {
            return found.error(
                cert_file,
                e.to_string(),
                "install the node's server certificate (PEM)",
            )
        }
    };
    match load_key(key) {
        Ok(k) => {
            let provider = rustls::crypto::ring::default_provider();
            if let Err(e) = rustls::sign::CertifiedKey::from_der(certs.clone(), k, &provider) {
                found.error(
                    &key_file,
                    format!("does not match {cert_file}: {e}"),
                    "install the key the certificate was issued for",
                );
            }
        }
        Err(e) => found.error(
            &key_file,
            e.to_string(),
            "install the node's unencrypted PEM private key",
        ),
    }
    readable_by_others(found, key);
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(&certs[0]) else {
        return found.error(cert_file, "cannot be parsed", "install a valid certificate");
    };
    match x509_parser::parse_x509_certificate(&node.root_cert) {
        Ok((_, root)) => {
            if leaf.verify_signature(Some(root.public_key())).is_err() {
                found.error(
                    &cert_file,
                    "is not signed by root-ca.crt's key",
                    "issue the server certificate with the node's root key",
                );
            }
            check_profile(
                found,
                &cert_file,
                (&certs[0], &leaf),
                node.node_type,
                &node.node_id,
                true,
            );
        }
        Err(_) => found.error(
            "root-ca.crt",
            "cannot be parsed",
            "restore the node's root certificate",
        ),
    }
    expiry(found, &cert_file, &leaf);
}

/// The Swaptacular profile of a node's certificate (SPEC section 3).
fn check_profile(
    found: &mut Findings,
    file: &str,
    (der, cert): (&[u8], &X509Certificate<'_>),
    node_type: NodeType,
    node_id: &str,
    leaf: bool,
) {
    let subject = cert.subject();
    let ou = subject
        .iter_organizational_unit()
        .next()
        .and_then(|v| v.as_str().ok());
    match peer_node_id(der) {
        Ok(id) if id == node_id => {}
        Ok(id) => found.error(
            file,
            format!("serialNumber {id} is not the node ID {node_id}"),
            "issue the certificate for the node's ID",
        ),
        Err(e) => found.error(
            file,
            format!("subject: {e} ({SWAPTACULAR_ORG})"),
            "issue the certificate with the Swaptacular subject",
        ),
    }
    if ou != Some(node_type.as_db_str()) {
        found.error(
            file,
            format!("subject OU is {ou:?}, not \"{}\"", node_type.as_db_str()),
            "issue the certificate with the node's type as OU",
        );
    }
    check_extensions(found, file, cert, leaf);
}

/// The key identifiers (a leaf needs both) and a leaf's two EKUs.
fn check_extensions(found: &mut Findings, file: &str, cert: &X509Certificate<'_>, leaf: bool) {
    let has =
        |f: &dyn Fn(&ParsedExtension) -> bool| cert.extensions().iter().any(|e| f(e.parsed_extension()));
    if !has(&|e| matches!(e, ParsedExtension::SubjectKeyIdentifier(_))) {
        found.error(
            file,
            "no subject key identifier",
            "issue the certificate with an SKID",
        );
    }
    if !leaf {
        return;
    }
    if !has(&|e| matches!(e, ParsedExtension::AuthorityKeyIdentifier(_))) {
        let problem = "no authority key identifier (OpenSSL takes it for self-signed)";
        found.error(file, problem, "issue the certificate with an AKID");
    }
    let ekus = cert
        .extended_key_usage()
        .ok()
        .flatten()
        .map(|e| (e.value.client_auth, e.value.server_auth));
    if ekus != Some((true, true)) {
        let problem = "extended key usage must hold both clientAuth and serverAuth";
        found.error(file, problem, "issue the certificate with both EKUs");
    }
}

fn expiry(found: &mut Findings, file: &str, cert: &X509Certificate<'_>) {
    let now = x509_parser::time::ASN1Time::now();
    let validity = cert.validity();
    if validity.not_before > now {
        return found.error(
            file,
            format!("not valid before {}", validity.not_before),
            "check the clock, or reissue",
        );
    }
    match validity.time_to_expiration() {
        None => found.error(
            file,
            format!("expired on {}", validity.not_after),
            "renew the certificate",
        ),
        Some(left) if left.whole_days() < WARN_DAYS => {
            found.warning(
                file,
                format!("expires in {} days ({})", left.whole_days(), validity.not_after),
                "renew the certificate soon",
            );
        }
        Some(_) => {}
    }
}

fn readable_by_others(found: &mut Findings, key: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(key) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            found.warning(
                key.display().to_string(),
                format!("readable by others (mode {mode:o})"),
                "chmod 600",
            );
        }
    }
}

fn check_peer(found: &mut Findings, node: &NodeData, peer: &PeerData, dir: &str, path: &Path) {
    let sub_file = format!("{dir}/sub-ca.crt");
    let root_file = format!("{dir}/root-ca.crt");
    match x509_parser::parse_x509_certificate(&peer.root_cert) {
        Ok((_, root)) => {
            check_profile(
                found,
                &root_file,
                (&peer.root_cert, &root),
                peer.node_type,
                &peer.node_id,
                false,
            );
            expiry(found, &root_file, &root);
        }
        Err(_) => found.error(
            &root_file,
            "cannot be parsed",
            "install the peer's root certificate",
        ),
    }
    // What our client presents: issued by the peer's root for our key,
    // with a name constraint that permits our own name.
    if let Err(why) = check_sub_ca(&peer.root_cert, &peer.sub_cert, &node.root_cert) {
        let why = why
            .replace("our root", "the peer's root")
            .replace("the leaf", "our node");
        found.error(&sub_file, why, "install the certificate the peer issued for our root key (signed by the peer's root, constrained to our name)");
    }
    if let Ok((_, sub)) = x509_parser::parse_x509_certificate(&peer.sub_cert) {
        expiry(found, &sub_file, &sub);
    }
    if path.join("ACTIVE").exists() && path.join("DEACTIVATED").exists() {
        found.warning(
            format!("{dir}/ACTIVE"),
            "both ACTIVE and DEACTIVATED exist: the peer is deactivated",
            "remove ACTIVE",
        );
    }
    if peer.state == PeerState::Inactive {
        found.warning(
            dir.to_string(),
            "neither ACTIVE nor DEACTIVATED: the peer cannot connect yet",
            "create ACTIVE when the peer is set up",
        );
    }
}

/// With `--broker`: RabbitMQ reachable, our `*_in` exchange there, and for
/// every active peer the exchange `configure-queue` declares (passive
/// declares only).
pub async fn check_broker(
    broker: amqp_bridge::BrokerSettings,
    node: &NodeData,
    peers: &[Arc<PeerData>],
) -> Findings {
    let mut found = Findings::default();
    let url = amqp_bridge::redact_url(&broker.url);
    let conn = amqp_bridge::SharedConnection::new(broker);
    let in_exchange = node.node_type.in_exchange();
    match amqp_bridge::check_exchange(&conn, in_exchange).await {
        Ok(()) => {}
        Err(amqp_bridge::BridgeError::Connect { reason, .. }) => {
            found.error(
                url,
                format!("RabbitMQ cannot be reached: {reason}"),
                "check PROTOCOL_BROKER_URL and the broker",
            );
            return found;
        }
        Err(e) => found.error(
            format!("exchange {in_exchange}"),
            e.to_string(),
            "declare the node's *_in exchange",
        ),
    }
    for peer in peers.iter().filter(|p| p.is_active()) {
        let exchange = format!("{}.x.{}", node.node_type.short(), peer.node_id);
        if let Err(e) = amqp_bridge::check_exchange(&conn, &exchange).await {
            found.error(
                format!("exchange {exchange}"),
                e.to_string(),
                &format!("run configure-queue {} QUEUE", peer.node_id),
            );
        }
    }
    conn.close().await;
    found
}
