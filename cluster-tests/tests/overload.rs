//! Overload caps (`[limits]` `max_connections`, `max_connections_per_address`,
//! `max_requests_in_flight`, `max_long_polls`) with small values: what a shed client gets
//! (429, 503 with `Retry-After`, a closed connection under TLS), that holds are kept while
//! new work is shed, that `leasehold_shed_total` counts, that capacity comes back when the
//! load goes, and that the peer listener is never capped. The large runs are
//! `loadgen overload` (docs/faults.md, "Overload").

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use leasehold_cluster_tests::{wait_until, ClusterOptions, Http, TestCluster};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

fn small_limits(c: &mut leasehold_config::Config) {
    c.limits.max_connections = 8;
    c.limits.max_connections_per_address = 4;
    c.limits.max_requests_in_flight = 4;
    c.limits.max_long_polls = 2;
}

async fn small_cluster(tls: bool) -> TestCluster {
    TestCluster::start(ClusterOptions {
        tweak: small_limits,
        tls,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A connection to `to` from the loopback address `from` (127.0.0.x: all of 127/8 is the
/// loopback interface's, so each is another client address to the node).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Send `request` on a new connection from `from` and read until the server closes.
async fn exchange(from: [u8; 4], to: SocketAddr, request: &str) -> String {
    let mut tcp = connect_from(from, to).await;
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: leasehold\r\n\r\n")
}

/// Status, `retry-after` and the error code of a raw HTTP reply.
fn parse(reply: &str) -> (u16, Option<String>, String) {
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((reply, ""));
    let retry = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().to_string())
    });
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    (status, retry, code)
}

/// One sample of `/metrics` (`name` with its labels as written, e.g. `x{cap="a"}`).
async fn metric(http: &Http, url: &str, name: &str) -> Option<f64> {
    let (_, _, text) = http
        .text("GET", &format!("{url}/metrics"), None)
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_caps_answer_429_and_503_and_spare_the_peer_listener() {
    let cluster = small_cluster(false).await;
    let node = cluster.client_addr(0);
    let peer = cluster.node(0).peer_addr();
    let url = cluster.url(0);

    // Four from 127.0.0.1 fill its address's cap: the fifth gets 429 in the API's format.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from([127, 0, 0, 1], node).await);
    }
    let reply = exchange([127, 0, 0, 1], node, &get("/readyz")).await;
    let (status, retry, code) = parse(&reply);
    assert_eq!(
        (status, code.as_str()),
        (429, "too_many_requests"),
        "{reply}"
    );
    assert!(retry.is_some(), "{reply}");

    // Four more from 127.0.0.2 fill the node's cap: the next, from a third address, 503.
    for _ in 0..4 {
        held.push(connect_from([127, 0, 0, 2], node).await);
    }
    let reply = exchange([127, 0, 0, 3], node, &get("/readyz")).await;
    let (status, retry, code) = parse(&reply);
    assert_eq!((status, code.as_str()), (503, "unavailable"), "{reply}");
    assert_eq!(retry.as_deref(), Some("1"), "{reply}");
    // A liveness probe past either cap is told the node is alive (a supervisor must not
    // restart a node for being busy); readiness above said it is not ready for more.
    for from in [[127, 0, 0, 1], [127, 0, 0, 3]] {
        let reply = exchange(from, node, &get("/healthz")).await;
        assert_eq!(parse(&reply).0, 200, "{reply}");
    }

    // The peer listener takes more connections than the client cap and answers them all
    // (a 404 for a path it does not serve), and the cluster still replicates through it.
    let mut peers = Vec::new();
    for i in 0..12u8 {
        let mut tcp = connect_from([127, 0, 0, 1 + i % 3], peer).await;
        tcp.write_all(get("/nothing-here").as_bytes())
            .await
            .unwrap();
        peers.push(tcp);
    }
    for tcp in &mut peers {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    }
    let http = Http::new();
    let other = cluster.url(1);
    let created = http
        .post(&format!("{other}/v1/leases"), json!({"ttl_ms": 10_000}))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["lease_id"].as_u64().unwrap();
    wait_until(WAIT, || async {
        cluster
            .node(0)
            .shared_state()
            .read(|s| s.lease(id).is_some())
            .then_some(())
    })
    .await
    .expect("node 0 applies what its peers replicate while its client cap is full");

    // The crowd leaves: capacity comes back, and the refusals were counted.
    drop(held);
    let shed = |cap: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            metric(
                &http,
                &url,
                &format!("leasehold_shed_total{{cap=\"{cap}\"}}"),
            )
            .await
        }
    };
    wait_until(WAIT, || async {
        (shed("connections").await? >= 1.0).then_some(())
    })
    .await
    .expect("the node's cap counted its refusal");
    assert!(shed("connections_per_address").await.unwrap() >= 1.0);
    let ok = http.get(&format!("{url}/v1/locks")).await.unwrap();
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_tls_a_connection_past_the_cap_is_closed() {
    let cluster = small_cluster(true).await;
    let node = cluster.client_addr(0);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from([127, 0, 0, 1], node).await);
    }
    // No handshake is attempted for it: the server closes (or resets) the connection.
    let mut refused = connect_from([127, 0, 0, 1], node).await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(WAIT, refused.read(&mut buf))
        .await
        .expect("the server closes a refused connection at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(held);
    let http = Http::with(cluster.ca_pem().as_deref(), None);
    let url = cluster.url(0);
    wait_until(WAIT, || async {
        let v = metric(
            &http,
            &url,
            "leasehold_shed_total{cap=\"connections_per_address\"}",
        )
        .await?;
        (v >= 1.0).then_some(())
    })
    .await
    .unwrap();
    cluster.shutdown().await;
}

