//! The node's core: routes each write, read barrier and keepalive to the leader.
//!
//! On the leader a write goes to the proposer, a keepalive to the confirmer and the lease
//! actor. On a follower the same request is forwarded to the leader over the peer layer
//! (`peer::forward`), and a linearizable read asks the leader for a read index and waits
//! until the local state machine has applied it (a follower read), so reads are served
//! locally.
//!
//! `Core` is a façade: its parts are private, and callers (the service, the node, the
//! peer listener) use its methods.

use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leasehold_config::Config;
use leasehold_raft::command::{Caller, CommandResult, Kind, LeaseId, Proposal, Token};
use leasehold_raft::sm_store::SharedState;
use leasehold_raft::state::LeaseState;
use leasehold_raft::typ::{NodeId, Raft};
use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, Instrument};

use crate::batcher::{Batcher, Pace, FORWARD_IN_FLIGHT};
use crate::clock::{Clock, ClusterClock};
use crate::confirmer::{ConfirmerHandle, ConfirmerSettings, LeaderLease};
use crate::error::CoreError;
use crate::lease_actor::LeaseHandle;
use crate::metrics::Metrics;
use crate::peer::{ForwardRequest, ForwardResponse, Keep, MembershipChange, PeerClient};
use crate::proposer::{ProposerHandle, ProposerSettings};

/// Longest pause between retries while no leader is known (or it could not be reached).
const MAX_BACKOFF: Duration = Duration::from_millis(100);

pub(crate) struct Core {
    node_id: NodeId,
    raft: Raft,
    shared: Arc<SharedState>,
    proposer: ProposerHandle,
    confirmer: ConfirmerHandle,
    leases: LeaseHandle,
    counters: BatchCounters,
    metrics: Arc<Metrics>,
    /// What this node admits and sheds under load (`[limits]` caps).
    overload: Arc<crate::overload::Overload>,
    /// Gathers this node's keepalives into batches for the leader, once per window.
    keepalives: Batcher<Keep, (LeaseId, u64)>,
    /// Gathers this node's writes into batches for the leader while others are in flight.
    writes: Batcher<Proposal, (u64, CommandResult)>,
    peers: PeerClient,
    /// The deadline of one proposal or read barrier.
    request_timeout: Duration,
    /// How long a request waits for a leader to appear before answering 503.
    leader_wait: Duration,
    request_ids: RequestIds,
    /// Every task the core (or the service on its behalf) spawns; `Node::shutdown` waits.
    tracker: TaskTracker,
    /// Cancelled when the node shuts down.
    cancel: CancellationToken,
    /// Set (for good) when the Raft core stopped on a storage error: what failed, where.
    storage_fault: watch::Receiver<Option<String>>,
    /// Until then (its start plus `election_timeout_max`) this node grants no vote: it
    /// does not remember when it last acknowledged a leader, whose lease may still run
    /// (SPEC §2 rule 3).
    votes_from: Instant,
}

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

/// Counters of how this node batches what it asks of the leader (`/metrics`).
#[derive(Debug, Default)]
pub(crate) struct BatchCounters {
    /// Keepalives this node's batcher sent, and the batches they went in.
    pub keepalives_batched: AtomicU64,
    pub keepalive_batches: AtomicU64,
    /// Writes this node's batcher forwarded, and the batches they went in.
    pub writes_batched: AtomicU64,
    pub write_batches: AtomicU64,
    /// Leadership-confirmation rounds this node ran as leader.
    pub confirm_rounds: Arc<AtomicU64>,
    /// Confirmations answered on the leader lease, without a round.
    pub confirm_lease_hits: Arc<AtomicU64>,
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

/// Node-unique request ids for proposals that came without one, so internal retries
/// (after a leader change) are deduplicated by the state machine.
struct RequestIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    fn new(node_id: NodeId) -> Self {
        // The boot time tells this run's ids from a previous run's.
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        RequestIds {
            prefix: format!("n{node_id}-{boot:x}-"),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}{n}", self.prefix)
    }
}

/// What a [`Core`] is built from, besides the config and its tasks.
pub(crate) struct CoreParts {
    pub raft: Raft,
    pub shared: Arc<SharedState>,
    pub peers: PeerClient,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
}

