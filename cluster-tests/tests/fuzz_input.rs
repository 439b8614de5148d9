//! Generated bad (and some good) requests against a running three-node cluster: every
//! reply is a documented status with a JSON body (never a 5xx other than 503/504), no node
//! stops answering, and a rejected request changes nothing. The same requests run against a
//! second cluster with TLS on both ports and bearer tokens, sent with an admin token, a
//! token confined to `jobs/`, a token the cluster does not know, or none.

use std::path::PathBuf;
use std::sync::OnceLock;

use leasehold_cluster_tests::{ClusterOptions, Http, TestCluster};
use leasehold_config::Config;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

struct Env {
    rt: tokio::runtime::Runtime,
    cluster: TestCluster,
    /// `clients[0]` may see everything (it reads the state before and after); the others
    /// are the other credentials requests are sent with.
    clients: Vec<Http>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = runtime();
        let cluster = rt.block_on(TestCluster::start3()).expect("cluster");
        Env {
            rt,
            cluster,
            clients: vec![Http::new()],
        }
    })
}

const ADMIN_TOKEN: &str = "fuzz-admin";
const JOBS_TOKEN: &str = "fuzz-jobs";

fn tokens_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("leasehold-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        let entry = |name: &str, token: &str, role: &str, prefixes: &str| {
            format!(
                "[[token]]\nname = {name:?}\nsha256 = {:?}\nrole = {role:?}\nprefixes = {prefixes}\nmax_leases = 50\n",
                leasehold_api::auth::token_digest_hex(token)
            )
        };
        let text = entry("fuzz-admin", ADMIN_TOKEN, "admin", "[]")
            + &entry("fuzz-jobs", JOBS_TOKEN, "write", r#"["jobs/"]"#);
        std::fs::write(&path, text).unwrap();
        path
    })
}

fn with_auth(config: &mut Config) {
    config.auth.tokens_file = Some(tokens_file().clone());
}

fn secured_env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = runtime();
        let cluster = rt
            .block_on(TestCluster::start(ClusterOptions {
                tls: true,
                tweak: with_auth,
                ..ClusterOptions::default()
            }))
            .expect("secured cluster");
        let ca = cluster.ca_pem().expect("a TLS cluster has a CA");
        let clients = vec![
            Http::with(Some(&ca), Some(ADMIN_TOKEN)),
            Http::with(Some(&ca), Some(JOBS_TOKEN)),
            Http::with(Some(&ca), Some("not-a-known-token")),
            Http::with(Some(&ca), None),
        ];
        Env {
            rt,
            cluster,
            clients,
        }
    })
}

/// Everything visible about the key space (minus clocks that move by themselves).
async fn visible_state(http: &Http, base: &str) -> Value {
    let mut out = json!({});
    for (name, path) in [
        ("locks", "/v1/locks?limit=1000"),
        ("names", "/v1/names?limit=1000"),
        ("leases", "/v1/leases?limit=1000"),
        ("expired", "/v1/expired"),
    ] {
        // A read may fail transiently on a loaded machine; that is not a state change.
        let mut body = Value::Null;
        for _ in 0..10 {
            if let Ok(r) = http.get(&format!("{base}{path}")).await {
                if r.status == 200 {
                    body = r.body;
                    break;
                }
            }
        }
        strip_clocks(&mut body);
        out[name] = body;
    }
    out
}

fn strip_clocks(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("expires_in_ms");
            map.remove("remaining_ms");
            for x in map.values_mut() {
                strip_clocks(x);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_clocks),
        _ => {}
    }
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("k".to_string()),
        Just("jobs/sitemap".to_string()),
        Just("".to_string()),
        Just("a%0Ab".to_string()),
        Just("%00".to_string()),
        Just("x/extend".to_string()),
        "[a-z]{1,8}",
        "[ -~]{0,20}".prop_map(|s| s.replace(['?', '#'], "")),
        Just("k".repeat(600)),
    ]
}

