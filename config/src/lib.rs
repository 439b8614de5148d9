//! leasehold's configuration: types, loading and validation (SPEC §5).
//!
//! A [`Config`] is loaded from, in rising precedence: defaults, a TOML file, `LEASEHOLD_*`
//! environment variables and command-line flags ([`Config::load`]). Every key has one
//! entry in [`KEYS`], from which the binary makes its flags. Loading parses, then
//! validates; every error names the key and the rule.
//!
//! This crate is a leaf: it knows nothing of Raft, HTTP or the node.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {message}")]
    Io { path: String, message: String },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("unknown environment variable {var}: it is not a leasehold setting (see `leasehold serve --help`)")]
    UnknownEnv { var: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// One member of the initial cluster: `"<id>=<peer_addr>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub peer_addr: SocketAddr,
}

impl FromStr for Member {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("expected \"<id>=<host:port>\", got {s:?}"))?;
        let id = id
            .trim()
            .parse()
            .map_err(|_| format!("member id must be a positive integer, got {:?}", id.trim()))?;
        let peer_addr = addr
            .trim()
            .parse()
            .map_err(|_| format!("member address must be <ip:port>, got {:?}", addr.trim()))?;
        Ok(Member { id, peer_addr })
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.id, self.peer_addr)
    }
}

impl Serialize for Member {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node_id: u64,
    /// The HTTP API listener.
    pub client_addr: SocketAddr,
    /// The Raft (peer) listener.
    pub peer_addr: SocketAddr,
    /// Where the Raft log lives (sled); `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    pub cluster: ClusterConfig,
    pub raft: RaftConfig,
    pub limits: Limits,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The initial members; used only to bootstrap empty storage. Empty: a lone node
    /// that forms a cluster of one.
    pub members: Vec<Member>,
    /// A file holding the shared secret that authenticates peer traffic.
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// The deadline of one proposal (commit and apply).
    pub proposal_timeout_ms: u64,
    /// Most commands gathered into one log entry.
    pub max_batch: usize,
    /// Build a snapshot (and purge the log) after this many entries.
    pub snapshot_every_logs: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 400,
            proposal_timeout_ms: 5_000,
            max_batch: 512,
            snapshot_every_logs: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Largest request body; refused before it is read whole.
    pub max_body_bytes: usize,
    pub min_ttl_ms: u64,
    pub max_ttl_ms: u64,
    pub max_wait_ms: u64,
    pub max_leases: u64,
    pub max_waiters_per_key: u32,
    /// Largest page of a list request.
    pub max_list_limit: usize,
    /// The deadline of a request (long-polls get their `wait_ms` on top).
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 512,
            max_value_bytes: 65_536,
            max_body_bytes: 131_072,
            min_ttl_ms: 500,
            max_ttl_ms: 86_400_000,
            max_wait_ms: 300_000,
            max_leases: 1_000_000,
            max_waiters_per_key: 10_000,
            max_list_limit: 1_000,
            request_timeout_ms: 10_000,
        }
    }
}

impl Limits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer tokens and the key prefixes each may touch (not enforced yet).
    pub tokens_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            client_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 7170)),
            data_dir: None,
            cluster: ClusterConfig::default(),
            raft: RaftConfig::default(),
            limits: Limits::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// How a key's value is written in env vars and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Integer,
    Address,
    Path,
    /// Comma-separated `id=host:port` list.
    Members,
}

/// One configuration key: its dotted name, env var, flag, help and default.
#[derive(Debug, Clone, Copy)]
pub struct KeyInfo {
    pub key: &'static str,
    pub env: &'static str,
    pub flag: &'static str,
    pub help: &'static str,
    pub default: &'static str,
    pub kind: ValueKind,
}

macro_rules! keys {
    ($( $key:literal, $env:literal, $flag:literal, $kind:ident, $default:literal, $help:literal; )*) => {
        /// Every configuration key, in file order.
        pub const KEYS: &[KeyInfo] = &[
            $( KeyInfo { key: $key, env: $env, flag: $flag, help: $help, default: $default, kind: ValueKind::$kind }, )*
        ];
    };
}

