//! What locks, names and semaphores share: each is a resource with a limit (1 for locks
//! and names), FIFO waiters and holders under leases. One path acquires, extends,
//! releases, reads, lists and shows the history of any of them; the `Kind` says which
//! key space, and the callers in `locks`, `names` and `semaphores` shape the replies.

use std::time::Duration;

use leasehold_api::error::ApiError;
use leasehold_api::validate;
use leasehold_api::wire::*;
use leasehold_raft::command::{Acquire, Command, CommandResult, HoldView, Kind, LeaseSpec};
use leasehold_raft::state::{EndRecord, LeaseState};
use tokio::time::Instant;

use super::convert::{core_error, history_event, lease_spec, lock_holder, sm_error, unexpected};
use super::NodeService;
use crate::error::CoreError;

/// What an acquire asks for, for any kind of resource.
pub(super) struct AcquireArgs {
    pub kind: Kind,
    pub key: String,
    pub owner: String,
    pub lease: LeaseSpec,
    pub wait_ms: u64,
    pub value: Option<String>,
    pub lock_delay_ms: u64,
    pub limit: u32,
    pub request_id: Option<String>,
}

impl AcquireArgs {
    fn new(kind: Kind, key: &str, owner: String, lease: LeaseSpec, wait_ms: Option<u64>) -> Self {
        AcquireArgs {
            kind,
            key: key.to_string(),
            owner,
            lease,
            wait_ms: wait_ms.unwrap_or(0),
            value: None,
            lock_delay_ms: 0,
            limit: 1,
            request_id: None,
        }
    }
}

/// The acquire request of each kind of resource, as one [`AcquireArgs`]: the three share
/// owner, lease, wait, value and request id, and differ in the lock-delay (locks) and the
/// limit (semaphores).
pub(super) trait IntoAcquire {
    fn into_acquire(self, key: &str) -> AcquireArgs;
}

impl IntoAcquire for AcquireRequest {
    fn into_acquire(self, key: &str) -> AcquireArgs {
        let lease = lease_spec(self.ttl_ms, self.lease_id);
        AcquireArgs {
            value: self.value,
            lock_delay_ms: self.lock_delay_ms.unwrap_or(0),
            request_id: self.request_id,
            ..AcquireArgs::new(Kind::Lock, key, self.owner, lease, self.wait_ms)
        }
    }
}

impl IntoAcquire for RegisterRequest {
    fn into_acquire(self, key: &str) -> AcquireArgs {
        let lease = lease_spec(self.ttl_ms, self.lease_id);
        AcquireArgs {
            value: self.value,
            request_id: self.request_id,
            ..AcquireArgs::new(Kind::Name, key, self.owner, lease, self.wait_ms)
        }
    }
}

impl IntoAcquire for SemaphoreAcquireRequest {
    fn into_acquire(self, key: &str) -> AcquireArgs {
        let lease = lease_spec(self.ttl_ms, self.lease_id);
        AcquireArgs {
            value: self.value,
            limit: self.limit,
            request_id: self.request_id,
            ..AcquireArgs::new(Kind::Semaphore, key, self.owner, lease, self.wait_ms)
        }
    }
}

/// One resource as the local state shows it.
pub(super) struct ResourceView {
    pub holders: Vec<HoldView>,
    pub waiters: u32,
    /// The queue, first in line first.
    pub queue: Vec<QueuedWaiter>,
    pub limit: u32,
    pub index: u64,
    /// How the last hold ended, if one did.
    pub last_end: Option<EndRecord>,
}

/// The queue of `r`, first in line first.
pub(super) fn queue_of(s: &LeaseState, r: &leasehold_raft::state::Resource) -> Vec<QueuedWaiter> {
    r.waiters
        .iter()
        .enumerate()
        .map(|(i, w)| QueuedWaiter {
            owner: w.owner.clone(),
            lease_id: w.lease_id,
            position: i as u32 + 1,
            waited_ms: s.now_ms().saturating_sub(w.enqueued_at_ms),
        })
        .collect()
}

/// The holders of `kind/key`, in grant order.
pub(super) fn current_holders(s: &LeaseState, kind: Kind, key: &str) -> Vec<HoldView> {
    s.resource(kind, key)
        .map(|r| {
            r.holders
                .iter()
                .map(|h| s.hold_view(kind, key, h))
                .collect()
        })
        .unwrap_or_default()
}

impl NodeService {
    pub(super) async fn acquire(&self, args: AcquireArgs) -> Result<HoldView, ApiError> {
        self.acquire_indexed(args).await.map(|(_, hold)| hold)
    }

