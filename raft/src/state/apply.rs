//! Applying a log entry: [`LeaseState::apply_batch`], request-id dedupe on the way in, and
//! the dispatch of each [`Command`] to the lease and resource logic.

use std::collections::BTreeSet;

use crate::command::{
    Batch, BatchResult, Command, CommandResult, EndReason, Proposal, ResourceId, SmError,
};

use super::model::DedupeEntry;
use super::{LeaseState, StateEvent};

/// What one command did to the state, beyond its result.
pub(super) struct Effects<'a> {
    pub(super) index: u64,
    pub(super) now_ms: u64,
    pub(super) events: &'a mut Vec<StateEvent>,
    pub(super) touched: BTreeSet<ResourceId>,
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

    pub(super) fn apply_proposal(
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

    pub(super) fn apply_command(
        &mut self,
        command: &Command,
        fx: &mut Effects<'_>,
    ) -> CommandResult {
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
}
