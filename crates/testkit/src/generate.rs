//! A generator of Swaptacular test networks.
//!
//! It writes complete node databases (an AA, a CA and a DA, optionally a
//! deactivated peer and many extra creditors agents) whose certificates
//! follow the Swaptacular profile of SPEC section 3: every DN is
//! `O=Swaptacular Nodes Registry, OU=<type>, serialNumber=<node id>`; roots
//! are self-signed CAs; server certificates are leaves signed by the root
//! with the root's subject; peer certificates (`sub-ca.crt`) carry the
//! peer's subject and root key, are issued by the issuing node's root, and
//! hold a critical directoryName name constraint naming the peer. Keys are
//! ECDSA P-256, which keeps generation fast.

use nodedata::NodeType;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// An error while generating a network.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("certificate generation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no free port on 127.0.0.1: {0}")]
    NoPort(std::io::Error),
}

/// The OID of `serialNumber` (2.5.4.5).
const SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
/// The OID of the Netscape comment extension.
const NETSCAPE_COMMENT: &[u64] = &[2, 16, 840, 1, 113730, 1, 13];
/// The OID of the name constraints extension.
const NAME_CONSTRAINTS: &[u64] = &[2, 5, 29, 30];

/// DER: a tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    if n < 0x80 {
        v.push(n as u8);
    } else if n <= 0xff {
        v.extend_from_slice(&[0x81, n as u8]);
    } else {
        v.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    v.extend_from_slice(content);
    v
}

/// NameConstraints with one permitted subtree: directoryName `name`
/// (`[4]` is explicit, since Name is a CHOICE).
fn name_constraints(name: &[u8]) -> Vec<u8> {
    let general_name = tlv(0xa4, name);
    let subtree = tlv(0x30, &general_name);
    tlv(0x30, &tlv(0xa0, &subtree))
}

/// The Swaptacular DN of a node.
pub fn node_dn(node_type: NodeType, node_id: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Swaptacular Nodes Registry");
    dn.push(DnType::OrganizationalUnitName, node_type.as_db_str());
    let serial = match node_id.to_string().try_into() {
        Ok(printable) => DnValue::PrintableString(printable),
        Err(_) => DnValue::Utf8String(node_id.to_string()),
    };
    dn.push(DnType::CustomDnType(SERIAL_NUMBER.to_vec()), serial);
    dn
}

/// A validity window in days relative to today.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before_days: i64,
    pub not_after_days: i64,
}

impl Validity {
    /// About a year, starting yesterday.
    pub const LEAF: Validity = Validity {
        not_before_days: -1,
        not_after_days: 365,
    };
    /// Far expiry, for roots and peer certificates.
    pub const FAR: Validity = Validity {
        not_before_days: -1,
        not_after_days: 365 * 70,
    };

    fn apply(&self, params: &mut CertificateParams) {
        // Midnight UTC of today plus the offsets.
        let today = time::OffsetDateTime::now_utc().replace_time(time::Time::MIDNIGHT);
        params.not_before = today + time::Duration::days(self.not_before_days);
        params.not_after = today + time::Duration::days(self.not_after_days);
    }
}

/// A node's certificate authority: its root key and self-signed root.
pub struct Authority {
    pub node_type: NodeType,
    pub node_id: String,
    pub key: KeyPair,
    pub root: Certificate,
}

impl Authority {
    /// A new root. An AA takes the given ID (8 hex digits); a CA or DA
    /// derives its ID from its key: the first 128 bits of the SHA-256 of
    /// the root's DER SubjectPublicKeyInfo.
    pub fn new(node_type: NodeType, aa_id: Option<&str>) -> Result<Authority, GenError> {
        let key = KeyPair::generate()?;
        let node_id = match (node_type, aa_id) {
            (NodeType::AA, Some(id)) => id.to_string(),
            (NodeType::AA, None) => {
                let digest = ring::digest::digest(&ring::digest::SHA256, &key.public_key_der());
                hex(&digest.as_ref()[..4])
            }
            _ => {
                let digest = ring::digest::digest(&ring::digest::SHA256, &key.public_key_der());
                hex(&digest.as_ref()[..16])
            }
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = node_dn(node_type, &node_id);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial().into());
        Validity::FAR.apply(&mut params);
        let root = params.self_signed(&key)?;
        Ok(Authority {
            node_type,
            node_id,
            key,
            root,
        })
    }

    /// The node's DN.
    pub fn dn(&self) -> DistinguishedName {
        node_dn(self.node_type, &self.node_id)
    }