keys! {
    "node_id", "LEASEHOLD_NODE_ID", "--node-id", Integer, "1", "this node's id in the cluster (> 0)";
    "client_addr", "LEASEHOLD_CLIENT_ADDR", "--client-addr", Address, "127.0.0.1:7070", "HTTP API listen address";
    "peer_addr", "LEASEHOLD_PEER_ADDR", "--peer-addr", Address, "127.0.0.1:7170", "Raft peer listen address";
    "data_dir", "LEASEHOLD_DATA_DIR", "--data-dir", Path, "(in-memory)", "directory for the durable Raft log; omit for in-memory";
    "cluster.members", "LEASEHOLD_CLUSTER_MEMBERS", "--cluster-members", Members, "(lone node)", "initial members as id=host:port,... (bootstrap only)";
    "cluster.secret_file", "LEASEHOLD_CLUSTER_SECRET_FILE", "--cluster-secret-file", Path, "(none)", "file with the secret that authenticates peer traffic";
    "raft.heartbeat_interval_ms", "LEASEHOLD_RAFT_HEARTBEAT_INTERVAL_MS", "--raft-heartbeat-interval-ms", Integer, "50", "leader heartbeat period";
    "raft.election_timeout_min_ms", "LEASEHOLD_RAFT_ELECTION_TIMEOUT_MIN_MS", "--raft-election-timeout-min-ms", Integer, "250", "lower bound of the randomized election timeout";
    "raft.election_timeout_max_ms", "LEASEHOLD_RAFT_ELECTION_TIMEOUT_MAX_MS", "--raft-election-timeout-max-ms", Integer, "400", "upper bound of the randomized election timeout";
    "raft.proposal_timeout_ms", "LEASEHOLD_RAFT_PROPOSAL_TIMEOUT_MS", "--raft-proposal-timeout-ms", Integer, "5000", "deadline of one proposal";
    "raft.max_batch", "LEASEHOLD_RAFT_MAX_BATCH", "--raft-max-batch", Integer, "512", "most commands in one log entry";
    "raft.snapshot_every_logs", "LEASEHOLD_RAFT_SNAPSHOT_EVERY_LOGS", "--raft-snapshot-every-logs", Integer, "10000", "snapshot and purge after this many entries";
    "limits.max_key_bytes", "LEASEHOLD_LIMITS_MAX_KEY_BYTES", "--limits-max-key-bytes", Integer, "512", "longest key or name";
    "limits.max_value_bytes", "LEASEHOLD_LIMITS_MAX_VALUE_BYTES", "--limits-max-value-bytes", Integer, "65536", "largest value";
    "limits.max_body_bytes", "LEASEHOLD_LIMITS_MAX_BODY_BYTES", "--limits-max-body-bytes", Integer, "131072", "largest request body";
    "limits.min_ttl_ms", "LEASEHOLD_LIMITS_MIN_TTL_MS", "--limits-min-ttl-ms", Integer, "500", "shortest lease TTL";
    "limits.max_ttl_ms", "LEASEHOLD_LIMITS_MAX_TTL_MS", "--limits-max-ttl-ms", Integer, "86400000", "longest lease TTL";
    "limits.max_wait_ms", "LEASEHOLD_LIMITS_MAX_WAIT_MS", "--limits-max-wait-ms", Integer, "300000", "longest blocking wait";
    "limits.max_leases", "LEASEHOLD_LIMITS_MAX_LEASES", "--limits-max-leases", Integer, "1000000", "most live leases in the cluster";
    "limits.max_waiters_per_key", "LEASEHOLD_LIMITS_MAX_WAITERS_PER_KEY", "--limits-max-waiters-per-key", Integer, "10000", "longest wait queue of one key";
    "limits.max_list_limit", "LEASEHOLD_LIMITS_MAX_LIST_LIMIT", "--limits-max-list-limit", Integer, "1000", "largest page of a list";
    "limits.request_timeout_ms", "LEASEHOLD_LIMITS_REQUEST_TIMEOUT_MS", "--limits-request-timeout-ms", Integer, "10000", "deadline of a request (plus wait_ms for long-polls)";
    "auth.tokens_file", "LEASEHOLD_AUTH_TOKENS_FILE", "--auth-tokens-file", Path, "(none)", "bearer tokens and their key prefixes";
    "tls.cert", "LEASEHOLD_TLS_CERT", "--tls-cert", Path, "(none)", "TLS certificate (PEM)";
    "tls.key", "LEASEHOLD_TLS_KEY", "--tls-key", Path, "(none)", "TLS private key (PEM)";
}

