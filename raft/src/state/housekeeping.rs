//! Bookkeeping that keeps the state bounded and on time: ending elapsed lock-delays, pruning
//! the request-id dedupe window, and the idle-resource index that forgets the oldest idle keys.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::command::{LeaseId, ResourceId};

use super::apply::Effects;
use super::{
    LeaseState, StateEvent, DEDUPE_MAX_ENTRIES, DEDUPE_MIN_WINDOW_MS, DEDUPE_WINDOW_MS,
    MAX_IDLE_RESOURCES,
};

impl LeaseState {
    /// Grant the waiters of keys whose lock-delay has ended by this entry's time.
    pub(super) fn end_elapsed_delays(
        &mut self,
        index: u64,
        term: u64,
        events: &mut Vec<StateEvent>,
    ) {
        while let Some((until_ms, _)) = self.delayed.get_min() {
            if *until_ms > self.now_ms {
                break;
            }
            let Some((_, rid)) = self.delayed.remove_min() else {
                break;
            };
            let mut fx = Effects {
                index,
                term,
                now_ms: self.now_ms,
                events: &mut *events,
                touched: BTreeSet::new(),
                caller: None,
            };
            self.promote(&rid, &mut fx);
            for rid in std::mem::take(&mut fx.touched) {
                self.reindex_idle(&rid);
            }
        }
    }

    /// Forget the ids past the window. `min_window`: the entry's rule keeps every id for
    /// [`DEDUPE_MIN_WINDOW_MS`] whatever the count (`Batch::V3`); older entries prune by
    /// count alone, as the binaries that wrote them did.
    pub(super) fn prune_dedupe(&mut self, min_window: bool) {
        while let Some((at_ms, _)) = self.dedupe_order.front() {
            // Count only ever prunes ids older than the minimum window.
            let past_min = !min_window || at_ms.saturating_add(DEDUPE_MIN_WINDOW_MS) < self.now_ms;
            let too_many = past_min && self.dedupe_order.len() > DEDUPE_MAX_ENTRIES;
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

    pub(super) fn reindex_idle(&mut self, rid: &ResourceId) {
        let Some(resource) = self.resources.get_mut(rid).map(Arc::make_mut) else {
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
            if let Some((_, oldest)) = self.idle.remove_min() {
                if let Some(gone) = self.resources.remove(&oldest) {
                    self.delayed.remove(&(gone.delay_until_ms, oldest));
                }
            }
        }
    }
}

/// The highest token or lease id a restore may raise the floors to (2^53 - 1).
pub const MAX_SAFE_FLOOR: u64 = (1 << 53) - 1;

impl LeaseState {
    /// Raise the token and lease-id floors by `by`, for a state restored from a backup:
    /// the cluster the backup came from may have issued tokens and lease ids after it was
    /// taken, and the restored cluster must never issue those again (a fenced resource
    /// that saw one would otherwise be handed it twice; a client of the old cluster could
    /// keep alive a new lease that reused its old lease's id). Both must stay at most
    /// [`MAX_SAFE_FLOOR`] (2^53 - 1, the largest integer every JSON client reads exactly);
    /// otherwise nothing changes and the error says by how much `by` may be at most.
    pub fn raise_floors(&mut self, by: u64) -> Result<(), String> {
        let highest = self.last_token.max(self.last_lease_id);
        let room = MAX_SAFE_FLOOR.saturating_sub(highest);
        if by > room {
            return Err(format!(
                "raising the token and lease-id floors by {by} would pass 2^53 - 1 (the \
                 largest integer every JSON client reads exactly); the highest is {highest}, \
                 so raise them by at most {room}"
            ));
        }
        self.last_token += by;
        self.last_lease_id += by;
        Ok(())
    }

    /// The data-directory identity member `node_id` recorded, if any.
    pub fn incarnation(&self, node_id: u64) -> Option<u64> {
        self.incarnations.get(&node_id).copied()
    }

    /// Forget every member's recorded identity: a state restored into a new cluster, whose
    /// members are new directories.
    pub fn forget_incarnations(&mut self) {
        self.incarnations.clear();
    }

    /// How many keys (held, queued or idle with history) the state tracks.
    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    /// The highest lease id issued so far.
    pub fn last_lease_id(&self) -> LeaseId {
        self.last_lease_id
    }
}