    /// The DER of the root's subject Name.
    pub fn subject_der(&self) -> Vec<u8> {
        match x509_parser::parse_x509_certificate(self.root.der()) {
            Ok((_, cert)) => cert.subject().as_raw().to_vec(),
            Err(_) => Vec::new(),
        }
    }

    /// A server (leaf) certificate for `key`, signed by the root, with the
    /// root's subject unless `subject` says otherwise.
    pub fn issue_leaf(&self, key: &KeyPair, opts: &LeafOptions) -> Result<Certificate, GenError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = opts.subject.clone().unwrap_or_else(|| self.dn());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = opts.eku.clone();
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().into());
        opts.validity.apply(&mut params);
        Ok(params.signed_by(key, &self.root, &self.key)?)
    }

    /// The peer certificate this node issues for `peer` (the peer keeps it
    /// as its `sub-ca.crt`). `permitted` overrides the name constraint
    /// (for tests); `subnet_comment` writes the AA's Netscape comment.
    pub fn issue_peer_cert(
        &self,
        peer: &Authority,
        subnet_comment: Option<&str>,
        permitted: Option<&Authority>,
    ) -> Result<Certificate, GenError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = peer.dn();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // rcgen 0.13 tags a directoryName implicitly, which OpenSSL cannot
        // parse; the extension is written here by hand instead.
        let mut constraint = CustomExtension::from_oid_content(
            NAME_CONSTRAINTS,
            name_constraints(&permitted.unwrap_or(peer).subject_der()),
        );
        constraint.set_criticality(true);
        params.custom_extensions.push(constraint);
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().into());
        if let Some(subnet) = subnet_comment {
            params.custom_extensions.push(CustomExtension::from_oid_content(
                NETSCAPE_COMMENT,
                ia5_string(&format!("Subnet: {subnet}")),
            ));
        }
        Validity::FAR.apply(&mut params);
        Ok(params.signed_by(&peer.key, &self.root, &self.key)?)
    }
}

/// Options of a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafOptions {
    pub validity: Validity,
    pub eku: Vec<ExtendedKeyUsagePurpose>,
    pub subject: Option<DistinguishedName>,
}

impl Default for LeafOptions {
    fn default() -> Self {
        LeafOptions {
            validity: Validity::LEAF,
            eku: vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
            subject: None,
        }
    }
}

fn random_serial() -> Vec<u8> {
    let mut b = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    b.to_vec()
}

fn ia5_string(s: &str) -> Vec<u8> {
    tlv(0x16, s.as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `contents` to `dir/rel`, creating directories.
pub fn write_file(dir: &Path, rel: &str, contents: impl AsRef<[u8]>) -> Result<(), GenError> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| GenError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(&path, contents).map_err(|source| GenError::Io { path, source })
}

/// Writes a private key, readable by its owner only (0600).
pub fn write_key(dir: &Path, rel: &str, pem: impl AsRef<[u8]>) -> Result<(), GenError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let path = dir.join(rel);
    let io = |source| GenError::Io {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    // An older file keeps its mode through `open`: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    file.write_all(pem.as_ref()).map_err(io)
}

/// A node being written: its authority and its server key pair.
pub struct NodeFiles {
    pub dir: PathBuf,
    pub auth: Authority,
    pub server_key: KeyPair,
    /// Where the node's server listens (its manifest).
    pub host: String,
    pub port: u16,
}

impl NodeFiles {
    /// Writes the node's own files (root, server certificate and key,
    /// db/nodeid, db/nodetype, own subnet file, own manifest).
    pub fn create(
        dir: PathBuf,
        auth: Authority,
        port: u16,
        own_subnet: Option<&str>,
    ) -> Result<NodeFiles, GenError> {
        Self::create_at(dir, auth, "127.0.0.1", port, own_subnet)
    }

    /// Like [`NodeFiles::create`], for a server on `host`.
    pub fn create_at(
        dir: PathBuf,
        auth: Authority,
        host: &str,
        port: u16,
        own_subnet: Option<&str>,
    ) -> Result<NodeFiles, GenError> {
        let server_key = KeyPair::generate()?;
        let leaf = auth.issue_leaf(&server_key, &LeafOptions::default())?;
        write_file(&dir, "root-ca.crt", auth.root.pem())?;
        write_file(&dir, "server.crt", leaf.pem())?;
        write_key(&dir, "server.key", server_key.serialize_pem())?;
        write_file(&dir, "db/nodeid", format!("{}\n", auth.node_id))?;
        write_file(&dir, "db/nodetype", format!("{}\n", auth.node_type.as_db_str()))?;
        match (auth.node_type, own_subnet) {
            (NodeType::CA, Some(s)) => write_file(&dir, "creditors-subnet.txt", format!("{s}\n"))?,
            (NodeType::DA, Some(s)) => write_file(&dir, "debtors-subnet.txt", format!("{s}\n"))?,
            _ => {}
        }
        write_file(&dir, "nodeinfo/stomp.toml", manifest(auth.node_type, host, port))?;
        Ok(NodeFiles {
            dir,
            auth,
            server_key,
            host: host.to_string(),
            port,
        })
    }
}

/// The manifest of a node serving on `host`:`port`.
pub fn manifest(node_type: NodeType, host: &str, port: u16) -> String {
    format!(
        "servers = [\"{host}:{port}\"]\nhost = \"/\"\ndestination = \"{}\"\n",
        node_type.stomp_destination()
    )
}

/// How a peer of a node is written.
pub struct PeerLink<'a> {
    /// The peer's files.
    pub peer: &'a NodeFiles,
    /// The subnet file's name and contents (`subnet.txt` or
    /// `masq-subnet.txt`), if any.
    pub subnet_file: Option<(&'a str, &'a str)>,
    /// The Netscape comment the peer writes when it is an AA.
    pub issued_by_peer_comment: Option<&'a str>,
    /// `ACTIVE`, `DEACTIVATED` or nothing.
    pub marker: Option<&'a str>,
}