impl Core {
    /// Spawn the actors (proposer, confirmer, lease actor, keepalive batcher) on `tracker`
    /// and build the core.
    pub(crate) fn start(
        config: &Config,
        parts: CoreParts,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Arc<Core> {
        let CoreParts {
            raft,
            shared,
            peers,
            clock,
            metrics,
        } = parts;
        let clock = Arc::new(ClusterClock::new(clock));
        if let Some(dir) = &config.data_dir {
            if let Some((stamp, reading)) = crate::clock::persisted(dir) {
                clock.resume(stamp, reading);
            }
            crate::clock::persist(clock.clone(), dir.clone(), tracker, cancel);
        }
        let election_timeout_max = Duration::from_millis(config.raft.election_timeout_max_ms);
        let storage_fault = watch_storage(&raft, config, tracker, cancel);
        watch_leader(&raft, metrics.clone(), tracker, cancel);
        sample_for_charts(shared.clone(), metrics.clone(), tracker, cancel);
        let proposer = ProposerHandle::spawn(
            raft.clone(),
            ProposerSettings {
                max_batch: config.raft.max_batch,
                proposal_timeout: Duration::from_millis(config.raft.proposal_timeout_ms),
                quorum_stale_after: election_timeout_max,
                clock: clock.clone(),
                shared: shared.clone(),
                metrics: metrics.clone(),
            },
            tracker,
            cancel.clone(),
        );
        let window = Duration::from_millis(config.raft.keepalive_window_ms);
        let counters = BatchCounters::default();
        let confirmer = ConfirmerHandle::spawn(
            raft.clone(),
            ConfirmerSettings {
                round_timeout: election_timeout_max * 2,
                window,
                lease: LeaderLease::new(
                    Duration::from_millis(config.raft.election_timeout_min_ms),
                    election_timeout_max,
                    Instant::now(),
                    config.raft.leadership_proof == leasehold_config::LeadershipProof::Lease,
                ),
                rounds: counters.confirm_rounds.clone(),
                lease_hits: counters.confirm_lease_hits.clone(),
            },
            tracker,
            cancel.clone(),
        );
        let leases = LeaseHandle::spawn(
            raft.clone(),
            shared.clone(),
            proposer.clone(),
            clock,
            tracker,
            cancel.clone(),
        );
        Arc::new_cyclic(|core| Core {
            node_id: config.node_id,
            votes_from: Instant::now() + election_timeout_max,
            raft,
            shared,
            proposer,
            confirmer,
            leases,
            counters,
            overload: crate::overload::Overload::new(&config.limits, metrics.clone()),
            metrics,
            keepalives: Batcher::spawn(
                core.clone(),
                if window.is_zero() {
                    Pace::InFlight(1)
                } else {
                    Pace::Window(window)
                },
                |core, keeps| {
                    Box::pin(async move {
                        let c = &core.counters;
                        c.keepalive_batches.fetch_add(1, Ordering::Relaxed);
                        c.keepalives_batched
                            .fetch_add(keeps.len() as u64, Ordering::Relaxed);
                        core.keep_batch(keeps).await
                    })
                },
                tracker,
                cancel.clone(),
            ),
            writes: Batcher::spawn(
                core.clone(),
                Pace::InFlight(FORWARD_IN_FLIGHT),
                |core, proposals| {
                    Box::pin(async move {
                        let c = &core.counters;
                        c.write_batches.fetch_add(1, Ordering::Relaxed);
                        c.writes_batched
                            .fetch_add(proposals.len() as u64, Ordering::Relaxed);
                        core.write_batch(proposals).await
                    })
                },
                tracker,
                cancel.clone(),
            ),
            peers,
            request_timeout: config.limits.request_timeout(),
            leader_wait: election_timeout_max * 3,
            request_ids: RequestIds::new(config.node_id),
            tracker: tracker.clone(),
            cancel: cancel.clone(),
            storage_fault,
        })
    }

    /// What stopped this node's Raft core, if a storage error did (see `watch_storage`).
    pub(crate) fn storage_fault(&self) -> watch::Receiver<Option<String>> {
        self.storage_fault.clone()
    }

    /// Refuse at once while the Raft core is stopped on a storage error: nothing this node
    /// says about the cluster can be current, and nothing it is asked to do can commit.
    pub(crate) fn check_storage(&self) -> Result<(), CoreError> {
        match &*self.storage_fault.borrow() {
            Some(fault) => Err(CoreError::StorageFailed(fault.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.raft
    }

    pub(crate) fn peers(&self) -> &PeerClient {
        &self.peers
    }

    pub(crate) fn shared(&self) -> &Arc<SharedState> {
        &self.shared
    }

    /// The deadline of one proposal or read barrier.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Read the local state machine (a short closure; never across an await).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&LeaseState) -> R) -> R {
        self.shared.read(f)
    }

    /// The local state machine's applied index, as a watch.
    pub(crate) fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.shared.subscribe_applied()
    }

    /// Run `task` in the background, in the caller's span, tracked so that
    /// `Node::shutdown` waits for it. Shutdown drops it where it is (no write can
    /// complete once Raft has stopped).
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(
            async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = task => {}
                }
            }
            .in_current_span(),
        );
    }

    /// How this node has batched what it asked of the leader.
    pub(crate) fn counters(&self) -> &BatchCounters {
        &self.counters
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub(crate) fn overload(&self) -> &Arc<crate::overload::Overload> {
        &self.overload
    }

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

    /// The leader as this node sees it: `Ok(None)` means "this node".
    fn leader_route(&self) -> Result<Option<(NodeId, String)>, Option<NodeId>> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        if m.state == ServerState::Leader {
            return Ok(None);
        }
        let Some(leader) = m.current_leader else {
            return Err(None);
        };
        if leader == self.node_id {
            // Our own leadership is not established yet (or just ended).
            return Err(Some(leader));
        }
        match m.membership_config.membership().get_node(&leader) {
            Some(node) => Ok(Some((leader, node.peer_addr.clone()))),
            None => Err(Some(leader)),
        }
    }

    /// Run `req` on the leader: locally if this node leads, else over the peer link.
    pub(crate) async fn on_leader(
        &self,
        req: ForwardRequest,
    ) -> Result<ForwardResponse, CoreError> {
        self.on_leader_within(req, self.request_timeout).await
    }

    pub(crate) async fn on_leader_within(
        &self,
        req: ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardResponse, CoreError> {
        self.check_storage()?;
        let deadline = Instant::now() + timeout;
        // Ride out a failover, but do not queue requests behind a lost quorum (rule 7).
        let retry_until = Instant::now() + self.leader_wait.min(timeout);
        let mut hops: u32 = 0;
        let mut last_error = CoreError::Unavailable("no leader is known".into());
        let mut metrics = self.raft.metrics();
        loop {
            if Instant::now() >= deadline {
                return Err(last_error);
            }
            let attempt = match self.leader_route() {
                Ok(None) => self.serve_locally(req.clone()).await,
                Ok(Some((leader, peer_addr))) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match self.peers.forward(&peer_addr, req.clone(), remaining).await {
                        Ok(result) => result,
                        Err(e) => {
                            debug!(leader, error = %e, "forwarding to the leader failed");
                            Err(CoreError::Unavailable(format!(
                                "leader {leader} at {peer_addr} unreachable: {e}"
                            )))
                        }
                    }
                }
                Err(_) => Err(CoreError::Unavailable("no leader is known".into())),
            };
            // Retrying is safe: proposals carry a request_id (see `write`), so a retry of
            // one that did commit returns the original result.
            // A leader whose storage failed (its core stopped) is as good as gone: wait
            // for the others to elect a new one.
            let retry = matches!(
                attempt,
                Err(CoreError::NotLeader { .. })
                    | Err(CoreError::Unavailable(_))
                    | Err(CoreError::StorageFailed(_))
            );
            if let Err(CoreError::StorageFailed(_)) = attempt {
                self.check_storage()?;
            }
            match attempt {
                Err(e) if retry && Instant::now() < retry_until => {
                    hops += 1;
                    last_error = e;
                    // Wait for the view of the leader to change, or a short backoff.
                    let pause = retry_until
                        .saturating_duration_since(Instant::now())
                        .min(MAX_BACKOFF.min(Duration::from_millis(10) * hops));
                    let _ = tokio::time::timeout(pause, metrics.changed()).await;
                }
                Err(e) if retry => return Err(e),
                other => return other,
            }
        }
    }

    /// Serve a forwarded (or local) request on this node, which believes it leads.
    pub(crate) async fn serve_locally(
        &self,
        req: ForwardRequest,
    ) -> Result<ForwardResponse, CoreError> {
        self.check_storage()?;
        match req {
            ForwardRequest::Propose(proposals) => {
                // Each goes to the proposer, which gathers them into as few entries as it
                // can. A failure that a retry may cure (no longer leader, no quorum) fails
                // the batch, and the sender retries it whole: writes that did commit are
                // answered from the state machine's request-id table, not applied twice.
                let results = futures::future::join_all(
                    proposals.into_iter().map(|p| self.proposer.propose(p)),
                )
                .await;
                results
                    .into_iter()
                    .collect::<Result<Vec<_>, CoreError>>()
                    .map(ForwardResponse::Results)
            }
            ForwardRequest::ReadIndex => {
                let confirmed = self.confirmer.confirm().await?;
                Ok(ForwardResponse::ReadIndex(confirmed.read_index))
            }
            ForwardRequest::Keepalive(keeps) => {
                // One round proves leadership for every keepalive in the batch: each was
                // sent before the batch left its node, so before the round began (rule 3).
                let confirmed = self.confirmer.confirm().await?;
                let kept = futures::future::join_all(
                    keeps
                        .into_iter()
                        .map(|keep| self.keep_locally(keep, confirmed.term)),
                )
                .await;
                Ok(ForwardResponse::Kept(kept))
            }
            ForwardRequest::RemainingMs(lease_ids) => Ok(ForwardResponse::RemainingMs(
                self.leases.remaining_ms(lease_ids).await,
            )),
            ForwardRequest::ChangeMembership(change) => {
                self.apply_membership_change(change).await?;
                Ok(ForwardResponse::Done)
            }
            ForwardRequest::Initialized => Ok(ForwardResponse::Initialized(
                self.raft.is_initialized().await.unwrap_or(false),
            )),
            ForwardRequest::MemberHealth => {
                Ok(ForwardResponse::MemberHealth(self.member_health().await))
            }
            ForwardRequest::MemberRecord(node) => {
                let member = self
                    .raft
                    .metrics()
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .get_node(&node)
                    .is_some();
                let incarnation = self.read(|s| s.incarnation(node));
                Ok(ForwardResponse::MemberRecord {
                    member,
                    incarnation,
                })
            }
        }
    }

    /// Propose one command on the leader; return the log index it was applied at and its
    /// result.
    pub(crate) async fn write(
        &self,
        mut proposal: Proposal,
    ) -> Result<(u64, CommandResult), CoreError> {
        self.check_storage()?;
        if proposal.request_id.is_none() {
            proposal.request_id = Some(self.request_ids.next());
        }
        if self.is_leader() {
            // The proposer batches the leader's own writes; a hop through the batcher
            // would only add a task switch.
            let mut results = self.write_batch(vec![proposal]).await?;
            return results
                .pop()
                .unwrap_or_else(|| Err(unexpected(ForwardResponse::Done)));
        }
        self.writes.submit(proposal).await
    }

    /// Send one batch of writes to the leader (the write batcher calls this).
    async fn write_batch(
        &self,
        proposals: Vec<Proposal>,
    ) -> Result<Vec<Result<(u64, CommandResult), CoreError>>, CoreError> {
        match self.on_leader(ForwardRequest::Propose(proposals)).await? {
            ForwardResponse::Results(results) => Ok(results.into_iter().map(Ok).collect()),
            other => Err(unexpected(other)),
        }
    }

    /// Wait until this node's state machine reflects everything the leader had committed
    /// when this call began (a linearizable read barrier).
    pub(crate) async fn read_barrier(&self) -> Result<(), CoreError> {
        let started = Instant::now();
        let index = match self.on_leader(ForwardRequest::ReadIndex).await? {
            ForwardResponse::ReadIndex(index) => index,
            other => return Err(unexpected(other)),
        };
        let remaining = self.request_timeout.saturating_sub(started.elapsed());
        self.wait_applied(index, remaining).await
    }

    /// Wait until the local state machine has applied `index`.
    pub(crate) async fn wait_applied(
        &self,
        index: u64,
        timeout: Duration,
    ) -> Result<(), CoreError> {
        self.check_storage()?;
        let mut applied = self.shared.subscribe_applied();
        let mut fault = self.storage_fault.clone();
        // A core stopped by a storage error never applies again: say so, do not time out.
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, applied.wait_for(|applied| *applied >= index)) => r,
            // Resolves with the fault, or at once if the watch ended (the node shuts down).
            _ = fault.wait_for(Option::is_some) => {
                return Err(match self.check_storage() {
                    Err(fault) => fault,
                    Ok(()) => CoreError::ShuttingDown,
                });
            }
        };
        match result {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(CoreError::ShuttingDown),
            Err(_) => Err(CoreError::Timeout),
        }
    }

    /// Keep a lease alive on the leader; `caller`, when set, must be allowed to use it.
    pub(crate) async fn keepalive_lease(
        &self,
        lease_id: LeaseId,
        caller: Option<Caller>,
    ) -> Result<u64, CoreError> {
        let (_, ttl_ms) = self.keep(Keep::Lease { lease_id, caller }).await?;
        Ok(ttl_ms)
    }

    /// Keep the lease of a current hold alive; `not_owner` if it is not current.
    pub(crate) async fn keepalive_hold(
        &self,
        kind: Kind,
        key: &str,
        owner: &str,
        token: Token,
        caller: Option<Caller>,
    ) -> Result<(LeaseId, u64), CoreError> {
        self.keep(Keep::Hold {
            kind,
            key: key.to_string(),
            owner: owner.to_string(),
            token,
            caller,
        })
        .await
    }

    /// One keepalive: on the leader straight to the (windowed) confirmer, elsewhere with
    /// the next batch.
    async fn keep(&self, keep: Keep) -> Result<(LeaseId, u64), CoreError> {
        self.check_storage()?;
        if self.is_leader() {
            let mut kept = self.keep_batch(vec![keep]).await?;
            return kept
                .pop()
                .unwrap_or_else(|| Err(unexpected(ForwardResponse::Done)));
        }
        self.keepalives.submit(keep).await
    }

    /// One keepalive on the leader, whose leadership in `term` was confirmed after the
    /// keepalive was sent.
    async fn keep_locally(&self, keep: Keep, term: u64) -> Result<(LeaseId, u64), CoreError> {
        let lease_id = match keep {
            Keep::Lease { lease_id, caller } => {
                if let Some(caller) = &caller {
                    self.shared
                        .read(|s| s.lease_access(lease_id, caller))
                        .map_err(CoreError::Refused)?;
                }
                lease_id
            }
            Keep::Hold {
                kind,
                key,
                owner,
                token,
                caller,
            } => self
                .shared
                .read(|s| {
                    let Some(hold) = s.find_hold(kind, &key, &owner, token) else {
                        // Not a holder: say why (force-released, or simply gone).
                        return Err(s.not_owner(&(kind, key.clone()), token));
                    };
                    match &caller {
                        Some(caller) => s.lease_access(hold.lease_id, caller),
                        None => Ok(()),
                    }
                    .map(|()| hold.lease_id)
                })
                .map_err(CoreError::Refused)?,
        };
        let ttl_ms = self.leases.refresh(lease_id, term).await?;
        Ok((lease_id, ttl_ms))
    }

    /// Send one batch of keepalives to the leader (the keepalive batcher calls this).
    async fn keep_batch(
        &self,
        keeps: Vec<Keep>,
    ) -> Result<Vec<Result<(LeaseId, u64), CoreError>>, CoreError> {
        let n = keeps.len();
        match self.on_leader(ForwardRequest::Keepalive(keeps)).await? {
            ForwardResponse::Kept(kept) if kept.len() == n => Ok(kept),
            other => Err(unexpected(other)),
        }
    }

    /// Time left on each lease as the leader tracks it (`None` where unknown).
    pub(crate) async fn remaining_ms(&self, lease_ids: Vec<LeaseId>) -> Vec<Option<u64>> {
        if lease_ids.is_empty() {
            return Vec::new();
        }
        let n = lease_ids.len();
        let short = self.request_timeout.min(Duration::from_secs(1));
        match self
            .on_leader_within(ForwardRequest::RemainingMs(lease_ids), short)
            .await
        {
            Ok(ForwardResponse::RemainingMs(v)) if v.len() == n => v,
            _ => vec![None; n],
        }
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

    async fn apply_membership_change(&self, change: MembershipChange) -> Result<(), CoreError> {
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

    /// Does this node still hold back its votes after its start (SPEC §2 rule 3)?
    pub(crate) fn holds_back_votes(&self) -> bool {
        Instant::now() < self.votes_from
    }

    /// The commit index as this node knows it.
    pub(crate) async fn commit_index(&self) -> Option<u64> {
        self.raft
            .with_raft_state(|st| st.local_committed().map(|l| l.index))
            .await
            .ok()
            .flatten()
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }
}

fn unexpected(response: ForwardResponse) -> CoreError {
    CoreError::Unavailable(format!("unexpected reply from the leader: {response:?}"))
}

/// Every [`SAMPLE_EVERY`](crate::metrics::SAMPLE_EVERY), a sample for the status page's
/// charts: grant and handoff rates as this node applied them, and its write p99.
fn sample_for_charts(
    shared: Arc<SharedState>,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let cancel = cancel.clone();
    tracker.spawn(
        async move {
            let mut every = tokio::time::interval(crate::metrics::SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = every.tick() => {}
                }
                let counts = shared.read(|s| s.counts());
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                metrics.sample(
                    now_ms,
                    counts.grants.iter().sum(),
                    counts.handoffs.iter().sum(),
                );
            }
        }
        .in_current_span(),
    );
}

