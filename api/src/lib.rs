//! leasehold's API: the one service trait and everything around it.
//!
//! - [`wire`]: the HTTP/JSON request and response types (SPEC §3).
//! - [`auth`]: bearer tokens ([`auth::Authenticator`]) and the rules a
//!   [`auth::Principal`] is held to.
//! - [`error`]: [`ApiError`] and the error table (status codes, codes, messages).
//! - [`validate`]: input rules shared by every implementation, with [`Limits`].
//! - [`service`]: the [`LeaseService`] trait the embedded node and the client implement.
//! - [`router`] (feature `server`): the axum router serving any `LeaseService`.
//! - [`openapi`] (feature `server`): the OpenAPI description served at `/openapi.json`,
//!   its schemas derived from the wire types.
//! - [`client`] (feature `client`): [`Client`], the HTTP implementation
//!   of `LeaseService`, with endpoint failover and idempotent retries.
//! - [`guard`]: `Lock`, `Semaphore`, `Election` guards with background renewal, the
//!   client-deadline rule, `with_lock`, and `Fence` — generic over any `LeaseService`.
//!
//! This crate knows nothing of Raft or the node; a client depends on it without the server
//! (`default-features = false, features = ["client"]`).

pub mod auth;
#[cfg(feature = "client")]
pub mod client;
pub mod error;
pub mod guard;
#[cfg(feature = "server")]
pub mod openapi;
#[cfg(feature = "server")]
pub mod router;
pub mod service;
pub mod validate;
pub mod wire;

#[cfg(feature = "client")]
pub use crate::client::{Client, ClientBuilder};
pub use crate::error::{ApiError, ErrorCode};
pub use crate::guard::{
    with_lock, Election, Fence, GuardError, GuardOptions, GuardState, Lock, LockGuard, LossReason,
    Semaphore,
};
pub use crate::service::LeaseService;
pub use crate::validate::Limits;