/// Writes `node/peers/<peer id>/`: the certificate the peer issued for our
/// root key (`sub-ca.crt`), the peer's root, type, manifest, subnet file
/// and marker.
pub fn write_peer(node: &NodeFiles, link: &PeerLink<'_>) -> Result<(), GenError> {
    let peer = link.peer;
    let dir = node.dir.join("peers").join(&peer.auth.node_id);
    let sub = peer
        .auth
        .issue_peer_cert(&node.auth, link.issued_by_peer_comment, None)?;
    write_file(&dir, "sub-ca.crt", sub.pem())?;
    write_file(&dir, "root-ca.crt", peer.auth.root.pem())?;
    write_file(
        &dir,
        "nodetype.txt",
        format!("{}\n", peer.auth.node_type.as_db_str()),
    )?;
    write_file(
        &dir,
        "nodeinfo/stomp.toml",
        manifest(peer.auth.node_type, &peer.host, peer.port),
    )?;
    if let Some((name, value)) = link.subnet_file {
        write_file(&dir, name, format!("{value}\n"))?;
    }
    if let Some(marker) = link.marker {
        write_file(&dir, marker, "")?;
    }
    Ok(())
}

/// Options of [`write_devnet`].
#[derive(Clone, Debug)]
pub struct DevnetOptions {
    /// The AA's node ID (8 hex digits).
    pub aa_id: String,
    /// The host name every manifest names (127.0.0.1 by default; a
    /// service name for docker-compose).
    pub host: String,
    pub aa_port: u16,
    pub ca_port: u16,
    pub da_port: u16,
    /// Also write a deactivated CA peer of the AA and a deactivated AA peer
    /// of the CA.
    pub deactivated: bool,
    /// Extra creditors agents peering with the AA (for scale tests), each
    /// a full node under `extra-ca/<id>`.
    pub extra_ca_peers: usize,
}

impl Default for DevnetOptions {
    fn default() -> Self {
        DevnetOptions {
            aa_id: "1234abcd".to_string(),
            host: "127.0.0.1".to_string(),
            aa_port: 1234,
            ca_port: 1235,
            da_port: 1236,
            deactivated: true,
            extra_ca_peers: 0,
        }
    }
}

/// What [`write_devnet`] wrote.
#[derive(Clone, Debug)]
pub struct Devnet {
    /// The AA; `aa_dir/next/` holds a second server certificate and key
    /// issued by its root (to test rotation).
    pub aa_dir: PathBuf,
    pub ca_dir: PathBuf,
    pub da_dir: PathBuf,
    pub aa_id: String,
    pub ca_id: String,
    pub da_id: String,
    /// The deactivated CA peer of the AA, and the deactivated AA peer of
    /// the CA.
    pub deactivated_ca_id: Option<String>,
    pub deactivated_aa_id: Option<String>,
    /// Extra creditors agents: (node id, node dir).
    pub extra_cas: Vec<(String, PathBuf)>,
}

/// The AA-assigned subnet of the CA.
pub const CA_SUBNET_AT_AA: &str = "000001";
/// The CA's own creditors subnet.
pub const CA_CREDITORS_SUBNET: &str = "000008";

/// The AA's entry for a peer: the subnet it assigned it.
fn aa_knows(aa: &NodeFiles, peer: &NodeFiles, subnet: &str, marker: &'static str) -> Result<(), GenError> {
    let link = PeerLink {
        peer,
        subnet_file: Some(("subnet.txt", subnet)),
        issued_by_peer_comment: None,
        marker: Some(marker),
    };
    write_peer(aa, &link)
}

