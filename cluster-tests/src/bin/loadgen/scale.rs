//! `loadgen scale`: what a durable three-node cluster costs as its leases grow.
//!
//! For each size N it starts a fresh cluster of real `leasehold serve` processes (sled,
//! fsync, no proxies), fills it with N leases each holding one lock, and records:
//! bytes of memory per lease per node, write latency with them live against the empty
//! cluster's, the snapshot (size and time, from the nodes' `snapshot built` log lines),
//! the data directory size, restart time from disk, and failover time (the new leader
//! re-arms every lease before it expires anything). With `--storm`, N leases instead get
//! a short TTL and the leader is killed: the new leader re-arms them all at once, so they
//! all expire within the same moment, and the run checks that a queued waiter still gets
//! its lock in order and that live leases' keepalives go on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::time::Instant;

pub struct ScaleArgs {
    pub sizes: Vec<u64>,
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub fill_clients: usize,
    pub samples: usize,
    pub failovers: usize,
    pub storm: Option<u64>,
    pub snapshot_every: u64,
}

struct Node {
    id: u64,
    client: String,
    peer: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub(crate) struct Cluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    members: String,
    max_leases: u64,
    snapshot_every: u64,
    http: reqwest::Client,
}

impl Cluster {
    pub(crate) async fn start(
        bin: &Path,
        dir: &Path,
        max_leases: u64,
        snapshot_every: u64,
    ) -> anyhow::Result<Cluster> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let mut nodes = Vec::new();
        for id in 1..=3u64 {
            nodes.push(Node {
                id,
                client: leasehold_cluster_tests::free_addr().await?.to_string(),
                peer: leasehold_cluster_tests::free_addr().await?.to_string(),
                data: dir.join(format!("n{id}")),
                log: dir.join(format!("n{id}.log")),
                child: None,
            });
        }
        let members = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer))
            .collect::<Vec<_>>()
            .join(",");
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut cluster = Cluster {
            bin: bin.to_path_buf(),
            nodes,
            members,
            max_leases,
            snapshot_every,
            http,
        };
        for i in 0..3 {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .args(["--node-id", &node.id.to_string()])
            .args(["--client-addr", &node.client])
            .args(["--peer-addr", &node.peer])
            .args(["--cluster-members", &self.members])
            .args(["--data-dir", &node.data.display().to_string()])
            .args(["--limits-max-leases", &self.max_leases.to_string()])
            .args([
                "--raft-snapshot-every-logs",
                &self.snapshot_every.to_string(),
            ])
            .env("LEASEHOLD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn leasehold serve")?;
        node.child = Some(child);
        Ok(())
    }

    pub(crate) fn url(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].client)
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().and_then(Child::id)
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ready = 0;
            for i in 0..self.nodes.len() {
                if self.nodes[i].child.is_none() {
                    continue;
                }
                let r = self
                    .http
                    .get(format!("{}/readyz", self.url(i)))
                    .send()
                    .await;
                if matches!(r, Ok(r) if r.status().is_success()) {
                    ready += 1;
                }
            }
            if ready == self.nodes.iter().filter(|n| n.child.is_some()).count() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cluster not ready after {timeout:?} ({ready} nodes ready)");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn leader(&self) -> anyhow::Result<usize> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                continue;
            }
            let Ok(r) = self
                .http
                .get(format!("{}/v1/cluster", self.url(i)))
                .send()
                .await
            else {
                continue;
            };
            let Ok(v) = r.json::<Value>().await else {
                continue;
            };
            if let Some(id) = v["leader_id"].as_u64() {
                if let Some(at) = self.nodes.iter().position(|n| n.id == id) {
                    if self.nodes[at].child.is_some() {
                        return Ok(at);
                    }
                }
            }
        }
        bail!("no leader known")
    }

    async fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    async fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i).await;
        }
    }

    pub(crate) fn rss_kib(&self, i: usize) -> u64 {
        let Some(pid) = self.pid(i) else { return 0 };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn rss_total_kib(&self) -> u64 {
        (0..self.nodes.len()).map(|i| self.rss_kib(i)).sum()
    }

    /// The last `snapshot built` line of each node's log: (bytes, encoded_ms, total_ms).
    fn last_snapshots(&self) -> Vec<Option<(u64, u64, u64)>> {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let line = text.lines().rev().find(|l| l.contains("snapshot built"))?;
                let line = strip_ansi(line);
                let line = line.as_str();
                let field = |name: &str| -> Option<u64> {
                    let at = line.find(&format!("{name}="))? + name.len() + 1;
                    line[at..]
                        .split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse()
                        .ok()
                };
                Some((field("bytes")?, field("encoded_ms")?, field("total_ms")?))
            })
            .collect()
    }
}

