//! Locks: a resource with one holder, an optional lock-delay after an expiry, a
//! release-wait, and the list of recent expiries.

use leasehold_api::error::ApiError;
use leasehold_api::validate;
use leasehold_api::wire::*;
use leasehold_raft::command::Kind;

use super::convert::{lock_holder, resource_kind};
use super::resources::IntoAcquire;
use super::NodeService;

impl NodeService {
    pub(super) async fn acquire_lock_impl(
        &self,
        key: &str,
        req: AcquireRequest,
    ) -> Result<LockHolder, ApiError> {
        validate::acquire(key, &req, &self.limits)?;
        let hold = self.acquire(req.into_acquire(key)).await?;
        let ttl = hold.ttl_ms;
        Ok(lock_holder(hold, Some(ttl)))
    }

    pub(super) async fn get_lock_impl(
        &self,
        key: &str,
        params: ReadParams,
    ) -> Result<LockState, ApiError> {
        let view = self.read_resource(Kind::Lock, key, &params).await?;
        let holder = match view.holders.into_iter().next() {
            Some(h) => self
                .holder_views(vec![h], params.stale.unwrap_or(false))
                .await
                .pop(),
            None => None,
        };
        Ok(LockState {
            key: key.to_string(),
            held: holder.is_some(),
            holder: holder.map(HolderFields::from),
            waiters: view.waiters,
            queue: view.queue,
            index: view.index,
        })
    }

    pub(super) async fn list_locks_impl(&self, params: ListParams) -> Result<LockList, ApiError> {
        let (views, next_after) = self.list_held(Kind::Lock, &params).await?;
        let locks = self.holder_views(views, false).await;
        Ok(LockList { locks, next_after })
    }

    pub(super) async fn expired_impl(
        &self,
        params: ExpiredParams,
    ) -> Result<ExpiredList, ApiError> {
        let limit = validate::list_limit(params.limit, &self.limits)?;
        self.barrier(false).await?;
        let expired = self.read(|s| {
            s.expired_recent(usize::MAX)
                .filter(|e| self.may_see(&e.key))
                .take(limit)
                .map(|e| ExpiredEntry {
                    kind: resource_kind(e.kind),
                    key: e.key.clone(),
                    owner: e.owner.clone(),
                    token: e.token,
                    expired_at_ms: e.expired_at_ms,
                })
                .collect()
        });
        Ok(ExpiredList { expired })
    }
}
