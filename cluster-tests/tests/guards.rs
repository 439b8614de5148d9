//! Guards over the HTTP client and a three-node cluster: renewal, loss, jeopardy,
//! election handover, `with_lock`.

use std::time::Duration;

use leasehold_api::guard::{
    leader, Election, GuardOptions, GuardState, Lock, LossReason, Semaphore,
};
use leasehold_api::wire::ReadParams;
use leasehold_api::{with_lock, Client, GuardError, LeaseService};
use leasehold_cluster_tests::{wait_until, TestCluster};
use tokio::time::Instant;

fn client(cluster: &TestCluster) -> Client {
    Client::new((0..cluster.len()).map(|i| cluster.url(i))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewal_keeps_a_lock_through_several_ttls() {
    let cluster = TestCluster::start3().await.unwrap();
    let c = client(&cluster);
    let guard = Lock::new(&c, "renewed")
        .ttl(Duration::from_millis(900))
        .acquire()
        .await
        .unwrap();
    let token = guard.token();
    // Time passing is the subject of this test: four TTLs without touching the lock.
    tokio::time::sleep(Duration::from_millis(3600)).await;
    assert_eq!(guard.state(), GuardState::Held);
    let state = c.get_lock("renewed", ReadParams::default()).await.unwrap();
    assert!(state.held);
    assert_eq!(
        state.holder.unwrap().token,
        token,
        "same hold, never re-acquired"
    );
    guard.release().await.unwrap();
    assert!(
        !c.get_lock("renewed", ReadParams::default())
            .await
            .unwrap()
            .held
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_the_lease_from_outside_fires_lost_with_the_reason() {
    let cluster = TestCluster::start3().await.unwrap();
    let c = client(&cluster);
    let guard = Lock::new(&c, "revoked")
        .ttl(Duration::from_secs(3))
        .acquire()
        .await
        .unwrap();
    let lost = guard.lost();
    c.revoke_lease(guard.lease_id(), Default::default())
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), lost)
        .await
        .expect("lost fires");
    assert!(matches!(reason, LossReason::Expired(_)), "{reason:?}");
    assert!(!guard.is_held());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_cluster_means_jeopardy_then_lost_by_the_client_deadline() {
    let mut cluster = TestCluster::start3().await.unwrap();
    let c = client(&cluster);
    let ttl = Duration::from_millis(1500);
    let guard = Lock::new(&c, "cut-off").ttl(ttl).acquire().await.unwrap();
    let mut states = guard.watch();
    let lost = guard.lost();
    let killed_at = Instant::now();
    for i in 0..cluster.len() {
        cluster.kill(i).await;
    }
    // Jeopardy comes first (renewals fail while the deadline holds) ...
    let saw_jeopardy = tokio::time::timeout(ttl, states.wait_for(|s| *s == GuardState::Jeopardy))
        .await
        .is_ok();
    assert!(saw_jeopardy, "never in jeopardy: {:?}", guard.state());
    // ... then Lost, no later than the client deadline (last t_send + ttl × 0.99). Renewals
    // may still succeed while the nodes shut down one by one, so the bound is the guard's
    // own deadline, not "kill time + ttl".
    let reason = tokio::time::timeout(ttl * 4, lost)
        .await
        .expect("lost fires");
    let lost_at = Instant::now();
    assert!(matches!(reason, LossReason::Unreachable(_)), "{reason:?}");
    let deadline = guard.valid_until();
    assert!(
        deadline <= killed_at + ttl * 3,
        "renewed long after the kill"
    );
    assert!(
        lost_at <= deadline + Duration::from_millis(100),
        "lost {:?} after the client deadline",
        lost_at - deadline
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocking_guard_reanchors_and_with_lock_releases() {
    let cluster = TestCluster::start3().await.unwrap();
    let c = client(&cluster);
    let first = Lock::new(&c, "queue")
        .ttl(Duration::from_secs(3))
        .acquire()
        .await
        .unwrap();
    let c2 = c.clone();
    let second = tokio::spawn(async move {
        Lock::new(&c2, "queue")
            .ttl(Duration::from_secs(3))
            .wait(Duration::from_secs(10))
            .acquire()
            .await
    });
    wait_until(Duration::from_secs(5), || async {
        let s = c.get_lock("queue", ReadParams::default()).await.ok()?;
        (s.waiters == 1).then_some(())
    })
    .await
    .unwrap();
    let first_token = first.token();
    first.release().await.unwrap();
    let second = second.await.unwrap().unwrap();
    assert!(second.token() > first_token);
    assert_eq!(second.state(), GuardState::Held);
    drop(second); // best-effort release in the background
    wait_until(Duration::from_secs(5), || async {
        let s = c.get_lock("queue", ReadParams::default()).await.ok()?;
        (!s.held).then_some(())
    })
    .await
    .expect("dropping a guard releases it");

    let out = with_lock(&c, "job", GuardOptions::default(), |guard| async move {
        // The work gets the guard: token, lease, deadline and loss signal.
        assert!(guard.is_held());
        assert!(guard.valid_until() > Instant::now());
        assert_eq!(guard.key(), "job");
        (guard.token(), guard.lease_id())
    })
    .await
    .unwrap();
    assert!(out.0 > 0 && out.1 > 0);
    assert!(!c.get_lock("job", ReadParams::default()).await.unwrap().held);
    // A held key makes with_lock fail fast without waiting.
    let _held = Lock::new(&c, "job").acquire().await.unwrap();
    let err = with_lock(&c, "job", GuardOptions::default(), |_| async {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, GuardError::Api(ref e) if e.code == leasehold_api::ErrorCode::LockHeld),
        "{err:?}"
    );
    // A heartbeat of half the TTL or more is refused.
    let bad = Lock::new(&c, "hb")
        .ttl(Duration::from_secs(2))
        .heartbeat(Duration::from_secs(1))
        .acquire()
        .await;
    assert!(matches!(bad, Err(GuardError::Options(_))));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn election_hands_over_in_fifo_order_and_semaphores_admit_n() {
    let cluster = TestCluster::start3().await.unwrap();
    let clients: Vec<Client> = (0..3)
        .map(|i| Client::new([cluster.url(i)]).unwrap())
        .collect();
    let first = Election::new(&clients[0], "svc/leader", "10.0.0.1")
        .ttl(Duration::from_secs(3))
        .campaign()
        .await
        .unwrap();
    let mut campaigns = Vec::new();
    for (i, c) in clients.iter().enumerate().skip(1) {
        let c = c.clone();
        campaigns.push(tokio::spawn(async move {
            Election::new(&c, "svc/leader", format!("10.0.0.{}", i + 1))
                .ttl(Duration::from_secs(3))
                .campaign()
                .await
        }));
        // Queue them in a known order.
        let expected = i as u32;
        wait_until(Duration::from_secs(5), || async {
            // Each queued candidate holds a lease: count them.
            let lease_list = clients[0].list_leases(Default::default()).await.ok()?;
            (lease_list.leases.len() as u32 == expected + 1).then_some(())
        })
        .await
        .unwrap();
    }
    let now = leader(&clients[1], "svc/leader").await.unwrap().unwrap();
    assert_eq!(now.value.as_deref(), Some("10.0.0.1"));
    let first_token = first.token();
    first.release().await.unwrap(); // resign
    let second = campaigns.remove(0).await.unwrap().unwrap();
    assert!(second.token() > first_token);
    let now = leader(&clients[2], "svc/leader").await.unwrap().unwrap();
    assert_eq!(now.value.as_deref(), Some("10.0.0.2"));
    second.proclaim("10.0.0.2:8080").await.unwrap();
    let now = leader(&clients[0], "svc/leader").await.unwrap().unwrap();
    assert_eq!(now.value.as_deref(), Some("10.0.0.2:8080"));
    second.release().await.unwrap();
    let third = campaigns.remove(0).await.unwrap().unwrap();
    assert_eq!(third.state(), GuardState::Held);
    third.release().await.unwrap();

    let a = Semaphore::new(&clients[0], "pool", 2)
        .acquire()
        .await
        .unwrap();
    let b = Semaphore::new(&clients[1], "pool", 2)
        .acquire()
        .await
        .unwrap();
    let full = Semaphore::new(&clients[2], "pool", 2).acquire().await;
    assert!(
        matches!(full, Err(GuardError::Api(ref e)) if e.code == leasehold_api::ErrorCode::SemaphoreFull)
    );
    a.release().await.unwrap();
    b.release().await.unwrap();
    cluster.shutdown().await;
}

/// An operator's force release: the guard reports loss as "released by an operator", a
/// reason of its own, at its next renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_force_release_fires_lost_as_stolen() {
    let cluster = TestCluster::start3().await.unwrap();
    let c = client(&cluster);
    let guard = Lock::new(&c, "stolen")
        .ttl(Duration::from_millis(900))
        .acquire()
        .await
        .unwrap();
    let lost = guard.lost();
    let ended = c
        .release_lock(
            "stolen",
            leasehold_api::wire::ReleaseParams {
                force: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ended.token, Some(guard.token()));
    let reason = tokio::time::timeout(Duration::from_secs(5), lost)
        .await
        .expect("lost fires");
    match &reason {
        LossReason::Stolen(m) => assert!(m.contains("operator"), "{m}"),
        other => panic!("lost as {other:?}, not as stolen"),
    }
    assert!(reason.to_string().starts_with("released by an operator"));
    cluster.shutdown().await;
}

/// `stop_heartbeat` (the DynamoDB lock client's StopHeartbeat): renewal stops, nothing is
/// released (not even when the guard is dropped), the hold lasts until its lease runs out,
/// and the guard reports the loss at its client deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_heartbeat_keeps_the_hold_until_it_expires_then_reports_loss() {
    let cluster = TestCluster::start3().await.unwrap();
    let c = client(&cluster);
    let ttl = Duration::from_millis(1500);
    let mut guard = Lock::new(&c, "heartbeat").ttl(ttl).acquire().await.unwrap();
    let token = guard.token();
    let lost = guard.lost();
    guard.stop_heartbeat();
    let deadline = guard.valid_until();
    assert_eq!(guard.state(), GuardState::Held, "held until the deadline");
    drop(guard); // no release: the hold is left to expire
    let reason = tokio::time::timeout(Duration::from_secs(5), lost)
        .await
        .expect("lost fires at the client deadline");
    assert!(Instant::now() >= deadline, "not before the client deadline");
    assert!(
        matches!(&reason, LossReason::Expired(m) if m.contains("heartbeat was stopped")),
        "{reason:?}"
    );
    // The cluster expires it (no renewal reached it), and never saw a release.
    wait_until(Duration::from_secs(5), || async {
        let s = c.get_lock("heartbeat", ReadParams::default()).await.ok()?;
        (!s.held).then_some(())
    })
    .await
    .expect("the hold expires");
    let history = c.lock_history("heartbeat").await.unwrap();
    let end = &history.events[0];
    assert_eq!(
        (end.event, end.token),
        (leasehold_api::wire::HistoryEventKind::Expired, token),
        "{history:?}"
    );
    assert!(
        end.held_ms.unwrap() >= ttl.as_millis() as u64,
        "held for its whole TTL: {end:?}"
    );
    cluster.shutdown().await;
}

/// Guards attach to an existing lease (one session, many locks): their holds live under
/// it, renewal keeps it alive, releasing one leaves the session and its other holds, and
/// revoking the session ends them all. `lock_delay` keeps an expired key closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guards_share_a_session_lease_and_set_lock_delay() {
    use leasehold_api::wire::CreateLeaseRequest;
    let cluster = TestCluster::start3().await.unwrap();
    let c = client(&cluster);
    let session = c
        .create_lease(CreateLeaseRequest {
            ttl_ms: 1_200,
            owner: Some("worker".into()),
            request_id: None,
        })
        .await
        .unwrap();
    let a = Lock::new(&c, "session/a")
        .lease(session.lease_id)
        .acquire()
        .await
        .unwrap();
    let b = Lock::new(&c, "session/b")
        .lease(session.lease_id)
        .acquire()
        .await
        .unwrap();
    assert_eq!(
        (a.lease_id(), b.lease_id()),
        (session.lease_id, session.lease_id)
    );
    // The guards keep the shared lease (TTL 1.2 s) alive across several TTLs.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert!(a.is_held() && b.is_held());
    a.release().await.unwrap();
    let info = c.get_lease(session.lease_id).await.unwrap();
    assert_eq!(info.locks, ["session/b"], "{info:?}");
    let lost = b.lost();
    c.revoke_lease(session.lease_id, Default::default())
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), lost)
        .await
        .expect("revoking the session ends its holds");
    assert!(matches!(reason, LossReason::Expired(_)), "{reason:?}");

    // Lock-delay: a holder that dies (its hold expires) keeps the key closed after.
    let mut dying = Lock::new(&c, "delayed")
        .ttl(Duration::from_millis(900))
        .lock_delay(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    dying.stop_heartbeat();
    drop(dying);
    wait_until(Duration::from_secs(5), || async {
        let s = c.get_lock("delayed", ReadParams::default()).await.ok()?;
        (!s.held).then_some(())
    })
    .await
    .expect("the hold expires");
    let refused = Lock::new(&c, "delayed").acquire().await;
    match refused {
        Err(GuardError::Api(e)) => {
            assert_eq!(e.code, leasehold_api::ErrorCode::LockHeld, "{e}");
            assert!(e.message.contains("lock-delay"), "{e}");
        }
        other => panic!(
            "granted inside the lock-delay: {:?}",
            other.map(|g| g.token())
        ),
    }
    cluster.shutdown().await;
}

/// A hold under an existing lease joins a lease whose TTL runs from its last renewal, not
/// from the acquire (attaching does not renew it). The guard re-anchors its client
/// deadline with a renewal, so it never believes it holds past the lease's end on the
/// cluster (SPEC §2 rule 5). Before the fix the deadline ran from the acquire's send:
/// here 1.5 s past the lease's real end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guard_under_an_existing_lease_never_outlasts_it() {
    use leasehold_api::wire::CreateLeaseRequest;
    let cluster = TestCluster::start3().await.unwrap();
    let c = client(&cluster);
    let session = c
        .create_lease(CreateLeaseRequest {
            ttl_ms: 3_000,
            owner: Some("worker".into()),
            request_id: None,
        })
        .await
        .unwrap();
    // The lease was last renewed at its creation; 1.5 s of its 3 s are gone.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let guard = Lock::new(&c, "session/late")
        .lease(session.lease_id)
        .ttl(Duration::from_secs(3))
        .acquire()
        .await
        .unwrap();
    // Read the lease first, then the guard's belief: the lease's true time left now is at
    // most what the read reported, so the check holds however slow the read was.
    let info = c.get_lease(session.lease_id).await.unwrap();
    let believed = guard
        .valid_until()
        .saturating_duration_since(tokio::time::Instant::now());
    assert!(
        believed.as_millis() as u64 <= info.remaining_ms + 50,
        "the guard believes it holds for {believed:?}, the lease has {} ms left",
        info.remaining_ms
    );
    guard.release().await.unwrap();
}
