//! Errors of the node's core, typed so callers can act on them (forward, retry, report).
//! They cross the peer link when a follower forwards a request, so they are serializable.

use leasehold_raft::command::SmError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CoreError {
    /// This node is not the leader; `leader` is the one it knows of, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// No leader, or the leader cannot reach a quorum.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request's deadline passed; a write may or may not have been applied.
    #[error("the request's deadline passed")]
    Timeout,
    /// The state machine refused the command.
    #[error("refused: {0:?}")]
    Refused(SmError),
    /// A membership change named a node that is not a member.
    #[error("node {0} is not a member of the cluster")]
    NoSuchMember(u64),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// This node's Raft core stopped on a storage error (a full or failing disk); the
    /// message names the data directory and the error.
    #[error("{0}")]
    StorageFailed(String),
}
