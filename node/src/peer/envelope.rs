//! The one envelope of every peer message.
//!
//! On the wire a message is one byte of protocol version, then the bincode 2 (standard
//! configuration) encoding of a [`PeerRequest`] or a [`PeerReply`]. A node refuses a
//! message of another version with a clear error rather than misreading it, so a mixed
//! cluster fails loudly instead of corrupting anything. Bump [`PEER_PROTOCOL_VERSION`]
//! whenever either enum, or a type inside it, changes shape.

use leasehold_raft::typ::{SnapshotMeta, TypeConfig, Vote};
use openraft::error::{Fatal, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::forward::{ForwardRequest, ForwardResponse};
use crate::error::CoreError;

/// The version of the peer protocol this build speaks.
///
/// 2: proposals carry the authenticated caller (`Batch::V2`), and the command set has
/// `ForceRelease`.
/// 3: keepalives travel in batches (`ForwardRequest::Keepalive`), answered one result per
/// keepalive.
/// 4: expiries name the term whose leader saw the deadline pass (`Command::Expire`), and
/// a stale one reports `CommandResult::StaleExpiry`.
/// 5: members record their data directory's identity (`Command::RecordIncarnation`), and
/// a member starting empty asks the others for it (`ForwardRequest::MemberRecord`).
/// 6: the leader's view of its members for a follower's status page
/// (`ForwardRequest::MemberHealth`).
/// 7: entries are `Batch::V3` (stamped with the cluster's clock; the dedupe window's
/// minimum age applies to them).
/// 8: openraft 0.10: pre-votes, whole snapshots.
/// 9: the peer stream (`node::peer::stream`): appends, heartbeats and forwarded requests
/// pipelined on one upgraded connection per peer, in frames.
pub const PEER_PROTOCOL_VERSION: u8 = 9;

/// Every request one node sends another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    /// A whole snapshot in one message (openraft 0.10's `full_snapshot`).
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        data: Vec<u8>,
    },
    /// A request a follower forwards to the leader (or the bootstrap probe).
    Forward(ForwardRequest),
}

type RaftResult<T> = Result<T, RaftError<TypeConfig>>;

/// The reply to each [`PeerRequest`], variant for variant.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerReply {
    Append(RaftResult<AppendEntriesResponse<TypeConfig>>),
    Vote(RaftResult<VoteResponse<TypeConfig>>),
    PreVote(RaftResult<VoteResponse<TypeConfig>>),
    Snapshot(Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>>),
    Forward(Result<ForwardResponse, CoreError>),
}

impl PeerRequest {
    /// A short name for logs and spans.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            PeerRequest::Append(_) => "append",
            PeerRequest::Vote(_) => "vote",
            PeerRequest::PreVote(_) => "pre_vote",
            PeerRequest::Snapshot { .. } => "snapshot",
            PeerRequest::Forward(_) => "forward",
        }
    }

    /// The clients' request ids of forwarded writes, so that the leader's log names them
    /// (the first eight of a larger batch, and how many more there were).
    pub(crate) fn request_ids(&self) -> Option<String> {
        const SHOWN: usize = 8;
        match self {
            PeerRequest::Forward(ForwardRequest::Propose(batch)) => {
                let mut ids: Vec<&str> = batch
                    .iter()
                    .filter_map(|p| p.request_id.as_deref())
                    .take(SHOWN)
                    .collect();
                let more = batch.len().saturating_sub(SHOWN);
                let more = (more > 0).then(|| format!("(+{more} more)"));
                ids.extend(more.as_deref());
                (!ids.is_empty()).then(|| ids.join(","))
            }
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum EnvelopeError {
    #[error("empty peer message")]
    Empty,
    #[error(
        "peer protocol version {got}, but this node speaks version {PEER_PROTOCOL_VERSION}; \
         run the same leasehold version on every member"
    )]
    Version { got: u8 },
    #[error("cannot decode the peer message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("cannot encode the peer message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("{0} trailing bytes after the peer message")]
    Trailing(usize),
}

/// The version byte, then the message.
pub(crate) fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, EnvelopeError> {
    encode_after(&[], message)
}

/// `prefix`, then the version byte and the message, in one buffer.
pub(crate) fn encode_after<T: Serialize>(
    prefix: &[u8],
    message: &T,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::with_capacity(prefix.len() + 64);
    out.extend_from_slice(prefix);
    out.push(PEER_PROTOCOL_VERSION);
    bincode::serde::encode_into_std_write(message, &mut out, bincode::config::standard())?;
    Ok(out)
}

/// Check the version byte and decode the message; garbage is an error, never a panic.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EnvelopeError> {
    let (&version, body) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
    if version != PEER_PROTOCOL_VERSION {
        return Err(EnvelopeError::Version { got: version });
    }
    let (message, used) = bincode::serde::decode_from_slice(body, bincode::config::standard())?;
    if used != body.len() {
        return Err(EnvelopeError::Trailing(body.len() - used));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_behind_its_version_byte() {
        let request = PeerRequest::Forward(ForwardRequest::ReadIndex);
        let bytes = encode(&request).unwrap();
        assert_eq!(bytes[0], PEER_PROTOCOL_VERSION);
        let back: PeerRequest = decode(&bytes).unwrap();
        assert!(matches!(
            back,
            PeerRequest::Forward(ForwardRequest::ReadIndex)
        ));
    }

    #[test]
    fn another_version_is_refused_by_name() {
        let mut bytes = encode(&PeerRequest::Forward(ForwardRequest::ReadIndex)).unwrap();
        bytes[0] = PEER_PROTOCOL_VERSION + 1;
        let err = decode::<PeerRequest>(&bytes).unwrap_err();
        assert!(matches!(err, EnvelopeError::Version { .. }), "{err}");
        assert!(err.to_string().contains("same leasehold version"));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        assert!(matches!(
            decode::<PeerRequest>(&[]),
            Err(EnvelopeError::Empty)
        ));
        assert!(decode::<PeerRequest>(&[PEER_PROTOCOL_VERSION, 0xff, 0xff, 0xff]).is_err());
        let mut bytes = encode(&PeerRequest::Forward(ForwardRequest::ReadIndex)).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<PeerRequest>(&bytes),
            Err(EnvelopeError::Trailing(1))
        ));
    }
}
