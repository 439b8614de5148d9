//! Every setting's names outside the file (env var, flag), and how a string from there
//! becomes a TOML value at its key.
//!
//! [`KEYS`] is the single list: the binary makes one flag per entry, [`crate::Config::load`]
//! looks env vars and flags up in it, and a test checks that it covers every field of
//! [`crate::Config`] with the right names and defaults.

/// How a key's value is written in env vars and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A non-negative integer no larger than `max` (the field's type bound).
    Integer { max: u64 },
    /// `ip:port`.
    Address,
    /// `ip:port` or `host:port`.
    HostPort,
    /// A non-empty path.
    Path,
    /// A comma-separated `id=host:port` list; an empty string is the empty list.
    Members,
    /// One of these words.
    Choice(&'static [&'static str]),
}

impl ValueKind {
    /// A placeholder for help text, e.g. `--limits-max-key-bytes <N>`.
    pub fn placeholder(self) -> &'static str {
        match self {
            ValueKind::Integer { .. } => "N",
            ValueKind::Address => "IP:PORT",
            ValueKind::HostPort => "HOST:PORT",
            ValueKind::Path => "PATH",
            ValueKind::Members => "ID=HOST:PORT,...",
            ValueKind::Choice(_) => "WORD",
        }
    }
}

/// One setting: its dotted key, env var, flag, one-line help and default.
#[derive(Debug, Clone, Copy)]
pub struct KeyInfo {
    /// The dotted key, as in the file: `limits.max_key_bytes`.
    pub key: &'static str,
    /// `LEASEHOLD_` + the key in upper case with `_` for `.`: `LEASEHOLD_LIMITS_MAX_KEY_BYTES`.
    pub env: &'static str,
    /// `--` + the key with `-` for `.` and `_`: `--limits-max-key-bytes`.
    pub flag: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
    /// The default as a user would write it, or a parenthesized description when unset:
    /// `512`, `(in-memory)`.
    pub default: &'static str,
    pub kind: ValueKind,
}

// TOML integers are i64, so that is the most any key can hold whatever its Rust type.
const U64: ValueKind = ValueKind::Integer {
    max: i64::MAX as u64,
};
const USIZE: ValueKind = ValueKind::Integer {
    max: if (usize::MAX as u64) < (i64::MAX as u64) {
        usize::MAX as u64
    } else {
        i64::MAX as u64
    },
};
const U32: ValueKind = ValueKind::Integer {
    max: u32::MAX as u64,
};
const ADDRESS: ValueKind = ValueKind::Address;
const HOST_PORT: ValueKind = ValueKind::HostPort;
const PATH: ValueKind = ValueKind::Path;
const MEMBERS: ValueKind = ValueKind::Members;
const LOG_FORMAT: ValueKind = ValueKind::Choice(&["text", "json"]);
const LEADERSHIP_PROOF: ValueKind = ValueKind::Choice(&["lease", "round"]);

macro_rules! keys {
    ($( $key:literal, $env:literal, $flag:literal, $kind:ident, $default:literal, $help:literal; )*) => {
        /// Every setting, in file order.
        pub const KEYS: &[KeyInfo] = &[
            $( KeyInfo { key: $key, env: $env, flag: $flag, help: $help, default: $default, kind: $kind }, )*
        ];
    };
}

