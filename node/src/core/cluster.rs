//! The cluster as this node sees it (members, leader, replication progress) and
//! membership changes through the leader.

use std::collections::BTreeSet;

use leasehold_raft::typ::NodeId;
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use super::{unexpected, Core};
use crate::error::CoreError;
use crate::peer::{ForwardRequest, ForwardResponse, MembershipChange};

/// One member as this node sees the cluster.
#[derive(Debug, Clone)]
pub(crate) struct MemberView {
    pub id: NodeId,
    pub peer_addr: String,
    pub client_addr: String,
    pub voter: bool,
    /// The last log index known to be replicated to it (leader only; own last log index
    /// for this node).
    pub matched_index: Option<u64>,
    /// Leader only: does it keep up (within 64 entries of the leader's log)?
    pub reachable: Option<bool>,
}

/// This node's view of the cluster, read from openraft's metrics in one go.
#[derive(Debug, Clone)]
pub(crate) struct ClusterView {
    pub node_id: NodeId,
    pub leader_id: Option<NodeId>,
    pub leading: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberView>,
}

impl Core {
    /// This node's view of the cluster (members, leader, replication progress).
    pub(crate) fn cluster_view(&self) -> ClusterView {
        let m = self.raft.metrics().borrow_watched().clone();
        let leading = m.state == ServerState::Leader;
        let last_log_index = m.last_log_index.unwrap_or(0);
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.map_or(0, |l| l.index));
                let is_self = *id == self.node_id;
                MemberView {
                    id: *id,
                    peer_addr: node.peer_addr.clone(),
                    client_addr: node.client_addr.clone(),
                    voter: voters.contains(id),
                    reachable: leading
                        .then(|| is_self || matched.is_some_and(|i| i + 64 >= last_log_index)),
                    matched_index: if is_self { m.last_log_index } else { matched },
                }
            })
            .collect();
        ClusterView {
            node_id: self.node_id,
            leader_id: m.current_leader,
            leading,
            term: m.current_term,
            last_log_index,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
        }
    }

    /// Each member's reachability and replication lag (entries behind the commit index),
    /// as this node sees them: known on the leader only.
    pub(crate) async fn member_health(&self) -> Vec<(NodeId, Option<bool>, Option<u64>)> {
        let view = self.cluster_view();
        let commit = self.commit_index().await.unwrap_or(view.applied_index);
        view.members
            .iter()
            .map(|m| {
                let lag = match (view.leading, m.matched_index) {
                    (true, Some(matched)) => Some(commit.saturating_sub(matched)),
                    _ => None,
                };
                (m.id, m.reachable, lag)
            })
            .collect()
    }

    /// Change the voting members through the leader.
    pub(crate) async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<(), CoreError> {
        // Catching a learner up can take a while; allow more than one request deadline.
        let timeout = self.request_timeout * 5;
        match self
            .on_leader_within(ForwardRequest::ChangeMembership(change), timeout)
            .await?
        {
            ForwardResponse::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn apply_membership_change(
        &self,
        change: MembershipChange,
    ) -> Result<(), CoreError> {
        use openraft::ChangeMembers;
        let map_err = |e: openraft::error::RaftError<
            leasehold_raft::typ::TypeConfig,
            openraft::error::ClientWriteError<leasehold_raft::typ::TypeConfig>,
        >| {
            match e.forward_to_leader() {
                Some(f) => CoreError::NotLeader {
                    leader: f.leader_id,
                },
                None => CoreError::Unavailable(e.to_string()),
            }
        };
        match change {
            MembershipChange::Add {
                id,
                peer_addr,
                client_addr,
            } => {
                let node = leasehold_raft::typ::PeerNode {
                    peer_addr,
                    client_addr,
                };
                self.raft
                    .add_learner(id, node, true)
                    .await
                    .map_err(map_err)?;
                let voters = BTreeSet::from([id]);
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(voters), false)
                    .await
                    .map_err(map_err)?;
            }
            MembershipChange::Remove { id } => {
                let ids = BTreeSet::from([id]);
                let (is_member, is_voter) = {
                    let m = self.raft.metrics();
                    let m = m.borrow_watched();
                    let membership = m.membership_config.membership();
                    let is_member = membership.nodes().any(|(n, _)| *n == id);
                    let is_voter = membership.voter_ids().any(|v| v == id);
                    (is_member, is_voter)
                };
                if !is_member {
                    return Err(CoreError::NoSuchMember(id));
                }
                let change = if is_voter {
                    ChangeMembers::RemoveVoters(ids)
                } else {
                    ChangeMembers::RemoveNodes(ids)
                };
                self.raft
                    .change_membership(change, false)
                    .await
                    .map_err(map_err)?;
            }
        }
        Ok(())
    }

    /// The commit index as this node knows it.
    pub(crate) async fn commit_index(&self) -> Option<u64> {
        self.raft
            .with_raft_state(|st| st.local_committed().map(|l| l.index))
            .await
            .ok()
            .flatten()
    }
}
