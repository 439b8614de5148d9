//! Lease lifecycle: creating a lease (explicit or implicit for a single acquire) and ending
//! one (revoke or expiry), which releases every hold and waiter under it in the same step.

use crate::command::{CommandResult, EndReason, LeaseId, SmError};
use std::sync::Arc;

use super::apply::Effects;
use super::{KeySet, Lease, LeaseState, StateEvent};

impl LeaseState {
    pub(super) fn create_lease(
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
        let principal = fx.caller.map(|c| c.principal.clone());
        if let Some(caller) = fx.caller {
            let live = self
                .principal_leases
                .get(&caller.principal)
                .copied()
                .unwrap_or(0);
            if let Some(max) = caller.max_leases.filter(|&max| live >= max) {
                return Err(SmError::PrincipalQuota {
                    principal: caller.principal.clone(),
                    max,
                });
            }
        }
        if let Some(p) = &principal {
            *self.principal_leases.entry(p.clone()).or_default() += 1;
        }
        self.last_lease_id += 1;
        let lease_id = self.last_lease_id;
        self.leases.insert(
            lease_id,
            Arc::new(Lease {
                id: lease_id,
                ttl_ms,
                owner: owner.to_string(),
                created_at_ms: fx.now_ms,
                implicit,
                holds: KeySet::new(),
                waits: KeySet::new(),
                principal,
            }),
        );
        fx.events.push(StateEvent::LeaseArmed { lease_id, ttl_ms });
        Ok(lease_id)
    }

    pub(super) fn end_lease(
        &mut self,
        lease_id: LeaseId,
        reason: EndReason,
        fx: &mut Effects<'_>,
    ) -> CommandResult {
        let Some(lease) = self.leases.get(&lease_id).cloned() else {
            return CommandResult::Error(SmError::LeaseNotFound { lease_id });
        };
        fx.events.push(StateEvent::LeaseGone { lease_id });
        if reason == EndReason::Expired {
            self.counts.expired += 1;
        }
        for rid in &lease.waits {
            if let Some(resource) = self.resources.get_mut(rid).map(Arc::make_mut) {
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
        self.remove_lease(lease_id);
        // Promote after every hold of the lease is gone, so waiters see all freed slots.
        for rid in lease.holds.iter().chain(lease.waits.iter()) {
            self.promote(rid, fx);
        }
        CommandResult::LeaseEnded { released }
    }

    /// Forget a lease (every removal goes through here, so the per-principal counts stay
    /// exact).
    pub(super) fn remove_lease(&mut self, lease_id: LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(&lease_id)?;
        if let Some(p) = &lease.principal {
            if let Some(n) = self.principal_leases.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    self.principal_leases.remove(p);
                }
            }
        }
        Some(Arc::unwrap_or_clone(lease))
    }
}
