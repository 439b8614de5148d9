//! The resource logic shared by locks, names and semaphores: acquire (grant or queue),
//! grant and promotion of waiters into free slots, ending a hold, cancelling a wait,
//! release and extend.

use crate::command::{
    Acquire, BusyReason, CommandResult, EndReason, Kind, LeaseId, LeaseSpec, ResourceId, SmError,
    Token,
};
use std::sync::Arc;

use super::apply::Effects;
use super::{
    EndRecord, ExpiredRecord, HistoryKind, HistoryRecord, Hold, LeaseState, Resource, StateEvent,
    Waiter, EXPIRED_RING_CAPACITY,
};

impl LeaseState {
    pub(super) fn acquire(&mut self, a: &Acquire, fx: &mut Effects<'_>) -> CommandResult {
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
            .or_insert_with(|| Arc::new(Resource::new(a.limit)));
        let resource = Arc::make_mut(resource);
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
        let Some(resource) = self.resources.get_mut(&rid).map(Arc::make_mut) else {
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
        if let Some(lease) = self.leases.get_mut(&lease_id).map(Arc::make_mut) {
            lease.waits.insert(rid.clone());
        }
        CommandResult::Queued {
            lease_id,
            position,
            implicit_lease: implicit,
        }
    }

    /// Make `waiter` a holder of `rid`. The caller checked there is a free slot.
    pub(super) fn grant(
        &mut self,
        rid: &ResourceId,
        waiter: Waiter,
        waited_ms: Option<u64>,
        fx: &mut Effects<'_>,
    ) -> Hold {
        self.counts.grants[rid.0 as usize] += 1;
        if waited_ms.is_some() {
            self.counts.handoffs[rid.0 as usize] += 1;
        }
        self.last_token += 1;
        let hold = Hold {
            owner: waiter.owner,
            token: self.last_token,
            lease_id: waiter.lease_id,
            locked_at_ms: fx.now_ms,
            value: waiter.value,
            lock_delay_ms: waiter.lock_delay_ms,
        };
        if let Some(lease) = self.leases.get_mut(&hold.lease_id).map(Arc::make_mut) {
            lease.waits.remove(rid);
            lease.holds.insert(rid.clone());
        }
        let resource = self
            .resources
            .entry(rid.clone())
            .or_insert_with(|| Arc::new(Resource::new(1)));
        let resource = Arc::make_mut(resource);
        resource.acquisitions += 1;
        resource.mod_index = fx.index;
        resource.push_holder(hold.clone());
        let principal = self
            .leases
            .get(&hold.lease_id)
            .and_then(|l| l.principal.clone());
        let resource = self
            .resources
            .get_mut(rid)
            .map(Arc::make_mut)
            .expect("the resource was inserted above");
        resource.record(HistoryRecord {
            event: HistoryKind::Acquired,
            owner: hold.owner.clone(),
            token: hold.token,
            at_ms: fx.now_ms,
            held_ms: None,
            waited_ms,
            principal,
        });
        fx.touched.insert(rid.clone());
        hold
    }

    /// Pass free slots of `rid` to the head of its queue, in order.
    pub(super) fn promote(&mut self, rid: &ResourceId, fx: &mut Effects<'_>) {
        loop {
            let Some(resource) = self.resources.get_mut(rid).map(Arc::make_mut) else {
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
    pub(super) fn end_hold(
        &mut self,
        rid: &ResourceId,
        token: Token,
        reason: EndReason,
        fx: &mut Effects<'_>,
    ) {
        let Some(resource) = self.resources.get(rid) else {
            return;
        };
        let Some(pos) = resource.holders.iter().position(|h| h.token == token) else {
            return;
        };
        let principal = self
            .leases
            .get(&resource.holders[pos].lease_id)
            .and_then(|l| l.principal.clone());
        let Some(resource) = self.resources.get_mut(rid).map(Arc::make_mut) else {
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
            principal,
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
        if let Some(lease) = self.leases.get_mut(&hold.lease_id).map(Arc::make_mut) {
            lease.holds.remove(rid);
        }
        fx.touched.insert(rid.clone());
    }

    pub(super) fn cancel_wait(
        &mut self,
        kind: Kind,
        key: &str,
        lease_id: LeaseId,
        fx: &mut Effects<'_>,
    ) -> CommandResult {
        let rid = (kind, key.to_string());
        let Some(resource) = self.resources.get_mut(&rid).map(Arc::make_mut) else {
            return CommandResult::Error(SmError::NotFound);
        };
        if let Some(pos) = resource.waiters.iter().position(|w| w.lease_id == lease_id) {
            let waiter = resource.waiters.remove(pos);
            resource.mod_index = fx.index;
            fx.touched.insert(rid.clone());
            if let Some(waiter) = waiter {
                if waiter.implicit_lease {
                    self.end_lease(lease_id, EndReason::Revoked, fx);
                } else if let Some(lease) = self.leases.get_mut(&lease_id).map(Arc::make_mut) {
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

    pub(super) fn release(
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
            return CommandResult::Error(self.not_owner(&rid, token));
        };
        self.end_hold(&rid, token, EndReason::Released, fx);
        self.end_implicit_lease(hold.lease_id, fx);
        self.promote(&rid, fx);
        CommandResult::Released
    }

    /// An implicit lease exists for one hold (or wait); once it has neither, it ends.
    fn end_implicit_lease(&mut self, lease_id: LeaseId, fx: &mut Effects<'_>) {
        let done = self
            .leases
            .get(&lease_id)
            .is_some_and(|l| l.implicit && l.holds.is_empty() && l.waits.is_empty());
        if done {
            self.remove_lease(lease_id);
            fx.events.push(StateEvent::LeaseGone { lease_id });
        }
    }

    /// Why `token` is not a holder of `rid`: [`SmError::Stolen`] if an operator
    /// force-released it (and the key's history still says so), else `NotOwner`.
    pub fn not_owner(&self, rid: &ResourceId, token: Token) -> SmError {
        let stolen = self.resources.get(rid).and_then(|r| {
            r.history
                .iter()
                .rev()
                .find(|e| e.token == token && e.event == HistoryKind::Stolen)
        });
        match stolen {
            Some(e) => SmError::Stolen {
                by: e.principal.clone(),
            },
            None => SmError::NotOwner,
        }
    }

    /// An operator ends a hold of `kind/key` whoever owns it (the one with `token`, or the
    /// only one), records it as `stolen` by `by`, and grants the next waiter at once.
    pub(super) fn force_release(
        &mut self,
        kind: Kind,
        key: &str,
        token: Option<Token>,
        by: Option<String>,
        fx: &mut Effects<'_>,
    ) -> CommandResult {
        let rid = (kind, key.to_string());
        let Some(resource) = self.resources.get(&rid) else {
            return CommandResult::Error(SmError::NotFound);
        };
        let hold = match token {
            Some(token) => resource.holders.iter().find(|h| h.token == token),
            None if resource.holders.len() > 1 => {
                return CommandResult::Error(SmError::SlotTokenRequired {
                    holders: resource.holders.len() as u32,
                })
            }
            None => resource.holders.first(),
        };
        let Some(hold) = hold.cloned() else {
            return CommandResult::Error(SmError::NotFound);
        };
        self.end_hold(&rid, hold.token, EndReason::Stolen, fx);
        if let Some(resource) = self.resources.get_mut(&rid).map(Arc::make_mut) {
            // The event names who forced it, not the hold's principal.
            if let Some(event) = resource.history.back_mut() {
                event.principal = by;
            }
        }
        self.end_implicit_lease(hold.lease_id, fx);
        self.promote(&rid, fx);
        CommandResult::ForceReleased {
            owner: hold.owner,
            token: hold.token,
        }
    }

    pub(super) fn extend(
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
            return CommandResult::Error(self.not_owner(&rid, token));
        };
        let Some(lease) = self.leases.get_mut(&lease_id).map(Arc::make_mut) else {
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
}
