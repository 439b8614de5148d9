//! The leasehold node: the composition root.
//!
//! - [`node`]: `Node::start` wires config, storage, Raft, the actors and both listeners.
//! - [`service`]: `NodeService`, the node's implementation of `leasehold_api::LeaseService`.
//! - [`core`]: routes writes, read barriers and keepalives to the leader (or forwards them).
//! - [`proposer`]: gathers concurrent commands into one Raft entry (group commit).
//! - [`confirmer`]: batched leadership confirmation (read-index rounds).
//! - [`lease_actor`]: lease deadlines, expiry and lock-delay on the leader.
//! - [`forward`]: the leader side of forwarding, on the peer listener.
//! - [`error`]: the core's typed errors.
//!
//! Only this crate opens sockets and spawns long-lived tasks.

pub mod confirmer;
pub mod core;
pub mod error;
pub mod forward;
pub mod lease_actor;
pub mod node;
pub mod proposer;
pub mod service;

pub use crate::node::{Listeners, Node, StartError};
pub use crate::service::NodeService;
pub use leasehold_config::Config;
