//! The actors under `tokio::time::pause()`: a one-node in-memory Raft, the core and its
//! actors on a paused clock (`Clock::following_tokio`), so that TTLs and lock-delays of
//! seconds are tested in virtual time, without waiting and without flakiness.

use std::sync::Arc;
use std::time::Duration;

use leasehold_config::Config;
use leasehold_raft::command::{
    Acquire, BusyReason, Command, CommandResult, Kind, LeaseSpec, Proposal,
};
use leasehold_raft::log_store::MemLogStore;
use leasehold_raft::sm_store::StateMachineStore;
use leasehold_raft::typ::{PeerNode, Raft};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::core::Core;
use crate::peer::network::RaftTransport;
use crate::peer::{Faults, PeerClient};

/// A one-node cluster's core on the paused clock, and what shuts it down.
async fn one_node_core() -> (Arc<Core>, TaskTracker, CancellationToken) {
    one_node_core_on(Clock::following_tokio()).await
}

/// The same on `clock` (a wall clock the test may step).
async fn one_node_core_on(clock: Clock) -> (Arc<Core>, TaskTracker, CancellationToken) {
    let config = Config::default();
    let raft_config = openraft::Config {
        heartbeat_interval: config.raft.heartbeat_interval_ms,
        election_timeout_min: config.raft.election_timeout_min_ms,
        election_timeout_max: config.raft.election_timeout_max_ms,
        ..Default::default()
    };
    let raft_config = Arc::new(raft_config.validate().unwrap());
    let peers = PeerClient::new(None, Arc::new(Faults::default()), None, None);
    let (sm_store, shared) = StateMachineStore::new(None).unwrap();
    let raft = Raft::new(
        config.node_id,
        raft_config,
        RaftTransport::new(peers.clone()),
        MemLogStore::default(),
        sm_store,
    )
    .await
    .unwrap();
    let member = PeerNode {
        peer_addr: "127.0.0.1:1".into(),
        client_addr: String::new(),
    };
    let members: std::collections::BTreeMap<_, _> = [(config.node_id, member)].into();
    raft.initialize(members).await.unwrap();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let core = Core::start(
        &config,
        crate::core::CoreParts {
            raft,
            shared,
            peers,
            clock,
            metrics: Arc::new(crate::metrics::Metrics::new()),
        },
        &tracker,
        &cancel,
    );
    // Leadership, then the lease actor's takeover (a read-index round) must be done.
    core.raft()
        .wait(None)
        .current_leader(1, "the one node leads")
        .await
        .unwrap();
    core.read_barrier().await.unwrap();
    (core, tracker, cancel)
}

async fn shut(core: Arc<Core>, tracker: TaskTracker, cancel: CancellationToken) {
    cancel.cancel();
    core.raft().shutdown().await.unwrap();
    tracker.close();
    tracker.wait().await;
}

fn acquire(owner: &str, lock_delay_ms: u64) -> Proposal {
    Proposal {
        request_id: None,
        caller: None,
        command: Command::Acquire(Acquire {
            kind: Kind::Lock,
            key: "k".into(),
            owner: owner.into(),
            lease: LeaseSpec::New { ttl_ms: 1_000 },
            wait: false,
            value: None,
            lock_delay_ms,
            limit: 1,
            max_waiters: 10,
            max_leases: 100,
        }),
    }
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_lock_expires_after_its_ttl_and_not_before() {
    let (core, tracker, cancel) = one_node_core().await;
    let (_, granted) = core.write(acquire("a", 0)).await.unwrap();
    let CommandResult::Granted(hold) = granted else {
        panic!("not granted: {granted:?}");
    };
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        core.read(|s| s.lease(hold.lease_id).is_some()),
        "expired before its TTL"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        core.read(|s| s.lease(hold.lease_id).is_none()),
        "still alive 200 ms after its TTL"
    );
    let (_, next) = core.write(acquire("b", 0)).await.unwrap();
    assert!(matches!(next, CommandResult::Granted(h) if h.token > hold.token));
    shut(core, tracker, cancel).await;
}

#[tokio::test(start_paused = true)]
async fn a_lock_delay_holds_an_expired_lock_back_on_the_wall_clock() {
    let (core, tracker, cancel) = one_node_core().await;
    let (_, granted) = core.write(acquire("a", 5_000)).await.unwrap();
    assert!(matches!(granted, CommandResult::Granted(_)));
    // The lease expires after 1 s; the lock stays unavailable for 5 s more.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let (_, refused) = core.write(acquire("b", 0)).await.unwrap();
    assert!(
        matches!(
            refused,
            CommandResult::Busy {
                reason: BusyReason::Delayed { .. },
                ..
            }
        ),
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let (_, granted) = core.write(acquire("b", 0)).await.unwrap();
    assert!(matches!(granted, CommandResult::Granted(_)), "{granted:?}");
    shut(core, tracker, cancel).await;
}

/// The leader's wall clock steps back ten minutes while a lock-delay runs. The delay still
/// ends on time (within 1 % of its length: the cluster's clock runs at 99 % at worst while
/// it closes the gap), not ten minutes later.
#[tokio::test(start_paused = true)]
async fn a_lock_delay_ends_on_time_when_the_wall_clock_steps_back() {
    let (wall, step) = Clock::stepped();
    let (core, tracker, cancel) = one_node_core_on(wall).await;
    let (_, granted) = core.write(acquire("a", 5_000)).await.unwrap();
    assert!(matches!(granted, CommandResult::Granted(_)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    step.store(-600_000, std::sync::atomic::Ordering::SeqCst);
    // The lease expires at 1 s; the delay runs 5 s from then (5.05 s at 99 %).
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let (_, refused) = core.write(acquire("b", 0)).await.unwrap();
    assert!(
        matches!(
            refused,
            CommandResult::Busy {
                reason: BusyReason::Delayed { .. },
                ..
            }
        ),
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let (_, granted) = core.write(acquire("b", 0)).await.unwrap();
    assert!(matches!(granted, CommandResult::Granted(_)), "{granted:?}");
    shut(core, tracker, cancel).await;
}

/// The leader's wall clock steps eleven minutes forward: the dedupe window does not lapse
/// with it, so a retried request id gets the first answer, not a second hold.
#[tokio::test(start_paused = true)]
async fn a_retry_is_recognised_after_the_wall_clock_steps_forward() {
    let (wall, step) = Clock::stepped();
    let (core, tracker, cancel) = one_node_core_on(wall).await;
    let mut first = acquire("a", 0);
    first.request_id = Some("retry-me".into());
    let (_, granted) = core.write(first.clone()).await.unwrap();
    let CommandResult::Granted(hold) = granted else {
        panic!("not granted: {granted:?}");
    };
    step.store(11 * 60_000, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // An entry stamped after the step: the hold is released. Then the late retry, which
    // without its id remembered would take the free lock again with a new token.
    let release = Proposal {
        request_id: Some("release".into()),
        caller: None,
        command: Command::Release {
            kind: Kind::Lock,
            key: "k".into(),
            owner: "a".into(),
            token: hold.token,
        },
    };
    let (_, released) = core.write(release).await.unwrap();
    assert!(matches!(released, CommandResult::Released), "{released:?}");
    let (_, again) = core.write(first).await.unwrap();
    assert!(
        matches!(&again, CommandResult::Granted(h) if h.token == hold.token),
        "the retry after the step got {again:?}, not the first grant"
    );
    shut(core, tracker, cancel).await;
}
