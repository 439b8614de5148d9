//! leasehold's API: the one service trait and everything around it.
//!
//! - [`wire`]: the HTTP/JSON request and response types (SPEC §3).
//! - [`error`]: [`ApiError`] and the error table (status codes, codes, messages).
//! - [`validate`]: input rules shared by every implementation, with [`Limits`].
//! - [`service`]: the [`LeaseService`] trait the embedded node and the client implement.
//! - [`router`] (feature `server`): the axum router serving any `LeaseService`.
//!
//! This crate knows nothing of Raft or the node; a client depends on it without the server
//! (`default-features = false, features = ["client"]`).

pub mod error;
#[cfg(feature = "server")]
pub mod router;
pub mod service;
pub mod validate;
pub mod wire;

pub use crate::error::{ApiError, ErrorCode};
pub use crate::service::LeaseService;
pub use crate::validate::Limits;
