use std::io::Write;

use super::*;

fn load_str(
    toml: &str,
    env: &[(&str, &str)],
    flags: &[(&str, &str)],
) -> Result<Config, ConfigError> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(toml.as_bytes()).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let flags: Vec<(String, String)> = flags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load(Some(file.path()), env, &flags)
}

fn invalid_key(result: Result<Config, ConfigError>) -> String {
    match result {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid-key error, got {other:?}"),
    }
}

const SPEC_EXAMPLE: &str = r#"
node_id = 1
client_addr = "127.0.0.1:7001"
peer_addr = "127.0.0.1:7101"
data_dir = "/var/lib/leasehold/1"

[cluster]
members = ["1=127.0.0.1:7101", "2=127.0.0.1:7102", "3=127.0.0.1:7103"]
secret_file = "/etc/leasehold/secret"

[raft]
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

[auth]
tokens_file = "/etc/leasehold/tokens.toml"

[tls]
cert = "/etc/leasehold/cert.pem"
key = "/etc/leasehold/key.pem"
"#;

#[test]
fn defaults_are_a_valid_in_memory_node() {
    let c = Config::default();
    c.validate().unwrap();
    assert_eq!(c.client_addr.to_string(), "127.0.0.1:7070");
    assert!(c.data_dir.is_none());
    assert!(c.cluster.members.is_empty());
    assert_eq!(Config::load(None, Vec::new(), &[]).unwrap(), c);
}

#[test]
fn the_spec_example_parses() {
    let c = load_str(SPEC_EXAMPLE, &[], &[]).unwrap();
    assert_eq!(c.cluster.members.len(), 3);
    assert_eq!(c.cluster.members[1].id, 2);
    assert_eq!(
        c.data_dir.as_deref(),
        Some(Path::new("/var/lib/leasehold/1"))
    );
    assert_eq!(c.limits.max_waiters_per_key, 10_000);
    assert!(c.tls.cert.is_some());
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
    assert_eq!(c.limits.max_key_bytes, 300, "flag wins");
    assert_eq!(c.limits.max_wait_ms, 2000, "env beats file");
    assert_eq!(c.limits.min_ttl_ms, 700, "file beats default");
}

#[test]
fn members_can_come_from_env() {
    let c = load_str(
        "node_id = 2\npeer_addr = \"127.0.0.1:7102\"\n",
        &[(
            "LEASEHOLD_CLUSTER_MEMBERS",
            "1=127.0.0.1:7101, 2=127.0.0.1:7102",
        )],
        &[],
    )
    .unwrap();
    assert_eq!(c.cluster.members.len(), 2);
}

#[test]
fn unknown_file_fields_are_rejected_by_name() {
    let err = load_str("[limits]\nmax_kye_bytes = 5\n", &[], &[]).unwrap_err();
    assert!(err.to_string().contains("max_kye_bytes"), "{err}");
}

#[test]
fn bad_env_values_and_unknown_env_vars_are_named() {
    let err = load_str("", &[("LEASEHOLD_LIMITS_MAX_KEY_BYTES", "abc")], &[]).unwrap_err();
    assert_eq!(
        invalid_key(Err(err.clone())),
        "LEASEHOLD_LIMITS_MAX_KEY_BYTES"
    );
    assert!(err.to_string().contains("non-negative integer"));
    let err = load_str("", &[("LEASEHOLD_LIMITS_MAX_KYE_BYTES", "1")], &[]).unwrap_err();
    assert_eq!(
        err,
        ConfigError::UnknownEnv {
            var: "LEASEHOLD_LIMITS_MAX_KYE_BYTES".into()
        }
    );
    // Client-side variables are allowed.
    load_str("", &[("LEASEHOLD_ENDPOINTS", "http://x")], &[]).unwrap();
}

#[test]
fn every_rule_names_its_key() {
    let cases: &[(&str, &str)] = &[
        ("node_id = 0", "node_id"),
        ("peer_addr = \"127.0.0.1:7070\"", "peer_addr"),
        (
            "[raft]\nheartbeat_interval_ms = 200",
            "raft.election_timeout_min_ms",
        ),
        (
            "[raft]\nelection_timeout_max_ms = 250",
            "raft.election_timeout_max_ms",
        ),
        (
            "[raft]\nproposal_timeout_ms = 100",
            "raft.proposal_timeout_ms",
        ),
        ("[raft]\nmax_batch = 0", "raft.max_batch"),
        ("[limits]\nmax_key_bytes = 0", "limits.max_key_bytes"),
        ("[limits]\nmax_key_bytes = 5000", "limits.max_key_bytes"),
        (
            "[limits]\nmax_value_bytes = 20000000",
            "limits.max_value_bytes",
        ),
        ("[limits]\nmax_body_bytes = 1000", "limits.max_body_bytes"),
        ("[limits]\nmin_ttl_ms = 10", "limits.min_ttl_ms"),
        ("[limits]\nmax_ttl_ms = 200", "limits.max_ttl_ms"),
        (
            "[limits]\nmax_waiters_per_key = 0",
            "limits.max_waiters_per_key",
        ),
        (
            "[cluster]\nmembers = [\"2=127.0.0.1:7102\"]",
            "cluster.members",
        ),
        (
            "[cluster]\nmembers = [\"1=127.0.0.1:7170\", \"1=127.0.0.1:7102\"]",
            "cluster.members",
        ),
        ("[cluster]\nmembers = [\"1=127.0.0.1:7999\"]", "peer_addr"),
        ("[tls]\ncert = \"c.pem\"", "tls"),
    ];
    for (toml, key) in cases {
        assert_eq!(&invalid_key(load_str(toml, &[], &[])), key, "for {toml:?}");
    }
}

#[test]
fn bad_member_syntax_is_explained() {
    let err = load_str("[cluster]\nmembers = [\"1:127.0.0.1:7101\"]", &[], &[]).unwrap_err();
    assert!(err.to_string().contains("<id>=<host:port>"), "{err}");
}

#[test]
fn toml_round_trip() {
    let c = load_str(SPEC_EXAMPLE, &[], &[]).unwrap();
    let text = c.to_toml_string();
    let back: Config = toml::from_str(&text).unwrap();
    assert_eq!(back, c);
}

#[test]
fn every_key_can_be_set_by_flag() {
    for key in KEYS {
        let value = match key.kind {
            ValueKind::Integer => "7".to_string(),
            ValueKind::Address => "127.0.0.1:9".to_string(),
            ValueKind::Path => "/tmp/x".to_string(),
            ValueKind::Members => "1=127.0.0.1:9".to_string(),
        };
        let mut table = toml::Table::new();
        set(&mut table, key, &value).unwrap_or_else(|e| panic!("{}: {e}", key.key));
        assert!(key.flag.starts_with("--"));
        assert!(key.env.starts_with("LEASEHOLD_"));
    }
}
