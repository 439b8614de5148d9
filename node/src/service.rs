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

    async fn write(&self, request_id: Option<String>, command: Command) -> Result<CommandResult, ApiError> {
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
        match self.write(args.request_id.clone(), command).await? {
            CommandResult::Granted(hold) => Ok(hold),
            CommandResult::Busy { holders, reason } => Err(busy_error(args.kind, &args.key, &holders, &reason)),
            CommandResult::Queued {
                lease_id,
                implicit_lease,
                ..
            } => {
                let deadline = started + Duration::from_millis(args.wait_ms);
                self.wait_for_grant(&args, lease_id, implicit_lease, deadline).await
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
        lease_id: LeaseId,
        implicit_lease: bool,
        deadline: Instant,
    ) -> Result<HoldView, ApiError> {
        let mut guard = CancelWaitOnDrop {
            core: Some(self.core.clone()),
            kind: args.kind,
            key: args.key.clone(),
            lease_id,
        };
        let ttl_ms = self.read(|s| s.lease(lease_id).map(|l| l.ttl_ms)).unwrap_or(self.limits.min_ttl_ms);
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
                        format!("lease {lease_id} ended while waiting for {:?} {:?}", args.kind, args.key),
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
        let result = self
            .write(
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
                let holders = self.read(|s| current_holders(s, args.kind, &args.key));
                let _ = implicit_lease; // the state machine revoked it with the wait
                Err(busy_error(args.kind, &args.key, &holders, &BusyReason::Held))
            }
            CommandResult::Error(e) => Err(sm_error(args.kind, &args.key, e)),
            other => Err(unexpected(other)),
        }
    }

    async fn release(&self, kind: Kind, key: &str, owner: &str, token: Token) -> Result<ReleaseResponse, ApiError> {
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

    async fn extend(&self, kind: Kind, key: &str, req: &ExtendRequest) -> Result<ExtendResponse, ApiError> {
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
                    CommandResult::Extended { token, ttl_ms, .. } => Ok(ExtendResponse { token, ttl_ms }),
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
        let remaining = self.expires_in(views.iter().map(|v| v.lease_id).collect(), stale).await;
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
        .map(|r| r.holders.iter().map(|h| s.hold_view(kind, key, h)).collect())
        .unwrap_or_default()
}

/// Cancels a queued wait if the waiting request goes away (the client disconnected).
struct CancelWaitOnDrop {
    core: Option<Arc<Core>>,
    kind: Kind,
    key: String,
    lease_id: LeaseId,
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
            if let Ok(CommandResult::Granted(hold)) = core.write(cancel).await {
                // Granted just as the client left: nobody will use it, so release it.
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
    }
}

fn unexpected(result: CommandResult) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("unexpected state machine result: {result:?}"))
}

fn lease_spec(ttl_ms: Option<u64>, lease_id: Option<u64>) -> LeaseSpec {
    match lease_id {
        Some(id) => LeaseSpec::Existing(id),
        None => LeaseSpec::New {
            ttl_ms: ttl_ms.unwrap_or_default(),
        },
    }
}

fn history_event(kind: HistoryKind) -> &'static str {
    kind.as_str()
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
