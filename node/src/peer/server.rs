//! The peer listener: `POST /peer/v1`, one enveloped [`PeerRequest`] per call.
//!
//! The cluster secret (when set) is checked first, in constant time; a missing or wrong
//! one is 401 and nothing is decoded. A message that does not decode (or speaks another
//! protocol version) is 400 naming why. Raft RPCs go to openraft, forwarded requests to
//! the core, each under a `peer_rpc` span.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use leasehold_raft::typ::TypeConfig;
use openraft::raft::VoteResponse;
use tracing::Instrument;

use super::client::{PEER_PATH, SECRET_HEADER};
use super::envelope::{self, PeerReply, PeerRequest};
use super::stream::STREAM_PATH;
use crate::core::Core;

/// Upper bound on a peer request body.
// openraft 0.10 sends a snapshot as one message (`full_snapshot`), so this bounds the
// state a lagging member can be sent: 1 GiB, past the 136 MB of 1 M leases. Streaming
// snapshots belong with the pipelined peer stream (issue 23, part 3).
pub(crate) const MAX_PEER_BODY_BYTES: usize = 1024 * 1024 * 1024;

#[derive(Clone)]
pub(crate) struct PeerState {
    pub(crate) core: Arc<Core>,
    pub(crate) secret: Option<Arc<String>>,
}

/// The peer listener's routes.
pub(crate) fn router(core: Arc<Core>, secret: Option<Arc<String>>) -> Router {
    Router::new()
        .route(PEER_PATH, post(handle))
        .route(STREAM_PATH, get(super::stream::serve::upgrade))
        .layer(DefaultBodyLimit::max(MAX_PEER_BODY_BYTES))
        .with_state(PeerState { core, secret })
}

async fn handle(State(state): State<PeerState>, headers: HeaderMap, body: Bytes) -> Response {
    if !secret_matches(state.secret.as_deref().map(String::as_str), &headers) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response();
    }
    let request: PeerRequest = match envelope::decode(&body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let reply = serve_request(&state.core, request).await;
    match envelope::encode(&reply) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serve one peer request (from `POST /peer/v1` or a peer stream's call) in a `peer_rpc`
/// span that names the forwarded writes' request ids.
pub(crate) async fn serve_request(core: &Core, request: PeerRequest) -> PeerReply {
    let span = tracing::debug_span!(
        "peer_rpc",
        rpc = request.kind(),
        request_id = tracing::field::Empty
    );
    if !span.is_disabled() {
        if let Some(ids) = request.request_ids() {
            span.record("request_id", ids.as_str());
        }
    }
    let reply = dispatch(core, request).instrument(span.clone()).await;
    span.in_scope(|| tracing::trace!("served"));
    reply
}

async fn dispatch(core: &Core, request: PeerRequest) -> PeerReply {
    let raft = core.raft();
    match request {
        PeerRequest::Append(rpc) => PeerReply::Append(raft.append_entries(rpc).await),
        PeerRequest::Vote(_) if core.holds_back_votes() => PeerReply::Vote(Ok(held_back(core))),
        PeerRequest::PreVote(_) if core.holds_back_votes() => {
            PeerReply::PreVote(Ok(held_back(core)))
        }
        PeerRequest::Vote(rpc) => PeerReply::Vote(raft.vote(rpc).await),
        PeerRequest::PreVote(rpc) => PeerReply::PreVote(raft.pre_vote(rpc).await),
        PeerRequest::Snapshot { vote, meta, data } => {
            let snapshot = leasehold_raft::typ::Snapshot {
                meta,
                snapshot: std::io::Cursor::new(data),
            };
            PeerReply::Snapshot(raft.install_full_snapshot(vote, snapshot).await)
        }
        PeerRequest::Forward(forwarded) => PeerReply::Forward(core.serve_locally(forwarded).await),
    }
}

/// A vote refused because this node started less than `election_timeout_max` ago: it may
/// have acknowledged a leader whose lease still runs just before it stopped. The refusal
/// names this node's own vote, which the candidate's is not, so it counts as a no.
fn held_back(core: &Core) -> VoteResponse<TypeConfig> {
    let vote = core.raft().metrics().borrow_watched().vote;
    tracing::debug!("vote refused: started less than election_timeout_max ago");
    VoteResponse::new(vote, None, false)
}

/// Does the request carry the cluster secret (or is none configured)?
pub(crate) fn secret_matches(secret: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(secret) = secret else {
        return true;
    };
    let Some(given) = headers.get(SECRET_HEADER) else {
        return false;
    };
    constant_time_eq(secret.as_bytes(), given.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_required_when_set() {
        let mut headers = HeaderMap::new();
        assert!(secret_matches(None, &headers));
        assert!(!secret_matches(Some("s3cret"), &headers));
        headers.insert(SECRET_HEADER, "wrong!".parse().unwrap());
        assert!(!secret_matches(Some("s3cret"), &headers));
        headers.insert(SECRET_HEADER, "s3cret".parse().unwrap());
        assert!(secret_matches(Some("s3cret"), &headers));
    }
}