/// A log line without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Take lock `{prefix}{i}` for every i in `range` under its own implicit lease.
async fn fill(
    cluster: &Cluster,
    prefix: &str,
    range: std::ops::Range<u64>,
    ttl_ms: u64,
    clients: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(range.start));
    let end = range.end;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = cluster.http.clone();
        let base = cluster.url(c % cluster.nodes.len());
        let next = next.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return Ok::<(), anyhow::Error>(());
                }
                let mut tries = 0;
                loop {
                    let r = http
                        .post(format!("{base}/v1/locks/{prefix}{i}"))
                        .json(&json!({"owner": format!("o{i}"), "ttl_ms": ttl_ms,
                                      "request_id": format!("fill-{prefix}{i}")}))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => break,
                        other => {
                            tries += 1;
                            if tries > 20 {
                                bail!("filling {prefix}{i} failed: {other:?}");
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let n = (end - range.start) as f64;
    Ok(n / started.elapsed().as_secs_f64())
}

/// Sequential acquire+release pairs on the leader; the acquire latencies in ms, sorted.
async fn write_latency(cluster: &Cluster, tag: &str, samples: usize) -> anyhow::Result<Vec<f64>> {
    let leader = cluster.leader().await?;
    let base = cluster.url(leader);
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let key = format!("probe-{tag}-{i}");
        let t = Instant::now();
        let r = cluster
            .http
            .post(format!("{base}/v1/locks/{key}"))
            .json(&json!({"owner": "probe", "ttl_ms": 30000}))
            .send()
            .await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(
            r.status().is_success(),
            "probe write failed: {}",
            r.status()
        );
        let token = r.json::<Value>().await?["token"].as_u64().unwrap_or(0);
        let r = cluster
            .http
            .delete(format!("{base}/v1/locks/{key}?owner=probe&token={token}"))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "probe release failed: {}",
            r.status()
        );
        lat.push(ms);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok(lat)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Kill -9 the leader, time until a write through another node succeeds, restart it.
async fn failover(cluster: &mut Cluster, round: usize) -> anyhow::Result<f64> {
    let leader = cluster.leader().await?;
    let survivor = (leader + 1) % 3;
    let base = cluster.url(survivor);
    let killed = Instant::now();
    cluster.kill9(leader).await;
    let mut n = 0;
    loop {
        n += 1;
        let r = cluster
            .http
            .post(format!("{base}/v1/locks/failover-{round}-{n}"))
            .json(&json!({"owner": "f", "ttl_ms": 30000}))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if matches!(&r, Ok(r) if r.status().is_success()) {
            break;
        }
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("no write succeeded within 60 s of killing the leader");
        }
    }
    let gap = killed.elapsed().as_secs_f64() * 1000.0;
    cluster.spawn(leader)?;
    cluster.wait_ready(Duration::from_secs(300)).await?;
    Ok(gap)
}

pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    println!("| leases N | fill leases/s | RSS per node, empty → full (MiB) | bytes/lease/node | data dir per node (MiB) | snapshot bytes | snapshot encode / total ms | write p50 / p99 ms, empty | write p50 / p99 ms, full | p50 ratio | restart to ready (s) | failover ms (each) |");
    println!("|---:|---:|---|---:|---:|---:|---|---|---|---:|---:|---|");
    for &n in &args.sizes {
        let dir = args.dir.join(format!("scale-{n}"));
        let mut cluster = Cluster::start(&args.bin, &dir, n + 10_000, args.snapshot_every).await?;
        let empty_lat = write_latency(&cluster, "empty", args.samples).await?;
        let rss_empty = cluster.rss_total_kib();
        let rate = fill(&cluster, "scale/", 0..n, 3_600_000, args.fill_clients).await?;
        // Enough single writes after the fill for a snapshot of the full state.
        let full_lat = write_latency(&cluster, "full", args.samples).await?;
        let rss_full = cluster.rss_total_kib();
        let snaps = cluster.last_snapshots();
        let data_mib: f64 = (0..3)
            .map(|i| dir_bytes(&cluster.nodes[i].data))
            .sum::<u64>() as f64
            / 3.0
            / 1_048_576.0;
        let per_lease = (rss_full.saturating_sub(rss_empty) as f64 * 1024.0) / 3.0 / n as f64;
        // Restart from disk: every node killed, then started again.
        cluster.stop_all().await;
        let restart = Instant::now();
        for i in 0..3 {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(Duration::from_secs(600)).await?;
        let leader = cluster.leader().await?;
        let r = cluster
            .http
            .get(format!(
                "{}/v1/locks/scale%2F{}",
                cluster.url(leader),
                n - 1
            ))
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "lock scale/{} lost on restart",
            n - 1
        );
        let restart_s = restart.elapsed().as_secs_f64();
        let mut gaps = Vec::new();
        for round in 0..args.failovers {
            gaps.push(failover(&mut cluster, round).await?);
        }
        let snap = snaps.iter().flatten().max_by_key(|s| s.0);
        println!(
            "| {n} | {rate:.0} | {:.0} → {:.0} | {per_lease:.0} | {data_mib:.1} | {} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2}× | {restart_s:.1} | {} |",
            rss_empty as f64 / 3.0 / 1024.0,
            rss_full as f64 / 3.0 / 1024.0,
            snap.map_or("none".into(), |s| s.0.to_string()),
            snap.map_or("none".into(), |s| format!("{} / {}", s.1, s.2)),
            pct(&empty_lat, 0.5),
            pct(&empty_lat, 0.99),
            pct(&full_lat, 0.5),
            pct(&full_lat, 0.99),
            pct(&full_lat, 0.5) / pct(&empty_lat, 0.5),
            gaps.iter().map(|g| format!("{g:.0}")).collect::<Vec<_>>().join(", "),
        );
        cluster.stop_all().await;
        for node in &cluster.nodes {
            let _ = std::fs::remove_dir_all(&node.data);
        }
    }
    if let Some(n) = args.storm {
        storm(&args, n).await?;
    }
    Ok(())
}

