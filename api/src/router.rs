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
//! - With auth on ([`router_with_auth`]), every request but the open endpoints (`/`,
//!   `/healthz`, `/readyz`, `/metrics`, `/openapi.json`) needs `Authorization: Bearer`; a
//!   missing, malformed or unknown token is 401 with `WWW-Authenticate: Bearer`. The
//!   handlers then call the service acting for the request's [`Principal`], which checks
//!   the role, the key prefixes and lease ownership (403) and the quota (429).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::auth::{Authenticator, Principal};
use crate::error::{ApiError, ErrorCode};
use crate::service::LeaseService;
use crate::validate::Limits;
use crate::wire::*;

mod extract;
mod trace;

use extract::{parse_json, parse_query, path_id, BodyBytes, JsonBody, PathParam, QueryParams};

pub const INDEX_HEADER: &str = "x-leasehold-index";

/// The service acting for one principal.
pub type ScopeFn = dyn Fn(Arc<Principal>) -> Arc<dyn LeaseService> + Send + Sync;

/// Bearer-token authentication for the router.
#[derive(Clone)]
pub struct Auth {
    pub authenticator: Arc<Authenticator>,
    /// Makes the service that acts for an authenticated principal.
    pub scope: Arc<ScopeFn>,
}

/// Paths served without a token (SPEC §5): probes, scrapes, the API description and the
/// status page's HTML (which asks for a token before it shows anything).
const OPEN_PATHS: &[&str] = &["/", "/healthz", "/readyz", "/metrics", "/openapi.json"];

#[derive(Clone)]
struct AppState {
    service: Arc<dyn LeaseService>,
    limits: Arc<Limits>,
    auth: Option<Auth>,
    /// This node's `/openapi.json`: its auth and its limits (`openapi::document`).
    openapi: Arc<String>,
}

/// A handler's view of the state: the service acting for this request's principal.
struct Api(AppState);

impl FromRequestParts<AppState> for Api {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(auth) = &state.auth else {
            return Ok(Api(state.clone()));
        };
        match parts.extensions.get::<Arc<Principal>>() {
            Some(principal) => Ok(Api(AppState {
                service: (auth.scope)(principal.clone()),
                limits: state.limits.clone(),
                auth: None,
                openapi: state.openapi.clone(),
            })),
            // Open paths use the node's own (trusted) service; only they get here without
            // a principal.
            None if OPEN_PATHS.contains(&parts.uri.path()) => Ok(Api(state.clone())),
            None => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "this request needs a bearer token",
            )),
        }
    }
}

/// The HTTP API for `service`, enforcing `limits`, without auth.
pub fn router(service: Arc<dyn LeaseService>, limits: Limits) -> Router {
    router_with_auth(service, limits, None)
}

/// The HTTP API for `service`, enforcing `limits`, and with `auth`, bearer tokens.
pub fn router_with_auth(
    service: Arc<dyn LeaseService>,
    limits: Limits,
    auth: Option<Auth>,
) -> Router {
    let openapi = Arc::new(
        serde_json::to_string_pretty(&crate::openapi::document(auth.is_some(), &limits))
            .expect("the document serializes"),
    );
    let state = AppState {
        service,
        limits: Arc::new(limits),
        auth,
        openapi,
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
        .route("/v1/status", get(status))
        .route("/v1/semaphores", get(list_semaphores))
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
        .route("/v1/cluster/snapshot", get(cluster_snapshot))
        .route("/v1/cluster/members/{id}", delete(remove_member))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(axum::middleware::from_fn(documented_methods_only))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            extract::read_body_first,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.service.clone(),
            trace::request_span,
        ))
        .with_state(state)
}