/// A CA's or DA's entry for its AA, which assigned it `subnet` (a CA
/// keeps it in `masq-subnet.txt`).
fn knows_aa(
    node: &NodeFiles,
    aa: &NodeFiles,
    masq: bool,
    subnet: &str,
    marker: &'static str,
) -> Result<(), GenError> {
    let link = PeerLink {
        peer: aa,
        subnet_file: masq.then_some(("masq-subnet.txt", subnet)),
        issued_by_peer_comment: Some(subnet),
        marker: Some(marker),
    };
    write_peer(node, &link)
}

/// [`write_devnet`] with the defaults, every server on a free port of
/// 127.0.0.1 and `extra_ca_peers` more creditors agents of the AA; and
/// the AA's port.
pub fn write_devnet_on_free_ports(dir: &Path, extra_ca_peers: usize) -> Result<(Devnet, u16), GenError> {
    let port = || crate::process::free_port().map_err(GenError::NoPort);
    let aa_port = port()?;
    let opts = DevnetOptions {
        aa_port,
        ca_port: port()?,
        da_port: port()?,
        extra_ca_peers,
        ..Default::default()
    };
    Ok((write_devnet(dir, &opts)?, aa_port))
}

/// Writes a consistent AA + CA + DA test network under `dir` (`aa/`,
/// `ca/`, `da/`), every manifest naming `opts.host`.
pub fn write_devnet(dir: &Path, opts: &DevnetOptions) -> Result<Devnet, GenError> {
    let da_subnet = format!("{}00", opts.aa_id);
    let node = |name: &str, node_type, aa_id: Option<&str>, port, subnet: Option<&str>| {
        NodeFiles::create_at(
            dir.join(name),
            Authority::new(node_type, aa_id)?,
            &opts.host,
            port,
            subnet,
        )
    };
    let aa = node("aa", NodeType::AA, Some(&opts.aa_id), opts.aa_port, None)?;
    // A second server certificate of the AA's, for rotation tests.
    let next_key = KeyPair::generate()?;
    let next = aa.auth.issue_leaf(&next_key, &LeafOptions::default())?;
    write_file(&aa.dir, "next/server.crt", next.pem())?;
    write_key(&aa.dir, "next/server.key", next_key.serialize_pem())?;
    let ca = node("ca", NodeType::CA, None, opts.ca_port, Some(CA_CREDITORS_SUBNET))?;
    let da = node("da", NodeType::DA, None, opts.da_port, Some(&da_subnet))?;
    aa_knows(&aa, &ca, CA_SUBNET_AT_AA, "ACTIVE")?;
    knows_aa(&ca, &aa, true, CA_SUBNET_AT_AA, "ACTIVE")?;
    aa_knows(&aa, &da, &da_subnet, "ACTIVE")?;
    knows_aa(&da, &aa, false, &da_subnet, "ACTIVE")?;

    let mut net = Devnet {
        aa_dir: aa.dir.clone(),
        ca_dir: ca.dir.clone(),
        da_dir: da.dir.clone(),
        aa_id: aa.auth.node_id.clone(),
        ca_id: ca.auth.node_id.clone(),
        da_id: da.auth.node_id.clone(),
        deactivated_ca_id: None,
        deactivated_aa_id: None,
        extra_cas: Vec::new(),
    };
    if opts.deactivated {
        let gone_ca = node("deactivated-ca", NodeType::CA, None, 1, Some(CA_CREDITORS_SUBNET))?;
        aa_knows(&aa, &gone_ca, "000002", "DEACTIVATED")?;
        let gone_aa = node("deactivated-aa", NodeType::AA, Some("deac00ed"), 1, None)?;
        knows_aa(&ca, &gone_aa, true, CA_SUBNET_AT_AA, "DEACTIVATED")?;
        net.deactivated_ca_id = Some(gone_ca.auth.node_id.clone());
        net.deactivated_aa_id = Some(gone_aa.auth.node_id.clone());
    }
    for i in 0..opts.extra_ca_peers {
        let subnet_at_aa = format!("{:06x}", 0x10 + i);
        let extra = node(
            &format!("extra-ca/{i}"),
            NodeType::CA,
            None,
            1,
            Some(CA_CREDITORS_SUBNET),
        )?;
        aa_knows(&aa, &extra, &subnet_at_aa, "ACTIVE")?;
        knows_aa(&extra, &aa, true, &subnet_at_aa, "ACTIVE")?;
        net.extra_cas
            .push((extra.auth.node_id.clone(), extra.dir.clone()));
    }
    Ok(net)
}
