//! Applying a log entry: [`LeaseState::apply_batch`], request-id dedupe on the way in, and
//! the dispatch of each [`Command`] to the lease and resource logic.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::command::{
    Batch, BatchResult, Caller, Command, CommandResult, EndReason, Kind, LeaseId, ResourceId,
    SmError, Token,
};

use super::model::{DedupeEntry, Lease};
use super::{LeaseState, StateEvent};

/// What one command did to the state, beyond its result.
pub(super) struct Effects<'a> {
    pub(super) index: u64,
    /// The term of the entry being applied (the leader that appended it).
    pub(super) term: u64,
    pub(super) now_ms: u64,
    pub(super) events: &'a mut Vec<StateEvent>,
    pub(super) touched: BTreeSet<ResourceId>,
    /// Who the command acts for (`None`: trusted).
    pub(super) caller: Option<&'a Caller>,
}

impl LeaseState {
    /// Apply one log entry's batch, the entry at `index` appended in `term`; events for the
    /// actors are pushed to `events`.
    pub fn apply_batch(
        &mut self,
        index: u64,
        term: u64,
        batch: &Batch,
        events: &mut Vec<StateEvent>,
    ) -> BatchResult {
        let proposed_at_ms = match batch {
            Batch::V1 { proposed_at_ms, .. }
            | Batch::V2 { proposed_at_ms, .. }
            | Batch::V3 { proposed_at_ms, .. } => *proposed_at_ms,
        };
        self.last_index = index;
        self.counts.entries += 1;
        self.now_ms = self.now_ms.max(proposed_at_ms);
        self.end_elapsed_delays(index, term, events);
        let mut results = Vec::with_capacity(batch.len());
        match batch {
            Batch::V1 { proposals, .. } => {
                for p in proposals {
                    let result = self.apply_proposal(
                        (index, term),
                        p.request_id.as_ref(),
                        &p.command,
                        None,
                        events,
                    );
                    results.push(result);
                }
            }
            Batch::V2 { proposals, .. } | Batch::V3 { proposals, .. } => {
                for p in proposals {
                    let (id, caller) = (p.request_id.as_ref(), p.caller.as_ref());
                    let at = (index, term);
                    results.push(self.apply_proposal(at, id, &p.command, caller, events));
                }
            }
        }
        self.prune_dedupe(matches!(batch, Batch::V3 { .. }));
        BatchResult { index, results }
    }

