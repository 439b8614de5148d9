//! Clock faults on real `leasehold serve` processes under libfaketime
//! (`leasehold_cluster_tests::clocks`): wall-clock steps of minutes on the leader and on a
//! follower, and a rate skew within the stated drift bound and beyond it.
//!
//! The bounds asserted here are the ones README "Guarantees" states:
//! - the cluster's time (lock-delay, `locked_at_ms`, history and expiry times, the dedupe
//!   window) runs within 1 % of the leaders' monotonic clocks whatever their wall clocks do;
//! - a client's deadline (`t_send + ttl × 0.99`) is safe while the leader's clock runs at
//!   most 1 % fast; beyond that a client may believe it holds after its lease expired, by
//!   at most `ttl × (0.99 − 1/rate)`, and that is the only thing that fails.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leasehold_api::wire::{AcquireRequest, ExpiredParams, ReadParams, ReleaseParams};
use leasehold_api::{Client, LeaseService};
use leasehold_cluster_tests::chaos::{check, Workload, WorkloadOptions};
use leasehold_cluster_tests::clocks::{rate_env, STEP_TAKES};
use leasehold_cluster_tests::linear::{LinearOptions, LinearWorkload};
use leasehold_cluster_tests::procs::{ProcCluster, Security};
use tokio::sync::Mutex;
use tokio::time::Instant;

#[path = "support/lincheck.rs"]
mod lincheck;

/// One cluster of processes at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn acquire(owner: &str, ttl_ms: u64) -> AcquireRequest {
    AcquireRequest {
        owner: owner.into(),
        ttl_ms: Some(ttl_ms),
        ..Default::default()
    }
}

/// A lock with a 2 s lock-delay, abandoned (TTL 1 s): the next holder gets it no earlier
/// than TTL + 99 % of the delay after the first grant, and not minutes later.
async fn lock_delay_ends_in_its_bound(client: &Client, key: &str) -> u64 {
    let start = Instant::now();
    let first = client
        .acquire_lock(
            key,
            AcquireRequest {
                lock_delay_ms: Some(2_000),
                ..acquire("abandons", 1_000)
            },
        )
        .await
        .expect("first acquire");
    let next = client
        .acquire_lock(
            key,
            AcquireRequest {
                wait_ms: Some(20_000),
                ..acquire("next", 30_000)
            },
        )
        .await
        .expect("the lock-delay ends and the waiter is granted, not minutes later");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1_000 + 1_980),
        "granted {took:?} after the abandoned grant: before TTL + 99 % of the lock-delay"
    );
    assert!(
        next.token > first.token,
        "tokens rise: {} after {}",
        next.token,
        first.token
    );
    let wall = wall_ms();
    assert!(
        next.locked_at_ms <= wall + 2_000 && next.locked_at_ms + 60_000 >= wall,
        "locked_at_ms {} is not near the real time {wall}: the cluster's time jumped",
        next.locked_at_ms
    );
    next.token
}

/// A request id retried after the leader's wall clock stepped forward 11 minutes (past the
/// 10-minute maximum of the dedupe window) is still recognised.
async fn retry_is_recognised(client: &Client, key: &str, step: impl AsyncFnOnce()) {
    let req = AcquireRequest {
        request_id: Some(format!("{key}-retried")),
        ..acquire("retrier", 30_000)
    };
    let first = client
        .acquire_lock(key, req.clone())
        .await
        .expect("acquire");
    step().await;
    client
        .release_lock(
            key,
            ReleaseParams {
                owner: "retrier".into(),
                token: first.token,
                request_id: None,
                force: None,
            },
        )
        .await
        .expect("release");
    let again = client.acquire_lock(key, req).await.expect("retry");
    assert_eq!(
        again.token, first.token,
        "the retried request id was forgotten: it took the lock again"
    );
    let state = client
        .get_lock(key, ReadParams::default())
        .await
        .expect("read");
    assert!(!state.held, "the retry must not hold the lock again");
}

