//! Structural invariants of [`LeaseState`], checked by tests and by debug assertions.

use super::LeaseState;

impl LeaseState {
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
