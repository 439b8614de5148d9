//! Leases: create, keepalive (no log entry: a quorum round on the leader), revoke (which
//! releases everything held under the lease), get and list.

use leasehold_api::error::ApiError;
use leasehold_api::validate;
use leasehold_api::wire::*;
use leasehold_raft::command::{Command, CommandResult, Kind, SmError};

use super::convert::{core_error, kind_key_label, lease_info, sm_error, unexpected};
use super::NodeService;

impl NodeService {
    pub(super) async fn create_lease_impl(
        &self,
        req: CreateLeaseRequest,
    ) -> Result<LeaseGrant, ApiError> {
        validate::create_lease(&req, &self.limits)?;
        let command = Command::CreateLease {
            ttl_ms: req.ttl_ms,
            owner: req.owner.unwrap_or_default(),
            max_leases: self.limits.max_leases,
        };
        match self.write(req.request_id, command).await? {
            CommandResult::LeaseCreated {
                lease_id,
                ttl_ms,
                owner,
            } => Ok(LeaseGrant {
                lease_id,
                ttl_ms,
                owner,
            }),
            CommandResult::Error(e) => Err(sm_error(Kind::Lock, "", e)),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn keepalive_impl(
        &self,
        lease_id: u64,
    ) -> Result<KeepaliveResponse, ApiError> {
        let ttl_ms = self
            .core
            .keepalive_lease(lease_id, self.caller())
            .await
            .map_err(core_error)?;
        Ok(KeepaliveResponse { lease_id, ttl_ms })
    }

    pub(super) async fn revoke_lease_impl(
        &self,
        lease_id: u64,
        params: RevokeParams,
    ) -> Result<RevokeResponse, ApiError> {
        validate::request_id(params.request_id.as_deref())?;
        match self
            .write(params.request_id, Command::RevokeLease { lease_id })
            .await?
        {
            CommandResult::LeaseEnded { released } => Ok(RevokeResponse {
                revoked: true,
                released: released
                    .iter()
                    .map(|(k, key)| kind_key_label(*k, key))
                    .collect(),
            }),
            CommandResult::Error(e) => Err(sm_error(Kind::Lock, "", e)),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn get_lease_impl(&self, lease_id: u64) -> Result<LeaseInfo, ApiError> {
        self.barrier(false).await?;
        let found = self.read(|s| {
            s.lease(lease_id)
                .map(|l| self.lease_access(l).map(|()| lease_info(l)))
        });
        let Some(mut info) = found.transpose()? else {
            return Err(sm_error(
                Kind::Lock,
                "",
                SmError::LeaseNotFound { lease_id },
            ));
        };
        if let Some(Some(remaining)) = self.expires_in(vec![lease_id], false).await.first() {
            info.remaining_ms = *remaining;
        }
        Ok(info)
    }

    pub(super) async fn list_leases_impl(
        &self,
        params: LeaseListParams,
    ) -> Result<LeaseList, ApiError> {
        let limit = validate::lease_list(&params, &self.limits)?;
        self.barrier(false).await?;
        let after = params.after.unwrap_or(0);
        let (mut leases, more) = self.read(|s| {
            let mut it = s.leases_after(after).filter(|l| self.may_use_lease(l));
            let page: Vec<LeaseInfo> = it.by_ref().take(limit).map(lease_info).collect();
            (page, it.next().is_some())
        });
        let remaining = self
            .expires_in(leases.iter().map(|l| l.lease_id).collect(), false)
            .await;
        for (lease, rem) in leases.iter_mut().zip(remaining) {
            if let Some(rem) = rem {
                lease.remaining_ms = rem;
            }
        }
        let next_after = if more {
            leases.last().map(|l| l.lease_id)
        } else {
            None
        };
        Ok(LeaseList { leases, next_after })
    }
}
