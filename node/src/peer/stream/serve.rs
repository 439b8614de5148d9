//! The listener's side of a peer stream: `GET /peer/v1/stream`, then frames.
//!
//! Calls are served concurrently, each answered as it completes. Each append session
//! gets one `Raft::stream_append`, fed the session's appends in the order they came, and
//! its results go back in that order.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use leasehold_raft::typ::TypeConfig;
use openraft::raft::AppendEntriesRequest;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::frame::{self, Outgoing, Reader};
use super::{StreamReply, StreamRequest, OUTGOING_QUEUE, UPGRADE_TOKEN};
use crate::core::Core;
use crate::peer::envelope;
use crate::peer::server::{secret_matches, serve_request, PeerState, MAX_PEER_BODY_BYTES};

/// How many appends of one session may wait for openraft.
const SESSION_QUEUE: usize = 256;

/// Switch the connection to the peer stream, once the secret (when set) is checked.
pub(crate) async fn upgrade(State(state): State<PeerState>, mut req: Request) -> Response {
    if !secret_matches(state.secret.as_deref().map(String::as_str), req.headers()) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response();
    }
    let asks = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if asks != Some(UPGRADE_TOKEN) {
        let why = format!("this route needs `Upgrade: {UPGRADE_TOKEN}`");
        return (StatusCode::BAD_REQUEST, why).into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let core = state.core.clone();
    state.core.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(core, TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(error = %e, "a peer stream did not upgrade"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, UPGRADE_TOKEN)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Serve one stream until the peer closes it or sends what does not decode.
async fn serve<IO>(core: Arc<Core>, io: IO)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    let (out, rx) = mpsc::channel(OUTGOING_QUEUE);
    let writer =
        tokio::spawn(frame::write_loop(write, rx, core.peers().frame_bytes()).in_current_span());
    let mut reader = Reader::new(read, MAX_PEER_BODY_BYTES);
    let mut sessions: HashMap<u64, mpsc::Sender<AppendEntriesRequest<TypeConfig>>> = HashMap::new();
    // Session ids only grow on a stream.
    let mut newest_session = 0;
    loop {
        let message = match reader.next().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "peer stream ends");
                break;
            }
        };
        let id = message.id();
        let request: StreamRequest = match envelope::decode(message.body()) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(error = %e, "closing a peer stream: a message did not decode");
                break;
            }
        };
        match request {
            StreamRequest::Call(request) => {
                let (core, out) = (core.clone(), out.clone());
                // In the node's span (the listener's), as a request of its own would be.
                tokio::spawn(
                    async move {
                        let reply = serve_request(&core, request).await;
                        let _ = send(&out, id, &StreamReply::Call(reply)).await;
                    }
                    .in_current_span(),
                );
            }
            StreamRequest::Append(rpc) => {
                let session = match sessions.entry(id) {
                    Entry::Occupied(session) => session.into_mut(),
                    // An append for an older id whose session is over is late.
                    Entry::Vacant(_) if id <= newest_session => continue,
                    Entry::Vacant(vacant) => {
                        newest_session = id;
                        vacant.insert(start_session(&core, id, out.clone()))
                    }
                };
                if session.send(rpc).await.is_err() {
                    sessions.remove(&id);
                }
            }
            StreamRequest::EndAppend => {
                sessions.remove(&id);
            }
        }
    }
    // The sessions' input ends; openraft answers what it has, then the writer stops.
    drop(sessions);
    drop(out);
    let _ = writer.await;
}

/// Feed a session's appends to openraft and send its results back under `id`.
fn start_session(
    core: &Core,
    id: u64,
    out: mpsc::Sender<Outgoing>,
) -> mpsc::Sender<AppendEntriesRequest<TypeConfig>> {
    let (input_tx, input_rx) = mpsc::channel(SESSION_QUEUE);
    let input = futures::stream::unfold(input_rx, |mut rx| async move {
        rx.recv().await.map(|request| (request, rx))
    });
    let results = core.raft().stream_append(input);
    tokio::spawn(
        async move {
            let mut results = std::pin::pin!(results);
            while let Some(result) = results.next().await {
                if send(&out, id, &StreamReply::Append(result)).await.is_err() {
                    return;
                }
            }
            let _ = send(&out, id, &StreamReply::AppendEnd).await;
        }
        .in_current_span(),
    );
    input_tx
}

async fn send(out: &mpsc::Sender<Outgoing>, id: u64, reply: &StreamReply) -> Result<(), ()> {
    let message = match Outgoing::encode(id, reply) {
        Ok(message) => message,
        Err(e) => {
            tracing::error!(error = %e, "a peer stream reply does not encode");
            return Err(());
        }
    };
    out.send(message).await.map_err(|_| ())
}
