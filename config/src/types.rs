//! The configuration types and their defaults.
//!
//! Field names carry their unit (`_ms`, `_bytes`) because they are what users write in
//! the file; code should use the `Duration` accessors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, ConfigError};

/// A node's whole configuration (SPEC §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id in the cluster (> 0).
    pub node_id: u64,
    /// The HTTP API listener.
    pub client_addr: SocketAddr,
    /// The Raft (peer) listener.
    pub peer_addr: SocketAddr,
    /// The peer address the other members reach this node at, when it differs from where
    /// it listens (`peer_addr` 0.0.0.0:7170 behind the name `leasehold-0.peers:7170`). It
    /// must be this node's entry in `cluster.members`.
    pub advertise_peer_addr: Option<PeerAddress>,
    /// The client address this node gives out (in the membership, for `members add` and
    /// `--rejoin`), when it differs from `client_addr`.
    pub advertise_client_addr: Option<PeerAddress>,
    /// Where the Raft log and snapshots live (sled); `None` keeps everything in memory,
    /// and the node then recovers from its peers, not from disk.
    pub data_dir: Option<PathBuf>,
    pub cluster: ClusterConfig,
    pub raft: RaftConfig,
    pub limits: Limits,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
}

/// How the node logs (the filter is `LEASEHOLD_LOG`, as `RUST_LOG`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// `text` for people (the default), `json` for log shippers: one object per line with
/// the timestamp, level, target, message, fields and the spans (node, request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How the leader proves its leadership for keepalives and reads (`raft.leadership_proof`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeadershipProof {
    /// The leader lease, or a quorum round when it has lapsed.
    #[default]
    Lease,
    /// Always a quorum round.
    Round,
}

/// The initial cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The initial voters, used only to bootstrap empty storage; later changes go through
    /// the membership API. When empty (the default) the node bootstraps itself as a
    /// cluster of one member, itself, so `leasehold serve` with no arguments is ready at
    /// once. When not empty it must list this node with its `peer_addr`.
    pub members: Vec<Member>,
    /// A file holding the shared secret that authenticates peer traffic.
    pub secret_file: Option<PathBuf>,
    /// Send outgoing peer traffic through this HTTP forward proxy (`ip:port`). The fault
    /// tests put one in front of every node to cut links; it also suits networks where
    /// peers are only reachable through a proxy.
    pub peer_proxy: Option<SocketAddr>,
}

/// Raft timing and log housekeeping. The defaults aim at failover under 1 s on a LAN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// How often the leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// The deadline of one proposal (commit and apply).
    pub proposal_timeout_ms: u64,
    /// Most commands gathered into one log entry.
    pub max_batch: usize,
    /// Build a snapshot (and purge the log) after this many entries.
    pub snapshot_every_logs: u64,
    /// Keepalives and linearizable reads: with 0 (the default) batching is adaptive, a
    /// request goes at once when none is in flight and waits only behind one that is.
    /// Above 0, a node forwards the keepalives gathered within this window as one message,
    /// and the leader confirms its leadership at most once per window.
    pub keepalive_window_ms: u64,
    /// How the leader proves, for keepalives and linearizable reads, that no other leader
    /// exists (SPEC §2 rule 3): `lease` answers on its leader lease while a quorum
    /// acknowledged it within `election_timeout_min_ms` less 1 %, else with a quorum round;
    /// `round` always runs a round.
    pub leadership_proof: LeadershipProof,
    /// Memory sled may use to cache the durable log's pages (MiB). sled's own default is
    /// 1 GiB, far more than the entries since the last snapshot need.
    pub log_cache_mib: u64,
    /// The largest frame on a peer stream (bytes). A larger message (a long append) is
    /// cut into frames of this size, sent in turn with the other messages, so a keepalive
    /// or a forwarded write waits behind at most one frame of it.
    pub peer_frame_bytes: usize,
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
            keepalive_window_ms: 0,
            leadership_proof: LeadershipProof::Lease,
            log_cache_mib: 64,
            peer_frame_bytes: 65_536,
        }
    }
}