    /// Acquire, and return with the hold a log index this node has to apply before its
    /// local state shows the hold (the write may have been forwarded to the leader).
    pub(super) async fn acquire_indexed(
        &self,
        args: AcquireArgs,
    ) -> Result<(u64, HoldView), ApiError> {
        let started = Instant::now();
        // One that may queue is a long-poll from the start: shed before it is queued.
        let long_poll = match args.wait_ms > 0 {
            true => Some(self.core.overload().long_poll()?),
            false => None,
        };
        let command = Command::Acquire(Acquire {
            kind: args.kind,
            key: args.key.clone(),
            owner: args.owner.clone(),
            lease: args.lease.clone(),
            wait: args.wait_ms > 0,
            value: args.value.clone(),
            lock_delay_ms: args.lock_delay_ms,
            limit: args.limit,
            max_waiters: self.limits.max_waiters_per_key,
            max_leases: self.limits.max_leases,
        });
        let (index, result) = self.write_indexed(args.request_id.clone(), command).await?;
        match result {
            CommandResult::Granted(hold) => Ok((index, hold)),
            CommandResult::Busy { holders, reason } => Err(self
                .busy(args.kind, &args.key, &holders, &reason, false)
                .await),
            CommandResult::Queued { lease_id, .. } => {
                let deadline = started + Duration::from_millis(args.wait_ms);
                // A grant seen while waiting is already in the local state: index 0.
                self.wait_for_grant(&args, index, lease_id, deadline, long_poll)
                    .await
                    .map(|hold| (0, hold))
            }
            CommandResult::Error(e) => Err(sm_error(args.kind, &args.key, e)),
            other => Err(unexpected(other)),
        }
    }

    /// Validate and release a hold of any kind.
    pub(super) async fn release_checked(
        &self,
        kind: Kind,
        key: &str,
        params: ReleaseParams,
    ) -> Result<ReleaseResponse, ApiError> {
        validate::release(key, &params, &self.limits)?;
        if params.force == Some(true) {
            return self.force_release(kind, key, params).await;
        }
        self.release(kind, key, params).await
    }

    /// An operator's release (admin only with auth): ends the hold whoever owns it.
    async fn force_release(
        &self,
        kind: Kind,
        key: &str,
        params: ReleaseParams,
    ) -> Result<ReleaseResponse, ApiError> {
        self.allow(leasehold_api::auth::Role::Admin, "force-releasing a hold")?;
        let mut token = (params.token > 0).then_some(params.token);
        if !params.owner.is_empty() {
            token = self.force_release_target(kind, key, &params, token).await?;
        }
        let command = Command::ForceRelease {
            kind,
            key: key.to_string(),
            token,
        };
        match self.write(params.request_id, command).await? {
            CommandResult::ForceReleased { owner, token } => Ok(ReleaseResponse {
                released: true,
                owner: Some(owner),
                token: Some(token),
            }),
            CommandResult::Error(e) => Err(sm_error(kind, key, e)),
            other => Err(unexpected(other)),
        }
    }

    /// A force release narrowed by `owner` (and `token`, if given) to that owner's hold:
    /// find it under a linearizable read and name it by its token, so a hold taken by
    /// someone else meanwhile (another token) is left alone. No such hold: 409
    /// `not_owner`. A retry of a release that already happened (same `request_id`) gets
    /// the first result from the dedupe window: it is proposed with a token no hold has.
    async fn force_release_target(
        &self,
        kind: Kind,
        key: &str,
        params: &ReleaseParams,
        token: Option<u64>,
    ) -> Result<Option<u64>, ApiError> {
        self.barrier(false).await?;
        let tokens: Vec<u64> = self.read(|s| {
            current_holders(s, kind, key)
                .into_iter()
                .filter(|h| h.owner == params.owner && token.is_none_or(|t| t == h.token))
                .map(|h| h.token)
                .collect()
        });
        match tokens.as_slice() {
            [one] => Ok(Some(*one)),
            [] if params.request_id.is_some() => Ok(Some(u64::MAX)),
            [] => Err(ApiError::new(
                leasehold_api::ErrorCode::NotOwner,
                format!(
                    "{} {key:?} is not held by owner {:?}{}: nothing to force-release",
                    kind.as_str(),
                    params.owner,
                    token
                        .map(|t| format!(" with token {t}"))
                        .unwrap_or_default()
                ),
            )),
            many => Err(sm_error(
                kind,
                key,
                leasehold_raft::command::SmError::SlotTokenRequired {
                    holders: many.len() as u32,
                },
            )),
        }
    }

    async fn release(
        &self,
        kind: Kind,
        key: &str,
        params: ReleaseParams,
    ) -> Result<ReleaseResponse, ApiError> {
        if params.owner.is_empty() || params.token == 0 {
            return Err(ApiError::new(
                leasehold_api::ErrorCode::NotOwner,
                format!(
                    "{} {key:?}: a release names the hold with owner=... and token=... (the \
                     grant's), or is an operator's force=true",
                    kind.as_str()
                ),
            ));
        }
        let command = Command::Release {
            kind,
            key: key.to_string(),
            owner: params.owner,
            token: params.token,
        };
        match self.write(params.request_id, command).await? {
            CommandResult::Released => Ok(ReleaseResponse {
                released: true,
                owner: None,
                token: None,
            }),
            CommandResult::Error(e) => Err(sm_error(kind, key, e)),
            other => Err(unexpected(other)),
        }
    }

