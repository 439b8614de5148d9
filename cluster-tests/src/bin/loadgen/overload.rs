//! `loadgen overload`: a three-process cluster (`leasehold serve`, default `[limits]`)
//! under a crowd aimed at one node (node 1), phase by phase, each bounded in time:
//!
//! 1. `connections`: thousands of connections opened at once, each sending one request
//!    and then staying open;
//! 2. `blocking-one-key` / `blocking-many-keys`: thousands of blocking acquires on one
//!    held key, then spread over 100 held keys;
//! 3. `keepalive-flood`: many clients sending keepalives of 1,000 leases without pause;
//! 4. `never-read`: connections that pipeline requests and never read the replies, and
//!    connections that send nothing.
//!
//! For each phase it records node 1's RSS (before, peak, after), whether `/healthz` and
//! `/readyz` answer on a connection opened before the phase and on a new one, and how
//! fast, the acquire+release cycle p99 of one well-behaved client on its own key (an
//! `api::Client` that lists node 1 first and fails over on 503), what the crowd got, and
//! whether the node's counts (connections, requests in flight, long-polls) return to
//! their idle values once the crowd leaves. At the end: an `anchor` lock kept alive
//! through every phase is still held with its token, and every lease of the keepalive
//! flood is alive. Traffic goes only to 127.0.0.1; the crowd binds source addresses
//! 127.0.0.2 and up (all loopback), so the per-node cap is reached before the
//! per-address one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use leasehold_api::client::Client;
use leasehold_api::wire::{AcquireRequest, CreateLeaseRequest, ExtendRequest};
use leasehold_api::LeaseService;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::scale::Cluster;

mod net;
use net::{calm, connect, metric, p99, probe, request, status_of};

/// Node 1's view, sampled while a phase runs.
#[derive(Default, Debug)]
struct Watch {
    rss_peak_kib: u64,
    conns_peak: f64,
    in_flight_peak: f64,
    polls_peak: f64,
    /// Node 1's client connections at each whole second of the phase.
    conns: Vec<f64>,
}

pub struct OverloadArgs {
    pub bin: std::path::PathBuf,
    pub dir: std::path::PathBuf,
    /// Connections of the `connections` phase.
    pub crowd: usize,
    /// Blocking acquires of each blocking phase.
    pub waiters: usize,
    /// Concurrent clients of the keepalive flood.
    pub flooders: usize,
    /// Connections of the `never-read` phase that send nothing...
    pub silent: usize,
    /// ...and that pipeline requests and never read the replies.
    pub never_read: usize,
    /// How long each phase's load is held.
    pub seconds: u64,
}

/// Connections per source address (under the default per-address cap of 1024).
const PER_SOURCE: usize = 200;
/// Leases kept alive by the keepalive flood.
const FLOOD_LEASES: usize = 1_000;

/// What one crowd member got: a status, or how the connection failed.
type Outcomes = Arc<Mutex<BTreeMap<String, u64>>>;

fn count(outcomes: &Outcomes, what: impl Into<String>) {
    *outcomes.lock().unwrap().entry(what.into()).or_default() += 1;
}

struct Row {
    phase: &'static str,
    load: String,
    rss: String,
    probes: String,
    calm: String,
    crowd: String,
    after: String,
}

