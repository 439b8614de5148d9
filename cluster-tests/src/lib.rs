//! Test harnesses for leasehold clusters.
//!
//! - [`TestCluster`]: in-process clusters of real nodes (real Raft, real sockets on
//!   loopback ephemeral ports, optionally real sled storage), with kill, restart and
//!   partition (peer links cut by the nodes' fault switches).
//! - [`Http`]: a tiny JSON-over-HTTP helper for tests that speak to the API as curl would.
//! - [`wait_until`]: poll a condition with a deadline instead of sleeping.
//! - [`procs`]: clusters of real `leasehold` processes with kill -9, pause, partitions.
//! - [`chaos`]: the workload, its recorded history and the checker.

pub mod chaos;
pub mod clocks;
pub mod linear;
pub mod procs;
pub mod tls;

use openraft::async_runtime::WatchReceiver;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use leasehold_config::{Config, Member};
use leasehold_node::{Listeners, Node};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Options for a [`TestCluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// Persist with sled under this directory (one subdirectory per node).
    pub data_dir: Option<PathBuf>,
    /// Applied to every node's config before start.
    pub tweak: fn(&mut Config),
    /// Serve both listeners over TLS (mutual TLS between peers), with a CA and node
    /// certificates made for the cluster ([`TestCluster::ca_pem`]).
    pub tls: bool,
    /// Members listed in every node's `cluster.members` that this cluster does not start
    /// (ids after the started nodes'), for tests of what nodes do with a member that is
    /// down or is not a leasehold peer at all.
    pub absent_members: Vec<SocketAddr>,
    /// List the members by host name (`localhost:PORT`) and have each node advertise its
    /// name, as a Kubernetes StatefulSet does with its pods' stable names.
    pub host_names: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            data_dir: None,
            tweak: |_| {},
            tls: false,
            absent_members: Vec::new(),
            host_names: false,
        }
    }
}

struct Slot {
    config: Config,
    node: Option<Node>,
}

/// An in-process cluster of real nodes on loopback.
pub struct TestCluster {
    slots: Vec<Slot>,
    /// The certificates of a TLS cluster (removed with the cluster).
    certs: Option<(tempfile::TempDir, leasehold_node::LocalCerts)>,
}

impl TestCluster {
    /// Start a three-node in-memory cluster and wait for a leader.
    pub async fn start3() -> anyhow::Result<Self> {
        Self::start(ClusterOptions::default()).await
    }

    pub async fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        let mut listeners = Vec::new();
        for _ in 0..options.nodes {
            let client = TcpListener::bind("127.0.0.1:0").await?;
            let peer = TcpListener::bind("127.0.0.1:0").await?;
            listeners.push((client, peer));
        }
        let mut members: Vec<Member> = listeners
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| -> anyhow::Result<Member> {
                let bound = peer.local_addr()?;
                let peer_addr = match options.host_names {
                    // The name, not the address: resolved by every peer when it connects.
                    true => format!("localhost:{}", bound.port())
                        .parse()
                        .map_err(anyhow::Error::msg)?,
                    false => bound.into(),
                };
                Ok(Member {
                    id: i as u64 + 1,
                    peer_addr,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        for (i, &peer_addr) in options.absent_members.iter().enumerate() {
            members.push(Member {
                id: (options.nodes + i) as u64 + 1,
                peer_addr: peer_addr.into(),
            });
        }
        let certs = if options.tls {
            let dir = tempfile::tempdir()?;
            let certs = leasehold_node::generate_local_certs(dir.path(), options.nodes as u64)
                .map_err(anyhow::Error::msg)?;
            Some((dir, certs))
        } else {
            None
        };
        let mut configs = Vec::new();
        for (i, (client, peer)) in listeners.iter().enumerate() {
            let mut config = Config {
                node_id: i as u64 + 1,
                client_addr: client.local_addr()?,
                peer_addr: peer.local_addr()?,
                data_dir: options
                    .data_dir
                    .as_ref()
                    .map(|d| d.join(format!("node-{}", i + 1))),
                ..Config::default()
            };
            config.cluster.members = members.clone();
            if options.host_names {
                config.advertise_peer_addr = Some(members[i].peer_addr.clone());
            }
            if let Some((_, certs)) = &certs {
                config.tls.cert = Some(certs.nodes[i].0.clone());
                config.tls.key = Some(certs.nodes[i].1.clone());
                config.tls.ca = Some(certs.ca.clone());
            }
            (options.tweak)(&mut config);
            configs.push(config);
        }
        let starts =
            configs
                .iter()
                .cloned()
                .zip(listeners)
                .map(|(config, (client, peer))| async move {
                    Node::start_on(config, Listeners { client, peer }).await
                });
        let nodes = futures::future::join_all(starts).await;
        let mut slots = Vec::new();
        for (config, node) in configs.into_iter().zip(nodes) {
            slots.push(Slot {
                config,
                node: Some(node.context("node failed to start")?),
            });
        }
        let cluster = TestCluster { slots, certs };
        cluster.wait_for_leader(Duration::from_secs(10)).await?;
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The running node at `i` (0-based). Panics if it was killed: a test bug.
    pub fn node(&self, i: usize) -> &Node {
        self.slots[i].node.as_ref().expect("node is running")
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.slots[i].node.is_some()
    }

    pub fn config(&self, i: usize) -> &Config {
        &self.slots[i].config
    }

    /// Base URL of node `i`'s HTTP API (`https://` for a TLS cluster).
    pub fn url(&self, i: usize) -> String {
        let scheme = match self.slots[i].config.tls.enabled() {
            true => "https",
            false => "http",
        };
        format!("{scheme}://{}", self.slots[i].config.client_addr)
    }

    /// The CA certificate (PEM) of a TLS cluster.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        let (_, certs) = self.certs.as_ref()?;
        std::fs::read(&certs.ca).ok()
    }

    /// The certificates of a TLS cluster.
    pub fn certs(&self) -> Option<&leasehold_node::LocalCerts> {
        self.certs.as_ref().map(|(_, c)| c)
    }

    pub fn client_addr(&self, i: usize) -> SocketAddr {
        self.slots[i].config.client_addr
    }

    /// Index of the node that leads, as the running nodes agree on it.
    pub fn leader(&self) -> Option<usize> {
        let mut leader = None;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(node) = &slot.node else { continue };
            let m = node.raft().metrics().borrow_watched().clone();
            if m.state == openraft::ServerState::Leader {
                // With several self-declared leaders (a partition), take the newest term.
                match leader {
                    Some((_, term)) if term >= m.current_term => {}
                    _ => leader = Some((i, m.current_term)),
                }
            }
        }
        leader.map(|(i, _)| i)
    }

    /// Wait until a running node leads and every running node knows it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        wait_until(timeout, || async {
            let leader = self.leader()?;
            let leader_id = leader as u64 + 1;
            let agreed = self
                .slots
                .iter()
                .filter_map(|s| s.node.as_ref())
                .all(|n| n.raft().metrics().borrow_watched().current_leader == Some(leader_id));
            agreed.then_some(leader)
        })
        .await
        .context("no leader elected")
    }

    /// Wait until a leader other than `old` is elected by the running nodes.
    pub async fn wait_for_new_leader(
        &self,
        old: usize,
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        wait_until(timeout, || async {
            let leader = self.leader()?;
            (leader != old).then_some(leader)
        })
        .await
        .context("no new leader elected")
    }

    /// Index of some running follower.
    pub fn follower(&self) -> Option<usize> {
        let leader = self.leader();
        (0..self.slots.len()).find(|i| Some(*i) != leader && self.slots[*i].node.is_some())
    }

    /// Stop node `i` abruptly for the cluster (its tasks and listeners end; in-memory
    /// state is lost, sled state stays on disk).
    pub async fn kill(&mut self, i: usize) {
        if let Some(node) = self.slots[i].node.take() {
            node.shutdown().await;
        }
    }

    /// Start node `i` again on its old addresses with its old config.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.slots[i].node.is_some() {
            bail!("node {i} is running");
        }
        let config = self.slots[i].config.clone();
        // The old node's last tasks may still hold its sockets or its sled lock for a
        // moment after shutdown: retry until they let go.
        let node = wait_until(Duration::from_secs(15), || async {
            let client = TcpListener::bind(config.client_addr).await.ok()?;
            let peer = TcpListener::bind(config.peer_addr).await.ok()?;
            Node::start_on(config.clone(), Listeners { client, peer })
                .await
                .ok()
        })
        .await
        .context("restarting the node")?;
        self.slots[i].node = Some(node);
        Ok(())
    }

    /// Cut every peer link between node `i` and the others (both directions).
    pub fn isolate(&self, i: usize) {
        for j in 0..self.slots.len() {
            if j != i {
                self.cut(i, j);
            }
        }
    }

    /// Cut the peer link between `a` and `b` in both directions.
    pub fn cut(&self, a: usize, b: usize) {
        let (pa, pb) = (
            self.slots[a].config.peer_addr,
            self.slots[b].config.peer_addr,
        );
        if let Some(n) = &self.slots[a].node {
            n.faults().block(pb);
        }
        if let Some(n) = &self.slots[b].node {
            n.faults().block(pa);
        }
    }

    /// Restore every peer link.
    pub fn heal(&self) {
        for slot in &self.slots {
            if let Some(n) = &slot.node {
                n.faults().clear();
            }
        }
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.slots.len() {
            self.kill(i).await;
        }
    }
}