/// With auth on: resolve the bearer token to a principal (401 without one) and put it in
/// the request for [`Api`].
async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(auth) = &s.auth else {
        return next.run(req).await;
    };
    if OPEN_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let header = req.headers().get(header::AUTHORIZATION);
    let sent = header.is_some();
    match auth
        .authenticator
        .authenticate(header.map(HeaderValue::as_bytes))
    {
        Ok(principal) => {
            tracing::Span::current().record("principal", principal.name.as_str());
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => {
            let mut response = e.into_response();
            // RFC 6750 §3: the scheme, and `invalid_token` when one was sent but is no good.
            let challenge = if sent {
                r#"Bearer realm="leasehold", error="invalid_token""#
            } else {
                r#"Bearer realm="leasehold""#
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            response
        }
    }
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

async fn readyz(Api(s): Api) -> Response {
    match deadline(&s.limits, None, s.service.ready()).await {
        Ok(()) => ok(StatusCode::OK, &serde_json::json!({"ready": true})),
        Err(e) => e.into_response(),
    }
}

async fn metrics(Api(s): Api) -> Response {
    let text = s.service.metrics_text().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi_json(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.as_str().to_owned(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route; see SPEC §3 for the API",
    )
}

/// A documented path with a method its operations do not list: 405 with exactly the
/// documented methods in `Allow` (and HEAD where GET is), after the body was read and
/// before anything else (auth included) looks at it.
async fn documented_methods_only(req: Request, next: Next) -> Response {
    let Some(mut methods) = crate::openapi::documented_methods(req.uri().path()) else {
        return next.run(req).await;
    };
    let method = req.method().as_str();
    if methods.contains(&method) || (method == "HEAD" && methods.contains(&"GET")) {
        return next.run(req).await;
    }
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    let mut response = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "method {method} is not allowed on {}; it takes {}",
            req.uri().path(),
            methods.join(", ")
        ),
    )
    .into_response();
    if let Ok(allow) = HeaderValue::from_str(&methods.join(", ")) {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}

// ----- leases -----

async fn create_lease(Api(s): Api, JsonBody(req): JsonBody<CreateLeaseRequest>) -> Response {
    match deadline(&s.limits, None, s.service.create_lease(req)).await {
        Ok(grant) => ok(StatusCode::CREATED, &grant),
        Err(e) => e.into_response(),
    }
}

async fn list_leases(Api(s): Api, QueryParams(p): QueryParams<LeaseListParams>) -> Response {
    reply(deadline(&s.limits, None, s.service.list_leases(p)).await)
}

async fn get_lease(Api(s): Api, PathParam(id): PathParam) -> Response {
    match path_id("lease_id", &id) {
        Ok(id) => reply(deadline(&s.limits, None, s.service.get_lease(id)).await),
        Err(e) => e.into_response(),
    }
}

async fn revoke_lease(
    Api(s): Api,
    PathParam(id): PathParam,
    QueryParams(p): QueryParams<RevokeParams>,
) -> Response {
    match path_id("lease_id", &id) {
        Ok(id) => reply(deadline(&s.limits, None, s.service.revoke_lease(id, p)).await),
        Err(e) => e.into_response(),
    }
}

async fn keepalive(Api(s): Api, PathParam(id): PathParam) -> Response {
    match path_id("lease_id", &id) {
        Ok(id) => reply(deadline(&s.limits, None, s.service.keepalive(id)).await),
        Err(e) => e.into_response(),
    }
}

// ----- locks -----

async fn lock_post(
    Api(s): Api,
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

async fn lock_get(Api(s): Api, PathParam(path): PathParam, uri: axum::http::Uri) -> Response {
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
    Api(s): Api,
    PathParam(key): PathParam,
    QueryParams(p): QueryParams<ReleaseParams>,
) -> Response {
    reply(deadline(&s.limits, None, s.service.release_lock(&key, p)).await)
}

async fn list_locks(Api(s): Api, QueryParams(p): QueryParams<ListParams>) -> Response {
    reply(deadline(&s.limits, None, s.service.list_locks(p)).await)
}

async fn expired(Api(s): Api, QueryParams(p): QueryParams<ExpiredParams>) -> Response {
    reply(deadline(&s.limits, None, s.service.expired(p)).await)
}

async fn status(Api(s): Api, QueryParams(p): QueryParams<StatusParams>) -> Response {
    let wait = p.wait_ms;
    match deadline(&s.limits, wait, s.service.status_view(p)).await {
        Ok(view) => with_index(&view, view.index),
        Err(e) => e.into_response(),
    }
}

// ----- semaphores -----

async fn semaphore_post(
    Api(s): Api,
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

async fn semaphore_get(Api(s): Api, PathParam(path): PathParam, uri: axum::http::Uri) -> Response {
    let (key, action) = split_action(&path);
    match action {
        None => {
            let p: ReadParams = match parse_query(uri.query().unwrap_or("")) {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
            let wait = p.wait_ms;
            match deadline(&s.limits, wait, s.service.get_semaphore(key, p)).await {
                Ok(state) => with_index(&state, state.index),
                Err(e) => e.into_response(),
            }
        }
        Some("history") => reply(deadline(&s.limits, None, s.service.semaphore_history(key)).await),
        Some(_) => unknown_action(&path).into_response(),
    }
}

async fn semaphore_delete(
    Api(s): Api,
    PathParam(key): PathParam,
    QueryParams(p): QueryParams<ReleaseParams>,
) -> Response {
    reply(deadline(&s.limits, None, s.service.release_semaphore(&key, p)).await)
}

async fn list_semaphores(Api(s): Api, QueryParams(p): QueryParams<ListParams>) -> Response {
    reply(deadline(&s.limits, None, s.service.list_semaphores(p)).await)
}

// ----- names -----

async fn name_put(
    Api(s): Api,
    PathParam(name): PathParam,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Response {
    let wait = req.wait_ms;
    reply(deadline(&s.limits, wait, s.service.register_name(&name, req)).await)
}

async fn name_get(Api(s): Api, PathParam(path): PathParam, uri: axum::http::Uri) -> Response {
    let (name, action) = split_action(&path);
    match action {
        None => {
            let p: ReadParams = match parse_query(uri.query().unwrap_or("")) {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
            let wait = p.wait_ms;
            match deadline(&s.limits, wait, s.service.get_name(name, p)).await {
                Ok(state) => with_index(&state, state.index),
                Err(e) => e.into_response(),
            }
        }
        Some("history") => reply(deadline(&s.limits, None, s.service.name_history(name)).await),
        Some(_) => unknown_action(&path).into_response(),
    }
}

async fn name_patch(
    Api(s): Api,
    PathParam(name): PathParam,
    JsonBody(req): JsonBody<ProclaimRequest>,
) -> Response {
    reply(deadline(&s.limits, None, s.service.proclaim(&name, req)).await)
}

async fn name_post(
    Api(s): Api,
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
    Api(s): Api,
    PathParam(name): PathParam,
    QueryParams(p): QueryParams<ReleaseParams>,
) -> Response {
    reply(deadline(&s.limits, None, s.service.unregister_name(&name, p)).await)
}

async fn list_names(Api(s): Api, QueryParams(p): QueryParams<ListParams>) -> Response {
    reply(deadline(&s.limits, None, s.service.list_names(p)).await)
}

// ----- cluster -----

async fn cluster(Api(s): Api) -> Response {
    reply(deadline(&s.limits, None, s.service.cluster_status()).await)
}

async fn add_member(Api(s): Api, JsonBody(req): JsonBody<AddMemberRequest>) -> Response {
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

async fn cluster_snapshot(Api(s): Api) -> Response {
    // Encoding a large state takes longer than one ordinary request.
    let budget = Some(s.limits.request_timeout_ms * 5);
    match deadline(&s.limits, budget, s.service.snapshot()).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn remove_member(Api(s): Api, PathParam(id): PathParam) -> Response {
    match path_id("id", &id) {
        Ok(id) => reply(deadline(&s.limits, None, s.service.remove_member(id)).await),
        Err(e) => e.into_response(),
    }
}
