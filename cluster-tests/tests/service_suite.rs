//! One behavioural suite, generic over `LeaseService`, run against the embedded node (no
//! HTTP) and against the HTTP client talking to a three-node cluster: both must behave
//! the same.

use std::time::Duration;

use leasehold_api::wire::*;
use leasehold_api::{Client, ErrorCode, LeaseService};
use leasehold_cluster_tests::TestCluster;
use leasehold_node::{Config, Node};

fn acquire(owner: &str, ttl_ms: u64) -> AcquireRequest {
    AcquireRequest {
        owner: owner.into(),
        ttl_ms: Some(ttl_ms),
        ..Default::default()
    }
}

async fn behaviour<S: LeaseService + Clone>(s: &S) {
    // Acquire, conflict, extend, release.
    let a = s
        .acquire_lock("suite/lock", acquire("a", 10_000))
        .await
        .unwrap();
    assert_eq!((a.owner.as_str(), a.acquisitions), ("a", 1));
    let busy = s
        .acquire_lock("suite/lock", acquire("b", 10_000))
        .await
        .unwrap_err();
    assert_eq!(busy.code, ErrorCode::LockHeld);
    assert_eq!(busy.holder.as_ref().unwrap().owner, "a");
    let ext = s
        .extend_lock(
            "suite/lock",
            ExtendRequest {
                owner: "a".into(),
                token: a.token,
                ttl_ms: Some(20_000),
                request_id: None,
            },
        )
        .await
        .unwrap();
    assert_eq!((ext.token, ext.ttl_ms), (a.token, 20_000));
    let wrong = s
        .extend_lock(
            "suite/lock",
            ExtendRequest {
                owner: "a".into(),
                token: a.token + 100,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(wrong.code, ErrorCode::NotOwner);

    // A blocking acquire is handed the lock on release; wait-for-release sees the release.
    let (s2, s3) = (s.clone(), s.clone());
    let waiter = tokio::spawn(async move {
        s2.acquire_lock(
            "suite/lock",
            AcquireRequest {
                wait_ms: Some(20_000),
                ..acquire("b", 10_000)
            },
        )
        .await
    });
    let watcher = tokio::spawn(async move {
        s3.wait_release(
            "suite/lock",
            WaitReleaseParams {
                wait_ms: Some(20_000),
                token: Some(a.token),
            },
        )
        .await
    });
    // The waiter is queued once the key shows one waiter.
    wait_for(|| async {
        s.get_lock("suite/lock", ReadParams::default())
            .await
            .map(|st| st.waiters == 1)
            .unwrap_or(false)
    })
    .await;
    let release_a = ReleaseParams {
        owner: "a".into(),
        token: a.token,
        request_id: Some(s_id("release-a")),
        force: None,
    };
    s.release_lock("suite/lock", release_a.clone())
        .await
        .unwrap();
    let b = waiter.await.unwrap().unwrap();
    assert_eq!(b.owner, "b");
    assert!(b.token > a.token);
    assert_eq!(b.acquisitions, 2);
    let released = watcher.await.unwrap().unwrap();
    assert!(released.released);
    assert_eq!(released.reason, Some(ReleaseReason::Released));
    assert_eq!(released.token, Some(a.token));
    // The same release retried (its reply lost) answers as the first one did, though
    // the lock has passed to b since; a new release by a is refused.
    let retried = s.release_lock("suite/lock", release_a).await;
    assert_eq!(
        retried.map(|r| r.released),
        Ok(true),
        "a retried release answers as the first"
    );
    let again = s
        .release_lock(
            "suite/lock",
            ReleaseParams {
                owner: "a".into(),
                token: a.token,
                request_id: None,
                force: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(again.code, ErrorCode::NotOwner);

    // Idempotent retries: the same request_id returns the original grant.
    let req = AcquireRequest {
        request_id: Some("suite-retry-1".into()),
        ..acquire("r", 10_000)
    };
    let first = s.acquire_lock("suite/retry", req.clone()).await.unwrap();
    let retry = s.acquire_lock("suite/retry", req).await.unwrap();
    assert_eq!(first, retry);
    let leases = s.list_leases(LeaseListParams::default()).await.unwrap();
    let of_r = leases.leases.iter().filter(|l| l.owner == "r").count();
    assert_eq!(of_r, 1, "the retry did not create a second lease");

    // Names: register, taken, whereis, proclaim, blocking query sees the vacancy.
    let reg = RegisterRequest {
        owner: "n1".into(),
        value: Some("10.0.0.1:80".into()),
        ttl_ms: Some(10_000),
        ..Default::default()
    };
    let leader = s.register_name("suite/leader", reg.clone()).await.unwrap();
    let taken = s
        .register_name(
            "suite/leader",
            RegisterRequest {
                owner: "n2".into(),
                ..reg.clone()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(taken.code, ErrorCode::NameTaken);
    let whereis = s
        .get_name("suite/leader", ReadParams::default())
        .await
        .unwrap();
    assert!(whereis.registered);
    assert_eq!(
        whereis.record.as_ref().unwrap().value.as_deref(),
        Some("10.0.0.1:80")
    );
    let proclaim = ProclaimRequest {
        owner: "n1".into(),
        token: leader.token,
        value: Some("10.0.0.1:81".into()),
        request_id: Some(s_id("proclaim")),
    };
    let proclaimed = s.proclaim("suite/leader", proclaim.clone()).await.unwrap();
    assert_eq!(
        s.proclaim("suite/leader", proclaim).await.unwrap().value,
        proclaimed.value,
        "a retried proclaim answers as the first"
    );
    assert_eq!(proclaimed.value.as_deref(), Some("10.0.0.1:81"));
    let index = s
        .get_name("suite/leader", ReadParams::default())
        .await
        .unwrap()
        .index;
    let s4 = s.clone();
    let observer = tokio::spawn(async move {
        s4.get_name(
            "suite/leader",
            ReadParams {
                index: Some(index),
                wait_ms: Some(20_000),
                stale: None,
            },
        )
        .await
    });
    let resign = ReleaseParams {
        owner: "n1".into(),
        token: leader.token,
        request_id: Some(s_id("resign")),
        force: None,
    };
    s.unregister_name("suite/leader", resign.clone())
        .await
        .unwrap();
    assert_eq!(
        s.unregister_name("suite/leader", resign)
            .await
            .map(|r| r.released),
        Ok(true),
        "a retried resign answers as the first"
    );
    let vacancy = observer.await.unwrap().unwrap();
    assert!(!vacancy.registered, "the observer sees the vacancy");
    // A name's history: registered, then resigned (held for some time).
    let h = s.name_history("suite/leader").await.unwrap();
    assert_eq!(h.events[0].event, HistoryEventKind::Released, "{h:?}");
    assert_eq!(
        (h.events[0].owner.as_str(), h.events[0].token),
        ("n1", leader.token)
    );
    assert!(h.events[0].held_ms.is_some(), "{h:?}");
    assert!(
        h.events
            .iter()
            .any(|e| e.event == HistoryEventKind::Acquired && e.token == leader.token),
        "{h:?}"
    );
    let gone = s
        .get_name("suite/leader", ReadParams::default())
        .await
        .unwrap_err();
    assert_eq!(gone.code, ErrorCode::NameNotFound);
    let names = s.list_names(ListParams::default()).await.unwrap();
    assert!(names.names.iter().all(|n| n.name != "suite/leader"));

    // Semaphores: limit holders, then full; a different limit is refused.
    let sem = |owner: &str, limit: u32| SemaphoreAcquireRequest {
        owner: owner.into(),
        limit,
        ttl_ms: Some(10_000),
        ..Default::default()
    };
    let s1 = s
        .acquire_semaphore("suite/sem", sem("s1", 2))
        .await
        .unwrap();
    let s2 = s
        .acquire_semaphore("suite/sem", sem("s2", 2))
        .await
        .unwrap();
    assert_ne!(s1.token, s2.token);
    assert_eq!(s2.holders.len(), 2);
    assert_eq!(
        s.acquire_semaphore("suite/sem", sem("s3", 2))
            .await
            .unwrap_err()
            .code,
        ErrorCode::SemaphoreFull
    );
    assert_eq!(
        s.acquire_semaphore("suite/sem", sem("s4", 3))
            .await
            .unwrap_err()
            .code,
        ErrorCode::LimitMismatch
    );
    let state = s
        .get_semaphore("suite/sem", ReadParams::default())
        .await
        .unwrap();
    assert_eq!((state.limit, state.holders.len()), (2, 2));
    s.release_semaphore(
        "suite/sem",
        ReleaseParams {
            owner: "s1".into(),
            token: s1.token,
            request_id: None,
            force: None,
        },
    )
    .await
    .unwrap();
    let s3 = s
        .acquire_semaphore("suite/sem", sem("s3", 2))
        .await
        .unwrap();
    // A semaphore's history: every grant and end, newest first, with owner and token.
    let h = s.semaphore_history("suite/sem").await.unwrap();
    let events: Vec<_> = h
        .events
        .iter()
        .map(|e| (e.event, e.owner.as_str(), e.token))
        .collect();
    assert_eq!(
        events[..3],
        [
            (HistoryEventKind::Acquired, "s3", s3.token),
            (HistoryEventKind::Released, "s1", s1.token),
            (HistoryEventKind::Acquired, "s2", events[2].2),
        ],
        "{events:?}"
    );
    assert!(h.events[1].held_ms.is_some(), "{:?}", h.events[1]);
    let listed = s.list_semaphores(ListParams::default()).await.unwrap();
    let listed = listed
        .semaphores
        .iter()
        .find(|x| x.key == "suite/sem")
        .expect("suite/sem is listed");
    assert_eq!((listed.limit, listed.holders.len()), (2, 2), "{listed:?}");
    assert!(listed.queue.is_empty(), "{listed:?}");

    // Errors are the same errors.
    let bad = s
        .acquire_lock("suite/bad", acquire("a", 1))
        .await
        .unwrap_err();
    assert_eq!(bad.code, ErrorCode::InvalidArgument);
    assert!(bad.message.starts_with("ttl_ms"), "{}", bad.message);
    let empty = s.acquire_lock("", acquire("a", 1000)).await.unwrap_err();
    assert_eq!(empty.code, ErrorCode::InvalidArgument);
    assert_eq!(
        s.keepalive(987_654).await.unwrap_err().code,
        ErrorCode::LeaseNotFound
    );

    // Sessions: one lease, several holds, revoked at once.
    let lease = s
        .create_lease(CreateLeaseRequest {
            ttl_ms: 10_000,
            owner: Some("session".into()),
            request_id: None,
        })
        .await
        .unwrap();
    for key in ["suite/s1", "suite/s2"] {
        s.acquire_lock(
            key,
            AcquireRequest {
                owner: "session".into(),
                lease_id: Some(lease.lease_id),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    s.keepalive(lease.lease_id).await.unwrap();
    let revoke = RevokeParams {
        request_id: Some(s_id("revoke")),
    };
    let revoked = s
        .revoke_lease(lease.lease_id, revoke.clone())
        .await
        .unwrap();
    assert_eq!(revoked.released.len(), 2);
    assert_eq!(
        s.revoke_lease(lease.lease_id, revoke).await,
        Ok(revoked.clone()),
        "a retried revoke answers as the first (not lease_not_found)"
    );
    let e = s
        .revoke_lease(lease.lease_id, RevokeParams::default())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::LeaseNotFound, "{e}");
    let history = s.lock_history("suite/s1").await.unwrap();
    assert_eq!(history.events[0].event, HistoryEventKind::Revoked);

    // An operator's force release, retried with the same request id.
    let x = s
        .acquire_lock("suite/forced", acquire("x", 10_000))
        .await
        .unwrap();
    let force = ReleaseParams {
        force: Some(true),
        request_id: Some(s_id("force")),
        ..Default::default()
    };
    let forced = s.release_lock("suite/forced", force.clone()).await.unwrap();
    assert_eq!(
        (forced.owner.as_deref(), forced.token),
        (Some("x"), Some(x.token))
    );
    assert_eq!(
        s.release_lock("suite/forced", force).await,
        Ok(forced),
        "a retried force release answers as the first"
    );
    let history = s.lock_history("suite/forced").await.unwrap();
    assert_eq!(history.events[0].event, HistoryEventKind::Stolen);
    let e = s
        .extend_lock(
            "suite/forced",
            ExtendRequest {
                owner: "x".into(),
                token: x.token,
                ttl_ms: Some(5_000),
                request_id: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.code, e.reason.as_deref()),
        (ErrorCode::NotOwner, Some("stolen")),
        "{e}"
    );

    let status = s.cluster_status().await.unwrap();
    assert!(status.leader_id.is_some());
    s.ready().await.unwrap();
}

async fn wait_for<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    leasehold_cluster_tests::wait_until(Duration::from_secs(10), || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_node_behaves() {
    let config = Config::in_memory_on(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    let node = Node::start(config).await.unwrap();
    node.wait_for_leader(Duration::from_secs(5)).await.unwrap();
    behaviour(&node.service()).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_client_against_a_three_node_cluster_behaves() {
    let cluster = TestCluster::start3().await.unwrap();
    // Endpoints in a different order than the nodes, so requests start at a follower.
    let client = Client::new([cluster.url(2), cluster.url(1), cluster.url(0)]).unwrap();
    behaviour(&client).await;
    cluster.shutdown().await;
}

/// A request id for the suite's retried mutations.
fn s_id(what: &str) -> String {
    format!("suite-{what}")
}

/// Members listed by host name, each node advertising its name (as the Kubernetes
/// StatefulSet in deploy/kubernetes does with its pods' stable names): the cluster
/// bootstraps, elects, replicates, fails over, and its membership shows the names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_of_host_names_behaves_and_fails_over() {
    let mut cluster = TestCluster::start(leasehold_cluster_tests::ClusterOptions {
        host_names: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = Client::new([cluster.url(2), cluster.url(1), cluster.url(0)]).unwrap();
    behaviour(&client).await;
    let status = client.cluster_status().await.unwrap();
    assert!(
        status
            .members
            .iter()
            .all(|m| m.addr.starts_with("localhost:")),
        "{status:?}"
    );
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    cluster.kill(leader).await;
    let next = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    assert_ne!(next, leader);
    let survivor = Client::new([cluster.url(next)]).unwrap();
    survivor
        .acquire_lock(
            "after-failover",
            AcquireRequest {
                owner: "o".into(),
                ttl_ms: Some(5_000),
                ..Default::default()
            },
        )
        .await
        .expect("the two named members make a quorum");
    cluster.shutdown().await;
}
