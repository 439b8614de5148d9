//! Batched leadership confirmation (a read-index round).
//!
//! Keepalives and linearizable reads need proof that this node still leads: a heartbeat
//! round acknowledged by a quorum, after which the local state machine has applied
//! everything committed before the round. One round serves every caller that asked before
//! it started; callers that arrive during a round wait for the next one. Rounds start at
//! most once per `window` (`raft.keepalive_window_ms`): the first caller after a quiet
//! window starts one at once, and callers within a busy window share the next, so rounds
//! cost the peers at most `1 / window` heartbeats a second however many keepalives and
//! reads arrive.
//!
//! The read index is openraft's (`max(the leader's first entry of its term, committed)`),
//! raised to the last log index the leader had when it first confirmed in its term. That
//! matters after a restart: openraft 0.9 restores a node that led before it stopped as
//! leader of the same term at once, its term's first entry long behind, and its
//! committed index only as fresh as the store kept it, so entries committed before the
//! crash could be missing from a read. Found by the independent linearizability checker
//! (a name read on a restarted node returned the value before the last acknowledged one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leasehold_raft::typ::Raft;
use openraft::ServerState;
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

impl ConfirmerHandle {
    pub fn spawn(
        raft: Raft,
        round_timeout: Duration,
        window: Duration,
        rounds: Arc<AtomicU64>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        tracker.spawn(run(raft, round_timeout, window, rounds, rx, cancel).in_current_span());
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
    round_timeout: Duration,
    window: Duration,
    rounds: Arc<AtomicU64>,
    mut rx: mpsc::Receiver<Reply>,
    cancel: CancellationToken,
) {
    let mut last_round: Option<Instant> = None;
    // The term this node last confirmed in, and its read floor there.
    let mut floor: Option<(u64, u64)> = None;
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            first = rx.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        if let Some(last) = last_round {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(last + window) => {}
            }
        }
        let mut waiting = vec![first];
        while let Ok(next) = rx.try_recv() {
            waiting.push(next);
        }
        last_round = Some(Instant::now());
        rounds.fetch_add(1, Ordering::Relaxed);
        let result = confirm_round(&raft, round_timeout, &mut floor).await;
        for reply in waiting {
            let _ = reply.send(result.clone());
        }
    }
}

async fn confirm_round(
    raft: &Raft,
    round_timeout: Duration,
    floor: &mut Option<(u64, u64)>,
) -> Result<Confirmed, CoreError> {
    let (state, term, leader, last_log) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.state, m.current_term, m.current_leader, m.last_log_index)
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
    let confirmed = confirm_quorum(raft, term, round_timeout).await?;
    if confirmed.read_index >= term_floor {
        return Ok(confirmed);
    }
    // The entries the leader had when its term began here must be applied first.
    let remaining = round_timeout.saturating_sub(started.elapsed());
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

/// One heartbeat round acknowledged by a quorum; openraft's read index.
async fn confirm_quorum(
    raft: &Raft,
    term: u64,
    round_timeout: Duration,
) -> Result<Confirmed, CoreError> {
    match tokio::time::timeout(round_timeout, raft.ensure_linearizable()).await {
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
            read_index: read_log_id.map_or(0, |l| l.index),
        }),
    }
}
