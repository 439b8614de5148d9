//! Leadership confirmation for keepalives and linearizable reads (SPEC §2 rule 3).
//!
//! Keepalives and linearizable reads need proof that no other leader can exist, after
//! which the local state machine has applied everything committed before the proof. There
//! are two proofs, both asked of openraft (`Raft::ensure_linearizable`):
//!
//! - **The leader lease**: a quorum acknowledged an append or heartbeat this leader *sent*
//!   less than [`LeaderLease::bound`] ago, `election_timeout_min` less the clock-drift
//!   margin ([`DRIFT_PERCENT`] of it). A follower that acknowledged a leader refuses every
//!   other candidate for `election_timeout_max` after (openraft's vote lease), so none can
//!   have been elected since. No network round: openraft answers from its core.
//! - **A quorum round** that began after the request arrived, when the lease has lapsed.
//!   openraft starts one heartbeat round for all reads waiting on it.
//!
//! A node that restarted forgets when it last acknowledged a leader, so for
//! `election_timeout_max` after its start it refuses votes (`peer::server`) and does not
//! use its own lease ([`LeaderLease::usable_after`]).
//!
//! Callers are batched adaptively: one confirmation is in flight at a time; the first
//! caller after a quiet spell starts one at once, and callers that arrive while one runs
//! share the next. `raft.keepalive_window_ms` > 0 also spaces confirmations at least that
//! far apart (the pacing before leader leases; 0, the default, adds no wait).
//!
//! The read index is openraft's, raised to the last log index the leader had when it
//! first confirmed in its term. That mattered under openraft 0.9, which restored a node
//! that led before it stopped as leader of the same term at once, with a committed index
//! only as fresh as the store kept it (found by the independent linearizability checker).
//! leasehold now turns leader restore off (`node::Node::start`), and the floor stays as a
//! second line.

use openraft::async_runtime::WatchReceiver;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leasehold_raft::typ::Raft;
use openraft::{LinearizerOption, ReadPolicy, ServerState};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::CoreError;

const INBOX_CAPACITY: usize = 4096;

/// Proof of leadership: the term that was confirmed and the index a read must observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmed {
    pub term: u64,
    pub read_index: u64,
}

type Reply = oneshot::Sender<Result<Confirmed, CoreError>>;

#[derive(Clone)]
pub struct ConfirmerHandle {
    tx: mpsc::Sender<Reply>,
}

/// Clock-drift margin of the leader lease, in percent of `election_timeout_min`: the same
/// bound on clock rates as the clients' lease deadlines (SPEC §2 rule 5).
pub const DRIFT_PERCENT: u64 = 1;

/// The leader lease this node may use.
#[derive(Debug, Clone, Copy)]
pub struct LeaderLease {
    /// The oldest quorum acknowledgement that still proves leadership.
    pub bound: Duration,
    /// Before this instant (its start plus `election_timeout_max`) the node uses no lease.
    pub usable_after: Instant,
}

impl LeaderLease {
    /// `election_timeout_min` less the drift margin, usable `election_timeout_max` after
    /// `started`. None turns leases off (every confirmation is a quorum round).
    pub fn new(
        election_timeout_min: Duration,
        election_timeout_max: Duration,
        started: Instant,
        enabled: bool,
    ) -> Option<Self> {
        let margin =
            (election_timeout_min * DRIFT_PERCENT as u32 / 100).max(Duration::from_millis(1));
        enabled.then(|| LeaderLease {
            bound: election_timeout_min.saturating_sub(margin),
            usable_after: started + election_timeout_max,
        })
    }

    /// What openraft is asked for: the lease when it may be used, else a fresh round.
    fn option(lease: Option<&LeaderLease>) -> LinearizerOption {
        match lease {
            Some(l) if Instant::now() >= l.usable_after => {
                LinearizerOption::new(Some(l.bound), true)
            }
            _ => ReadPolicy::ReadIndex.into(),
        }
    }
}

/// The settings of the confirmer.
pub struct ConfirmerSettings {
    /// How long one confirmation may take before the callers get 503.
    pub round_timeout: Duration,
    /// The least time between two confirmations (0: adaptive only).
    pub window: Duration,
    pub lease: Option<LeaderLease>,
    /// Counts confirmations that needed a quorum round.
    pub rounds: Arc<AtomicU64>,
    /// Counts confirmations answered on the leader lease.
    pub lease_hits: Arc<AtomicU64>,
}

