//! Batchers: one message to the leader for many requests of this node's clients.
//!
//! Every node gathers what its clients ask of the leader and sends it as one batch:
//!
//! - **Keepalives**, at most once per `raft.keepalive_window_ms` ([`Pace::Window`]). A
//!   keepalive is not in the log, but it costs a leadership round on the leader (SPEC §2
//!   rule 3) and, on a follower, a forward. Sent one by one, 2,000 keepalives a second
//!   spread evenly cost nearly 2,000 forwards and rounds. The first keepalive after a
//!   quiet window leaves at once; the ones that arrive while the window is open wait for
//!   its end and leave together (as ZooKeeper's learners send their sessions' pings once
//!   per tick). The leader answers a batch after one confirmation round that began after
//!   the batch was sent, so each keepalive is acknowledged only once a quorum confirmed the
//!   leadership after the client sent it, and its deadline is at least `t_send + ttl`.
//! - **Writes**, with at most [`FORWARD_IN_FLIGHT`] batches in flight ([`Pace::InFlight`]):
//!   what arrives while they are out joins the next. The leader proposes each write of a
//!   batch to its proposer, which gathers them into the same entries as its own writes.
//!   No write waits for a timer.
//!
//! On the leader the same batches are served locally, without a hop.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::core::Core;
use crate::error::CoreError;

const INBOX_CAPACITY: usize = 8192;
/// Most requests in one batch (a bound on the message, not a tuning knob).
const MAX_BATCH: usize = 4096;
/// Forwarded write batches in flight from one node.
pub(crate) const FORWARD_IN_FLIGHT: usize = 2;

/// When a batch leaves.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// At most one batch per window; the first request after a quiet window goes at once.
    Window(Duration),
    /// At most this many batches in flight; the rest gather for the next.
    InFlight(usize),
}

type BatchFuture<O> = Pin<Box<dyn Future<Output = Result<Vec<O>, CoreError>> + Send>>;
/// Sends one batch to the leader: one result per request, in order.
pub(crate) type SendBatch<I, O> = fn(Arc<Core>, Vec<I>) -> BatchFuture<O>;

struct Pending<I, O> {
    item: I,
    respond_to: oneshot::Sender<Result<O, CoreError>>,
}

pub(crate) struct Batcher<I, O> {
    tx: mpsc::Sender<Pending<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    pub(crate) fn spawn(
        core: Weak<Core>,
        pace: Pace,
        send: SendBatch<I, Result<O, CoreError>>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        tracker.spawn(run(core, pace, send, rx, tracker.clone(), cancel).in_current_span());
        Batcher { tx }
    }

    /// Send `item` with the next batch and wait for its result.
    pub(crate) async fn submit(&self, item: I) -> Result<O, CoreError> {
        let (respond_to, rx) = oneshot::channel();
        self.tx
            .send(Pending { item, respond_to })
            .await
            .map_err(|_| CoreError::ShuttingDown)?;
        rx.await.map_err(|_| CoreError::ShuttingDown)?
    }
}

async fn run<I: Send + 'static, O: Send + 'static>(
    core: Weak<Core>,
    pace: Pace,
    send: SendBatch<I, Result<O, CoreError>>,
    mut rx: mpsc::Receiver<Pending<I, O>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(match pace {
        Pace::InFlight(n) => n.max(1),
        Pace::Window(_) => Semaphore::MAX_PERMITS,
    }));
    let mut last_sent: Option<Instant> = None;
    loop {
        // Take a slot first, so everything that arrives meanwhile joins the next batch.
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            first = rx.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        if let (Pace::Window(window), Some(last)) = (pace, last_sent) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(last + window) => {}
            }
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        last_sent = Some(Instant::now());
        let Some(core) = core.upgrade() else { return };
        tracker.spawn(
            async move {
                let (items, replies): (Vec<_>, Vec<_>) =
                    batch.into_iter().map(|p| (p.item, p.respond_to)).unzip();
                let n = replies.len();
                match send(core, items).await {
                    Ok(results) if results.len() == n => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                    }
                    Ok(results) => {
                        let e = CoreError::Unavailable(format!(
                            "the leader answered {} results for {n} requests",
                            results.len()
                        ));
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
                drop(permit);
            }
            .in_current_span(),
        );
    }
}
