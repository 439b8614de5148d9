//! The lease actor: lease deadlines on the leader (SPEC §2 rules 2–4).
//!
//! - Deadlines live only here, on the leader, on the monotonic clock. Followers keep none.
//! - When a deadline passes, the actor proposes `Expire { lease_id, term }` through Raft;
//!   only the applied command releases anything, and only from an entry of that term (a
//!   proposal that reaches the log after this node lost and won back leadership is stale
//!   and changes nothing: the new term re-armed the lease). A lease whose expiry is in
//!   flight answers `lease_not_found` to keepalives, never success. Answers to expiries
//!   of an earlier term never touch this term's deadlines.
//! - A keepalive refreshes the deadline here without writing the log, after the caller has
//!   confirmed leadership with a quorum (see `confirmer`), in the confirmed term only.
//! - When this node becomes leader, it first catches up with everything committed, then
//!   gives every live lease a full TTL from that moment, before it expires anything.
//! - Lock-delay: when a delay that holds back waiters ends, the actor proposes `Promote`.

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use leasehold_raft::command::{Command, CommandResult, Kind, LeaseId, Proposal, SmError};
use leasehold_raft::sm_store::SharedState;
use leasehold_raft::state::StateEvent;
use leasehold_raft::typ::Raft;
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::clock::ClusterClock;
use crate::error::CoreError;
use crate::proposer::ProposerHandle;

const INBOX_CAPACITY: usize = 4096;
/// After a failed expiry proposal (while still leading), try again this much later.
const EXPIRE_RETRY: Duration = Duration::from_millis(100);
/// Upper bound on how long the actor sleeps without looking at its clocks.
const MAX_IDLE: Duration = Duration::from_secs(1);

enum Msg {
    Refresh {
        lease_id: LeaseId,
        term: u64,
        respond_to: oneshot::Sender<Result<u64, CoreError>>,
    },
    Remaining {
        lease_ids: Vec<LeaseId>,
        respond_to: oneshot::Sender<Vec<Option<u64>>>,
    },
}

enum Done {
    /// The expiry of `lease_id` proposed in `term` was answered (`ok`: no retry needed).
    Expired {
        lease_id: LeaseId,
        term: u64,
        ok: bool,
    },
    Promoted,
    TakeoverReady {
        term: u64,
        ok: bool,
    },
}

#[derive(Clone)]
pub struct LeaseHandle {
    tx: mpsc::Sender<Msg>,
}

impl LeaseHandle {
    pub fn spawn(
        raft: Raft,
        shared: Arc<SharedState>,
        proposer: ProposerHandle,
        clock: Arc<ClusterClock>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        let (done_tx, done_rx) = mpsc::channel(INBOX_CAPACITY);
        let actor = LeaseActor {
            raft,
            shared,
            proposer,
            clock,
            tracker: tracker.clone(),
            done_tx,
            deadlines: HashMap::new(),
            queue: BTreeSet::new(),
            expiring: HashSet::new(),
            delays: BTreeSet::new(),
            leading_term: None,
            takeover_term: None,
            pending_refresh: Vec::new(),
        };
        tracker.spawn(actor.run(rx, done_rx, cancel).in_current_span());
        LeaseHandle { tx }
    }

    /// Give `lease_id` a full TTL from now. `term` must be a term whose leadership the
    /// caller confirmed with a quorum after the client sent its keepalive.
    pub async fn refresh(&self, lease_id: LeaseId, term: u64) -> Result<u64, CoreError> {
        let (respond_to, rx) = oneshot::channel();
        self.tx
            .send(Msg::Refresh {
                lease_id,
                term,
                respond_to,
            })
            .await
            .map_err(|_| CoreError::ShuttingDown)?;
        rx.await.map_err(|_| CoreError::ShuttingDown)?
    }

