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
        let result = confirm_round(&raft, round_timeout).await;
        for reply in waiting {
            let _ = reply.send(result.clone());
        }
    }
}

async fn confirm_round(raft: &Raft, round_timeout: Duration) -> Result<Confirmed, CoreError> {
    let (state, term, leader) = {
        let m = raft.metrics();
        let m = m.borrow();
        (m.state, m.current_term, m.current_leader)
    };
    if state != ServerState::Leader {
        return Err(CoreError::NotLeader { leader });
    }
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
