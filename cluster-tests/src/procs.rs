//! Clusters of real `leasehold` processes, with faults: `kill -9`, SIGSTOP/SIGCONT,
//! restart, link cuts (partitions), and membership changes.
//!
//! Every node sends its peer traffic through its own HTTP forward proxy
//! (`cluster.peer_proxy`), run here in the test process. The proxy of node `a` knows the
//! sender (it is `a`'s) and the target (the request's absolute URI), so cutting the link
//! `a`–`b` is: `a`'s proxy blackholes requests to `b`, and `b`'s to `a`. A blackholed
//! request hangs until its sender gives up, as packets to a partitioned host would.
//!
//! With TLS the proxy cannot see requests: the sender asks for a tunnel (`CONNECT
//! host:port`) and speaks TLS through it. A cut refuses new tunnels to the target and
//! closes those already open, so a pooled TLS connection does not outlive the cut.

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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{leasehold_bin, wait_until};

/// An HTTP forward proxy for one node's outgoing peer traffic, with a switch per target:
/// plain `http://` requests in absolute form are forwarded one by one, and `CONNECT`
/// tunnels (what a client sends for `https://` through a proxy) carry bytes both ways.
pub struct LinkProxy {
    pub addr: SocketAddr,
    blocked: Arc<RwLock<HashSet<String>>>,
    /// Bumped by every [`block`](Self::block): each open tunnel then checks whether its
    /// target is cut. Dropping it (with the proxy) closes every tunnel.
    cuts: watch::Sender<u64>,
    server: JoinHandle<()>,
    acceptor: JoinHandle<()>,
}

#[derive(Clone)]
struct ProxyState {
    blocked: Arc<RwLock<HashSet<String>>>,
    http: reqwest::Client,
}

/// What a tunnel needs to know whether its target is cut.
#[derive(Clone)]
struct TunnelState {
    blocked: Arc<RwLock<HashSet<String>>>,
    cuts: watch::Receiver<u64>,
}

impl TunnelState {
    fn is_blocked(&self, target: &str) -> bool {
        self.blocked.read().expect("proxy lock").contains(target)
    }
}

/// The longest `CONNECT` request head the proxy reads.
const MAX_CONNECT_HEAD_BYTES: usize = 8 * 1024;
/// How many accepted plain connections may wait for the HTTP server to take them.
const PLAIN_BACKLOG: usize = 64;

impl LinkProxy {
    pub async fn start() -> anyhow::Result<Self> {
        // A port no node of this process was given (crate::free_addr).
        let listener = TcpListener::bind(crate::free_addr().await?).await?;
        let addr = listener.local_addr()?;
        let blocked = Arc::new(RwLock::new(HashSet::new()));
        let (cuts, cuts_rx) = watch::channel(0u64);
        let state = ProxyState {
            blocked: blocked.clone(),
            http: reqwest::Client::builder().no_proxy().build()?,
        };
        let app = axum::Router::new()
            .fallback(forward)
            .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024))
            .with_state(state);
        // One listener, two kinds of connection: the acceptor looks at the first byte of
        // each, keeps the tunnels (`C`ONNECT; no other method the peer client sends starts
        // with C) and hands the rest to the HTTP server.
        let (plain_tx, plain_rx) = mpsc::channel(PLAIN_BACKLOG);
        let tunnels = TunnelState {
            blocked: blocked.clone(),
            cuts: cuts_rx,
        };
        let acceptor = tokio::spawn(accept_loop(listener, plain_tx, tunnels));
        let server = tokio::spawn(async move {
            let handed = HandedOver { rx: plain_rx, addr };
            let _ = axum::serve(handed, app).await;
        });
        Ok(LinkProxy {
            addr,
            blocked,
            cuts,
            server,
            acceptor,
        })
    }

    /// Cut the link to `target`: plain requests to it hang, new tunnels to it are
    /// refused, and open tunnels to it are closed.
    pub fn block(&self, target: SocketAddr) {
        self.blocked
            .write()
            .expect("proxy lock")
            .insert(target.to_string());
        self.cuts.send_modify(|generation| *generation += 1);
    }

    pub fn unblock_all(&self) {
        self.blocked.write().expect("proxy lock").clear();
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.server.abort();
    }
}

