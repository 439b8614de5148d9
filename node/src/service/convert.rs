//! State-machine values and errors to wire types and `ApiError`s.

use leasehold_api::error::{ApiError, ErrorCode};
use leasehold_api::wire::*;
use leasehold_raft::command::{
    BusyReason, CommandResult, EndReason, HoldView, Kind, LeaseSpec, SmError,
};
use leasehold_raft::state::{HistoryKind, HistoryRecord, Lease};

use crate::error::CoreError;

pub(super) fn lock_holder(v: HoldView, expires_in_ms: Option<u64>) -> LockHolder {
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

pub(super) fn name_record(v: HoldView, expires_in_ms: Option<u64>) -> NameRecord {
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

pub(super) fn summary(v: &HoldView) -> HolderSummary {
    HolderSummary {
        owner: v.owner.clone(),
        token: v.token,
        expires_in_ms: v.ttl_ms,
    }
}

/// The 409 for a busy resource. `expires_in_ms`: the time left on the first holder's lease
/// (`None`: unknown here, and its full TTL is reported as the upper bound). `waited`: the
/// request queued and its wait ran out (so it is not told to pass `wait_ms`).
pub(super) fn busy_error(
    kind: Kind,
    key: &str,
    holders: &[HoldView],
    reason: &BusyReason,
    expires_in_ms: Option<u64>,
    waited: bool,
) -> ApiError {
    let (code, what) = match kind {
        Kind::Lock => (ErrorCode::LockHeld, "lock"),
        Kind::Name => (ErrorCode::NameTaken, "name"),
        Kind::Semaphore => (ErrorCode::SemaphoreFull, "semaphore"),
    };
    let advice = match waited {
        true => "; the wait ran out (the queue entry was removed)",
        false => "; pass wait_ms to queue",
    };
    let message = match (reason, holders.first()) {
        (BusyReason::Delayed { until_ms }, _) => format!(
            "{what} {key:?} is free but under lock-delay until {until_ms} (ms since epoch) after an expiry{advice}"
        ),
        (BusyReason::Held, Some(h)) if kind != Kind::Semaphore => format!(
            "{what} {key:?} is held by {:?} (token {}){advice}",
            h.owner, h.token
        ),
        _ => format!(
            "{what} {key:?} has no free slot ({} holders){advice}",
            holders.len()
        ),
    };
    let mut err = ApiError::new(code, message);
    err.holder = holders.first().map(|h| {
        let mut holder = summary(h);
        holder.expires_in_ms = expires_in_ms.unwrap_or(holder.expires_in_ms);
        holder
    });
    err
}

pub(super) fn sm_error(kind: Kind, key: &str, e: SmError) -> ApiError {
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
        SmError::Stolen { by } => {
            let by = by.map(|p| format!(" ({p:?})")).unwrap_or_default();
            let mut e = ApiError::new(
                ErrorCode::NotOwner,
                format!(
                    "{} {key:?} is not held by this owner and token: it was released by an operator{by} (force release)",
                    kind.as_str()
                ),
            );
            e.reason = Some("stolen".into());
            e
        }
        SmError::SlotTokenRequired { holders } => ApiError::invalid(
            "token",
            format!(
                "{} {key:?} has {holders} holders: name the slot to force-release with token=N",
                kind.as_str()
            ),
        ),
        SmError::AdminRequired { principal } => ApiError::new(
            ErrorCode::Forbidden,
            format!("principal {principal:?} may not force-release: that needs the admin role"),
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
        SmError::Forbidden {
            lease_id,
            principal,
            lease_principal,
        } => ApiError::new(
            ErrorCode::Forbidden,
            match lease_principal {
                Some(owner) => format!(
                    "principal {principal:?} may not use lease {lease_id}: it belongs to principal {owner:?} (only its principal or an admin may)"
                ),
                None => format!(
                    "principal {principal:?} may not use lease {lease_id}: it was created without a principal (only an admin may)"
                ),
            },
        ),
        SmError::PrincipalQuota { principal, max } => ApiError::new(
            ErrorCode::TooManyRequests,
            format!(
                "principal {principal:?} already has {max} live leases (max_leases in its tokens file entry); revoke unused leases or raise its quota"
            ),
        ),
    }
}

pub(super) fn core_error(e: CoreError) -> ApiError {
    match e {
        CoreError::NotLeader { .. } | CoreError::Unavailable(_) | CoreError::ShuttingDown => {
            let mut err = ApiError::new(
                ErrorCode::Unavailable,
                format!("{e}; retry shortly or use another node"),
            );
            err.retry_after_ms = Some(1000);
            err
        }
        CoreError::StorageFailed(_) => {
            let mut err = ApiError::new(
                ErrorCode::Unavailable,
                format!("{e}; use another node meanwhile"),
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

pub(super) fn unexpected(result: CommandResult) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("unexpected state machine result: {result:?}"),
    )
}

pub(super) fn lease_spec(ttl_ms: Option<u64>, lease_id: Option<u64>) -> LeaseSpec {
    match lease_id {
        Some(id) => LeaseSpec::Existing(id),
        None => LeaseSpec::New {
            ttl_ms: ttl_ms.unwrap_or_default(),
        },
    }
}

pub(super) fn release_reason(reason: EndReason) -> ReleaseReason {
    match reason {
        EndReason::Released => ReleaseReason::Released,
        EndReason::Expired => ReleaseReason::Expired,
        EndReason::Revoked => ReleaseReason::Revoked,
        EndReason::Stolen => ReleaseReason::Stolen,
    }
}

pub(super) fn kind_key_label(kind: Kind, key: &str) -> String {
    match kind {
        Kind::Lock => key.to_string(),
        Kind::Name => format!("name:{key}"),
        Kind::Semaphore => format!("semaphore:{key}"),
    }
}

pub(super) fn history_kind(kind: HistoryKind) -> HistoryEventKind {
    match kind {
        HistoryKind::Acquired => HistoryEventKind::Acquired,
        HistoryKind::Released => HistoryEventKind::Released,
        HistoryKind::Expired => HistoryEventKind::Expired,
        HistoryKind::Stolen => HistoryEventKind::Stolen,
        HistoryKind::Revoked => HistoryEventKind::Revoked,
    }
}

pub(super) fn resource_kind(kind: Kind) -> ResourceKind {
    match kind {
        Kind::Lock => ResourceKind::Lock,
        Kind::Name => ResourceKind::Name,
        Kind::Semaphore => ResourceKind::Semaphore,
    }
}

/// A lease as the API shows it; `remaining_ms` starts at the full TTL (an upper bound)
/// until the leader's lease actor says better.
pub(super) fn lease_info(l: &Lease) -> LeaseInfo {
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
        principal: l.principal.clone(),
    }
}

pub(super) fn history_event(e: &HistoryRecord) -> HistoryEvent {
    HistoryEvent {
        event: history_kind(e.event),
        owner: e.owner.clone(),
        token: e.token,
        at_ms: e.at_ms,
        held_ms: e.held_ms,
        waited_ms: e.waited_ms,
        principal: e.principal.clone(),
    }
}
