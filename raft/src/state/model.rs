//! The replicated data: tuning constants, the records the state is built from ([`Lease`],
//! [`Resource`] with its [`Hold`]s, [`Waiter`]s and history), the [`StateEvent`]s an apply
//! emits, and the [`LeaseState`] struct itself.
//!
//! Field order in every serialized struct here is part of the snapshot format: do not
//! reorder fields without bumping [`STATE_FORMAT_VERSION`](super::STATE_FORMAT_VERSION).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use imbl::{OrdMap, OrdSet, Vector};

use serde::{Deserialize, Serialize};

use crate::command::{CommandResult, EndReason, Kind, LeaseId, ResourceId, Token};

/// Capacity of the replicated ring of recent expirations (`GET /v1/expired`).
pub const EXPIRED_RING_CAPACITY: usize = 1024;
/// Events kept per key (`GET /v1/locks/{key}/history`).
pub const HISTORY_RING_CAPACITY: usize = 32;
/// The request-id dedupe window, in the replicated state's time (the cluster's clock,
/// which no wall-clock step moves by more than 1 % of the time elapsed): an id is always
/// remembered for [`DEDUPE_MIN_WINDOW_MS`], however many others arrive (a client retries
/// one request for at most its request deadline, 10 s by default); after that, while it
/// is among the newest [`DEDUPE_MAX_ENTRIES`] and younger than [`DEDUPE_WINDOW_MS`]. So
/// the table holds the ids of the last minute, or 65,536 ids when fewer came in that time:
/// its memory grows with the write rate (about 420 B per id of an acquire).
pub const DEDUPE_MIN_WINDOW_MS: u64 = 60 * 1000;
/// Most `request_id`s remembered past [`DEDUPE_MIN_WINDOW_MS`].
pub const DEDUPE_MAX_ENTRIES: usize = 65_536;
/// Longest a `request_id` is remembered.
pub const DEDUPE_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Idle keys (no holder, no waiter) kept for their history and acquisition count; the
/// least recently changed beyond this are forgotten.
pub const MAX_IDLE_RESOURCES: usize = 100_000;

/// Side effects of applying an entry that the node's actors need to hear about.
/// They are not part of the replicated state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateEvent {
    /// A lease was created or its TTL changed: (re)arm its deadline.
    LeaseArmed { lease_id: LeaseId, ttl_ms: u64 },
    /// A lease ended: forget its deadline.
    LeaseGone { lease_id: LeaseId },
    /// A key is under lock-delay until `until_ms` (wall clock) and has waiters.
    DelayUntil {
        kind: Kind,
        key: String,
        until_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl_ms: u64,
    pub owner: String,
    pub created_at_ms: u64,
    /// Created by an acquire for a single hold; ends with that hold.
    pub implicit: bool,
    pub holds: KeySet,
    pub waits: KeySet,
    /// The principal that created the lease (auth on); it alone (or an admin) may use it.
    pub principal: Option<String>,
}

/// The resources a lease holds or waits for: a sorted vector without duplicates.
///
/// Most leases hold one key, for which a `BTreeSet` allocates a whole node (eleven slots,
/// about 400 bytes); this allocates one. It serializes as a sequence in ascending order,
/// exactly as the `BTreeSet` it replaced, so snapshots are unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeySet(Vec<ResourceId>);

impl KeySet {
    pub fn new() -> Self {
        KeySet(Vec::new())
    }

    pub fn contains(&self, rid: &ResourceId) -> bool {
        self.0.binary_search(rid).is_ok()
    }

    /// Insert `rid`; false if it was already there.
    pub fn insert(&mut self, rid: ResourceId) -> bool {
        match self.0.binary_search(&rid) {
            Ok(_) => false,
            Err(at) => {
                if self.0.len() == self.0.capacity() && self.0.len() < 4 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(at, rid);
                true
            }
        }
    }

    /// Remove `rid`; false if it was not there.
    pub fn remove(&mut self, rid: &ResourceId) -> bool {
        match self.0.binary_search(rid) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// In ascending order.
    pub fn iter(&self) -> std::slice::Iter<'_, ResourceId> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a KeySet {
    type Item = &'a ResourceId;
    type IntoIter = std::slice::Iter<'a, ResourceId>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub owner: String,
    pub token: Token,
    pub lease_id: LeaseId,
    pub locked_at_ms: u64,
    pub value: Option<String>,
    pub lock_delay_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub owner: String,
    pub lease_id: LeaseId,
    pub value: Option<String>,
    pub lock_delay_ms: u64,
    pub enqueued_at_ms: u64,
    pub implicit_lease: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryKind {
    Acquired,
    Released,
    Expired,
    Revoked,
    /// Force-released by an operator; `principal` names the operator (auth on).
    Stolen,
}

impl HistoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Acquired => "acquired",
            HistoryKind::Released => "released",
            HistoryKind::Expired => "expired",
            HistoryKind::Revoked => "revoked",
            HistoryKind::Stolen => "stolen",
        }
    }
}

