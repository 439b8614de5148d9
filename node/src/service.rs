//! `NodeService`: the node's implementation of the one service trait.
//!
//! It validates input (so embedded callers get the same 4xx errors as HTTP ones), turns
//! requests into replicated commands or reads, and shapes the replies as wire types.
//! Blocking acquires, blocking queries and wait-for-release are served here, on the node
//! the client is connected to, woken by the local state machine's apply notifications.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_api::error::{ApiError, ErrorCode};
use leasehold_api::service::LeaseService;
use leasehold_api::validate::{self, Limits};
use leasehold_api::wire::*;
use leasehold_config::Config;
use leasehold_raft::command::{
    Acquire, BusyReason, Command, CommandResult, EndReason, HoldView, Kind, LeaseId, LeaseSpec,
    Proposal, SmError, Token,
};
use leasehold_raft::state::{HistoryKind, LeaseState, Resource};
use openraft::ServerState;
use tokio::time::Instant;
use tracing::debug;

use crate::core::Core;
use crate::error::CoreError;

#[derive(Clone)]
pub struct NodeService {
    core: Arc<Core>,
    limits: Arc<Limits>,
}

/// What an acquire asks for, for any kind of resource.
struct AcquireArgs {
    kind: Kind,
    key: String,
    owner: String,
    lease: LeaseSpec,
    wait_ms: u64,
    value: Option<String>,
    lock_delay_ms: u64,
    limit: u32,
    request_id: Option<String>,
}