keys! {
    "node_id", "LEASEHOLD_NODE_ID", "--node-id", U64, "1", "this node's id in the cluster (> 0)";
    "client_addr", "LEASEHOLD_CLIENT_ADDR", "--client-addr", ADDRESS, "127.0.0.1:7070", "HTTP API listen address";
    "peer_addr", "LEASEHOLD_PEER_ADDR", "--peer-addr", ADDRESS, "127.0.0.1:7170", "Raft peer listen address";
    "advertise_peer_addr", "LEASEHOLD_ADVERTISE_PEER_ADDR", "--advertise-peer-addr", HOST_PORT, "(peer_addr)", "where the other members reach this node (its cluster.members entry), when not peer_addr";
    "advertise_client_addr", "LEASEHOLD_ADVERTISE_CLIENT_ADDR", "--advertise-client-addr", HOST_PORT, "(client_addr)", "the client address this node gives out, when not client_addr";
    "data_dir", "LEASEHOLD_DATA_DIR", "--data-dir", PATH, "(in-memory)", "directory for the durable Raft log; omit for in-memory";
    "cluster.members", "LEASEHOLD_CLUSTER_MEMBERS", "--cluster-members", MEMBERS, "(lone node)", "initial members as id=host:port,... (bootstrap only; empty: a cluster of one)";
    "cluster.secret_file", "LEASEHOLD_CLUSTER_SECRET_FILE", "--cluster-secret-file", PATH, "(none)", "file with the secret that authenticates peer traffic";
    "cluster.peer_proxy", "LEASEHOLD_CLUSTER_PEER_PROXY", "--cluster-peer-proxy", ADDRESS, "(none)", "HTTP forward proxy (ip:port) for outgoing peer traffic";
    "raft.heartbeat_interval_ms", "LEASEHOLD_RAFT_HEARTBEAT_INTERVAL_MS", "--raft-heartbeat-interval-ms", U64, "50", "leader heartbeat period";
    "raft.election_timeout_min_ms", "LEASEHOLD_RAFT_ELECTION_TIMEOUT_MIN_MS", "--raft-election-timeout-min-ms", U64, "250", "lower bound of the randomized election timeout";
    "raft.election_timeout_max_ms", "LEASEHOLD_RAFT_ELECTION_TIMEOUT_MAX_MS", "--raft-election-timeout-max-ms", U64, "400", "upper bound of the randomized election timeout";
    "raft.proposal_timeout_ms", "LEASEHOLD_RAFT_PROPOSAL_TIMEOUT_MS", "--raft-proposal-timeout-ms", U64, "5000", "deadline of one proposal";
    "raft.max_batch", "LEASEHOLD_RAFT_MAX_BATCH", "--raft-max-batch", USIZE, "512", "most commands in one log entry";
    "raft.snapshot_every_logs", "LEASEHOLD_RAFT_SNAPSHOT_EVERY_LOGS", "--raft-snapshot-every-logs", U64, "10000", "snapshot and purge after this many entries";
    "raft.keepalive_window_ms", "LEASEHOLD_RAFT_KEEPALIVE_WINDOW_MS", "--raft-keepalive-window-ms", U64, "0", "keepalives forwarded and leadership rounds run at most once per window (0: adaptive, no wait)";
    "raft.leadership_proof", "LEASEHOLD_RAFT_LEADERSHIP_PROOF", "--raft-leadership-proof", LEADERSHIP_PROOF, "lease", "how the leader proves it leads for keepalives and reads: lease (no round while a quorum acknowledged it within election_timeout_min less 1 %) or round";
    "raft.log_cache_mib", "LEASEHOLD_RAFT_LOG_CACHE_MIB", "--raft-log-cache-mib", U64, "64", "memory for caching the durable log's pages (sled), in MiB";
    "raft.peer_frame_bytes", "LEASEHOLD_RAFT_PEER_FRAME_BYTES", "--raft-peer-frame-bytes", USIZE, "65536", "largest frame on a peer stream; a longer message is cut up and sent in turn with the others, so a keepalive waits behind at most one frame";
    "limits.max_key_bytes", "LEASEHOLD_LIMITS_MAX_KEY_BYTES", "--limits-max-key-bytes", USIZE, "512", "longest key or name";
    "limits.max_value_bytes", "LEASEHOLD_LIMITS_MAX_VALUE_BYTES", "--limits-max-value-bytes", USIZE, "65536", "largest value";
    "limits.max_body_bytes", "LEASEHOLD_LIMITS_MAX_BODY_BYTES", "--limits-max-body-bytes", USIZE, "131072", "largest request body";
    "limits.min_ttl_ms", "LEASEHOLD_LIMITS_MIN_TTL_MS", "--limits-min-ttl-ms", U64, "500", "shortest lease TTL";
    "limits.max_ttl_ms", "LEASEHOLD_LIMITS_MAX_TTL_MS", "--limits-max-ttl-ms", U64, "86400000", "longest lease TTL";
    "limits.max_wait_ms", "LEASEHOLD_LIMITS_MAX_WAIT_MS", "--limits-max-wait-ms", U64, "300000", "longest blocking wait";
    "limits.max_leases", "LEASEHOLD_LIMITS_MAX_LEASES", "--limits-max-leases", U64, "1000000", "most live leases in the cluster";
    "limits.max_waiters_per_key", "LEASEHOLD_LIMITS_MAX_WAITERS_PER_KEY", "--limits-max-waiters-per-key", U32, "10000", "longest wait queue of one key";
    "limits.max_list_limit", "LEASEHOLD_LIMITS_MAX_LIST_LIMIT", "--limits-max-list-limit", USIZE, "1000", "largest page of a list";
    "limits.request_timeout_ms", "LEASEHOLD_LIMITS_REQUEST_TIMEOUT_MS", "--limits-request-timeout-ms", U64, "10000", "deadline of a request (plus wait_ms for long-polls)";
    "limits.max_connections", "LEASEHOLD_LIMITS_MAX_CONNECTIONS", "--limits-max-connections", USIZE, "4096", "most client connections open on a node (then 503, or closed under TLS)";
    "limits.max_connections_per_address", "LEASEHOLD_LIMITS_MAX_CONNECTIONS_PER_ADDRESS", "--limits-max-connections-per-address", USIZE, "1024", "most client connections from one IP address (then 429, or closed under TLS)";
    "limits.max_requests_in_flight", "LEASEHOLD_LIMITS_MAX_REQUESTS_IN_FLIGHT", "--limits-max-requests-in-flight", USIZE, "1024", "most client requests worked on at once on a node (new holds shed first, keepalives last; 503)";
    "limits.max_long_polls", "LEASEHOLD_LIMITS_MAX_LONG_POLLS", "--limits-max-long-polls", USIZE, "2048", "most blocking requests parked on a node (then 503)";
    "auth.tokens_file", "LEASEHOLD_AUTH_TOKENS_FILE", "--auth-tokens-file", PATH, "(none)", "bearer tokens and their key prefixes";
    "tls.cert", "LEASEHOLD_TLS_CERT", "--tls-cert", PATH, "(none)", "TLS certificate chain (PEM)";
    "tls.key", "LEASEHOLD_TLS_KEY", "--tls-key", PATH, "(none)", "TLS private key (PEM)";
    "tls.ca", "LEASEHOLD_TLS_CA", "--tls-ca", PATH, "(none)", "CA (PEM) that signs every node's certificate (mutual TLS between peers)";
    "tls.client_ca", "LEASEHOLD_TLS_CLIENT_CA", "--tls-client-ca", PATH, "(none)", "CA (PEM) that client certificates must be signed by (optional)";
    "log.format", "LEASEHOLD_LOG_FORMAT", "--log-format", LOG_FORMAT, "text", "log lines as text (for people) or json (one object per line, for log shippers)";
}

