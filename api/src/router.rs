//! The axum router that serves any [`LeaseService`] over HTTP/JSON (SPEC §3).
//!
//! - Keys may contain `/`. The action suffixes `/extend`, `/wait` and `/history` are split
//!   off the path, so a key may not end in one of them (validation refuses such keys).
//! - Bodies are parsed as JSON whatever the content type (so `curl -d` works), refused with
//!   413 before they are read whole when over `limits.max_body_bytes`, and malformed JSON
//!   or unknown fields get 400 naming the field. Query strings are strict the same way.
//! - Every request runs under a deadline: `limits.request_timeout_ms`, plus `wait_ms` for
//!   long-polls; past it the reply is 504.
//! - Unknown routes and methods get JSON errors, like everything else.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ApiError, ErrorCode};
use crate::service::LeaseService;
use crate::validate::{self, Limits};
use crate::wire::*;

pub const INDEX_HEADER: &str = "x-leasehold-index";

#[derive(Clone)]
struct AppState {
    service: Arc<dyn LeaseService>,
    limits: Arc<Limits>,
}

/// The HTTP API for `service`, enforcing `limits`.
pub fn router(service: Arc<dyn LeaseService>, limits: Limits) -> Router {
    let state = AppState {
        service,
        limits: Arc::new(limits),
    };
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/leases", post(create_lease).get(list_leases))
        .route("/v1/leases/{id}", get(get_lease).delete(revoke_lease))
        .route("/v1/leases/{id}/keepalive", post(keepalive))
        .route("/v1/locks", get(list_locks))
        .route(
            "/v1/locks/{*key}",
            get(lock_get).post(lock_post).delete(lock_delete),
        )
        .route("/v1/expired", get(expired))
        .route(
            "/v1/semaphores/{*key}",
            get(semaphore_get)
                .post(semaphore_post)
                .delete(semaphore_delete),
        )
        .route("/v1/names", get(list_names))
        .route(
            "/v1/names/{*name}",
            get(name_get)
                .put(name_put)
                .patch(name_patch)
                .post(name_post)
                .delete(name_delete),
        )
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/members", post(add_member))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

// ----- extractors -----

/// A JSON body: any content type, size-limited, errors as [`ApiError`].
struct JsonBody<T>(T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let BodyBytes(bytes) = BodyBytes::from_request(req, state).await?;
        parse_json(&bytes)
            .map(JsonBody)
            .map_err(IntoResponse::into_response)
    }
}

/// The raw body, at most `limits.max_body_bytes`. A body over the limit (declared in
/// `Content-Length` or found while reading) is refused with 413 without buffering it, and
/// the refusal closes the connection cleanly (see [`refuse_oversized`]).
struct BodyBytes(Bytes);

/// A refused body is read and thrown away up to this many bytes...
const DRAIN_MAX_BYTES: usize = 16 * 1024 * 1024;
/// ...or for this long, whichever ends first, before the connection closes.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);

impl FromRequest<AppState> for BodyBytes {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        use http_body_util::BodyExt;
        let limit = state.limits.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut body = req.into_body();
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(refuse_oversized(body).await);
        }
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::invalid("body", format!("cannot read the request body: {e}"))
                    .into_response()
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(refuse_oversized(body).await);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(BodyBytes(Bytes::from(buf)))
    }
}

/// Refuse a body over `limits.max_body_bytes` so that a pooled client reads the 413 and
/// does not reuse the socket: the reply carries `Connection: close` (the server closes
/// after it), and the rest of the body is first read and dropped (bounded by
/// [`DRAIN_MAX_BYTES`] and [`DRAIN_MAX_TIME`]). Closing a socket with unread input
/// makes the kernel send a reset, which can destroy the 413 before the client reads it
/// or fail the client's next write with a broken pipe.
async fn refuse_oversized(mut body: axum::body::Body) -> Response {
    use http_body_util::BodyExt;
    let drain = async {
        let mut drained = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            drained += frame.data_ref().map_or(0, |d| d.len());
            if drained > DRAIN_MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, drain).await;
    let mut response =
        ApiError::too_large("body", "request body is over limits.max_body_bytes").into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("body", "a JSON object is required"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_error(Some(path).filter(|p| p != "."), e.inner())
    })?;
    de.end().map_err(|e| json_error(None, &e))?;
    Ok(value)
}

