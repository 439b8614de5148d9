//! leasehold's configuration: types, loading and validation (SPEC §5).
//!
//! A [`Config`] is loaded from, in rising precedence: defaults, a TOML file, `LEASEHOLD_*`
//! environment variables and command-line flags ([`Config::load`]). Loading parses, then
//! validates ([`Config::validate`]); every error names the key and the rule.
//!
//! Module map:
//! - `types` — [`Config`] and its sections, their defaults, [`Member`], and the
//!   `Duration` accessors code should use instead of the raw `_ms` fields.
//! - `keys` — [`KEYS`], one [`KeyInfo`] per setting (dotted key, env var, flag, help,
//!   default), from which the binary makes its flags; and the one function that writes a
//!   string value from env or a flag at its key.
//! - `load` — [`Config::load`]: file, then env, then flags, merged as TOML, deserialized
//!   once, then validated.
//! - `validate` — [`Config::validate`]: every rule that must hold before a node starts.
//! - `error` — [`ConfigError`].
//! - `reference` — `docs/reference/config.md`, generated from [`KEYS`] (a test fails when
//!   the committed file is stale).
//!
//! This crate is a leaf: it knows nothing of Raft, HTTP or the node.

mod error;
mod keys;
mod load;
pub mod reference;
mod types;
mod validate;

pub use error::ConfigError;
pub use keys::{KeyInfo, ValueKind, KEYS, OTHER_ENV};
pub use types::{
    AuthConfig, ClusterConfig, Config, LeadershipProof, Limits, LogConfig, LogFormat, Member,
    PeerAddress, RaftConfig, TlsConfig,
};
