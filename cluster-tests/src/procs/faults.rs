//! What a [`ProcCluster`] does to its nodes: kill -9, restart, SIGSTOP and SIGCONT, link
//! cuts, membership changes, and the recovery that ends a scenario.

use std::time::Duration;

use anyhow::{bail, Context};
use leasehold_api::wire::AddMemberRequest;
use leasehold_api::LeaseService;

use super::{LinkProxy, ProcCluster, ProcNode};

impl ProcCluster {
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
