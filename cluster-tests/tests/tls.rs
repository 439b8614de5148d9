//! TLS on a real three-node cluster (SPEC §5 `[tls]`): both ports speak only HTTPS, a
//! client must trust the cluster's CA, peers authenticate each other with certificates
//! (mutual TLS) so a stranger can neither vote nor append, `tls.client_ca` makes clients
//! present a certificate, and SIGHUP swaps certificates and tokens in a running process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use leasehold_api::client::is_tls_failure;
use leasehold_api::{Client, ErrorCode, LeaseService};
use leasehold_cluster_tests::tls::TestCa;
use leasehold_cluster_tests::{leasehold_bin, wait_until, ClusterOptions, TestCluster};
use leasehold_config::Config;
use leasehold_node::peer_probe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn tls_cluster() -> TestCluster {
    TestCluster::start(ClusterOptions {
        tls: true,
        ..ClusterOptions::default()
    })
    .await
    .expect("a TLS cluster starts")
}

fn client(cluster: &TestCluster, i: usize) -> leasehold_api::ClientBuilder {
    Client::builder([cluster.url(i)]).ca_cert_pem(cluster.ca_pem().unwrap())
}

/// Everything a server sends back to `request` written on a fresh TCP connection, until it
/// closes the connection (or 3 s pass).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_gets_no_answer_and_only_clients_that_trust_the_ca_get_in() {
    let cluster = tls_cluster().await;
    assert!(cluster.url(0).starts_with("https://"));

    // Plain HTTP on either port: no HTTP answer at all, on any node.
    for i in 0..3 {
        let plain = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
        for (what, addr) in [
            ("client", cluster.client_addr(i)),
            ("peer", cluster.config(i).peer_addr),
        ] {
            let reply = raw_exchange(addr, plain).await;
            assert!(
                !reply.starts_with(b"HTTP/"),
                "node {i}'s {what} port answered plain HTTP: {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        let e = reqwest::Client::new()
            .get(format!("http://{}/healthz", cluster.client_addr(i)))
            .send()
            .await;
        assert!(e.is_err(), "node {i}: http:// got {e:?}");
    }

    // A client that trusts the CA gets in; one that does not fails the handshake, and
    // the error says so (with the flag that fixes it).
    let status = client(&cluster, 0).build().unwrap().cluster_status().await;
    assert!(status.is_ok(), "{status:?}");
    let e = Client::builder([cluster.url(0)])
        .build()
        .unwrap()
        .cluster_status()
        .await
        .unwrap_err();
    assert!(is_tls_failure(&e), "{e}");
    assert!(e.message.contains("--cacert"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let stranger = TestCa::new(dir.path(), "stranger CA").unwrap();
    let e = Client::builder([cluster.url(1)])
        .ca_cert_pem(stranger.cert_pem())
        .build()
        .unwrap()
        .cluster_status()
        .await
        .unwrap_err();
    assert!(is_tls_failure(&e), "{e}");
    cluster.shutdown().await;
}

/// A reqwest client that trusts the cluster's CA and presents `identity` (PEM cert + key).
fn peer_http(ca_pem: &[u8], identity: Option<(String, String)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap());
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}\n{key}");
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn post_peer(
    http: &reqwest::Client,
    peer: std::net::SocketAddr,
    body: Vec<u8>,
) -> Result<u16, String> {
    // The nodes' certificates name 127.0.0.1, so the address is the name checked.
    let url = format!("https://{peer}{}", peer_probe::PATH);
    match http
        .post(url)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
    {
        Ok(resp) => Ok(resp.status().as_u16()),
        Err(e) => Err(format!("{e:?}")),
    }
}

async fn terms(cluster: &TestCluster) -> Vec<(u64, Option<u64>)> {
    let mut out = Vec::new();
    for i in 0..3 {
        let s = client(cluster, i)
            .build()
            .unwrap()
            .cluster_status()
            .await
            .unwrap();
        out.push((s.term, s.leader_id));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_from_the_cluster_ca_cannot_vote_or_append() {
    let cluster = tls_cluster().await;
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let ca_pem = cluster.ca_pem().unwrap();
    let before = terms(&cluster).await;
    let term = before.iter().map(|(t, _)| *t).max().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let other_ca = TestCa::new(dir.path(), "another cluster's CA").unwrap();
    let strangers = [
        ("no client certificate", peer_http(&ca_pem, None)),
        (
            "a certificate from another CA",
            peer_http(&ca_pem, Some(other_ca.issue_pem("intruder").unwrap())),
        ),
    ];
    for (what, http) in &strangers {
        for i in 0..3 {
            let peer = cluster.config(i).peer_addr;
            // A vote from a candidate far ahead, and a heartbeat from a leader far ahead:
            // either, if served, would move the node to that term.
            for (rpc, body) in [
                ("vote", peer_probe::vote_request(99, term + 100)),
                ("append", peer_probe::heartbeat(99, term + 100)),
            ] {
                let result = post_peer(http, peer, body).await;
                assert!(
                    result.is_err(),
                    "node {i} answered a {rpc} from a peer with {what}: {result:?}"
                );
            }
        }
    }
    // Nothing moved: same terms, same leader.
    let after = terms(&cluster).await;
    assert_eq!(before, after, "a refused peer changed the cluster");
    assert_eq!(
        cluster.leader(),
        Some(leader),
        "the leader is still the leader"
    );

    // The same heartbeat, with a certificate the cluster's CA signed, is served: the
    // refusals above were the certificate's doing, not a malformed message's.
    let certs = cluster.certs().unwrap();
    let (cert, key) = &certs.nodes[0];
    let member = peer_http(
        &ca_pem,
        Some((
            std::fs::read_to_string(cert).unwrap(),
            std::fs::read_to_string(key).unwrap(),
        )),
    );
    let follower = (leader + 1) % 3;
    let peer = cluster.config(follower).peer_addr;
    let status = post_peer(&member, peer, peer_probe::heartbeat(99, term + 100)).await;
    assert_eq!(status, Ok(200), "a member's certificate is served");
    wait_until(Duration::from_secs(5), || async {
        let s = client(&cluster, follower)
            .build()
            .unwrap()
            .cluster_status()
            .await
            .ok()?;
        (s.term >= term + 100).then_some(())
    })
    .await
    .expect("the served heartbeat moved the follower to the new term");
    cluster.shutdown().await;
}

/// The client CA of [`client_ca_cluster`] (the harness's config tweak is a plain function).
fn client_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("leasehold-tls-test-{}", std::process::id()));
        TestCa::new(&dir, "clients CA").unwrap()
    })
}