impl ConfirmerHandle {
    pub fn spawn(
        raft: Raft,
        settings: ConfirmerSettings,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        tracker.spawn(run(raft, settings, rx, cancel).in_current_span());
        ConfirmerHandle { tx }
    }

    /// Confirm this node's leadership with a quorum; on success the local state machine
    /// has applied at least `read_index`.
    pub async fn confirm(&self) -> Result<Confirmed, CoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(reply)
            .await
            .map_err(|_| CoreError::ShuttingDown)?;
        rx.await.map_err(|_| CoreError::ShuttingDown)?
    }
}

async fn run(
    raft: Raft,
    settings: ConfirmerSettings,
    mut rx: mpsc::Receiver<Reply>,
    cancel: CancellationToken,
) {
    let mut last_round: Option<Instant> = None;
    // The read floor of the current term: (term, index).
    let mut floor: Option<(u64, u64)> = None;
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            first = rx.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        if let (Some(last), false) = (last_round, settings.window.is_zero()) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(last + settings.window) => {}
            }
        }
        let mut waiting = vec![first];
        while let Ok(next) = rx.try_recv() {
            waiting.push(next);
        }
        last_round = Some(Instant::now());
        let result = confirm_round(&raft, &settings, &mut floor).await;
        for reply in waiting {
            let _ = reply.send(result.clone());
        }
    }
}

async fn confirm_round(
    raft: &Raft,
    settings: &ConfirmerSettings,
    floor: &mut Option<(u64, u64)>,
) -> Result<Confirmed, CoreError> {
    let (state, term, leader, last_log, acked_ms) = {
        let m = raft.metrics();
        let m = m.borrow_watched();
        (
            m.state,
            m.current_term,
            m.current_leader,
            m.last_log_index,
            m.last_quorum_acked
                .as_ref()
                .map(|t| openraft::Instant::elapsed(&**t)),
        )
    };
    if state != ServerState::Leader {
        return Err(CoreError::NotLeader { leader });
    }
    let term_floor = match *floor {
        Some((t, f)) if t == term => f,
        _ => {
            let f = last_log.unwrap_or(0);
            *floor = Some((term, f));
            f
        }
    };
    let started = Instant::now();
    let option = LeaderLease::option(settings.lease.as_ref());
    // Counted as a lease hit when the lease looked valid as it was asked (openraft decides;
    // a lease that lapsed in between makes it run the round, which is only slower).
    let on_lease = settings
        .lease
        .as_ref()
        .is_some_and(|l| started >= l.usable_after && acked_ms.is_some_and(|age| age < l.bound));
    if on_lease {
        settings.lease_hits.fetch_add(1, Ordering::Relaxed);
    } else {
        settings.rounds.fetch_add(1, Ordering::Relaxed);
    }
    let confirmed = confirm_quorum(raft, term, settings.round_timeout, option).await?;
    if confirmed.read_index >= term_floor {
        return Ok(confirmed);
    }
    let remaining = settings.round_timeout.saturating_sub(started.elapsed());
    match raft
        .wait(Some(remaining))
        .applied_index_at_least(Some(term_floor), "read floor of the term")
        .await
    {
        Ok(_) => Ok(Confirmed {
            term,
            read_index: term_floor,
        }),
        Err(e) => Err(CoreError::Unavailable(format!(
            "could not apply the term's entries up to {term_floor} in time: {e}"
        ))),
    }
}

async fn confirm_quorum(
    raft: &Raft,
    term: u64,
    round_timeout: Duration,
    option: LinearizerOption,
) -> Result<Confirmed, CoreError> {
    let read = raft.ensure_linearizable(option);
    match tokio::time::timeout(round_timeout, read).await {
        Err(_) => Err(CoreError::Unavailable(
            "could not confirm leadership with a quorum in time".into(),
        )),
        Ok(Err(e)) => match e.forward_to_leader() {
            Some(f) => Err(CoreError::NotLeader {
                leader: f.leader_id,
            }),
            None => Err(CoreError::Unavailable(e.to_string())),
        },
        Ok(Ok(read_log_id)) => Ok(Confirmed {
            term,
            read_index: read_log_id.index(),
        }),
    }
}