/// Name the field: the path where a value was wrong, or the field serde names in messages
/// like "unknown field `x`" / "missing field `owner`".
fn json_error(path: Option<String>, e: &serde_json::Error) -> ApiError {
    let message = e.to_string();
    let named = message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("field"))
        .map(str::to_string);
    let field = named.or(path).unwrap_or_else(|| "body".to_string());
    ApiError::invalid(&field, format!("invalid JSON: {message}"))
}

/// A strict query string.
struct QueryParams<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or("")).map(QueryParams)
    }
}

/// The one path parameter of a route, percent-decoded. A segment that does not decode to
/// UTF-8 (`/v1/names/%8a`) is a 400 naming the parameter, in the same JSON shape as every
/// other error (axum's own rejection is plain text).
struct PathParam(String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::{path::ErrorKind, rejection::PathRejection};
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParam(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => Err(ApiError::invalid(
                    key.as_str(),
                    "must be valid UTF-8 once percent-decoded",
                )),
                other => Err(ApiError::invalid("path", other.to_string())),
            },
            Err(other) => Err(ApiError::invalid("path", other.body_text())),
        }
    }
}

/// Parse a numeric path segment (`/v1/leases/{id}`).
fn path_id(field: &str, raw: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::invalid(field, format!("must be a positive integer, got {raw:?}")))
}

// ----- replies -----

fn ok<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, Json(body)).into_response()
}

fn with_index<T: Serialize>(body: &T, index: u64) -> Response {
    let mut response = ok(StatusCode::OK, body);
    if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
        response.headers_mut().insert(INDEX_HEADER, v);
    }
    response
}

fn reply<T: Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(body) => ok(StatusCode::OK, &body),
        Err(e) => e.into_response(),
    }
}

/// Run `fut` under the request deadline plus `wait_ms` of long-poll allowance.
async fn deadline<T>(
    limits: &Limits,
    wait_ms: Option<u64>,
    fut: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let budget = Duration::from_millis(limits.request_timeout_ms + wait_ms.unwrap_or(0));
    match tokio::time::timeout(budget, fut).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::new(
            ErrorCode::Timeout,
            format!(
                "the request did not finish within its deadline ({} ms)",
                budget.as_millis()
            ),
        )),
    }
}

/// Split a trailing action (`extend`, `wait`, `history`) off a wildcard key path.
fn split_action(path: &str) -> (&str, Option<&str>) {
    for action in ["extend", "wait", "history"] {
        if let Some(key) = path.strip_suffix(action).and_then(|k| k.strip_suffix('/')) {
            if !key.is_empty() {
                return (key, Some(action));
            }
        }
    }
    (path, None)
}

fn unknown_action(path: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("no such route for {path:?}"))
}

// ----- handlers: operations -----

async fn status_page() -> Html<&'static str> {
    Html(include_str!("status_page.html"))
}

