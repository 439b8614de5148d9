//! The proposer actor: gathers concurrent commands into one Raft entry.
//!
//! openraft 0.9 appends and fsyncs one entry per `client_write`, so proposing each request
//! on its own would cost one fsync per request. The actor takes whatever queued up while
//! the previous entries were in flight and proposes it as one [`Batch`], then hands every
//! caller its own result. At most `MAX_IN_FLIGHT` entries are in flight at once.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use leasehold_raft::command::{Batch, CommandResult, Proposal};
use leasehold_raft::typ::Raft;
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use leasehold_raft::sm_store::SharedState;

use crate::clock::ClusterClock;
use crate::error::CoreError;
use crate::metrics::Metrics;

/// Entries proposed concurrently; more would only queue inside openraft.
const MAX_IN_FLIGHT: usize = 2;
/// Bound on the proposer's inbox; senders wait when it is full.
pub const INBOX_CAPACITY: usize = 4096;

struct Submit {
    proposal: Proposal,
    respond_to: oneshot::Sender<Result<(u64, CommandResult), CoreError>>,
}

#[derive(Clone)]
pub struct ProposerHandle {
    tx: mpsc::Sender<Submit>,
    metrics: Arc<Metrics>,
}

pub struct ProposerSettings {
    pub max_batch: usize,
    pub proposal_timeout: Duration,
    /// A leader that has not heard from a quorum for this long refuses writes (rule 7).
    pub quorum_stale_after: Duration,
    /// Stamps each entry: the replicated state's time (see [`ClusterClock`]).
    pub clock: Arc<ClusterClock>,
    /// The applied state, whose time the stamps never go below.
    pub shared: Arc<SharedState>,
    /// Counts proposals and failed ones.
    pub metrics: Arc<Metrics>,
}

impl ProposerHandle {
    pub fn spawn(
        raft: Raft,
        settings: ProposerSettings,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        let metrics = settings.metrics.clone();
        tracker.spawn(run(raft, settings, rx, tracker.clone(), cancel).in_current_span());
        ProposerHandle { tx, metrics }
    }

    /// Propose one command through the local Raft leader and wait for its result and the
    /// log index it was applied at.
    pub async fn propose(&self, proposal: Proposal) -> Result<(u64, CommandResult), CoreError> {
        self.metrics.proposals.inc();
        let result = self.submit(proposal).await;
        if result.is_err() {
            self.metrics.proposals_failed.inc();
        }
        result
    }

    async fn submit(&self, proposal: Proposal) -> Result<(u64, CommandResult), CoreError> {
        let (respond_to, rx) = oneshot::channel();
        self.tx
            .send(Submit {
                proposal,
                respond_to,
            })
            .await
            .map_err(|_| CoreError::ShuttingDown)?;
        rx.await.map_err(|_| CoreError::ShuttingDown)?
    }
}

async fn run(
    raft: Raft,
    settings: ProposerSettings,
    mut rx: mpsc::Receiver<Submit>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let settings = Arc::new(settings);
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
        let mut batch = vec![first];
        while batch.len() < settings.max_batch {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let settings = settings.clone();
        tracker.spawn(
            async move {
                propose_batch(&raft, &settings, batch).await;
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

async fn propose_batch(raft: &Raft, settings: &ProposerSettings, batch: Vec<Submit>) {
    if let Err(e) = check_leadership(raft, settings) {
        for submit in batch {
            let _ = submit.respond_to.send(Err(e.clone()));
        }
        return;
    }
    let (proposals, responders): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|s| (s.proposal, s.respond_to))
        .unzip();
    let count = proposals.len();
    let floor = settings.shared.read(|s| s.now_ms());
    let entry = Batch::new(settings.clock.now_ms(floor), proposals);
    let outcome = tokio::time::timeout(settings.proposal_timeout, raft.client_write(entry)).await;
    let results: Result<(u64, Vec<CommandResult>), CoreError> = match outcome {
        Err(_) => Err(CoreError::Timeout),
        Ok(Ok(response)) => {
            let index = response.data.index;
            let results = response.data.results;
            if results.len() == count {
                Ok((index, results))
            } else {
                // Cannot happen: the state machine returns one result per proposal.
                Err(CoreError::Unavailable(format!(
                    "state machine returned {} results for {count} commands",
                    results.len()
                )))
            }
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(CoreError::NotLeader {
                leader: f.leader_id,
            })
        }
        // Appended, then dropped by a new leader's log: the outcome is unknown, and the
        // retry on the new leader is deduplicated by request_id (see `Core::on_leader`).
        Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)))) => {
            Err(CoreError::NotLeader {
                leader: f.leader_id,
            })
        }
        Ok(Err(RaftError::APIError(e))) => Err(CoreError::Unavailable(e.to_string())),
        Ok(Err(RaftError::Fatal(e))) => Err(CoreError::Unavailable(e.to_string())),
    };
    match results {
        Ok((index, results)) => {
            for (respond_to, result) in responders.into_iter().zip(results) {
                let _ = respond_to.send(Ok((index, result)));
            }
        }
        Err(e) => {
            for respond_to in responders {
                let _ = respond_to.send(Err(e.clone()));
            }
        }
    }
}

/// Refuse to propose unless this node leads and has heard from a quorum recently.
fn check_leadership(raft: &Raft, settings: &ProposerSettings) -> Result<(), CoreError> {
    // Read in place: cloning openraft's metrics (membership, replication maps) for every
    // batch was an allocation per write on the leader.
    let watch = raft.metrics();
    let metrics = watch.borrow_watched();
    if metrics.state != ServerState::Leader {
        return Err(CoreError::NotLeader {
            leader: metrics.current_leader,
        });
    }
    let voters = metrics.membership_config.membership().voter_ids().count();
    if voters > 1 {
        let stale = match metrics
            .last_quorum_acked
            .as_ref()
            .map(|t| openraft::Instant::elapsed(&**t))
        {
            Some(age) => age > settings.quorum_stale_after,
            None => true,
        };
        if stale {
            return Err(CoreError::Unavailable(
                "the leader has not heard from a quorum within the election timeout".into(),
            ));
        }
    }
    Ok(())
}
