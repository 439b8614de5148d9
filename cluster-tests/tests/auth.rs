//! Bearer-token auth on a real three-node cluster that also speaks TLS on both ports, with
//! mutual TLS between its peers (SPEC §5 "Auth" and `[tls]`): 401 without a valid token, roles and key prefixes (403 naming the principal and the rule), leases that
//! belong to their principal through every node and after a leader failover, filtered
//! lists, the per-principal quota (429), open endpoints, and reloading the tokens.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use leasehold_api::auth::token_digest_hex;
use leasehold_cluster_tests::tls::TestCa;
use leasehold_cluster_tests::{wait_until, ClusterOptions, TestCluster};
use leasehold_config::Config;
use serde_json::{json, Value};

const ADMIN: &str = "tok-admin";
const BILLING: &str = "tok-billing";
/// A second writer with the same prefixes as billing: prefixes alone do not let it use
/// billing's leases.
const INTRUDER: &str = "tok-intruder";
const VIEWER: &str = "tok-viewer";

fn tokens_toml() -> String {
    let entry = |name: &str, token: &str, role: &str, prefixes: &str, extra: &str| {
        format!(
            "[[token]]\nname = {name:?}\nsha256 = {:?}\nrole = {role:?}\nprefixes = {prefixes}\n{extra}\n",
            token_digest_hex(token)
        )
    };
    [
        entry("ops", ADMIN, "admin", "[]", ""),
        entry(
            "billing",
            BILLING,
            "write",
            r#"["billing/", "svc/billing"]"#,
            "max_leases = 4",
        ),
        entry("intruder", INTRUDER, "write", r#"["billing/"]"#, ""),
        entry("viewer", VIEWER, "read", r#"[""]"#, ""),
    ]
    .concat()
}

/// One tokens file for every cluster of this test binary (the harness's config tweak is a
/// plain function).
fn tokens_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("leasehold-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        std::fs::write(&path, tokens_toml()).unwrap();
        path
    })
}

/// One CA and a certificate per node id for every cluster of this test binary.
struct Pki {
    ca: TestCa,
    nodes: Vec<(PathBuf, PathBuf)>,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tokens_file().parent().unwrap().join("tls");
        let ca = TestCa::new(&dir, "auth test CA").unwrap();
        let nodes = (1..=5)
            .map(|id| ca.issue_files(&dir, &format!("node-{id}")).unwrap())
            .collect();
        Pki { ca, nodes }
    })
}

/// `[auth]` and `[tls]` (node certificate by node id).
fn with_auth(config: &mut Config) {
    config.auth.tokens_file = Some(tokens_file().clone());
    let pki = pki();
    let (cert, key) = &pki.nodes[config.node_id as usize - 1];
    config.tls.cert = Some(cert.clone());
    config.tls.key = Some(key.clone());
    config.tls.ca = Some(pki.ca.cert_path.clone());
}

/// An HTTP client that trusts the test CA (it sends no token of its own).
fn http() -> reqwest::Client {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    HTTP.get_or_init(|| {
        let ca = reqwest::Certificate::from_pem(pki().ca.cert_pem().as_bytes()).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    })
    .clone()
}

async fn secured_cluster() -> TestCluster {
    TestCluster::start(ClusterOptions {
        tweak: with_auth,
        ..ClusterOptions::default()
    })
    .await
    .expect("cluster starts")
}

