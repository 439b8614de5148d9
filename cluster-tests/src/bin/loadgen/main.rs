//! leasehold's load generator.
//!
//! `loadgen cycles`: many clients run acquire+release cycles over HTTP and the run reports
//! throughput and latency. `loadgen failover`: kill the leader of an in-process cluster
//! repeatedly and report how long writes were unavailable. `loadgen scale`: fill durable
//! three-process clusters with 10 k to 1 M leases and record what they cost (`scale`).
//! `loadgen overload`: a three-process cluster with default `[limits]` under crowds of
//! connections, blocking acquires, keepalives and clients that never read (`overload`).
//!
//! Without `--endpoints` it starts its own in-process three-node cluster on loopback
//! (real Raft, real sockets; `--data-dir` makes it durable with sled and fsync).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use leasehold_cluster_tests::{ClusterOptions, TestCluster};
use serde_json::json;
use tokio::time::Instant;

mod overload;
mod scale;

#[derive(Parser)]
#[command(about = "Load generator and failover timer for leasehold")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Acquire+release cycles from many concurrent clients.
    Cycles {
        /// Comma-separated HTTP endpoints; omit to start an in-process 3-node cluster.
        #[arg(long)]
        endpoints: Option<String>,
        /// Sled data directory for the in-process cluster (durable, fsync per commit).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Distinct keys; each client cycles over its own keys unless `--contend`.
        #[arg(long, default_value_t = 1024)]
        keys: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Serve the in-process cluster over TLS (HTTPS for the clients, mutual TLS
        /// between the nodes), to measure what TLS costs.
        #[arg(long)]
        tls: bool,
        /// Turn bearer tokens on in the in-process cluster; every request sends one.
        #[arg(long)]
        auth: bool,
    },
    /// Kill the leader `--rounds` times and time until a write succeeds again.
    Failover {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Fill fresh durable 3-process clusters with N leases each holding a lock, and record
    /// memory, write latency, snapshot, restart and failover at each size.
    Scale {
        /// Comma-separated sizes.
        #[arg(long, default_value = "10000,100000,1000000", value_delimiter = ',')]
        leases: Vec<u64>,
        /// The `leasehold` binary (default: the one next to this loadgen).
        #[arg(long)]
        bin: Option<std::path::PathBuf>,
        /// Where the clusters' data directories go (a real disk, for real fsync).
        #[arg(long, default_value = "/tmp/leasehold-scale")]
        dir: std::path::PathBuf,
        /// Concurrent clients filling the cluster.
        #[arg(long, default_value_t = 128)]
        fill_clients: usize,
        /// Sequential writes measured on the empty and on the full cluster.
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        /// Leader kills timed at each size.
        #[arg(long, default_value_t = 3)]
        failovers: usize,
        /// Then an expiry storm: this many leases re-armed at once by a new leader.
        #[arg(long)]
        storm: Option<u64>,
        /// `raft.snapshot_every_logs` of the clusters: low enough that the writes measured
        /// after the fill build a snapshot of the full state.
        #[arg(long, default_value_t = 1000)]
        snapshot_every: u64,
    },
    /// Crowd one node of a 3-process cluster (default `[limits]`) phase by phase:
    /// connections, blocking acquires, a keepalive flood, clients that never read; record
    /// RSS, probes, a well-behaved client's p99 and what the crowd got (docs/faults.md).
    Overload {
        /// The `leasehold` binary (default: the one next to this loadgen).
        #[arg(long)]
        bin: Option<std::path::PathBuf>,
        #[arg(long, default_value = "/tmp/leasehold-overload")]
        dir: std::path::PathBuf,
        /// Connections opened at once in the first phase.
        #[arg(long, default_value_t = 6_000)]
        crowd: usize,
        /// Blocking acquires in each blocking phase.
        #[arg(long, default_value_t = 3_000)]
        waiters: usize,
        /// Clients of the keepalive flood.
        #[arg(long, default_value_t = 500)]
        flooders: usize,
        /// Connections that send nothing, in the last phase.
        #[arg(long, default_value_t = 2_000)]
        silent: usize,
        /// Connections that pipeline requests and never read, in the last phase.
        #[arg(long, default_value_t = 200)]
        never_read: usize,
        /// How long each phase's load is held (the never-read phase at least 40 s).
        #[arg(long, default_value_t = 15)]
        seconds: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Overload {
            bin,
            dir,
            crowd,
            waiters,
            flooders,
            silent,
            never_read,
            seconds,
        } => {
            let bin = leasehold_bin(bin)?;
            overload::run(overload::OverloadArgs {
                bin,
                dir,
                crowd,
                waiters,
                flooders,
                silent,
                never_read,
                seconds,
            })
            .await
        }
        Mode::Cycles {
            endpoints,
            data_dir,
            clients,
            keys,
            seconds,
            tls,
            auth,
        } => {
            let security = Security { tls, auth };
            cycles(endpoints, data_dir, clients, keys, seconds, security).await
        }
        Mode::Failover { rounds } => failover(rounds).await,
        Mode::Scale {
            leases,
            bin,
            dir,
            fill_clients,
            samples,
            failovers,
            storm,
            snapshot_every,
        } => {
            let bin = leasehold_bin(bin)?;
            scale::run(scale::ScaleArgs {
                sizes: leases,
                bin,
                dir,
                fill_clients,
                samples,
                failovers,
                storm,
                snapshot_every,
            })
            .await
        }
    }
}

/// `--bin`, or the `leasehold` binary next to this loadgen.
fn leasehold_bin(bin: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    let bin = match bin {
        Some(bin) => bin,
        None => std::env::current_exe()?
            .parent()
            .context("loadgen's directory")?
            .join("leasehold"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: cargo build --release -p leasehold-node --bin leasehold, or pass --bin",
        bin.display()
    );
    Ok(bin)
}

#[derive(Clone, Copy)]
struct Security {
    tls: bool,
    auth: bool,
}

/// The one token of `--auth` runs (an admin principal; the file holds its digest).
const BENCH_TOKEN: &str = "lh_loadgen";

fn with_bench_token(config: &mut leasehold_config::Config) {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let path = FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("loadgen-tokens-{}.toml", std::process::id()));
        let text = format!(
            "[[token]]\nname = \"loadgen\"\nsha256 = \"{}\"\nrole = \"admin\"\nprefixes = [\"\"]\n",
            leasehold_api::auth::token_digest_hex(BENCH_TOKEN)
        );
        std::fs::write(&path, text).expect("write the tokens file");
        path
    });
    config.auth.tokens_file = Some(path.clone());
}

