//! TLS to the broker (`amqps://`), on rustls with ring: the broker's
//! certificate is checked against the system's root certificates (the
//! PEM bundle of `SSL_CERT_FILE`, or the distribution's usual place) and
//! an optional CA file, and must name the URL's host.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// Where distributions keep their root bundle.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// The certificates of a PEM file.
fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM certificate: {e}", path.display()))
}

/// The trusted roots: the system's and those of `ca_file`.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(std::path::PathBuf::from))
        .find(|p| p.is_file());
    if let Some(bundle) = system {
        // A bad certificate in the system bundle is skipped, not fatal.
        let _ = store.add_parsable_certificates(pem_certs(&bundle).unwrap_or_default());
    }
    if let Some(path) = ca_file {
        let certs = pem_certs(path)?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate found", path.display()));
        }
        for cert in certs {
            store
                .add(cert)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
        }
    }
    if store.is_empty() {
        return Err("no trusted root certificates (no system bundle, no CA file)".into());
    }
    Ok(store)
}

/// The TLS client set-up: rustls with ring, TLS 1.2 or 1.3, the roots of
/// [`roots`], no client certificate.
pub(crate) fn connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca_file)?)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
