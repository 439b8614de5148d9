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
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leasehold_config::Config;
use leasehold_raft::command::{CommandResult, LeaseId, Proposal};
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
use crate::peer::{ForwardRequest, ForwardResponse, Keep, PeerClient};
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

    /// Does this node still hold back its votes after its start (SPEC §2 rule 3)?
    pub(crate) fn holds_back_votes(&self) -> bool {
        Instant::now() < self.votes_from
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }
}

fn unexpected(response: ForwardResponse) -> CoreError {
    CoreError::Unavailable(format!("unexpected reply from the leader: {response:?}"))
}

mod cluster;
mod keep;
mod watchers;

use self::watchers::{sample_for_charts, watch_leader, watch_storage};
