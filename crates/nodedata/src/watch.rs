//! The one owner of node-database freshness.
//!
//! ```text
//!  node database ──poll (stamps: mtimes and sizes)──> changed peers re-read ──> Snapshot ──watch──> sessions, links, verifier
//!        ^                                                                                   (every `every`, or at once on reload_now)
//! ```
//!
//! A [`Watcher`] polls the database directory (inotify cannot be relied on
//! over NFS, where node databases live in the field): for every peer it
//! takes the modification times and sizes of its directory (which changes
//! when `ACTIVE` or `DEACTIVATED` is created or removed), of its
//! `nodeinfo/` and of the files it reads, and re-reads only the peers
//! whose stamp changed. A peer whose files cannot be read or parsed (say,
//! half-written) keeps its last good data and is tried again at the next
//! poll; it is never taken as gone. Extra files (the server's certificate
//! and key) are stamped too, and their changes counted. Each change is
//! published as a new [`Snapshot`] on a watch channel.

use crate::db::{read_node_data, read_peer_data};
use crate::{is_valid_node_id, DbError, NodeData, PeerData};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Notify};

/// What the database says, at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub node: Arc<NodeData>,
    /// Every peer that could be read, in any state, by node ID.
    pub peers: HashMap<String, Arc<PeerData>>,
    /// How many times the extra files (see [`Watcher::start`]) changed.
    pub files_generation: u64,
}

impl Snapshot {
    /// The peer, when it is active.
    pub fn active_peer(&self, id: &str) -> Option<Arc<PeerData>> {
        self.peers.get(id).filter(|p| p.is_active()).cloned()
    }

    /// The peer in any state.
    pub fn peer(&self, id: &str) -> Option<Arc<PeerData>> {
        self.peers.get(id).cloned()
    }
}

/// The modification time and size of a file or directory (`None` when it
/// is missing).
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stat(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The files of a peer whose changes matter.
const PEER_FILES: [&str; 7] = [
    "",
    "nodeinfo",
    "sub-ca.crt",
    "root-ca.crt",
    "nodetype.txt",
    "nodeinfo/stomp.toml",
    "subnet.txt",
];

fn peer_stamp(dir: &Path) -> Stamp {
    let mut stamp: Stamp = PEER_FILES.iter().map(|f| stat(&dir.join(f))).collect();
    stamp.push(stat(&dir.join("masq-subnet.txt")));
    stamp
}

/// Asks a [`Watcher`] to look at once (SIGHUP).
#[derive(Clone)]
pub struct ReloadHandle(Arc<Notify>);

impl ReloadHandle {
    pub fn reload_now(&self) {
        self.0.notify_one();
    }
}

/// Polls the database and publishes snapshots.
pub struct Watcher {
    root: PathBuf,
    extra_files: Vec<PathBuf>,
    node: Arc<NodeData>,
    stamps: HashMap<String, Stamp>,
    peers: HashMap<String, Arc<PeerData>>,
    extra_stamp: Stamp,
    files_generation: u64,
    /// Peers whose last read failed, with the stamp it failed at (warned
    /// of once per stamp).
    failing: HashMap<String, Stamp>,
}

impl Watcher {
    /// Reads the database (our own node data must be readable) and starts
    /// polling it every `every` on the runtime, the file work on the
    /// blocking pool. `extra_files` are stamped as well.
    pub async fn start(
        root: PathBuf,
        extra_files: Vec<PathBuf>,
        every: Duration,
    ) -> Result<(watch::Receiver<Arc<Snapshot>>, ReloadHandle), DbError> {
        let watcher = tokio::task::spawn_blocking(move || Watcher::first(root, extra_files))
            .await
            .map_err(|e| DbError::Task(e.to_string()))??;
        let (tx, rx) = watch::channel(watcher.snapshot());
        let reload = ReloadHandle(Arc::new(Notify::new()));
        tokio::spawn(watcher.run(tx, reload.0.clone(), every));
        Ok((rx, reload))
    }

    /// Reads the database once, blocking (what [`Watcher::start`] does
    /// first; the benchmark times it).
    pub fn first(root: PathBuf, extra_files: Vec<PathBuf>) -> Result<Watcher, DbError> {
        let node = Arc::new(read_node_data(&root)?);
        let mut watcher = Watcher {
            extra_stamp: extra_files.iter().map(|f| stat(f)).collect(),
            root,
            extra_files,
            node,
            stamps: HashMap::new(),
            peers: HashMap::new(),
            files_generation: 0,
            failing: HashMap::new(),
        };
        watcher.poll();
        Ok(watcher)
    }

    /// What the watcher knows now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            node: self.node.clone(),
            peers: self.peers.clone(),
            files_generation: self.files_generation,
        })
    }

    async fn run(mut self, tx: watch::Sender<Arc<Snapshot>>, reload: Arc<Notify>, every: Duration) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = reload.notified() => tracing::info!("reloading the node database"),
                _ = tx.closed() => return,
            }
            let polled = tokio::task::spawn_blocking(move || {
                let changed = self.poll();
                (self, changed)
            })
            .await;
            let Ok((watcher, changed)) = polled else { return };
            self = watcher;
            if changed {
                tx.send_replace(self.snapshot());
            }
        }
    }

    /// Looks once, blocking; whether anything changed.
    pub fn poll(&mut self) -> bool {
        let mut changed = false;
        let extra: Stamp = self.extra_files.iter().map(|f| stat(f)).collect();
        if extra != self.extra_stamp {
            self.extra_stamp = extra;
            self.files_generation += 1;
            changed = true;
        }
        let ids = self.peer_dirs();
        let before = self.peers.len();
        self.peers.retain(|id, _| ids.contains(id));
        self.stamps.retain(|id, _| ids.contains(id));
        changed |= self.peers.len() != before;
        for id in &ids {
            changed |= self.poll_peer(id);
        }
        changed
    }

    /// Re-reads `id` when its stamp changed; whether its data changed.
    fn poll_peer(&mut self, id: &str) -> bool {
        let dir = self.root.join("peers").join(id);
        let stamp = peer_stamp(&dir);
        if self.stamps.get(id) == Some(&stamp) {
            return false;
        }
        match read_peer_data(&self.root, &self.node, id) {
            Ok(read) => {
                self.stamps.insert(id.to_string(), stamp);
                if self.failing.remove(id).is_some() {
                    tracing::info!(peer = %id, "the peer's files can be read again");
                }
                match read {
                    Some(p) => self.peers.insert(id.to_string(), Arc::new(p)),
                    None => self.peers.remove(id),
                };
                true
            }
            Err(e) => {
                // Half-written, or broken: keep what we had, try again.
                if self.failing.get(id) != Some(&stamp) {
                    tracing::warn!(peer = %id, "{e}; keeping the peer's last good data, trying again");
                    self.failing.insert(id.to_string(), stamp);
                }
                false
            }
        }
    }

    /// The IDs of the peer directories.
    fn peer_dirs(&self) -> std::collections::HashSet<String> {
        let Ok(entries) = std::fs::read_dir(self.root.join("peers")) else {
            return Default::default();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| is_valid_node_id(name))
            .collect()
    }
}
