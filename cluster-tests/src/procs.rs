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
//!
//! `proxy` holds the link proxy, `node` one node's process, and `faults` what a cluster
//! does to its nodes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use leasehold_api::Client;

use crate::wait_until;

mod faults;
mod node;
mod proxy;
#[cfg(test)]
mod tests;

use self::node::NodeTls;
pub use self::node::ProcNode;
pub use self::proxy::LinkProxy;

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
    /// later) under libfaketime with a wall clock of its own that
    /// [`step_clock`](Self::step_clock) steps.
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
