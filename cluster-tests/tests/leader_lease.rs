//! The leader lease (SPEC §2 rule 3, `node::confirmer`): while a quorum acknowledged the
//! leader within `election_timeout_min` less the drift margin, keepalives and linearizable
//! reads are answered without a network round; with `raft.leadership_proof = "round"`
//! every confirmation is a round; and a node that restarted refuses votes for
//! `election_timeout_max`, since it no longer knows when it last acknowledged a leader.

use std::time::Duration;

use leasehold_api::wire::{CreateLeaseRequest, ReadParams};
use leasehold_api::LeaseService;
use leasehold_cluster_tests::{wait_until, ClusterOptions, TestCluster};
use leasehold_config::LeadershipProof;
use leasehold_node::peer_probe;

fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// (confirmation rounds, lease hits) on node `i`.
async fn confirmations(cluster: &TestCluster, i: usize) -> (u64, u64) {
    let text = cluster.node(i).service().metrics_text().await;
    (
        counter(&text, "leasehold_confirm_rounds_total"),
        counter(&text, "leasehold_confirm_lease_hits_total"),
    )
}

async fn keepalives_and_reads(cluster: &TestCluster, leader: usize, n: usize) {
    let service = cluster.node(leader).service();
    let lease = service
        .create_lease(CreateLeaseRequest {
            ttl_ms: 30_000,
            owner: Some("lease-test".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    for _ in 0..n {
        service.keepalive(lease.lease_id).await.unwrap();
        service
            .get_lock("leader-lease/k", ReadParams::default())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepalives_and_reads_are_answered_on_the_leader_lease_without_a_round() {
    let cluster = TestCluster::start3().await.unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    // The lease is usable election_timeout_max after the node started.
    wait_until(Duration::from_secs(10), || async {
        keepalives_and_reads(&cluster, leader, 1).await;
        (confirmations(&cluster, leader).await.1 > 0).then_some(())
    })
    .await
    .unwrap();
    let (rounds, hits) = confirmations(&cluster, leader).await;
    keepalives_and_reads(&cluster, leader, 50).await;
    let (rounds_after, hits_after) = confirmations(&cluster, leader).await;
    // Heartbeats every 50 ms keep the quorum acknowledgement far younger than the lease
    // (250 ms less 1 %); a round or two may still fall on a slow moment of this machine.
    assert!(
        hits_after - hits >= 90,
        "{} of 100 confirmations were answered on the lease",
        hits_after - hits
    );
    assert!(
        rounds_after - rounds <= 10,
        "{} confirmations needed a round",
        rounds_after - rounds
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_leadership_proof_round_every_confirmation_is_a_round() {
    let cluster = TestCluster::start(ClusterOptions {
        tweak: |c| c.raft.leadership_proof = LeadershipProof::Round,
        ..Default::default()
    })
    .await
    .unwrap();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let (rounds, _) = confirmations(&cluster, leader).await;
    keepalives_and_reads(&cluster, leader, 20).await;
    let (rounds_after, hits_after) = confirmations(&cluster, leader).await;
    assert_eq!(hits_after, 0, "no confirmation may use a lease");
    // One at a time, each its own round.
    assert!(
        rounds_after - rounds >= 40,
        "{} rounds",
        rounds_after - rounds
    );
    cluster.shutdown().await;
}

/// Whether node `i` grants a vote to candidate 99 at a term and log beyond everything.
async fn grants_vote(cluster: &TestCluster, i: usize) -> bool {
    let url = format!("http://{}{}", cluster.config(i).peer_addr, peer_probe::PATH);
    let reply = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(url)
        .body(peer_probe::vote_request_with_log(99, 1_000, 1_000_000))
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success(), "{}", reply.status());
    peer_probe::vote_granted(&reply.bytes().await.unwrap()).unwrap()
}

/// A follower that acknowledged the leader refuses other candidates while the leader's
/// lease may run; after a restart it cannot know when that was, so it refuses every vote
/// for `election_timeout_max` from its start. Here the timeouts are long (1.5-3 s) so the
/// test is not a race against the node's own start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_refuses_votes_for_election_timeout_max() {
    let mut cluster = TestCluster::start(ClusterOptions {
        tweak: |c| {
            c.raft.election_timeout_min_ms = 1_500;
            c.raft.election_timeout_max_ms = 3_000;
        },
        ..Default::default()
    })
    .await
    .unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    for i in 0..3 {
        cluster.kill(i).await;
    }
    let started = tokio::time::Instant::now();
    cluster.restart(0).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "the restart took {:?}: too slow for this test",
        started.elapsed()
    );
    assert!(
        !grants_vote(&cluster, 0).await,
        "a node granted a vote {:?} after its restart",
        started.elapsed()
    );
    // Alone, with no leader to acknowledge, it grants the vote once the time is up: the
    // refusal above was the hold-back, not something else.
    tokio::time::sleep_until(started + Duration::from_millis(3_200)).await;
    wait_until(Duration::from_secs(10), || async {
        grants_vote(&cluster, 0).await.then_some(())
    })
    .await
    .expect("the restarted node never grants the vote");
    cluster.shutdown().await;
}
