//! The core's background watchers: chart samples for the status page, leader changes
//! and storage faults.

use std::sync::Arc;

use leasehold_config::Config;
use leasehold_raft::sm_store::SharedState;
use leasehold_raft::typ::Raft;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::metrics::Metrics;

/// Every [`SAMPLE_EVERY`](crate::metrics::SAMPLE_EVERY), a sample for the status page's
/// charts: grant and handoff rates as this node applied them, and its write p99.
pub(super) fn sample_for_charts(
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
pub(super) fn watch_leader(
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
pub(super) fn watch_storage(
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
