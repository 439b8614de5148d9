//! Cluster membership: adding a member, and the cluster's status.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// The new member's node id (1 to 2^53-1, not a member's already).
    pub id: u64,
    /// Where the members reach its peer port: `ip:port` (an IPv6 address in brackets),
    /// as Rust's `SocketAddr` parses it. (JSON Schema's patterns cannot state that
    /// exactly; the server refuses anything else with 400 naming the field.)
    pub peer_addr: String,
    /// Its HTTP API address, `ip:port` like `peer_addr`; empty or absent: unknown.
    #[serde(default)]
    pub client_addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct MemberStatus {
    pub id: u64,
    /// The member's peer (Raft) address.
    pub addr: String,
    /// The member's HTTP address, where known.
    #[serde(default)]
    pub client_addr: String,
    pub voter: bool,
    /// As the leader sees it; `None` when this node is not the leader.
    #[serde(default)]
    pub reachable: Option<bool>,
    #[serde(default)]
    pub matched_index: Option<u64>,
    /// Entries this member's log is behind the leader's commit index (known on the
    /// leader; `GET /v1/status` asks the leader for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// The identity of the member's data directory, as it recorded it once caught up
    /// (absent for in-memory members, and until then). A member whose directory was
    /// wiped is refused at start while this is set; `--rejoin` replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberStatus>,
    /// Set when this node's Raft core stopped on a storage error (a full or failing
    /// disk): what failed and where. The rest of this status is then frozen at the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_fault: Option<String>,
}