/// `LEASEHOLD_*` variables that are not config keys but belong to the binary or clients.
pub const OTHER_ENV: &[&str] = &["LEASEHOLD_ENDPOINTS", "LEASEHOLD_LOG"];

impl Config {
    /// A single in-memory node on the default addresses (the `leasehold serve` default).
    pub fn in_memory() -> Self {
        Config::default()
    }

    /// A single in-memory node on the given addresses (use port 0 for any free port).
    pub fn in_memory_on(client_addr: SocketAddr, peer_addr: SocketAddr) -> Self {
        Config {
            client_addr,
            peer_addr,
            ..Config::default()
        }
    }

    /// Load from `file` (optional), then `env` (`LEASEHOLD_*` pairs), then `overrides`
    /// (dotted key, value), each over the one before; then validate.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let path_str = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
                    path: path_str.clone(),
                    message: e.to_string(),
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path_str,
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        for (var, value) in env {
            if !var.starts_with("LEASEHOLD_") || OTHER_ENV.contains(&var.as_str()) {
                continue;
            }
            let info = KEYS
                .iter()
                .find(|k| k.env == var)
                .ok_or_else(|| ConfigError::UnknownEnv { var: var.clone() })?;
            set(&mut table, info, &value).map_err(|message| invalid(&var, message))?;
        }
        for (key, value) in overrides {
            let info = KEYS
                .iter()
                .find(|k| k.key == key)
                .ok_or_else(|| invalid(key, "not a configuration key"))?;
            set(&mut table, info, value).map_err(|message| invalid(info.flag, message))?;
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: file.map_or("(flags and environment)".into(), |p| {
                        p.display().to_string()
                    }),
                    message: e.message().to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Check every rule; the error names the key and the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be greater than 0"));
        }
        if self.client_addr == self.peer_addr && self.client_addr.port() != 0 {
            return Err(invalid(
                "peer_addr",
                format!("must differ from client_addr ({})", self.client_addr),
            ));
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return Err(invalid(
                "raft.heartbeat_interval_ms",
                "must be greater than 0",
            ));
        }
        if r.election_timeout_min_ms <= 2 * r.heartbeat_interval_ms {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                format!(
                    "({}) must be greater than 2 × raft.heartbeat_interval_ms ({})",
                    r.election_timeout_min_ms,
                    2 * r.heartbeat_interval_ms
                ),
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                format!(
                    "({}) must be greater than raft.election_timeout_min_ms ({})",
                    r.election_timeout_max_ms, r.election_timeout_min_ms
                ),
            ));
        }
        if r.proposal_timeout_ms < r.election_timeout_max_ms {
            return Err(invalid(
                "raft.proposal_timeout_ms",
                format!(
                    "({}) must be at least raft.election_timeout_max_ms ({})",
                    r.proposal_timeout_ms, r.election_timeout_max_ms
                ),
            ));
        }
        if r.max_batch == 0 {
            return Err(invalid("raft.max_batch", "must be greater than 0"));
        }
        if r.snapshot_every_logs == 0 {
            return Err(invalid(
                "raft.snapshot_every_logs",
                "must be greater than 0",
            ));
        }
        let l = &self.limits;
        if l.max_key_bytes == 0 || l.max_key_bytes > 4096 {
            return Err(invalid(
                "limits.max_key_bytes",
                format!("must be between 1 and 4096, got {}", l.max_key_bytes),
            ));
        }
        if l.max_value_bytes > 16 * 1024 * 1024 {
            return Err(invalid(
                "limits.max_value_bytes",
                format!(
                    "must be at most 16777216 (16 MiB), got {}",
                    l.max_value_bytes
                ),
            ));
        }
        if l.max_body_bytes < l.max_value_bytes + 4096 {
            return Err(invalid(
                "limits.max_body_bytes",
                format!(
                    "({}) must be at least limits.max_value_bytes + 4096 ({}) so a maximal value fits",
                    l.max_body_bytes,
                    l.max_value_bytes + 4096
                ),
            ));
        }
        if l.min_ttl_ms < 100 {
            return Err(invalid(
                "limits.min_ttl_ms",
                format!("must be at least 100, got {}", l.min_ttl_ms),
            ));
        }
        if l.max_ttl_ms < l.min_ttl_ms {
            return Err(invalid(
                "limits.max_ttl_ms",
                format!(
                    "({}) must be at least limits.min_ttl_ms ({})",
                    l.max_ttl_ms, l.min_ttl_ms
                ),
            ));
        }
        for (key, value) in [
            ("limits.max_wait_ms", l.max_wait_ms),
            ("limits.max_leases", l.max_leases),
            ("limits.max_waiters_per_key", l.max_waiters_per_key as u64),
            ("limits.max_list_limit", l.max_list_limit as u64),
            ("limits.request_timeout_ms", l.request_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        let members = &self.cluster.members;
        for (i, m) in members.iter().enumerate() {
            if m.id == 0 {
                return Err(invalid(
                    "cluster.members",
                    "member ids must be greater than 0",
                ));
            }
            if members[..i].iter().any(|o| o.id == m.id) {
                return Err(invalid(
                    "cluster.members",
                    format!("member id {} appears twice", m.id),
                ));
            }
        }
        if !members.is_empty() {
            match members.iter().find(|m| m.id == self.node_id) {
                None => {
                    return Err(invalid(
                        "cluster.members",
                        format!("does not list this node (node_id = {})", self.node_id),
                    ))
                }
                Some(me) if me.peer_addr != self.peer_addr && self.peer_addr.port() != 0 => {
                    return Err(invalid(
                        "peer_addr",
                        format!(
                            "({}) differs from this node's entry in cluster.members ({me})",
                            self.peer_addr
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid("tls", "set both tls.cert and tls.key, or neither"));
        }
        Ok(())
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.raft.heartbeat_interval_ms)
    }

    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.raft.election_timeout_max_ms)
    }

    /// The config as a TOML file (for `local-cluster` and docs).
    pub fn to_toml_string(&self) -> String {
        // Serializing plain config data to TOML cannot fail.
        toml::to_string_pretty(self).expect("config serializes to TOML")
    }
}

/// Put `value` (as given in env or on a flag) at `info.key` in the TOML table.
fn set(table: &mut toml::Table, info: &KeyInfo, value: &str) -> Result<(), String> {
    let parsed = match info.kind {
        ValueKind::Integer => {
            let n: i64 = value
                .trim()
                .parse()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("expected a non-negative integer, got {value:?}"))?;
            toml::Value::Integer(n)
        }
        ValueKind::Address => {
            value
                .trim()
                .parse::<SocketAddr>()
                .map_err(|_| format!("expected <ip:port>, got {value:?}"))?;
            toml::Value::String(value.trim().to_string())
        }
        ValueKind::Path => {
            if value.is_empty() {
                return Err("expected a path, got an empty value".into());
            }
            toml::Value::String(value.to_string())
        }
        ValueKind::Members => {
            let mut list = Vec::new();
            for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let member: Member = part.parse()?;
                list.push(toml::Value::String(member.to_string()));
            }
            toml::Value::Array(list)
        }
    };
    let mut parts = info.key.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_string(), parsed);
            return Ok(());
        }
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("{part} must be a table in the config file"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
