//! The peer stream: one long-lived, pipelined connection from each node to each peer.
//!
//! A node opens it with `GET /peer/v1/stream` and `Upgrade: leasehold-peer` on the peer
//! listener, so the cluster secret, mutual TLS and the peer proxy apply exactly as to any
//! peer request; the listener checks the secret before it switches protocols. After the
//! `101 Switching Protocols` both sides speak [`frame`]s. Each message is one envelope
//! (the protocol version byte, then bincode) of a [`StreamRequest`] or a [`StreamReply`],
//! under an id:
//! - **Calls** ([`StreamRequest::Call`]): a follower's forwarded writes, keepalives, read
//!   barriers and the rest of [`super::ForwardRequest`]. Many are in flight at once; the
//!   leader serves each as it comes and answers under the call's id, in any order.
//! - **Append sessions**: openraft's `stream_append` (replication and heartbeats). The
//!   id names the session. The follower feeds a session's appends, in order, into
//!   `Raft::stream_append` and answers each in order; [`StreamRequest::EndAppend`] ends
//!   the input, [`StreamReply::AppendEnd`] the output.
//!
//! Votes, pre-votes and snapshots stay one HTTP request each (`POST /peer/v1`).
//!
//! [`client`]: the [`PeerStream`] a node holds per peer; [`serve`]: the listener's side.

pub(crate) mod client;
pub(crate) mod frame;
pub(crate) mod serve;

use leasehold_raft::typ::TypeConfig;
use openraft::error::Fatal;
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use serde::{Deserialize, Serialize};

use super::envelope::{PeerReply, PeerRequest};

pub(crate) use client::PeerStream;

/// The route that upgrades to a peer stream.
pub(crate) const STREAM_PATH: &str = "/peer/v1/stream";
/// The protocol named in the `Upgrade` header.
pub(crate) const UPGRADE_TOKEN: &str = "leasehold-peer";
/// How many messages may wait for the connection's writer.
pub(crate) const OUTGOING_QUEUE: usize = 1024;

/// What a node sends on its stream to a peer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum StreamRequest {
    /// A request answered by one [`StreamReply::Call`] of the same id.
    Call(PeerRequest),
    /// The next AppendEntries of the session named by the id.
    Append(AppendEntriesRequest<TypeConfig>),
    /// The session named by the id sends nothing more.
    EndAppend,
}

/// What the peer answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum StreamReply {
    Call(PeerReply),
    /// The result of the session's next append, in order.
    Append(Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>),
    /// The session's output ends (its input ended, or an append failed).
    AppendEnd,
}