/// Requests whose bodies have not arrived are in flight: with `max_requests_in_flight = 4`,
/// three of them leave no room for a new acquire or a read (shed at 3), but a keepalive
/// and a release still pass (shed only at 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acquires_are_shed_while_keepalives_and_releases_pass() {
    let cluster = small_cluster(false).await;
    let node = cluster.client_addr(0);
    let url = cluster.url(0);
    let http = Http::new();
    let held = http
        .post(
            &format!("{url}/v1/locks/kept"),
            json!({"owner": "alice", "ttl_ms": 10_000}),
        )
        .await
        .unwrap();
    assert_eq!(held.status, 200, "{:?}", held.body);
    let lease = held.body["lease_id"].as_u64().unwrap();
    let token = held.body["token"].as_u64().unwrap();

    let mut slow = Vec::new();
    for i in 0..3u8 {
        let mut tcp = connect_from([127, 0, 0, 2 + i], node).await;
        let head = "POST /v1/leases HTTP/1.1\r\nhost: leasehold\r\ncontent-length: 64\r\n\r\n";
        tcp.write_all(head.as_bytes()).await.unwrap();
        slow.push(tcp);
    }
    wait_until(WAIT, || async {
        (metric(&http, &url, "leasehold_requests_in_flight").await? == 3.0).then_some(())
    })
    .await
    .expect("three slow requests in flight");

    let acquire = http
        .post(
            &format!("{url}/v1/locks/new"),
            json!({"owner": "bob", "ttl_ms": 10_000}),
        )
        .await
        .unwrap();
    assert_eq!(
        (acquire.status, acquire.code()),
        (503, "unavailable"),
        "{:?}",
        acquire.body
    );
    assert_eq!(acquire.retry_after.as_deref(), Some("1"));
    assert!(acquire.message().contains("limits.max_requests_in_flight"));
    let read = http.get(&format!("{url}/v1/locks/kept")).await.unwrap();
    assert_eq!(read.status, 503, "{:?}", read.body);

    let keepalive = http
        .post(&format!("{url}/v1/leases/{lease}/keepalive"), json!({}))
        .await
        .unwrap();
    assert_eq!(keepalive.status, 200, "{:?}", keepalive.body);
    let extend = http
        .post(
            &format!("{url}/v1/locks/kept/extend"),
            json!({"owner": "alice", "token": token}),
        )
        .await
        .unwrap();
    assert_eq!(extend.status, 200, "{:?}", extend.body);
    let release = http
        .delete(&format!("{url}/v1/locks/kept?owner=alice&token={token}"))
        .await
        .unwrap();
    assert_eq!(release.status, 200, "{:?}", release.body);
    let shed = metric(
        &http,
        &url,
        "leasehold_shed_total{cap=\"requests_in_flight\"}",
    )
    .await
    .unwrap();
    assert!(shed >= 2.0, "{shed}");

    drop(slow);
    wait_until(WAIT, || async {
        (metric(&http, &url, "leasehold_requests_in_flight").await? == 0.0).then_some(())
    })
    .await
    .expect("the slow requests end with their connections");
    let acquire = http
        .post(
            &format!("{url}/v1/locks/new"),
            json!({"owner": "bob", "ttl_ms": 10_000}),
        )
        .await
        .unwrap();
    assert_eq!(acquire.status, 200, "{:?}", acquire.body);
    cluster.shutdown().await;
}

