//! Request forwarding: what a follower asks of the leader, and the bootstrap probe.
//!
//! A follower sends a [`ForwardRequest`] in a [`PeerRequest::Forward`]; the peer listener
//! serves it with `Core::serve_locally` (which answers `NotLeader` on a node that does not
//! lead) and replies with `Result<ForwardResponse, CoreError>`.

use std::time::Duration;

use tracing::Instrument;

use leasehold_raft::command::{Caller, CommandResult, Kind, LeaseId, Proposal, Token};
use leasehold_raft::typ::NodeId;
use serde::{Deserialize, Serialize};

use super::client::{PeerCallError, PeerClient};
use super::envelope::{PeerReply, PeerRequest};
use crate::error::CoreError;

/// Requests a follower forwards to the leader over the peer link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ForwardRequest {
    /// Writes gathered on one node while its earlier batches were in flight
    /// (`node::batcher`); the leader proposes each through its proposer.
    Propose(Vec<Proposal>),
    ReadIndex,
    /// Keepalives gathered on one node over a batching window: one leadership round on
    /// the leader serves them all (`node::keepalives`).
    Keepalive(Vec<Keep>),
    RemainingMs(Vec<LeaseId>),
    ChangeMembership(MembershipChange),
    /// Used at bootstrap: is the asked node part of an initialized cluster?
    Initialized,
    /// Used at the start of a member with an empty data directory: is `node` a member in
    /// the asked node's view, and which data-directory identity did it record? Answered
    /// from the asked node's own state (no leader needed).
    MemberRecord(NodeId),
    /// The leader's view of every member: reachability and replication lag (the status
    /// page of a follower shows them).
    MemberHealth,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ForwardResponse {
    /// One result per proposal of a [`ForwardRequest::Propose`], in order: the log index
    /// it was applied at and its result.
    Results(Vec<(u64, CommandResult)>),
    ReadIndex(u64),
    /// One result per [`Keep`] of a [`ForwardRequest::Keepalive`], in order: the lease
    /// kept alive and its TTL, or why not.
    Kept(Vec<Result<(LeaseId, u64), CoreError>>),
    RemainingMs(Vec<Option<u64>>),
    Initialized(bool),
    MemberRecord {
        member: bool,
        incarnation: Option<u64>,
    },
    /// Per member: id, reachable, entries behind the leader's commit index.
    MemberHealth(Vec<(NodeId, Option<bool>, Option<u64>)>),
    Done,
}

/// One keepalive; `caller`, when set, is the principal the receiving node authenticated,
/// and must be allowed to use the lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Keep {
    /// Keep a lease alive.
    Lease {
        lease_id: LeaseId,
        caller: Option<Caller>,
    },
    /// Keep alive the lease of a current hold (`not_owner` if it is not current).
    Hold {
        kind: Kind,
        key: String,
        owner: String,
        token: Token,
        caller: Option<Caller>,
    },
}

/// An admin change of the voting members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum MembershipChange {
    /// Add a learner, wait for it to catch up, then make it a voter.
    Add {
        id: NodeId,
        peer_addr: String,
        client_addr: String,
    },
    /// Remove a member (voter or learner).
    Remove { id: NodeId },
}

impl PeerClient {
    /// Forward `request` to the node at `peer_addr` (the leader, as this node believes).
    pub(crate) async fn forward(
        &self,
        peer_addr: &str,
        request: ForwardRequest,
        timeout: Duration,
    ) -> Result<Result<ForwardResponse, CoreError>, PeerCallError> {
        let span = tracing::debug_span!("peer_call", peer = %peer_addr, rpc = "forward");
        let reply = async {
            let stream = self.stream(peer_addr).await?;
            stream.call(PeerRequest::Forward(request), timeout).await
        }
        .instrument(span)
        .await?;
        match reply {
            PeerReply::Forward(result) => Ok(result),
            _ => Err(PeerCallError::Mismatch {
                addr: peer_addr.to_string(),
                got: "forward",
            }),
        }
    }

    /// The bootstrap probe: does the node at `peer_addr` belong to an initialized cluster?
    /// `false` when it says no or cannot be asked.
    pub(crate) async fn is_initialized(&self, peer_addr: &str, timeout: Duration) -> bool {
        matches!(
            self.forward(peer_addr, ForwardRequest::Initialized, timeout)
                .await,
            Ok(Ok(ForwardResponse::Initialized(true)))
        )
    }
}
