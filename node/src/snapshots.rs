//! When this node builds a snapshot: every `raft.snapshot_every_logs` applied entries, at
//! indices staggered by node id, so that the members of a cluster do not all build one
//! at the same moment.
//!
//! openraft's own policy (`SnapshotPolicy::LogsSinceLast`) fires at the same index on
//! every member. A build encodes the whole state and writes it out: on a small machine
//! hosting all three members, three at once took the CPU and the disk from the log's
//! fsyncs for hundreds of milliseconds, and every waiter queued on a contended key waited
//! that much longer (docs/performance.md, issue 23). Staggered, at most one member builds
//! at a time, and the other two still make a quorum for every commit.

use std::sync::Arc;

use crate::core::Core;

/// The first index after `applied` at which a node of `phase` builds a snapshot: the
/// indices `b` with `(b + phase) % every == 0`.
fn next_boundary(applied: u64, every: u64, phase: u64) -> u64 {
    let every = every.max(1);
    let shifted = applied.saturating_add(phase % every);
    (shifted / every + 1) * every - phase % every
}

/// A node's phase: node ids 1, 2, 3 build a third of the period apart.
fn phase(node_id: u64, every: u64) -> u64 {
    (node_id % 3) * every / 3
}

/// Trigger a snapshot each time the applied index passes this node's next boundary.
pub(crate) fn spawn_trigger(core: Arc<Core>, every: u64) {
    let phase = phase(core.node_id(), every);
    let inner = core.clone();
    core.spawn(async move {
        let mut applied = inner.subscribe_applied();
        let mut next = next_boundary(*applied.borrow_and_update(), every, phase);
        while applied.changed().await.is_ok() {
            let index = *applied.borrow_and_update();
            if index < next {
                continue;
            }
            next = next_boundary(index, every, phase);
            if let Err(e) = inner.raft().trigger().snapshot().await {
                tracing::debug!(error = %e, "no snapshot: raft has stopped");
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_come_every_period_shifted_by_the_phase() {
        assert_eq!(next_boundary(0, 100, 0), 100);
        assert_eq!(next_boundary(99, 100, 0), 100);
        assert_eq!(next_boundary(100, 100, 0), 200);
        assert_eq!(next_boundary(0, 100, 33), 67);
        assert_eq!(next_boundary(67, 100, 33), 167);
        assert_eq!(next_boundary(500, 100, 66), 534);
    }

    #[test]
    fn three_members_build_a_third_of_the_period_apart() {
        let every = 10_000;
        let firsts: Vec<u64> = (1..=3)
            .map(|id| next_boundary(0, every, phase(id, every)))
            .collect();
        assert_eq!(firsts, vec![6_667, 3_334, 10_000]);
    }
}
