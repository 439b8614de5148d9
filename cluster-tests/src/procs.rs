//! Clusters of real `leasehold` processes, with faults: `kill -9`, SIGSTOP/SIGCONT,
//! restart, link cuts (partitions), and membership changes.
//!
//! Every node sends its peer traffic through its own HTTP forward proxy
//! (`cluster.peer_proxy`), run here in the test process. The proxy of node `a` knows the
//! sender (it is `a`'s) and the target (the request's absolute URI), so cutting the link
//! `a`–`b` is: `a`'s proxy blackholes requests to `b`, and `b`'s to `a`. A blackholed
//! request hangs until its sender gives up, as packets to a partitioned host would.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use leasehold_api::wire::AddMemberRequest;
use leasehold_api::{Client, LeaseService};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::{leasehold_bin, wait_until};

/// An HTTP forward proxy for one node's outgoing peer traffic, with a switch per target.
pub struct LinkProxy {
    pub addr: SocketAddr,
    blocked: Arc<RwLock<HashSet<String>>>,
    server: JoinHandle<()>,
}

#[derive(Clone)]
struct ProxyState {
    blocked: Arc<RwLock<HashSet<String>>>,
    http: reqwest::Client,
}

impl LinkProxy {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let blocked = Arc::new(RwLock::new(HashSet::new()));
        let state = ProxyState {
            blocked: blocked.clone(),
            http: reqwest::Client::builder().no_proxy().build()?,
        };
        let app = axum::Router::new()
            .fallback(forward)
            .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(state);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(LinkProxy {
            addr,
            blocked,
            server,
        })
    }

    pub fn block(&self, target: SocketAddr) {
        self.blocked
            .write()
            .expect("proxy lock")
            .insert(target.to_string());
    }

    pub fn unblock_all(&self) {
        self.blocked.write().expect("proxy lock").clear();
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn forward(State(state): State<ProxyState>, req: Request) -> Response {
    let uri = req.uri().clone();
    let Some(authority) = uri.authority().map(|a| a.to_string()) else {
        return (StatusCode::BAD_REQUEST, "absolute-form URI required").into_response();
    };
    let cut = state
        .blocked
        .read()
        .expect("proxy lock")
        .contains(&authority);
    if cut {
        // A partition: the request goes nowhere; the sender's timeout ends it.
        std::future::pending::<()>().await;
    }
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body: Bytes = match axum::body::to_bytes(req.into_body(), 256 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut out = state.http.request(method, uri.to_string()).body(body);
    for (name, value) in headers.iter() {
        if name != "host" && name != "proxy-connection" && name != "connection" {
            out = out.header(name, value);
        }
    }
    match out.send().await {
        Ok(resp) => {
            let status = resp.status();
            let bytes = resp.bytes().await.unwrap_or_default();
            Response::builder()
                .status(status)
                .body(Body::from(bytes))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

/// One node process and what it takes to start it again.
pub struct ProcNode {
    pub id: u64,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub proxy: LinkProxy,
    members: String,
    child: Option<Child>,
    paused: bool,
}

impl ProcNode {
    pub fn url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("node.log"))?;
        let child = Command::new(leasehold_bin())
            .arg("serve")
            .args(["--node-id", &self.id.to_string()])
            .args(["--client-addr", &self.client_addr.to_string()])
            .args(["--peer-addr", &self.peer_addr.to_string()])
            .args(["--cluster-members", &self.members])
            .args(["--cluster-peer-proxy", &self.proxy.addr.to_string()])
            .args([
                "--data-dir",
                &self.data_dir.join("data").display().to_string(),
            ])
            .env("LEASEHOLD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn leasehold serve")?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on a child process we spawned.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }
}

/// A cluster of real processes with sled data directories.
pub struct ProcCluster {
    pub nodes: Vec<ProcNode>,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
    pub faults: u64,
}

async fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?)
}

impl ProcCluster {
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(ProcNode {
                id: i as u64 + 1,
                client_addr: free_addr().await?,
                peer_addr: free_addr().await?,
                data_dir: dir.path().join(format!("node-{}", i + 1)),
                proxy: LinkProxy::start().await?,
                members: String::new(),
                child: None,
                paused: false,
            });
        }
        let members: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect();
        for node in &mut nodes {
            node.members = members.join(",");
            node.spawn().await?;
        }
        let cluster = ProcCluster {
            nodes,
            _dir: dir,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(2))
                .build()?,
            faults: 0,
        };
        cluster.wait_for_leader(Duration::from_secs(20)).await?;
        Ok(cluster)
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ProcNode::url).collect()
    }

    /// A client for every node's endpoint, starting at node `first`.
    pub fn client_from(&self, first: usize, attempt_timeout: Duration) -> Client {
        let n = self.nodes.len();
        let urls: Vec<String> = (0..n).map(|k| self.nodes[(first + k) % n].url()).collect();
        Client::with_timeouts(urls, Duration::from_secs(10), attempt_timeout)
            .expect("valid endpoints")
    }

    /// The node that leads, as the running, unpaused nodes report it.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.is_running() || node.paused {
                continue;
            }
            let Ok(resp) = self
                .http
                .get(format!("{}/v1/cluster", node.url()))
                .send()
                .await
            else {
                continue;
            };
            let Ok(status) = resp.json::<serde_json::Value>().await else {
                continue;
            };
            if status["leader_id"].as_u64() == Some(node.id) {
                let term = status["term"].as_u64().unwrap_or(0);
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        wait_until(timeout, || async {
            let leader = self.leader().await?;
            // Writable: the leader answers readyz.
            let ready = self
                .http
                .get(format!("{}/readyz", self.nodes[leader].url()))
                .send()
                .await
                .ok()?;
            ready.status().is_success().then_some(leader)
        })
        .await
        .context("no leader")
    }

    pub async fn kill9(&mut self, i: usize) {
        self.faults += 1;
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].is_running() {
            bail!("node {i} is running");
        }
        self.nodes[i].spawn().await
    }

    pub fn pause(&mut self, i: usize) {
        self.faults += 1;
        self.nodes[i].signal(libc::SIGSTOP);
        self.nodes[i].paused = true;
    }

    pub fn resume(&mut self, i: usize) {
        self.nodes[i].signal(libc::SIGCONT);
        self.nodes[i].paused = false;
    }

    /// Cut the link between `a` and `b` both ways.
    pub fn cut(&mut self, a: usize, b: usize) {
        self.faults += 1;
        let (pa, pb) = (self.nodes[a].peer_addr, self.nodes[b].peer_addr);
        self.nodes[a].proxy.block(pb);
        self.nodes[b].proxy.block(pa);
    }

    /// Cut every link of `i`.
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            if j != i {
                self.cut(i, j);
            }
        }
        self.faults -= self.nodes.len() as u64 - 2; // one fault, not one per link
    }

    pub fn heal(&mut self) {
        for node in &self.nodes {
            node.proxy.unblock_all();
        }
    }

    /// Add a node (learner, then voter) through the membership API.
    pub async fn add_node(&mut self) -> anyhow::Result<usize> {
        self.faults += 1;
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let mut node = ProcNode {
            id,
            client_addr: free_addr().await?,
            peer_addr: free_addr().await?,
            data_dir: self._dir.path().join(format!("node-{id}")),
            proxy: LinkProxy::start().await?,
            members: String::new(),
            child: None,
            paused: false,
        };
        // It lists the existing members and itself; with peers already initialized it
        // does not bootstrap, it waits to be added.
        let mut members: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect();
        members.push(format!("{id}={}", node.peer_addr));
        node.members = members.join(",");
        node.spawn().await?;
        let req = AddMemberRequest {
            id,
            peer_addr: node.peer_addr.to_string(),
            client_addr: node.client_addr.to_string(),
        };
        self.nodes.push(node);
        let client = self.client_from(0, Duration::from_secs(30));
        client.add_member(req).await.context("add member")?;
        Ok(self.nodes.len() - 1)
    }

    /// Remove node `i` from the membership, then stop its process.
    pub async fn remove_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.faults += 1;
        let id = self.nodes[i].id;
        let other = (i + 1) % self.nodes.len();
        let client = self.client_from(other, Duration::from_secs(30));
        client.remove_member(id).await.context("remove member")?;
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.nodes.remove(i);
        Ok(())
    }

    /// Resume, heal, and restart everything (end of a scenario).
    pub async fn recover(&mut self) -> anyhow::Result<()> {
        self.heal();
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            if !self.nodes[i].is_running() {
                self.restart(i).await?;
            }
        }
        self.wait_for_leader(Duration::from_secs(20)).await?;
        Ok(())
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if node.paused {
                node.signal(libc::SIGCONT);
            }
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
    }
}
