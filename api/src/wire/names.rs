//! Name registry requests and replies: register, proclaim, extend, read and list.

use serde::{Deserialize, Serialize};

use super::{QueuedWaiter, ReleaseReason};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProclaimRequest {
    pub owner: String,
    pub token: u64,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NameExtendRequest {
    pub owner: String,
    pub token: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct NameRecord {
    pub name: String,
    pub owner: String,
    #[serde(default)]
    pub value: Option<String>,
    pub token: u64,
    pub lease_id: u64,
    pub registered_at_ms: u64,
    pub expires_in_ms: u64,
}

/// `GET /v1/names/{name}`. A plain read of a free name is 404 `name_not_found`; a
/// blocking query reports a vacancy as `registered: false`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct NameState {
    pub name: String,
    pub registered: bool,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub record: Option<NameFields>,
    /// How the previous holder's term ended. A handover to a queued candidate happens in
    /// one replicated step, so this is how an observer sees the vacancy it passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vacated: Option<Vacancy>,
    /// The queued campaigns, first in line first.
    #[serde(default)]
    pub queue: Vec<QueuedWaiter>,
    pub index: u64,
}

/// The end of a holder's term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Vacancy {
    pub owner: String,
    pub token: u64,
    pub reason: ReleaseReason,
    pub at_ms: u64,
}

/// The holder fields of a [`NameState`]: present when registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct NameFields {
    #[cfg_attr(feature = "server", schema(required = false))]
    pub owner: String,
    #[serde(default)]
    #[cfg_attr(feature = "server", schema(required = false))]
    pub value: Option<String>,
    #[cfg_attr(feature = "server", schema(required = false))]
    pub token: u64,
    #[cfg_attr(feature = "server", schema(required = false))]
    pub lease_id: u64,
    #[cfg_attr(feature = "server", schema(required = false))]
    pub registered_at_ms: u64,
    #[cfg_attr(feature = "server", schema(required = false))]
    pub expires_in_ms: u64,
}

impl From<NameRecord> for NameFields {
    fn from(r: NameRecord) -> Self {
        NameFields {
            owner: r.owner,
            value: r.value,
            token: r.token,
            lease_id: r.lease_id,
            registered_at_ms: r.registered_at_ms,
            expires_in_ms: r.expires_in_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct NameList {
    pub names: Vec<NameRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}