fn arb_path() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        Just("1".to_string()),
        Just("0".to_string()),
        Just("-5".to_string()),
        Just("abc".to_string()),
        Just("99999999999999999999999".to_string())
    ];
    // Membership: only ids that are not members (removing a real member is a valid request
    // that changes the cluster under the test's feet).
    let member_id = prop_oneof![
        Just("0".to_string()),
        Just("7".to_string()),
        Just("-5".to_string()),
        Just("abc".to_string())
    ];
    prop_oneof![
        arb_key().prop_map(|k| format!("/v1/locks/{k}")),
        arb_key().prop_map(|k| format!("/v1/locks/{k}/extend")),
        arb_key().prop_map(|k| format!("/v1/locks/{k}/wait")),
        arb_key().prop_map(|k| format!("/v1/locks/{k}/history")),
        arb_key().prop_map(|k| format!("/v1/names/{k}")),
        arb_key().prop_map(|k| format!("/v1/names/{k}/extend")),
        arb_key().prop_map(|k| format!("/v1/semaphores/{k}")),
        id.clone().prop_map(|i| format!("/v1/leases/{i}")),
        id.clone().prop_map(|i| format!("/v1/leases/{i}/keepalive")),
        member_id.prop_map(|i| format!("/v1/cluster/members/{i}")),
        Just("/v1/leases".to_string()),
        Just("/v1/locks".to_string()),
        Just("/v1/names".to_string()),
        Just("/v1/expired".to_string()),
        Just("/v1/cluster".to_string()),
        Just("/v1/cluster/members".to_string()),
        "/[a-z0-9/]{0,30}",
        Just("/".to_string()),
        Just("/metrics".to_string()),
    ]
}

