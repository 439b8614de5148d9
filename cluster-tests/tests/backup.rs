//! Backups on real processes and real files (docs/faults.md, "Disk"; README "Operating:
//! backups"): `leasehold snapshot save` from a live three-node cluster under the
//! contending workload, `snapshot status`, and `snapshot restore` into every member of a
//! new cluster. Every hold of the backup is there with its owner and token, the restored
//! leases run out as usual, and the new cluster's tokens and lease ids stay above every
//! one the old cluster issued, even after the save.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use leasehold_api::wire::{AcquireRequest, ReadParams, RegisterRequest, SemaphoreAcquireRequest};
use leasehold_api::LeaseService;
use leasehold_cluster_tests::chaos::{check, Workload, WorkloadOptions};
use leasehold_cluster_tests::procs::{ProcCluster, Security};
use leasehold_cluster_tests::{leasehold_bin, wait_until};

const BUMP: u64 = 1_000_000;

fn leasehold(args: &[&str]) -> Output {
    std::process::Command::new(leasehold_bin())
        .args(args)
        .env("LEASEHOLD_LOG", "warn")
        .output()
        .expect("run leasehold")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `snapshot restore` for member `id` (0-based) of `members`, as its `serve` is configured.
fn restore(file: &Path, dir: &Path, id: usize, members: &str) -> Output {
    let me = format!("{}=", id + 1);
    let peer_addr = members
        .split(',')
        .find_map(|m| m.strip_prefix(&me))
        .expect("the member is listed");
    leasehold(&[
        "snapshot",
        "restore",
        "--peer-addr",
        peer_addr,
        &file.display().to_string(),
        "--data-dir",
        &dir.display().to_string(),
        "--node-id",
        &(id + 1).to_string(),
        "--cluster-members",
        members,
        "--bump-tokens",
        &BUMP.to_string(),
    ])
}

fn acquire(owner: &str, ttl_ms: u64) -> AcquireRequest {
    leasehold_cluster_tests::acquire_request(owner, ttl_ms, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_of_a_live_cluster_restores_into_a_new_one_with_tokens_above_the_old() {
    let old = ProcCluster::start(3).await.expect("old cluster starts");
    let client = old.client_from(0, Duration::from_secs(2));

    // What the backup must carry: locks held for a minute, one lock whose owner is gone
    // (a 3 s lease nobody renews), a name, and two of three semaphore slots.
    let mut kept = Vec::new();
    for i in 0..20 {
        let key = format!("keep/{i}");
        let holder = client
            .acquire_lock(&key, acquire(&format!("owner-{i}"), 60_000))
            .await
            .expect("acquire");
        kept.push((key, holder));
    }
    let orphan = client
        .acquire_lock("orphan", acquire("gone", 3_000))
        .await
        .unwrap();
    let name = client
        .register_name(
            "svc/primary",
            RegisterRequest {
                owner: "node-a".into(),
                value: Some("10.0.0.1:80".into()),
                ttl_ms: Some(60_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut slots = Vec::new();
    for owner in ["w1", "w2"] {
        let slot = client
            .acquire_semaphore(
                "pool",
                SemaphoreAcquireRequest {
                    owner: owner.into(),
                    limit: 3,
                    ttl_ms: Some(60_000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        slots.push((slot.owner, slot.token));
    }

    // Save under load: the contending workload runs on every node throughout.
    let load = Workload::start(WorkloadOptions::default(), {
        let clients: Vec<_> = (0..3)
            .map(|i| old.client_from(i, Duration::from_millis(600)))
            .collect();
        move |i| clients[i % clients.len()].clone()
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.snap");
    wait_until(Duration::from_secs(10), || async {
        client
            .get_lock("k1", ReadParams::default())
            .await
            .is_ok_and(|s| s.held)
            .then_some(())
    })
    .await
    .expect("the workload makes progress");
    let endpoints = old.urls().join(",");
    let saved = leasehold(&[
        "snapshot",
        "save",
        &file.display().to_string(),
        "--endpoints",
        &endpoints,
    ]);
    assert!(saved.status.success(), "{}", text(&saved));
    // Keep the load going a little after the save: the old cluster issues tokens the
    // backup does not know.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let history = load.stop().await;
    let report = check(&history);
    let summary = report.summary("snapshot save under load", 0);
    println!("{summary}");
    assert!(
        report.violations.is_empty(),
        "{summary}: {:#?}",
        report.violations
    );
    assert!(report.handoffs > 0, "{summary}: no progress");
    let last_old = client
        .acquire_lock("after-the-save", acquire("late", 60_000))
        .await
        .unwrap();

    let status = leasehold(&["snapshot", "status", &file.display().to_string(), "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let info: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let saved_token = info["last_token"].as_u64().unwrap();
    assert!(saved_token >= slots[1].1, "{info}");
    assert!(
        saved_token < last_old.token,
        "the old cluster went on issuing tokens after the save: {info}"
    );
    drop(old);

    // A damaged copy is refused by name, before anything is written.
    let bytes = std::fs::read(&file).unwrap();
    let damaged = dir.path().join("damaged.snap");
    let mut flipped = bytes.clone();
    let at = flipped.len() - 10;
    flipped[at] ^= 0x01;
    std::fs::write(&damaged, &flipped).unwrap();
    let empty = dir.path().join("never-written");
    let refused = restore(&damaged, &empty, 0, "1=127.0.0.1:1");
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("SHA-256"), "{}", text(&refused));
    assert!(!empty.exists(), "a refused restore wrote nothing");

    // Restore every member of a new cluster (new addresses) from the file, and start it.
    let new = ProcCluster::start_prepared(3, Security::default(), |i, data, members| {
        let out = restore(&file, data, i, members);
        anyhow::ensure!(
            out.status.success(),
            "restore node {}: {}",
            i + 1,
            text(&out)
        );
        // A second restore into the now-used directory is refused.
        let again = restore(&file, data, i, members);
        anyhow::ensure!(
            again.status.code() == Some(1) && text(&again).contains("not empty"),
            "{}",
            text(&again)
        );
        Ok(())
    })
    .await
    .expect("the restored cluster starts and elects a leader");
    let client = new.client_from(0, Duration::from_secs(2));

    for (key, holder) in &kept {
        let state = client.get_lock(key, ReadParams::default()).await.unwrap();
        let h = state
            .holder
            .unwrap_or_else(|| panic!("{key} is not held after the restore"));
        assert_eq!((&h.owner, h.token), (&holder.owner, holder.token), "{key}");
        assert_eq!(h.lease_id, holder.lease_id, "{key}");
    }
    let record = client
        .get_name("svc/primary", ReadParams::default())
        .await
        .unwrap()
        .record
        .expect("the name is registered after the restore");
    assert_eq!(
        (record.owner.as_str(), record.value.as_deref(), record.token),
        ("node-a", Some("10.0.0.1:80"), name.token)
    );
    let pool = client
        .get_semaphore("pool", ReadParams::default())
        .await
        .unwrap();
    let held: Vec<(String, u64)> = pool
        .holders
        .iter()
        .map(|h| (h.owner.clone(), h.token))
        .collect();
    assert_eq!((pool.limit, held), (3, slots));

    // The restored leases are live leases: nobody renews the orphan's, so it runs out.
    assert!(
        client
            .get_lock("orphan", ReadParams::default())
            .await
            .unwrap()
            .held
    );
    wait_until(Duration::from_secs(15), || async {
        client
            .get_lock("orphan", ReadParams::default())
            .await
            .is_ok_and(|s| !s.held)
            .then_some(())
    })
    .await
    .expect("the restored lease of a gone owner expires");
    let _ = orphan;

    // New grants count on from above the floor: above every token and lease id the old
    // cluster issued, including those after the save.
    let fresh = client
        .acquire_lock("fresh", acquire("new", 10_000))
        .await
        .unwrap();
    assert!(
        fresh.token > last_old.token,
        "{} <= {}",
        fresh.token,
        last_old.token
    );
    assert!(fresh.token > saved_token + BUMP, "{fresh:?}");
    assert!(fresh.lease_id > last_old.lease_id, "{fresh:?}");
}