/// `LEASEHOLD_*` variables that are not settings but belong to the binary or the clients
/// (SPEC §4); [`crate::Config::load`] skips them instead of rejecting them as unknown.
pub const OTHER_ENV: &[&str] = &[
    "LEASEHOLD_ENDPOINTS",
    "LEASEHOLD_LOG",
    "LEASEHOLD_AUTH_TOKEN",
    "LEASEHOLD_CACERT",
    "LEASEHOLD_CLIENT_CERT",
    "LEASEHOLD_CLIENT_KEY",
    "LEASEHOLD_TOKEN",
];

impl KeyInfo {
    /// The setting with this dotted key.
    pub fn by_key(key: &str) -> Option<&'static KeyInfo> {
        KEYS.iter().find(|k| k.key == key)
    }

    /// The setting with this environment variable.
    pub fn by_env(var: &str) -> Option<&'static KeyInfo> {
        KEYS.iter().find(|k| k.env == var)
    }
}

/// Parse `value` (as written in env or on a flag) for `info` and put it at `info.key` in
/// `table`, replacing what was there. The error says what was expected and what was
/// given; the caller adds the key and where the value came from.
pub(crate) fn set(table: &mut toml::Table, info: &KeyInfo, value: &str) -> Result<(), String> {
    let parsed = parse(info.kind, value)?;
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
            .ok_or_else(|| format!("cannot be set because `{part}` in the file is not a table"))?;
    }
    Ok(())
}

