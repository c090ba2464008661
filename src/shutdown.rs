//! The one owner of "stop now": SIGTERM or SIGINT turns a watch channel
//! true, and every loop holds a [`Shutdown`] receiver of it (as in
//! mini-redis's `shutdown.rs`); SIGHUP asks for a node-database reload.

use tokio::sync::watch;

/// Listens for the shutdown signal.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// A shutdown that fires when `tx` sends `true` (tests, the bench).
    pub fn new(rx: watch::Receiver<bool>) -> Shutdown {
        Shutdown { rx }
    }

    /// A shutdown that fires on SIGTERM or SIGINT.
    pub fn on_signals() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => s.recv().await,
                    Err(e) => {
                        tracing::error!("cannot listen for SIGTERM: {e}");
                        std::future::pending().await
                    }
                }
            };
            tokio::select! {
                _ = term => tracing::info!("SIGTERM received; stopping"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
            }
            let _ = tx.send(true);
        });
        Shutdown { rx }
    }

    /// Whether shutdown has been asked for.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is asked for (at once if it has been).
    /// Cancel-safe; a dropped sender counts as a request.
    pub async fn requested(&mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}

/// Asks the node database watcher to look at once on every SIGHUP.
pub fn reload_on_sighup(reload: nodedata::ReloadHandle) {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP: {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received; reloading the node database");
            reload.reload_now();
        }
    });
}
