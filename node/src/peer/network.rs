//! openraft's transport: one [`RaftPeer`] per target, all over one [`PeerClient`].
//! Timeouts come from openraft's `RPCOption`.

// openraft's RPC errors are large by value; they are its trait's return type.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream, StreamExt};
use leasehold_raft::typ::{NodeId, PeerNode, Snapshot, TypeConfig, Vote};
use openraft::error::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::StreamAppendResult;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};

use super::client::{PeerCallError, PeerClient};
use super::envelope::{PeerReply, PeerRequest};
use super::stream::client::SessionItem;

/// Builds one [`RaftPeer`] per target; all share the node's [`PeerClient`].
#[derive(Clone)]
pub(crate) struct RaftTransport {
    peers: PeerClient,
}

impl RaftTransport {
    pub(crate) fn new(peers: PeerClient) -> Self {
        RaftTransport { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for RaftTransport {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> Self::Network {
        RaftPeer {
            target,
            peer_addr: node.peer_addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// The connection to one peer, as openraft's replication and election tasks see it.
pub(crate) struct RaftPeer {
    target: NodeId,
    peer_addr: String,
    peers: PeerClient,
}

type RpcError = RPCError<TypeConfig>;

/// The least time a snapshot transfer gets, and the slowest rate it is allowed beyond it.
const SNAPSHOT_MIN_TTL: Duration = Duration::from_secs(2);
const SNAPSHOT_BYTES_PER_SEC: f64 = 10.0 * 1024.0 * 1024.0;

impl RaftPeer {
    async fn rpc(&self, request: PeerRequest, option: &RPCOption) -> Result<PeerReply, RpcError> {
        self.peers
            .call(&self.peer_addr, &request, option.hard_ttl())
            .await
            .map_err(|e| transport_error(&e))
    }

    /// A remote Raft error: the remote node's core has stopped (the only error these RPCs
    /// return), so it is unreachable until it restarts.
    fn remote<T>(&self, reply: Result<T, RaftError<TypeConfig>>) -> Result<T, RpcError> {
        reply.map_err(|e| {
            let why = format!("node {} at {}: {e}", self.target, self.peer_addr);
            RPCError::Unreachable(Unreachable::from_string(why))
        })
    }

    fn mismatch(&self, rpc: &'static str) -> RpcError {
        let e = PeerCallError::Mismatch {
            addr: self.peer_addr.clone(),
            got: rpc,
        };
        RPCError::Network(NetworkError::new(&e))
    }
}

fn transport_error(e: &PeerCallError) -> RpcError {
    if e.not_sent() || e.not_a_peer() {
        RPCError::Unreachable(Unreachable::new(e))
    } else {
        RPCError::Network(NetworkError::new(e))
    }
}

impl RaftNetworkV2<TypeConfig> for RaftPeer {
    type SnapshotData = leasehold_raft::typ::SnapshotData;

    /// Replication and heartbeats, pipelined on the peer stream: each request goes out
    /// as soon as openraft yields it, without waiting for the answers before it.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RpcError>>, RpcError>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            // openraft backs off a failing peer while the first request is pulled: pull it
            // before connecting, so an address that is not a peer is not tried in a loop.
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(futures::stream::empty().boxed());
            };
            let input = futures::stream::iter([first]).chain(input);
            let stream = self
                .peers
                .stream(&self.peer_addr)
                .await
                .map_err(|e| transport_error(&e))?;
            let session = stream
                .append_session(input, option.hard_ttl())
                .map_err(|e| transport_error(&e))?;
            let target = self.target;
            let results = futures::stream::unfold(session, move |mut session| async move {
                let item = match session.next().await? {
                    SessionItem::Result(result) => Ok(result),
                    SessionItem::Fatal(fatal) => Err(RPCError::Unreachable(
                        Unreachable::from_string(format!("node {target}: {fatal}")),
                    )),
                    SessionItem::Broken { why, cut: true } => {
                        Err(RPCError::Unreachable(Unreachable::from_string(why)))
                    }
                    SessionItem::Broken { why, cut: false } => {
                        Err(RPCError::Network(NetworkError::from_string(why)))
                    }
                };
                Some((item, session))
            });
            Ok(results.boxed())
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcError> {
        match self.rpc(PeerRequest::Append(rpc), &option).await? {
            PeerReply::Append(reply) => self.remote(reply),
            _ => Err(self.mismatch("append")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        match self.rpc(PeerRequest::Vote(rpc), &option).await? {
            PeerReply::Vote(reply) => self.remote(reply),
            _ => Err(self.mismatch("vote")),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        match self.rpc(PeerRequest::PreVote(rpc), &option).await? {
            PeerReply::PreVote(reply) => self.remote(reply),
            _ => Err(self.mismatch("pre_vote")),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = snapshot.snapshot.into_inner();
        // openraft gives the whole transfer `install_snapshot_timeout` (200 ms), meant for
        // one chunk; the snapshot travels whole, so its deadline grows with its size.
        let ttl = option.hard_ttl().max(SNAPSHOT_MIN_TTL)
            + Duration::from_secs_f64(data.len() as f64 / SNAPSHOT_BYTES_PER_SEC);
        let request = PeerRequest::Snapshot {
            vote,
            meta: snapshot.meta,
            data,
        };
        let option = RPCOption::new(ttl);
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = self.rpc(request, &option) => reply?,
        };
        match reply {
            PeerReply::Snapshot(reply) => reply.map_err(|e| {
                let why = format!("node {} at {}: {e}", self.target, self.peer_addr);
                StreamingError::Unreachable(Unreachable::from_string(why))
            }),
            _ => Err(self.mismatch("snapshot").into()),
        }
    }
}