/// The path of the `leasehold` binary, built on first use if the test run did not build it.
pub fn leasehold_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        // Test binaries live in target/<profile>/deps; the binary in target/<profile>.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target/<profile> directory")
            .to_path_buf();
        let bin = profile_dir.join("leasehold");
        let mut build = std::process::Command::new(env!("CARGO"));
        // With the bug switches compiled in (each off unless `LEASEHOLD_BUG` names it), as
        // the tests' own build of the node has them: one build of the node serves both.
        build.args([
            "build",
            "-p",
            "leasehold-node",
            "--bin",
            "leasehold",
            "--features",
            "bug-switches",
        ]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the leasehold binary failed");
        assert!(bin.exists(), "no binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A loopback address free to bind now, never one this process handed out before.
///
/// The listener is closed before the caller's process binds the port, so the kernel may
/// offer the same port to the next call: a cluster once got a node's client port as
/// another node's peer port. Remembering what was handed out rules that out within
/// one test or loadgen process.
pub async fn free_addr() -> anyhow::Result<SocketAddr> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let mut seen = HANDED_OUT.lock().expect("port list poisoned");
        if !seen.contains(&addr.port()) {
            seen.push(addr.port());
            return Ok(addr);
        }
    }
    bail!("no fresh loopback port after 1000 tries")
}