    /// Time left on each lease, as this node (if leader) tracks it.
    pub async fn remaining_ms(&self, lease_ids: Vec<LeaseId>) -> Vec<Option<u64>> {
        let n = lease_ids.len();
        let (respond_to, rx) = oneshot::channel();
        if self
            .tx
            .send(Msg::Remaining {
                lease_ids,
                respond_to,
            })
            .await
            .is_err()
        {
            return vec![None; n];
        }
        rx.await.unwrap_or_else(|_| vec![None; n])
    }
}

/// A keepalive that arrived while this node's takeover was still in progress.
type PendingRefresh = (LeaseId, u64, oneshot::Sender<Result<u64, CoreError>>);
/// A lock-delay that holds back waiters: (the cluster's time in ms, kind, key).
type Delay = (u64, Kind, String);

struct LeaseActor {
    raft: Raft,
    shared: Arc<SharedState>,
    proposer: ProposerHandle,
    clock: Arc<ClusterClock>,
    tracker: TaskTracker,
    done_tx: mpsc::Sender<Done>,
    deadlines: HashMap<LeaseId, Instant>,
    queue: BTreeSet<(Instant, LeaseId)>,
    /// Leases whose `Expire` is in flight.
    expiring: HashSet<LeaseId>,
    /// Lock-delays holding back waiters: (the cluster's time in ms, kind, key).
    delays: BTreeSet<Delay>,
    /// The term in which this node leads and tracks deadlines.
    leading_term: Option<u64>,
    /// A term whose takeover (catch-up and re-arm) is in progress.
    takeover_term: Option<u64>,
    pending_refresh: Vec<PendingRefresh>,
}