impl From<EndReason> for HistoryKind {
    fn from(reason: EndReason) -> Self {
        match reason {
            EndReason::Released => HistoryKind::Released,
            EndReason::Expired => HistoryKind::Expired,
            EndReason::Revoked => HistoryKind::Revoked,
            EndReason::Stolen => HistoryKind::Stolen,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub event: HistoryKind,
    pub owner: String,
    pub token: Token,
    pub at_ms: u64,
    /// For ends: how long the hold lasted.
    pub held_ms: Option<u64>,
    /// For grants: how long the new holder waited in the queue.
    pub waited_ms: Option<u64>,
    /// The principal of the hold's lease (auth on).
    pub principal: Option<String>,
}

/// How the most recent hold of a resource ended (for wait-for-release).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndRecord {
    pub reason: EndReason,
    pub owner: String,
    pub token: Token,
    pub at_ms: u64,
    pub index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub limit: u32,
    /// In grant order.
    pub holders: Vec<Hold>,
    pub waiters: VecDeque<Waiter>,
    /// How many times this key was granted since it was first seen.
    pub acquisitions: u64,
    /// Log index of the last change (blocking queries compare against it).
    pub mod_index: u64,
    /// No grant before this wall-clock time (lock-delay after an expiry).
    pub delay_until_ms: u64,
    /// Newest last.
    pub history: VecDeque<HistoryRecord>,
    pub last_end: Option<EndRecord>,
    /// Set while the resource has no holder and no waiter: its key in the idle index.
    pub(super) idle_since: Option<u64>,
}

impl Resource {
    pub(super) fn new(limit: u32) -> Self {
        Resource {
            limit,
            holders: Vec::new(),
            waiters: VecDeque::new(),
            acquisitions: 0,
            mod_index: 0,
            delay_until_ms: 0,
            history: VecDeque::new(),
            last_end: None,
            idle_since: None,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }

    pub(super) fn record(&mut self, record: HistoryRecord) {
        if self.history.len() == HISTORY_RING_CAPACITY {
            self.history.pop_front();
        } else if self.history.len() == self.history.capacity() {
            // Grow 1, 2, 4, ... 32: most keys keep a few events, and `VecDeque`'s own first
            // allocation would be four records (over 400 bytes) for every key.
            self.history.reserve_exact(
                self.history
                    .len()
                    .max(1)
                    .min(HISTORY_RING_CAPACITY - self.history.len()),
            );
        }
        self.history.push_back(record);
    }

    /// Add a holder, growing the vector one slot at a time (a lock has one holder; `Vec`'s
    /// first allocation would be four).
    pub(super) fn push_holder(&mut self, hold: Hold) {
        if self.holders.len() == self.holders.capacity() {
            self.holders.reserve_exact(1);
        }
        self.holders.push(hold);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiredRecord {
    pub kind: Kind,
    pub key: String,
    pub owner: String,
    pub token: Token,
    pub expired_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct DedupeEntry {
    pub(super) at_ms: u64,
    pub(super) result: CommandResult,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseState {
    /// The newest entry timestamp seen; entry clocks never run backwards here.
    pub(super) now_ms: u64,
    pub(super) last_index: u64,
    pub(super) last_lease_id: LeaseId,
    /// The last fencing token issued (cluster-wide, never repeats).
    pub(super) last_token: Token,
    /// The large collections are persistent (`imbl`) B-trees with shared records, so a
    /// snapshot clones the state in O(1) under the lock and encodes the clone off it; an
    /// apply that follows copies only the nodes and records it changes. Records are behind
    /// `Arc` so that copying a node copies pointers, not records. Both serialize exactly as
    /// the `BTreeMap`/`BTreeSet`/`VecDeque` they replaced: the snapshot format is unchanged.
    pub(super) leases: OrdMap<LeaseId, Arc<Lease>>,
    pub(super) resources: OrdMap<ResourceId, Arc<Resource>>,
    /// Idle resources by the index at which they became idle, oldest first.
    pub(super) idle: OrdSet<(u64, ResourceId)>,
    /// Resources under lock-delay, by the time it ends.
    pub(super) delayed: OrdSet<(u64, ResourceId)>,
    pub(super) expired: VecDeque<ExpiredRecord>,
    pub(super) dedupe: OrdMap<String, Arc<DedupeEntry>>,
    /// `request_id`s in arrival order, for pruning the window.
    pub(super) dedupe_order: Vector<(u64, String)>,
    /// Live leases per principal, for `max_leases` quotas. Derived from `leases`: not in
    /// the snapshot, rebuilt on decode.
    #[serde(skip)]
    pub(super) principal_leases: BTreeMap<String, u64>,
    /// Each durable member's data-directory identity, as it recorded it
    /// ([`Command::RecordIncarnation`](crate::command::Command::RecordIncarnation)).
    /// Encoded after the rest of the state (snapshot format 3), so format 2 still reads.
    #[serde(skip)]
    pub(super) incarnations: BTreeMap<u64, u64>,
    /// What this replica applied, for its metrics: not replicated state (not in the
    /// snapshot, ignored by equality), restarting from zero when a snapshot replaces the
    /// state.
    #[serde(skip)]
    pub(super) counts: ApplyCounts,
}

/// Counts of what a replica applied (`LeaseState::counts`), by [`Kind`] where it matters
/// (indexed by `Kind as usize`: lock, name, semaphore).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyCounts {
    /// Log entries applied.
    pub entries: u64,
    /// Holds granted, directly or to a queued waiter.
    pub grants: [u64; 3],
    /// Holds granted to a queued waiter (the key passed from one holder to the next).
    pub handoffs: [u64; 3],
    /// Leases that ended by expiry.
    pub expired: u64,
}

/// Counts are about one replica's history, not the state: two replicas with the same state
/// are equal whatever they counted.
impl PartialEq for ApplyCounts {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
