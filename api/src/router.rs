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

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::error::{ApiError, ErrorCode};
use crate::service::LeaseService;
use crate::validate::Limits;
use crate::wire::*;

mod extract;
mod trace;

use extract::{parse_json, parse_query, path_id, BodyBytes, JsonBody, PathParam, QueryParams};

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
        .layer(axum::middleware::from_fn(trace::request_span))
        .with_state(state)
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
    // `wait_ms` is validated by the service; over the limit it is refused there, so the
    // allowance never needs to be longer than `max_wait_ms`.
    let wait = wait_ms.unwrap_or(0).min(limits.max_wait_ms);
    let budget = Duration::from_millis(limits.request_timeout_ms.saturating_add(wait));
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
    match deadline(&s.limits, None, s.service.create_lease(req)).await {
        Ok(grant) => ok(StatusCode::CREATED, &grant),
        Err(e) => e.into_response(),
    }
}

async fn list_leases(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<LeaseListParams>,
) -> Response {
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
            let wait = req.wait_ms;
            return reply(deadline(&s.limits, wait, s.service.acquire_lock(key, req)).await);
        }
        Some("extend") => {
            let req: ExtendRequest = match parse_json(&body) {
                Ok(r) => r,
                Err(e) => return e.into_response(),
            };
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
            let wait = p.wait_ms;
            reply(deadline(&s.limits, wait, s.service.wait_release(key, p)).await)
        }
        Some("history") => reply(deadline(&s.limits, None, s.service.lock_history(key)).await),
        Some(_) => unknown_action(&path).into_response(),
    }
}

async fn lock_delete(
    State(s): State<AppState>,
    PathParam(key): PathParam,
    QueryParams(p): QueryParams<ReleaseParams>,
) -> Response {
    reply(deadline(&s.limits, None, s.service.release_lock(&key, p)).await)
}

async fn list_locks(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> Response {
    reply(deadline(&s.limits, None, s.service.list_locks(p)).await)
}

async fn expired(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<ExpiredParams>,
) -> Response {
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
            let wait = req.wait_ms;
            reply(deadline(&s.limits, wait, s.service.acquire_semaphore(key, req)).await)
        }
        Some("extend") => {
            let req: ExtendRequest = match parse_json(&body) {
                Ok(r) => r,
                Err(e) => return e.into_response(),
            };
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
    reply(deadline(&s.limits, None, s.service.release_semaphore(&key, p)).await)
}

// ----- names -----

async fn name_put(
    State(s): State<AppState>,
    PathParam(name): PathParam,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Response {
    let wait = req.wait_ms;
    reply(deadline(&s.limits, wait, s.service.register_name(&name, req)).await)
}

async fn name_get(
    State(s): State<AppState>,
    PathParam(name): PathParam,
    QueryParams(p): QueryParams<ReadParams>,
) -> Response {
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
    reply(deadline(&s.limits, None, s.service.extend_name(name, req)).await)
}

async fn name_delete(
    State(s): State<AppState>,
    PathParam(name): PathParam,
    QueryParams(p): QueryParams<ReleaseParams>,
) -> Response {
    reply(deadline(&s.limits, None, s.service.unregister_name(&name, p)).await)
}

async fn list_names(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> Response {
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
