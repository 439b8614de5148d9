//! The rules a configuration must meet before a node starts with it.
//!
//! Each error names the key (dotted) and states the rule with the values involved:
//! `raft.election_timeout_min_ms: must be greater than 2 × raft.heartbeat_interval_ms
//! (2 × 150 = 300), got 250`. The first broken rule is reported.

use crate::error::{invalid, ConfigError};
use crate::types::{Config, Limits, RaftConfig};

/// Longest key a config may allow: keys are held in memory, in every log entry that
/// names them and in every history record.
const MAX_KEY_BYTES_CEILING: usize = 4096;
/// Largest value a config may allow: values are replicated in Raft log entries, and a
/// multi-megabyte entry stalls heartbeats behind it.
const MAX_VALUE_BYTES_CEILING: usize = 16 * 1024 * 1024;
/// Room in a request body for everything besides the value (key, owner, JSON syntax).
const BODY_OVERHEAD_BYTES: usize = 4096;
/// Shortest TTL a config may allow: below it, a keepalive (a request plus a quorum round
/// on the leader) cannot be relied on to fit in the third of the TTL clients renew at.
const MIN_TTL_FLOOR_MS: u64 = 100;

impl Config {
    /// Check every rule; the error names the key and the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be greater than 0"));
        }
        // Port 0 asks the OS for any free port when binding, so two port-0 addresses do not
        // collide and cannot be compared with anything before binding.
        if self.client_addr == self.peer_addr && self.client_addr.port() != 0 {
            return Err(invalid(
                "peer_addr",
                format!(
                    "must differ from client_addr, both are {}",
                    self.client_addr
                ),
            ));
        }
        for (key, path) in self.paths() {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(
                    key,
                    "must not be empty (leave the key out instead)",
                ));
            }
        }
        self.check_paths_are_utf8()?;
        validate_raft(&self.raft)?;
        validate_limits(&self.limits)?;
        self.validate_members()?;
        let tls = &self.tls;
        let any =
            tls.cert.is_some() || tls.key.is_some() || tls.ca.is_some() || tls.client_ca.is_some();
        if any {
            for (key, value) in [
                ("tls.cert", &tls.cert),
                ("tls.key", &tls.key),
                ("tls.ca", &tls.ca),
            ] {
                if value.is_none() {
                    return Err(invalid(
                        key,
                        "must be set when any tls key is set (tls.cert, tls.key and tls.ca go together)",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_members(&self) -> Result<(), ConfigError> {
        const KEY: &str = "cluster.members";
        let members = &self.cluster.members;
        for (i, m) in members.iter().enumerate() {
            if m.id == 0 {
                return Err(invalid(
                    KEY,
                    format!("member ids must be greater than 0, got {m}"),
                ));
            }
            if let Some(other) = members[..i].iter().find(|o| o.id == m.id) {
                return Err(invalid(
                    KEY,
                    format!("member id {} appears twice ({other} and {m})", m.id),
                ));
            }
            if let Some(other) = members[..i].iter().find(|o| o.peer_addr == m.peer_addr) {
                return Err(invalid(
                    KEY,
                    format!("members {other} and {m} have the same address"),
                ));
            }
        }
        if members.is_empty() {
            // A lone node: it bootstraps a cluster of one, itself.
            return Ok(());
        }
        let Some(me) = members.iter().find(|m| m.id == self.node_id) else {
            return Err(invalid(
                KEY,
                format!("must list this node (node_id = {})", self.node_id),
            ));
        };
        // The other members reach this node at its entry's address: it must be the
        // address this node advertises, or else where it listens (unless the port is left
        // to the OS, see above).
        match &self.advertise_peer_addr {
            Some(advertised) if *advertised != me.peer_addr => Err(invalid(
                "advertise_peer_addr",
                format!(
                    "must equal this node's address in cluster.members ({me}), got {advertised}"
                ),
            )),
            Some(_) => Ok(()),
            None if self.peer_addr.ip().is_unspecified() => Err(invalid(
                "peer_addr",
                format!(
                    "{} listens on every interface, so the other members cannot be told where \
                     to reach it: set advertise_peer_addr to this node's entry in \
                     cluster.members ({me})",
                    self.peer_addr
                ),
            )),
            None if me.peer_addr != self.peer_addr.into() && self.peer_addr.port() != 0 => {
                Err(invalid(
                    "peer_addr",
                    format!(
                        "must equal this node's address in cluster.members ({me}), got {} \
                         (or set advertise_peer_addr to it, if this node is reached by another \
                         name or address)",
                        self.peer_addr
                    ),
                ))
            }
            None => Ok(()),
        }
    }
}

/// Longest keepalive batching window.
const MAX_KEEPALIVE_WINDOW_MS: u64 = 100;
/// 64 GiB: a typo guard, not a recommendation.
const MAX_LOG_CACHE_MIB: u64 = 65_536;
/// The bounds of `raft.peer_frame_bytes` (the upper one is what a peer accepts).
const MIN_PEER_FRAME_BYTES: usize = 1024;
const MAX_PEER_FRAME_BYTES: usize = 16 * 1024 * 1024;

fn validate_raft(r: &RaftConfig) -> Result<(), ConfigError> {
    if r.heartbeat_interval_ms == 0 {
        return Err(invalid(
            "raft.heartbeat_interval_ms",
            "must be greater than 0",
        ));
    }
    // Followers must be able to miss one heartbeat without starting an election.
    let two_heartbeats = r.heartbeat_interval_ms.saturating_mul(2);
    if r.election_timeout_min_ms <= two_heartbeats {
        return Err(invalid(
            "raft.election_timeout_min_ms",
            format!(
                "must be greater than 2 × raft.heartbeat_interval_ms (2 × {} = {two_heartbeats}), got {}",
                r.heartbeat_interval_ms, r.election_timeout_min_ms
            ),
        ));
    }
    // An empty range would remove the randomization that breaks split votes.
    if r.election_timeout_max_ms <= r.election_timeout_min_ms {
        return Err(invalid(
            "raft.election_timeout_max_ms",
            format!(
                "must be greater than raft.election_timeout_min_ms ({}), got {}",
                r.election_timeout_min_ms, r.election_timeout_max_ms
            ),
        ));
    }
    // A proposal in flight during a failover must be able to outlive one election.
    if r.proposal_timeout_ms < r.election_timeout_max_ms {
        return Err(invalid(
            "raft.proposal_timeout_ms",
            format!(
                "must be at least raft.election_timeout_max_ms ({}), got {}",
                r.election_timeout_max_ms, r.proposal_timeout_ms
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
    // A keepalive may wait up to two windows (its node's, then the leader's round): keep
    // that far below any TTL and the client's renewal margin.
    if r.keepalive_window_ms > MAX_KEEPALIVE_WINDOW_MS {
        return Err(invalid(
            "raft.keepalive_window_ms",
            format!(
                "must be at most {MAX_KEEPALIVE_WINDOW_MS}, got {}",
                r.keepalive_window_ms
            ),
        ));
    }
    if r.log_cache_mib == 0 || r.log_cache_mib > MAX_LOG_CACHE_MIB {
        return Err(invalid(
            "raft.log_cache_mib",
            format!(
                "must be between 1 and {MAX_LOG_CACHE_MIB}, got {}",
                r.log_cache_mib
            ),
        ));
    }
    if !(MIN_PEER_FRAME_BYTES..=MAX_PEER_FRAME_BYTES).contains(&r.peer_frame_bytes) {
        return Err(invalid(
            "raft.peer_frame_bytes",
            format!(
                "must be between {MIN_PEER_FRAME_BYTES} and {MAX_PEER_FRAME_BYTES}, got {}",
                r.peer_frame_bytes
            ),
        ));
    }
    Ok(())
}

fn validate_limits(l: &Limits) -> Result<(), ConfigError> {
    if l.max_key_bytes == 0 || l.max_key_bytes > MAX_KEY_BYTES_CEILING {
        return Err(invalid(
            "limits.max_key_bytes",
            format!(
                "must be from 1 to {MAX_KEY_BYTES_CEILING}, got {}",
                l.max_key_bytes
            ),
        ));
    }
    if l.max_value_bytes == 0 || l.max_value_bytes > MAX_VALUE_BYTES_CEILING {
        return Err(invalid(
            "limits.max_value_bytes",
            format!(
                "must be from 1 to {MAX_VALUE_BYTES_CEILING} (16 MiB), got {}",
                l.max_value_bytes
            ),
        ));
    }
    let body_needed = l.max_value_bytes + BODY_OVERHEAD_BYTES;
    if l.max_body_bytes < body_needed {
        return Err(invalid(
            "limits.max_body_bytes",
            format!(
                "must be at least limits.max_value_bytes + {BODY_OVERHEAD_BYTES} ({body_needed}) \
                 so a request with a maximal value fits, got {}",
                l.max_body_bytes
            ),
        ));
    }
    if l.min_ttl_ms < MIN_TTL_FLOOR_MS {
        return Err(invalid(
            "limits.min_ttl_ms",
            format!("must be at least {MIN_TTL_FLOOR_MS}, got {}", l.min_ttl_ms),
        ));
    }
    if l.max_ttl_ms < l.min_ttl_ms {
        return Err(invalid(
            "limits.max_ttl_ms",
            format!(
                "must be at least limits.min_ttl_ms ({}), got {}",
                l.min_ttl_ms, l.max_ttl_ms
            ),
        ));
    }
    for (key, value) in [
        ("limits.max_wait_ms", l.max_wait_ms),
        ("limits.max_leases", l.max_leases),
        (
            "limits.max_waiters_per_key",
            u64::from(l.max_waiters_per_key),
        ),
        ("limits.max_list_limit", l.max_list_limit as u64),
        ("limits.request_timeout_ms", l.request_timeout_ms),
        ("limits.max_connections", l.max_connections as u64),
        (
            "limits.max_connections_per_address",
            l.max_connections_per_address as u64,
        ),
        (
            "limits.max_requests_in_flight",
            l.max_requests_in_flight as u64,
        ),
        ("limits.max_long_polls", l.max_long_polls as u64),
    ] {
        if value == 0 {
            return Err(invalid(key, "must be greater than 0"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use super::*;
    use crate::Member;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn member(s: &str) -> Member {
        s.parse().unwrap()
    }

    /// A valid three-node config for node 1 to break one rule at a time.
    fn three_nodes() -> Config {
        let mut c = Config {
            node_id: 1,
            client_addr: addr("127.0.0.1:7001"),
            peer_addr: addr("127.0.0.1:7101"),
            ..Config::default()
        };
        c.cluster.members = vec![
            member("1=127.0.0.1:7101"),
            member("2=127.0.0.1:7102"),
            member("3=127.0.0.1:7103"),
        ];
        c
    }

    #[test]
    fn members_may_be_host_names_reached_through_an_advertised_address() {
        // A StatefulSet pod: binds every interface, advertises its stable name.
        let mut c = three_nodes();
        c.peer_addr = addr("0.0.0.0:7170");
        c.cluster.members = vec![
            member("1=leasehold-0.peers.ns.svc:7170"),
            member("2=leasehold-1.peers.ns.svc:7170"),
            member("3=leasehold-2.peers.ns.svc:7170"),
        ];
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("peer_addr") && err.contains("advertise_peer_addr"),
            "{err}"
        );
        c.advertise_peer_addr = Some("leasehold-0.peers.ns.svc:7170".parse().unwrap());
        c.validate().unwrap();
        c.advertise_peer_addr = Some("leasehold-1.peers.ns.svc:7170".parse().unwrap());
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("advertise_peer_addr") && err.contains("1=leasehold-0.peers.ns.svc:7170"),
            "{err}"
        );
        // Names are checked for their shape, and compared case-insensitively.
        for bad in [
            "1=-bad.host:1",
            "1=host_name:1",
            "1=:7170",
            "1=host:99999",
            "1=a..b:1",
        ] {
            assert!(bad.parse::<Member>().is_err(), "{bad}");
        }
        assert_eq!(
            member("1=Node-1.Example:7170"),
            member("1=node-1.example:7170")
        );
        assert_eq!(member("1=[::1]:7170").to_string(), "1=[::1]:7170");
    }

    #[test]
    fn the_starting_points_are_valid() {
        three_nodes().validate().unwrap();
        Config::default().validate().unwrap();
    }

    /// Each case breaks exactly one rule of a valid config; without that rule the config
    /// would pass, so each rule is needed for its case to fail.
    #[test]
    fn every_rule_names_its_key_and_states_the_rule() {
        type Case = (&'static str, fn(&mut Config), &'static str, &'static str);
        let cases: &[Case] = &[
            ("node id 0", |c| c.node_id = 0, "node_id", "greater than 0"),
            (
                "client and peer on one address",
                |c| c.client_addr = c.peer_addr,
                "peer_addr",
                "must differ from client_addr, both are 127.0.0.1:7101",
            ),
            (
                "empty data_dir",
                |c| c.data_dir = Some(PathBuf::new()),
                "data_dir",
                "must not be empty",
            ),
            (
                "empty tokens file",
                |c| c.auth.tokens_file = Some(PathBuf::new()),
                "auth.tokens_file",
                "must not be empty",
            ),
            (
                "heartbeat 0",
                |c| c.raft.heartbeat_interval_ms = 0,
                "raft.heartbeat_interval_ms",
                "greater than 0",
            ),
            (
                "election timeout within two heartbeats",
                |c| c.raft.heartbeat_interval_ms = 150,
                "raft.election_timeout_min_ms",
                "must be greater than 2 × raft.heartbeat_interval_ms (2 × 150 = 300), got 250",
            ),
            (
                "empty election range",
                |c| c.raft.election_timeout_max_ms = 250,
                "raft.election_timeout_max_ms",
                "must be greater than raft.election_timeout_min_ms (250), got 250",
            ),
            (
                "proposal shorter than an election",
                |c| c.raft.proposal_timeout_ms = 399,
                "raft.proposal_timeout_ms",
                "at least raft.election_timeout_max_ms (400), got 399",
            ),
            (
                "no batch",
                |c| c.raft.max_batch = 0,
                "raft.max_batch",
                "greater than 0",
            ),
            (
                "never snapshot",
                |c| c.raft.snapshot_every_logs = 0,
                "raft.snapshot_every_logs",
                "greater than 0",
            ),
            (
                "no log cache",
                |c| c.raft.log_cache_mib = 0,
                "raft.log_cache_mib",
                "between 1 and 65536, got 0",
            ),
            (
                "tiny peer frames",
                |c| c.raft.peer_frame_bytes = 100,
                "raft.peer_frame_bytes",
                "between 1024 and 16777216, got 100",
            ),
            (
                "keepalive window too long",
                |c| c.raft.keepalive_window_ms = 101,
                "raft.keepalive_window_ms",
                "must be at most 100, got 101",
            ),
            (
                "empty keys",
                |c| c.limits.max_key_bytes = 0,
                "limits.max_key_bytes",
                "from 1 to 4096, got 0",
            ),
            (
                "huge keys",
                |c| c.limits.max_key_bytes = 4097,
                "limits.max_key_bytes",
                "from 1 to 4096, got 4097",
            ),
            (
                "no values",
                |c| c.limits.max_value_bytes = 0,
                "limits.max_value_bytes",
                "from 1 to 16777216 (16 MiB), got 0",
            ),
            (
                "huge values",
                |c| {
                    c.limits.max_value_bytes = 16 * 1024 * 1024 + 1;
                    c.limits.max_body_bytes = 32 * 1024 * 1024;
                },
                "limits.max_value_bytes",
                "got 16777217",
            ),
            (
                "body too small for a value",
                |c| c.limits.max_body_bytes = 65_536 + 4095,
                "limits.max_body_bytes",
                "at least limits.max_value_bytes + 4096 (69632)",
            ),
            (
                "tiny ttl",
                |c| c.limits.min_ttl_ms = 99,
                "limits.min_ttl_ms",
                "at least 100, got 99",
            ),
            (
                "ttl range upside down",
                |c| c.limits.max_ttl_ms = 499,
                "limits.max_ttl_ms",
                "at least limits.min_ttl_ms (500), got 499",
            ),
            (
                "no waiting",
                |c| c.limits.max_wait_ms = 0,
                "limits.max_wait_ms",
                "greater than 0",
            ),
            (
                "no leases",
                |c| c.limits.max_leases = 0,
                "limits.max_leases",
                "greater than 0",
            ),
            (
                "no waiters",
                |c| c.limits.max_waiters_per_key = 0,
                "limits.max_waiters_per_key",
                "greater than 0",
            ),
            (
                "empty pages",
                |c| c.limits.max_list_limit = 0,
                "limits.max_list_limit",
                "greater than 0",
            ),
            (
                "no time for requests",
                |c| c.limits.request_timeout_ms = 0,
                "limits.request_timeout_ms",
                "greater than 0",
            ),
            (
                "member id 0",
                |c| c.cluster.members.push(member("0=127.0.0.1:7100")),
                "cluster.members",
                "member ids must be greater than 0, got 0=127.0.0.1:7100",
            ),
            (
                "member id twice",
                |c| c.cluster.members[2] = member("2=127.0.0.1:7103"),
                "cluster.members",
                "member id 2 appears twice (2=127.0.0.1:7102 and 2=127.0.0.1:7103)",
            ),
            (
                "member address twice",
                |c| c.cluster.members[2] = member("3=127.0.0.1:7102"),
                "cluster.members",
                "members 2=127.0.0.1:7102 and 3=127.0.0.1:7102 have the same address",
            ),
            (
                "this node not a member",
                |c| c.node_id = 4,
                "cluster.members",
                "must list this node (node_id = 4)",
            ),
            (
                "this node listed elsewhere",
                |c| c.peer_addr = addr("127.0.0.1:7199"),
                "peer_addr",
                "must equal this node's address in cluster.members (1=127.0.0.1:7101), got 127.0.0.1:7199",
            ),
            (
                "cert without key",
                |c| c.tls.cert = Some("/c.pem".into()),
                "tls.key",
                "must be set when any tls key is set (tls.cert, tls.key and tls.ca go together)",
            ),
            (
                "key without cert",
                |c| c.tls.key = Some("/k.pem".into()),
                "tls.cert",
                "must be set when any tls key is set (tls.cert, tls.key and tls.ca go together)",
            ),
            (
                "cert and key without a ca",
                |c| {
                    c.tls.cert = Some("/c.pem".into());
                    c.tls.key = Some("/k.pem".into());
                },
                "tls.ca",
                "must be set when any tls key is set (tls.cert, tls.key and tls.ca go together)",
            ),
            (
                "a client ca alone",
                |c| c.tls.client_ca = Some("/cca.pem".into()),
                "tls.cert",
                "must be set when any tls key is set (tls.cert, tls.key and tls.ca go together)",
            ),
        ];
        for (name, break_it, want_key, want_rule) in cases {
            let mut c = three_nodes();
            break_it(&mut c);
            match c.validate() {
                Err(ConfigError::Invalid { key, message }) => {
                    assert_eq!(&key, want_key, "{name}: {message}");
                    assert!(message.contains(want_rule), "{name}: {message}");
                }
                other => panic!("{name}: expected an invalid {want_key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_message_reads_key_then_rule() {
        let mut c = Config::default();
        c.raft.heartbeat_interval_ms = 150;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "raft.election_timeout_min_ms: must be greater than 2 × \
             raft.heartbeat_interval_ms (2 × 150 = 300), got 250"
        );
    }

    #[cfg(unix)]
    #[test]
    fn paths_must_be_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let c = Config {
            data_dir: Some(PathBuf::from(std::ffi::OsStr::from_bytes(b"/d\xff"))),
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { key, .. }) if key == "data_dir"));
    }

    #[test]
    fn port_zero_is_exempt_from_address_comparisons() {
        // Tests bind port 0 and learn the real port only after binding.
        let mut c = Config::in_memory_on(addr("127.0.0.1:0"), addr("127.0.0.1:0"));
        c.validate().unwrap();
        c.cluster.members = vec![member("1=127.0.0.1:7101")];
        c.validate().unwrap();
    }

    #[test]
    fn a_lone_node_needs_no_members_and_other_limits_are_free() {
        let mut c = three_nodes();
        c.cluster.members.clear();
        c.limits.max_key_bytes = 4096;
        c.limits.max_value_bytes = 16 * 1024 * 1024;
        c.limits.max_body_bytes = 16 * 1024 * 1024 + 4096;
        c.limits.min_ttl_ms = 100;
        c.limits.max_ttl_ms = 100;
        c.raft.heartbeat_interval_ms = 10;
        c.raft.election_timeout_min_ms = 21;
        c.raft.election_timeout_max_ms = 22;
        c.raft.proposal_timeout_ms = 22;
        c.validate().unwrap();
    }
}