fn arb_query() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("1".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("true".to_string()),
        Just("zz".to_string()),
        Just("18446744073709551616".to_string()),
        Just("50".to_string()),
    ];
    let name = prop_oneof![
        Just("owner"),
        Just("token"),
        Just("index"),
        Just("wait_ms"),
        Just("stale"),
        Just("limit"),
        Just("after"),
        Just("prefix"),
        Just("bogus"),
    ];
    proptest::collection::vec((name, value), 0..4).prop_map(|pairs| {
        pairs
            .into_iter()
            // Keep waits short so the suite stays fast.
            .map(|(n, v)| {
                if n == "wait_ms" {
                    format!("{n}=50")
                } else {
                    format!("{n}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn arb_json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        Just(json!(1.5)),
        Just(json!(200_000)),
        "[ -~]{0,12}".prop_map(Value::String),
        Just(json!("a\u{0}b")),
        Just(json!("x".repeat(70_000))),
        Just(json!([1, 2])),
        Just(json!({"nested": true})),
    ]
}

fn arb_body() -> impl Strategy<Value = Option<Vec<u8>>> {
    let field = prop_oneof![
        Just("owner"),
        Just("ttl_ms"),
        Just("lease_id"),
        Just("wait_ms"),
        Just("value"),
        Just("lock_delay_ms"),
        Just("request_id"),
        Just("token"),
        Just("limit"),
        Just("id"),
        Just("peer_addr"),
        Just("client_addr"),
        Just("colour"),
    ];
    let object = proptest::collection::vec((field, arb_json_value()), 0..5).prop_map(|fields| {
        let mut map = serde_json::Map::new();
        for (k, v) in fields {
            // Keep blocking waits short.
            let v = if k == "wait_ms" { json!(50) } else { v };
            map.insert(k.to_string(), v);
        }
        serde_json::to_vec(&Value::Object(map)).expect("json")
    });
    prop_oneof![
        Just(None),
        object.prop_map(Some),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Some),
        Just(Some(b"{\"owner\":".to_vec())),
        Just(Some(vec![b'x'; 300_000])),
    ]
}

fn arb_method() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("PUT"),
        Just("PATCH"),
        Just("DELETE"),
        Just("OPTIONS")
    ]
}

/// Send one generated request as `clients[who]` and check the reply and the state.
fn check_one(
    env: &Env,
    node: usize,
    who: usize,
    method: &str,
    path: &str,
    query: &str,
    body: Option<Vec<u8>>,
) -> Result<(), TestCaseError> {
    let observer = &env.clients[0];
    let http = &env.clients[who % env.clients.len()];
    let base = env.cluster.url(node);
    let url = if query.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{query}")
    };
    // The two documented pages that are not JSON: the status page and the Prometheus
    // exposition. A GET gets 200 with their own content type and changes nothing (they
    // stay open with auth on).
    if method == "GET" && (path == "/" || path == "/metrics") {
        let (before, reply, after) = env.rt.block_on(async {
            let before = visible_state(observer, &base).await;
            let reply = http.text(method, &url, body.clone()).await;
            let after = visible_state(observer, &base).await;
            (before, reply, after)
        });
        let (status, content_type, _) = match reply {
            Ok(r) => r,
            Err(e) => {
                prop_assert!(false, "{method} {url}: {e:#}");
                unreachable!()
            }
        };
        // Like every request, a page request with a body over the limit gets 413.
        let oversized = body
            .as_ref()
            .is_some_and(|b| b.len() > leasehold_config::Limits::default().max_body_bytes);
        if oversized && status == 413 {
            prop_assert_eq!(&before, &after, "{} {} changed the state", method, url);
            return Ok(());
        }
        prop_assert_eq!(status, 200, "{} {}", method, url);
        let expected = if path == "/" {
            "text/html"
        } else {
            "text/plain"
        };
        prop_assert!(
            content_type.starts_with(expected),
            "{method} {url}: content type {content_type}"
        );
        prop_assert_eq!(&before, &after, "{} {} changed the state", method, url);
        return Ok(());
    }
    let (before, reply, after) = env.rt.block_on(async {
        let before = visible_state(observer, &base).await;
        let reply = match &body {
            Some(bytes) => http.raw(method, &url, bytes.clone()).await,
            None => http.request(method, &url, None).await,
        };
        let after = visible_state(observer, &base).await;
        (before, reply, after)
    });
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            // A non-JSON reply or a dropped connection: not documented.
            prop_assert!(false, "{method} {url}: {e:#}");
            unreachable!()
        }
    };
    let documented = [200, 201, 400, 401, 403, 404, 405, 409, 413, 429, 503, 504];
    prop_assert!(
        documented.contains(&reply.status),
        "{method} {url}: status {} {:?}",
        reply.status,
        reply.body
    );
    if env.clients.len() == 1 {
        prop_assert!(
            ![401, 403].contains(&reply.status),
            "{method} {url}: {} without auth",
            reply.status
        );
    }
    if reply.status >= 400 {
        prop_assert!(
            !reply.code().is_empty(),
            "{method} {url}: error without a code: {:?}",
            reply.body
        );
        prop_assert!(reply.body["error"]["message"].is_string());
        prop_assert_eq!(
            &before,
            &after,
            "{} {} was rejected ({}) but changed the state",
            method,
            url,
            reply.status
        );
    }
    // Every node still answers.
    for i in 0..3 {
        let ok = env
            .rt
            .block_on(observer.get(&format!("{}/healthz", env.cluster.url(i))));
        prop_assert!(
            ok.map(|r| r.status == 200).unwrap_or(false),
            "node {i} stopped answering"
        );
    }
    Ok(())
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(150), max_shrink_iters: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_reply_is_documented_and_rejections_change_nothing(
        node in 0usize..3,
        method in arb_method(),
        path in arb_path(),
        query in arb_query(),
        body in arb_body(),
    ) {
        check_one(env(), node, 0, method, &path, &query, body)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(80), max_shrink_iters: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// With TLS and auth, a 401 or 403 is one more documented refusal that changes nothing.
    #[test]
    fn with_tls_and_auth_every_reply_is_documented_and_refusals_change_nothing(
        node in 0usize..3,
        who in 0usize..4,
        method in arb_method(),
        path in arb_path(),
        query in arb_query(),
        body in arb_body(),
    ) {
        check_one(secured_env(), node, who, method, &path, &query, body)?;
    }
}
