//! `/metrics` on a live durable three-node cluster: every family an operator of etcd or
//! Consul looks for is there and moves with what the cluster did, labels stay bounded
//! (route templates, never keys), each in-process node counts only its own work, and
//! `promtool` accepts the exposition and the shipped alert rules (`deploy/prometheus/`).
//!
//! promtool comes from Debian's `prometheus` package; `scripts/test-deps.sh` installs it
//! (the README's test command runs that script first).

use std::path::PathBuf;
use std::time::Duration;

use leasehold_api::wire::{ExtendRequest, ReadParams, ReleaseParams};
use leasehold_api::{Client, LeaseService};
use leasehold_cluster_tests::{
    acquire_request as acquire, wait_until, ClusterOptions, TestCluster,
};

/// The value of the first series of `name` whose labels include every pair of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, v) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| v.parse().ok()).flatten()
        })
}

async fn scrape(url: &str) -> String {
    reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .unwrap()
}

fn promtool() -> PathBuf {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v promtool"])
        .output()
        .expect("run sh");
    assert!(
        found.status.success(),
        "promtool is missing: run scripts/test-deps.sh (installs Debian's `prometheus`)"
    );
    PathBuf::from(String::from_utf8_lossy(&found.stdout).trim())
}

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_family_moves_with_the_cluster_and_promtool_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::start(ClusterOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await
    .unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let follower = (leader + 1) % 3;
    let via_leader = Client::new([cluster.url(leader)]).unwrap();
    let via_follower = Client::new([cluster.url(follower)]).unwrap();

    // A grant, a queued waiter handed the lock on release, a keepalive, an expiry.
    let a = via_leader
        .acquire_lock("jobs/a", acquire("alice", 10_000, None))
        .await
        .unwrap();
    let waiter = {
        let c = via_follower.clone();
        tokio::spawn(async move {
            c.acquire_lock("jobs/a", acquire("bob", 10_000, Some(5_000)))
                .await
        })
    };
    wait_until(Duration::from_secs(5), || async {
        let s = via_leader
            .get_lock("jobs/a", ReadParams::default())
            .await
            .ok()?;
        (s.waiters == 1).then_some(())
    })
    .await
    .unwrap();
    via_leader
        .release_lock(
            "jobs/a",
            ReleaseParams {
                owner: "alice".into(),
                token: a.token,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let b = waiter.await.unwrap().expect("the waiter got the lock");
    via_follower
        .extend_lock(
            "jobs/a",
            ExtendRequest {
                owner: "bob".into(),
                token: b.token,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    via_leader
        .acquire_lock("jobs/short", acquire("carol", 500, None))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), || async {
        let s = via_leader
            .get_lock("jobs/short", ReadParams::default())
            .await
            .ok()?;
        (!s.held).then_some(())
    })
    .await
    .expect("the unrenewed lock expires");
    // A snapshot build on the leader, and a long-poll open on the follower while we scrape.
    cluster
        .node(leader)
        .raft()
        .trigger()
        .snapshot()
        .await
        .unwrap();
    let poll = {
        let c = via_follower.clone();
        let index = via_follower
            .get_lock("jobs/a", ReadParams::default())
            .await
            .unwrap()
            .index;
        tokio::spawn(async move {
            c.get_lock(
                "jobs/a",
                ReadParams {
                    index: Some(index),
                    wait_ms: Some(5_000),
                    ..Default::default()
                },
            )
            .await
        })
    };
    let on_follower = wait_until(Duration::from_secs(5), || async {
        let text = scrape(&cluster.url(follower)).await;
        (value(&text, "leasehold_long_polls_in_flight", &[])? >= 1.0).then_some(text)
    })
    .await
    .expect("the open long-poll is counted");
    poll.abort();
    let on_leader = wait_until(Duration::from_secs(10), || async {
        let text = scrape(&cluster.url(leader)).await;
        (value(&text, "leasehold_snapshot_duration_seconds_count", &[])? >= 1.0).then_some(text)
    })
    .await
    .expect("the snapshot build is timed");

    let at_least = |text: &str, name: &str, labels: &[(&str, &str)], min: f64| {
        let v =
            value(text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"));
        assert!(v >= min, "{name} {labels:?} = {v}, expected at least {min}");
    };
    let lock_route = [
        ("method", "POST"),
        ("route", "/v1/locks/{*key}"),
        ("status", "200"),
    ];
    // HTTP, by route template; the key never appears in a label.
    at_least(
        &on_leader,
        "leasehold_http_requests_total",
        &lock_route,
        2.0,
    );
    at_least(
        &on_leader,
        "leasehold_http_request_duration_seconds_count",
        &[("method", "POST"), ("route", "/v1/locks/{*key}")],
        2.0,
    );
    for text in [&on_leader, &on_follower] {
        assert!(
            !text.contains("jobs/"),
            "a key leaked into a label:\n{text}"
        );
    }
    // Raft and disk.
    at_least(&on_leader, "leasehold_raft_proposals_total", &[], 4.0);
    at_least(&on_leader, "leasehold_raft_applied_entries_total", &[], 4.0);
    at_least(
        &on_follower,
        "leasehold_raft_applied_entries_total",
        &[],
        4.0,
    );
    at_least(&on_leader, "leasehold_raft_is_leader", &[], 1.0);
    at_least(&on_leader, "leasehold_raft_voters", &[], 3.0);
    at_least(&on_leader, "leasehold_raft_voters_reachable", &[], 3.0);
    at_least(&on_follower, "leasehold_raft_has_leader", &[], 1.0);
    at_least(
        &on_leader,
        "leasehold_disk_wal_fsync_duration_seconds_count",
        &[],
        4.0,
    );
    at_least(
        &on_follower,
        "leasehold_disk_wal_fsync_duration_seconds_count",
        &[],
        4.0,
    );
    // Every append was made durable by some fsync: the group commit's count matches.
    for text in [&on_leader, &on_follower] {
        at_least(text, "leasehold_disk_wal_appends_per_fsync_count", &[], 4.0);
        at_least(text, "leasehold_disk_wal_appends_per_fsync_sum", &[], 4.0);
    }
    assert_eq!(
        value(&on_leader, "leasehold_storage_failed", &[]),
        Some(0.0)
    );
    // Locks and leases, as each node applied them.
    for text in [&on_leader, &on_follower] {
        at_least(text, "leasehold_grants_total", &[("kind", "lock")], 3.0);
        at_least(text, "leasehold_handoffs_total", &[("kind", "lock")], 1.0);
        at_least(text, "leasehold_leases_expired_total", &[], 1.0);
        at_least(text, "leasehold_holds", &[("kind", "lock")], 1.0);
        at_least(text, "leasehold_leases", &[], 1.0);
    }
    // Keepalives and long-polls count where they were served: the follower.
    at_least(&on_follower, "leasehold_keepalives_total", &[], 1.0);
    assert_eq!(
        value(&on_leader, "leasehold_keepalives_total", &[]),
        Some(0.0)
    );
    // The process.
    at_least(&on_leader, "process_resident_memory_bytes", &[], 1.0);
    at_least(&on_leader, "process_open_fds", &[], 1.0);
    assert!(value(&on_leader, "process_cpu_seconds_total", &[]).is_some());

    // promtool accepts the exposition (its parser and its naming lints).
    for text in [&on_leader, &on_follower] {
        let mut check = tokio::process::Command::new(promtool())
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use tokio::io::AsyncWriteExt;
        let mut stdin = check.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).await.unwrap();
        drop(stdin);
        let out = check.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A leader change is seen by the survivors.
    cluster.kill(leader).await;
    let survivor = follower;
    wait_until(Duration::from_secs(10), || async {
        let text = scrape(&cluster.url(survivor)).await;
        (value(&text, "leasehold_raft_leader_changes_seen_total", &[])? >= 1.0).then_some(())
    })
    .await
    .expect("the new leader is counted as a change");
    cluster.shutdown().await;
}

#[test]
fn the_alert_rules_load_and_their_unit_tests_pass() {
    let dir = rules_dir();
    for args in [
        vec!["check", "rules", "leasehold.rules.yml"],
        vec!["test", "rules", "leasehold.rules.test.yml"],
    ] {
        let out = std::process::Command::new(promtool())
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
