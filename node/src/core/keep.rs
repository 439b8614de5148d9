//! Keepalives: a lease's or a hold's, batched toward the leader, answered there once its
//! leadership is confirmed (SPEC §2 rule 3).

use std::time::Duration;

use leasehold_raft::command::{Caller, Kind, LeaseId, Token};

use super::{unexpected, Core};
use crate::error::CoreError;
use crate::peer::{ForwardRequest, ForwardResponse, Keep};

impl Core {
    /// Keep a lease alive on the leader; `caller`, when set, must be allowed to use it.
    pub(crate) async fn keepalive_lease(
        &self,
        lease_id: LeaseId,
        caller: Option<Caller>,
    ) -> Result<u64, CoreError> {
        let (_, ttl_ms) = self.keep(Keep::Lease { lease_id, caller }).await?;
        Ok(ttl_ms)
    }

    /// Keep the lease of a current hold alive; `not_owner` if it is not current.
    pub(crate) async fn keepalive_hold(
        &self,
        kind: Kind,
        key: &str,
        owner: &str,
        token: Token,
        caller: Option<Caller>,
    ) -> Result<(LeaseId, u64), CoreError> {
        self.keep(Keep::Hold {
            kind,
            key: key.to_string(),
            owner: owner.to_string(),
            token,
            caller,
        })
        .await
    }

    /// One keepalive: on the leader straight to the (windowed) confirmer, elsewhere with
    /// the next batch.
    async fn keep(&self, keep: Keep) -> Result<(LeaseId, u64), CoreError> {
        self.check_storage()?;
        if self.is_leader() {
            let mut kept = self.keep_batch(vec![keep]).await?;
            return kept
                .pop()
                .unwrap_or_else(|| Err(unexpected(ForwardResponse::Done)));
        }
        self.keepalives.submit(keep).await
    }

    /// One keepalive on the leader, whose leadership in `term` was confirmed after the
    /// keepalive was sent.
    pub(super) async fn keep_locally(
        &self,
        keep: Keep,
        term: u64,
    ) -> Result<(LeaseId, u64), CoreError> {
        let lease_id = match keep {
            Keep::Lease { lease_id, caller } => {
                if let Some(caller) = &caller {
                    self.shared
                        .read(|s| s.lease_access(lease_id, caller))
                        .map_err(CoreError::Refused)?;
                }
                lease_id
            }
            Keep::Hold {
                kind,
                key,
                owner,
                token,
                caller,
            } => self
                .shared
                .read(|s| {
                    let Some(hold) = s.find_hold(kind, &key, &owner, token) else {
                        // Not a holder: say why (force-released, or simply gone).
                        return Err(s.not_owner(&(kind, key.clone()), token));
                    };
                    match &caller {
                        Some(caller) => s.lease_access(hold.lease_id, caller),
                        None => Ok(()),
                    }
                    .map(|()| hold.lease_id)
                })
                .map_err(CoreError::Refused)?,
        };
        let ttl_ms = self.leases.refresh(lease_id, term).await?;
        Ok((lease_id, ttl_ms))
    }

    /// Send one batch of keepalives to the leader (the keepalive batcher calls this).
    pub(super) async fn keep_batch(
        &self,
        keeps: Vec<Keep>,
    ) -> Result<Vec<Result<(LeaseId, u64), CoreError>>, CoreError> {
        let n = keeps.len();
        match self.on_leader(ForwardRequest::Keepalive(keeps)).await? {
            ForwardResponse::Kept(kept) if kept.len() == n => Ok(kept),
            other => Err(unexpected(other)),
        }
    }

    /// Time left on each lease as the leader tracks it (`None` where unknown).
    pub(crate) async fn remaining_ms(&self, lease_ids: Vec<LeaseId>) -> Vec<Option<u64>> {
        if lease_ids.is_empty() {
            return Vec::new();
        }
        let n = lease_ids.len();
        let short = self.request_timeout.min(Duration::from_secs(1));
        match self
            .on_leader_within(ForwardRequest::RemainingMs(lease_ids), short)
            .await
        {
            Ok(ForwardResponse::RemainingMs(v)) if v.len() == n => v,
            _ => vec![None; n],
        }
    }
}