/// A bound on everything a client can make the cluster hold or wait for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest key or name.
    pub max_key_bytes: usize,
    /// Largest value attached to a lock or name.
    pub max_value_bytes: usize,
    /// Largest request body; refused before it is read whole.
    pub max_body_bytes: usize,
    /// Shortest lease TTL a client may ask for.
    pub min_ttl_ms: u64,
    /// Longest lease TTL a client may ask for.
    pub max_ttl_ms: u64,
    /// Longest `wait_ms` of a blocking request.
    pub max_wait_ms: u64,
    /// Most live leases in the cluster.
    pub max_leases: u64,
    /// Longest wait queue of one key.
    pub max_waiters_per_key: u32,
    /// Largest page of a list request.
    pub max_list_limit: usize,
    /// The deadline of a request (long-polls get their `wait_ms` on top).
    pub request_timeout_ms: u64,
    /// Most client connections open on this node; past it a new one is answered 503 (or
    /// closed, under TLS) so the client fails over. The peer listener is never capped.
    pub max_connections: usize,
    /// Most client connections open on this node from one IP address; past it 429 (or
    /// closed, under TLS).
    pub max_connections_per_address: usize,
    /// Most client requests being worked on at once on this node (parked long-polls are
    /// counted by `max_long_polls` instead). New holds and long-polls are shed at 3/4 of
    /// it, other reads at 7/8, keepalives, extends and releases only at the full cap.
    pub max_requests_in_flight: usize,
    /// Most blocking requests (blocking acquires, blocking queries, waits for release)
    /// parked on this node at once; past it 503.
    pub max_long_polls: usize,
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
            max_connections: 4_096,
            max_connections_per_address: 1024,
            max_requests_in_flight: 1_024,
            max_long_polls: 2_048,
        }
    }
}

impl Limits {
    /// The deadline of a request (`request_timeout_ms`).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Client authentication (optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer tokens and the key prefixes each may touch.
    pub tokens_file: Option<PathBuf>,
}

/// TLS for the client and peer listeners (optional; `cert`, `key` and `ca` together).
/// With it set, both listeners speak only HTTPS, and peers authenticate each other with
/// their certificates (mutual TLS).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM), served on both listeners and presented to
    /// peers as the client certificate.
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// The CA (PEM) that signs every node's certificate: peers verify each other with it.
    pub ca: Option<PathBuf>,
    /// Optional CA (PEM): when set, clients must present a certificate signed by it.
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// Is TLS on (validation guarantees `cert`, `key` and `ca` are then all set)?
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// Where a peer is reached: `ip:port`, `[ipv6]:port` or `host:port` (a DNS name, such as
/// a Kubernetes pod's stable name `leasehold-0.leasehold-peers:7170`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddress {
    host: String,
    port: u16,
}