/// Run `load` (which returns the crowd's tasks) for one phase, with the measurements
/// around it.
async fn phase<F, Fut>(
    cluster: &Cluster,
    probe_http: &reqwest::Client,
    calm_client: &Client,
    name: &'static str,
    load_text: String,
    hold: Duration,
    load: F,
) -> anyhow::Result<Row>
where
    F: FnOnce(Outcomes) -> Fut,
    Fut: std::future::Future<Output = Vec<tokio::task::JoinHandle<()>>>,
{
    let url = cluster.url(0);
    let rss_before = cluster.rss_kib(0);
    let outcomes: Outcomes = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let calm_task = tokio::spawn(calm(calm_client.clone(), stop.clone()));
    let tasks = load(outcomes.clone()).await;
    // Hold the load, sampling RSS; probe once the crowd is in.
    let watch = Arc::new(Mutex::new(Watch::default()));
    let started = Instant::now();
    let mut probes = String::new();
    while started.elapsed() < hold {
        let rss = cluster.rss_kib(0);
        let conns = metric(probe_http, &url, "leasehold_client_connections").await;
        let in_flight = metric(probe_http, &url, "leasehold_requests_in_flight").await;
        let polls = metric(probe_http, &url, "leasehold_long_polls_in_flight").await;
        {
            let mut w = watch.lock().unwrap();
            w.rss_peak_kib = w.rss_peak_kib.max(rss);
            w.conns_peak = w.conns_peak.max(conns.unwrap_or(0.0));
            w.in_flight_peak = w.in_flight_peak.max(in_flight.unwrap_or(0.0));
            w.polls_peak = w.polls_peak.max(polls.unwrap_or(0.0));
            if w.conns.len() < started.elapsed().as_secs() as usize {
                w.conns.push(conns.unwrap_or(-1.0));
            }
        }
        if probes.is_empty() && started.elapsed() >= hold / 2 {
            let fresh = reqwest::Client::builder().no_proxy().build()?;
            probes = format!(
                "pooled {}; new {}",
                probe(probe_http, &url).await,
                probe(&fresh, &url).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let (times, failed) = calm_task.await?;
    // The crowd is gone: the node's counts go back to idle (bounded wait).
    let settle = Instant::now();
    let mut after;
    loop {
        let conns = metric(probe_http, &url, "leasehold_client_connections").await;
        let in_flight = metric(probe_http, &url, "leasehold_requests_in_flight").await;
        let polls = metric(probe_http, &url, "leasehold_long_polls_in_flight").await;
        after = format!(
            "{:.1} s: {} connections (the harness's own), {} in flight, {} long-polls",
            settle.elapsed().as_secs_f64(),
            conns.unwrap_or(-1.0),
            in_flight.unwrap_or(-1.0),
            polls.unwrap_or(-1.0)
        );
        // The harness's pooled clients keep a few connections open.
        let idle = conns.is_some_and(|c| c <= 16.0) && in_flight == Some(0.0) && polls == Some(0.0);
        if idle || settle.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the allocator hand back what the crowd freed (it is trimmed once the
    // connections are gone), then read RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let peak = watch.lock().unwrap().rss_peak_kib;
    let rss = format!(
        "{:.0} → {:.0} → {:.0}",
        mib(rss_before),
        mib(peak),
        mib(cluster.rss_kib(0))
    );
    let w = watch.lock().unwrap();
    let mut crowd = outcomes
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    crowd.push_str(&format!(
        "; node 1 peaks: {} connections, {} in flight, {} long-polls",
        w.conns_peak, w.in_flight_peak, w.polls_peak
    ));
    if name == "never-read" {
        let at = |s: usize| w.conns.get(s).copied().unwrap_or(-1.0);
        crowd.push_str(&format!(
            "; its connections at 5/15/25/35 s: {}/{}/{}/{}",
            at(5),
            at(15),
            at(25),
            at(35)
        ));
    }
    drop(w);
    let row = Row {
        phase: name,
        load: load_text,
        rss,
        probes,
        calm: format!(
            "{:.1} ms ({} ok, {failed} failed)",
            p99(times.clone()),
            times.len()
        ),
        crowd,
        after,
    };
    eprintln!(
        "{}: rss {} MiB | {} | calm p99 {} | crowd: {} | {}",
        row.phase, row.rss, row.probes, row.calm, row.crowd, row.after
    );
    Ok(row)
}

/// Open `n` connections to `to` at once, send `req` on each, record the reply's status,
/// and keep the connection open until aborted.
async fn crowd(
    n: usize,
    to: SocketAddr,
    req: String,
    out: Outcomes,
    wait: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let (req, out) = (req.clone(), out.clone());
            tokio::spawn(async move {
                let mut tcp = match connect(i, to).await {
                    Ok(tcp) => tcp,
                    Err(e) => return count(&out, format!("connect {:?}", e.kind())),
                };
                count(&out, status_of(&mut tcp, &req, wait).await);
                std::future::pending::<()>().await;
            })
        })
        .collect()
}

/// Hold `keys` locks under the `holder` owner (so that acquires on them queue).
async fn hold_keys(client: &Client, keys: &[String]) -> anyhow::Result<()> {
    for key in keys {
        let req = AcquireRequest {
            owner: "holder".into(),
            ttl_ms: Some(120_000),
            ..Default::default()
        };
        client.acquire_lock(key, req).await?;
    }
    Ok(())
}

pub async fn run(args: OverloadArgs) -> anyhow::Result<()> {
    let cluster = Cluster::start(&args.bin, &args.dir, 1_000_000, 10_000).await?;
    let node: SocketAddr = cluster.url(0).trim_start_matches("http://").parse()?;
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let client = Client::with_timeouts(
        urls.clone(),
        Duration::from_secs(10),
        Duration::from_secs(2),
    )
    .context("client")?;
    let probe_http = reqwest::Client::builder().no_proxy().build()?;
    let url = cluster.url(0);
    eprintln!("probe before: {}", probe(&probe_http, &url).await);
    let hold = Duration::from_secs(args.seconds);

    // The anchor: a lock held through every phase, renewed by a well-behaved holder.
    let anchor = client
        .acquire_lock(
            "anchor",
            AcquireRequest {
                owner: "anchor".into(),
                ttl_ms: Some(3_000),
                ..Default::default()
            },
        )
        .await?;
    let anchor_lost = Arc::new(AtomicBool::new(false));
    let renew = {
        let (client, lost, token) = (client.clone(), anchor_lost.clone(), anchor.token);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let req = ExtendRequest {
                    owner: "anchor".into(),
                    token,
                    ..Default::default()
                };
                if let Err(e) = client.extend_lock("anchor", req).await {
                    if e.code == leasehold_api::error::ErrorCode::NotOwner {
                        lost.store(true, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let mut rows = Vec::new();
    let wait = Duration::from_secs(args.seconds + 5);
    rows.push(
        phase(
            &cluster,
            &probe_http,
            &client,
            "connections",
            format!(
                "{} connections at once, each GET /v1/locks/x then idle",
                args.crowd
            ),
            hold,
            |out| {
                crowd(
                    args.crowd,
                    node,
                    request("GET", "/v1/locks/x", None),
                    out,
                    wait,
                )
            },
        )
        .await?,
    );
    hold_keys(&client, &["hot".to_string()]).await?;
    let body = format!(
        r#"{{"owner":"w","ttl_ms":10000,"wait_ms":{}}}"#,
        args.seconds * 1000
    );
    rows.push(
        phase(
            &cluster,
            &probe_http,
            &client,
            "blocking-one-key",
            format!("{} blocking acquires on one held key", args.waiters),
            hold,
            |out| {
                crowd(
                    args.waiters,
                    node,
                    request("POST", "/v1/locks/hot", Some(&body)),
                    out,
                    wait,
                )
            },
        )
        .await?,
    );
    let keys: Vec<String> = (0..100).map(|k| format!("spread/{k}")).collect();
    hold_keys(&client, &keys).await?;
    rows.push(
        phase(
            &cluster,
            &probe_http,
            &client,
            "blocking-many-keys",
            format!("{} blocking acquires over 100 held keys", args.waiters),
            hold,
            |out| {
                let body = body.clone();
                async move {
                    (0..args.waiters)
                        .map(|i| {
                            let req = request(
                                "POST",
                                &format!("/v1/locks/spread/{}", i % 100),
                                Some(&body),
                            );
                            let out = out.clone();
                            tokio::spawn(async move {
                                let mut tcp = match connect(i, node).await {
                                    Ok(tcp) => tcp,
                                    Err(e) => {
                                        return count(&out, format!("connect {:?}", e.kind()))
                                    }
                                };
                                count(&out, status_of(&mut tcp, &req, wait).await);
                                std::future::pending::<()>().await;
                            })
                        })
                        .collect()
                }
            },
        )
        .await?,
    );

    let mut leases = Vec::new();
    for _ in 0..FLOOD_LEASES {
        let grant = client
            .create_lease(CreateLeaseRequest {
                ttl_ms: 600_000,
                ..Default::default()
            })
            .await?;
        leases.push(grant.lease_id);
    }
    let leases = Arc::new(leases);
    rows.push(
        phase(
            &cluster,
            &probe_http,
            &client,
            "keepalive-flood",
            format!(
                "{} clients, back-to-back keepalives of {FLOOD_LEASES} leases",
                args.flooders
            ),
            hold,
            |out| {
                let leases = leases.clone();
                async move {
                    (0..args.flooders)
                        .map(|i| {
                            let (out, leases) = (out.clone(), leases.clone());
                            tokio::spawn(async move {
                                let mut tcp = match connect(i, node).await {
                                    Ok(tcp) => tcp,
                                    Err(e) => {
                                        return count(&out, format!("connect {:?}", e.kind()))
                                    }
                                };
                                for n in 0.. {
                                    let id = leases[(i * 7 + n) % leases.len()];
                                    let req = request(
                                        "POST",
                                        &format!("/v1/leases/{id}/keepalive"),
                                        Some("{}"),
                                    );
                                    let got =
                                        status_of(&mut tcp, &req, Duration::from_secs(5)).await;
                                    let failed = !got.starts_with('2');
                                    count(&out, got);
                                    if failed {
                                        // A refused or shed client opens a new connection.
                                        tokio::time::sleep(Duration::from_millis(50)).await;
                                        match connect(i, node).await {
                                            Ok(t) => tcp = t,
                                            Err(e) => {
                                                return count(
                                                    &out,
                                                    format!("connect {:?}", e.kind()),
                                                )
                                            }
                                        }
                                    }
                                }
                            })
                        })
                        .collect()
                }
            },
        )
        .await?,
    );

    let mut alive = 0;
    for id in leases.iter() {
        if client.get_lease(*id).await.is_ok() {
            alive += 1;
        }
    }
    let never_read = Duration::from_secs(args.seconds.max(40));
    rows.push(
        phase(&cluster, &probe_http, &client, "never-read", format!("{} connections pipelining 2,000 GET /metrics each and never reading, {} sending nothing; held {} s", args.never_read, args.silent, never_read.as_secs()), never_read, |out| async move {
            (0..args.silent + args.never_read)
                .map(|i| {
                    let reads_not = i < args.never_read;
                    let out = out.clone();
                    tokio::spawn(async move {
                        let mut tcp = match connect(i, node).await {
                            Ok(tcp) => tcp,
                            Err(e) => return count(&out, format!("connect {:?}", e.kind())),
                        };
                        if reads_not {
                            let req = request("GET", "/metrics", None).repeat(2_000);
                            let _ = tcp.write_all(req.as_bytes()).await;
                        }
                        // Never read: node 1's connection count shows when it closes them.
                        count(&out, if reads_not { "never-read opened" } else { "silent opened" });
                        std::future::pending::<()>().await;
                    })
                })
                .collect()
        })
        .await?,
    );

    // Nothing acknowledged lost.
    renew.abort();
    let state = client.get_lock("anchor", Default::default()).await?;
    let anchor_ok = !anchor_lost.load(Ordering::Relaxed)
        && state
            .holder
            .as_ref()
            .is_some_and(|h| h.owner == "anchor" && h.token == anchor.token);
    println!("| phase | load on node 1 | node 1 RSS MiB (before → peak → after) | /healthz / /readyz on node 1 (mid-phase) | calm client's cycle p99 | what the crowd got | once the load stopped |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.phase, r.load, r.rss, r.probes, r.calm, r.crowd, r.after
        );
    }
    println!(
        "\nanchor lock (renewed every 500 ms through every phase): {}; keepalive-flood leases alive after the flood: {alive}/{FLOOD_LEASES}; node RSS now (MiB): {:.0}, {:.0}, {:.0}",
        if anchor_ok { "still held with its token" } else { "LOST" },
        cluster.rss_kib(0) as f64 / 1024.0,
        cluster.rss_kib(1) as f64 / 1024.0,
        cluster.rss_kib(2) as f64 / 1024.0,
    );
    let up = (0..3).filter(|&i| cluster.rss_kib(i) > 0).count();
    println!("nodes still running: {up}/3");
    anyhow::ensure!(up == 3, "a node died");
    anyhow::ensure!(anchor_ok, "the anchor lock was lost");
    anyhow::ensure!(
        alive == FLOOD_LEASES,
        "{} flood leases lost",
        FLOOD_LEASES - alive
    );
    Ok(())
}
