//! The deterministic lease state machine (SPEC §1, §2 rule 6).
//!
//! Applying an entry reads only the entry: its commands, its log index and the leader's
//! wall-clock stamp. Every collection is ordered (`BTreeMap`, `VecDeque`), so two replicas
//! that apply the same log encode byte-identical snapshots.
//!
//! Locks, names and semaphores are one thing here, a [`Resource`] with up to `limit`
//! holders and a FIFO queue of waiters; a lock or a name is a resource with `limit = 1`.
//! Every hold and every waiter lives under a [`Lease`]; when the lease ends, all of them are
//! released in the same step and freed slots pass to the head of each queue.
//!
//! The implementation is split by concern; every public item is re-exported here:
//! - `model`: constants, the replicated records and the [`LeaseState`] struct;
//! - `apply`: [`LeaseState::apply_batch`] and per-command dispatch;
//! - `leases`: lease creation and ending;
//! - `resources`: acquire, grant, queueing, release and extend (locks, names, semaphores);
//! - `housekeeping`: lock-delay timers, the dedupe window and idle-resource pruning;
//! - `query`: read accessors for the node;
//! - `codec`: the versioned snapshot encoding;
//! - `invariants`: structural checks for tests and debug assertions.

mod apply;
mod codec;
mod housekeeping;
mod invariants;
mod leases;
mod model;
mod query;
mod resources;

pub use codec::{DecodeError, STATE_FORMAT_VERSION};
pub use housekeeping::MAX_SAFE_FLOOR;
pub use model::{
    ApplyCounts, EndRecord, ExpiredRecord, HistoryKind, HistoryRecord, Hold, KeySet, Lease,
    LeaseState, Resource, StateEvent, Waiter, DEDUPE_MAX_ENTRIES, DEDUPE_MIN_WINDOW_MS,
    DEDUPE_WINDOW_MS, EXPIRED_RING_CAPACITY, HISTORY_RING_CAPACITY, MAX_IDLE_RESOURCES,
};

#[cfg(test)]
#[path = "state/tests.rs"]
mod tests;
