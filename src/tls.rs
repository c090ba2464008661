//! Peer TLS: rustls configurations and the Swaptacular verifiers.
//!
//! # Trust model
//!
//! Both sides speak TLS 1.3 only and present certificates. A peer's leaf
//! must carry a subject with exactly one `O=Swaptacular Nodes Registry` and
//! exactly one `serialNumber`: that serialNumber is the peer's node ID.
//!
//! We verify a leaf with webpki against **the claimed peer's own root
//! certificate** (`peers/<id>/root-ca.crt`) as the only trust anchor. A
//! leaf can therefore only prove the identity of the peer whose root key
//! signed it: peer A cannot pose as peer B, because B's root did not sign
//! A's leaf. This is the guarantee the sub-CA's directoryName name
//! constraint gives in the OpenSSL path, reached without it (rustls-webpki
//! refuses every chain whose intermediate carries a directoryName
//! constraint, rustls/webpki issue 19).
//!
//! On the server side, the client also presents the sub-CA we issued for
//! its root (`[leaf, sub-CA]`). We check it too, as OpenSSL would: it must
//! be signed by our own root, be a valid CA certificate for the peer's
//! root key and subject, and its name constraint must permit the leaf's
//! subject. So a client is accepted only if both its own root signed its
//! leaf and we vouched for that root.
//!
//! Validity periods, signatures, basic constraints, key usage and EKU
//! (clientAuth on the server side, serverAuth on the client side) are
//! checked by webpki. The client does no hostname check; it requires the
//! server's serialNumber to equal the peer it dialled.
//!
//! rustls verifiers are synchronous, so the server keeps every known
//! peer's root in memory ([`PeerRoots`]), updated from the node database
//! watcher's snapshots: a newly added peer gets in within a poll.

use nodedata::CertificateDer;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::TrustAnchor;
use rustls_pki_types::{PrivateKeyDer, ServerName, UnixTime};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use webpki::{EndEntityCert, KeyUsage};

/// The organization every Swaptacular node certificate names.
pub const SWAPTACULAR_ORG: &str = "Swaptacular Nodes Registry";
const OID_CLIENT_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 2];
const OID_SERVER_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 1];

/// Errors while loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Why a peer's certificate subject is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("the certificate cannot be parsed")]
    Unparsable,
    #[error("the subject must hold exactly one O=Swaptacular Nodes Registry")]
    Organization,
    #[error("the subject must hold exactly one serialNumber")]
    SerialNumber,
}

/// The node ID (serialNumber) of a Swaptacular certificate's subject.
pub fn peer_node_id(cert: &[u8]) -> Result<String, SubjectError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).map_err(|_| SubjectError::Unparsable)?;
    let subject = cert.subject();
    let orgs: Vec<_> = subject.iter_organization().collect();
    if orgs.len() != 1 || orgs[0].as_str().ok() != Some(SWAPTACULAR_ORG) {
        return Err(SubjectError::Organization);
    }
    let serials: Vec<_> = subject
        .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
        .collect();
    if serials.len() != 1 {
        return Err(SubjectError::SerialNumber);
    }
    serials[0]
        .as_str()
        .map(str::to_owned)
        .map_err(|_| SubjectError::SerialNumber)
}

/// Loads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        file: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// Loads an unencrypted PEM private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    warn_if_readable_by_others(path);
    let bytes = std::fs::read(path).map_err(|e| TlsError::File {
        file: path.display().to_string(),
        reason: e.to_string(),
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::File {
        file: path.display().to_string(),
        reason: format!("no usable unencrypted PEM private key: {e}"),
    })
}

