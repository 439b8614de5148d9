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
        // Not root, or root without CAP_SYS_ADMIN (a container): util-linux says so in
        // several ways.
        // SAFETY: geteuid(2) has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let refused = ["permission", "not permitted", "only root", "superuser"]
            .iter()
            .any(|m| err.contains(m));
        if !root || refused {
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
    // Every node's data directory is a small tmpfs; once roles are known, all but the
    // one to fill are grown, so only that one runs out of space.
    let mut mounts = Vec::new();
    let mut permitted = true;
    let mut cluster = ProcCluster::start_prepared(3, Security::default(), |_, dir, _| {
        match Tmpfs::mount(dir, "10m")? {
            Some(t) => mounts.push(t),
            None => permitted = false,
        }
        Ok(())
    })
    .await
    .expect("cluster starts");
    if !permitted {
        eprintln!(
            "SKIPPED: mounting a tmpfs is not permitted here (needs CAP_SYS_ADMIN); \
             the disk-full tests did not run"
        );
        return;
    }
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let full = match role {
        Role::Leader => leader,
        Role::Follower => (leader + 1) % 3,
    };
    for (i, mount) in mounts.iter().enumerate() {
        if i != full {
            mount.resize("256m").expect("grow the others' tmpfs");
        }
    }
    let tmpfs = &mounts[full];
    let url = cluster.nodes[full].url();
    let term_of = |body: String| {
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["term"]
            .as_u64()
            .unwrap()
    };
    let term_before = term_of(get(&format!("{url}/v1/cluster")).await.1);

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
    // 10 MiB fills in under 200 writes; the others (256 MiB each) hold far more than 600.
    for n in 0..600 {
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
    if role == Role::Leader {
        // It led until its disk filled; the others then elected a leader in a new term.
        wait_until(Duration::from_secs(20), || async {
            let other = cluster.nodes[(full + 1) % 3].url();
            let term = term_of(get(&format!("{other}/v1/cluster")).await.1);
            (term > term_before).then_some(())
        })
        .await
        .expect("a new term after the leader's disk filled");
    }
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
    // The status says so too (the rest of it is frozen at the fault).
    let (status, body) = get(&format!("{url}/v1/cluster")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"storage_fault\":\"this node's storage failed"),
        "{body}"
    );
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
    // Unmount (lazily) before the cluster's directory is removed, so nothing is left.
    drop(mounts);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_whose_disk_fills_leaves_the_quorum_and_recovers() {
    disk_full(Role::Follower).await;
}

/// Ignored in the default suite: about one run in five, after the full leader's core
/// stopped, a healthy node's term ran away (T1 to T15428 within a second) and the other
/// follower's openraft core hit a debug assertion (`has_log_id`, "Some(log_id) <=
/// self.committed()") while handling its AppendEntries, leaving no leader. Not explained
/// yet (docs/faults.md, "Disk"). Run it with
/// `cargo test -p leasehold-cluster-tests --test disk -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_disk_fills_is_replaced_and_recovers() {
    disk_full(Role::Leader).await;
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Damage {
    /// The sled file cut to half its length (a bad copy, a torn disk).
    Truncated,
    /// 4 KiB in the middle of the sled file overwritten.
    Garbled,
    /// The whole data directory deleted.
    Wiped,
    /// One log entry's format version byte flipped (written by another build, or a bit
    /// flip on the disk), through sled, so sled itself sees nothing wrong.
    FlippedVersion,
    /// The stored snapshot record replaced by garbage, through sled.
    GarbledSnapshot,
}

impl Damage {
    /// What the refusal to start must say (besides `--rejoin`).
    fn expected(self) -> &'static [&'static str] {
        match self {
            Damage::Truncated | Damage::Garbled => &["entries were lost", "log.watermark"],
            Damage::FlippedVersion => &["cannot be read", "format version 254", "raft"],
            Damage::GarbledSnapshot => &["stored snapshot", "raft"],
            Damage::Wiped => &["it is empty", "as a member that held data"],
        }
    }
}

/// Wait for node `i`'s process to exit; its status and its log.
async fn wait_exit(cluster: &mut ProcCluster, i: usize) -> (std::process::ExitStatus, String) {
    let status = wait_until(Duration::from_secs(30), || {
        let status = cluster.exited(i);
        async move { status }
    })
    .await
    .expect("the node exits");
    let log =
        std::fs::read_to_string(cluster.nodes[i].data_dir.join("node.log")).unwrap_or_default();
    (status, log)
}

