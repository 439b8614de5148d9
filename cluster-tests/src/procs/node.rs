//! [`ProcNode`]: one node's process, its addresses and files, how it is started and
//! signalled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::Context;
use tokio::process::{Child, Command};

use super::LinkProxy;
use crate::leasehold_bin;

/// One node's `[tls]` files.
#[derive(Clone)]
pub(super) struct NodeTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) ca: PathBuf,
}

/// One node process and what it takes to start it again.
pub struct ProcNode {
    pub id: u64,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub proxy: LinkProxy,
    pub(super) members: String,
    pub(super) child: Option<Child>,
    pub(super) paused: bool,
    pub(super) tls: Option<NodeTls>,
    pub(super) tokens_file: Option<PathBuf>,
    /// Extra `serve` arguments for the next start only.
    pub(super) extra_args: Vec<String>,
    /// Environment variables of every start (the bug switch, `LEASEHOLD_BUG`).
    pub(super) env: Vec<(String, String)>,
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

    pub(super) async fn spawn(&mut self) -> anyhow::Result<()> {
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

    pub(super) fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on a child process we spawned.
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }
}
