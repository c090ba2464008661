//! The inputs of the certificate expiry gauges: our certificate's and
//! every active peer's root and sub-CA notAfter, read (x509) when the node
//! database changes; the gauges are computed from them at each scrape.

use super::{get, served};
use nodedata::{PeerData, Snapshot};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// The expiry times (Unix seconds) the gauges are computed from.
#[derive(Default)]
pub(super) struct NotAfter {
    pub(super) own: Option<i64>,
    /// (peer, certificate kind, not after)
    pub(super) peers: Vec<(String, &'static str, i64)>,
}

/// The notAfter of a DER certificate (Unix seconds).
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The notAfter of the first certificate of a PEM file.
fn file_not_after(path: &std::path::Path) -> Option<i64> {
    let certs = crate::tls::load_certs(path).ok()?;
    not_after(certs.first()?)
}

/// A certificate's kind (`root`, `sub-ca`) and its notAfter (Unix seconds).
type Expiry = (&'static str, i64);

/// Keeps the expiry gauges' inputs fresh: our certificate (`own`, read
/// again at every change of the node database) and every active peer's root and
/// sub-CA certificates (parsed again only for the peers the watcher read
/// again).
pub fn watch_certificates(mut nodedata: watch::Receiver<Arc<Snapshot>>, own: Option<PathBuf>) {
    if !served() {
        return;
    }
    let m = get();
    tokio::spawn(async move {
        let mut parsed: HashMap<String, (Arc<PeerData>, Vec<Expiry>)> = HashMap::new();
        loop {
            let snapshot = nodedata.borrow_and_update().clone();
            m.forget_inactive(&snapshot);
            // Active peers only: a deactivated peer's expiry pages no one.
            parsed.retain(|id, _| snapshot.active_peer(id).is_some());
            for (id, peer) in snapshot.peers.iter().filter(|(_, p)| p.is_active()) {
                if parsed.get(id).is_some_and(|(seen, _)| Arc::ptr_eq(seen, peer)) {
                    continue;
                }
                let expiry = [("root", &peer.root_cert), ("sub-ca", &peer.sub_cert)]
                    .into_iter()
                    .filter_map(|(kind, der)| Some((kind, not_after(der)?)))
                    .collect();
                parsed.insert(id.clone(), (peer.clone(), expiry));
            }
            let peers = parsed
                .iter()
                .flat_map(|(id, (_, expiry))| expiry.iter().map(move |(kind, at)| (id.clone(), *kind, *at)))
                .collect();
            let own = own.as_deref().and_then(file_not_after);
            *m.not_after.lock().unwrap_or_else(|e| e.into_inner()) = NotAfter { own, peers };
            if nodedata.changed().await.is_err() {
                break;
            }
        }
    });
}