/// Warns (once per process and file) when a private key file may be read
/// by others: users neither its owner nor in its group (a group may read
/// it: Kubernetes gives a Secret's files to the pod's `fsGroup`).
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    static WARNED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
    let Ok(meta) = std::fs::metadata(path) else { return };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 == 0 {
        return;
    }
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.iter().any(|p| p == path) {
        warned.push(path.to_path_buf());
        tracing::warn!(
            "the private key {} is readable by others (mode {mode:o}); chmod 600 it",
            path.display()
        );
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn anchor(cert: &CertificateDer<'_>) -> Option<TrustAnchor<'static>> {
    webpki::anchor_from_trusted_cert(cert).ok().map(|a| a.to_owned())
}

fn general(msg: impl Into<String>) -> rustls::Error {
    rustls::Error::General(msg.into())
}

fn webpki_err(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    let c = match e {
        webpki::Error::CertExpired { .. } => C::Expired,
        webpki::Error::CertNotValidYet { .. } => C::NotValidYet,
        webpki::Error::UnknownIssuer => C::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => C::BadSignature,
        webpki::Error::RequiredEkuNotFoundContext(_) => C::InvalidPurpose,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(c)
}

/// The roots of every known peer, kept in memory for the synchronous
/// client-certificate verifier, and updated from the node database's
/// snapshots (see [`nodedata::Watcher`]).
pub struct PeerRoots {
    /// Each peer's data (as last seen) and its root as a trust anchor.
    roots: RwLock<HashMap<String, (Arc<nodedata::PeerData>, TrustAnchor<'static>)>>,
}

impl PeerRoots {
    /// An empty store.
    pub fn new() -> Arc<PeerRoots> {
        Arc::new(PeerRoots {
            roots: RwLock::new(HashMap::new()),
        })
    }

    /// Takes every peer's root from `snapshot`; a peer whose root is not a
    /// usable trust anchor is left out with a warning. Only the peers the
    /// watcher read again are parsed again (the others are the same
    /// `Arc`), so a change among thousands of peers costs little.
    pub fn update(&self, snapshot: &nodedata::Snapshot) {
        let mut roots = self.roots.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::take(&mut *roots);
        let mut fresh = HashMap::with_capacity(snapshot.peers.len());
        for (id, peer) in &snapshot.peers {
            let kept = old.get(id).filter(|(seen, _)| Arc::ptr_eq(seen, peer));
            let anchor = match kept {
                Some((_, a)) => Some(a.clone()),
                None => anchor(&peer.root_cert),
            };
            match anchor {
                Some(a) => {
                    fresh.insert(id.clone(), (peer.clone(), a));
                }
                None => tracing::warn!(peer = %id, "peers/{id}/root-ca.crt: not a usable trust anchor"),
            }
        }
        *roots = fresh;
    }

    fn get(&self, id: &str) -> Option<TrustAnchor<'static>> {
        self.roots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|(_, a)| a.clone())
    }
}

/// The handshake-signature methods both verifiers share: TLS 1.3 only,
/// with the provider's algorithms (`self.algs`).
macro_rules! tls13_only_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// The server's client-certificate verifier (see the module doc).
#[derive(Debug)]
struct SwaptacularClientVerifier {
    roots: Arc<PeerRoots>,
    /// Our own root certificate (DER), which issued every peer's sub-CA.
    own_root: CertificateDer<'static>,
    algs: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for PeerRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerRoots")
    }
}

/// Checks the sub-CA a client presented: issued by our root, for the
/// leaf's issuer, a CA, in its validity period, and with a name constraint
/// that permits the leaf's subject.
pub fn check_sub_ca(own_root: &[u8], sub: &[u8], leaf: &[u8]) -> Result<(), String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let parse = |der| x509_parser::parse_x509_certificate(der).map(|(_, c)| c);
    let root = parse(own_root).map_err(|_| "our root certificate cannot be parsed")?;
    let sub = parse(sub).map_err(|_| "the sub-CA certificate cannot be parsed")?;
    let leaf = parse(leaf).map_err(|_| "the certificate cannot be parsed")?;
    if sub.issuer().as_raw() != root.subject().as_raw() {
        return Err("the sub-CA was not issued by our root".into());
    }
    sub.verify_signature(Some(root.public_key()))
        .map_err(|_| "the sub-CA's signature does not verify with our root's key")?;
    if !sub.validity().is_valid() {
        return Err("the sub-CA is expired or not yet valid".into());
    }
    if !sub.is_ca() {
        return Err("the sub-CA is not a CA certificate".into());
    }
    if sub.subject().as_raw() != leaf.issuer().as_raw() {
        return Err("the sub-CA does not name the leaf's issuer".into());
    }
    let mut permitted = Vec::new();
    for ext in sub.extensions() {
        if let ParsedExtension::NameConstraints(nc) = ext.parsed_extension() {
            for subtree in nc.permitted_subtrees.iter().flatten() {
                if let GeneralName::DirectoryName(name) = &subtree.base {
                    permitted.push(name.as_raw().to_vec());
                }
            }
        }
    }
    if permitted.is_empty() {
        return Err("the sub-CA has no directoryName name constraint".into());
    }
    let leaf_subject = leaf.subject().as_raw();
    // RDN-sequence prefix: compare the contents of the two Name SEQUENCEs.
    let contents = |der: &[u8]| -> Vec<u8> {
        let header = match der.get(1) {
            Some(&b) if b < 0x80 => 2,
            Some(&b) => 2 + (b & 0x7f) as usize,
            None => return Vec::new(),
        };
        der.get(header..).map(<[u8]>::to_vec).unwrap_or_default()
    };
    let leaf_rdns = contents(leaf_subject);
    if !permitted
        .iter()
        .any(|p| !contents(p).is_empty() && leaf_rdns.starts_with(&contents(p)))
    {
        return Err("the sub-CA's name constraint does not permit the leaf's subject".into());
    }
    Ok(())
}