/// An acquire by `owner` under a new `ttl_ms` lease, queueing for `wait_ms` if given.
pub fn acquire_request(
    owner: &str,
    ttl_ms: u64,
    wait_ms: Option<u64>,
) -> leasehold_api::wire::AcquireRequest {
    leasehold_api::wire::AcquireRequest {
        owner: owner.into(),
        ttl_ms: Some(ttl_ms),
        wait_ms,
        ..Default::default()
    }
}

/// Poll `check` every few milliseconds until it returns `Some`, or fail after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A JSON HTTP helper that speaks to the API the way curl would.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

/// A reply: status, `X-Leasehold-Index` if present, and the JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub index: Option<u64>,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Self {
        Self::with(None, None)
    }

    /// A counter or gauge (or a histogram's `_count`) from a node's `/metrics` text.
    pub async fn metric(&self, base: &str, name: &str) -> u64 {
        let (status, _, text) = self
            .text("GET", &format!("{base}/metrics"), None)
            .await
            .expect("metrics");
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
            .parse()
            .expect("a number")
    }

    /// An HTTP helper that trusts `ca_pem` (for https clusters) and sends `token` as the
    /// bearer token of every request.
    pub fn with(ca_pem: Option<&[u8]>, token: Option<&str>) -> Self {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem).expect("the CA is PEM");
            builder = builder.add_root_certificate(cert);
        }
        if let Some(token) = token {
            let mut headers = reqwest::header::HeaderMap::new();
            let value = format!("Bearer {token}")
                .parse()
                .expect("a token is a header value");
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Http {
            client: builder.build().expect("a reqwest client builds"),
        }
    }

    pub async fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.client.request(method, url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        Self::finish(req).await
    }

    /// Send a raw body with a JSON content type (for malformed-input tests).
    pub async fn raw(
        &self,
        method: &str,
        url: &str,
        body: impl Into<reqwest::Body>,
    ) -> anyhow::Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let req = self
            .client
            .request(method, url)
            .header("content-type", "application/json")
            .body(body);
        Self::finish(req).await
    }

    async fn finish(req: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("x-leasehold-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "non-JSON reply ({status}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })?
        };
        Ok(Reply {
            status,
            index,
            retry_after,
            body,
        })
    }

    pub async fn get(&self, url: &str) -> anyhow::Result<Reply> {
        self.request("GET", url, None).await
    }

    /// Send a request whose reply is not JSON (the status page, `/metrics`): status,
    /// `Content-Type` and body text.
    pub async fn text(
        &self,
        method: &str,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(u16, String, String)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.client.request(method, url);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok((status, content_type, resp.text().await?))
    }

    pub async fn post(&self, url: &str, body: Value) -> anyhow::Result<Reply> {
        self.request("POST", url, Some(body)).await
    }

    pub async fn put(&self, url: &str, body: Value) -> anyhow::Result<Reply> {
        self.request("PUT", url, Some(body)).await
    }

    pub async fn delete(&self, url: &str) -> anyhow::Result<Reply> {
        self.request("DELETE", url, None).await
    }
}