    /// Validate and extend a hold of any kind.
    pub(super) async fn extend_checked(
        &self,
        kind: Kind,
        key: &str,
        req: ExtendRequest,
    ) -> Result<ExtendResponse, ApiError> {
        validate::extend(key, &req, &self.limits)?;
        self.extend(kind, key, &req).await
    }

    /// With `ttl_ms` a replicated extend (a new TTL); without, a keepalive of the hold's
    /// lease (no log entry).
    pub(super) async fn extend(
        &self,
        kind: Kind,
        key: &str,
        req: &ExtendRequest,
    ) -> Result<ExtendResponse, ApiError> {
        let Some(ttl_ms) = req.ttl_ms else {
            let (_, ttl_ms) = self
                .core
                .keepalive_hold(kind, key, &req.owner, req.token, self.caller())
                .await
                .map_err(|e| match e {
                    CoreError::Refused(e) => sm_error(kind, key, e),
                    e => core_error(e),
                })?;
            return Ok(ExtendResponse {
                token: req.token,
                ttl_ms,
            });
        };
        let command = Command::Extend {
            kind,
            key: key.to_string(),
            owner: req.owner.clone(),
            token: req.token,
            ttl_ms: Some(ttl_ms),
        };
        match self.write(req.request_id.clone(), command).await? {
            CommandResult::Extended { token, ttl_ms, .. } => Ok(ExtendResponse { token, ttl_ms }),
            CommandResult::Error(e) => Err(sm_error(kind, key, e)),
            other => Err(unexpected(other)),
        }
    }

    /// Validate a read, take the barrier (unless stale), wait for a change past `index`
    /// when asked, and return the resource as the local state shows it.
    pub(super) async fn read_resource(
        &self,
        kind: Kind,
        key: &str,
        params: &ReadParams,
    ) -> Result<ResourceView, ApiError> {
        validate::read(key, params, &self.limits)?;
        self.barrier(params.stale.unwrap_or(false)).await?;
        if let (Some(index), Some(wait_ms)) = (params.index, params.wait_ms) {
            self.wait_for_change(kind, key, index, wait_ms).await?;
        }
        Ok(self.read(|s| {
            let r = s.resource(kind, key);
            ResourceView {
                holders: current_holders(s, kind, key),
                waiters: r.map_or(0, |r| r.waiters.len() as u32),
                queue: r.map_or_else(Vec::new, |r| queue_of(s, r)),
                limit: r.map_or(0, |r| r.limit),
                index: r.map_or(0, |r| r.mod_index),
                last_end: r.and_then(|r| r.last_end.clone()),
            }
        }))
    }

    /// Validate a list request and return one page of holds of `kind` (in key order)
    /// and the key to continue after, if there is more.
    pub(super) async fn list_held(
        &self,
        kind: Kind,
        params: &ListParams,
    ) -> Result<(Vec<HoldView>, Option<String>), ApiError> {
        let limit = validate::list(params, &self.limits)?;
        self.barrier(false).await?;
        let prefix = params.prefix.clone().unwrap_or_default();
        let (views, more) = self.read(|s| {
            let mut views = Vec::new();
            let mut more = false;
            for (key, r) in s.held_after(kind, &prefix, params.after.as_deref()) {
                if !self.may_see(key) {
                    continue;
                }
                for hold in &r.holders {
                    views.push(s.hold_view(kind, key, hold));
                }
                if views.len() >= limit {
                    more = true;
                    break;
                }
            }
            (views, more)
        });
        let next_after = if more {
            views.last().map(|v| v.key.clone())
        } else {
            None
        };
        Ok((views, next_after))
    }

    /// Holders as the API shows them, with the time left on each one's lease.
    pub(super) async fn holder_views(&self, views: Vec<HoldView>, stale: bool) -> Vec<LockHolder> {
        let remaining = self
            .expires_in(views.iter().map(|v| v.lease_id).collect(), stale)
            .await;
        views
            .into_iter()
            .zip(remaining)
            .map(|(v, rem)| lock_holder(v, rem))
            .collect()
    }

    /// The recent grants and ends of `kind/key`, newest first.
    pub(super) async fn history(&self, kind: Kind, key: &str) -> Result<HistoryResponse, ApiError> {
        validate::key("key", key, &self.limits)?;
        self.barrier(false).await?;
        let events = self.read(|s| {
            s.resource(kind, key)
                .map(|r| r.history.iter().rev().map(history_event).collect())
                .unwrap_or_default()
        });
        Ok(HistoryResponse {
            key: key.to_string(),
            events,
        })
    }
}
