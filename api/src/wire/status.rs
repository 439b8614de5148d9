//! The status page's reply and the list of recent expirations.

use serde::{Deserialize, Serialize};

use super::{ClusterStatus, LockState, NameState, SemaphoreState};

/// Query string of `GET /v1/status`: a blocking query on the node's applied index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "server", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct StatusParams {
    /// Answer once the applied index passes this (or `wait_ms` runs out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "server", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ExpiredParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    Lock,
    Name,
    Semaphore,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ExpiredEntry {
    pub kind: ResourceKind,
    pub key: String,
    pub owner: String,
    pub token: u64,
    pub expired_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ExpiredList {
    /// Newest first.
    pub expired: Vec<ExpiredEntry>,
}

/// `GET /v1/status`: what the status page shows, in one reply (held resources are read
/// from this node's state: `expires_in_ms` is exact on the leader, the full TTL
/// elsewhere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct StatusView {
    /// This node's applied index: pass it back as `index` to wait for the next change.
    pub index: u64,
    pub cluster: ClusterStatus,
    /// Held locks (at most 100), with their queues.
    pub locks: Vec<LockState>,
    pub names: Vec<NameState>,
    pub semaphores: Vec<SemaphoreState>,
    /// Recent expirations, newest first (at most 20).
    pub expired: Vec<ExpiredEntry>,
    /// Rates over the last minutes, oldest first, one sample every 2 s.
    pub series: Vec<StatusSample>,
}

/// One point of the status page's charts (this node's view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct StatusSample {
    pub at_ms: u64,
    /// Grants and handoffs (grants to a queued waiter) per second, as applied here.
    pub grants_per_s: f64,
    pub handoffs_per_s: f64,
    /// 99th percentile latency of the writes this node served in the interval (POST,
    /// PUT, PATCH, DELETE; blocking acquires include their wait); `None` with no writes.
    #[serde(default)]
    pub p99_ms: Option<f64>,
}