impl NodeService {
    pub fn new(core: Arc<Core>, config: &Config) -> Self {
        let l = &config.limits;
        let limits = Limits {
            max_key_bytes: l.max_key_bytes,
            max_value_bytes: l.max_value_bytes,
            max_body_bytes: l.max_body_bytes,
            min_ttl_ms: l.min_ttl_ms,
            max_ttl_ms: l.max_ttl_ms,
            max_wait_ms: l.max_wait_ms,
            max_list_limit: l.max_list_limit,
            max_waiters_per_key: l.max_waiters_per_key,
            max_leases: l.max_leases,
            request_timeout_ms: l.request_timeout_ms,
        };
        NodeService {
            core,
            limits: Arc::new(limits),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn read<R>(&self, f: impl FnOnce(&LeaseState) -> R) -> R {
        self.core.shared.read(f)
    }

    async fn write(
        &self,
        request_id: Option<String>,
        command: Command,
    ) -> Result<CommandResult, ApiError> {
        self.write_indexed(request_id, command)
            .await
            .map(|(_, result)| result)
    }

    /// Write, and return the log index the command was applied at with its result.
    async fn write_indexed(
        &self,
        request_id: Option<String>,
        command: Command,
    ) -> Result<(u64, CommandResult), ApiError> {
        self.core
            .write(Proposal {
                request_id,
                command,
            })
            .await
            .map_err(core_error)
    }

    /// A linearizable read barrier unless the caller asked for a stale (local) read.
    async fn barrier(&self, stale: bool) -> Result<(), ApiError> {
        if stale {
            return Ok(());
        }
        self.core.read_barrier().await.map_err(core_error)
    }

    /// Time left on a lease: exact from the leader's lease actor, else the full TTL.
    async fn expires_in(&self, lease_ids: Vec<LeaseId>, stale: bool) -> Vec<Option<u64>> {
        if stale && !self.core.is_leader() {
            return vec![None; lease_ids.len()];
        }
        self.core.remaining_ms(lease_ids).await
    }

    async fn acquire(&self, args: AcquireArgs) -> Result<HoldView, ApiError> {
        self.acquire_indexed(args).await.map(|(_, hold)| hold)
    }

    /// Acquire, and return with the hold a log index this node has to apply before its
    /// local state shows the hold (the write may have been forwarded to the leader).
    async fn acquire_indexed(&self, args: AcquireArgs) -> Result<(u64, HoldView), ApiError> {
        let started = Instant::now();
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
            CommandResult::Busy { holders, reason } => {
                Err(busy_error(args.kind, &args.key, &holders, &reason))
            }
            CommandResult::Queued { lease_id, .. } => {
                let deadline = started + Duration::from_millis(args.wait_ms);
                // A grant seen while waiting is already in the local state: index 0.
                self.wait_for_grant(&args, index, lease_id, deadline)
                    .await
                    .map(|hold| (0, hold))
            }
            CommandResult::Error(e) => Err(sm_error(args.kind, &args.key, e)),
            other => Err(unexpected(other)),
        }
    }

    /// Wait in the replicated queue until granted or `deadline`; keep the waiting lease
    /// alive meanwhile. Dropping this future (the client left) cancels the wait.
    async fn wait_for_grant(
        &self,
        args: &AcquireArgs,
        queued_at_index: u64,
        lease_id: LeaseId,
        deadline: Instant,
    ) -> Result<HoldView, ApiError> {
        let mut guard = CancelWaitOnDrop {
            core: Some(self.core.clone()),
            kind: args.kind,
            key: args.key.clone(),
            lease_id,
            // With a client request_id, the client may be retrying this very acquire on
            // another node (same id, same queue entry): a grant that races the disconnect
            // may be the retry's. Never release it then; it ends with its lease's TTL.
            release_raced_grant: args.request_id.is_none(),
        };
        // This node may lag the leader: see our own queue entry before watching it.
        let catch_up = deadline
            .saturating_duration_since(Instant::now())
            .max(self.core.request_timeout);
        self.core
            .wait_applied(queued_at_index, catch_up)
            .await
            .map_err(core_error)?;
        let ttl_ms = self
            .read(|s| s.lease(lease_id).map(|l| l.ttl_ms))
            .unwrap_or(self.limits.min_ttl_ms);
        let keepalive_every = Duration::from_millis((ttl_ms / 3).max(1));
        let mut next_keepalive = Instant::now() + keepalive_every;
        let mut applied = self.core.shared.subscribe_applied();
        loop {
            match self.read(|s| waiter_status(s, args.kind, &args.key, lease_id)) {
                WaiterStatus::Granted(hold) => {
                    guard.disarm();
                    return Ok(hold);
                }
                WaiterStatus::Waiting => {}
                WaiterStatus::Gone => {
                    // The waiting lease ended (expired or revoked) before a grant.
                    guard.disarm();
                    return Err(ApiError::new(
                        ErrorCode::LeaseNotFound,
                        format!(
                            "lease {lease_id} ended while waiting for {:?} {:?}",
                            args.kind, args.key
                        ),
                    ));
                }
            }
            tokio::select! {
                changed = applied.changed() => {
                    if changed.is_err() {
                        return Err(core_error(CoreError::ShuttingDown));
                    }
                }
                _ = tokio::time::sleep_until(next_keepalive) => {
                    next_keepalive = Instant::now() + keepalive_every;
                    if let Err(CoreError::Refused(SmError::LeaseNotFound { .. })) =
                        self.core.keepalive_lease(lease_id).await
                    {
                        debug!(lease_id, "waiting lease is gone");
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // The wait ran out: leave the queue. If the grant raced us, the grant wins.
        guard.disarm();
        let (index, result) = self
            .write_indexed(
                None,
                Command::CancelWait {
                    kind: args.kind,
                    key: args.key.clone(),
                    lease_id,
                },
            )
            .await?;
        match result {
            CommandResult::Granted(hold) => Ok(hold),
            CommandResult::WaitCancelled | CommandResult::Error(SmError::NotFound) => {
                // Name the holders as of the cancel, which may have been applied on the
                // leader first; a lagging local state would name a stale holder.
                let _ = self
                    .core
                    .wait_applied(index, self.core.request_timeout)
                    .await;
                let holders = self.read(|s| current_holders(s, args.kind, &args.key));
                // An implicit lease went with the wait (the state machine revoked it).
                Err(busy_error(
                    args.kind,
                    &args.key,
                    &holders,
                    &BusyReason::Held,
                ))
            }
            CommandResult::Error(e) => Err(sm_error(args.kind, &args.key, e)),
            other => Err(unexpected(other)),
        }
    }

    async fn release(
        &self,
        kind: Kind,
        key: &str,
        owner: &str,
        token: Token,
    ) -> Result<ReleaseResponse, ApiError> {
        let command = Command::Release {
            kind,
            key: key.to_string(),
            owner: owner.to_string(),
            token,
        };
        match self.write(None, command).await? {
            CommandResult::Released => Ok(ReleaseResponse { released: true }),
            CommandResult::Error(e) => Err(sm_error(kind, key, e)),
            other => Err(unexpected(other)),
        }
    }

    async fn extend(
        &self,
        kind: Kind,
        key: &str,
        req: &ExtendRequest,
    ) -> Result<ExtendResponse, ApiError> {
        match req.ttl_ms {
            Some(ttl_ms) => {
                let command = Command::Extend {
                    kind,
                    key: key.to_string(),
                    owner: req.owner.clone(),
                    token: req.token,
                    ttl_ms: Some(ttl_ms),
                };
                match self.write(req.request_id.clone(), command).await? {
                    CommandResult::Extended { token, ttl_ms, .. } => {
                        Ok(ExtendResponse { token, ttl_ms })
                    }
                    CommandResult::Error(e) => Err(sm_error(kind, key, e)),
                    other => Err(unexpected(other)),
                }
            }
            None => {
                let (_, ttl_ms) = self
                    .core
                    .keepalive_hold(kind, key, &req.owner, req.token)
                    .await
                    .map_err(|e| match e {
                        CoreError::Refused(e) => sm_error(kind, key, e),
                        e => core_error(e),
                    })?;
                Ok(ExtendResponse {
                    token: req.token,
                    ttl_ms,
                })
            }
        }
    }

    /// Wait (on local applies) until `kind/key`'s modify index exceeds `index`.
    async fn wait_for_change(&self, kind: Kind, key: &str, index: u64, wait_ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let mut applied = self.core.shared.subscribe_applied();
        loop {
            let current = self.read(|s| s.resource(kind, key).map_or(0, |r| r.mod_index));
            if current > index {
                return;
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    async fn holder_views(&self, views: Vec<HoldView>, stale: bool) -> Vec<LockHolder> {
        let remaining = self
            .expires_in(views.iter().map(|v| v.lease_id).collect(), stale)
            .await;
        views
            .into_iter()
            .zip(remaining)
            .map(|(v, rem)| lock_holder(v, rem))
            .collect()
    }
}

enum WaiterStatus {
    Granted(HoldView),
    Waiting,
    Gone,
}

fn waiter_status(s: &LeaseState, kind: Kind, key: &str, lease_id: LeaseId) -> WaiterStatus {
    let Some(resource) = s.resource(kind, key) else {
        return WaiterStatus::Gone;
    };
    if let Some(hold) = resource.holders.iter().find(|h| h.lease_id == lease_id) {
        return WaiterStatus::Granted(s.hold_view(kind, key, hold));
    }
    if resource.waiters.iter().any(|w| w.lease_id == lease_id) {
        return WaiterStatus::Waiting;
    }
    WaiterStatus::Gone
}

fn current_holders(s: &LeaseState, kind: Kind, key: &str) -> Vec<HoldView> {
    s.resource(kind, key)
        .map(|r| {
            r.holders
                .iter()
                .map(|h| s.hold_view(kind, key, h))
                .collect()
        })
        .unwrap_or_default()
}

/// Cancels a queued wait if the waiting request goes away (the client disconnected).
struct CancelWaitOnDrop {
    core: Option<Arc<Core>>,
    kind: Kind,
    key: String,
    lease_id: LeaseId,
    release_raced_grant: bool,
}

impl CancelWaitOnDrop {
    fn disarm(&mut self) {
        self.core = None;
    }
}

impl Drop for CancelWaitOnDrop {
    fn drop(&mut self) {
        let Some(core) = self.core.take() else {
            return;
        };
        let (kind, key, lease_id) = (self.kind, std::mem::take(&mut self.key), self.lease_id);
        let release_raced_grant = self.release_raced_grant;
        // The request is gone; clean up in the background (bounded by the write deadline).
        tokio::spawn(async move {
            let cancel = Proposal {
                request_id: None,
                command: Command::CancelWait {
                    kind,
                    key: key.clone(),
                    lease_id,
                },
            };
            let result = core.write(cancel).await;
            if let (true, Ok((_, CommandResult::Granted(hold)))) = (release_raced_grant, result) {
                // Granted just as the client left, and no retry can claim it: release it.
                let release = Proposal {
                    request_id: None,
                    command: Command::Release {
                        kind,
                        key,
                        owner: hold.owner,
                        token: hold.token,
                    },
                };
                let _ = core.write(release).await;
            }
        });
    }
}

// ----- mapping to wire types and errors -----

fn lock_holder(v: HoldView, expires_in_ms: Option<u64>) -> LockHolder {
    LockHolder {
        key: v.key,
        owner: v.owner,
        token: v.token,
        lease_id: v.lease_id,
        ttl_ms: v.ttl_ms,
        locked_at_ms: v.locked_at_ms,
        expires_in_ms: expires_in_ms.unwrap_or(v.ttl_ms),
        acquisitions: v.acquisitions,
        value: v.value,
    }
}

fn name_record(v: HoldView, expires_in_ms: Option<u64>) -> NameRecord {
    NameRecord {
        name: v.key,
        owner: v.owner,
        value: v.value,
        token: v.token,
        lease_id: v.lease_id,
        registered_at_ms: v.locked_at_ms,
        expires_in_ms: expires_in_ms.unwrap_or(v.ttl_ms),
    }
}

fn summary(v: &HoldView) -> HolderSummary {
    HolderSummary {
        owner: v.owner.clone(),
        token: v.token,
        expires_in_ms: v.ttl_ms,
    }
}

fn busy_error(kind: Kind, key: &str, holders: &[HoldView], reason: &BusyReason) -> ApiError {
    let (code, what) = match kind {
        Kind::Lock => (ErrorCode::LockHeld, "lock"),
        Kind::Name => (ErrorCode::NameTaken, "name"),
        Kind::Semaphore => (ErrorCode::SemaphoreFull, "semaphore"),
    };
    let message = match (reason, holders.first()) {
        (BusyReason::Delayed { until_ms }, _) => format!(
            "{what} {key:?} is free but under lock-delay until {until_ms} (ms since epoch) after an expiry; retry then, or pass wait_ms to queue"
        ),
        (BusyReason::Held, Some(h)) if kind != Kind::Semaphore => format!(
            "{what} {key:?} is held by {:?} (token {}); pass wait_ms to queue for it",
            h.owner, h.token
        ),
        _ => format!(
            "{what} {key:?} has no free slot ({} holders); pass wait_ms to queue",
            holders.len()
        ),
    };
    let mut err = ApiError::new(code, message);
    err.holder = holders.first().map(summary);
    err
}

fn sm_error(kind: Kind, key: &str, e: SmError) -> ApiError {
    match e {
        SmError::LeaseNotFound { lease_id } => ApiError::new(
            ErrorCode::LeaseNotFound,
            format!("lease {lease_id} not found: it expired, was revoked or never existed"),
        ),
        SmError::NotOwner => ApiError::new(
            ErrorCode::NotOwner,
            format!(
                "{} {key:?} is not held by this owner and token (it was released, expired or taken over)",
                kind.as_str()
            ),
        ),
        SmError::NotFound if kind == Kind::Name => {
            ApiError::new(ErrorCode::NameNotFound, format!("name {key:?} is not registered"))
        }
        SmError::NotFound => ApiError::new(
            ErrorCode::NotFound,
            format!("{} {key:?} has no such holder or waiter", kind.as_str()),
        ),
        SmError::LimitMismatch { limit } => ApiError::new(
            ErrorCode::LimitMismatch,
            format!("semaphore {key:?} is in use with limit {limit}; every holder must use the same limit"),
        ),
        SmError::TooManyWaiters { max } => ApiError::new(
            ErrorCode::TooManyRequests,
            format!("{} {key:?} already has {max} waiters (limits.max_waiters_per_key)", kind.as_str()),
        ),
        SmError::TooManyLeases { max } => ApiError::new(
            ErrorCode::TooManyRequests,
            format!("the cluster holds {max} leases (limits.max_leases); revoke unused leases or raise the limit"),
        ),
        SmError::AlreadyWaiting => ApiError::new(
            ErrorCode::InvalidArgument,
            format!("lease_id: this lease already waits for {} {key:?}", kind.as_str()),
        ),
    }
}

fn core_error(e: CoreError) -> ApiError {
    match e {
        CoreError::NotLeader { .. } | CoreError::Unavailable(_) | CoreError::ShuttingDown => {
            let mut err = ApiError::new(
                ErrorCode::Unavailable,
                format!("{e}; retry shortly or use another node"),
            );
            err.retry_after_ms = Some(1000);
            err
        }
        CoreError::Timeout => ApiError::new(
            ErrorCode::Timeout,
            "the request's deadline passed before the cluster answered; retry with the same request_id",
        ),
        CoreError::Refused(e) => sm_error(Kind::Lock, "", e),
        CoreError::NoSuchMember(id) => ApiError::new(
            ErrorCode::NotFound,
            format!("node {id} is not a member of the cluster; see GET /v1/cluster for the members"),
        ),
    }
}

fn unexpected(result: CommandResult) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("unexpected state machine result: {result:?}"),
    )
}

fn lease_spec(ttl_ms: Option<u64>, lease_id: Option<u64>) -> LeaseSpec {
    match lease_id {
        Some(id) => LeaseSpec::Existing(id),
        None => LeaseSpec::New {
            ttl_ms: ttl_ms.unwrap_or_default(),
        },
    }
}

fn release_reason(reason: EndReason) -> ReleaseReason {
    match reason {
        EndReason::Released => ReleaseReason::Released,
        EndReason::Expired => ReleaseReason::Expired,
        EndReason::Revoked => ReleaseReason::Revoked,
    }
}

fn resource_index(r: Option<&Resource>) -> u64 {
    r.map_or(0, |r| r.mod_index)
}

fn kind_key_label(kind: Kind, key: &str) -> String {
    match kind {
        Kind::Lock => key.to_string(),
        Kind::Name => format!("name:{key}"),
        Kind::Semaphore => format!("semaphore:{key}"),
    }
}

fn history_kind(kind: HistoryKind) -> HistoryEventKind {
    match kind {
        HistoryKind::Acquired => HistoryEventKind::Acquired,
        HistoryKind::Released => HistoryEventKind::Released,
        HistoryKind::Expired => HistoryEventKind::Expired,
        HistoryKind::Revoked => HistoryEventKind::Revoked,
    }
}

fn resource_kind(kind: Kind) -> ResourceKind {
    match kind {
        Kind::Lock => ResourceKind::Lock,
        Kind::Name => ResourceKind::Name,
        Kind::Semaphore => ResourceKind::Semaphore,
    }
}

impl NodeService {
    async fn list_held(
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

    async fn read_resource(
        &self,
        kind: Kind,
        key: &str,
        params: &ReadParams,
    ) -> Result<(), ApiError> {
        let stale = params.stale.unwrap_or(false);
        self.barrier(stale).await?;
        if let (Some(index), Some(wait_ms)) = (params.index, params.wait_ms) {
            self.wait_for_change(kind, key, index, wait_ms).await;
        }
        Ok(())
    }
}

#[async_trait]
impl LeaseService for NodeService {
    async fn create_lease(&self, req: CreateLeaseRequest) -> Result<LeaseGrant, ApiError> {
        validate::create_lease(&req, &self.limits)?;
        let owner = req.owner.clone().unwrap_or_default();
        let command = Command::CreateLease {
            ttl_ms: req.ttl_ms,
            owner,
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

    async fn keepalive(&self, lease_id: u64) -> Result<KeepaliveResponse, ApiError> {
        let ttl_ms = self
            .core
            .keepalive_lease(lease_id)
            .await
            .map_err(core_error)?;
        Ok(KeepaliveResponse { lease_id, ttl_ms })
    }

    async fn revoke_lease(&self, lease_id: u64) -> Result<RevokeResponse, ApiError> {
        match self.write(None, Command::RevokeLease { lease_id }).await? {
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

    async fn get_lease(&self, lease_id: u64) -> Result<LeaseInfo, ApiError> {
        self.barrier(false).await?;
        let info = self.read(|s| {
            s.lease(lease_id).map(|l| {
                let of = |kind: Kind| -> Vec<String> {
                    l.holds
                        .iter()
                        .filter(|(k, _)| *k == kind)
                        .map(|(_, key)| key.clone())
                        .collect()
                };
                LeaseInfo {
                    lease_id,
                    ttl_ms: l.ttl_ms,
                    owner: l.owner.clone(),
                    remaining_ms: l.ttl_ms,
                    locks: of(Kind::Lock),
                    names: of(Kind::Name),
                    semaphores: of(Kind::Semaphore),
                }
            })
        });
        let Some(mut info) = info else {
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

    async fn list_leases(&self, params: LeaseListParams) -> Result<LeaseList, ApiError> {
        let limit = validate::list_limit(params.limit, &self.limits)?;
        self.barrier(false).await?;
        let after = params.after.unwrap_or(0);
        let (mut leases, more) = self.read(|s| {
            let mut it = s.leases_after(after);
            let page: Vec<LeaseInfo> = it
                .by_ref()
                .take(limit)
                .map(|l| {
                    let of = |kind: Kind| -> Vec<String> {
                        l.holds
                            .iter()
                            .filter(|(k, _)| *k == kind)
                            .map(|(_, key)| key.clone())
                            .collect()
                    };
                    LeaseInfo {
                        lease_id: l.id,
                        ttl_ms: l.ttl_ms,
                        owner: l.owner.clone(),
                        remaining_ms: l.ttl_ms,
                        locks: of(Kind::Lock),
                        names: of(Kind::Name),
                        semaphores: of(Kind::Semaphore),
                    }
                })
                .collect();
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

    async fn acquire_lock(&self, key: &str, req: AcquireRequest) -> Result<LockHolder, ApiError> {
        validate::acquire(key, &req, &self.limits)?;
        let hold = self
            .acquire(AcquireArgs {
                kind: Kind::Lock,
                key: key.to_string(),
                owner: req.owner,
                lease: lease_spec(req.ttl_ms, req.lease_id),
                wait_ms: req.wait_ms.unwrap_or(0),
                value: req.value,
                lock_delay_ms: req.lock_delay_ms.unwrap_or(0),
                limit: 1,
                request_id: req.request_id,
            })
            .await?;
        let ttl = hold.ttl_ms;
        Ok(lock_holder(hold, Some(ttl)))
    }

    async fn extend_lock(&self, key: &str, req: ExtendRequest) -> Result<ExtendResponse, ApiError> {
        validate::extend(key, &req, &self.limits)?;
        self.extend(Kind::Lock, key, &req).await
    }

    async fn release_lock(
        &self,
        key: &str,
        params: ReleaseParams,
    ) -> Result<ReleaseResponse, ApiError> {
        validate::release(key, &params, &self.limits)?;
        self.release(Kind::Lock, key, &params.owner, params.token)
            .await
    }

    async fn get_lock(&self, key: &str, params: ReadParams) -> Result<LockState, ApiError> {
        validate::read(key, &params, &self.limits)?;
        self.read_resource(Kind::Lock, key, &params).await?;
        let (holder, waiters, index) = self.read(|s| {
            let r = s.resource(Kind::Lock, key);
            let holder = r
                .and_then(|r| r.holders.first())
                .map(|h| s.hold_view(Kind::Lock, key, h));
            (
                holder,
                r.map_or(0, |r| r.waiters.len() as u32),
                resource_index(r),
            )
        });
        let holder = match holder {
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
            waiters,
            index,
        })
    }

    async fn wait_release(
        &self,
        key: &str,
        params: WaitReleaseParams,
    ) -> Result<WaitReleaseResponse, ApiError> {
        validate::wait_release(key, &params, &self.limits)?;
        // Never answer from a state older than the request.
        self.barrier(false).await?;
        let deadline = Instant::now() + Duration::from_millis(params.wait_ms.unwrap_or(0));
        let mut applied = self.core.shared.subscribe_applied();
        loop {
            let outcome = self.read(|s| {
                let r = s.resource(Kind::Lock, key);
                let holders = r.map(|r| r.holders.as_slice()).unwrap_or(&[]);
                let still_held = match params.token {
                    Some(token) => holders.iter().any(|h| h.token == token),
                    None => !holders.is_empty(),
                };
                if still_held {
                    let current = holders.first().map(|h| s.hold_view(Kind::Lock, key, h));
                    return Err(current);
                }
                // Find how the relevant hold ended.
                let end = r.and_then(|r| match params.token {
                    Some(token) => r
                        .history
                        .iter()
                        .rev()
                        .find(|e| e.token == token && e.event != HistoryKind::Acquired)
                        .map(|e| {
                            let reason = match e.event {
                                HistoryKind::Expired => EndReason::Expired,
                                HistoryKind::Revoked => EndReason::Revoked,
                                _ => EndReason::Released,
                            };
                            (reason, e.owner.clone(), e.token, e.at_ms)
                        }),
                    None => r
                        .last_end
                        .as_ref()
                        .map(|e| (e.reason, e.owner.clone(), e.token, e.at_ms)),
                });
                Ok(end)
            });
            match outcome {
                Ok(end) => {
                    return Ok(WaitReleaseResponse {
                        released: true,
                        reason: end.as_ref().map(|e| release_reason(e.0)),
                        owner: end.as_ref().map(|e| e.1.clone()),
                        token: end.as_ref().map(|e| e.2),
                        at_ms: end.as_ref().map(|e| e.3),
                        holder: None,
                    })
                }
                Err(current) => {
                    if Instant::now() >= deadline {
                        let holder = match current {
                            Some(h) => self.holder_views(vec![h], false).await.pop(),
                            None => None,
                        };
                        return Ok(WaitReleaseResponse {
                            released: false,
                            reason: None,
                            owner: None,
                            token: None,
                            at_ms: None,
                            holder,
                        });
                    }
                }
            }
            tokio::select! {
                changed = applied.changed() => {
                    if changed.is_err() {
                        return Err(core_error(CoreError::ShuttingDown));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn lock_history(&self, key: &str) -> Result<HistoryResponse, ApiError> {
        validate::key("key", key, &self.limits)?;
        self.barrier(false).await?;
        let events = self.read(|s| {
            s.resource(Kind::Lock, key)
                .map(|r| {
                    r.history
                        .iter()
                        .rev()
                        .map(|e| HistoryEvent {
                            event: history_kind(e.event),
                            owner: e.owner.clone(),
                            token: e.token,
                            at_ms: e.at_ms,
                            held_ms: e.held_ms,
                            waited_ms: e.waited_ms,
                        })
                        .collect()
                })
                .unwrap_or_default()
        });
        Ok(HistoryResponse {
            key: key.to_string(),
            events,
        })
    }

    async fn list_locks(&self, params: ListParams) -> Result<LockList, ApiError> {
        let (views, next_after) = self.list_held(Kind::Lock, &params).await?;
        let locks = self.holder_views(views, false).await;
        Ok(LockList { locks, next_after })
    }

    async fn expired(&self, params: ExpiredParams) -> Result<ExpiredList, ApiError> {
        let limit = validate::list_limit(params.limit, &self.limits)?;
        self.barrier(false).await?;
        let expired = self.read(|s| {
            s.expired_recent(limit)
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

    async fn acquire_semaphore(
        &self,
        key: &str,
        req: SemaphoreAcquireRequest,
    ) -> Result<SemaphoreSlot, ApiError> {
        validate::semaphore_acquire(key, &req, &self.limits)?;
        let (index, hold) = self
            .acquire_indexed(AcquireArgs {
                kind: Kind::Semaphore,
                key: key.to_string(),
                owner: req.owner,
                lease: lease_spec(req.ttl_ms, req.lease_id),
                wait_ms: req.wait_ms.unwrap_or(0),
                value: req.value,
                lock_delay_ms: 0,
                limit: req.limit,
                request_id: req.request_id,
            })
            .await?;
        // The slot list is read locally: on a follower, first apply the grant's entry. If
        // that takes longer than the request timeout the slot is still ours: answer with it
        // (and a possibly older list) rather than fail an acquire that succeeded.
        let _ = self
            .core
            .wait_applied(index, self.core.request_timeout)
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

    async fn extend_semaphore(
        &self,
        key: &str,
        req: ExtendRequest,
    ) -> Result<ExtendResponse, ApiError> {
        validate::extend(key, &req, &self.limits)?;
        self.extend(Kind::Semaphore, key, &req).await
    }

    async fn release_semaphore(
        &self,
        key: &str,
        params: ReleaseParams,
    ) -> Result<ReleaseResponse, ApiError> {
        validate::release(key, &params, &self.limits)?;
        self.release(Kind::Semaphore, key, &params.owner, params.token)
            .await
    }

    async fn get_semaphore(
        &self,
        key: &str,
        params: ReadParams,
    ) -> Result<SemaphoreState, ApiError> {
        validate::read(key, &params, &self.limits)?;
        self.read_resource(Kind::Semaphore, key, &params).await?;
        let (holders, waiters, limit, index) = self.read(|s| {
            let r = s.resource(Kind::Semaphore, key);
            (
                current_holders(s, Kind::Semaphore, key),
                r.map_or(0, |r| r.waiters.len() as u32),
                r.map_or(0, |r| r.limit),
                resource_index(r),
            )
        });
        let holders = self
            .holder_views(holders, params.stale.unwrap_or(false))
            .await;
        Ok(SemaphoreState {
            key: key.to_string(),
            limit,
            holders,
            waiters,
            index,
        })
    }

    async fn register_name(
        &self,
        name: &str,
        req: RegisterRequest,
    ) -> Result<NameRecord, ApiError> {
        validate::register(name, &req, &self.limits)?;
        let hold = self
            .acquire(AcquireArgs {
                kind: Kind::Name,
                key: name.to_string(),
                owner: req.owner,
                lease: lease_spec(req.ttl_ms, req.lease_id),
                wait_ms: req.wait_ms.unwrap_or(0),
                value: req.value,
                lock_delay_ms: 0,
                limit: 1,
                request_id: req.request_id,
            })
            .await?;
        let ttl = hold.ttl_ms;
        Ok(name_record(hold, Some(ttl)))
    }

    async fn get_name(&self, name: &str, params: ReadParams) -> Result<NameState, ApiError> {
        validate::read(name, &params, &self.limits)?;
        self.read_resource(Kind::Name, name, &params).await?;
        let (holder, vacated, index) = self.read(|s| {
            let r = s.resource(Kind::Name, name);
            let holder = r
                .and_then(|r| r.holders.first())
                .map(|h| s.hold_view(Kind::Name, name, h));
            let vacated = r.and_then(|r| r.last_end.as_ref()).map(|e| Vacancy {
                owner: e.owner.clone(),
                token: e.token,
                reason: release_reason(e.reason),
                at_ms: e.at_ms,
            });
            (holder, vacated, resource_index(r))
        });
        let blocking = params.wait_ms.is_some();
        match holder {
            Some(h) => {
                let remaining = self
                    .expires_in(vec![h.lease_id], params.stale.unwrap_or(false))
                    .await;
                let record = name_record(h, remaining.first().copied().flatten());
                Ok(NameState {
                    name: name.to_string(),
                    registered: true,
                    record: Some(record.into()),
                    vacated,
                    index,
                })
            }
            None if blocking => Ok(NameState {
                name: name.to_string(),
                registered: false,
                record: None,
                vacated,
                index,
            }),
            None => Err(ApiError::new(
                ErrorCode::NameNotFound,
                format!("name {name:?} is not registered"),
            )),
        }
    }

    async fn proclaim(&self, name: &str, req: ProclaimRequest) -> Result<NameRecord, ApiError> {
        validate::proclaim(name, &req, &self.limits)?;
        let command = Command::SetValue {
            kind: Kind::Name,
            key: name.to_string(),
            owner: req.owner,
            token: req.token,
            value: req.value,
        };
        match self.write(None, command).await? {
            CommandResult::ValueSet(hold) => {
                let ttl = hold.ttl_ms;
                Ok(name_record(hold, Some(ttl)))
            }
            CommandResult::Error(e) => Err(sm_error(Kind::Name, name, e)),
            other => Err(unexpected(other)),
        }
    }

    async fn extend_name(
        &self,
        name: &str,
        req: NameExtendRequest,
    ) -> Result<ExtendResponse, ApiError> {
        validate::key("name", name, &self.limits)?;
        validate::owner(&req.owner)?;
        let extend = ExtendRequest {
            owner: req.owner,
            token: req.token,
            ttl_ms: None,
            request_id: None,
        };
        self.extend(Kind::Name, name, &extend).await
    }

    async fn unregister_name(
        &self,
        name: &str,
        params: ReleaseParams,
    ) -> Result<ReleaseResponse, ApiError> {
        validate::release(name, &params, &self.limits)?;
        self.release(Kind::Name, name, &params.owner, params.token)
            .await
    }

    async fn list_names(&self, params: ListParams) -> Result<NameList, ApiError> {
        let (views, next_after) = self.list_held(Kind::Name, &params).await?;
        let remaining = self
            .expires_in(views.iter().map(|v| v.lease_id).collect(), false)
            .await;
        let names = views
            .into_iter()
            .zip(remaining)
            .map(|(v, rem)| name_record(v, rem))
            .collect();
        Ok(NameList { names, next_after })
    }

    async fn cluster_status(&self) -> Result<ClusterStatus, ApiError> {
        let m = self.core.raft.metrics().borrow().clone();
        let leading = m.state == ServerState::Leader;
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.map_or(0, |l| l.index));
                MemberStatus {
                    id: *id,
                    addr: node.peer_addr.clone(),
                    client_addr: node.client_addr.clone(),
                    voter: voters.contains(id),
                    reachable: if leading {
                        Some(
                            *id == self.core.node_id
                                || matched.is_some_and(|i| i + 64 >= m.last_log_index.unwrap_or(0)),
                        )
                    } else {
                        None
                    },
                    matched_index: if *id == self.core.node_id {
                        m.last_log_index
                    } else {
                        matched
                    },
                }
            })
            .collect();
        let applied_index = m.last_applied.map_or(0, |l| l.index);
        Ok(ClusterStatus {
            node_id: self.core.node_id,
            leader_id: m.current_leader,
            term: m.current_term,
            commit_index: self.core.commit_index().await.unwrap_or(applied_index),
            applied_index,
            members,
        })
    }

    async fn add_member(&self, req: AddMemberRequest) -> Result<ClusterStatus, ApiError> {
        validate::add_member(&req)?;
        self.core
            .change_membership(crate::core::MembershipChange::Add {
                id: req.id,
                peer_addr: req.peer_addr,
                client_addr: req.client_addr,
            })
            .await
            .map_err(core_error)?;
        self.cluster_status().await
    }

    async fn remove_member(&self, id: u64) -> Result<ClusterStatus, ApiError> {
        self.core
            .change_membership(crate::core::MembershipChange::Remove { id })
            .await
            .map_err(core_error)?;
        self.cluster_status().await
    }

    async fn ready(&self) -> Result<(), ApiError> {
        self.barrier(false).await
    }

    async fn metrics_text(&self) -> String {
        let m = self.core.raft.metrics().borrow().clone();
        let (leases, held, waiters, last_token) = self.read(|s| {
            let mut held = 0usize;
            let mut waiters = 0usize;
            for kind in [Kind::Lock, Kind::Name, Kind::Semaphore] {
                for (_, r) in s.held_after(kind, "", None) {
                    held += r.holders.len();
                    waiters += r.waiters.len();
                }
            }
            (s.lease_count(), held, waiters, s.last_token())
        });
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        };
        gauge("leasehold_leases", "live leases", leases as u64);
        gauge(
            "leasehold_holds",
            "held locks, names and semaphore slots",
            held as u64,
        );
        gauge(
            "leasehold_waiters",
            "queued waiters on held keys",
            waiters as u64,
        );
        gauge(
            "leasehold_last_token",
            "the last fencing token issued",
            last_token,
        );
        gauge("leasehold_raft_term", "current raft term", m.current_term);
        gauge(
            "leasehold_raft_is_leader",
            "1 if this node leads",
            u64::from(m.state == ServerState::Leader),
        );
        gauge(
            "leasehold_raft_applied_index",
            "last applied log index",
            m.last_applied.map_or(0, |l| l.index),
        );
        gauge(
            "leasehold_raft_last_log_index",
            "last log index",
            m.last_log_index.unwrap_or(0),
        );
        out
    }
}
