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

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::command::{
    Acquire, Batch, BatchResult, BusyReason, Command, CommandResult, EndReason, HoldView, Kind,
    LeaseId, LeaseSpec, Proposal, ResourceId, SmError, Token,
};

/// The snapshot encoding's version; bump it when [`LeaseState`]'s layout changes.
pub const STATE_FORMAT_VERSION: u8 = 1;
/// Capacity of the replicated ring of recent expirations (`GET /v1/expired`).
pub const EXPIRED_RING_CAPACITY: usize = 1024;
/// Events kept per key (`GET /v1/locks/{key}/history`).
pub const HISTORY_RING_CAPACITY: usize = 32;
/// Most `request_id`s remembered for idempotent retries.
pub const DEDUPE_MAX_ENTRIES: usize = 65_536;
/// How long a `request_id` is remembered, by the entries' clock.
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
    pub holds: BTreeSet<ResourceId>,
    pub waits: BTreeSet<ResourceId>,
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
}

impl HistoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Acquired => "acquired",
            HistoryKind::Released => "released",
            HistoryKind::Expired => "expired",
            HistoryKind::Revoked => "revoked",
        }
    }
}

impl From<EndReason> for HistoryKind {
    fn from(reason: EndReason) -> Self {
        match reason {
            EndReason::Released => HistoryKind::Released,
            EndReason::Expired => HistoryKind::Expired,
            EndReason::Revoked => HistoryKind::Revoked,
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
    idle_since: Option<u64>,
}

impl Resource {
    fn new(limit: u32) -> Self {
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

    fn record(&mut self, record: HistoryRecord) {
        if self.history.len() == HISTORY_RING_CAPACITY {
            self.history.pop_front();
        }
        self.history.push_back(record);
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
struct DedupeEntry {
    at_ms: u64,
    result: CommandResult,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseState {
    /// The newest entry timestamp seen; entry clocks never run backwards here.
    now_ms: u64,
    last_index: u64,
    last_lease_id: LeaseId,
    /// The last fencing token issued (cluster-wide, never repeats).
    last_token: Token,
    leases: BTreeMap<LeaseId, Lease>,
    resources: BTreeMap<ResourceId, Resource>,
    /// Idle resources by the index at which they became idle, oldest first.
    idle: BTreeSet<(u64, ResourceId)>,
    /// Resources under lock-delay, by the time it ends.
    delayed: BTreeSet<(u64, ResourceId)>,
    expired: VecDeque<ExpiredRecord>,
    dedupe: BTreeMap<String, DedupeEntry>,
    /// `request_id`s in arrival order, for pruning the window.
    dedupe_order: VecDeque<(u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("snapshot format version {0} is not supported (this build reads version {STATE_FORMAT_VERSION})")]
    Version(u8),
    #[error("snapshot is empty")]
    Empty,
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
}

/// What one command did to the state, beyond its result.
struct Effects<'a> {
    index: u64,
    now_ms: u64,
    events: &'a mut Vec<StateEvent>,
    touched: BTreeSet<ResourceId>,
}

impl LeaseState {
    /// Apply one log entry's batch at `index`; events for the actors are pushed to `events`.
    pub fn apply_batch(
        &mut self,
        index: u64,
        batch: &Batch,
        events: &mut Vec<StateEvent>,
    ) -> BatchResult {
        let Batch::V1 {
            proposed_at_ms,
            proposals,
        } = batch;
        self.last_index = index;
        self.now_ms = self.now_ms.max(*proposed_at_ms);
        self.end_elapsed_delays(index, events);
        let mut results = Vec::with_capacity(proposals.len());
        for proposal in proposals {
            results.push(self.apply_proposal(index, proposal, events));
        }
        self.prune_dedupe();
        BatchResult { index, results }
    }

    fn apply_proposal(
        &mut self,
        index: u64,
        proposal: &Proposal,
        events: &mut Vec<StateEvent>,
    ) -> CommandResult {
        if let Some(request_id) = &proposal.request_id {
            if let Some(entry) = self.dedupe.get(request_id) {
                return entry.result.clone();
            }
        }
        let mut fx = Effects {
            index,
            now_ms: self.now_ms,
            events,
            touched: BTreeSet::new(),
        };
        let result = self.apply_command(&proposal.command, &mut fx);
        let touched = std::mem::take(&mut fx.touched);
        for rid in touched {
            self.reindex_idle(&rid);
        }
        if let Some(request_id) = &proposal.request_id {
            self.dedupe.insert(
                request_id.clone(),
                DedupeEntry {
                    at_ms: self.now_ms,
                    result: result.clone(),
                },
            );
            self.dedupe_order
                .push_back((self.now_ms, request_id.clone()));
        }
        result
    }

    /// Grant the waiters of keys whose lock-delay has ended by this entry's time.
    fn end_elapsed_delays(&mut self, index: u64, events: &mut Vec<StateEvent>) {
        while let Some((until_ms, _)) = self.delayed.first() {
            if *until_ms > self.now_ms {
                break;
            }
            let Some((_, rid)) = self.delayed.pop_first() else {
                break;
            };
            let mut fx = Effects {
                index,
                now_ms: self.now_ms,
                events: &mut *events,
                touched: BTreeSet::new(),
            };
            self.promote(&rid, &mut fx);
            for rid in std::mem::take(&mut fx.touched) {
                self.reindex_idle(&rid);
            }
        }
    }

    fn prune_dedupe(&mut self) {
        while let Some((at_ms, _)) = self.dedupe_order.front() {
            let too_many = self.dedupe_order.len() > DEDUPE_MAX_ENTRIES;
            let too_old = at_ms.saturating_add(DEDUPE_WINDOW_MS) < self.now_ms;
            if !(too_many || too_old) {
                break;
            }
            if let Some((at_ms, id)) = self.dedupe_order.pop_front() {
                // A later retry of the same id may have re-inserted it; only drop our own.
                if self.dedupe.get(&id).is_some_and(|e| e.at_ms == at_ms) {
                    self.dedupe.remove(&id);
                }
            }
        }
    }

    fn apply_command(&mut self, command: &Command, fx: &mut Effects<'_>) -> CommandResult {
        match command {
            Command::CreateLease {
                ttl_ms,
                owner,
                max_leases,
            } => match self.create_lease(*ttl_ms, owner, false, *max_leases, fx) {
                Ok(lease_id) => CommandResult::LeaseCreated {
                    lease_id,
                    ttl_ms: *ttl_ms,
                    owner: owner.clone(),
                },
                Err(e) => CommandResult::Error(e),
            },
            Command::SetLeaseTtl { lease_id, ttl_ms } => match self.leases.get_mut(lease_id) {
                Some(lease) => {
                    lease.ttl_ms = *ttl_ms;
                    fx.events.push(StateEvent::LeaseArmed {
                        lease_id: *lease_id,
                        ttl_ms: *ttl_ms,
                    });
                    CommandResult::LeaseUpdated {
                        lease_id: *lease_id,
                        ttl_ms: *ttl_ms,
                    }
                }
                None => CommandResult::Error(SmError::LeaseNotFound {
                    lease_id: *lease_id,
                }),
            },
            Command::RevokeLease { lease_id } => self.end_lease(*lease_id, EndReason::Revoked, fx),
            Command::ExpireLease { lease_id } => self.end_lease(*lease_id, EndReason::Expired, fx),
            Command::Acquire(acquire) => self.acquire(acquire, fx),
            Command::CancelWait {
                kind,
                key,
                lease_id,
            } => self.cancel_wait(*kind, key, *lease_id, fx),
            Command::Release {
                kind,
                key,
                owner,
                token,
            } => self.release(*kind, key, owner, *token, fx),
            Command::Extend {
                kind,
                key,
                owner,
                token,
                ttl_ms,
            } => self.extend(*kind, key, owner, *token, *ttl_ms, fx),
            Command::SetValue {
                kind,
                key,
                owner,
                token,
                value,
            } => {
                let rid = (*kind, key.clone());
                let Some(resource) = self.resources.get_mut(&rid) else {
                    return CommandResult::Error(SmError::NotOwner);
                };
                let Some(hold) = resource
                    .holders
                    .iter_mut()
                    .find(|h| h.token == *token && h.owner == *owner)
                else {
                    return CommandResult::Error(SmError::NotOwner);
                };
                hold.value = value.clone();
                resource.mod_index = fx.index;
                let hold = hold.clone();
                CommandResult::ValueSet(self.view(&rid, &hold))
            }
            Command::Promote { kind, key } => {
                let rid = (*kind, key.clone());
                self.promote(&rid, fx);
                CommandResult::Promoted
            }
        }
    }

    fn create_lease(
        &mut self,
        ttl_ms: u64,
        owner: &str,
        implicit: bool,
        max_leases: u64,
        fx: &mut Effects<'_>,
    ) -> Result<LeaseId, SmError> {
        if self.leases.len() as u64 >= max_leases {
            return Err(SmError::TooManyLeases { max: max_leases });
        }
        self.last_lease_id += 1;
        let lease_id = self.last_lease_id;
        self.leases.insert(
            lease_id,
            Lease {
                id: lease_id,
                ttl_ms,
                owner: owner.to_string(),
                created_at_ms: fx.now_ms,
                implicit,
                holds: BTreeSet::new(),
                waits: BTreeSet::new(),
            },
        );
        fx.events.push(StateEvent::LeaseArmed { lease_id, ttl_ms });
        Ok(lease_id)
    }

    fn acquire(&mut self, a: &Acquire, fx: &mut Effects<'_>) -> CommandResult {
        let rid = (a.kind, a.key.clone());
        if let LeaseSpec::Existing(lease_id) = &a.lease {
            let Some(lease) = self.leases.get(lease_id) else {
                return CommandResult::Error(SmError::LeaseNotFound {
                    lease_id: *lease_id,
                });
            };
            // Re-acquiring what this lease already holds is idempotent: same hold, same token.
            if lease.holds.contains(&rid) {
                if let Some(hold) = self
                    .resources
                    .get(&rid)
                    .and_then(|r| r.holders.iter().find(|h| h.lease_id == *lease_id))
                {
                    let hold = hold.clone();
                    return CommandResult::Granted(self.view(&rid, &hold));
                }
            }
            if lease.waits.contains(&rid) {
                return CommandResult::Error(SmError::AlreadyWaiting);
            }
        }
        let resource = self
            .resources
            .entry(rid.clone())
            .or_insert_with(|| Resource::new(a.limit));
        if resource.is_idle() {
            resource.limit = a.limit;
        } else if resource.limit != a.limit {
            return CommandResult::Error(SmError::LimitMismatch {
                limit: resource.limit,
            });
        }
        let delayed = fx.now_ms < resource.delay_until_ms;
        let free = resource.holders.len() < resource.limit as usize
            && resource.waiters.is_empty()
            && !delayed;
        if !free && !a.wait {
            let reason = if delayed && resource.holders.len() < resource.limit as usize {
                BusyReason::Delayed {
                    until_ms: resource.delay_until_ms,
                }
            } else {
                BusyReason::Held
            };
            let holders = resource.holders.clone();
            fx.touched.insert(rid.clone());
            return CommandResult::Busy {
                holders: holders.iter().map(|h| self.view(&rid, h)).collect(),
                reason,
            };
        }
        if !free && resource.waiters.len() >= a.max_waiters as usize {
            fx.touched.insert(rid.clone());
            return CommandResult::Error(SmError::TooManyWaiters { max: a.max_waiters });
        }
        let (lease_id, implicit) = match &a.lease {
            LeaseSpec::Existing(lease_id) => (*lease_id, false),
            LeaseSpec::New { ttl_ms } => {
                match self.create_lease(*ttl_ms, &a.owner, true, a.max_leases, fx) {
                    Ok(lease_id) => (lease_id, true),
                    Err(e) => {
                        fx.touched.insert(rid.clone());
                        return CommandResult::Error(e);
                    }
                }
            }
        };
        fx.touched.insert(rid.clone());
        if free {
            let hold = self.grant(
                &rid,
                Waiter {
                    owner: a.owner.clone(),
                    lease_id,
                    value: a.value.clone(),
                    lock_delay_ms: a.lock_delay_ms,
                    enqueued_at_ms: fx.now_ms,
                    implicit_lease: implicit,
                },
                None,
                fx,
            );
            return CommandResult::Granted(self.view(&rid, &hold));
        }
        let Some(resource) = self.resources.get_mut(&rid) else {
            unreachable!("inserted above");
        };
        resource.waiters.push_back(Waiter {
            owner: a.owner.clone(),
            lease_id,
            value: a.value.clone(),
            lock_delay_ms: a.lock_delay_ms,
            enqueued_at_ms: fx.now_ms,
            implicit_lease: implicit,
        });
        resource.mod_index = fx.index;
        let position = resource.waiters.len() as u32;
        if let Some(lease) = self.leases.get_mut(&lease_id) {
            lease.waits.insert(rid.clone());
        }
        CommandResult::Queued {
            lease_id,
            position,
            implicit_lease: implicit,
        }
    }

    /// Make `waiter` a holder of `rid`. The caller checked there is a free slot.
    fn grant(
        &mut self,
        rid: &ResourceId,
        waiter: Waiter,
        waited_ms: Option<u64>,
        fx: &mut Effects<'_>,
    ) -> Hold {
        self.last_token += 1;
        let hold = Hold {
            owner: waiter.owner,
            token: self.last_token,
            lease_id: waiter.lease_id,
            locked_at_ms: fx.now_ms,
            value: waiter.value,
            lock_delay_ms: waiter.lock_delay_ms,
        };
        if let Some(lease) = self.leases.get_mut(&hold.lease_id) {
            lease.waits.remove(rid);
            lease.holds.insert(rid.clone());
        }
        let resource = self
            .resources
            .entry(rid.clone())
            .or_insert_with(|| Resource::new(1));
        resource.acquisitions += 1;
        resource.mod_index = fx.index;
        resource.holders.push(hold.clone());
        resource.record(HistoryRecord {
            event: HistoryKind::Acquired,
            owner: hold.owner.clone(),
            token: hold.token,
            at_ms: fx.now_ms,
            held_ms: None,
            waited_ms,
        });
        fx.touched.insert(rid.clone());
        hold
    }

    /// Pass free slots of `rid` to the head of its queue, in order.
    fn promote(&mut self, rid: &ResourceId, fx: &mut Effects<'_>) {
        loop {
            let Some(resource) = self.resources.get_mut(rid) else {
                return;
            };
            if resource.holders.len() >= resource.limit as usize || resource.waiters.is_empty() {
                return;
            }
            if fx.now_ms < resource.delay_until_ms {
                fx.events.push(StateEvent::DelayUntil {
                    kind: rid.0,
                    key: rid.1.clone(),
                    until_ms: resource.delay_until_ms,
                });
                return;
            }
            let Some(waiter) = resource.waiters.pop_front() else {
                return;
            };
            let waited_ms = fx.now_ms.saturating_sub(waiter.enqueued_at_ms);
            self.grant(rid, waiter, Some(waited_ms), fx);
        }
    }

    /// Remove `hold` from `rid` as ended by `reason`, recording it. Does not promote.
    fn end_hold(
        &mut self,
        rid: &ResourceId,
        token: Token,
        reason: EndReason,
        fx: &mut Effects<'_>,
    ) {
        let Some(resource) = self.resources.get_mut(rid) else {
            return;
        };
        let Some(pos) = resource.holders.iter().position(|h| h.token == token) else {
            return;
        };
        let hold = resource.holders.remove(pos);
        resource.mod_index = fx.index;
        resource.record(HistoryRecord {
            event: reason.into(),
            owner: hold.owner.clone(),
            token: hold.token,
            at_ms: fx.now_ms,
            held_ms: Some(fx.now_ms.saturating_sub(hold.locked_at_ms)),
            waited_ms: None,
        });
        resource.last_end = Some(EndRecord {
            reason,
            owner: hold.owner.clone(),
            token: hold.token,
            at_ms: fx.now_ms,
            index: fx.index,
        });
        if reason == EndReason::Expired {
            if hold.lock_delay_ms > 0 {
                let until_ms = fx.now_ms.saturating_add(hold.lock_delay_ms);
                if until_ms > resource.delay_until_ms {
                    self.delayed.remove(&(resource.delay_until_ms, rid.clone()));
                    resource.delay_until_ms = until_ms;
                    self.delayed.insert((until_ms, rid.clone()));
                }
            }
            if self.expired.len() == EXPIRED_RING_CAPACITY {
                self.expired.pop_front();
            }
            self.expired.push_back(ExpiredRecord {
                kind: rid.0,
                key: rid.1.clone(),
                owner: hold.owner.clone(),
                token: hold.token,
                expired_at_ms: fx.now_ms,
            });
        }
        if let Some(lease) = self.leases.get_mut(&hold.lease_id) {
            lease.holds.remove(rid);
        }
        fx.touched.insert(rid.clone());
    }

    fn end_lease(
        &mut self,
        lease_id: LeaseId,
        reason: EndReason,
        fx: &mut Effects<'_>,
    ) -> CommandResult {
        let Some(lease) = self.leases.remove(&lease_id) else {
            return CommandResult::Error(SmError::LeaseNotFound { lease_id });
        };
        fx.events.push(StateEvent::LeaseGone { lease_id });
        for rid in &lease.waits {
            if let Some(resource) = self.resources.get_mut(rid) {
                resource.waiters.retain(|w| w.lease_id != lease_id);
                resource.mod_index = fx.index;
                fx.touched.insert(rid.clone());
            }
        }
        let mut released = Vec::with_capacity(lease.holds.len());
        for rid in &lease.holds {
            let token = self
                .resources
                .get(rid)
                .and_then(|r| r.holders.iter().find(|h| h.lease_id == lease_id))
                .map(|h| h.token);
            if let Some(token) = token {
                self.end_hold(rid, token, reason, fx);
                released.push(rid.clone());
            }
        }
        // Promote after every hold of the lease is gone, so waiters see all freed slots.
        for rid in lease.holds.iter().chain(lease.waits.iter()) {
            self.promote(rid, fx);
        }
        CommandResult::LeaseEnded { released }
    }

    fn cancel_wait(
        &mut self,
        kind: Kind,
        key: &str,
        lease_id: LeaseId,
        fx: &mut Effects<'_>,
    ) -> CommandResult {
        let rid = (kind, key.to_string());
        let Some(resource) = self.resources.get_mut(&rid) else {
            return CommandResult::Error(SmError::NotFound);
        };
        if let Some(pos) = resource.waiters.iter().position(|w| w.lease_id == lease_id) {
            let waiter = resource.waiters.remove(pos);
            resource.mod_index = fx.index;
            fx.touched.insert(rid.clone());
            if let Some(waiter) = waiter {
                if waiter.implicit_lease {
                    self.end_lease(lease_id, EndReason::Revoked, fx);
                } else if let Some(lease) = self.leases.get_mut(&lease_id) {
                    lease.waits.remove(&rid);
                }
            }
            // The queue head may have changed only for semaphores with free slots; be exact.
            self.promote(&rid, fx);
            return CommandResult::WaitCancelled;
        }
        // The grant raced the cancellation: hand back the grant, never leak it.
        if let Some(hold) = resource.holders.iter().find(|h| h.lease_id == lease_id) {
            let hold = hold.clone();
            return CommandResult::Granted(self.view(&rid, &hold));
        }
        CommandResult::Error(SmError::NotFound)
    }

    fn release(
        &mut self,
        kind: Kind,
        key: &str,
        owner: &str,
        token: Token,
        fx: &mut Effects<'_>,
    ) -> CommandResult {
        let rid = (kind, key.to_string());
        let Some(hold) = self
            .resources
            .get(&rid)
            .and_then(|r| {
                r.holders
                    .iter()
                    .find(|h| h.token == token && h.owner == owner)
            })
            .cloned()
        else {
            return CommandResult::Error(SmError::NotOwner);
        };
        self.end_hold(&rid, token, EndReason::Released, fx);
        // An implicit lease exists for this one hold; it ends with it.
        let lease_done = self
            .leases
            .get(&hold.lease_id)
            .is_some_and(|l| l.implicit && l.holds.is_empty() && l.waits.is_empty());
        if lease_done {
            self.leases.remove(&hold.lease_id);
            fx.events.push(StateEvent::LeaseGone {
                lease_id: hold.lease_id,
            });
        }
        self.promote(&rid, fx);
        CommandResult::Released
    }

    fn extend(
        &mut self,
        kind: Kind,
        key: &str,
        owner: &str,
        token: Token,
        ttl_ms: Option<u64>,
        fx: &mut Effects<'_>,
    ) -> CommandResult {
        let rid = (kind, key.to_string());
        let Some(lease_id) = self
            .resources
            .get(&rid)
            .and_then(|r| {
                r.holders
                    .iter()
                    .find(|h| h.token == token && h.owner == owner)
            })
            .map(|h| h.lease_id)
        else {
            return CommandResult::Error(SmError::NotOwner);
        };
        let Some(lease) = self.leases.get_mut(&lease_id) else {
            return CommandResult::Error(SmError::LeaseNotFound { lease_id });
        };
        if let Some(ttl_ms) = ttl_ms {
            lease.ttl_ms = ttl_ms;
        }
        // Re-arm either way: an extend is a keepalive of the hold's lease.
        fx.events.push(StateEvent::LeaseArmed {
            lease_id,
            ttl_ms: lease.ttl_ms,
        });
        CommandResult::Extended {
            token,
            lease_id,
            ttl_ms: lease.ttl_ms,
        }
    }

    fn reindex_idle(&mut self, rid: &ResourceId) {
        let Some(resource) = self.resources.get_mut(rid) else {
            return;
        };
        let idle = resource.is_idle();
        match (idle, resource.idle_since) {
            (true, Some(since)) if since == resource.mod_index => {}
            (true, since) => {
                if let Some(since) = since {
                    self.idle.remove(&(since, rid.clone()));
                }
                resource.idle_since = Some(resource.mod_index);
                self.idle.insert((resource.mod_index, rid.clone()));
            }
            (false, Some(since)) => {
                self.idle.remove(&(since, rid.clone()));
                resource.idle_since = None;
            }
            (false, None) => {}
        }
        while self.idle.len() > MAX_IDLE_RESOURCES {
            if let Some((_, oldest)) = self.idle.pop_first() {
                if let Some(gone) = self.resources.remove(&oldest) {
                    self.delayed.remove(&(gone.delay_until_ms, oldest));
                }
            }
        }
    }

    fn view(&self, rid: &ResourceId, hold: &Hold) -> HoldView {
        let resource = self.resources.get(rid);
        HoldView {
            kind: rid.0,
            key: rid.1.clone(),
            owner: hold.owner.clone(),
            token: hold.token,
            lease_id: hold.lease_id,
            ttl_ms: self.leases.get(&hold.lease_id).map_or(0, |l| l.ttl_ms),
            locked_at_ms: hold.locked_at_ms,
            acquisitions: resource.map_or(0, |r| r.acquisitions),
            value: hold.value.clone(),
            limit: resource.map_or(1, |r| r.limit),
        }
    }

    // ----- queries (read-only; the node decides how fresh a read must be) -----

    /// The log index of the last applied entry.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The replicated clock: the newest entry timestamp applied.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn last_token(&self) -> Token {
        self.last_token
    }

    pub fn lease(&self, lease_id: LeaseId) -> Option<&Lease> {
        self.leases.get(&lease_id)
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Leases with id greater than `after`, in id order.
    pub fn leases_after(&self, after: LeaseId) -> impl Iterator<Item = &Lease> {
        self.leases
            .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .map(|(_, l)| l)
    }

    pub fn resource(&self, kind: Kind, key: &str) -> Option<&Resource> {
        self.resources.get(&(kind, key.to_string()))
    }

    /// Held resources of `kind` whose key starts with `prefix` and sorts after `after`.
    pub fn held_after<'a>(
        &'a self,
        kind: Kind,
        prefix: &'a str,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a str, &'a Resource)> + 'a {
        let start = match after {
            Some(after) => std::ops::Bound::Excluded((kind, after.to_string())),
            None => std::ops::Bound::Included((kind, prefix.to_string())),
        };
        self.resources
            .range((start, std::ops::Bound::Unbounded))
            .take_while(move |((k, _), _)| *k == kind)
            .filter(move |((_, key), _)| key.starts_with(prefix))
            .filter(|(_, r)| !r.holders.is_empty())
            .map(|((_, key), r)| (key.as_str(), r))
    }

    /// Resources with waiters that are held back by lock-delay: (kind, key, until_ms).
    pub fn delayed(&self) -> impl Iterator<Item = (Kind, &str, u64)> {
        self.resources
            .iter()
            .filter(|(_, r)| !r.waiters.is_empty() && r.holders.len() < r.limit as usize)
            .map(|((kind, key), r)| (*kind, key.as_str(), r.delay_until_ms))
    }

    /// Every live lease as (id, ttl_ms), for a new leader to re-arm.
    pub fn lease_ttls(&self) -> impl Iterator<Item = (LeaseId, u64)> + '_ {
        self.leases.values().map(|l| (l.id, l.ttl_ms))
    }

    /// The most recent expirations, newest first.
    pub fn expired_recent(&self, limit: usize) -> impl Iterator<Item = &ExpiredRecord> {
        self.expired.iter().rev().take(limit)
    }

    /// A hold's public view.
    pub fn hold_view(&self, kind: Kind, key: &str, hold: &Hold) -> HoldView {
        self.view(&(kind, key.to_string()), hold)
    }

    /// The hold of `rid` owned by `owner` with `token`, if it is current.
    pub fn find_hold(&self, kind: Kind, key: &str, owner: &str, token: Token) -> Option<&Hold> {
        self.resource(kind, key).and_then(|r| {
            r.holders
                .iter()
                .find(|h| h.token == token && h.owner == owner)
        })
    }

    // ----- snapshots -----

    /// Encode the whole state, versioned, as bincode bytes (byte-identical for equal states).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![STATE_FORMAT_VERSION];
        // Encoding plain owned data into a Vec cannot fail.
        let body = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("encoding the state into memory cannot fail");
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if version != STATE_FORMAT_VERSION {
            return Err(DecodeError::Version(version));
        }
        let (state, read) =
            bincode::serde::decode_from_slice::<Self, _>(body, bincode::config::standard())
                .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        if read != body.len() {
            return Err(DecodeError::Corrupt(format!(
                "{} trailing bytes after the state",
                body.len() - read
            )));
        }
        Ok(state)
    }

    /// Check the structural invariants; used by tests and by debug assertions.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (rid, r) in &self.resources {
            if r.holders.len() > r.limit as usize {
                return Err(format!(
                    "{rid:?} has {} holders over limit {}",
                    r.holders.len(),
                    r.limit
                ));
            }
            for h in &r.holders {
                let lease = self
                    .leases
                    .get(&h.lease_id)
                    .ok_or_else(|| format!("{rid:?} held under missing lease {}", h.lease_id))?;
                if !lease.holds.contains(rid) {
                    return Err(format!(
                        "lease {} does not list its hold {rid:?}",
                        h.lease_id
                    ));
                }
                if h.token > self.last_token {
                    return Err(format!(
                        "{rid:?} token {} above last {}",
                        h.token, self.last_token
                    ));
                }
            }
            for w in &r.waiters {
                let lease = self
                    .leases
                    .get(&w.lease_id)
                    .ok_or_else(|| format!("{rid:?} waiter under missing lease {}", w.lease_id))?;
                if !lease.waits.contains(rid) {
                    return Err(format!(
                        "lease {} does not list its wait {rid:?}",
                        w.lease_id
                    ));
                }
            }
            if !r.waiters.is_empty()
                && r.holders.len() < r.limit as usize
                && self.now_ms >= r.delay_until_ms
            {
                return Err(format!("{rid:?} has a free slot and waiters"));
            }
        }
        for lease in self.leases.values() {
            for rid in &lease.holds {
                let held = self
                    .resources
                    .get(rid)
                    .is_some_and(|r| r.holders.iter().any(|h| h.lease_id == lease.id));
                if !held {
                    return Err(format!("lease {} lists {rid:?} it does not hold", lease.id));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "state/tests.rs"]
mod tests;
