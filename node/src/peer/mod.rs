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
//! TLS for peers (mutual TLS) belongs here: the client's connector and the listener's
//! acceptor are the only two places that touch sockets.

pub(crate) mod client;
pub(crate) mod envelope;
pub(crate) mod faults;
pub(crate) mod forward;
pub(crate) mod network;
pub(crate) mod server;

pub(crate) use client::PeerClient;
pub use envelope::PEER_PROTOCOL_VERSION;
pub use faults::Faults;
pub(crate) use forward::{ForwardRequest, ForwardResponse, MembershipChange};
