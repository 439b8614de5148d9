//! Semaphores: a resource with `limit` slots; every holder names the same limit, and an
//! acquire answers with the whole slot list.

use leasehold_api::error::ApiError;
use leasehold_api::validate;
use leasehold_api::wire::*;
use leasehold_raft::command::Kind;

use super::resources::{current_holders, IntoAcquire};
use super::NodeService;

impl NodeService {
    pub(super) async fn acquire_semaphore_impl(
        &self,
        key: &str,
        req: SemaphoreAcquireRequest,
    ) -> Result<SemaphoreSlot, ApiError> {
        validate::semaphore_acquire(key, &req, &self.limits)?;
        let (index, hold) = self.acquire_indexed(req.into_acquire(key)).await?;
        // The slot list is read locally: on a follower, first apply the grant's entry. If
        // that takes longer than the request timeout the slot is still ours: answer with it
        // (and a possibly older list) rather than fail an acquire that succeeded.
        let _ = self
            .core
            .wait_applied(index, self.core.request_timeout())
            .await;
        let holders = self.read(|s| current_holders(s, Kind::Semaphore, key));
        let holders = self.holder_views(holders, false).await;
        Ok(SemaphoreSlot {
            key: key.to_string(),
            owner: hold.owner,
            token: hold.token,
            lease_id: hold.lease_id,
            ttl_ms: hold.ttl_ms,
            limit: hold.limit,
            holders,
        })
    }

    pub(super) async fn get_semaphore_impl(
        &self,
        key: &str,
        params: ReadParams,
    ) -> Result<SemaphoreState, ApiError> {
        let view = self.read_resource(Kind::Semaphore, key, &params).await?;
        let holders = self
            .holder_views(view.holders, params.stale.unwrap_or(false))
            .await;
        Ok(SemaphoreState {
            key: key.to_string(),
            limit: view.limit,
            holders,
            waiters: view.waiters,
            index: view.index,
        })
    }
}
