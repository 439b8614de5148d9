//! `GET /openapi.json` describes the API a live cluster serves: every documented operation
//! is exercised against a three-node cluster, every reply's status is one the description
//! lists for that operation, and every JSON reply validates against the documented schema.

use std::collections::BTreeSet;

use leasehold_cluster_tests::{Http, TestCluster};
use serde_json::{json, Value};

struct Checker {
    doc: Value,
    http: Http,
    base: String,
    /// `METHOD template` of every operation exercised.
    seen: BTreeSet<String>,
}

impl Checker {
    /// Send `method url` (the template with its parameter filled in), check the reply
    /// against the description, return its status and JSON body.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| serde_json::to_vec(&b).expect("json"));
        let (status, content_type, text) = self
            .http
            .text(method, &format!("{}{path}", self.base), body)
            .await
            .unwrap();
        let op = &self.doc["paths"][template][method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not documented");
        let documented = &op["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {path}: status {status} is not documented for {template}: {text}"
        );
        self.seen.insert(format!("{method} {template}"));
        let content = documented["content"].as_object().expect("content");
        let (doc_type, media) = content.iter().next().expect("one media type");
        assert!(
            content_type.starts_with(doc_type.as_str()),
            "{method} {path}: content type {content_type}, documented {doc_type}"
        );
        if doc_type != "application/json" {
            return (status, Value::Null);
        }
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": "#/$defs/reply",
            "$defs": {"reply": media["schema"]},
            "components": self.doc["components"],
        });
        let validator = jsonschema::draft202012::new(&schema)
            .unwrap_or_else(|e| panic!("{method} {template}: bad schema: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} ({status}): reply does not match its schema: {errors:?}\n{body:#}"
        );
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_description_matches_what_the_cluster_serves() {
    let cluster = TestCluster::start3().await.unwrap();
    let base = cluster.url(1);
    let http = Http::new();
    let doc = http
        .get(&format!("{base}/openapi.json"))
        .await
        .unwrap()
        .body;
    assert!(doc["openapi"].as_str().unwrap_or("").starts_with("3.1"));
    let mut c = Checker {
        doc,
        http,
        base,
        seen: BTreeSet::new(),
    };

    // Operations.
    for path in ["/", "/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(c.call("GET", path, path, None).await.0, 200, "{path}");
    }
    c.call("GET", "/v1/cluster", "/v1/cluster", None).await;

    // Leases.
    let (status, lease) = c
        .call(
            "POST",
            "/v1/leases",
            "/v1/leases",
            Some(json!({"ttl_ms": 10_000, "owner": "oa"})),
        )
        .await;
    assert_eq!(status, 201);
    let id = lease["lease_id"].as_u64().unwrap();
    let lease_path = format!("/v1/leases/{id}");
    c.call("GET", "/v1/leases", "/v1/leases?limit=10", None)
        .await;
    c.call("GET", "/v1/leases/{id}", &lease_path, None).await;
    c.call(
        "POST",
        "/v1/leases/{id}/keepalive",
        &format!("{lease_path}/keepalive"),
        None,
    )
    .await;

    // Locks: held, then free.
    let key = "/v1/locks/{key}";
    let (status, hold) = c
        .call(
            "POST",
            key,
            "/v1/locks/oa/k",
            Some(json!({"owner": "oa", "lease_id": id, "value": "v"})),
        )
        .await;
    assert_eq!(status, 200);
    let token = hold["token"].as_u64().unwrap();
    let (status, busy) = c
        .call(
            "POST",
            key,
            "/v1/locks/oa/k",
            Some(json!({"owner": "other", "ttl_ms": 5_000})),
        )
        .await;
    assert_eq!(
        (status, busy["error"]["code"].as_str()),
        (409, Some("lock_held"))
    );
    let (_, state) = c.call("GET", key, "/v1/locks/oa/k", None).await;
    assert_eq!(state["held"], true);
    c.call(
        "POST",
        "/v1/locks/{key}/extend",
        "/v1/locks/oa/k/extend",
        Some(json!({"owner": "oa", "token": token})),
    )
    .await;
    let (_, waited) = c
        .call("GET", "/v1/locks/{key}/wait", "/v1/locks/oa/k/wait", None)
        .await;
    assert_eq!(waited["released"], false);
    c.call("GET", "/v1/locks", "/v1/locks?prefix=oa/", None)
        .await;
    c.call(
        "DELETE",
        key,
        &format!("/v1/locks/oa/k?owner=oa&token={token}"),
        None,
    )
    .await;
    let (_, state) = c.call("GET", key, "/v1/locks/oa/k?stale=true", None).await;
    assert_eq!(state["held"], false);
    c.call("GET", "/v1/locks/{key}/wait", "/v1/locks/oa/k/wait", None)
        .await;
    c.call(
        "GET",
        "/v1/locks/{key}/history",
        "/v1/locks/oa/k/history",
        None,
    )
    .await;
    let (status, bad) = c
        .call("POST", key, "/v1/locks/oa/k", Some(json!({"owner": "oa"})))
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_argument"))
    );

    // Semaphores.
    let sem = "/v1/semaphores/{key}";
    let (_, slot) = c
        .call(
            "POST",
            sem,
            "/v1/semaphores/oa/s",
            Some(json!({"owner": "oa", "limit": 2, "ttl_ms": 5_000})),
        )
        .await;
    let token = slot["token"].as_u64().unwrap();
    c.call("GET", sem, "/v1/semaphores/oa/s", None).await;
    c.call(
        "POST",
        "/v1/semaphores/{key}/extend",
        "/v1/semaphores/oa/s/extend",
        Some(json!({"owner": "oa", "token": token})),
    )
    .await;
    c.call(
        "DELETE",
        sem,
        &format!("/v1/semaphores/oa/s?owner=oa&token={token}"),
        None,
    )
    .await;
    c.call("GET", "/v1/semaphores", "/v1/semaphores", None)
        .await;
    c.call(
        "GET",
        "/v1/semaphores/{key}/history",
        "/v1/semaphores/oa/s/history",
        None,
    )
    .await;

    // Names: registered, then vacant.
    let name = "/v1/names/{name}";
    let (_, record) = c
        .call(
            "PUT",
            name,
            "/v1/names/oa/n",
            Some(json!({"owner": "oa", "value": "10.0.0.1", "ttl_ms": 5_000})),
        )
        .await;
    let token = record["token"].as_u64().unwrap();
    let (_, state) = c.call("GET", name, "/v1/names/oa/n", None).await;
    assert_eq!(state["registered"], true);
    c.call(
        "PATCH",
        name,
        "/v1/names/oa/n",
        Some(json!({"owner": "oa", "token": token, "value": "10.0.0.2"})),
    )
    .await;
    c.call(
        "POST",
        "/v1/names/{name}/extend",
        "/v1/names/oa/n/extend",
        Some(json!({"owner": "oa", "token": token})),
    )
    .await;
    c.call("GET", "/v1/names", "/v1/names", None).await;
    c.call(
        "GET",
        "/v1/names/{name}/history",
        "/v1/names/oa/n/history",
        None,
    )
    .await;
    let (_, state) = c.call("GET", name, "/v1/names/oa/n", None).await;
    let index = state["index"].as_u64().unwrap();
    c.call(
        "DELETE",
        name,
        &format!("/v1/names/oa/n?owner=oa&token={token}"),
        None,
    )
    .await;
    // A blocking query past the resignation reports the vacancy.
    let (_, state) = c
        .call(
            "GET",
            name,
            &format!("/v1/names/oa/n?index={index}&wait_ms=5000"),
            None,
        )
        .await;
    assert_eq!(state["registered"], false);
    let (status, _) = c.call("GET", name, "/v1/names/oa/n", None).await;
    assert_eq!(status, 404);

    // The rest of the key space, then revoke.
    c.call("GET", "/v1/expired", "/v1/expired", None).await;
    c.call("DELETE", "/v1/leases/{id}", &lease_path, None).await;

    // Membership: requests the cluster refuses (a real change is in the fault suite).
    let (status, _) = c
        .call(
            "POST",
            "/v1/cluster/members",
            "/v1/cluster/members",
            Some(json!({"id": 0, "peer_addr": "127.0.0.1:1"})),
        )
        .await;
    assert!(status >= 400);
    let (status, _) = c
        .call(
            "DELETE",
            "/v1/cluster/members/{id}",
            "/v1/cluster/members/7",
            None,
        )
        .await;
    assert!(status >= 400);
    let (status, _) = c
        .call("GET", "/v1/cluster/snapshot", "/v1/cluster/snapshot", None)
        .await;
    assert_eq!(status, 200);
    let (status, view) = c
        .call("GET", "/v1/status", "/v1/status?index=1&wait_ms=10", None)
        .await;
    assert_eq!(status, 200);
    assert!(view["locks"].is_array(), "{view}");

    // Every method a route does not document: 405, with exactly the documented methods
    // (and HEAD where GET is) in `Allow`.
    let raw = reqwest::Client::new();
    for (template, item) in c.doc["paths"].as_object().unwrap() {
        let documented: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
            .map(|k| k.to_uppercase())
            .collect();
        let path = template
            .replace("{key}", "k")
            .replace("{name}", "n")
            .replace("{id}", "1");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if documented.contains(method) {
                continue;
            }
            let r = raw
                .request(method.parse().unwrap(), format!("{}{path}", c.base))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 405, "{method} {path}");
            let allow: BTreeSet<String> = r.headers()["allow"]
                .to_str()
                .unwrap()
                .split(',')
                .map(|m| m.trim().to_string())
                .collect();
            let mut expected = documented.clone();
            if expected.contains("GET") {
                expected.insert("HEAD".into());
            }
            assert_eq!(allow, expected, "{method} {path}");
        }
    }

    // Every documented operation was exercised.
    let documented: BTreeSet<String> = c.doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    let missed: Vec<_> = documented.difference(&c.seen).collect();
    assert!(missed.is_empty(), "not exercised: {missed:?}");
    cluster.shutdown().await;
}