/// Count the leader changes this node sees (`leasehold_raft_leader_changes_seen_total`,
/// as etcd's `etcd_server_leader_changes_seen_total`): each time the known leader becomes
/// another node. Losing the leader (none known) is not a change; the next one is.
fn watch_leader(
    raft: &Raft,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let mut watch = raft.metrics();
    let cancel = cancel.clone();
    tracker.spawn(
        async move {
            let mut last = None;
            loop {
                let leader = watch.borrow_and_update().current_leader;
                if let Some(leader) = leader {
                    if last.is_some_and(|l| l != leader) {
                        metrics.leader_changes.inc();
                    }
                    last = Some(leader);
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    changed = watch.changed() => if changed.is_err() { return },
                }
            }
        }
        .in_current_span(),
    );
}

/// Watch openraft's running state. openraft stops its core at the first storage error
/// (a full disk: ENOSPC on an append, a flush or a read), so the node then takes no part
/// in the cluster: it neither votes nor acknowledges appends, and a leader stops sending
/// heartbeats, so the others elect a new one. From then on every request that needs
/// Raft answers 503 naming the disk, `/readyz` says not ready, and the node logs the
/// fault once. `Node::storage_fault` lets the process that runs the node restart it
/// once the disk is writable again (`leasehold serve` does, see `cli`).
fn watch_storage(
    raft: &Raft,
    config: &Config,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    let mut metrics = raft.metrics();
    let cancel = cancel.clone();
    let data_dir = match &config.data_dir {
        Some(dir) => format!("data directory {}", dir.display()),
        None => "memory".to_string(),
    };
    tracker.spawn(
        async move {
            loop {
                let fault = match &metrics.borrow_and_update().running_state {
                    Ok(()) => None,
                    // Stopped by our own shutdown: not a fault.
                    Err(openraft::error::Fatal::Stopped) if cancel.is_cancelled() => None,
                    Err(openraft::error::Fatal::Stopped) => Some(format!(
                        "this node's Raft core stopped unexpectedly ({data_dir}); it takes no \
                         part in the cluster until it is restarted"
                    )),
                    Err(openraft::error::Fatal::StorageError(e)) => Some(format!(
                        "this node's storage failed ({data_dir}: {e}); it takes no part in the \
                         cluster until it can write there again"
                    )),
                    Err(openraft::error::Fatal::Panicked) => Some(format!(
                        "this node's Raft core stopped ({data_dir}); it takes no part in the \
                         cluster until it is restarted"
                    )),
                };
                if let Some(fault) = fault {
                    tracing::error!(fault = %fault, "storage fault: this node left the cluster's quorum");
                    let _ = tx.send(Some(fault));
                    return;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    changed = metrics.changed() => if changed.is_err() {
                        if cancel.is_cancelled() {
                            return;
                        }
                        // The core's task ended without publishing why: it panicked
                        // (openraft publishes `running_state` only when its main loop
                        // returns; a panic unwinds past that and drops the sender).
                        let fault = format!(
                            "this node's Raft core ended unexpectedly, most likely a panic \
                             ({data_dir}); it takes no part in the cluster until it is restarted"
                        );
                        tracing::error!(fault = %fault, "raft core lost: this node left the cluster's quorum");
                        let _ = tx.send(Some(fault));
                        return;
                    },
                }
            }
        }
        .in_current_span(),
    );
    rx
}
