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
        Term = u64,
        // openraft's default: a term may have several candidates, each with its own leader
        // id (term, node). 0.9 used the same ids, so the log and the vote encode as before.
        LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>,
        Vote = openraft::impls::Vote<openraft::impls::leader_id_adv::LeaderId<u64, u64>>,
        Entry = openraft::Entry<CommittedLeaderId, openraft::EntryPayload<Batch, u64, PeerNode>>,
        AsyncRuntime = openraft_rt_tokio::TokioRuntime,
);

pub type NodeId = u64;
/// The leader id an entry carries (term and node, as in 0.9).
pub type CommittedLeaderId = openraft::impls::leader_id_adv::LeaderId<u64, u64>;
pub type Raft = openraft::Raft<TypeConfig, crate::sm_store::StateMachineStore>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type EntryPayload = openraft::alias::EntryPayloadOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// Storage errors are plain I/O errors in openraft 0.10.
pub type StorageError = std::io::Error;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, PeerNode>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot's bytes: the versioned envelope of `sm_store`.
pub type SnapshotData = Cursor<Vec<u8>>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type LogState = openraft::storage::LogState<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
