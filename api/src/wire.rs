//! Wire types of the HTTP/JSON API (SPEC §3). Durations are integer milliseconds with
//! the unit in the name. Requests reject unknown fields.

use serde::{Deserialize, Serialize};

// ----- requests -----

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateLeaseRequest {
    pub ttl_ms: u64,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
}

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

/// Query string of a lease revocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "server", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct RevokeParams {
    /// Makes a retried revocation answer as the first one did.
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "server", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct LeaseListParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// The new member's node id (1 to 2^53-1, not a member's already).
    pub id: u64,
    /// Where the members reach its peer port: `ip:port` (an IPv6 address in brackets),
    /// as Rust's `SocketAddr` parses it. (JSON Schema's patterns cannot state that
    /// exactly; the server refuses anything else with 400 naming the field.)
    pub peer_addr: String,
    /// Its HTTP API address, `ip:port` like `peer_addr`; empty or absent: unknown.
    #[serde(default)]
    pub client_addr: String,
}

// ----- responses -----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LeaseGrant {
    pub lease_id: u64,
    pub ttl_ms: u64,
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct KeepaliveResponse {
    pub lease_id: u64,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct RevokeResponse {
    pub revoked: bool,
    /// Keys of the locks, names (`name:` prefix) and semaphores (`semaphore:` prefix)
    /// that were released.
    pub released: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LeaseInfo {
    pub lease_id: u64,
    pub ttl_ms: u64,
    pub owner: String,
    /// Time left as the leader tracks it (the full TTL where unknown).
    pub remaining_ms: u64,
    pub locks: Vec<String>,
    pub names: Vec<String>,
    pub semaphores: Vec<String>,
    /// The principal the lease belongs to (auth on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LeaseList {
    pub leases: Vec<LeaseInfo>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

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

/// `GET /v1/semaphores`: held semaphores in key order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct SemaphoreList {
    pub semaphores: Vec<SemaphoreState>,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct MemberStatus {
    pub id: u64,
    /// The member's peer (Raft) address.
    pub addr: String,
    /// The member's HTTP address, where known.
    #[serde(default)]
    pub client_addr: String,
    pub voter: bool,
    /// As the leader sees it; `None` when this node is not the leader.
    #[serde(default)]
    pub reachable: Option<bool>,
    #[serde(default)]
    pub matched_index: Option<u64>,
    /// Entries this member's log is behind the leader's commit index (known on the
    /// leader; `GET /v1/status` asks the leader for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// The identity of the member's data directory, as it recorded it once caught up
    /// (absent for in-memory members, and until then). A member whose directory was
    /// wiped is refused at start while this is set; `--rejoin` replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    pub node_id: u64,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberStatus>,
    /// Set when this node's Raft core stopped on a storage error (a full or failing
    /// disk): what failed and where. The rest of this status is then frozen at the fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_fault: Option<String>,
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
