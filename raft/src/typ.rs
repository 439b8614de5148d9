//! openraft's generic parameters, pinned once for the whole project.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Batch, BatchResult};

/// How a node is reached: its Raft listener and, when known, its client (HTTP) listener.
///
/// `client_addr` is empty for members that were bootstrapped from `cluster.members`,
/// which lists peer addresses only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub peer_addr: String,
    pub client_addr: String,
}

impl std::fmt::Display for PeerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.peer_addr)
    }
}

openraft::declare_raft_types!(
    /// The Raft type configuration of leasehold.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = u64,
        Node = PeerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, PeerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, PeerNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type LogState = openraft::storage::LogState<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, PeerNode>;