fn parse(kind: ValueKind, value: &str) -> Result<toml::Value, String> {
    let trimmed = value.trim();
    Ok(match kind {
        ValueKind::Integer { max } => {
            let n = trimmed
                .parse::<u64>()
                .map_err(|_| format!("expected a non-negative integer, got {value:?}"))?;
            if n > max {
                return Err(format!("expected an integer at most {max}, got {value:?}"));
            }
            // `max` is at most i64::MAX (see the kind constants), so this cannot fail.
            toml::Value::Integer(i64::try_from(n).map_err(|e| e.to_string())?)
        }
        ValueKind::Address => {
            trimmed
                .parse::<std::net::SocketAddr>()
                .map_err(|_| format!("expected <ip:port>, got {value:?}"))?;
            toml::Value::String(trimmed.to_string())
        }
        ValueKind::HostPort => {
            let addr: crate::PeerAddress = trimmed.parse()?;
            toml::Value::String(addr.to_string())
        }
        ValueKind::Path => {
            // Paths are taken as given (they may legitimately contain spaces); only an
            // empty one is refused, as it is almost always an unset shell variable.
            if value.is_empty() {
                return Err("expected a path, got an empty value".into());
            }
            toml::Value::String(value.to_string())
        }
        ValueKind::Members => {
            let mut list = Vec::new();
            for part in trimmed.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let member: crate::Member = part.parse()?;
                list.push(toml::Value::String(member.to_string()));
            }
            toml::Value::Array(list)
        }
        ValueKind::Choice(words) => {
            if !words.contains(&trimmed) {
                return Err(format!(
                    "expected one of {}, got {value:?}",
                    words.join(", ")
                ));
            }
            toml::Value::String(trimmed.to_string())
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::Config;

    /// Every leaf of a TOML table as a dotted key.
    fn leaves(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
        for (name, value) in table {
            let key = format!("{prefix}{name}");
            match value {
                toml::Value::Table(t) => leaves(t, &format!("{key}."), out),
                _ => {
                    out.insert(key);
                }
            }
        }
    }

    #[test]
    fn keys_cover_every_field_once() {
        // Set every optional field so that serialization shows it.
        let mut c = Config {
            data_dir: Some("/d".into()),
            ..Config::default()
        };
        c.cluster.secret_file = Some("/s".into());
        c.cluster.peer_proxy = Some("127.0.0.1:1".parse().unwrap());
        c.advertise_peer_addr = Some("node-1.example:7170".parse().unwrap());
        c.advertise_client_addr = Some("node-1.example:7070".parse().unwrap());
        c.auth.tokens_file = Some("/t".into());
        c.tls.cert = Some("/c".into());
        c.tls.key = Some("/k".into());
        c.tls.ca = Some("/ca".into());
        c.tls.client_ca = Some("/cca".into());
        let table = toml::Table::try_from(&c).unwrap();
        let mut fields = BTreeSet::new();
        leaves(&table, "", &mut fields);
        let keys: BTreeSet<String> = KEYS.iter().map(|k| k.key.to_string()).collect();
        assert_eq!(keys.len(), KEYS.len(), "a key is listed twice");
        assert_eq!(fields, keys);
    }

    #[test]
    fn env_and_flag_names_follow_the_key() {
        for k in KEYS {
            let env = format!("LEASEHOLD_{}", k.key.replace('.', "_").to_uppercase());
            let flag = format!("--{}", k.key.replace(['.', '_'], "-"));
            assert_eq!(k.env, env);
            assert_eq!(k.flag, flag);
            assert!(!k.help.is_empty());
            assert!(!OTHER_ENV.contains(&k.env));
        }
    }

    #[test]
    fn listed_defaults_are_the_real_defaults() {
        let mut table = toml::Table::new();
        for k in KEYS {
            if k.default.starts_with('(') {
                continue;
            }
            set(&mut table, k, k.default).unwrap_or_else(|e| panic!("{}: {e}", k.key));
        }
        let c: Config = toml::Value::Table(table).try_into().unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn every_kind_parses_its_placeholder_shape() {
        for k in KEYS {
            let value = match k.kind {
                ValueKind::Integer { .. } => "7",
                ValueKind::Address => " 127.0.0.1:9 ",
                ValueKind::HostPort => "leasehold-0.peers.example:7170",
                ValueKind::Path => "/tmp/x y",
                ValueKind::Members => "1=127.0.0.1:9, 2=node-2.example:10,",
                ValueKind::Choice(words) => words[words.len() - 1],
            };
            let mut table = toml::Table::new();
            set(&mut table, k, value).unwrap_or_else(|e| panic!("{}: {e}", k.key));
        }
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let info = |key| KeyInfo::by_key(key).unwrap();
        let mut t = toml::Table::new();
        let err = set(&mut t, info("limits.max_key_bytes"), "abc").unwrap_err();
        assert_eq!(err, "expected a non-negative integer, got \"abc\"");
        let err = set(&mut t, info("limits.max_key_bytes"), "-1").unwrap_err();
        assert!(err.contains("non-negative integer"), "{err}");
        let err = set(&mut t, info("limits.max_waiters_per_key"), "4294967296").unwrap_err();
        assert!(err.contains("at most 4294967295"), "{err}");
        let err = set(&mut t, info("node_id"), "9223372036854775808").unwrap_err();
        assert!(err.contains("at most 9223372036854775807"), "{err}");
        let err = set(&mut t, info("client_addr"), "localhost:80").unwrap_err();
        assert!(err.contains("<ip:port>"), "{err}");
        let err = set(&mut t, info("data_dir"), "").unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err = set(&mut t, info("cluster.members"), "1=127.0.0.1:1,2").unwrap_err();
        assert!(err.contains("<id>=<host:port>"), "{err}");
        let err = set(&mut t, info("advertise_peer_addr"), "bad_name:1").unwrap_err();
        assert!(err.contains("<host:port>"), "{err}");
    }

    #[test]
    fn empty_members_is_the_empty_list() {
        let mut t = toml::Table::new();
        set(&mut t, KeyInfo::by_key("cluster.members").unwrap(), "").unwrap();
        let c: Config = toml::Value::Table(t).try_into().unwrap();
        assert!(c.cluster.members.is_empty());
    }

    #[test]
    fn a_section_that_is_not_a_table_is_reported() {
        let mut t = toml::Table::new();
        t.insert("limits".into(), toml::Value::Integer(1));
        let err = set(
            &mut t,
            KeyInfo::by_key("limits.max_key_bytes").unwrap(),
            "1",
        )
        .unwrap_err();
        assert!(err.contains("`limits`"), "{err}");
    }
}
