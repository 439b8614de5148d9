//! Semaphore requests and replies (releases, extensions and reads share the lock types).

use serde::{Deserialize, Serialize};

use super::{LockHolder, QueuedWaiter};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SemaphoreAcquireRequest {
    pub owner: String,
    pub limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SemaphoreSlot {
    pub key: String,
    pub owner: String,
    pub token: u64,
    pub lease_id: u64,
    pub ttl_ms: u64,
    pub limit: u32,
    pub holders: Vec<LockHolder>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SemaphoreState {
    pub key: String,
    pub limit: u32,
    pub holders: Vec<LockHolder>,
    pub waiters: u32,
    /// The queued acquires, first in line first.
    #[serde(default)]
    pub queue: Vec<QueuedWaiter>,
    pub index: u64,
}

/// `GET /v1/semaphores`: held semaphores in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SemaphoreList {
    pub semaphores: Vec<SemaphoreState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}
