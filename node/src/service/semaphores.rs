//! Semaphores: a resource with `limit` slots; every holder names the same limit, and an
//! acquire answers with the whole slot list.

use leasehold_api::error::ApiError;
use leasehold_api::validate;
use leasehold_api::wire::*;
use leasehold_raft::command::Kind;

use super::resources::{current_holders, queue_of, IntoAcquire};
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

    /// Held semaphores in key order, each with its holders and queue.
    pub(super) async fn list_semaphores_impl(
        &self,
        params: ListParams,
    ) -> Result<SemaphoreList, ApiError> {
        let (views, next_after) = self.list_held(Kind::Semaphore, &params).await?;
        let mut semaphores: Vec<SemaphoreState> = Vec::new();
        for holder in self.holder_views(views, false).await {
            match semaphores.last_mut() {
                Some(last) if last.key == holder.key => last.holders.push(holder),
                _ => semaphores.push(SemaphoreState {
                    key: holder.key.clone(),
                    limit: 0,
                    holders: vec![holder],
                    waiters: 0,
                    queue: Vec::new(),
                    index: 0,
                }),
            }
        }
        self.read(|s| {
            for sem in &mut semaphores {
                if let Some(r) = s.resource(Kind::Semaphore, &sem.key) {
                    sem.limit = r.limit;
                    sem.waiters = r.waiters.len() as u32;
                    sem.queue = queue_of(s, r);
                    sem.index = r.mod_index;
                }
            }
        });
        Ok(SemaphoreList {
            semaphores,
            next_after,
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
            queue: view.queue,
            index: view.index,
        })
    }
}
