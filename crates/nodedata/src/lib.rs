//! The Swaptacular node database.
//!
//! This crate owns everything the gateway learns from the node database
//! directory (`SWPT_NODEDATA_URL`, SPEC sections 2 and 4): who we are
//! ([`NodeData`]), who our peers are ([`PeerData`]), their subnets
//! ([`Subnet`]) and STOMP servers manifests ([`StompManifest`]). The
//! [`NodeDatabase`] handle reads it without blocking the async runtime;
//! the [`Watcher`] keeps a running process's view of it
//! fresh ([`watch`]). (The test-network generator lives in the
//! `swpt-testkit` crate, out of the production binaries.)

mod db;
mod manifest;
mod subnet;
pub mod watch;

pub use db::{DbError, NodeDatabase, PeerState};
pub use manifest::{parse_manifest, ServerAddr, StompManifest};
pub use rustls_pki_types::CertificateDer;
pub use subnet::{Subnet, SubnetError};
pub use watch::{ReloadHandle, Snapshot, Watcher};

use std::fmt;

/// The three kinds of Swaptacular nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeType {
    /// Accounting Authority.
    AA,
    /// Creditors Agent.
    CA,
    /// Debtors Agent.
    DA,
}

impl NodeType {
    /// The exact string used in the node database and certificates.
    pub fn as_db_str(self) -> &'static str {
        match self {
            NodeType::AA => "Accounting Authorities",
            NodeType::CA => "Creditors Agents",
            NodeType::DA => "Debtors Agents",
        }
    }

    /// Parses the database string.
    pub fn from_db_str(s: &str) -> Option<NodeType> {
        match s {
            "Accounting Authorities" => Some(NodeType::AA),
            "Creditors Agents" => Some(NodeType::CA),
            "Debtors Agents" => Some(NodeType::DA),
            _ => None,
        }
    }

    /// The exchange that receives messages for a node of this type.
    pub fn in_exchange(self) -> &'static str {
        match self {
            NodeType::AA => "accounts_in",
            NodeType::CA => "creditors_in",
            NodeType::DA => "debtors_in",
        }
    }

    /// The STOMP destination a server of this type accepts.
    pub fn stomp_destination(self) -> String {
        format!("/exchange/{}", self.in_exchange())
    }

    /// The short lowercase prefix (`aa`, `ca`, `da`).
    pub fn short(self) -> &'static str {
        match self {
            NodeType::AA => "aa",
            NodeType::CA => "ca",
            NodeType::DA => "da",
        }
    }
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_db_str())
    }
}

/// Data about the owner of the node.
#[derive(Clone, Debug)]
pub struct NodeData {
    pub node_type: NodeType,
    pub node_id: String,
    /// The node's own root certificate (DER).
    pub root_cert: CertificateDer<'static>,
    pub creditors_subnet: Subnet,
    pub debtors_subnet: Subnet,
}

/// Data about one peer of the node.
#[derive(Clone, Debug)]
pub struct PeerData {
    pub node_type: NodeType,
    pub node_id: String,
    pub servers_manifest: StompManifest,
    /// The peer's own root certificate (DER).
    pub root_cert: CertificateDer<'static>,
    /// The certificate the peer issued for our root key (DER).
    pub sub_cert: CertificateDer<'static>,
    pub creditors_subnet: Subnet,
    pub debtors_subnet: Subnet,
    pub state: PeerState,
}

impl PeerData {
    /// `ACTIVE` exists and `DEACTIVATED` does not.
    pub fn is_active(&self) -> bool {
        self.state == PeerState::Active
    }

    /// `DEACTIVATED` exists.
    pub fn is_deactivated(&self) -> bool {
        self.state == PeerState::Deactivated
    }
}

/// Whether a node ID is one we may look up (lowercase hex, at most 64).
/// Anything else cannot name a peer directory safely.
pub fn is_valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
