//! Loading: defaults < file < environment < flags, then validation.
//!
//! The file is read as a TOML table; env vars and flags are parsed per their key's kind
//! and written into that table; the table is deserialized once (serde fills what is
//! missing with defaults) and the result validated. So every source goes through the
//! same `deny_unknown_fields` schema and the same rules.

use std::path::Path;

use serde::Deserialize;

use crate::error::{invalid, ConfigError};
use crate::keys::{set, KeyInfo, OTHER_ENV};
use crate::types::Config;

const ENV_PREFIX: &str = "LEASEHOLD_";

impl Config {
    /// Load from `file` (optional), then `env` (name, value pairs; pass
    /// `std::env::vars()` — only `LEASEHOLD_*` names are looked at), then `overrides`
    /// (dotted key, value; what the flags gave), each over the one before; then
    /// [`validate`](Config::validate).
    ///
    /// A `LEASEHOLD_*` variable that is neither a setting nor in [`OTHER_ENV`] is an
    /// error ([`ConfigError::UnknownEnv`]), so a misspelt setting is not silently ignored.
    /// A value that does not parse is [`ConfigError::Invalid`] naming the key and, in the
    /// message, the variable or flag it came from.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        for (var, value) in env {
            if !var.starts_with(ENV_PREFIX) || OTHER_ENV.contains(&var.as_str()) {
                continue;
            }
            let info = KeyInfo::by_env(&var).ok_or(ConfigError::UnknownEnv { var: var.clone() })?;
            set(&mut table, info, &value)
                .map_err(|message| invalid(info.key, format!("{message} (from {var})")))?;
        }
        for (key, value) in overrides {
            let info = KeyInfo::by_key(key).ok_or_else(|| {
                invalid(
                    key,
                    "is not a setting (the keys are listed in leasehold_config::KEYS)",
                )
            })?;
            set(&mut table, info, value)
                .map_err(|message| invalid(info.key, format!("{message} (from {})", info.flag)))?;
        }
        // The file alone has been checked against the schema and `set` only writes values
        // of the key's type and range, so this fails only if those two disagree.
        let config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                path: file.map_or("(no file)".into(), |p| p.display().to_string()),
                message: format!("with environment and flags applied: {}", e.message()),
            })?;
        config.validate()?;
        Ok(config)
    }
}

/// Read and parse the file, checking it against the schema on its own first so that an
/// unknown field or a wrong type is reported with its line and key.
fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let path_str = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
        path: path_str.clone(),
        message: e.to_string(),
    })?;
    let parse_error = |e: toml::de::Error| ConfigError::Parse {
        path: path_str.clone(),
        message: e.to_string(),
    };
    toml::from_str::<Config>(&text).map_err(parse_error)?;
    text.parse::<toml::Table>().map_err(parse_error)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;

    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_str(
        toml: &str,
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        Config::load(Some(file.path()), pairs(env), &pairs(flags))
    }

    /// The example of SPEC §5, with real paths in `[tls]`.
    const SPEC_EXAMPLE: &str = r#"
node_id = 1
client_addr = "127.0.0.1:7001"     # HTTP API
peer_addr = "127.0.0.1:7101"       # Raft traffic
data_dir = "/var/lib/leasehold/1"  # omit for in-memory

[cluster]                          # initial members; used only to bootstrap empty storage
members = ["1=127.0.0.1:7101", "2=127.0.0.1:7102", "3=127.0.0.1:7103"]
secret_file = "/etc/leasehold/secret"   # optional: authenticates peer traffic

[raft]                             # defaults aim at failover under 1 s on a LAN
heartbeat_interval_ms = 50
election_timeout_min_ms = 250
election_timeout_max_ms = 400

[limits]
max_key_bytes = 512
max_value_bytes = 65536
min_ttl_ms = 500
max_ttl_ms = 86400000
max_wait_ms = 300000
max_leases = 1000000
max_waiters_per_key = 10000

[auth]                             # optional
tokens_file = "/etc/leasehold/tokens.toml"   # token → allowed key prefixes

