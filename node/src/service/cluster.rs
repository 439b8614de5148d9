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
        let commit_index = self.core.commit_index().await.unwrap_or(view.applied_index);
        let leading = view.leading;
        let members = view
            .members
            .into_iter()
            .map(|m| MemberStatus {
                lag: match (leading, m.matched_index) {
                    (true, Some(matched)) => Some(commit_index.saturating_sub(matched)),
                    _ => None,
                },
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
            commit_index,
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

    /// What the status page shows. A blocking query: with `index`, wait (up to `wait_ms`,
    /// at most `limits.max_wait_ms`) until this node has applied past it. Held resources
    /// come from this node's state after a linearizable barrier, through the same list
    /// and read paths as their own routes (so a principal sees only its prefixes).
    pub(super) async fn status_view_impl(
        &self,
        params: StatusParams,
    ) -> Result<StatusView, ApiError> {
        validate::status(&params, &self.limits)?;
        let wait_ms = params.wait_ms.unwrap_or(0);
        if let Some(index) = params.index.filter(|_| wait_ms > 0) {
            let _long_poll = self.core.overload().long_poll()?.parked();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
            let mut applied = self.core.subscribe_applied();
            while *applied.borrow_and_update() <= index {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    changed = applied.changed() => if changed.is_err() { break },
                }
            }
        }
        self.barrier(false).await?;
        let index = self.core.shared().applied_index();
        let page = |prefix: Option<String>| ListParams {
            prefix,
            limit: Some(100),
            after: None,
        };
        let stale = ReadParams {
            stale: Some(true),
            ..Default::default()
        };
        let mut locks = Vec::new();
        for l in self.list_locks_impl(page(None)).await?.locks {
            if let Ok(state) = self.get_lock_impl(&l.key, stale.clone()).await {
                locks.push(state);
            }
        }
        let mut names = Vec::new();
        for n in self.list_names_impl(page(None)).await?.names {
            if let Ok(state) = self.get_name_impl(&n.name, stale.clone()).await {
                names.push(state);
            }
        }
        let semaphores = self.list_semaphores_impl(page(None)).await?.semaphores;
        let expired = self
            .expired_impl(ExpiredParams { limit: Some(20) })
            .await?
            .expired;
        let series = self
            .core
            .metrics()
            .series()
            .into_iter()
            .map(|s| StatusSample {
                at_ms: s.at_ms,
                grants_per_s: s.grants_per_s,
                handoffs_per_s: s.handoffs_per_s,
                p99_ms: s.p99_ms,
            })
            .collect();
        let mut cluster = self.cluster_status_impl().await?;
        if cluster.leader_id.is_some() && cluster.leader_id != Some(cluster.node_id) {
            // Reachability and lag are the leader's to know: ask it (briefly).
            let asked = self
                .core
                .on_leader_within(
                    crate::peer::ForwardRequest::MemberHealth,
                    std::time::Duration::from_millis(500),
                )
                .await;
            if let Ok(crate::peer::ForwardResponse::MemberHealth(health)) = asked {
                for m in &mut cluster.members {
                    if let Some((_, reachable, lag)) = health.iter().find(|h| h.0 == m.id) {
                        m.reachable = *reachable;
                        m.lag = *lag;
                    }
                }
            }
        }
        Ok(StatusView {
            index,
            cluster,
            locks,
            names,
            semaphores,
            expired,
            series,
        })
    }

    /// The Prometheus text exposition (`node::metrics`), with what is read at scrape time.
    pub(super) async fn metrics_text_impl(&self) -> String {
        let view = self.core.cluster_view();
        let mut snap = crate::metrics::Snapshot::default();
        self.read(|s| {
            for (i, kind) in [Kind::Lock, Kind::Name, Kind::Semaphore]
                .into_iter()
                .enumerate()
            {
                let (mut held, mut waiters) = (0u64, 0u64);
                for (_, r) in s.held_after(kind, "", None) {
                    held += r.holders.len() as u64;
                    waiters += r.waiters.len() as u64;
                }
                let counts = s.counts();
                snap.holds[i] = (kind.as_str(), held, waiters);
                snap.grants[i] = (kind.as_str(), counts.grants[i], counts.handoffs[i]);
            }
            snap.leases = s.lease_count() as u64;
            snap.last_token = s.last_token();
            snap.applied_entries = s.counts().entries;
            snap.expired = s.counts().expired;
        });
        snap.has_leader = view.leader_id.is_some();
        snap.is_leader = view.leading;
        snap.term = view.term;
        snap.commit_index = self.core.commit_index().await.unwrap_or(view.applied_index);
        snap.applied_index = view.applied_index;
        snap.last_log_index = view.last_log_index;
        snap.voters = view.members.iter().filter(|m| m.voter).count() as u64;
        snap.voters_reachable = view.leading.then(|| {
            view.members
                .iter()
                .filter(|m| m.voter && m.reachable == Some(true))
                .count() as u64
        });
        snap.storage_failed = self.core.check_storage().is_err();
        let c = self.core.counters();
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        snap.keepalives_batched = load(&c.keepalives_batched);
        snap.keepalive_batches = load(&c.keepalive_batches);
        snap.writes_batched = load(&c.writes_batched);
        snap.write_batches = load(&c.write_batches);
        snap.confirm_rounds = load(&c.confirm_rounds);
        snap.confirm_lease_hits = load(&c.confirm_lease_hits);
        snap.peer_streams_opened = self.core.peers().streams_opened();
        self.core.metrics().render(&snap)
    }
}