    pub(super) fn apply_proposal(
        &mut self,
        (index, term): (u64, u64),
        request_id: Option<&String>,
        command: &Command,
        caller: Option<&Caller>,
        events: &mut Vec<StateEvent>,
    ) -> CommandResult {
        // A principal's request ids are its own: another's retry never sees its result.
        // And an id is remembered for one operation on one key or lease: reused for
        // another, it is a new request (`Command::dedupe_scope`).
        let dedupe_key = request_id.map(|id| {
            let scope = command.dedupe_scope();
            match caller {
                Some(c) => format!("{}\u{0}{id}\u{0}{scope}", c.principal),
                None => format!("{id}\u{0}{scope}"),
            }
        });
        if let Some(key) = &dedupe_key {
            if let Some(entry) = self.dedupe.get(key) {
                return entry.result.clone();
            }
        }
        let result = match self.authorize(command, caller) {
            Err(e) => CommandResult::Error(e),
            Ok(()) => {
                let mut fx = Effects {
                    index,
                    term,
                    now_ms: self.now_ms,
                    events,
                    touched: BTreeSet::new(),
                    caller,
                };
                let result = self.apply_command(command, &mut fx);
                let touched = std::mem::take(&mut fx.touched);
                for rid in touched {
                    self.reindex_idle(&rid);
                }
                result
            }
        };
        if let Some(request_id) = dedupe_key {
            self.dedupe.insert(
                request_id.clone(),
                Arc::new(DedupeEntry {
                    at_ms: self.now_ms,
                    result: result.clone(),
                }),
            );
            self.dedupe_order.push_back((self.now_ms, request_id));
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
            Command::SetLeaseTtl { lease_id, ttl_ms } => {
                match self.leases.get_mut(lease_id).map(Arc::make_mut) {
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
                }
            }
            Command::RevokeLease { lease_id } => self.end_lease(*lease_id, EndReason::Revoked, fx),
            Command::ExpireLease { lease_id } => self.end_lease(*lease_id, EndReason::Expired, fx),
            // The deadline passed on the leader of `term`. Appended in a later term (that
            // leader lost and regained leadership before proposing it), it is stale: the
            // new term's takeover re-armed the lease and keepalives may have renewed it.
            Command::Expire { lease_id, term } => {
                if *term == fx.term {
                    self.end_lease(*lease_id, EndReason::Expired, fx)
                } else {
                    CommandResult::StaleExpiry
                }
            }
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
                let not_owner = self.not_owner(&rid, *token);
                let Some(resource) = self.resources.get_mut(&rid).map(Arc::make_mut) else {
                    return CommandResult::Error(not_owner);
                };
                let Some(hold) = resource
                    .holders
                    .iter_mut()
                    .find(|h| h.token == *token && h.owner == *owner)
                else {
                    return CommandResult::Error(not_owner);
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
            Command::ForceRelease { kind, key, token } => {
                let by = fx.caller.map(|c| c.principal.clone());
                self.force_release(*kind, key, *token, by, fx)
            }
            Command::RecordIncarnation {
                node_id,
                incarnation,
            } => {
                self.incarnations.insert(*node_id, *incarnation);
                CommandResult::IncarnationRecorded
            }
        }
    }

    /// May `caller` run `command`? Commands on a lease (by id, or on a hold through its
    /// lease) need the lease's principal or an admin. Key prefixes and roles are checked by
    /// the node before proposing; what needs the replicated state is checked here, so it
    /// holds on every replica and after failover.
    fn authorize(&self, command: &Command, caller: Option<&Caller>) -> Result<(), SmError> {
        let Some(caller) = caller.filter(|c| !c.admin) else {
            return Ok(());
        };
        match command {
            Command::SetLeaseTtl { lease_id, .. }
            | Command::RevokeLease { lease_id }
            | Command::ExpireLease { lease_id }
            | Command::Expire { lease_id, .. }
            | Command::CancelWait { lease_id, .. } => self.lease_access(*lease_id, caller),
            Command::Acquire(a) => match &a.lease {
                crate::command::LeaseSpec::Existing(lease_id) => {
                    self.lease_access(*lease_id, caller)
                }
                crate::command::LeaseSpec::New { .. } => Ok(()),
            },
            Command::Release {
                kind,
                key,
                owner,
                token,
            }
            | Command::Extend {
                kind,
                key,
                owner,
                token,
                ..
            }
            | Command::SetValue {
                kind,
                key,
                owner,
                token,
                ..
            } => self.hold_access(*kind, key, owner, *token, caller),
            Command::CreateLease { .. } | Command::Promote { .. } => Ok(()),
            // Only an admin may end another's hold (the node checks first; this holds it
            // on every replica).
            Command::ForceRelease { .. } | Command::RecordIncarnation { .. } => {
                Err(SmError::AdminRequired {
                    principal: caller.principal.clone(),
                })
            }
        }
    }

    /// The caller may use the lease (a missing lease is the command's own error).
    pub fn lease_access(&self, lease_id: LeaseId, caller: &Caller) -> Result<(), SmError> {
        match self.leases.get(&lease_id) {
            Some(lease) => Self::lease_owner_check(lease, caller),
            None => Ok(()),
        }
    }

    /// May `caller` use `lease`: its own principal's, or any for an admin.
    pub fn lease_owner_check(lease: &Lease, caller: &Caller) -> Result<(), SmError> {
        if caller.admin || lease.principal.as_deref() == Some(caller.principal.as_str()) {
            return Ok(());
        }
        Err(SmError::Forbidden {
            lease_id: lease.id,
            principal: caller.principal.clone(),
            lease_principal: lease.principal.clone(),
        })
    }

    /// The caller may act on the hold (a hold that is not current is the command's own
    /// `not_owner`).
    pub fn hold_access(
        &self,
        kind: Kind,
        key: &str,
        owner: &str,
        token: Token,
        caller: &Caller,
    ) -> Result<(), SmError> {
        match self.find_hold(kind, key, owner, token) {
            Some(hold) => self.lease_access(hold.lease_id, caller),
            None => Ok(()),
        }
    }
}
