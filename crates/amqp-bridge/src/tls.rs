//! TLS to the broker (`amqps://`), on rustls with ring: the broker's
//! certificate is checked against the system's root certificates (the
//! PEM bundle of `SSL_CERT_FILE`, or the distribution's usual place), an
//! optional CA file (`APP_BROKER_CA_FILE`) and the URL's `cafile` and
//! `capath`, and must name the URL's host, unless the URL says
//! `no_verify_ssl`. The URL's `certfile` and `keyfile` are presented as
//! the client's certificate (for SASL EXTERNAL, or a broker that asks).

use crate::endpoint::TlsOptions;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{self, ring, CryptoProvider};
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

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

/// Adds the certificates of a CA file, which must hold at least one.
fn add_ca_file(store: &mut RootCertStore, path: &Path) -> Result<(), String> {
    let certs = pem_certs(path)?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    for cert in certs {
        store
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(())
}

/// The trusted roots: the system's, `ca_file`'s and the URL's.
fn roots(ca_file: Option<&Path>, options: &TlsOptions) -> Result<RootCertStore, String> {
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
    for file in [ca_file, options.cafile.as_deref()].into_iter().flatten() {
        add_ca_file(&mut store, file)?;
    }
    if let Some(dir) = &options.capath {
        // Every PEM file of the folder (OpenSSL's hashed names included);
        // files that hold no certificate are passed over.
        let entries = std::fs::read_dir(dir).map_err(|e| format!("capath {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let _ = store.add_parsable_certificates(pem_certs(&entry.path()).unwrap_or_default());
        }
    }
    if store.is_empty() {
        return Err("no trusted root certificates (no system bundle, no CA file)".into());
    }
    Ok(store)
}

/// The client certificate chain and key of `certfile` / `keyfile`.
fn client_identity(
    options: &TlsOptions,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, String> {
    let Some(certfile) = &options.certfile else {
        if let Some(keyfile) = &options.keyfile {
            return Err(format!("keyfile {} is given without certfile", keyfile.display()));
        }
        return Ok(None);
    };
    let certs = pem_certs(certfile)?;
    if certs.is_empty() {
        return Err(format!(
            "certfile {}: no PEM certificate found",
            certfile.display()
        ));
    }
    let keyfile = options.keyfile.as_ref().unwrap_or(certfile);
    let key = PrivateKeyDer::from_pem_file(keyfile)
        .map_err(|e| format!("keyfile {}: no usable private key: {e}", keyfile.display()))?;
    Ok(Some((certs, key)))
}

/// A handshake signature checked (`m`essage, `c`ertificate, `d`igitally
/// signed struct).
type Signed = Result<HandshakeSignatureValid, tokio_rustls::rustls::Error>;

/// Accepts any broker certificate (`no_verify_ssl`); the handshake's
/// signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Signed {
        crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Signed {
        crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client set-up for one URL: rustls with ring, TLS 1.2 or 1.3,
/// the roots of [`roots`] (or none checked), the client certificate if
/// the URL names one.
pub(crate) fn connector(
    ca_file: Option<&Path>,
    options: &TlsOptions,
) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if options.no_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        builder.with_root_certificates(roots(ca_file, options)?)
    };
    let config = match client_identity(options)? {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("the client certificate cannot be used: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named() {
        let missing = connector(Some(Path::new("/nonexistent/ca.pem")), &TlsOptions::default());
        assert!(missing.is_err_and(|e| e.contains("/nonexistent/ca.pem")));
        let options = TlsOptions {
            certfile: Some("/nonexistent/client.pem".into()),
            ..TlsOptions::default()
        };
        assert!(connector(None, &options).is_err_and(|e| e.contains("/nonexistent/client.pem")));
        let options = TlsOptions {
            keyfile: Some("/k.pem".into()),
            ..TlsOptions::default()
        };
        assert!(connector(None, &options).is_err_and(|e| e.contains("without certfile")));
    }
}