/// The plain (non-`CONNECT`) connections, as a listener for `axum::serve`.
struct HandedOver {
    rx: mpsc::Receiver<(TcpStream, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for HandedOver {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(connection) => connection,
            // The acceptor is gone (the proxy is being dropped): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    plain: mpsc::Sender<(TcpStream, SocketAddr)>,
    tunnels: TunnelState,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of file descriptors or the like: let it pass rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let plain = plain.clone();
        let tunnels = tunnels.clone();
        tokio::spawn(async move {
            let mut first = [0u8; 1];
            match stream.peek(&mut first).await {
                Ok(1) if first[0] == b'C' => tunnel(stream, tunnels).await,
                Ok(1) => {
                    let _ = plain.send((stream, from)).await;
                }
                _ => {} // closed before saying anything
            }
        });
    }
}

/// Serve one `CONNECT host:port` request: refuse it if the link is cut, else connect,
/// answer 200 and copy bytes both ways until either side closes or the link is cut.
async fn tunnel(mut client: TcpStream, state: TunnelState) {
    let Some((target, early)) = read_connect_head(&mut client).await else {
        let _ = client
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await;
        return;
    };
    let mut cuts = state.cuts.clone();
    // Seen before the check below, so a cut from here on wakes the copy loop.
    cuts.borrow_and_update();
    if state.is_blocked(&target) {
        refuse(&mut client, &format!("link to {target} is cut")).await;
        return;
    }
    let mut upstream = match TcpStream::connect(&target).await {
        Ok(upstream) => upstream,
        Err(e) => {
            refuse(&mut client, &format!("cannot connect to {target}: {e}")).await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    if !early.is_empty() && upstream.write_all(&early).await.is_err() {
        return;
    }
    let cut = async {
        loop {
            if cuts.changed().await.is_err() || state.is_blocked(&target) {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        // Dropping both sockets closes the tunnel: the sender sees its connection end.
        _ = cut => {}
    }
}

/// Read a `CONNECT` request head; its target (`host:port`) and any bytes sent after it.
async fn read_connect_head(client: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > MAX_CONNECT_HEAD_BYTES {
            return None;
        }
        let n = client.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    };
    let early = head.split_off(end);
    let text = std::str::from_utf8(&head).ok()?;
    let mut words = text.lines().next()?.split_whitespace();
    let (method, target, version) = (words.next()?, words.next()?, words.next()?);
    if method != "CONNECT" || !version.starts_with("HTTP/1.") || !target.contains(':') {
        return None;
    }
    Some((target.to_string(), early))
}

async fn refuse(client: &mut TcpStream, why: &str) {
    let reply = format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}",
        why.len()
    );
    let _ = client.write_all(reply.as_bytes()).await;
    let _ = client.shutdown().await;
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

/// What a process cluster is secured with (SPEC §5).
#[derive(Debug, Clone, Copy, Default)]
pub struct Security {
    /// `[tls]` on every node: HTTPS on both ports, mutual TLS between peers, with a CA
    /// and node certificates made for the cluster.
    pub tls: bool,
    /// `[auth]` on every node, with one admin principal whose token the harness and the
    /// workload's clients send ([`ProcCluster::token`]).
    pub auth: bool,
}

impl Security {
    /// TLS and auth both on.
    pub const FULL: Security = Security {
        tls: true,
        auth: true,
    };
}

/// The token of the admin principal of a cluster with `auth`.
const ADMIN_TOKEN: &str = "lh_proc_cluster_admin";

/// The credentials a secured process cluster was made with.
struct Credentials {
    /// Issues each node's certificate (also for nodes added later).
    ca: Option<crate::tls::TestCa>,
    tokens_file: Option<PathBuf>,
}

/// One node's `[tls]` files.
#[derive(Clone)]
struct NodeTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
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
    tls: Option<NodeTls>,
    tokens_file: Option<PathBuf>,
    /// Extra `serve` arguments for the next start only.
    extra_args: Vec<String>,
    /// Environment variables of every start (the bug switch, `LEASEHOLD_BUG`).
    env: Vec<(String, String)>,
}

impl ProcNode {
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr)
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
        let mut cmd = Command::new(leasehold_bin());
        cmd.arg("serve");
        if let Some(tls) = &self.tls {
            cmd.arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key)
                .arg("--tls-ca")
                .arg(&tls.ca);
        }
        if let Some(tokens_file) = &self.tokens_file {
            cmd.arg("--auth-tokens-file").arg(tokens_file);
        }
        let child = cmd
            .args(["--node-id", &self.id.to_string()])
            .args(["--client-addr", &self.client_addr.to_string()])
            .args(["--peer-addr", &self.peer_addr.to_string()])
            .args(["--cluster-members", &self.members])
            .args(["--cluster-peer-proxy", &self.proxy.addr.to_string()])
            .args([
                "--data-dir",
                &self.data_dir.join("data").display().to_string(),
            ])
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // `LH_TEST_NODE_LOG=debug` raises the nodes' log level for a repro run.
            .env(
                "LEASEHOLD_LOG",
                std::env::var("LH_TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
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
    credentials: Credentials,
    /// Environment variables every node process starts with (nodes added later too).
    env: Vec<(String, String)>,
    /// Wall clocks the test steps (nodes under libfaketime), if started with them.
    clocks: Option<crate::clocks::FakeClocks>,
    /// Keep the directories and logs on drop ([`ProcCluster::keep_logs`]).
    keep: bool,
    pub faults: u64,
}

impl Credentials {
    fn new(dir: &std::path::Path, security: Security) -> anyhow::Result<Self> {
        let ca = match security.tls {
            true => Some(crate::tls::TestCa::new(dir, "proc cluster CA")?),
            false => None,
        };
        let tokens_file = match security.auth {
            true => {
                let path = dir.join("tokens.toml");
                std::fs::write(
                    &path,
                    format!(
                        "[[token]]\nname = \"harness\"\nsha256 = \"{}\"\nrole = \"admin\"\nprefixes = [\"\"]\n",
                        leasehold_api::auth::token_digest_hex(ADMIN_TOKEN)
                    ),
                )?;
                Some(path)
            }
            false => None,
        };
        Ok(Credentials { ca, tokens_file })
    }

    /// A new node's TLS files (its certificate issued now) and tokens file.
    fn for_node(
        &self,
        dir: &std::path::Path,
    ) -> anyhow::Result<(Option<NodeTls>, Option<PathBuf>)> {
        let tls = match &self.ca {
            Some(ca) => {
                let (cert, key) = ca.issue_files(dir, "node")?;
                Some(NodeTls {
                    cert,
                    key,
                    ca: ca.cert_path.clone(),
                })
            }
            None => None,
        };
        Ok((tls, self.tokens_file.clone()))
    }
}

impl ProcCluster {
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        Self::start_secured(n, Security::default()).await
    }

    /// A cluster of `n` processes with `security` on every node.
    pub async fn start_secured(n: usize, security: Security) -> anyhow::Result<Self> {
        Self::start_prepared(n, security, |_, _, _| Ok(())).await
    }

    /// As [`start_secured`](Self::start_secured), calling `prepare(i, dir, members)` with
    /// each node's (created, empty) data directory and the cluster's `--cluster-members`
    /// before any node starts: to mount a small filesystem there, or to restore a backup
    /// into it, for instance.
    pub async fn start_prepared(
        n: usize,
        security: Security,
        prepare: impl FnMut(usize, &std::path::Path, &str) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        Self::start_inner(n, security, &[], &|_| Vec::new(), prepare).await
    }

    /// As [`start_secured`](Self::start_secured), with `env` set for every node process
    /// (also for nodes added later): `LEASEHOLD_BUG` to switch a deliberate fault on.
    pub async fn start_with_env(
        n: usize,
        security: Security,
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        Self::start_inner(n, security, env, &|_| Vec::new(), |_, _, _| Ok(())).await
    }

    /// As [`start_with_env`](Self::start_with_env), with `node_env(i)` added for node `i`
    /// only (a clock of its own under libfaketime, say).
    pub async fn start_with_node_env(
        n: usize,
        security: Security,
        env: &[(String, String)],
        node_env: &dyn Fn(usize) -> Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        Self::start_inner(n, security, env, node_env, |_, _, _| Ok(())).await
    }

    /// As [`start_secured`](Self::start_secured), with every node (and every node added
    /// later) under libfaketime with a wall clock of its own that [`step_clock`]
    /// (Self::step_clock) steps.
    pub async fn start_with_fake_clocks(n: usize, security: Security) -> anyhow::Result<Self> {
        let clocks = crate::clocks::FakeClocks::new()?;
        let node_env = |i: usize| clocks.env(i as u64 + 1);
        let mut cluster = Self::start_inner(n, security, &[], &node_env, |_, _, _| Ok(())).await?;
        cluster.clocks = Some(clocks);
        Ok(cluster)
    }

    /// Step node `i`'s wall clock to `offset_secs` from the real time (in force within
    /// [`crate::clocks::STEP_TAKES`]). Needs a cluster started with fake clocks.
    pub fn step_clock(&mut self, i: usize, offset_secs: i64) -> anyhow::Result<()> {
        let clocks = self
            .clocks
            .as_ref()
            .context("the cluster was not started with fake clocks")?;
        self.faults += 1;
        clocks.set_offset(self.nodes[i].id, offset_secs)
    }

    async fn start_inner(
        n: usize,
        security: Security,
        env: &[(String, String)],
        node_env: &dyn Fn(usize) -> Vec<(String, String)>,
        mut prepare: impl FnMut(usize, &std::path::Path, &str) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let credentials = Credentials::new(dir.path(), security)?;
        let mut nodes = Vec::new();
        for i in 0..n {
            let data_dir = dir.path().join(format!("node-{}", i + 1));
            std::fs::create_dir_all(data_dir.join("data"))?;
            let (tls, tokens_file) = credentials.for_node(&data_dir)?;
            nodes.push(ProcNode {
                id: i as u64 + 1,
                client_addr: crate::free_addr().await?,
                peer_addr: crate::free_addr().await?,
                data_dir,
                proxy: LinkProxy::start().await?,
                members: String::new(),
                child: None,
                paused: false,
                tls,
                tokens_file,
                extra_args: Vec::new(),
                env: env.iter().cloned().chain(node_env(i)).collect(),
            });
        }
        let members: Vec<String> = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            node.members = members.join(",");
            prepare(i, &node.data_dir.join("data"), &node.members)?;
        }
        for node in &mut nodes {
            node.spawn().await?;
        }
        let mut http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2));
        if let Some(ca) = &credentials.ca {
            http = http
                .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes())?);
        }
        if security.auth {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {ADMIN_TOKEN}").parse()?,
            );
            http = http.default_headers(headers);
        }
        let cluster = ProcCluster {
            nodes,
            _dir: dir,
            http: http.build()?,
            credentials,
            env: env.to_vec(),
            clocks: None,
            keep: false,
            faults: 0,
        };
        cluster.wait_for_leader(Duration::from_secs(20)).await?;
        Ok(cluster)
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(ProcNode::url).collect()
    }

    /// The admin token of a cluster with auth.
    pub fn token(&self) -> Option<&'static str> {
        self.credentials.tokens_file.as_ref().map(|_| ADMIN_TOKEN)
    }

    /// The CA certificate (PEM) of a cluster with TLS.
    pub fn ca_pem(&self) -> Option<String> {
        self.credentials.ca.as_ref().map(|ca| ca.cert_pem())
    }

    /// A client for every node's endpoint, starting at node `first`, with the cluster's
    /// CA and admin token when it has them.
    pub fn client_from(&self, first: usize, attempt_timeout: Duration) -> Client {
        let n = self.nodes.len();
        let urls: Vec<String> = (0..n).map(|k| self.nodes[(first + k) % n].url()).collect();
        self.client_of(urls, Duration::from_secs(10), attempt_timeout)
    }

    /// A client of node `i`'s endpoint only (no failover), with the cluster's CA and
    /// admin token when it has them: a reader pinned to one node.
    pub fn client_pinned(&self, i: usize, attempt_timeout: Duration) -> Client {
        self.client_of(vec![self.nodes[i].url()], attempt_timeout, attempt_timeout)
    }

    fn client_of(&self, urls: Vec<String>, request: Duration, attempt: Duration) -> Client {
        let mut builder = Client::builder(urls)
            .request_timeout(request)
            .attempt_timeout(attempt);
        if let Some(pem) = self.ca_pem() {
            builder = builder.ca_cert_pem(pem);
        }
        if let Some(token) = self.token() {
            builder = builder.token(token);
        }
        builder.build().expect("valid endpoints and credentials")
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

    /// Restart node `i` with extra `serve` arguments (e.g. `--rejoin`) for this start.
    pub async fn restart_with(&mut self, i: usize, args: &[&str]) -> anyhow::Result<()> {
        if self.nodes[i].is_running() {
            bail!("node {i} is running");
        }
        self.nodes[i].extra_args = args.iter().map(|a| a.to_string()).collect();
        let spawned = self.nodes[i].spawn().await;
        self.nodes[i].extra_args.clear();
        spawned
    }

    /// If node `i`'s process has exited, its status (and it is no longer running).
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let node = &mut self.nodes[i];
        let status = node.child.as_mut()?.try_wait().ok()??;
        node.child = None;
        Some(status)
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
        let data_dir = self._dir.path().join(format!("node-{id}"));
        std::fs::create_dir_all(&data_dir)?;
        let (tls, tokens_file) = self.credentials.for_node(&data_dir)?;
        let mut node = ProcNode {
            id,
            client_addr: crate::free_addr().await?,
            peer_addr: crate::free_addr().await?,
            data_dir,
            proxy: LinkProxy::start().await?,
            members: String::new(),
            child: None,
            paused: false,
            tls,
            tokens_file,
            extra_args: Vec::new(),
            env: (self.env.iter().cloned())
                .chain(self.clocks.iter().flat_map(|c| c.env(id)))
                .collect(),
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

impl ProcCluster {
    /// Keep the nodes' data directories and logs when this cluster is dropped (a checker
    /// found something after the nodes stopped).
    pub fn keep_logs(&mut self) {
        self.keep = true;
    }
}

/// Kills the nodes. A failed test keeps the nodes' data directories and logs
/// (`node-N/node.log`) and says where; so does every run with `LH_TEST_KEEP_DIRS`.
impl Drop for ProcCluster {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() || std::env::var_os("LH_TEST_KEEP_DIRS").is_some()
        {
            self._dir.disable_cleanup(true);
            eprintln!(
                "kept the cluster's data directories and node logs in {}",
                self._dir.path().display()
            );
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use leasehold_api::client::is_tls_failure;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A TCP server that echoes every connection.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Open a tunnel to `target`; the proxy's status code and, if 200, the stream.
    async fn connect(proxy: SocketAddr, target: SocketAddr) -> (u16, TcpStream) {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                s.read(&mut byte).await.unwrap(),
                1,
                "proxy closed: {head:?}"
            );
            head.push(byte[0]);
        }
        let status = String::from_utf8_lossy(&head)[9..12].parse().unwrap();
        (status, s)
    }

    async fn echoes(s: &mut TcpStream, what: &[u8]) -> bool {
        if s.write_all(what).await.is_err() {
            return false;
        }
        let mut buf = vec![0u8; what.len()];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await;
        matches!(read, Ok(Ok(_))) && buf == what
    }

    /// Reads until the tunnel ends; panics if it stays open.
    async fn closes(s: &mut TcpStream) {
        let mut buf = [0u8; 64];
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "the tunnel stayed open after the cut");
    }

    #[tokio::test]
    async fn tunnels_carry_bytes_and_a_cut_closes_them_and_refuses_new_ones() {
        let proxy = LinkProxy::start().await.unwrap();
        let (a, b) = (echo_server().await, echo_server().await);
        let (status, mut to_a) = connect(proxy.addr, a).await;
        assert_eq!(status, 200);
        assert!(echoes(&mut to_a, b"hello").await);
        let (_, mut to_b) = connect(proxy.addr, b).await;
        assert!(echoes(&mut to_b, b"hi b").await);

        proxy.block(a);
        closes(&mut to_a).await;
        assert_eq!(
            connect(proxy.addr, a).await.0,
            502,
            "a new tunnel is refused"
        );
        assert!(echoes(&mut to_b, b"still").await, "other links stay up");

        proxy.unblock_all();
        let (status, mut again) = connect(proxy.addr, a).await;
        assert_eq!(status, 200);
        assert!(echoes(&mut again, b"healed").await);

        // A target that does not listen: refused, not hung.
        let gone = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        assert_eq!(connect(proxy.addr, gone).await.0, 502);
        // Dropping the proxy closes its tunnels.
        drop(proxy);
        closes(&mut to_b).await;
    }

    #[tokio::test]
    async fn plain_requests_are_still_forwarded_and_blackholed() {
        let app = axum::Router::new().route("/x", axum::routing::get(|| async { "plain" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let proxy = LinkProxy::start().await.unwrap();
        let http = reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(format!("http://{}", proxy.addr)).unwrap())
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let url = format!("http://{target}/x");
        assert_eq!(
            http.get(&url).send().await.unwrap().text().await.unwrap(),
            "plain"
        );
        proxy.block(target);
        assert!(http.get(&url).send().await.unwrap_err().is_timeout());
        proxy.unblock_all();
        assert_eq!(
            http.get(&url).send().await.unwrap().text().await.unwrap(),
            "plain"
        );
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate it signed.
    struct Pki {
        ca_pem: String,
        server: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
        client_cert_pem: String,
        client_key_pem: String,
    }

    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |names: Vec<String>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            (cert, key)
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into()]);
        let (client_cert, client_key) = leaf(vec!["client".into()]);
        Pki {
            ca_pem: ca.pem(),
            server: (
                vec![server_cert.der().clone()],
                PrivatePkcs8KeyDer::from(server_key.serialize_der()).into(),
            ),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    struct TlsListener {
        tcp: TcpListener,
        tls: tokio_rustls::TlsAcceptor,
    }

    impl axum::serve::Listener for TlsListener {
        type Io = tokio_rustls::server::TlsStream<TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((tcp, from)) = self.tcp.accept().await else {
                    continue;
                };
                // Inline handshakes are fine for a test server; failed ones are the point.
                if let Ok(tls) = self.tls.accept(tcp).await {
                    return (tls, from);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<SocketAddr> {
            self.tcp.local_addr()
        }
    }

    /// An https server answering `/readyz`; with `client_ca`, it requires a client
    /// certificate signed by it.
    async fn https_server(pki: &Pki, client_ca: bool) -> SocketAddr {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_ca {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let (chain, key) = (pki.server.0.clone(), pki.server.1.clone_key());
        let config = builder.with_single_cert(chain, key).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener {
            tcp,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        let app = axum::Router::new().route("/readyz", axum::routing::get(|| async { "{}" }));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        addr
    }

    use rustls::pki_types::pem::PemObject;

    #[tokio::test]
    async fn https_goes_through_a_tunnel_that_a_cut_closes() {
        let pki = pki();
        let server = https_server(&pki, false).await;
        let proxy = LinkProxy::start().await.unwrap();
        let http = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(format!("http://{}", proxy.addr)).unwrap())
            .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let url = format!("https://{server}/readyz");
        assert_eq!(
            http.get(&url).send().await.unwrap().text().await.unwrap(),
            "{}"
        );
        // The pooled TLS connection does not survive the cut, and no new one is made.
        proxy.block(server);
        let e = http.get(&url).send().await.unwrap_err();
        assert!(!e.is_timeout(), "refused at once, not hung: {e:?}");
        proxy.unblock_all();
        assert_eq!(
            http.get(&url).send().await.unwrap().text().await.unwrap(),
            "{}"
        );
    }

    #[tokio::test]
    async fn the_client_trusts_the_given_ca_and_presents_its_certificate() {
        let pki = pki();
        let server = https_server(&pki, false).await;
        let url = format!("https://{server}");
        let builder = || {
            Client::builder([url.clone()])
                .attempt_timeout(Duration::from_secs(2))
                .request_timeout(Duration::from_secs(2))
        };
        builder()
            .ca_cert_pem(pki.ca_pem.clone())
            .build()
            .unwrap()
            .ready()
            .await
            .unwrap();
        // Without the CA: the handshake fails, and the message says what to check.
        let e = builder().build().unwrap().ready().await.unwrap_err();
        assert!(is_tls_failure(&e), "{e}");
        assert!(
            e.message.contains(&url) && e.message.contains("--cacert"),
            "{e}"
        );

        let mutual = format!("https://{}", https_server(&pki, true).await);
        let with_ca = || {
            Client::builder([mutual.clone()])
                .attempt_timeout(Duration::from_secs(2))
                .request_timeout(Duration::from_secs(2))
                .ca_cert_pem(pki.ca_pem.clone())
        };
        with_ca()
            .identity_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone())
            .build()
            .unwrap()
            .ready()
            .await
            .unwrap();
        let e = with_ca().build().unwrap().ready().await.unwrap_err();
        assert!(is_tls_failure(&e), "{e}");
        assert!(e.message.contains("--cert"), "{e}");

        // A key that is not the certificate's is refused when the client is built.
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let e = with_ca()
            .identity_pem(pki.client_cert_pem.clone(), other)
            .build()
            .unwrap_err();
        assert!(e.message.starts_with("client_key: "), "{e}");
        assert!(
            e.message
                .contains("is not the private key of the certificate"),
            "{e}"
        );
    }
}
