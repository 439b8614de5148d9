//! openraft's transport: one [`RaftPeer`] per target, all over one [`PeerClient`].
//! Timeouts come from openraft's `RPCOption`.

// openraft's RPC errors are large by value; they are its trait's return type.
#![allow(clippy::result_large_err)]

use leasehold_raft::typ::{NodeId, PeerNode, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::client::{PeerCallError, PeerClient};
use super::envelope::{PeerReply, PeerRequest};

/// Makes openraft's per-target clients.
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

/// openraft's connection to one peer.
pub(crate) struct RaftPeer {
    target: NodeId,
    peer_addr: String,
    peers: PeerClient,
}

type RpcError<E> = RPCError<NodeId, PeerNode, RaftError<NodeId, E>>;

impl RaftPeer {
    async fn rpc<E: std::error::Error>(
        &self,
        request: PeerRequest,
        option: &RPCOption,
    ) -> Result<PeerReply, RpcError<E>> {
        self.peers
            .call(&self.peer_addr, &request, option.hard_ttl())
            .await
            .map_err(|e| transport_error(&e))
    }

    /// The peer's answer. A peer whose Raft core has stopped (a storage fault, a panic)
    /// answers every RPC with `Fatal`: nothing fixes that until it restarts, so it counts
    /// as unreachable and openraft backs off, rather than retrying at once (as it does on
    /// a `RemoteError`) in a loop that a leader can spin thousands of times a second.
    fn remote<T, E: std::error::Error>(
        &self,
        reply: Result<T, RaftError<NodeId, E>>,
    ) -> Result<T, RpcError<E>> {
        reply.map_err(|e| match e {
            RaftError::Fatal(fatal) => RPCError::Unreachable(Unreachable::new(&fatal)),
            e => RPCError::RemoteError(RemoteError::new(self.target, e)),
        })
    }

    fn mismatch<E: std::error::Error>(&self, rpc: &'static str) -> RpcError<E> {
        let e = PeerCallError::Mismatch {
            addr: self.peer_addr.clone(),
            got: rpc,
        };
        RPCError::Network(NetworkError::new(&e))
    }
}

/// openraft retries a `NetworkError` at once and backs off (`RaftNetwork::backoff`, 500 ms)
/// only after `Unreachable`. A peer address that another server answers with 404 made a
/// leader retry about 12,000 times a second and log each one, so everything that a retry
/// cannot fix counts as unreachable too.
fn transport_error<E: std::error::Error>(e: &PeerCallError) -> RpcError<E> {
    if e.not_sent() || e.not_a_peer() {
        RPCError::Unreachable(Unreachable::new(e))
    } else {
        RPCError::Network(NetworkError::new(e))
    }
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError<openraft::error::Infallible>> {
        match self.rpc(PeerRequest::Append(rpc), &option).await? {
            PeerReply::Append(reply) => self.remote(reply),
            _ => Err(self.mismatch("append")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        match self.rpc(PeerRequest::Snapshot(rpc), &option).await? {
            PeerReply::Snapshot(reply) => self.remote(reply),
            _ => Err(self.mismatch("snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError<openraft::error::Infallible>> {
        match self.rpc(PeerRequest::Vote(rpc), &option).await? {
            PeerReply::Vote(reply) => self.remote(reply),
            _ => Err(self.mismatch("vote")),
        }
    }
}
