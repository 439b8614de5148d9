//! Raft log stores: [`SledLogStore`] (durable, fsync before acknowledging) and
//! [`MemLogStore`] (in-memory nodes and tests). Both pass `openraft::testing::Suite`.

mod mem;
mod sled;
pub mod watermark;

pub use self::mem::MemLogStore;
pub use self::sled::SledLogStore;

use openraft::{AnyError, StorageIOError};

use crate::typ::StorageError;

pub(crate) fn read_logs_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

pub(crate) fn write_logs_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

pub(crate) fn read_vote_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_vote(AnyError::new(&e)).into()
}

pub(crate) fn write_vote_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_vote(AnyError::new(&e)).into()
}