/// N leases re-armed at once by a new leader expire together; a waiter and live leases
/// must not suffer.
async fn storm(args: &ScaleArgs, n: u64) -> anyhow::Result<()> {
    const TTL_MS: u64 = 60_000;
    let dir = args.dir.join(format!("storm-{n}"));
    let mut cluster = Cluster::start(&args.bin, &dir, n + 10_000, args.snapshot_every).await?;
    fill(&cluster, "storm/", 0..n, TTL_MS, args.fill_clients).await?;
    // The new leader gives every lease a full TTL from its takeover: one storm.
    let leader = cluster.leader().await?;
    cluster.kill9(leader).await;
    let survivor = (leader + 1) % 3;
    let base = cluster.url(survivor);
    let takeover = {
        let t = Instant::now();
        loop {
            let r = cluster
                .http
                .post(format!("{base}/v1/leases"))
                .json(&json!({"ttl_ms": 5000, "owner": "live-0"}))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if matches!(&r, Ok(r) if r.status().is_success()) {
                break Instant::now();
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("no leader after the kill");
            }
        }
    };
    cluster.spawn(leader)?;
    // Live leases, kept alive every second through the storm.
    let mut live = Vec::new();
    for i in 0..20 {
        let r: Value = cluster
            .http
            .post(format!("{base}/v1/leases"))
            .json(&json!({"ttl_ms": 3000, "owner": format!("live-{i}")}))
            .send()
            .await?
            .json()
            .await?;
        live.push(r["lease_id"].as_u64().context("lease id")?);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keepers = {
        let http = cluster.http.clone();
        let base = base.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut worst = 0f64;
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for id in &live {
                    let t = Instant::now();
                    let r = http
                        .post(format!("{base}/v1/leases/{id}/keepalive"))
                        .send()
                        .await;
                    worst = worst.max(t.elapsed().as_secs_f64() * 1000.0);
                    if !matches!(&r, Ok(r) if r.status().is_success()) {
                        errors += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
            (worst, errors)
        })
    };
    // A waiter queued on a lock whose lease is in the storm.
    let waiter = {
        let http = cluster.http.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let r = http
                .post(format!("{base}/v1/locks/storm%2F7"))
                .json(&json!({"owner": "waiter", "ttl_ms": 30000, "wait_ms": 120_000}))
                .timeout(Duration::from_secs(130))
                .send()
                .await;
            (Instant::now(), r.map(|r| r.status().as_u16()).unwrap_or(0))
        })
    };
    // Watch the first and last keys go.
    let due = takeover + Duration::from_millis(TTL_MS);
    tokio::time::sleep_until(due - Duration::from_secs(2)).await;
    let gone = |key: String| {
        let http = cluster.http.clone();
        let base = base.clone();
        async move {
            loop {
                let r = http
                    .get(format!("{base}/v1/locks/{key}?stale=true"))
                    .send()
                    .await;
                // Gone: no holder (an idle key is kept, with its history, so it is no 404).
                let released = match r {
                    Ok(r) if r.status().as_u16() == 404 => true,
                    Ok(r) if r.status().is_success() => r
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["held"] == json!(false)),
                    _ => false,
                };
                if released {
                    return Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let (first, last) = tokio::join!(
        gone("storm%2F0".to_string()),
        gone(format!("storm%2F{}", n - 1))
    );
    let (granted_at, status) = waiter.await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (worst_keepalive, keepalive_errors) = keepers.await?;
    let first_ms = first.saturating_duration_since(due).as_secs_f64() * 1000.0;
    let last_ms = last.saturating_duration_since(due).as_secs_f64() * 1000.0;
    let grant_ms = granted_at.saturating_duration_since(due).as_secs_f64() * 1000.0;
    println!(
        "\nstorm: {n} leases due at once ({TTL_MS} ms after the takeover): first gone {first_ms:.0} ms after the due time, last gone {last_ms:.0} ms; \
         the waiter on storm/7 answered {status} {grant_ms:.0} ms after the due time; \
         20 live leases kept alive every 1 s: worst keepalive {worst_keepalive:.0} ms, {keepalive_errors} errors"
    );
    cluster.stop_all().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
