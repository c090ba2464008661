//! Reading the node database from a `file:///` directory. Every file read
//! runs on tokio's blocking pool; what stays fresh while a program runs is
//! the [`crate::Watcher`]'s job (it replaces SPEC's peer cache).

use crate::{is_valid_node_id, parse_manifest, CertificateDer, NodeData, NodeType, PeerData, Subnet};
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An error in the node database; it names the file at fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("invalid node database URL '{0}': only file:///absolute/dir URLs are supported")]
    Url(String),
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error("node database read failed: {0}")]
    Task(String),
}

/// The life-cycle state of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// `ACTIVE` exists and `DEACTIVATED` does not.
    Active,
    /// Neither file: set up, not yet active.
    Inactive,
    /// `DEACTIVATED` exists (it wins over `ACTIVE`).
    Deactivated,
}

/// A handle to the node database. Cheap to clone.
#[derive(Clone)]
pub struct NodeDatabase {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    node: tokio::sync::OnceCell<Arc<NodeData>>,
}

impl NodeDatabase {
    /// Opens the database at a `file:///absolute/dir` URL. Nothing is read
    /// yet.
    pub fn open(url: &str) -> Result<NodeDatabase, DbError> {
        let parsed = url::Url::parse(url).map_err(|_| DbError::Url(url.to_string()))?;
        if parsed.scheme() != "file" || !url.starts_with("file:///") {
            return Err(DbError::Url(url.to_string()));
        }
        let root = parsed.to_file_path().map_err(|_| DbError::Url(url.to_string()))?;
        Ok(Self::open_dir(root))
    }