async fn cycles(
    endpoints: Option<String>,
    data_dir: Option<std::path::PathBuf>,
    clients: usize,
    keys: usize,
    seconds: u64,
    security: Security,
) -> anyhow::Result<()> {
    let (cluster, endpoints) = match endpoints {
        Some(e) => (None, e.split(',').map(str::to_string).collect::<Vec<_>>()),
        None => {
            let cluster = TestCluster::start(ClusterOptions {
                data_dir: data_dir.clone(),
                tls: security.tls,
                tweak: if security.auth {
                    with_bench_token
                } else {
                    |_| {}
                },
                ..ClusterOptions::default()
            })
            .await?;
            let endpoints = (0..cluster.len()).map(|i| cluster.url(i)).collect();
            (Some(cluster), endpoints)
        }
    };
    let mut http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .tcp_nodelay(true);
    if let Some(ca) = cluster.as_ref().and_then(TestCluster::ca_pem) {
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&ca)?);
    }
    if security.auth {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {BENCH_TOKEN}").parse()?,
        );
        http = http.default_headers(headers);
    }
    let http = http.build()?;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let http = http.clone();
        let base = endpoints[c % endpoints.len()].clone();
        let done = done.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0usize;
            while Instant::now() < deadline {
                let key = format!("bench-{}", (c + n * clients) % keys.max(1));
                n += 1;
                let started = Instant::now();
                let ok = cycle(&http, &base, &key, c).await;
                if ok {
                    latencies.push(started.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i].as_secs_f64() * 1000.0
    };
    let cycles = done.load(Ordering::Relaxed);
    println!(
        "cycles: {cycles} acquire+release cycles in {elapsed:.1} s = {:.0} cycles/s ({:.0} writes/s); \
         errors {}; cycle latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; clients {clients}, keys {keys}, storage {}{}{}",
        cycles as f64 / elapsed,
        2.0 * cycles as f64 / elapsed,
        errors.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        if data_dir.is_some() { "sled (fsync)" } else { "in-memory" },
        if security.tls { ", TLS" } else { "" },
        if security.auth { ", auth" } else { "" },
    );
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }
    Ok(())
}

/// One acquire + release; false on any failure.
async fn cycle(http: &reqwest::Client, base: &str, key: &str, client: usize) -> bool {
    let owner = format!("client-{client}");
    let Ok(resp) = http
        .post(format!("{base}/v1/locks/{key}"))
        .json(&json!({"owner": owner, "ttl_ms": 10000}))
        .send()
        .await
    else {
        return false;
    };
    if !resp.status().is_success() {
        return false;
    }
    let Ok(body) = resp.json::<serde_json::Value>().await else {
        return false;
    };
    let Some(token) = body["token"].as_u64() else {
        return false;
    };
    matches!(
        http.delete(format!("{base}/v1/locks/{key}?owner={owner}&token={token}"))
            .send()
            .await,
        Ok(r) if r.status().is_success()
    )
}

async fn failover(rounds: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut gaps = Vec::new();
    for round in 0..rounds {
        let mut cluster = TestCluster::start3().await?;
        let leader = cluster.leader().context("leader")?;
        let survivor = (leader + 1) % cluster.len();
        let url = format!("{}/v1/locks/failover-{round}", cluster.url(survivor));
        // Warm up the path through the survivor.
        let r = http
            .post(&url)
            .json(&json!({"owner": "w", "ttl_ms": 5000}))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "warm-up write failed");
        let killed_at = Instant::now();
        cluster.kill(leader).await;
        let mut n = 0;
        loop {
            n += 1;
            let r = http
                .post(format!("{}/v1/leases", cluster.url(survivor)))
                .json(&json!({"ttl_ms": 5000, "owner": format!("probe-{n}")}))
                .send()
                .await;
            if matches!(&r, Ok(r) if r.status().is_success()) {
                break;
            }
        }
        let gap = killed_at.elapsed();
        println!(
            "round {round}: writes resumed {:.0} ms after the leader was killed",
            gap.as_secs_f64() * 1000.0
        );
        gaps.push(gap);
        cluster.shutdown().await;
    }
    gaps.sort();
    println!(
        "failover: {} rounds, min {:.0} ms, median {:.0} ms, max {:.0} ms (election timeout 250-400 ms, heartbeat 50 ms)",
        gaps.len(),
        gaps[0].as_secs_f64() * 1000.0,
        gaps[gaps.len() / 2].as_secs_f64() * 1000.0,
        gaps[gaps.len() - 1].as_secs_f64() * 1000.0
    );
    Ok(())
}
