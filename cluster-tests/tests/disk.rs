//! Disk faults on real processes and real files (docs/faults.md, "Disk").
//!
//! A full disk: one node's data directory is a small tmpfs. A writer fills it with large
//! values through the other nodes until that node's appends fail (ENOSPC), while the
//! contending workload and its checker run throughout. The full node must say so at once
//! (503 naming its data directory, `/readyz` not ready, `leasehold_storage_failed 1`), a
//! healthy node must lead, and once the tmpfs grows the node must restart itself from its
//! data directory, catch up and hold every acknowledged write.
//!
//! Mounting a tmpfs needs CAP_SYS_ADMIN (root, as in this project's CI); where `mount` is
//! not permitted the tests say so loudly and do nothing else.

use std::path::{Path, PathBuf};
use std::time::Duration;

use leasehold_api::wire::AcquireRequest;
use leasehold_api::LeaseService;
use leasehold_cluster_tests::chaos::{check, Workload, WorkloadOptions};
use leasehold_cluster_tests::procs::{ProcCluster, Security};
use leasehold_cluster_tests::wait_until;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// A tmpfs mounted on a directory; unmounted (lazily) when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (e.g. "8m") on `dir`; `Ok(None)` if mounting is not
    /// permitted here.
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Option<Tmpfs>> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()?;
        if out.status.success() {
            return Ok(Some(Tmpfs {
                dir: dir.to_path_buf(),
            }));
        }
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        if err.contains("permission") || err.contains("not permitted") || err.contains("only root")
        {
            return Ok(None);
        }
        anyhow::bail!("mount tmpfs on {}: {err}", dir.display())
    }

    /// Grow (or shrink) it: "freeing space".
    fn resize(&self, size: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()?;
        anyhow::ensure!(status.success(), "remount {}", self.dir.display());
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Role {
    Leader,
    Follower,
}

/// Pause the leader past the election timeout until node `full` has `role`.
async fn arrange(cluster: &mut ProcCluster, full: usize, role: Role) -> anyhow::Result<()> {
    for _ in 0..40 {
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
        println!("arrange: node {leader} leads; want node {full} as {role:?}");
        if (leader == full) == (role == Role::Leader) {
            return Ok(());
        }
        let pause = if role == Role::Leader { leader } else { full };
        cluster.pause(pause);
        wait_until(Duration::from_secs(10), || async {
            cluster.leader().await.filter(|l| *l != pause)
        })
        .await?;
        cluster.resume(pause);
    }
    anyhow::bail!("node {full} never became {role:?}")
}

async fn get(url: &str) -> (u16, String) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    match http.get(url).timeout(Duration::from_secs(3)).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
        Err(e) => (0, format!("no answer: {e}")),
    }
}

async fn disk_full(role: Role) {
    let _one = SERIAL.lock().await;
    let full = 0;
    let mut tmpfs = None;
    let mut permitted = true;
    let mut cluster = ProcCluster::start_prepared(3, Security::default(), |i, dir| {
        if i == full {
            match Tmpfs::mount(dir, "10m")? {
                Some(t) => tmpfs = Some(t),
                None => permitted = false,
            }
        }
        Ok(())
    })
    .await
    .expect("cluster starts");
    let Some(tmpfs) = tmpfs else {
        assert!(!permitted);
        eprintln!(
            "SKIPPED: mounting a tmpfs is not permitted here (needs CAP_SYS_ADMIN); \
             the disk-full tests did not run"
        );
        return;
    };
    arrange(&mut cluster, full, role).await.expect("roles");
    let url = cluster.nodes[full].url();

    let load = Workload::start(WorkloadOptions::default(), {
        let clients: Vec<_> = (0..3)
            .map(|i| cluster.client_from(i, Duration::from_millis(600)))
            .collect();
        move |i| clients[i % clients.len()].clone()
    });

    // Fill the full node's disk through the others: 60 KiB values, long TTLs.
    let writer = cluster.client_from((full + 1) % 3, Duration::from_secs(2));
    let value = "v".repeat(60 * 1024);
    let mut acknowledged = Vec::new();
    let mut failed_at = None;
    for n in 0..2_000 {
        let key = format!("fill/{n}");
        let req = AcquireRequest {
            owner: "filler".into(),
            ttl_ms: Some(600_000),
            value: Some(value.clone()),
            ..Default::default()
        };
        if writer.acquire_lock(&key, req).await.is_ok() {
            acknowledged.push(key);
        }
        if n % 10 == 0 {
            let (status, body) = get(&format!("{url}/readyz")).await;
            if status == 503 && body.contains("storage") {
                failed_at = Some(n);
                break;
            }
        }
    }
    let failed_at = failed_at.expect("the full node reported its storage fault");
    println!(
        "{role:?}: storage failed after {failed_at} writes of 60 KiB ({} acknowledged)",
        acknowledged.len()
    );

    // The full node answers at once, naming the fault and its data directory.
    let (status, body) = get(&format!("{url}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("storage failed") && body.contains("data directory"),
        "{body}"
    );
    let (status, body) = get(&format!("{url}/v1/locks/fill/0?stale=true")).await;
    assert_eq!(status, 503, "even a stale read is refused: {body}");
    let (_, metrics) = get(&format!("{url}/metrics")).await;
    assert!(metrics.contains("leasehold_storage_failed 1"), "{metrics}");
    // A healthy node leads, and writes go on.
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a healthy leader");
    assert_ne!(leader, full);
    let after = AcquireRequest {
        owner: "after".into(),
        ttl_ms: Some(600_000),
        ..Default::default()
    };
    writer
        .acquire_lock("after-fault", after)
        .await
        .expect("the cluster writes without the full node");
    acknowledged.push("after-fault".into());

    // Free space: the node restarts itself from its data directory and catches up.
    tmpfs.resize("256m").expect("grow the tmpfs");
    wait_until(Duration::from_secs(60), || async {
        let (status, _) = get(&format!("{url}/readyz")).await;
        (status == 200).then_some(())
    })
    .await
    .expect("the node recovered once space was freed");
    for key in &acknowledged {
        let (status, body) = get(&format!("{url}/v1/locks/{key}")).await;
        assert_eq!(status, 200, "{key} on the recovered node: {body}");
        assert!(body.contains("\"held\":true"), "{key}: {body}");
    }

    cluster.recover().await.expect("cluster recovers");
    let history = load.stop().await;
    let report = check(&history);
    let summary = report.summary(&format!("disk full ({role:?})"), cluster.faults);
    println!("{summary}; errors by code {:?}", history.failures());
    assert!(
        report.violations.is_empty(),
        "{summary}: {:#?}",
        report.violations
    );
    assert!(report.handoffs > 0, "{summary}: no progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_whose_disk_fills_leaves_the_quorum_and_recovers() {
    disk_full(Role::Follower).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_disk_fills_is_replaced_and_recovers() {
    disk_full(Role::Leader).await;
}