    /// Opens the database in this directory.
    pub fn open_dir(root: impl Into<PathBuf>) -> NodeDatabase {
        NodeDatabase {
            inner: Arc::new(Inner {
                root: root.into(),
                node: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// The database directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Our own node data (read once).
    pub async fn node_data(&self) -> Result<Arc<NodeData>, DbError> {
        let root = self.inner.root.clone();
        self.inner
            .node
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || read_node_data(&root).map(Arc::new))
                    .await
                    .map_err(|e| DbError::Task(e.to_string()))?
            })
            .await
            .cloned()
    }

    /// A peer in any state, read afresh. `Ok(None)` when there is no such
    /// peer (no directory or no `sub-ca.crt`).
    pub async fn peer_data(&self, peer_id: &str) -> Result<Option<Arc<PeerData>>, DbError> {
        if !is_valid_node_id(peer_id) {
            return Ok(None);
        }
        let node = self.node_data().await?;
        let root = self.inner.root.clone();
        let peer_id = peer_id.to_string();
        tokio::task::spawn_blocking(move || read_peer_data(&root, &node, &peer_id).map(|p| p.map(Arc::new)))
            .await
            .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// The IDs of every peer directory that holds a `sub-ca.crt`.
    pub async fn peer_ids(&self) -> Result<Vec<String>, DbError> {
        let root = self.inner.root.clone();
        tokio::task::spawn_blocking(move || {
            let dir = root.join("peers");
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => {
                    return Err(DbError::File {
                        file: "peers".into(),
                        reason: e.to_string(),
                    })
                }
            };
            let mut ids = Vec::new();
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_valid_node_id(&name) && entry.path().join("sub-ca.crt").is_file() {
                    ids.push(name);
                }
            }
            ids.sort();
            Ok(ids)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }
}

fn file_err(rel: &str, reason: impl ToString) -> DbError {
    DbError::File {
        file: rel.to_string(),
        reason: reason.to_string(),
    }
}

fn read_bytes(root: &Path, rel: &str) -> Result<Vec<u8>, DbError> {
    std::fs::read(root.join(rel)).map_err(|e| file_err(rel, e))
}

fn read_text(root: &Path, rel: &str) -> Result<String, DbError> {
    String::from_utf8(read_bytes(root, rel)?).map_err(|_| file_err(rel, "not valid UTF-8"))
}

/// Reads a one-line file, stripping one trailing `\n` or `\r\n`.
fn read_oneline(root: &Path, rel: &str) -> Result<String, DbError> {
    let mut s = read_text(root, rel)?;
    if s.ends_with("\r\n") {
        s.truncate(s.len() - 2);
    } else if s.ends_with('\n') {
        s.truncate(s.len() - 1);
    }
    Ok(s)
}

fn read_subnet(root: &Path, rel: &str) -> Result<Subnet, DbError> {
    Subnet::parse(&read_oneline(root, rel)?).map_err(|e| file_err(rel, e))
}

fn read_node_type(root: &Path, rel: &str) -> Result<NodeType, DbError> {
    let s = read_oneline(root, rel)?;
    NodeType::from_db_str(&s).ok_or_else(|| file_err(rel, format!("unknown node type '{s}'")))
}

/// Reads the first certificate of a PEM file (comments allowed).
pub(crate) fn read_cert(root: &Path, rel: &str) -> Result<CertificateDer<'static>, DbError> {
    let bytes = read_bytes(root, rel)?;
    match CertificateDer::pem_slice_iter(&bytes).next() {
        Some(Ok(cert)) => Ok(cert),
        Some(Err(e)) => Err(file_err(rel, format!("invalid PEM certificate: {e}"))),
        None => Err(file_err(rel, "no PEM certificate found")),
    }
}

/// The subnet whose digits are a node ID (an AA's debtors subnet).
fn node_id_subnet(id: &str, rel: &str) -> Result<Subnet, DbError> {
    Subnet::parse(id).map_err(|e| file_err(rel, format!("node ID is not a subnet: {e}")))
}

pub(crate) fn read_node_data(root: &Path) -> Result<NodeData, DbError> {
    let root_cert = read_cert(root, "root-ca.crt")?;
    let node_id = read_oneline(root, "db/nodeid")?;
    if !is_valid_node_id(&node_id) {
        return Err(file_err("db/nodeid", format!("invalid node ID '{node_id}'")));
    }
    let node_type = read_node_type(root, "db/nodetype")?;
    let (creditors_subnet, debtors_subnet) = match node_type {
        NodeType::AA => (Subnet::UNIVERSAL, node_id_subnet(&node_id, "db/nodeid")?),
        NodeType::CA => (read_subnet(root, "creditors-subnet.txt")?, Subnet::UNIVERSAL),
        NodeType::DA => (Subnet::ZERO, read_subnet(root, "debtors-subnet.txt")?),
    };
    Ok(NodeData {
        node_type,
        node_id,
        root_cert,
        creditors_subnet,
        debtors_subnet,
    })
}

pub(crate) fn read_peer_data(
    root: &Path,
    node: &NodeData,
    peer_id: &str,
) -> Result<Option<PeerData>, DbError> {
    let dir = format!("peers/{peer_id}");
    if !root.join(&dir).join("sub-ca.crt").is_file() {
        return Ok(None);
    }
    let sub_cert = read_cert(root, &format!("{dir}/sub-ca.crt"))?;
    let root_cert = read_cert(root, &format!("{dir}/root-ca.crt"))?;
    let type_file = format!("{dir}/nodetype.txt");
    let node_type = read_node_type(root, &type_file)?;
    let manifest_file = format!("{dir}/nodeinfo/stomp.toml");
    let servers_manifest = parse_manifest(&read_text(root, &manifest_file)?, &node.node_id)
        .map_err(|e| file_err(&manifest_file, e))?;

    let (creditors_subnet, debtors_subnet) = peer_subnets(root, node, node_type, peer_id, &dir)?;
    let state = peer_state(&root.join(&dir));
    Ok(Some(PeerData {
        node_type,
        node_id: peer_id.to_string(),
        servers_manifest,
        root_cert,
        sub_cert,
        creditors_subnet,
        debtors_subnet,
        state,
    }))
}

/// The peer's creditors and debtors subnets, by the pairing of the two
/// node types (SPEC's node database layout); any other pairing is an error
/// naming the peer's `nodetype.txt`.
fn peer_subnets(
    root: &Path,
    node: &NodeData,
    node_type: NodeType,
    peer_id: &str,
    dir: &str,
) -> Result<(Subnet, Subnet), DbError> {
    let subnet_file = format!("{dir}/subnet.txt");
    Ok(match (node.node_type, node_type) {
        (NodeType::AA, NodeType::CA) => (read_subnet(root, &subnet_file)?, node.debtors_subnet),
        (NodeType::AA, NodeType::DA) => (Subnet::ZERO, read_subnet(root, &subnet_file)?),
        (NodeType::CA, NodeType::AA) => {
            let rel = format!("{dir}/masq-subnet.txt");
            let masq = read_subnet(root, &rel)?;
            if masq.mask != node.creditors_subnet.mask {
                return Err(file_err(
                    &rel,
                    "the masquerade subnet's mask differs from the mask of creditors-subnet.txt",
                ));
            }
            (masq, node_id_subnet(peer_id, dir)?)
        }
        (NodeType::DA, NodeType::AA) => (Subnet::ZERO, node.debtors_subnet),
        (ours, theirs) => {
            return Err(file_err(
                &format!("{dir}/nodetype.txt"),
                format!("invalid peer pairing: we are {ours}, the peer is {theirs}"),
            ));
        }
    })
}

/// A peer's state, from its directory's marker files (`DEACTIVATED` wins
/// over `ACTIVE`).
fn peer_state(dir: &Path) -> PeerState {
    if dir.join("DEACTIVATED").exists() {
        PeerState::Deactivated
    } else if dir.join("ACTIVE").exists() {
        PeerState::Active
    } else {
        PeerState::Inactive
    }
}