/// The node ID a leaf names; a refusal of the `side`'s certificate
/// (logged) when its subject is not a Swaptacular one.
fn leaf_id(end_entity: &CertificateDer<'_>, side: Side) -> Result<String, rustls::Error> {
    peer_node_id(end_entity).map_err(|e| {
        tracing::warn!("{} certificate refused: {e}", side.name());
        general(format!("invalid certificate subject: {e}"))
    })
}

/// Whose certificate a verifier checks.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Server,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }

    /// The extended key usage the certificate must allow.
    fn usage(self) -> &'static [u8] {
        match self {
            Side::Client => OID_CLIENT_AUTH,
            Side::Server => OID_SERVER_AUTH,
        }
    }
}

/// Verifies that `end_entity` chains to `anchor` (through
/// `intermediates`) and may be used by `side`; a refusal of peer `id`'s
/// certificate is logged.
fn verify_leaf(
    algs: &WebPkiSupportedAlgorithms,
    end_entity: &CertificateDer<'_>,
    anchor: &TrustAnchor<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    side: Side,
    id: &str,
) -> Result<(), rustls::Error> {
    let usage = side.usage();
    let side = side.name();
    let cert = EndEntityCert::try_from(end_entity).map_err(webpki_err)?;
    cert.verify_for_usage(
        algs.all,
        std::slice::from_ref(anchor),
        intermediates,
        now,
        KeyUsage::required(usage),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| {
        tracing::warn!(peer = %id, "{side} certificate refused: {e}");
        webpki_err(e)
    })
}

impl ClientCertVerifier for SwaptacularClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = leaf_id(end_entity, Side::Client)?;
        let Some(anchor) = self.roots.get(&id) else {
            tracing::warn!(peer = %id, "client certificate refused: no such peer in the node database");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        verify_leaf(&self.algs, end_entity, &anchor, &[], now, Side::Client, &id)?;
        if intermediates.is_empty() {
            tracing::warn!(peer = %id, "client certificate refused: no sub-CA certificate presented");
            return Err(general("the client presented no sub-CA certificate"));
        }
        // The sub-CA is normally the only other certificate, but a server.crt
        // file may hold more than the leaf: any one that passes will do.
        let mut why = String::new();
        for sub in intermediates {
            match check_sub_ca(&self.own_root, sub, end_entity) {
                Ok(()) => return Ok(ClientCertVerified::assertion()),
                Err(e) => why = e,
            }
        }
        tracing::warn!(peer = %id, "client certificate refused: {why}");
        Err(general(why))
    }

    tls13_only_signatures!();
}

/// The client's server-certificate verifier: the server's leaf must be
/// signed by the dialled peer's root and name that peer.
#[derive(Debug)]
struct SwaptacularServerVerifier {
    peer_id: String,
    anchor: TrustAnchor<'static>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SwaptacularServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = leaf_id(end_entity, Side::Server)?;
        if id != self.peer_id {
            tracing::warn!(
                "server certificate refused: it names {id}, but we dialled {}",
                self.peer_id
            );
            return Err(general(format!(
                "the server's serialNumber {id} is not the peer {}",
                self.peer_id
            )));
        }
        verify_leaf(
            &self.algs,
            end_entity,
            &self.anchor,
            intermediates,
            now,
            Side::Server,
            &id,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    tls13_only_signatures!();
}

/// The server's TLS 1.3 configuration: presents `certs`/`key`, requires a
/// client certificate verified as the module doc says.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    own_root: CertificateDer<'static>,
    roots: Arc<PeerRoots>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = SwaptacularClientVerifier {
        roots,
        own_root,
        algs: provider.signature_verification_algorithms,
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(certs, key)?;
    Ok(config)
}

/// The client's TLS 1.3 configuration for dialling `peer_id`, whose root
/// is `peer_root`; presents `certs` (our leaf and the peer's sub-CA).
pub fn client_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    peer_id: &str,
    peer_root: &CertificateDer<'static>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let anchor = anchor(peer_root).ok_or_else(|| TlsError::File {
        file: format!("peers/{peer_id}/root-ca.crt"),
        reason: "not a usable trust anchor".into(),
    })?;
    let verifier = SwaptacularServerVerifier {
        peer_id: peer_id.to_string(),
        anchor,
        algs: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)?;
    // A config is made for every connection (the files may have changed),
    // so a session cache would never be reused; without it a config is a
    // few KiB instead of tens (a --links client holds one per link).
    let mut config = config;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}
