//! The leasehold node: the composition root.
//!
//! - `node`: [`Node::start`] wires config, storage, Raft, the actors and both listeners.
//! - `service`: [`NodeService`], the node's implementation of
//!   `leasehold_api::LeaseService`, split by concern (leases, the shared resource path,
//!   locks, names, semaphores, waiting, cluster), and the one place input is validated.
//! - `core`: the façade the service and the peer listener use: routes writes, read
//!   barriers and keepalives to the leader (or forwards them), reads the local state.
//! - `peer`: everything nodes say to one another: the versioned envelope, the pooled peer
//!   client, openraft's transport, forwarding, the bootstrap probe and the peer listener.
//! - `proposer`: gathers concurrent commands into one Raft entry (group commit).
//! - `confirmer`: batched leadership confirmation (read-index rounds), at most one
//!   round per `raft.keepalive_window_ms`.
//! - `batcher`: gathers a node's writes (while earlier ones are in flight) and keepalives
//!   (once per window) into one message to the leader.
//! - `lease_actor`: lease deadlines, expiry and lock-delay on the leader.
//! - `metrics`: the node's Prometheus registry and the text at `/metrics`.
//! - `clock`: the wall clock the actors are given.
//! - `incarnation`: a data directory's identity, recorded in the cluster, so a wiped
//!   member is refused rather than started empty.
//! - `bugs`: deliberate faults for the fault suite (feature `bug-switches`, test builds).
//! - `error`: the core's typed errors ([`CoreError`]).
//!
//! Only this crate opens sockets and spawns long-lived tasks, and every task it spawns
//! is tracked so that [`Node::shutdown`] waits for it.

mod batcher;
// Without the feature only `active` (always false) is used.
#[cfg_attr(not(feature = "bug-switches"), allow(dead_code))]
mod bugs;
mod clock;
mod confirmer;
mod core;
mod error;
mod incarnation;
mod lease_actor;
mod metrics;
mod node;
mod overload;
mod peer;
mod proposer;
mod service;
mod snapshots;
mod tls;

#[cfg(test)]
mod paused_time_tests;

#[cfg(feature = "bug-switches")]
#[doc(hidden)]
pub use crate::bugs::{from_env as bug_switch_from_env, ENV as BUG_SWITCH_ENV};
pub use crate::error::CoreError;
pub use crate::node::{Listeners, Node, StartError};
pub use crate::peer::{probe as peer_probe, Faults, PEER_PROTOCOL_VERSION};
pub use crate::service::NodeService;
pub use crate::tls::{generate_local_certs, CertAuthority, LocalCerts, TlsError};
pub use leasehold_config::Config;