fn with_client_ca(config: &mut Config) {
    config.tls.client_ca = Some(client_ca().cert_path.clone());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_clients_must_present_a_certificate_it_signed() {
    let cluster = TestCluster::start(ClusterOptions {
        tls: true,
        tweak: with_client_ca,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = client_ca().issue_files(dir.path(), "app").unwrap();
    for i in 0..3 {
        let ok = client(&cluster, i)
            .identity_files(&cert, &key)
            .build()
            .unwrap()
            .cluster_status()
            .await;
        assert!(ok.is_ok(), "node {i}: {ok:?}");

        let e = client(&cluster, i)
            .build()
            .unwrap()
            .cluster_status()
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "node {i}: {e}");

        // A certificate of the peers' CA is not a client certificate here.
        let (node_cert, node_key) = &cluster.certs().unwrap().nodes[i];
        let e = client(&cluster, i)
            .identity_files(node_cert, node_key)
            .build()
            .unwrap()
            .cluster_status()
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable, "node {i}: {e}");
    }
    // The peers still speak among themselves: a write through a follower commits.
    let follower = cluster.follower().unwrap();
    let c = client(&cluster, follower)
        .identity_files(&cert, &key)
        .build()
        .unwrap();
    leasehold_api::guard::Lock::new(&c, "jobs/a")
        .acquire()
        .await
        .expect("a lock through a follower")
        .release()
        .await
        .unwrap();
    cluster.shutdown().await;
}

/// `leasehold serve` on free loopback ports, logging at info to `log_path`, with the
/// flags `more` adds; the child, its client address and its peer address.
async fn spawn_serve(
    log_path: &Path,
    more: impl FnOnce(&mut tokio::process::Command),
) -> (
    tokio::process::Child,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let log = std::fs::File::create(log_path).unwrap();
    let (client_addr, peer_addr) = (free_addr().await, free_addr().await);
    let mut cmd = tokio::process::Command::new(leasehold_bin());
    cmd.arg("serve")
        .args(["--client-addr", &client_addr.to_string()])
        .args(["--peer-addr", &peer_addr.to_string()]);
    more(&mut cmd);
    let child = cmd
        .env("LEASEHOLD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, client_addr, peer_addr)
}

/// A free loopback address (bound, then released for the process to take).
async fn free_addr() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn tokens_toml(name: &str, token: &str) -> String {
    format!(
        "[[token]]\nname = {name:?}\nsha256 = {:?}\nrole = \"admin\"\nprefixes = [\"\"]\n",
        leasehold_api::auth::token_digest_hex(token)
    )
}

/// Write node certificates of `ca` to the paths the node was started with.
fn install(ca: &TestCa, dir: &Path, cert: &Path, key: &Path, ca_path: &Path) {
    let (c, k) = ca.issue_files(dir, "issued").unwrap();
    std::fs::copy(c, cert).unwrap();
    std::fs::copy(k, key).unwrap();
    std::fs::copy(&ca.cert_path, ca_path).unwrap();
}

async fn status_with(url: &str, ca: &TestCa, token: &str) -> Result<(), leasehold_api::ApiError> {
    Client::builder([url])
        .ca_cert_pem(ca.cert_pem())
        .token(token)
        .attempt_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
        .cluster_status()
        .await
        .map(|_| ())
}

/// A `leasehold serve` process re-reads its certificates and its tokens on SIGHUP: new
/// connections get the new certificate, the new token works and the old one is refused,
/// and a bad file is refused with a log line while the material in force keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_tokens_in_a_running_process() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path();
    let (cert, key, ca_path, tokens): (PathBuf, PathBuf, PathBuf, PathBuf) = (
        files.join("node.crt"),
        files.join("node.key"),
        files.join("ca.crt"),
        files.join("tokens.toml"),
    );
    let first = TestCa::new(&files.join("first"), "first CA").unwrap();
    let second = TestCa::new(&files.join("second"), "second CA").unwrap();
    install(&first, &files.join("first"), &cert, &key, &ca_path);
    std::fs::write(&tokens, tokens_toml("first", "tok-first")).unwrap();

    let log_path = files.join("node.log");
    let (mut child, client_addr, _) = spawn_serve(&log_path, |cmd| {
        cmd.arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--tls-ca")
            .arg(&ca_path)
            .arg("--auth-tokens-file")
            .arg(&tokens);
    })
    .await;
    let pid = child.id().unwrap() as libc::pid_t;
    let url = format!("https://{client_addr}");
    wait_until(Duration::from_secs(15), || async {
        status_with(&url, &first, "tok-first").await.ok()
    })
    .await
    .expect("the node serves with the first certificate and token");
    assert!(is_tls_failure(
        &status_with(&url, &second, "tok-first").await.unwrap_err()
    ));

    // New files, then SIGHUP.
    install(&second, &files.join("second"), &cert, &key, &ca_path);
    std::fs::write(&tokens, tokens_toml("second", "tok-second")).unwrap();
    // SAFETY: kill(2) on the child this test spawned.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_until(Duration::from_secs(10), || async {
        status_with(&url, &second, "tok-second").await.ok()
    })
    .await
    .expect("after SIGHUP, the second certificate and token serve");
    let e = status_with(&url, &first, "tok-second").await.unwrap_err();
    assert!(is_tls_failure(&e), "the old CA no longer verifies: {e}");
    let e = status_with(&url, &second, "tok-first").await.unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::Unauthorized,
        "the old token is gone: {e}"
    );

    // A broken certificate file: the reload is refused and logged, the second certificate
    // keeps serving.
    std::fs::write(&cert, "not a certificate").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_until(Duration::from_secs(10), || async {
        let log = std::fs::read_to_string(&log_path).ok()?;
        log.contains("reload refused").then_some(())
    })
    .await
    .expect("the refused reload is logged");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("tls.cert") && log.contains("holds no PEM certificate"),
        "the log names the file and what is wrong:\n{log}"
    );
    status_with(&url, &second, "tok-second")
        .await
        .expect("the certificate in force keeps serving");
    assert!(
        !log.contains("the peer port is unauthenticated"),
        "a node with [tls] does not warn about its peer port:\n{log}"
    );
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// A request refused before its body is read (401 without a token, 400 for a bad query,
/// 404, 405) still gets its reply: the server reads the body first, so it never closes a
/// connection with unread input, which would reset it under the reply (found by the
/// fuzzer over TLS, where the client saw a broken pipe instead of the 401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_before_the_body_is_read_still_reaches_the_client() {
    let cluster = TestCluster::start(ClusterOptions {
        tls: true,
        tweak: with_tokens,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let ca = reqwest::Certificate::from_pem(&cluster.ca_pem().unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let url = cluster.url(0);
    // Under limits.max_body_bytes (128 KiB), so only the refusal itself is at stake.
    let body = vec![b'x'; 120 * 1024];
    for round in 0..20 {
        for (method, path, token, expected) in [
            ("POST", "/v1/locks/k", None, 401),
            ("GET", "/v1/locks/k/wait?index=-1", Some("tok-jobs"), 400),
            ("PATCH", "/v1/locks/k", Some("tok-jobs"), 405),
        ] {
            let mut req = http
                .request(method.parse().unwrap(), format!("{url}{path}"))
                .body(body.clone());
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            let resp = req.send().await;
            let status = resp.as_ref().map(|r| r.status().as_u16());
            assert_eq!(
                status.as_ref().ok(),
                Some(&expected),
                "round {round}: {method} {path}: {resp:?}"
            );
        }
    }
    cluster.shutdown().await;
}

fn with_tokens(config: &mut Config) {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    let path = FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("leasehold-tls-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        std::fs::write(&path, tokens_toml("jobs", "tok-jobs")).unwrap();
        path
    });
    config.auth.tokens_file = Some(path.clone());
}

/// A node with neither `[tls]` nor `cluster.secret_file` says at start that anyone who
/// can reach its peer port can vote and append; with a secret it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_an_open_peer_port_warns_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-long-enough-cluster-secret-for-the-test").unwrap();
    for with_secret in [false, true] {
        let log_path = dir.path().join(format!("node-{with_secret}.log"));
        let (mut child, _, peer_addr) = spawn_serve(&log_path, |cmd| {
            if with_secret {
                cmd.arg("--cluster-secret-file").arg(&secret);
            }
        })
        .await;
        let text = wait_until(Duration::from_secs(15), || async {
            let text = std::fs::read_to_string(&log_path).ok()?;
            text.contains("leasehold node started").then_some(text)
        })
        .await
        .expect("the node starts");
        let warned = text.contains("the peer port is unauthenticated");
        assert_eq!(warned, !with_secret, "secret {with_secret}:\n{text}");
        if with_secret {
            // The secret is what stands between the peer port and a stranger's vote.
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            let url = format!("http://{peer_addr}{}", peer_probe::PATH);
            for (header, expected) in [
                (None, 401),
                (Some("wrong"), 401),
                (Some("a-long-enough-cluster-secret-for-the-test"), 200),
            ] {
                let mut req = http.post(&url).body(peer_probe::vote_request(99, 1));
                if let Some(h) = header {
                    req = req.header("x-leasehold-secret", h);
                }
                let status = req.send().await.unwrap().status().as_u16();
                assert_eq!(status, expected, "secret header {header:?}");
            }
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    // An empty secret would let through anyone who sends an empty header: refused.
    std::fs::write(&secret, "  \n").unwrap();
    let out = tokio::process::Command::new(leasehold_bin())
        .args([
            "serve",
            "--client-addr",
            "127.0.0.1:0",
            "--peer-addr",
            "127.0.0.1:0",
        ])
        .arg("--cluster-secret-file")
        .arg(&secret)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("serve exits instead of serving")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve started with an empty secret");
    assert!(
        stderr.contains("cluster secret file") && stderr.contains("empty"),
        "{stderr}"
    );
}