/// The history of `key` runs forward in time (newest first), and so does the list of
/// expirations, where the abandoned hold of `key` is listed near the real time.
async fn history_runs_forward(client: &Client, key: &str) {
    let history = client.lock_history(key).await.expect("history");
    let times: Vec<u64> = history.events.iter().map(|e| e.at_ms).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "history times of {key} go back: {times:?}"
    );
    let expired = client
        .expired(ExpiredParams { limit: Some(1000) })
        .await
        .expect("expired list");
    let times: Vec<u64> = expired.expired.iter().map(|e| e.expired_at_ms).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]) || times.windows(2).all(|w| w[0] <= w[1]),
        "expiry times are out of order: {times:?}"
    );
    let ours = expired
        .expired
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("the abandoned hold of {key} is not in the expired list"));
    let wall = wall_ms();
    assert!(
        ours.expired_at_ms <= wall && ours.expired_at_ms + 60_000 >= wall,
        "{key} expired at {} (cluster time), the real time is {wall}: the cluster's time jumped",
        ours.expired_at_ms
    );
}

/// Steps of minutes on the leader's and a follower's wall clock, forward and back, with
/// the contending workload running throughout: lock-delay ends within its bound, a retry
/// is recognised, times never jump, and the checker finds no violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wall_clock_steps_on_the_leader_and_a_follower() {
    let _one = SERIAL.lock().await;
    let mut cluster = ProcCluster::start_with_fake_clocks(3, Security::default())
        .await
        .expect("cluster starts");
    let client = cluster.client_from(0, Duration::from_secs(2));
    let clients: Vec<_> = (0..3)
        .map(|i| cluster.client_from(i, Duration::from_millis(600)))
        .collect();
    let load = Workload::start(WorkloadOptions::default(), move |i| {
        clients[i % clients.len()].clone()
    });
    let checked = LinearWorkload::on(&cluster, LinearOptions::default());

    // The leader's wall clock steps back ten minutes.
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    cluster.step_clock(leader, -600).unwrap();
    tokio::time::sleep(STEP_TAKES).await;
    let t1 = lock_delay_ends_in_its_bound(&client, "clock/delay-1").await;
    history_runs_forward(&client, "clock/delay-1").await;

    // Then eleven minutes forward of the real time.
    retry_is_recognised(&client, "clock/retry-1", async || {
        cluster.step_clock(leader, 660).unwrap();
        tokio::time::sleep(STEP_TAKES).await;
    })
    .await;

    // Both followers' clocks step eleven minutes forward and the leader is killed: the
    // next leader, whose wall clock is 11 minutes ahead, continues the cluster's time,
    // not its own wall clock (`locked_at_ms` is checked against the real time).
    cluster.step_clock((leader + 1) % 3, 660).unwrap();
    cluster.step_clock((leader + 2) % 3, 660).unwrap();
    tokio::time::sleep(STEP_TAKES).await;
    cluster.kill9(leader).await;
    let new_leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    assert_ne!(new_leader, leader);
    let client = cluster.client_from(new_leader, Duration::from_secs(2));
    let t2 = lock_delay_ends_in_its_bound(&client, "clock/delay-2").await;
    assert!(t2 > t1, "tokens rise across the steps");
    retry_is_recognised(&client, "clock/retry-2", async || {
        let other = 3 - new_leader - leader;
        cluster.step_clock(new_leader, -660).unwrap();
        cluster.step_clock(other, 600).unwrap();
        tokio::time::sleep(STEP_TAKES).await;
    })
    .await;
    cluster.step_clock(leader, 0).unwrap();
    cluster.restart(leader).await.unwrap();
    history_runs_forward(&client, "clock/delay-2").await;

    cluster.recover().await.expect("cluster recovers");
    let (history, linear) = tokio::join!(load.stop(), checked.stop());
    let report = check(&history);
    let verdict = lincheck::check(&linear, "wall-clock steps");
    let summary = format!(
        "{}; {}",
        report.summary("wall-clock steps", cluster.faults),
        verdict.summary()
    );
    println!("{summary}; errors by code {:?}", history.failures());
    if !report.violations.is_empty() || !verdict.violations.is_empty() {
        cluster.keep_logs();
    }
    report.assert_clean(&summary);
    verdict.assert_clean(&summary);
}

