//! Wire types of the HTTP/JSON API (SPEC §3). Durations are integer milliseconds with
//! the unit in the name. Requests reject unknown fields.
//!
//! The types of locks and those the resources share are here; `leases`, `semaphores`,
//! `names`, `cluster` (membership) and `status` (the status page, expirations) hold the
//! rest, all re-exported here.

use serde::{Deserialize, Serialize};

mod cluster;
mod leases;
mod names;
mod semaphores;
mod status;

pub use self::cluster::*;
pub use self::leases::*;
pub use self::names::*;
pub use self::semaphores::*;
pub use self::status::*;

// ----- requests -----

/// Acquire a lock: under a new implicit lease (`ttl_ms`) or an existing one (`lease_id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<u64>,
    /// 0 or absent: try once. Otherwise queue FIFO for up to this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    pub owner: String,
    pub token: u64,
    /// A new TTL for the hold's lease (a replicated change); absent: a keepalive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Query string of a release / unregister.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "server", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ReleaseParams {
    /// The holder. A release without `force` that names no owner and token is not the
    /// holder's: 409 `not_owner`. With `force`, narrows the release to this owner's hold
    /// (409 `not_owner` if it holds none).
    #[serde(default)]
    pub owner: String,
    /// The hold's fencing token (0 or absent: none). With `force`, the hold to end, which a
    /// semaphore with several holders needs.
    #[serde(default)]
    pub token: u64,
    /// An operator's force release: end the hold whoever owns it (admin only with auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// Makes a retried release answer as the first one did (SPEC §3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Query string of a read: a blocking query with `index` + `wait_ms`, a dirty read with
/// `stale=true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "server", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "server", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct WaitReleaseParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "server", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

// ----- responses -----

/// A hold of a lock (or a semaphore slot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LockHolder {
    pub key: String,
    pub owner: String,
    /// The fencing token: strictly increases for each new holder of a key.
    pub token: u64,
    pub lease_id: u64,
    pub ttl_ms: u64,
    /// Leader wall-clock time of the grant (ms since the Unix epoch).
    pub locked_at_ms: u64,
    pub expires_in_ms: u64,
    /// How many times this key has been granted while the cluster remembered it (a
    /// per-key sequence, like Locker's). A key is remembered while held, queued, or idle
    /// among the 100,000 most recently changed idle keys; a key forgotten as the oldest
    /// idle one starts again from 1, and so does its history.
    pub acquisitions: u64,
    #[serde(default)]
    pub value: Option<String>,
}

/// Who holds a key, in a 409 reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct HolderSummary {
    pub owner: String,
    pub token: u64,
    pub expires_in_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ExtendResponse {
    pub token: u64,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ReleaseResponse {
    pub released: bool,
    /// A force release: whose hold it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A force release: the token of the hold it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
}

/// `GET /v1/locks/{key}`: the holder's fields at top level when held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LockState {
    pub key: String,
    pub held: bool,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderFields>,
    pub waiters: u32,
    /// The queued acquires, first in line first.
    #[serde(default)]
    pub queue: Vec<QueuedWaiter>,
    /// The key's modify index (for blocking queries).
    pub index: u64,
}

/// The holder fields of a [`LockState`] (its key is the state's key): present when held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct HolderFields {
    #[cfg_attr(feature = "server", schema(required = false))]
    pub owner: String,
    #[cfg_attr(feature = "server", schema(required = false))]
    pub token: u64,
    #[cfg_attr(feature = "server", schema(required = false))]
    pub lease_id: u64,
    #[cfg_attr(feature = "server", schema(required = false))]
    pub ttl_ms: u64,
    #[cfg_attr(feature = "server", schema(required = false))]
    pub locked_at_ms: u64,
    #[cfg_attr(feature = "server", schema(required = false))]
    pub expires_in_ms: u64,
    #[cfg_attr(feature = "server", schema(required = false))]
    pub acquisitions: u64,
    #[serde(default)]
    #[cfg_attr(feature = "server", schema(required = false))]
    pub value: Option<String>,
}

impl From<LockHolder> for HolderFields {
    fn from(h: LockHolder) -> Self {
        HolderFields {
            owner: h.owner,
            token: h.token,
            lease_id: h.lease_id,
            ttl_ms: h.ttl_ms,
            locked_at_ms: h.locked_at_ms,
            expires_in_ms: h.expires_in_ms,
            acquisitions: h.acquisitions,
            value: h.value,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ReleaseReason {
    Released,
    Expired,
    Revoked,
    /// An operator force-released it.
    Stolen,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct WaitReleaseResponse {
    pub released: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ReleaseReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// When not released: who holds it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<LockHolder>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum HistoryEventKind {
    Acquired,
    Released,
    Expired,
    Revoked,
    /// Force-released by an operator (`principal`: who, with auth on).
    Stolen,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct HistoryEvent {
    pub event: HistoryEventKind,
    pub owner: String,
    pub token: u64,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// The principal of the hold's lease (auth on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct HistoryResponse {
    pub key: String,
    /// Newest first.
    pub events: Vec<HistoryEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LockList {
    pub locks: Vec<LockHolder>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// One queued acquire or campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct QueuedWaiter {
    pub owner: String,
    /// The lease the wait (and the hold, once granted) lives under.
    pub lease_id: u64,
    /// Place in the queue, from 1 (next to be granted).
    pub position: u32,
    /// How long it has waited, by the cluster's clock as of the last applied entry.
    pub waited_ms: u64,
}
