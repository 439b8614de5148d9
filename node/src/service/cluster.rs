//! Cluster status, membership changes and metrics, from the core's cluster view.

use leasehold_api::error::ApiError;
use leasehold_api::validate;
use leasehold_api::wire::*;
use leasehold_raft::command::Kind;

use super::convert::core_error;
use super::NodeService;
use crate::peer::MembershipChange;

impl NodeService {
    pub(super) async fn cluster_status_impl(&self) -> Result<ClusterStatus, ApiError> {
        let view = self.core.cluster_view();
        let members = view
            .members
            .into_iter()
            .map(|m| MemberStatus {
                id: m.id,
                addr: m.peer_addr,
                client_addr: m.client_addr,
                voter: m.voter,
                reachable: m.reachable,
                matched_index: m.matched_index,
                incarnation: self.read(|s| s.incarnation(m.id)),
            })
            .collect();
        Ok(ClusterStatus {
            node_id: view.node_id,
            leader_id: view.leader_id,
            term: view.term,
            commit_index: self.core.commit_index().await.unwrap_or(view.applied_index),
            applied_index: view.applied_index,
            members,
            storage_fault: self.core.storage_fault().borrow().clone(),
        })
    }

    pub(super) async fn add_member_impl(
        &self,
        req: AddMemberRequest,
    ) -> Result<ClusterStatus, ApiError> {
        validate::add_member(&req)?;
        self.core
            .change_membership(MembershipChange::Add {
                id: req.id,
                peer_addr: req.peer_addr,
                client_addr: req.client_addr,
            })
            .await
            .map_err(core_error)?;
        self.cluster_status_impl().await
    }

    pub(super) async fn remove_member_impl(&self, id: u64) -> Result<ClusterStatus, ApiError> {
        self.core
            .change_membership(MembershipChange::Remove { id })
            .await
            .map_err(core_error)?;
        self.cluster_status_impl().await
    }

    /// A backup of the whole state: after a linearizable barrier (so it holds every write
    /// acknowledged before the request), a copy of the applied state (O(1): the state is
    /// persistent), encoded off the runtime.
    pub(super) async fn snapshot_impl(&self) -> Result<Vec<u8>, ApiError> {
        self.barrier(false).await?;
        let state = self.read(|s| s.clone());
        let node_id = self.core.node_id();
        let saved_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        tokio::task::spawn_blocking(move || {
            leasehold_raft::backup::write(&state, node_id, saved_at_ms)
        })
        .await
        .map_err(|e| ApiError::new(leasehold_api::ErrorCode::Internal, e.to_string()))
    }

    /// Prometheus text exposition of the node's gauges.
    pub(super) fn metrics_text_impl(&self) -> String {
        let view = self.core.cluster_view();
        let (leases, held, waiters, last_token) = self.read(|s| {
            let mut held = 0usize;
            let mut waiters = 0usize;
            for kind in [Kind::Lock, Kind::Name, Kind::Semaphore] {
                for (_, r) in s.held_after(kind, "", None) {
                    held += r.holders.len();
                    waiters += r.waiters.len();
                }
            }
            (s.lease_count(), held, waiters, s.last_token())
        });
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        };
        gauge("leasehold_leases", "live leases", leases as u64);
        gauge(
            "leasehold_holds",
            "held locks, names and semaphore slots",
            held as u64,
        );
        gauge(
            "leasehold_waiters",
            "queued waiters on held keys",
            waiters as u64,
        );
        gauge(
            "leasehold_last_token",
            "the last fencing token issued",
            last_token,
        );
        gauge("leasehold_raft_term", "current raft term", view.term);
        gauge(
            "leasehold_storage_failed",
            "1 if this node's Raft core stopped on a storage error (a full or failing disk)",
            u64::from(self.core.check_storage().is_err()),
        );
        gauge(
            "leasehold_raft_is_leader",
            "1 if this node leads",
            u64::from(view.leading),
        );
        gauge(
            "leasehold_raft_applied_index",
            "last applied log index",
            view.applied_index,
        );
        gauge(
            "leasehold_raft_last_log_index",
            "last log index",
            view.last_log_index,
        );
        let c = self.core.counters();
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            ));
        };
        counter(
            "leasehold_keepalives_batched_total",
            "keepalives this node sent to the leader in batches",
            load(&c.keepalives_batched),
        );
        counter(
            "leasehold_keepalive_batches_total",
            "keepalive batches this node sent to the leader",
            load(&c.keepalive_batches),
        );
        counter(
            "leasehold_writes_batched_total",
            "writes this node forwarded to the leader in batches",
            load(&c.writes_batched),
        );
        counter(
            "leasehold_write_batches_total",
            "write batches this node forwarded to the leader",
            load(&c.write_batches),
        );
        counter(
            "leasehold_confirm_rounds_total",
            "leadership-confirmation rounds this node ran as leader",
            load(&c.confirm_rounds),
        );
        out
    }
}