impl PeerAddress {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl From<SocketAddr> for PeerAddress {
    fn from(addr: SocketAddr) -> Self {
        PeerAddress {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl FromStr for PeerAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let shape = || format!("expected <ip:port> or <host:port>, got {s:?}");
        let (host, port) = s.rsplit_once(':').ok_or_else(shape)?;
        let port: u16 = port.parse().map_err(|_| shape())?;
        // A DNS name: labels of letters, digits and hyphens, at most 253 characters.
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            return Err(shape());
        }
        Ok(PeerAddress {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl std::fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for PeerAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One member of the initial cluster, written `"<id>=<host:port>"` in the file, env and
/// flags (an IP or a DNS name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub peer_addr: PeerAddress,
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
            .map_err(|e| format!("member address: {e}"))?;
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

impl Default for Config {
    /// A single in-memory node: `node_id` 1 on `127.0.0.1:7070` (HTTP) and
    /// `127.0.0.1:7170` (Raft), no `data_dir`, no members — so it bootstraps itself as a
    /// one-member cluster and is ready at once.
    fn default() -> Self {
        Config {
            node_id: 1,
            client_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 7170)),
            advertise_peer_addr: None,
            advertise_client_addr: None,
            data_dir: None,
            cluster: ClusterConfig::default(),
            raft: RaftConfig::default(),
            limits: Limits::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Config {
    /// The peer address this node gives the others: `advertise_peer_addr`, else where it
    /// listens (`bound`, the actual address once bound).
    pub fn advertised_peer_addr(&self, bound: SocketAddr) -> String {
        match &self.advertise_peer_addr {
            Some(a) => a.to_string(),
            None => bound.to_string(),
        }
    }

    /// The client address this node gives out: `advertise_client_addr`, else `bound`.
    pub fn advertised_client_addr(&self, bound: SocketAddr) -> String {
        match &self.advertise_client_addr {
            Some(a) => a.to_string(),
            None => bound.to_string(),
        }
    }

    /// A single in-memory node on the default addresses (the `leasehold serve` default);
    /// the same as [`Config::default`].
    pub fn in_memory() -> Self {
        Config::default()
    }

    /// A single in-memory node on the given addresses (port 0 takes any free port).
    pub fn in_memory_on(client_addr: SocketAddr, peer_addr: SocketAddr) -> Self {
        Config {
            client_addr,
            peer_addr,
            ..Config::default()
        }
    }

    /// The leader heartbeat period.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.raft.heartbeat_interval_ms)
    }

    /// The longest election timeout (`raft.election_timeout_max_ms`). It is the upper
    /// bound that matters to callers: how long a leader may go without a quorum before it
    /// refuses writes, and the failover term in the lease-expiry bound (SPEC §2).
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.raft.election_timeout_max_ms)
    }

    /// The config as a TOML file that [`Config::load`] reads back to an equal config (for
    /// `leasehold local-cluster` and docs). Fails only on a path TOML cannot hold (one
    /// that is not UTF-8), naming its key.
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        self.check_paths_are_utf8()?;
        toml::to_string_pretty(self)
            .map_err(|e| invalid("config", format!("cannot be written as TOML: {e}")))
    }

    /// Every optional path with its dotted key, for rules that apply to all of them.
    pub(crate) fn paths(&self) -> [(&'static str, Option<&Path>); 7] {
        [
            ("data_dir", self.data_dir.as_deref()),
            ("cluster.secret_file", self.cluster.secret_file.as_deref()),
            ("auth.tokens_file", self.auth.tokens_file.as_deref()),
            ("tls.cert", self.tls.cert.as_deref()),
            ("tls.key", self.tls.key.as_deref()),
            ("tls.ca", self.tls.ca.as_deref()),
            ("tls.client_ca", self.tls.client_ca.as_deref()),
        ]
    }

    /// TOML strings are UTF-8, so a path that is not cannot be written to a file.
    pub(crate) fn check_paths_are_utf8(&self) -> Result<(), ConfigError> {
        for (key, path) in self.paths() {
            if let Some(path) = path {
                if path.to_str().is_none() {
                    return Err(invalid(
                        key,
                        format!("must be valid UTF-8, got {}", path.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a_single_in_memory_node() {
        let c = Config::default();
        assert_eq!(c, Config::in_memory());
        assert_eq!(c.node_id, 1);
        assert_eq!(c.client_addr.to_string(), "127.0.0.1:7070");
        assert_eq!(c.peer_addr.to_string(), "127.0.0.1:7170");
        assert!(c.data_dir.is_none());
        assert!(c.cluster.members.is_empty());
        c.validate().unwrap();
    }

    #[test]
    fn in_memory_on_takes_the_addresses() {
        let client = SocketAddr::from(([127, 0, 0, 1], 0));
        let peer = SocketAddr::from(([127, 0, 0, 2], 0));
        let c = Config::in_memory_on(client, peer);
        assert_eq!((c.client_addr, c.peer_addr), (client, peer));
        c.validate().unwrap();
    }

    #[test]
    fn durations() {
        let c = Config::default();
        assert_eq!(c.heartbeat_interval(), Duration::from_millis(50));
        assert_eq!(c.election_timeout(), Duration::from_millis(400));
        assert_eq!(c.limits.request_timeout(), Duration::from_secs(10));
    }

    #[test]
    fn members_parse_and_print() {
        let m: Member = " 2 = 127.0.0.1:7102 ".parse().unwrap();
        assert_eq!(m.id, 2);
        assert_eq!(m.to_string(), "2=127.0.0.1:7102");
        assert!("2:127.0.0.1:7102"
            .parse::<Member>()
            .unwrap_err()
            .contains("<id>=<host:port>"));
        assert!("x=127.0.0.1:7102"
            .parse::<Member>()
            .unwrap_err()
            .contains("member id"));
        assert!("2=localhost"
            .parse::<Member>()
            .unwrap_err()
            .contains("<ip:port>"));
    }

    #[test]
    fn to_toml_string_round_trips() {
        let mut c = Config {
            data_dir: Some("/var/lib/leasehold/1".into()),
            ..Config::default()
        };
        c.cluster.members = vec!["1=127.0.0.1:7170".parse().unwrap()];
        c.limits.max_waiters_per_key = 7;
        let text = c.to_toml_string().unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[cfg(unix)]
    #[test]
    fn to_toml_string_names_a_path_that_is_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let mut c = Config::default();
        c.tls.key = Some(PathBuf::from(std::ffi::OsStr::from_bytes(b"/k\xff")));
        match c.to_toml_string() {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "tls.key"),
            other => panic!("expected an invalid tls.key, got {other:?}"),
        }
    }
}