/// With `max_long_polls = 2`, two queued acquires fill the cap: a third, and a blocking
/// query, get 503; a plain acquire is not a long-poll and passes; parked long-polls hold
/// no in-flight permit; and the cap frees when they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_polls_past_their_cap_get_503() {
    let cluster = small_cluster(false).await;
    let url = cluster.url(0);
    let http = Http::new();
    let alice = http
        .post(
            &format!("{url}/v1/locks/busy"),
            json!({"owner": "alice", "ttl_ms": 10_000}),
        )
        .await
        .unwrap();
    assert_eq!(alice.status, 200, "{:?}", alice.body);
    let token = alice.body["token"].as_u64().unwrap();
    let mut waiters = Vec::new();
    for owner in ["bob", "carol"] {
        let (http, url) = (Http::new(), url.clone());
        waiters.push(tokio::spawn(async move {
            http.post(
                &format!("{url}/v1/locks/busy"),
                json!({"owner": owner, "ttl_ms": 10_000, "wait_ms": 8_000}),
            )
            .await
            .unwrap()
        }));
    }
    // Both parked: a parked long-poll gives back its in-flight permit.
    wait_until(WAIT, || async {
        let polls = metric(&http, &url, "leasehold_long_polls_in_flight").await?;
        let in_flight = metric(&http, &url, "leasehold_requests_in_flight").await?;
        (polls == 2.0 && in_flight == 0.0).then_some(())
    })
    .await
    .expect("two queued acquires parked, holding no in-flight permit");

    let third = http
        .post(
            &format!("{url}/v1/locks/busy"),
            json!({"owner": "dave", "ttl_ms": 10_000, "wait_ms": 8_000}),
        )
        .await
        .unwrap();
    assert_eq!(
        (third.status, third.code()),
        (503, "unavailable"),
        "{:?}",
        third.body
    );
    assert_eq!(third.retry_after.as_deref(), Some("1"));
    assert!(third.message().contains("limits.max_long_polls"));
    let index = alice.body["index"].as_u64().unwrap_or(1);
    let query = http
        .get(&format!("{url}/v1/locks/busy?index={index}&wait_ms=5000"))
        .await
        .unwrap();
    assert_eq!(query.status, 503, "{:?}", query.body);
    let plain = http
        .post(
            &format!("{url}/v1/locks/other"),
            json!({"owner": "erin", "ttl_ms": 10_000}),
        )
        .await
        .unwrap();
    assert_eq!(plain.status, 200, "{:?}", plain.body);
    let shed = metric(&http, &url, "leasehold_shed_total{cap=\"long_polls\"}")
        .await
        .unwrap();
    assert!(shed >= 2.0, "{shed}");

    // Alice leaves; the lock is handed to one waiter, then to the other.
    let release = http
        .delete(&format!("{url}/v1/locks/busy?owner=alice&token={token}"))
        .await
        .unwrap();
    assert_eq!(release.status, 200, "{:?}", release.body);
    let mut released = vec!["alice".to_string()];
    for _ in 0..2 {
        let (h, u, r) = (&http, &url, &released);
        let (owner, token) = wait_until(WAIT, || async move {
            let s = h.get(&format!("{u}/v1/locks/busy")).await.ok()?;
            let owner = s.body["owner"].as_str()?.to_string();
            let token = s.body["token"].as_u64()?;
            (!r.contains(&owner)).then_some((owner, token))
        })
        .await
        .expect("a waiter is handed the lock");
        let release = http
            .delete(&format!("{url}/v1/locks/busy?owner={owner}&token={token}"))
            .await
            .unwrap();
        assert_eq!(release.status, 200, "{:?}", release.body);
        released.push(owner);
    }
    for waiter in waiters {
        let reply = waiter.await.unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    wait_until(WAIT, || async {
        (metric(&http, &url, "leasehold_long_polls_in_flight").await? == 0.0).then_some(())
    })
    .await
    .unwrap();
    let dave = http
        .post(
            &format!("{url}/v1/locks/busy"),
            json!({"owner": "dave", "ttl_ms": 10_000, "wait_ms": 100}),
        )
        .await
        .unwrap();
    assert_eq!(
        dave.status, 200,
        "a blocking acquire is admitted again: {:?}",
        dave.body
    );
    cluster.shutdown().await;
}
