//! The leader side of request forwarding: `POST /forward` on the peer listener.
//!
//! A follower sends a bincode [`ForwardRequest`]; this node serves it as if it were local
//! (it answers `NotLeader` if it does not lead) and replies with a bincode
//! `Result<ForwardResponse, CoreError>`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use leasehold_raft::network::{decode, encode, secret_matches};

use crate::core::{Core, ForwardRequest, ForwardResponse, FORWARD_PATH};
use crate::error::CoreError;

#[derive(Clone)]
struct ForwardState {
    core: Arc<Core>,
    secret: Option<Arc<String>>,
}

pub fn router(core: Arc<Core>, secret: Option<Arc<String>>) -> Router {
    Router::new()
        .route(FORWARD_PATH, post(handle))
        .with_state(ForwardState { core, secret })
}

async fn handle(State(state): State<ForwardState>, headers: HeaderMap, body: Bytes) -> Response {
    if !secret_matches(state.secret.as_deref().map(String::as_str), &headers) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response();
    }
    let req: ForwardRequest = match decode(&body) {
        Ok(req) => req,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("bad forward request: {e}")).into_response()
        }
    };
    let result: Result<ForwardResponse, CoreError> = state.core.serve_locally(req).await;
    match encode(&result) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