[tls]                              # optional, for client and peer listeners
cert = "/etc/leasehold/cert.pem"
key = "/etc/leasehold/key.pem"
ca = "/etc/leasehold/ca.crt"
client_ca = "/etc/leasehold/clients-ca.crt"
"#;

    #[test]
    fn no_sources_give_the_defaults() {
        assert_eq!(
            Config::load(None, Vec::new(), &[]).unwrap(),
            Config::default()
        );
        assert_eq!(load_str("", &[], &[]).unwrap(), Config::default());
    }

    #[test]
    fn the_spec_example_parses() {
        let c = load_str(SPEC_EXAMPLE, &[], &[]).unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.client_addr.to_string(), "127.0.0.1:7001");
        assert_eq!(c.peer_addr.to_string(), "127.0.0.1:7101");
        assert_eq!(c.data_dir, Some(PathBuf::from("/var/lib/leasehold/1")));
        let ids: Vec<u64> = c.cluster.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(c.cluster.members[2].peer_addr.to_string(), "127.0.0.1:7103");
        assert_eq!(
            c.cluster.secret_file,
            Some(PathBuf::from("/etc/leasehold/secret"))
        );
        assert_eq!(c.raft, crate::RaftConfig::default());
        assert_eq!(c.limits, crate::Limits::default());
        assert_eq!(
            c.auth.tokens_file,
            Some(PathBuf::from("/etc/leasehold/tokens.toml"))
        );
        assert_eq!(c.tls.cert, Some(PathBuf::from("/etc/leasehold/cert.pem")));
        assert_eq!(c.tls.key, Some(PathBuf::from("/etc/leasehold/key.pem")));
    }

    #[test]
    fn written_files_load_back() {
        let c = load_str(SPEC_EXAMPLE, &[], &[]).unwrap();
        let again = load_str(&c.to_toml_string().unwrap(), &[], &[]).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn flags_override_env_which_overrides_the_file() {
        let file = "[limits]\nmax_key_bytes = 100\nmax_wait_ms = 1000\nmin_ttl_ms = 700\n";
        let c = load_str(
            file,
            &[
                ("LEASEHOLD_LIMITS_MAX_KEY_BYTES", "200"),
                ("LEASEHOLD_LIMITS_MAX_WAIT_MS", "2000"),
            ],
            &[("limits.max_key_bytes", "300")],
        )
        .unwrap();
        assert_eq!(c.limits.max_key_bytes, 300, "flag beats env and file");
        assert_eq!(c.limits.max_wait_ms, 2000, "env beats file");
        assert_eq!(c.limits.min_ttl_ms, 700, "file beats default");
        assert_eq!(c.limits.max_ttl_ms, 86_400_000, "default stays");
    }

    #[test]
    fn members_and_addresses_from_env_and_flags() {
        let c = load_str(
            "",
            &[
                ("LEASEHOLD_NODE_ID", "2"),
                (
                    "LEASEHOLD_CLUSTER_MEMBERS",
                    "1=127.0.0.1:7101, 2=127.0.0.1:7102",
                ),
            ],
            &[("peer_addr", "127.0.0.1:7102"), ("data_dir", "/tmp/n2")],
        )
        .unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.cluster.members.len(), 2);
        assert_eq!(c.data_dir, Some(PathBuf::from("/tmp/n2")));
    }

    #[test]
    fn env_vars_that_are_not_leasehold_settings() {
        // Other programs' variables are not looked at.
        load_str("", &[("PATH", "/bin"), ("leasehold_node_id", "x")], &[]).unwrap();
        // The binary's and the clients' own variables are allowed.
        load_str(
            "",
            &[
                ("LEASEHOLD_ENDPOINTS", "http://x"),
                ("LEASEHOLD_LOG", "debug"),
            ],
            &[],
        )
        .unwrap();
        // A misspelt setting is an error naming the variable.
        let err = load_str("", &[("LEASEHOLD_LIMITS_MAX_KYE_BYTES", "1")], &[]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::UnknownEnv {
                var: "LEASEHOLD_LIMITS_MAX_KYE_BYTES".into()
            }
        );
        assert!(err.to_string().contains("LEASEHOLD_LIMITS_MAX_KYE_BYTES"));
    }

    #[test]
    fn bad_env_values_name_the_key_and_the_var() {
        let err = load_str("", &[("LEASEHOLD_LIMITS_MAX_KEY_BYTES", "abc")], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits.max_key_bytes: expected a non-negative integer, got \"abc\" \
             (from LEASEHOLD_LIMITS_MAX_KEY_BYTES)"
        );
        assert!(matches!(err, ConfigError::Invalid { key, .. } if key == "limits.max_key_bytes"));
    }

    #[test]
    fn bad_flag_values_name_the_key_and_the_flag() {
        let err = load_str("", &[], &[("limits.max_waiters_per_key", "99999999999")]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("limits.max_waiters_per_key: "), "{text}");
        assert!(text.contains("--limits-max-waiters-per-key"), "{text}");
        let err = load_str("", &[], &[("limits.max_kye_bytes", "1")]).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { key, .. } if key == "limits.max_kye_bytes"));
    }

    #[test]
    fn unknown_file_fields_are_rejected_by_name_and_line() {
        let err = load_str("[limits]\nmax_kye_bytes = 5\n", &[], &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("max_kye_bytes"), "{text}");
        assert!(text.contains("line 2"), "{text}");
        let err = load_str("colour = \"blue\"\n", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = load_str("[metrics]\n", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("metrics"), "{err}");
    }

    #[test]
    fn wrong_types_and_syntax_in_the_file_are_parse_errors() {
        for text in [
            "node_id = \"one\"",
            "node_id = -1",
            "[limits]\nmax_waiters_per_key = 5000000000",
            "client_addr = \"localhost\"",
            "[cluster]\nmembers = [\"1:127.0.0.1:7101\"]",
            "node_id = ",
        ] {
            let err = load_str(text, &[], &[]).unwrap_err();
            assert!(matches!(err, ConfigError::Parse { .. }), "{text}: {err:?}");
        }
        let err = load_str("[cluster]\nmembers = [\"1:127.0.0.1:7101\"]", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("<id>=<host:port>"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let err = Config::load(Some(&path), Vec::new(), &[]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Io { path: p, .. } if p.ends_with("nope.toml")),
            "{err:?}"
        );
    }

    #[test]
    fn the_merged_config_is_validated() {
        // Each source is fine alone; together they break a rule.
        let err = load_str(
            "[raft]\nheartbeat_interval_ms = 100\n",
            &[("LEASEHOLD_RAFT_ELECTION_TIMEOUT_MIN_MS", "150")],
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "raft.election_timeout_min_ms"),
            "{err:?}"
        );
    }
}