impl LeaseActor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut done_rx: mpsc::Receiver<Done>,
        cancel: CancellationToken,
    ) {
        let mut applied = self.shared.subscribe_applied();
        let mut metrics = self.raft.metrics();
        self.on_metrics();
        loop {
            let wake_at = self.next_wakeup();
            tokio::select! {
                _ = cancel.cancelled() => return,
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_msg(msg),
                    None => return,
                },
                Some(done) = done_rx.recv() => self.on_done(done),
                changed = applied.changed() => {
                    if changed.is_err() { return; }
                    self.on_applied();
                }
                changed = metrics.changed() => {
                    if changed.is_err() { return; }
                    self.on_metrics();
                }
                _ = tokio::time::sleep_until(wake_at) => {}
            }
            self.fire_due();
        }
    }

    /// The cluster's time now (only the leader reads it: it stamps the entries).
    fn cluster_ms(&self) -> u64 {
        self.clock.now_ms(self.shared.read(|s| s.now_ms()))
    }

    fn next_wakeup(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + MAX_IDLE;
        if self.leading_term.is_some() {
            if let Some((at, _)) = self.queue.first() {
                wake = wake.min(*at);
            }
            if let Some((until_ms, _, _)) = self.delays.first() {
                let wall = self.cluster_ms();
                let wait = Duration::from_millis(until_ms.saturating_sub(wall));
                wake = wake.min(now + wait);
            }
        }
        wake
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Refresh {
                lease_id,
                term,
                respond_to,
            } => {
                if self.leading_term.is_none() && self.takeover_term == Some(term) {
                    // The confirmation raced our own takeover; answer once it is done.
                    self.pending_refresh.push((lease_id, term, respond_to));
                    return;
                }
                let _ = respond_to.send(self.refresh(lease_id, term));
            }
            Msg::Remaining {
                lease_ids,
                respond_to,
            } => {
                let now = Instant::now();
                let remaining = lease_ids
                    .iter()
                    .map(|id| {
                        self.leading_term?;
                        let at = self.deadlines.get(id)?;
                        Some(at.saturating_duration_since(now).as_millis() as u64)
                    })
                    .collect();
                let _ = respond_to.send(remaining);
            }
        }
    }

    fn refresh(&mut self, lease_id: LeaseId, term: u64) -> Result<u64, CoreError> {
        if self.leading_term != Some(term) {
            return Err(CoreError::NotLeader {
                leader: self.raft.metrics().borrow_watched().current_leader,
            });
        }
        let not_found = CoreError::Refused(SmError::LeaseNotFound { lease_id });
        if self.expiring.contains(&lease_id) {
            return Err(not_found);
        }
        let Some(ttl_ms) = self.shared.read(|s| s.lease(lease_id).map(|l| l.ttl_ms)) else {
            return Err(not_found);
        };
        self.arm(lease_id, ttl_ms);
        debug!(lease_id, term, ttl_ms, "keepalive re-armed the lease");
        Ok(ttl_ms)
    }

    fn arm(&mut self, lease_id: LeaseId, ttl_ms: u64) {
        let at = Instant::now() + Duration::from_millis(ttl_ms);
        if let Some(old) = self.deadlines.insert(lease_id, at) {
            self.queue.remove(&(old, lease_id));
        }
        self.queue.insert((at, lease_id));
    }

    fn disarm(&mut self, lease_id: LeaseId) {
        if let Some(old) = self.deadlines.remove(&lease_id) {
            self.queue.remove(&(old, lease_id));
        }
    }

    fn on_applied(&mut self) {
        // Every node follows the stamps it applies, so that as a new leader it continues
        // the cluster's time rather than its own wall clock's.
        let stamp = self.shared.read(|s| s.now_ms());
        self.clock.observe(stamp, self.leading_term.is_some());
        let events = self.shared.drain_events();
        if self.leading_term.is_none() {
            return;
        }
        for event in events {
            match event {
                StateEvent::LeaseArmed { lease_id, ttl_ms } => {
                    if !self.expiring.contains(&lease_id) {
                        self.arm(lease_id, ttl_ms);
                    }
                }
                StateEvent::LeaseGone { lease_id } => {
                    debug!(lease_id, "lease ended (applied)");
                    self.disarm(lease_id);
                    self.expiring.remove(&lease_id);
                }
                StateEvent::DelayUntil {
                    kind,
                    key,
                    until_ms,
                } => {
                    self.delays.insert((until_ms, kind, key));
                }
            }
        }
    }

    fn on_metrics(&mut self) {
        let (state, term, running) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (m.state, m.current_term, m.running_state.is_ok())
        };
        // A core stopped by a storage error still reports its last state: not leading.
        let leading_now = state == ServerState::Leader && running;
        if leading_now {
            let known = self.leading_term == Some(term) || self.takeover_term == Some(term);
            if !known {
                self.step_down();
                self.begin_takeover(term);
            }
        } else if self.leading_term.is_some() || self.takeover_term.is_some() {
            self.step_down();
        }
    }

    fn step_down(&mut self) {
        if self.leading_term.is_some() {
            info!("lease actor stepping down");
        }
        self.leading_term = None;
        self.takeover_term = None;
        self.deadlines.clear();
        self.queue.clear();
        self.expiring.clear();
        self.delays.clear();
        let leader = self.raft.metrics().borrow_watched().current_leader;
        for (_, _, respond_to) in self.pending_refresh.drain(..) {
            let _ = respond_to.send(Err(CoreError::NotLeader { leader }));
        }
    }

    /// Catch up with everything committed before this term, then re-arm (rule 4).
    fn begin_takeover(&mut self, term: u64) {
        self.takeover_term = Some(term);
        let raft = self.raft.clone();
        let done_tx = self.done_tx.clone();
        self.tracker.spawn(
            async move {
                let ok = raft
                    .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
                    .await
                    .is_ok();
                let _ = done_tx.send(Done::TakeoverReady { term, ok }).await;
            }
            .in_current_span(),
        );
    }

    fn finish_takeover(&mut self, term: u64) {
        // Anything applied before now is covered by the rescan below.
        let _ = self.shared.drain_events();
        let (leases, delays): (Vec<(LeaseId, u64)>, Vec<Delay>) = self.shared.read(|s| {
            (
                s.lease_ttls().collect(),
                s.delayed()
                    .map(|(kind, key, until_ms)| (until_ms, kind, key.to_string()))
                    .collect(),
            )
        });
        info!(
            term,
            leases = leases.len(),
            "leader takeover: every lease re-armed to its full ttl"
        );
        for (lease_id, ttl_ms) in leases {
            self.arm(lease_id, ttl_ms);
        }
        self.delays.extend(delays);
        self.leading_term = Some(term);
        self.takeover_term = None;
        for (lease_id, term, respond_to) in std::mem::take(&mut self.pending_refresh) {
            let _ = respond_to.send(self.refresh(lease_id, term));
        }
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Expired { lease_id, term, ok } => {
                debug!(lease_id, term, ok, leading = ?self.leading_term, "expiry proposal answered");
                if self.leading_term != Some(term) {
                    // From an earlier leadership of this node: its deadlines were dropped
                    // when it stepped down, and this term tracks its own.
                    return;
                }
                self.expiring.remove(&lease_id);
                if ok {
                    self.disarm(lease_id);
                } else if self.leading_term.is_some() {
                    let at = Instant::now() + EXPIRE_RETRY;
                    self.disarm(lease_id);
                    self.deadlines.insert(lease_id, at);
                    self.queue.insert((at, lease_id));
                }
            }
            Done::Promoted => {}
            Done::TakeoverReady { term, ok } => {
                if self.takeover_term != Some(term) {
                    return;
                }
                let still = {
                    let m = self.raft.metrics();
                    let m = m.borrow_watched();
                    m.state == ServerState::Leader && m.current_term == term
                };
                if ok && still {
                    self.finish_takeover(term);
                } else if still {
                    // Could not confirm yet (no quorum): try again.
                    self.begin_takeover(term);
                } else {
                    self.step_down();
                }
            }
        }
    }

    fn fire_due(&mut self) {
        let Some(term) = self.leading_term else {
            return;
        };
        let now = Instant::now();
        while let Some(&(at, lease_id)) = self.queue.first() {
            if at > now {
                break;
            }
            self.queue.remove(&(at, lease_id));
            self.deadlines.remove(&lease_id);
            if !self.expiring.insert(lease_id) {
                continue;
            }
            debug!(lease_id, term, "lease deadline passed; proposing expiry");
            let proposer = self.proposer.clone();
            let done_tx = self.done_tx.clone();
            self.tracker.spawn(
                async move {
                    let result = proposer
                        .propose(Proposal {
                            request_id: None,
                            caller: None,
                            command: Command::Expire { lease_id, term },
                        })
                        .await;
                    let ok = match result {
                        Ok((_, CommandResult::LeaseEnded { .. })) => true,
                        Ok((_, CommandResult::Error(SmError::LeaseNotFound { .. }))) => true,
                        // Appended after this node lost and regained leadership: that
                        // term's own deadline for the lease decides.
                        Ok((_, CommandResult::StaleExpiry)) => true,
                        Ok((_, other)) => {
                            warn!(lease_id, ?other, "unexpected result of an expiry");
                            true
                        }
                        Err(e) => {
                            debug!(lease_id, error = %e, "expiry proposal failed");
                            false
                        }
                    };
                    let _ = done_tx.send(Done::Expired { lease_id, term, ok }).await;
                }
                .in_current_span(),
            );
        }
        let wall = self.cluster_ms();
        while let Some((until_ms, _, _)) = self.delays.first() {
            if *until_ms > wall {
                break;
            }
            let Some((_, kind, key)) = self.delays.pop_first() else {
                break;
            };
            let proposer = self.proposer.clone();
            let done_tx = self.done_tx.clone();
            self.tracker.spawn(
                async move {
                    let _ = proposer
                        .propose(Proposal {
                            request_id: None,
                            caller: None,
                            command: Command::Promote { kind, key },
                        })
                        .await;
                    let _ = done_tx.send(Done::Promoted).await;
                }
                .in_current_span(),
            );
        }
    }
}
