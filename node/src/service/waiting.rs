//! Waiting, on the node the client is connected to: a blocking acquire (a queue entry in
//! the replicated state, kept alive while the client waits and cancelled if it leaves),
//! a blocking query (until a resource's modify index passes the client's), and
//! wait-for-release. All are woken by the local state machine's applied-index watch.

use std::sync::Arc;
use std::time::Duration;

use leasehold_api::error::{ApiError, ErrorCode};
use leasehold_api::validate;
use leasehold_api::wire::*;
use leasehold_raft::command::{
    BusyReason, Command, CommandResult, EndReason, HoldView, Kind, LeaseId, Proposal, SmError,
};
use leasehold_raft::state::{HistoryKind, LeaseState};
use tokio::time::Instant;
use tracing::debug;

use super::convert::{core_error, release_reason, sm_error, unexpected};
use super::resources::{current_holders, AcquireArgs};
use super::NodeService;
use crate::core::Core;
use crate::error::CoreError;
use crate::overload::LongPoll;

impl NodeService {
    /// Wait in the replicated queue until granted or `deadline`; keep the waiting lease
    /// alive meanwhile. Dropping this future (the client left) cancels the wait.
    pub(super) async fn wait_for_grant(
        &self,
        args: &AcquireArgs,
        queued_at_index: u64,
        lease_id: LeaseId,
        deadline: Instant,
        long_poll: Option<LongPoll>,
    ) -> Result<HoldView, ApiError> {
        let _long_poll = long_poll.map(LongPoll::parked);
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
            .max(self.core.request_timeout());
        self.core
            .wait_applied(queued_at_index, catch_up)
            .await
            .map_err(core_error)?;
        let ttl_ms = self
            .read(|s| s.lease(lease_id).map(|l| l.ttl_ms))
            .unwrap_or(self.limits.min_ttl_ms);
        let keepalive_every = Duration::from_millis((ttl_ms / 3).max(1));
        let mut next_keepalive = Instant::now() + keepalive_every;
        let mut applied = self.core.subscribe_applied();
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
                        self.core.keepalive_lease(lease_id, self.caller()).await
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
                    .wait_applied(index, self.core.request_timeout())
                    .await;
                let holders = self.read(|s| current_holders(s, args.kind, &args.key));
                // An implicit lease went with the wait (the state machine revoked it).
                Err(self
                    .busy(args.kind, &args.key, &holders, &BusyReason::Held, true)
                    .await)
            }
            CommandResult::Error(e) => Err(sm_error(args.kind, &args.key, e)),
            other => Err(unexpected(other)),
        }
    }

    /// Wait (on local applies) until `kind/key`'s modify index exceeds `index`; 503 past
    /// `limits.max_long_polls` (a wait of 0 is a plain read and takes no permit).
    pub(super) async fn wait_for_change(
        &self,
        kind: Kind,
        key: &str,
        index: u64,
        wait_ms: u64,
    ) -> Result<(), ApiError> {
        if wait_ms == 0 {
            return Ok(());
        }
        let _long_poll = self.core.overload().long_poll()?.parked();
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let mut applied = self.core.subscribe_applied();
        loop {
            let current = self.read(|s| s.resource(kind, key).map_or(0, |r| r.mod_index));
            if current > index {
                return Ok(());
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return Ok(()) },
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
            }
        }
    }

    pub(super) async fn wait_release_impl(
        &self,
        key: &str,
        params: WaitReleaseParams,
    ) -> Result<WaitReleaseResponse, ApiError> {
        validate::wait_release(key, &params, &self.limits)?;
        // Never answer from a state older than the request.
        self.barrier(false).await?;
        let _long_poll = match params.wait_ms {
            Some(ms) if ms > 0 => Some(self.core.overload().long_poll()?.parked()),
            _ => None,
        };
        let deadline = Instant::now() + Duration::from_millis(params.wait_ms.unwrap_or(0));
        let mut applied = self.core.subscribe_applied();
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
                                HistoryKind::Stolen => EndReason::Stolen,
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
        // The request is gone; clean up in the background (bounded by the write deadline),
        // tracked so that shutdown waits for it.
        let task_core = core.clone();
        task_core.spawn(async move {
            let cancel = Proposal {
                request_id: None,
                caller: None,
                command: Command::CancelWait {
                    kind,
                    key: key.clone(),
                    lease_id,
                },
            };
            let result = core.write(cancel).await;
            debug!(
                lease_id,
                ?result,
                "the waiting client left: cancelled its wait"
            );
            if let (true, Ok((_, CommandResult::Granted(hold)))) = (release_raced_grant, result) {
                // Granted just as the client left, and no retry can claim it: release it.
                let release = Proposal {
                    request_id: None,
                    caller: None,
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