/// What a client that never renews observes of its hold on a cluster whose clocks run at
/// `rate`: when its client deadline fell, and when another holder's grant was first seen,
/// with reads that bracket the grant.
struct Skewed {
    /// The client deadline of the first hold, from its acquire's send.
    deadline: Duration,
    /// Invoke time of the last read that still showed the first holder.
    last_seen_held: Duration,
    /// Completion time of the first read that showed the next holder.
    first_seen_next: Duration,
    tokens: (u64, u64),
}

async fn skewed_handoff(rate: f64, ttl_ms: u64) -> Skewed {
    let mut cluster =
        ProcCluster::start_with_node_env(3, Security::default(), &[], &|_| rate_env(rate))
            .await
            .expect("cluster starts");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let client = cluster.client_from(leader, Duration::from_secs(2));
    let t_send = Instant::now();
    let first = client
        .acquire_lock("skew/k", acquire("first", ttl_ms))
        .await
        .unwrap();
    // SPEC §2 rule 5 with the default 1 % drift.
    let deadline = Duration::from_millis(ttl_ms).mul_f64(0.99);
    let waiter = client.clone();
    let next = tokio::spawn(async move {
        waiter
            .acquire_lock(
                "skew/k",
                AcquireRequest {
                    wait_ms: Some(ttl_ms * 2),
                    ..acquire("next", 30_000)
                },
            )
            .await
    });
    // Poll with linearizable reads: the grant happened after the invoke of the last read
    // that showed `first` and before the completion of the first read that showed `next`.
    let mut last_seen_held = Duration::ZERO;
    let first_seen_next = loop {
        let invoked = t_send.elapsed();
        let state = client
            .get_lock("skew/k", ReadParams::default())
            .await
            .unwrap();
        let done = t_send.elapsed();
        match state.holder.map(|h| (h.owner, h.token)) {
            Some((owner, token)) if owner == "first" && token == first.token => {
                last_seen_held = invoked;
            }
            Some((owner, _)) if owner == "next" => break done,
            _ => {}
        }
        assert!(
            done < Duration::from_millis(ttl_ms * 3),
            "no handoff within 3 TTLs"
        );
    };
    let next = next.await.unwrap().expect("the waiter is granted");
    cluster.recover().await.unwrap();
    Skewed {
        deadline,
        last_seen_held,
        first_seen_next,
        tokens: (first.token, next.token),
    }
}

/// Every node's clocks run 0.5 % fast, inside the 1 % the client deadline allows for: the
/// lease outlives the client deadline, so no second holder while the first believes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_skew_within_the_drift_bound_keeps_the_client_deadline_safe() {
    let _one = SERIAL.lock().await;
    let s = skewed_handoff(1.005, 10_000).await;
    println!(
        "rate 1.005: deadline {:?}, still held at {:?}, next holder seen by {:?}",
        s.deadline, s.last_seen_held, s.first_seen_next
    );
    assert!(
        s.last_seen_held >= s.deadline,
        "the lease ended before the client deadline ({:?}): last seen held at {:?}",
        s.deadline,
        s.last_seen_held
    );
    assert!(s.tokens.1 > s.tokens.0);
}

/// Every node's clocks run 10 % fast, beyond the bound: the documented failure, and only
/// it. The lease expires before the client's deadline, so another client is granted while
/// the first still believes it holds, by at most `ttl × (0.99 − 1/1.1)` (plus the reads'
/// round trips); the fencing token still rises, so a resource that checks tokens refuses
/// the stale holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_skew_beyond_the_bound_fails_only_as_documented() {
    let _one = SERIAL.lock().await;
    let ttl_ms = 5_000;
    let s = skewed_handoff(1.10, ttl_ms).await;
    println!(
        "rate 1.10: deadline {:?}, still held at {:?}, next holder seen by {:?}",
        s.deadline, s.last_seen_held, s.first_seen_next
    );
    assert!(
        s.first_seen_next < s.deadline,
        "expected the documented overlap: next holder first seen at {:?}, deadline {:?}",
        s.first_seen_next,
        s.deadline
    );
    let bound = Duration::from_millis(ttl_ms).mul_f64(0.99 - 1.0 / 1.10);
    let overlap = s.deadline - s.last_seen_held.min(s.deadline);
    assert!(
        overlap <= bound + Duration::from_millis(150),
        "overlap {overlap:?} beyond the documented {bound:?}"
    );
    assert!(s.tokens.1 > s.tokens.0, "tokens still rise");
}