#[derive(Debug)]
struct Reply {
    status: u16,
    challenge: Option<String>,
    body: Value,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> Reply {
    let client = http();
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("request is answered");
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = resp.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        challenge,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_get_401_and_open_endpoints_stay_open() {
    let cluster = secured_cluster().await;
    let url = cluster.url(0);
    let lock = format!("{url}/v1/locks/billing/a");
    let acquire = json!({"owner": "w", "ttl_ms": 5000});

    let missing = call("POST", &lock, None, Some(acquire.clone())).await;
    assert_eq!((missing.status, missing.code()), (401, "unauthorized"));
    assert_eq!(
        missing.challenge.as_deref(),
        Some(r#"Bearer realm="leasehold""#)
    );
    assert!(
        missing.message().contains("--token"),
        "{}",
        missing.message()
    );

    let unknown = call("POST", &lock, Some("not-a-token"), Some(acquire.clone())).await;
    assert_eq!((unknown.status, unknown.code()), (401, "unauthorized"));
    assert!(unknown
        .challenge
        .as_deref()
        .is_some_and(|c| c.contains("invalid_token")));

    // Malformed: not the Bearer scheme.
    let resp = http()
        .get(format!("{url}/v1/locks"))
        .header("authorization", format!("Basic {BILLING}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // Unknown routes are not a way to probe without a token either.
    assert_eq!(
        call("GET", &format!("{url}/v1/nope"), None, None)
            .await
            .status,
        401
    );
    // Nothing was acquired by the refused requests.
    let state = call("GET", &lock, Some(ADMIN), None).await;
    assert_eq!(state.status, 200, "{:?}", state.body);
    assert_eq!(state.body["held"], false, "{:?}", state.body);

    for open in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/"] {
        let resp = http().get(format!("{url}{open}")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{open} must stay open");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_prefixes_decide_every_call() {
    let cluster = secured_cluster().await;
    let url = cluster.url(1);
    let acquire = json!({"owner": "w", "ttl_ms": 5000});

    // Inside the prefix: granted; outside it: 403 naming the principal and the rule.
    let ok = call(
        "POST",
        &format!("{url}/v1/locks/billing/a"),
        Some(BILLING),
        Some(acquire.clone()),
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    for (method, path, body) in [
        ("POST", "/v1/locks/payroll/a", Some(acquire.clone())),
        ("GET", "/v1/locks/payroll/a", None),
        ("GET", "/v1/locks/payroll/a/history", None),
        (
            "PUT",
            "/v1/names/payroll-leader",
            Some(json!({"owner": "w", "value": "v", "ttl_ms": 5000})),
        ),
        ("GET", "/v1/names/payroll-leader", None),
        (
            "POST",
            "/v1/semaphores/payroll/s",
            Some(json!({"owner": "w", "limit": 2, "ttl_ms": 5000})),
        ),
        ("GET", "/v1/semaphores/payroll/s", None),
    ] {
        let r = call(method, &format!("{url}{path}"), Some(BILLING), body).await;
        assert_eq!(
            (r.status, r.code()),
            (403, "forbidden"),
            "{method} {path}: {:?}",
            r.body
        );
        assert!(
            r.message().contains("\"billing\"") && r.message().contains("\"billing/\""),
            "the message names the principal and its prefixes: {}",
            r.message()
        );
    }
    // Names and semaphores inside the prefixes work.
    let name = call(
        "PUT",
        &format!("{url}/v1/names/svc/billing-leader"),
        Some(BILLING),
        Some(json!({"owner": "w", "value": "10.0.0.1", "ttl_ms": 5000})),
    )
    .await;
    assert_eq!(name.status, 200, "{:?}", name.body);
    let slot = call(
        "POST",
        &format!("{url}/v1/semaphores/billing/s"),
        Some(BILLING),
        Some(json!({"owner": "w", "limit": 2, "ttl_ms": 5000})),
    )
    .await;
    assert_eq!(slot.status, 200, "{:?}", slot.body);

    // read may GET anything in its prefixes ("" = all), and nothing else.
    let read = call(
        "GET",
        &format!("{url}/v1/locks/billing/a"),
        Some(VIEWER),
        None,
    )
    .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["owner"], "w");
    for (method, path, body) in [
        ("POST", "/v1/locks/x", Some(acquire.clone())),
        ("POST", "/v1/leases", Some(json!({"ttl_ms": 5000}))),
        ("DELETE", "/v1/locks/billing/a?owner=w&token=1", None),
    ] {
        let r = call(method, &format!("{url}{path}"), Some(VIEWER), body).await;
        assert_eq!((r.status, r.code()), (403, "forbidden"), "{method} {path}");
        assert!(r.message().contains("role \"read\""), "{}", r.message());
    }

    // Membership is for admins.
    let member = json!({"id": 9, "peer_addr": "127.0.0.1:1", "client_addr": "127.0.0.1:2"});
    let r = call(
        "POST",
        &format!("{url}/v1/cluster/members"),
        Some(BILLING),
        Some(member),
    )
    .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    let r = call(
        "DELETE",
        &format!("{url}/v1/cluster/members/9"),
        Some(BILLING),
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    // The admin gets past authorization (node 9 is not a member: 404).
    let r = call(
        "DELETE",
        &format!("{url}/v1/cluster/members/9"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!((r.status, r.code()), (404, "not_found"), "{:?}", r.body);
    // So is a backup of the whole state (every key, owner and value in it).
    let snapshot = format!("{url}/v1/cluster/snapshot");
    let r = call("GET", &snapshot, Some(BILLING), None).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
    assert!(r.message().contains("saving a snapshot"), "{}", r.message());
    let r = call("GET", &snapshot, Some(ADMIN), None).await;
    assert_eq!(r.status, 200);
    // Everyone may read the cluster's status.
    assert_eq!(
        call("GET", &format!("{url}/v1/cluster"), Some(VIEWER), None)
            .await
            .status,
        200
    );
    cluster.shutdown().await;
}

/// Every way another principal could use billing's lease, through node `i`.
async fn intruder_is_refused(cluster: &TestCluster, i: usize, lease_id: u64, lock_token: u64) {
    let url = cluster.url(i);
    for (method, path, body) in [
        ("POST", format!("/v1/leases/{lease_id}/keepalive"), None),
        ("GET", format!("/v1/leases/{lease_id}"), None),
        ("DELETE", format!("/v1/leases/{lease_id}"), None),
        (
            "POST",
            "/v1/locks/billing/attached".to_string(),
            Some(json!({"owner": "i", "lease_id": lease_id})),
        ),
        (
            "POST",
            "/v1/locks/billing/held/extend".to_string(),
            Some(json!({"owner": "w", "token": lock_token})),
        ),
        (
            "POST",
            "/v1/locks/billing/held/extend".to_string(),
            Some(json!({"owner": "w", "token": lock_token, "ttl_ms": 9000})),
        ),
        (
            "DELETE",
            format!("/v1/locks/billing/held?owner=w&token={lock_token}"),
            None,
        ),
    ] {
        let r = call(method, &format!("{url}{path}"), Some(INTRUDER), body).await;
        assert_eq!(
            (r.status, r.code()),
            (403, "forbidden"),
            "node {i}: {method} {path}: {:?}",
            r.body
        );
        assert!(
            r.message().contains("\"intruder\"") && r.message().contains("\"billing\""),
            "{}",
            r.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_belongs_to_its_principal_on_every_node_and_after_failover() {
    let mut cluster = secured_cluster().await;
    let url = cluster.url(0);
    let lease = call(
        "POST",
        &format!("{url}/v1/leases"),
        Some(BILLING),
        Some(json!({"ttl_ms": 30000, "owner": "w"})),
    )
    .await;
    assert_eq!(lease.status, 201, "{:?}", lease.body);
    let lease_id = lease.body["lease_id"].as_u64().unwrap();
    let held = call(
        "POST",
        &format!("{url}/v1/locks/billing/held"),
        Some(BILLING),
        Some(json!({"owner": "w", "lease_id": lease_id})),
    )
    .await;
    assert_eq!(held.status, 200, "{:?}", held.body);
    let token = held.body["token"].as_u64().unwrap();

    for i in 0..3 {
        intruder_is_refused(&cluster, i, lease_id, token).await;
    }
    // The owner and an admin may use it.
    let info = call(
        "GET",
        &format!("{url}/v1/leases/{lease_id}"),
        Some(BILLING),
        None,
    )
    .await;
    assert_eq!(info.status, 200);
    assert_eq!(info.body["principal"], "billing");
    let kept = call(
        "POST",
        &format!("{url}/v1/leases/{lease_id}/keepalive"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(kept.status, 200, "{:?}", kept.body);

    // Ownership is replicated state: it holds after the leader dies.
    let leader = cluster
        .wait_for_leader(Duration::from_secs(5))
        .await
        .unwrap();
    cluster.kill(leader).await;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new_leader = cluster
        .wait_for_new_leader(leader, Duration::from_secs(10))
        .await
        .unwrap();
    assert_ne!(new_leader, leader);
    for &i in &survivors {
        intruder_is_refused(&cluster, i, lease_id, token).await;
        let kept = call(
            "POST",
            &format!("{}/v1/leases/{lease_id}/keepalive", cluster.url(i)),
            Some(BILLING),
            None,
        )
        .await;
        assert_eq!(kept.status, 200, "node {i}: {:?}", kept.body);
    }
    // The lock is still billing's, untouched by every refused attempt.
    let state = call(
        "GET",
        &format!("{}/v1/locks/billing/held", cluster.url(survivors[0])),
        Some(BILLING),
        None,
    )
    .await;
    assert_eq!(state.body["token"], token);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_history_and_the_expired_ring_show_only_what_the_principal_may_see() {
    let cluster = secured_cluster().await;
    let url = cluster.url(2);
    let take = |key: &str, token: &'static str, ttl_ms: u64| {
        let url = format!("{url}/v1/locks/{key}");
        async move {
            let r = call(
                "POST",
                &url,
                Some(token),
                Some(json!({"owner": "w", "ttl_ms": ttl_ms})),
            )
            .await;
            assert_eq!(r.status, 200, "{url}: {:?}", r.body);
        }
    };
    take("billing/one", BILLING, 30_000).await;
    take("payroll/one", ADMIN, 30_000).await;
    take("payroll/short", ADMIN, 500).await;
    take("billing/short", BILLING, 500).await;

    let keys = |body: &Value, field: &str, key: &str| -> Vec<String> {
        body[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l[key].as_str().unwrap().to_string())
            .collect()
    };
    let mine = call("GET", &format!("{url}/v1/locks"), Some(BILLING), None).await;
    assert!(keys(&mine.body, "locks", "key")
        .iter()
        .all(|k| k.starts_with("billing/")));
    assert!(keys(&mine.body, "locks", "key").contains(&"billing/one".to_string()));
    let all = call("GET", &format!("{url}/v1/locks"), Some(ADMIN), None).await;
    assert!(keys(&all.body, "locks", "key").contains(&"payroll/one".to_string()));

    // Leases: only its own.
    let leases = call("GET", &format!("{url}/v1/leases"), Some(BILLING), None).await;
    let principals: Vec<&str> = leases.body["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["principal"].as_str().unwrap_or(""))
        .collect();
    assert!(
        !principals.is_empty() && principals.iter().all(|p| *p == "billing"),
        "{principals:?}"
    );

    // The expired ring, once both short locks expired.
    let expired = wait_until(Duration::from_secs(10), || async {
        let r = call("GET", &format!("{url}/v1/expired"), Some(ADMIN), None).await;
        let keys = keys(&r.body, "expired", "key");
        (keys.contains(&"payroll/short".to_string()) && keys.contains(&"billing/short".to_string()))
            .then_some(())
    })
    .await;
    assert!(expired.is_ok(), "both short locks expire");
    let seen = call("GET", &format!("{url}/v1/expired"), Some(BILLING), None).await;
    let seen = keys(&seen.body, "expired", "key");
    assert!(seen.contains(&"billing/short".to_string()), "{seen:?}");
    assert!(!seen.iter().any(|k| k.starts_with("payroll/")), "{seen:?}");

    // History names the principal.
    let history = call(
        "GET",
        &format!("{url}/v1/locks/billing/short/history"),
        Some(BILLING),
        None,
    )
    .await;
    let events = history.body["events"].as_array().unwrap();
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| e["principal"] == "billing"),
        "{events:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_over_its_quota_gets_429() {
    let cluster = secured_cluster().await;
    let url = cluster.url(0);
    // billing has max_leases = 4; implicit leases of acquires count too.
    for i in 0..3 {
        let r = call(
            "POST",
            &format!("{url}/v1/leases"),
            Some(BILLING),
            Some(json!({"ttl_ms": 30000})),
        )
        .await;
        assert_eq!(r.status, 201, "lease {i}: {:?}", r.body);
    }
    let lock = call(
        "POST",
        &format!("{url}/v1/locks/billing/q"),
        Some(BILLING),
        Some(json!({"owner": "w", "ttl_ms": 30000})),
    )
    .await;
    assert_eq!(lock.status, 200);
    let over = call(
        "POST",
        &format!("{url}/v1/leases"),
        Some(BILLING),
        Some(json!({"ttl_ms": 30000})),
    )
    .await;
    assert_eq!(
        (over.status, over.code()),
        (429, "too_many_requests"),
        "{:?}",
        over.body
    );
    assert!(over.message().contains("\"billing\""), "{}", over.message());
    let over = call(
        "POST",
        &format!("{url}/v1/locks/billing/r"),
        Some(BILLING),
        Some(json!({"owner": "w", "ttl_ms": 30000})),
    )
    .await;
    assert_eq!(over.status, 429);
    // The quota is the principal's own: another principal is unaffected.
    let other = call(
        "POST",
        &format!("{url}/v1/leases"),
        Some(INTRUDER),
        Some(json!({"ttl_ms": 30000})),
    )
    .await;
    assert_eq!(other.status, 201);
    // Releasing frees quota.
    let token = lock.body["token"].as_u64().unwrap();
    let r = call(
        "DELETE",
        &format!("{url}/v1/locks/billing/q?owner=w&token={token}"),
        Some(BILLING),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let again = call(
        "POST",
        &format!("{url}/v1/leases"),
        Some(BILLING),
        Some(json!({"ttl_ms": 30000})),
    )
    .await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reload_without_a_restart_and_a_bad_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    let one = |name: &str, token: &str| {
        format!(
            "[[token]]\nname = {name:?}\nsha256 = {:?}\nrole = \"write\"\nprefixes = [\"\"]\n",
            token_digest_hex(token)
        )
    };
    std::fs::write(&path, one("first", "tok-1")).unwrap();
    let mut config = Config {
        client_addr: "127.0.0.1:0".parse().unwrap(),
        peer_addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.auth.tokens_file = Some(path.clone());
    let node = leasehold_node::Node::start(config).await.unwrap();
    node.wait_for_leader(Duration::from_secs(5)).await.unwrap();
    let url = format!("http://{}/v1/locks", node.client_addr());
    assert_eq!(call("GET", &url, Some("tok-1"), None).await.status, 200);
    assert_eq!(call("GET", &url, Some("tok-2"), None).await.status, 401);

    std::fs::write(&path, "[[token]]\nname = \"broken\"\n").unwrap();
    let err = node.reload_tokens().unwrap_err();
    assert!(err.contains("missing field"), "{err}");
    assert_eq!(
        call("GET", &url, Some("tok-1"), None).await.status,
        200,
        "the old tokens stay"
    );

    std::fs::write(&path, one("second", "tok-2")).unwrap();
    assert_eq!(node.reload_tokens(), Ok(Some(1)));
    assert_eq!(call("GET", &url, Some("tok-1"), None).await.status, 401);
    assert_eq!(call("GET", &url, Some("tok-2"), None).await.status, 200);
    node.shutdown().await;
}

#[tokio::test]
async fn a_node_refuses_to_start_with_a_bad_tokens_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(
        &path,
        "[[token]]\nname = \"a\"\nsha256 = \"xyz\"\nrole = \"read\"\nprefixes = []\n",
    )
    .unwrap();
    let mut config = Config {
        client_addr: "127.0.0.1:0".parse().unwrap(),
        peer_addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.auth.tokens_file = Some(path);
    let err = leasehold_node::Node::start(config)
        .await
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(
        message.contains("auth.tokens_file") && message.contains("sha256 must be 64 hex digits"),
        "{message}"
    );
    config_missing_file().await;
}

async fn config_missing_file() {
    let mut config = Config {
        client_addr: "127.0.0.1:0".parse().unwrap(),
        peer_addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    config.auth.tokens_file = Some("/nonexistent/tokens.toml".into());
    let err = leasehold_node::Node::start(config)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("cannot read auth.tokens_file /nonexistent/tokens.toml"),
        "{err}"
    );
}

/// A force release needs the admin role; the `stolen` event names the admin who did it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_may_force_release_and_history_names_who_did() {
    let cluster = secured_cluster().await;
    let url = cluster.url(1);
    let held = call(
        "POST",
        &format!("{url}/v1/locks/billing/job"),
        Some(BILLING),
        Some(json!({"owner": "w", "ttl_ms": 30000})),
    )
    .await;
    assert_eq!(held.status, 200, "{:?}", held.body);
    for token in [BILLING, INTRUDER, VIEWER] {
        let r = call(
            "DELETE",
            &format!("{url}/v1/locks/billing/job?force=true"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (403, "forbidden"),
            "{token}: {:?}",
            r.body
        );
    }
    let forced = call(
        "DELETE",
        &format!("{}/v1/locks/billing/job?force=true", cluster.url(2)),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(forced.status, 200, "{:?}", forced.body);
    let history = call(
        "GET",
        &format!("{url}/v1/locks/billing/job/history"),
        Some(BILLING),
        None,
    )
    .await;
    let stolen = &history.body["events"][0];
    assert_eq!(stolen["event"], "stolen", "{:?}", history.body);
    assert_eq!(
        stolen["principal"], "ops",
        "the admin who did it: {:?}",
        history.body
    );
    cluster.shutdown().await;
}
