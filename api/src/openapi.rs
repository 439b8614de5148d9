//! The OpenAPI 3.1 description served at `GET /openapi.json` (SPEC §3).
//!
//! Schemas are derived from the wire types themselves (`utoipa::ToSchema` on every type in
//! [`crate::wire`] and [`crate::error`]), so they cannot drift from what the server
//! parses and sends. Operations come from [`OPERATIONS`], one row per method and path; a
//! test in `cluster-tests` checks every row against a live node (no row is a 404 or 405)
//! and that every route the router serves has a row.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, InfoBuilder, ObjectBuilder, OpenApi, OpenApiBuilder, Paths, Ref,
    RefOr, Required, ResponseBuilder, Schema, Type,
};
use utoipa::{IntoParams, OpenApi as _};

use crate::error::{ApiError, Envelope, ErrorCode};
use crate::wire::*;

/// Every component schema, derived from the wire types.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(
    CreateLeaseRequest,
    AcquireRequest,
    SemaphoreAcquireRequest,
    ExtendRequest,
    RegisterRequest,
    ProclaimRequest,
    NameExtendRequest,
    AddMemberRequest,
    LeaseGrant,
    KeepaliveResponse,
    RevokeResponse,
    LeaseInfo,
    LeaseList,
    LockHolder,
    HolderSummary,
    ExtendResponse,
    ReleaseResponse,
    LockState,
    HolderFields,
    ReleaseReason,
    WaitReleaseResponse,
    HistoryEventKind,
    HistoryEvent,
    HistoryResponse,
    LockList,
    ResourceKind,
    ExpiredEntry,
    ExpiredList,
    SemaphoreSlot,
    SemaphoreState,
    NameRecord,
    NameState,
    Vacancy,
    NameFields,
    NameList,
    MemberStatus,
    ClusterStatus,
    ErrorCode,
    ApiError,
    Envelope,
)))]
struct Components;

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
    Read,
    WaitRelease,
    List,
    LeaseList,
    Expired,
}

impl QueryKind {
    fn parameters(self) -> Vec<utoipa::openapi::path::Parameter> {
        let query = || Some(ParameterIn::Query);
        match self {
            QueryKind::Release => ReleaseParams::into_params(query),
            QueryKind::Read => ReadParams::into_params(query),
            QueryKind::WaitRelease => WaitReleaseParams::into_params(query),
            QueryKind::List => ListParams::into_params(query),
            QueryKind::LeaseList => LeaseListParams::into_params(query),
            QueryKind::Expired => ExpiredParams::into_params(query),
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
        Input::None,
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
        &[409, 413],
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
        &[409, 413],
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
        &[409, 413],
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
];

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "invalid_argument: the message names the field and the rule",
        404 => "lease_not_found, name_not_found or not_found",
        409 => "lock_held / name_taken (with holder), not_owner, semaphore_full, limit_mismatch",
        413 => "payload_too_large: body, key or value over the limits",
        429 => "too_many_requests: over a configured quota",
        503 => "unavailable: no leader or no quorum; Retry-After is set",
        504 => "timeout: the request's own deadline passed",
        _ => "",
    }
}

fn component(name: &str) -> RefOr<Schema> {
    if name == "Object" {
        RefOr::T(Schema::Object(
            ObjectBuilder::new().schema_type(Type::Object).build(),
        ))
    } else {
        RefOr::Ref(Ref::from_schema_name(name))
    }
}

fn method(name: &str) -> HttpMethod {
    match name {
        "GET" => HttpMethod::Get,
        "POST" => HttpMethod::Post,
        "PUT" => HttpMethod::Put,
        "PATCH" => HttpMethod::Patch,
        "DELETE" => HttpMethod::Delete,
        other => unreachable!("no operation uses {other}"),
    }
}

fn paths() -> Paths {
    let mut paths = Paths::new();
    for o in OPERATIONS {
        let mut b = OperationBuilder::new().summary(Some(o.summary));
        for param in ["key", "name", "id"] {
            if o.path.contains(&format!("{{{param}}}")) {
                let (schema_type, description) = if param == "id" {
                    (Type::Integer, "a lease or member id")
                } else {
                    (
                        Type::String,
                        "may contain '/'; may not end in /extend, /wait or /history",
                    )
                };
                b = b.parameter(
                    ParameterBuilder::new()
                        .name(param)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .description(Some(description))
                        .schema(Some(ObjectBuilder::new().schema_type(schema_type))),
                );
            }
        }
        match o.input {
            Input::None => {}
            Input::Body(schema) => {
                b = b.request_body(Some(
                    RequestBodyBuilder::new()
                        .required(Some(Required::True))
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(component(schema)))
                                .build(),
                        )
                        .build(),
                ));
            }
            Input::Query(kind) => b = b.parameters(Some(kind.parameters())),
        }
        let ok = match o.output {
            Json(schema) => ResponseBuilder::new()
                .description(reason(o.status))
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(component(schema)))
                        .build(),
                ),
            Text(content_type) => ResponseBuilder::new()
                .description(reason(o.status))
                .content(
                    content_type,
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .build(),
                ),
        };
        let ok = if o.path.starts_with("/v1/") && o.method == "GET" {
            ok.header(
                "X-Leasehold-Index",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::Integer))
                    .description(Some(
                        "the modify index of what was read, for blocking queries",
                    ))
                    .build(),
            )
        } else {
            ok
        };
        b = b.response(o.status.to_string(), ok.build());
        let mut errors = Vec::new();
        if o.path.starts_with("/v1/") {
            errors.push(400);
        }
        errors.extend_from_slice(o.errors);
        if o.path.starts_with("/v1/") {
            errors.extend([503, 504]);
        }
        for status in errors {
            b = b.response(
                status.to_string(),
                ResponseBuilder::new()
                    .description(reason(status))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(component("ErrorBody")))
                            .build(),
                    )
                    .build(),
            );
        }
        paths.add_path_operation(o.path, vec![method(o.method)], b.build());
    }
    paths
}

/// The API description.
pub fn openapi() -> OpenApi {
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("leasehold")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Locks, leases and a name registry on a three-node Raft cluster. Durations \
                     are integer milliseconds with the unit in the name.",
                ))
                .build(),
        )
        .paths(paths())
        .components(Components::openapi().components)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_an_operation_names_is_a_component() {
        let doc = serde_json::to_value(openapi()).expect("serializes");
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let text = doc.to_string();
        for name in text
            .split("\"#/components/schemas/")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap_or(""))
        {
            assert!(
                schemas.contains_key(name),
                "{name} is referenced but not defined"
            );
        }
        for o in OPERATIONS {
            let method = o.method.to_lowercase();
            assert!(
                doc["paths"][o.path][&method]["responses"][o.status.to_string()].is_object(),
                "{} {} is missing",
                o.method,
                o.path
            );
        }
    }

    #[test]
    fn request_schemas_follow_the_wire_types() {
        let doc = serde_json::to_value(openapi()).expect("serializes");
        let acquire = &doc["components"]["schemas"]["AcquireRequest"];
        let required: Vec<&str> = acquire["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(required, ["owner"]);
        assert!(acquire["properties"]["lock_delay_ms"].is_object());
    }
}
