//! The peer (Raft) transport: HTTP on the peer listener, bincode bodies.
//!
//! - Client side: [`PeerNetworkFactory`] hands openraft one [`PeerClient`] per target;
//!   all share one pooled `reqwest::Client` (which keeps connections per peer). Timeouts
//!   come from openraft's `RPCOption`. [`PeerClientPool`] is the same client for other
//!   peer calls (the node's request forwarding).
//! - Server side: [`peer_router`] serves `/raft/append`, `/raft/vote`, `/raft/snapshot`.
//! - When a cluster secret is set, every peer request carries it in `x-leasehold-secret`
//!   and the listener refuses requests without it.
//! - [`Faults`] is the fault-injection switch the tests use to cut links (partitions).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::typ::{NodeId, PeerNode, Raft, TypeConfig};

pub const SECRET_HEADER: &str = "x-leasehold-secret";
/// Upper bound on a peer request body (snapshot chunks are smaller by default).
pub const MAX_PEER_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Encode a peer message (bincode 2, standard config).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
}

/// Decode a peer message; garbage is an error, never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(v, _)| v)
}

/// Does the request carry the cluster secret (or is none configured)?
pub fn secret_matches(secret: Option<&str>, headers: &HeaderMap) -> bool {
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

/// Links cut for fault injection: peer addresses this node will not talk to.
#[derive(Debug, Default)]
pub struct Faults {
    blocked: RwLock<HashSet<String>>,
}

impl Faults {
    pub fn block(&self, peer_addr: impl ToString) {
        self.blocked
            .write()
            .expect("faults lock poisoned")
            .insert(peer_addr.to_string());
    }

    pub fn unblock(&self, peer_addr: &str) {
        self.blocked
            .write()
            .expect("faults lock poisoned")
            .remove(peer_addr);
    }

    pub fn clear(&self) {
        self.blocked.write().expect("faults lock poisoned").clear();
    }

    pub fn is_blocked(&self, peer_addr: &str) -> bool {
        self.blocked
            .read()
            .expect("faults lock poisoned")
            .contains(peer_addr)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    #[error("link to {0} is cut (fault injection)")]
    Cut(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: reqwest::Error,
    },
    #[error("request to {addr} timed out")]
    Timeout { addr: String },
    #[error("request to {addr} failed: {source}")]
    Http {
        addr: String,
        source: reqwest::Error,
    },
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("cannot encode the request: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("cannot decode the reply from {addr}: {source}")]
    Decode {
        addr: String,
        source: bincode::error::DecodeError,
    },
}

impl PeerCallError {
    /// True if the request certainly did not reach the peer.
    pub fn not_sent(&self) -> bool {
        matches!(self, PeerCallError::Cut(_) | PeerCallError::Connect { .. })
    }
}

/// One pooled HTTP client for all peer calls, with the secret and the fault switch.
#[derive(Clone)]
pub struct PeerClientPool {
    client: reqwest::Client,
    secret: Option<Arc<String>>,
    faults: Arc<Faults>,
}

impl PeerClientPool {
    /// `proxy`: send every peer request through this HTTP forward proxy; without one,
    /// connect directly (and ignore `HTTP_PROXY` and friends from the environment).
    pub fn new(
        secret: Option<Arc<String>>,
        faults: Arc<Faults>,
        proxy: Option<std::net::SocketAddr>,
    ) -> Self {
        let builder = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(500));
        let builder = match proxy.and_then(|p| reqwest::Proxy::http(format!("http://{p}")).ok()) {
            Some(proxy) => builder.proxy(proxy),
            None => builder.no_proxy(),
        };
        // Building a client with these plain options does not fail.
        let client = builder.build().expect("reqwest client builds");
        PeerClientPool {
            client,
            secret,
            faults,
        }
    }

    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// POST a bincode `req` to `http://{peer_addr}{path}` and decode the bincode reply.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer_addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerCallError> {
        if self.faults.is_blocked(peer_addr) {
            return Err(PeerCallError::Cut(peer_addr.to_string()));
        }
        let body = encode(req)?;
        let mut request = self
            .client
            .post(format!("http://{peer_addr}{path}"))
            .timeout(timeout)
            .header("content-type", "application/octet-stream")
            .body(body);
        if let Some(secret) = &self.secret {
            request = request.header(SECRET_HEADER, secret.as_str());
        }
        let addr = || peer_addr.to_string();
        let response = request.send().await.map_err(|e| classify(addr(), e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| classify(addr(), e))?;
        if !status.is_success() {
            return Err(PeerCallError::Status {
                addr: addr(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        decode(&bytes).map_err(|source| PeerCallError::Decode {
            addr: addr(),
            source,
        })
    }
}

fn classify(addr: String, e: reqwest::Error) -> PeerCallError {
    if e.is_connect() {
        PeerCallError::Connect { addr, source: e }
    } else if e.is_timeout() {
        PeerCallError::Timeout { addr }
    } else {
        PeerCallError::Http { addr, source: e }
    }
}

/// Makes openraft's per-target clients.
#[derive(Clone)]
pub struct PeerNetworkFactory {
    pool: PeerClientPool,
}

impl PeerNetworkFactory {
    pub fn new(pool: PeerClientPool) -> Self {
        PeerNetworkFactory { pool }
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Self::Network {
        PeerClient {
            target,
            peer_addr: node.peer_addr.clone(),
            pool: self.pool.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    target: NodeId,
    peer_addr: String,
    pool: PeerClientPool,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, PeerNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<Resp, RaftError<NodeId, E>> = self
            .pool
            .call(&self.peer_addr, path, req, timeout)
            .await
            .map_err(|e| match &e {
                PeerCallError::Cut(_) | PeerCallError::Connect { .. } => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.rpc("/raft/append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.rpc("/raft/snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.rpc("/raft/vote", &rpc, option.hard_ttl()).await
    }
}

#[derive(Clone)]
struct PeerState {
    raft: Raft,
    secret: Option<Arc<String>>,
}

/// The peer listener's Raft routes.
pub fn peer_router(raft: Raft, secret: Option<Arc<String>>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_PEER_BODY_BYTES))
        .with_state(PeerState { raft, secret })
}

fn check<T: DeserializeOwned>(
    state: &PeerState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Response> {
    if !secret_matches(state.secret.as_deref().map(String::as_str), headers) {
        return Err((StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response());
    }
    decode(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad peer message: {e}")).into_response())
}

fn reply<T: Serialize>(value: &T) -> Response {
    match encode(value) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn append(State(state): State<PeerState>, headers: HeaderMap, body: Bytes) -> Response {
    let req: AppendEntriesRequest<TypeConfig> = match check(&state, &headers, &body) {
        Ok(req) => req,
        Err(resp) => return resp,
    };
    reply(&state.raft.append_entries(req).await)
}

async fn vote(State(state): State<PeerState>, headers: HeaderMap, body: Bytes) -> Response {
    let req: VoteRequest<NodeId> = match check(&state, &headers, &body) {
        Ok(req) => req,
        Err(resp) => return resp,
    };
    reply(&state.raft.vote(req).await)
}

async fn snapshot(State(state): State<PeerState>, headers: HeaderMap, body: Bytes) -> Response {
    let req: InstallSnapshotRequest<TypeConfig> = match check(&state, &headers, &body) {
        Ok(req) => req,
        Err(resp) => return resp,
    };
    reply(&state.raft.install_snapshot(req).await)
}
