//! The table of documented operations, one row per method and path, and the types its
//! rows are made of (what an operation takes, what it answers, which errors it adds).

use utoipa::openapi::path::ParameterIn;
use utoipa::IntoParams;

use crate::wire::*;

/// What an operation takes besides its path parameter.
#[derive(Clone, Copy)]
pub enum Input {
    None,
    /// A JSON body of this schema (a component name).
    Body(&'static str),
    /// Query parameters of this kind.
    Query(QueryKind),
}

/// The query-string types, by name (so the table stays `const`).
#[derive(Clone, Copy)]
pub enum QueryKind {
    Release,
    Revoke,
    Read,
    WaitRelease,
    List,
    LeaseList,
    Expired,
    Status,
}

impl QueryKind {
    pub(super) fn parameters(self) -> Vec<utoipa::openapi::path::Parameter> {
        let query = || Some(ParameterIn::Query);
        match self {
            QueryKind::Release => ReleaseParams::into_params(query),
            QueryKind::Revoke => RevokeParams::into_params(query),
            QueryKind::Read => ReadParams::into_params(query),
            QueryKind::WaitRelease => WaitReleaseParams::into_params(query),
            QueryKind::List => ListParams::into_params(query),
            QueryKind::LeaseList => LeaseListParams::into_params(query),
            QueryKind::Expired => ExpiredParams::into_params(query),
            QueryKind::Status => StatusParams::into_params(query),
        }
    }
}

/// What a successful reply carries.
#[derive(Clone, Copy)]
pub enum Output {
    /// JSON of this schema (a component name).
    Json(&'static str),
    /// Text of this content type (the status page, Prometheus metrics).
    Text(&'static str),
}

/// One documented operation.
pub struct Operation {
    pub method: &'static str,
    /// The path, with `{key}`, `{name}` or `{id}` for the parameter.
    pub path: &'static str,
    pub summary: &'static str,
    pub input: Input,
    pub status: u16,
    pub output: Output,
    /// Error statuses beyond the ones every `/v1/` operation can answer (400, 503, 504).
    pub errors: &'static [u16],
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    input: Input,
    status: u16,
    output: Output,
    errors: &'static [u16],
) -> Operation {
    Operation {
        method,
        path,
        summary,
        input,
        status,
        output,
        errors,
    }
}

use Input::{Body, Query};
use Output::{Json, Text};

/// Every operation of the HTTP API.
pub const OPERATIONS: &[Operation] = &[
    op(
        "GET",
        "/",
        "Status page for people: members, leader, live leases, locks and names",
        Input::None,
        200,
        Text("text/html"),
        &[],
    ),
    op(
        "GET",
        "/healthz",
        "The process is up",
        Input::None,
        200,
        Json("Object"),
        &[],
    ),
    op(
        "GET",
        "/readyz",
        "Has a leader and has applied the leader's commit index of the moment",
        Input::None,
        200,
        Json("Object"),
        &[503, 504],
    ),
    op(
        "GET",
        "/metrics",
        "Prometheus text exposition",
        Input::None,
        200,
        Text("text/plain"),
        &[],
    ),
    op(
        "GET",
        "/openapi.json",
        "This description",
        Input::None,
        200,
        Json("Object"),
        &[],
    ),
    op(
        "POST",
        "/v1/leases",
        "Create a lease",
        Body("CreateLeaseRequest"),
        201,
        Json("LeaseGrant"),
        &[429],
    ),
    op(
        "GET",
        "/v1/leases",
        "List leases, by id",
        Query(QueryKind::LeaseList),
        200,
        Json("LeaseList"),
        &[],
    ),
    op(
        "GET",
        "/v1/leases/{id}",
        "A lease, its time left and what it holds",
        Input::None,
        200,
        Json("LeaseInfo"),
        &[404],
    ),
    op(
        "DELETE",
        "/v1/leases/{id}",
        "Revoke a lease; its holds are released and pass to waiters",
        Query(QueryKind::Revoke),
        200,
        Json("RevokeResponse"),
        &[404],
    ),
    op(
        "POST",
        "/v1/leases/{id}/keepalive",
        "Keep a lease alive for another TTL",
        Input::None,
        200,
        Json("KeepaliveResponse"),
        &[404],
    ),
    op(
        "GET",
        "/v1/locks",
        "List held locks, by key",
        Query(QueryKind::List),
        200,
        Json("LockList"),
        &[],
    ),
    op(
        "POST",
        "/v1/locks/{key}",
        "Acquire a lock; with wait_ms, queue FIFO for it",
        Body("AcquireRequest"),
        200,
        Json("LockHolder"),
        &[404, 409, 413, 429],
    ),
    op(
        "GET",
        "/v1/locks/{key}",
        "A lock's state; a blocking query with index and wait_ms; a dirty read with stale=true",
        Query(QueryKind::Read),
        200,
        Json("LockState"),
        &[413],
    ),
    op(
        "DELETE",
        "/v1/locks/{key}",
        "Release a lock",
        Query(QueryKind::Release),
        200,
        Json("ReleaseResponse"),
        &[404, 409, 413],
    ),
    op(
        "POST",
        "/v1/locks/{key}/extend",
        "Keep a lock's lease alive, or give it a new TTL",
        Body("ExtendRequest"),
        200,
        Json("ExtendResponse"),
        &[404, 409, 413],
    ),
    op(
        "GET",
        "/v1/locks/{key}/wait",
        "Wait for a lock (or, with token, that hold) to be released",
        Query(QueryKind::WaitRelease),
        200,
        Json("WaitReleaseResponse"),
        &[413],
    ),
    op(
        "GET",
        "/v1/locks/{key}/history",
        "A key's recent events, newest first",
        Input::None,
        200,
        Json("HistoryResponse"),
        &[413],
    ),
    op(
        "GET",
        "/v1/semaphores/{key}/history",
        "A semaphore's recent events, newest first",
        Input::None,
        200,
        Json("HistoryResponse"),
        &[413],
    ),
    op(
        "GET",
        "/v1/names/{name}/history",
        "A name's recent events, newest first",
        Input::None,
        200,
        Json("HistoryResponse"),
        &[413],
    ),
    op(
        "GET",
        "/v1/expired",
        "The most recent expirations, newest first",
        Query(QueryKind::Expired),
        200,
        Json("ExpiredList"),
        &[],
    ),
    op(
        "POST",
        "/v1/semaphores/{key}",
        "Acquire a semaphore slot; with wait_ms, queue FIFO for one",
        Body("SemaphoreAcquireRequest"),
        200,
        Json("SemaphoreSlot"),
        &[404, 409, 413, 429],
    ),
    op(
        "GET",
        "/v1/semaphores/{key}",
        "A semaphore's holders and waiters",
        Query(QueryKind::Read),
        200,
        Json("SemaphoreState"),
        &[413],
    ),
    op(
        "DELETE",
        "/v1/semaphores/{key}",
        "Release a semaphore slot",
        Query(QueryKind::Release),
        200,
        Json("ReleaseResponse"),
        &[404, 409, 413],
    ),
    op(
        "POST",
        "/v1/semaphores/{key}/extend",
        "Keep a slot's lease alive, or give it a new TTL",
        Body("ExtendRequest"),
        200,
        Json("ExtendResponse"),
        &[404, 409, 413],
    ),
    op(
        "GET",
        "/v1/semaphores",
        "List held semaphores in key order, with holders and queues",
        Query(QueryKind::List),
        200,
        Json("SemaphoreList"),
        &[],
    ),
    op(
        "GET",
        "/v1/names",
        "List registered names",
        Query(QueryKind::List),
        200,
        Json("NameList"),
        &[],
    ),
    op(
        "PUT",
        "/v1/names/{name}",
        "Register a name; with wait_ms, campaign for it (FIFO)",
        Body("RegisterRequest"),
        200,
        Json("NameRecord"),
        &[404, 409, 413, 429],
    ),
    op(
        "GET",
        "/v1/names/{name}",
        "Whereis; a blocking query reports new holders and vacancies",
        Query(QueryKind::Read),
        200,
        Json("NameState"),
        &[404, 413],
    ),
    op(
        "PATCH",
        "/v1/names/{name}",
        "Proclaim a new value",
        Body("ProclaimRequest"),
        200,
        Json("NameRecord"),
        &[409, 413],
    ),
    op(
        "DELETE",
        "/v1/names/{name}",
        "Unregister (resign)",
        Query(QueryKind::Release),
        200,
        Json("ReleaseResponse"),
        &[404, 409, 413],
    ),
    op(
        "POST",
        "/v1/names/{name}/extend",
        "Keep a registration's lease alive",
        Body("NameExtendRequest"),
        200,
        Json("ExtendResponse"),
        &[404, 409, 413],
    ),
    op(
        "GET",
        "/v1/cluster",
        "Members, leader, term and indexes as this node sees them",
        Input::None,
        200,
        Json("ClusterStatus"),
        &[],
    ),
    op(
        "POST",
        "/v1/cluster/members",
        "Add a member: a learner that catches up, then a voter",
        Body("AddMemberRequest"),
        200,
        Json("ClusterStatus"),
        &[409],
    ),
    op(
        "DELETE",
        "/v1/cluster/members/{id}",
        "Remove a member",
        Input::None,
        200,
        Json("ClusterStatus"),
        &[404, 409],
    ),
    op(
        "GET",
        "/v1/status",
        "What the status page shows: members, held locks, names and semaphores with their \
         queues, recent expirations and rate samples; a blocking query on the applied index",
        Input::Query(QueryKind::Status),
        200,
        Json("StatusView"),
        &[],
    ),
    op(
        "GET",
        "/v1/cluster/snapshot",
        "A backup of the whole state, as of a linearizable read (admin): the file \
         `leasehold snapshot save` writes",
        Input::None,
        200,
        Text("application/octet-stream"),
        &[],
    ),
];