async fn damaged_member_rejoins(damage: Damage) {
    let _one = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(3).await.expect("cluster starts");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let victim = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let client = cluster.client_from(leader, Duration::from_secs(2));
    let mut acknowledged = Vec::new();
    for n in 0..60 {
        let key = format!("k/{n}");
        let req = AcquireRequest {
            owner: "writer".into(),
            ttl_ms: Some(600_000),
            value: Some(format!("{n}:").repeat(500)),
            ..Default::default()
        };
        client.acquire_lock(&key, req).await.expect("acknowledged");
        acknowledged.push(key);
    }
    // The victim applied everything (so its log reached the end), and its watermark
    // (written in the background every 200 ms) recorded it.
    let last = client.cluster_status().await.unwrap().commit_index;
    wait_until(Duration::from_secs(10), || async {
        let (_, body) = get(&format!("{}/v1/cluster", cluster.nodes[victim].url())).await;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["applied_index"].as_u64()? >= last).then_some(())
    })
    .await
    .expect("the victim caught up");
    let watermark = cluster.nodes[victim]
        .data_dir
        .join("data")
        .join("log.watermark");
    wait_until(Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&watermark).ok()?;
        let index: u64 = text
            .split_whitespace()
            .find_map(|f| f.strip_prefix("index="))?
            .parse()
            .ok()?;
        (index >= last).then_some(())
    })
    .await
    .expect("the victim's watermark recorded the whole log");
    // The cluster recorded the victim's data-directory identity once it caught up.
    let recorded = std::fs::read_to_string(
        cluster.nodes[victim]
            .data_dir
            .join("data")
            .join("incarnation"),
    )
    .expect("a durable member has an identity file");
    let victim_id = cluster.nodes[victim].id;
    wait_until(Duration::from_secs(10), || async {
        let (_, body) = get(&format!("{}/v1/cluster", cluster.nodes[leader].url())).await;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let member = v["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"].as_u64() == Some(victim_id))?
            .clone();
        let incarnation = member["incarnation"].as_u64()?;
        recorded.contains(&incarnation.to_string()).then_some(())
    })
    .await
    .expect("the cluster recorded the victim's identity");
    cluster.kill9(victim).await;
    let data = cluster.nodes[victim].data_dir.join("data");
    let db = data.join("raft").join("db");
    match damage {
        Damage::Truncated => {
            let len = std::fs::metadata(&db).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
            file.set_len(len / 2).unwrap();
        }
        Damage::Garbled => {
            use std::io::{Seek, SeekFrom, Write};
            let len = std::fs::metadata(&db).unwrap().len();
            let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
            file.seek(SeekFrom::Start(len / 2)).unwrap();
            file.write_all(&[0xA5; 4096]).unwrap();
        }
        Damage::Wiped => std::fs::remove_dir_all(&data).unwrap(),
        Damage::FlippedVersion => {
            let db = sled::open(data.join("raft")).unwrap();
            let logs = db.open_tree("logs").unwrap();
            let (key, value) = logs.last().unwrap().expect("the log has entries");
            let mut value = value.to_vec();
            value[0] ^= 0xFF;
            logs.insert(key, value).unwrap();
            db.flush().unwrap();
        }
        Damage::GarbledSnapshot => {
            let db = sled::open(data.join("raft")).unwrap();
            let snapshot = db.open_tree("snapshot").unwrap();
            snapshot.insert(b"current", vec![0xA5; 64]).unwrap();
            db.flush().unwrap();
        }
    }
    {
        // It refuses to start, naming the file, what is wrong and the way out (a wiped
        // member: that the cluster knew it with data).
        cluster.restart(victim).await.unwrap();
        let (status, log) = wait_exit(&mut cluster, victim).await;
        assert!(!status.success(), "{log}");
        for phrase in damage.expected().iter().chain(&["--rejoin"]) {
            assert!(log.contains(phrase), "{damage:?}: no {phrase:?} in {log}");
        }
    }
    cluster.restart_with(victim, &["--rejoin"]).await.unwrap();
    let url = cluster.nodes[victim].url();
    wait_until(Duration::from_secs(60), || async {
        let (status, _) = get(&format!("{url}/readyz")).await;
        let (_, body) = get(&format!("{}/v1/cluster", cluster.nodes[leader].url())).await;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let id = cluster.nodes[victim].id;
        let voter = v["members"]
            .as_array()?
            .iter()
            .any(|m| m["id"].as_u64() == Some(id) && m["voter"].as_bool() == Some(true));
        (status == 200 && voter).then_some(())
    })
    .await
    .expect("the member rejoined as a voter");
    if damage != Damage::Wiped {
        let parent = data.parent().unwrap();
        let aside = std::fs::read_dir(parent)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("data.rejoin-"));
        assert!(aside, "the damaged directory was kept aside");
    }
    for key in &acknowledged {
        let (status, body) = get(&format!("{url}/v1/locks/{key}?stale=true")).await;
        assert_eq!(status, 200, "{key} on the rejoined node: {body}");
        assert!(body.contains("\"held\":true"), "{key}: {body}");
    }
    // It is a working voter: with another node down, it and the leader make the quorum.
    cluster.kill9(other).await;
    let via_victim = cluster.client_from(victim, Duration::from_secs(2));
    let req = AcquireRequest {
        owner: "after".into(),
        ttl_ms: Some(600_000),
        ..Default::default()
    };
    via_victim
        .acquire_lock("after-rejoin", req)
        .await
        .expect("a write commits with the rejoined node in the quorum");
    for node in &cluster.nodes {
        let log = std::fs::read_to_string(node.data_dir.join("node.log")).unwrap_or_default();
        assert!(
            !log.contains("panicked"),
            "node {} panicked: {log}",
            node.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncated_log_refuses_to_start_and_rejoins() {
    damaged_member_rejoins(Damage::Truncated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_garbled_log_refuses_to_start_and_rejoins() {
    damaged_member_rejoins(Damage::Garbled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_entry_of_another_format_version_refuses_to_start_and_rejoins() {
    damaged_member_rejoins(Damage::FlippedVersion).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_garbled_snapshot_refuses_to_start_and_rejoins() {
    damaged_member_rejoins(Damage::GarbledSnapshot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_member_rejoins() {
    damaged_member_rejoins(Damage::Wiped).await;
}
