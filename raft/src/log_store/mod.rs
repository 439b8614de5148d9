//! Raft log stores: [`SledLogStore`] (durable, fsync before acknowledging) and
//! [`MemLogStore`] (in-memory nodes and tests). Both pass `openraft::testing::Suite`.

mod flusher;
mod mem;
mod sled;
pub mod watermark;

pub use self::mem::MemLogStore;
pub use self::sled::{GroupObserver, SledLogStore};

use std::io;

fn with_context(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

pub(crate) fn read_logs_err(e: impl std::fmt::Display) -> io::Error {
    with_context("reading the Raft log", e)
}

pub(crate) fn write_logs_err(e: impl std::fmt::Display) -> io::Error {
    with_context("writing the Raft log", e)
}

pub(crate) fn read_vote_err(e: impl std::fmt::Display) -> io::Error {
    with_context("reading the vote", e)
}

pub(crate) fn write_vote_err(e: impl std::fmt::Display) -> io::Error {
    with_context("writing the vote", e)
}