async fn healthz() -> Response {
    ok(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn readyz(State(s): State<AppState>) -> Response {
    match deadline(&s.limits, None, s.service.ready()).await {
        Ok(()) => ok(StatusCode::OK, &serde_json::json!({"ready": true})),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let text = s.service.metrics_text().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| {
        crate::openapi::openapi()
            .to_pretty_json()
            .map_err(|e| e.to_string())
    });
    match doc {
        Ok(doc) => ([(header::CONTENT_TYPE, "application/json")], doc.as_str()).into_response(),
        Err(e) => ApiError::new(
            ErrorCode::Internal,
            format!("the API description does not serialize: {e}"),
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route; see SPEC §3 for the API",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}

// ----- leases -----

async fn create_lease(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateLeaseRequest>,
) -> Response {
    if let Err(e) = validate::create_lease(&req, &s.limits) {
        return e.into_response();
    }
    match deadline(&s.limits, None, s.service.create_lease(req)).await {
        Ok(grant) => ok(StatusCode::CREATED, &grant),
        Err(e) => e.into_response(),
    }
}

async fn list_leases(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<LeaseListParams>,
) -> Response {
    if let Err(e) = validate::list_limit(p.limit, &s.limits) {
        return e.into_response();
    }
    reply(deadline(&s.limits, None, s.service.list_leases(p)).await)
}

async fn get_lease(State(s): State<AppState>, PathParam(id): PathParam) -> Response {
    match path_id("lease_id", &id) {
        Ok(id) => reply(deadline(&s.limits, None, s.service.get_lease(id)).await),
        Err(e) => e.into_response(),
    }
}

async fn revoke_lease(State(s): State<AppState>, PathParam(id): PathParam) -> Response {
    match path_id("lease_id", &id) {
        Ok(id) => reply(deadline(&s.limits, None, s.service.revoke_lease(id)).await),
        Err(e) => e.into_response(),
    }
}

async fn keepalive(State(s): State<AppState>, PathParam(id): PathParam) -> Response {
    match path_id("lease_id", &id) {
        Ok(id) => reply(deadline(&s.limits, None, s.service.keepalive(id)).await),
        Err(e) => e.into_response(),
    }
}

// ----- locks -----

async fn lock_post(
    State(s): State<AppState>,
    PathParam(path): PathParam,
    BodyBytes(body): BodyBytes,
) -> Response {
    let (key, action) = split_action(&path);
    let result = match action {
        None => {
            let req: AcquireRequest = match parse_json(&body) {
                Ok(r) => r,
                Err(e) => return e.into_response(),
            };
            if let Err(e) = validate::acquire(key, &req, &s.limits) {
                return e.into_response();
            }
            let wait = req.wait_ms;
            return reply(deadline(&s.limits, wait, s.service.acquire_lock(key, req)).await);
        }
        Some("extend") => {
            let req: ExtendRequest = match parse_json(&body) {
                Ok(r) => r,
                Err(e) => return e.into_response(),
            };
            if let Err(e) = validate::extend(key, &req, &s.limits) {
                return e.into_response();
            }
            deadline(&s.limits, None, s.service.extend_lock(key, req)).await
        }
        Some(_) => Err(unknown_action(&path)),
    };
    reply(result)
}

async fn lock_get(
    State(s): State<AppState>,
    PathParam(path): PathParam,
    uri: axum::http::Uri,
) -> Response {
    let (key, action) = split_action(&path);
    let query = uri.query().unwrap_or("");
    match action {
        None => {
            let p: ReadParams = match parse_query(query) {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
            if let Err(e) = validate::read(key, &p, &s.limits) {
                return e.into_response();
            }
            let wait = p.wait_ms;
            match deadline(&s.limits, wait, s.service.get_lock(key, p)).await {
                Ok(state) => with_index(&state, state.index),
                Err(e) => e.into_response(),
            }
        }
        Some("wait") => {
            let p: WaitReleaseParams = match parse_query(query) {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
            if let Err(e) = validate::wait_release(key, &p, &s.limits) {
                return e.into_response();
            }
            let wait = p.wait_ms;
            reply(deadline(&s.limits, wait, s.service.wait_release(key, p)).await)
        }
        Some("history") => {
            if let Err(e) = validate::key("key", key, &s.limits) {
                return e.into_response();
            }
            reply(deadline(&s.limits, None, s.service.lock_history(key)).await)
        }
        Some(_) => unknown_action(&path).into_response(),
    }
}

/// Parse a strict query string; errors name the parameter.
fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let named = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field"))
            .map(str::to_string);
        let field = named
            .or(Some(path).filter(|p| p != "."))
            .unwrap_or_else(|| "query".to_string());
        ApiError::invalid(&field, format!("invalid query string: {message}"))
    })
}

async fn lock_delete(
    State(s): State<AppState>,
    PathParam(key): PathParam,
    QueryParams(p): QueryParams<ReleaseParams>,
) -> Response {
    if let Err(e) = validate::release(&key, &p, &s.limits) {
        return e.into_response();
    }
    reply(deadline(&s.limits, None, s.service.release_lock(&key, p)).await)
}

async fn list_locks(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> Response {
    if let Err(e) = validate::list(&p, &s.limits) {
        return e.into_response();
    }
    reply(deadline(&s.limits, None, s.service.list_locks(p)).await)
}

async fn expired(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<ExpiredParams>,
) -> Response {
    if let Err(e) = validate::list_limit(p.limit, &s.limits) {
        return e.into_response();
    }
    reply(deadline(&s.limits, None, s.service.expired(p)).await)
}

// ----- semaphores -----

async fn semaphore_post(
    State(s): State<AppState>,
    PathParam(path): PathParam,
    BodyBytes(body): BodyBytes,
) -> Response {
    let (key, action) = split_action(&path);
    match action {
        None => {
            let req: SemaphoreAcquireRequest = match parse_json(&body) {
                Ok(r) => r,
                Err(e) => return e.into_response(),
            };
            if let Err(e) = validate::semaphore_acquire(key, &req, &s.limits) {
                return e.into_response();
            }
            let wait = req.wait_ms;
            reply(deadline(&s.limits, wait, s.service.acquire_semaphore(key, req)).await)
        }
        Some("extend") => {
            let req: ExtendRequest = match parse_json(&body) {
                Ok(r) => r,
                Err(e) => return e.into_response(),
            };
            if let Err(e) = validate::extend(key, &req, &s.limits) {
                return e.into_response();
            }
            reply(deadline(&s.limits, None, s.service.extend_semaphore(key, req)).await)
        }
        Some(_) => unknown_action(&path).into_response(),
    }
}

async fn semaphore_get(
    State(s): State<AppState>,
    PathParam(key): PathParam,
    QueryParams(p): QueryParams<ReadParams>,
) -> Response {
    if let Err(e) = validate::read(&key, &p, &s.limits) {
        return e.into_response();
    }
    let wait = p.wait_ms;
    match deadline(&s.limits, wait, s.service.get_semaphore(&key, p)).await {
        Ok(state) => with_index(&state, state.index),
        Err(e) => e.into_response(),
    }
}

async fn semaphore_delete(
    State(s): State<AppState>,
    PathParam(key): PathParam,
    QueryParams(p): QueryParams<ReleaseParams>,
) -> Response {
    if let Err(e) = validate::release(&key, &p, &s.limits) {
        return e.into_response();
    }
    reply(deadline(&s.limits, None, s.service.release_semaphore(&key, p)).await)
}

// ----- names -----

async fn name_put(
    State(s): State<AppState>,
    PathParam(name): PathParam,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Response {
    if let Err(e) = validate::register(&name, &req, &s.limits) {
        return e.into_response();
    }
    let wait = req.wait_ms;
    reply(deadline(&s.limits, wait, s.service.register_name(&name, req)).await)
}

async fn name_get(
    State(s): State<AppState>,
    PathParam(name): PathParam,
    QueryParams(p): QueryParams<ReadParams>,
) -> Response {
    if let Err(e) = validate::read(&name, &p, &s.limits) {
        return e.into_response();
    }
    let wait = p.wait_ms;
    match deadline(&s.limits, wait, s.service.get_name(&name, p)).await {
        Ok(state) => with_index(&state, state.index),
        Err(e) => e.into_response(),
    }
}

async fn name_patch(
    State(s): State<AppState>,
    PathParam(name): PathParam,
    JsonBody(req): JsonBody<ProclaimRequest>,
) -> Response {
    if let Err(e) = validate::proclaim(&name, &req, &s.limits) {
        return e.into_response();
    }
    reply(deadline(&s.limits, None, s.service.proclaim(&name, req)).await)
}

async fn name_post(
    State(s): State<AppState>,
    PathParam(path): PathParam,
    BodyBytes(body): BodyBytes,
) -> Response {
    let (name, action) = split_action(&path);
    if action != Some("extend") {
        return unknown_action(&path).into_response();
    }
    let req: NameExtendRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = validate::key("name", name, &s.limits).and_then(|_| validate::owner(&req.owner))
    {
        return e.into_response();
    }
    reply(deadline(&s.limits, None, s.service.extend_name(name, req)).await)
}

async fn name_delete(
    State(s): State<AppState>,
    PathParam(name): PathParam,
    QueryParams(p): QueryParams<ReleaseParams>,
) -> Response {
    if let Err(e) = validate::release(&name, &p, &s.limits) {
        return e.into_response();
    }
    reply(deadline(&s.limits, None, s.service.unregister_name(&name, p)).await)
}

async fn list_names(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> Response {
    if let Err(e) = validate::list(&p, &s.limits) {
        return e.into_response();
    }
    reply(deadline(&s.limits, None, s.service.list_names(p)).await)
}

// ----- cluster -----

async fn cluster(State(s): State<AppState>) -> Response {
    reply(deadline(&s.limits, None, s.service.cluster_status()).await)
}

async fn add_member(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<AddMemberRequest>,
) -> Response {
    if let Err(e) = validate::add_member(&req) {
        return e.into_response();
    }
    // Catching a learner up may take longer than one request deadline.
    reply(
        deadline(
            &s.limits,
            Some(s.limits.request_timeout_ms * 5),
            s.service.add_member(req),
        )
        .await,
    )
}

async fn remove_member(State(s): State<AppState>, PathParam(id): PathParam) -> Response {
    match path_id("id", &id) {
        Ok(id) => reply(deadline(&s.limits, None, s.service.remove_member(id)).await),
        Err(e) => e.into_response(),
    }
}
