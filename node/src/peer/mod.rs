//! The peer layer: everything nodes say to one another, in one place.
//!
//! - [`envelope`]: the one versioned envelope of every peer message ([`PeerRequest`],
//!   [`PeerReply`]), bincode after a protocol version byte.
//! - [`client`]: [`PeerClient`], one pooled HTTP client for every outgoing peer call, with
//!   the cluster secret and the fault switch.
//! - [`faults`]: [`Faults`], the switch tests use to cut links (no lock on the production
//!   path).
//! - [`network`]: openraft's transport (`RaftNetworkFactory`) over [`PeerClient`].
//! - [`forward`]: what a follower sends the leader ([`ForwardRequest`]) and the leader
//!   answers ([`ForwardResponse`]), and the bootstrap probe.
//! - [`server`]: the peer listener: one route, `POST /peer/v1`, that checks the secret,
//!   decodes the envelope and dispatches to Raft or to the core.
//!
//! With `[tls]`, [`crate::tls`] provides the material: the client presents the node's
//! certificate and trusts only `tls.ca`, and the listener accepts only peers with a
//! certificate signed by `tls.ca` (mutual TLS); the handshake fails before any HTTP is read.
//! [`probe`] builds raw peer messages for tests that speak to a listener as a stranger.

pub(crate) mod client;
pub(crate) mod envelope;
pub(crate) mod faults;
pub(crate) mod forward;
pub(crate) mod network;
pub(crate) mod server;
pub(crate) mod stream;

pub(crate) use client::PeerClient;
pub use envelope::PEER_PROTOCOL_VERSION;
pub use faults::Faults;
pub(crate) use forward::{ForwardRequest, ForwardResponse, Keep, MembershipChange};

/// Raw peer messages, for tests that speak to a peer listener as a stranger would (a
/// process without a certificate, a node of another cluster). Not a stable API.
#[doc(hidden)]
pub mod probe {
    use leasehold_raft::typ::{TypeConfig, Vote};
    use openraft::raft::{AppendEntriesRequest, VoteRequest};

    use super::envelope::{encode, PeerRequest};

    /// The route every peer message is posted to.
    pub const PATH: &str = super::client::PEER_PATH;

    /// The body of a vote request from `candidate` at `term` (a node that grants it moves
    /// to `term`, and a leader at a lower term steps down).
    pub fn vote_request(candidate: u64, term: u64) -> Vec<u8> {
        let request = VoteRequest::new(Vote::new(term, candidate), None);
        encode(&PeerRequest::Vote(request)).expect("a vote request encodes")
    }

    /// The body of an empty AppendEntries (a heartbeat) from `leader` at `term`.
    /// A candidate's vote request whose log ends at `last_index` of `term`: as up to date
    /// as any log of that length.
    pub fn vote_request_with_log(candidate: u64, term: u64, last_index: u64) -> Vec<u8> {
        let last = leasehold_raft::typ::LogId::new(
            leasehold_raft::typ::CommittedLeaderId {
                term,
                node_id: candidate,
            },
            last_index,
        );
        let request = VoteRequest::new(Vote::new(term, candidate), Some(last));
        encode(&PeerRequest::Vote(request)).expect("a vote request encodes")
    }

    /// Whether a peer's reply to a vote request granted the vote.
    pub fn vote_granted(reply: &[u8]) -> Result<bool, String> {
        match super::envelope::decode(reply).map_err(|e| e.to_string())? {
            super::envelope::PeerReply::Vote(Ok(response)) => Ok(response.vote_granted),
            super::envelope::PeerReply::Vote(Err(e)) => Err(e.to_string()),
            _ => Err("not a vote reply".into()),
        }
    }

    pub fn heartbeat(leader: u64, term: u64) -> Vec<u8> {
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(term, leader),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        encode(&PeerRequest::Append(request)).expect("an append request encodes")
    }
}
