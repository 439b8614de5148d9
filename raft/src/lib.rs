//! The replicated core of leasehold. It knows nothing of HTTP or sockets: the peer
//! transport lives in the node crate (`node::peer`).
//!
//! - [`typ`]: openraft's generic parameters, pinned once.
//! - [`backup`]: the backup file (`leasehold snapshot save`) and seeding a data directory
//!   from one (`leasehold snapshot restore`).
//! - [`command`]: the replicated command set (what a log entry carries and returns).
//! - [`state`]: the deterministic lease state machine and its snapshot encoding.
//! - [`sm_store`]: the openraft state-machine storage wrapping [`state::LeaseState`].
//! - [`log_store`]: the durable sled log store and the in-memory one.

// openraft's storage traits return its `StorageError` (200+ bytes) by value; our helpers
// return the same type rather than boxing and unboxing at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod backup;
pub mod closing;
pub mod command;
pub mod log_store;
pub mod sm_store;
pub mod state;
pub mod typ;

/// A callback that hears how long something took (an fsync, a snapshot build): how the
/// node's metrics learn about storage without this crate knowing of them.
#[derive(Clone)]
pub struct Observer(std::sync::Arc<dyn Fn(std::time::Duration) + Send + Sync>);

impl Observer {
    pub fn new(f: impl Fn(std::time::Duration) + Send + Sync + 'static) -> Self {
        Observer(std::sync::Arc::new(f))
    }

    pub fn observe(&self, elapsed: std::time::Duration) {
        (self.0)(elapsed)
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}
