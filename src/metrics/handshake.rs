//! Why a server's TLS handshake failed, as a bounded label value of
//! `swpt_tls_handshake_failures_total` (rustls's errors classified).

/// Why a TLS handshake failed, as a bounded label value.
pub fn handshake_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return "closed";
    }
    match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
        Some(E::InvalidCertificate(_)) => "certificate",
        Some(E::NoCertificatesPresented) => "no_certificate",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(E::AlertReceived(_)) => "alert",
        Some(_) => "protocol",
        None => "io",
    }
}
