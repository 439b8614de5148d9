//! Batching toward the leader (`node::batcher`, `node::confirmer`): many keepalives and
//! writes sent through a follower travel in a few messages and share a few leadership
//! rounds, and each still gets its own, correct answer. In-process three-node clusters
//! over real sockets; the counts come from each node's `/metrics`.

use futures::future::join_all;
use leasehold_cluster_tests::{Http, TestCluster};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keepalives_through_a_follower_share_batches_and_rounds() {
    const N: usize = 300;
    let cluster = TestCluster::start3().await.unwrap();
    let http = Http::new();
    let leader = cluster.leader().expect("a leader");
    let follower = cluster.url((leader + 1) % 3);
    let leader_url = cluster.url(leader);

    let mut leases = Vec::new();
    for i in 0..N {
        let r = http
            .post(
                &format!("{leader_url}/v1/leases"),
                json!({"ttl_ms": 30000, "owner": format!("k{i}")}),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{:?}", r.body);
        leases.push(r.body["lease_id"].as_u64().unwrap());
    }
    // One lease the leader never granted: its keepalive in the same batches must fail
    // alone, with lease_not_found.
    let unknown = leases.iter().max().unwrap() + 1_000_000;

    let batches_before = http
        .metric(&follower, "leasehold_keepalive_batches_total")
        .await;
    let rounds_before = http
        .metric(&leader_url, "leasehold_confirm_rounds_total")
        .await;
    let urls: Vec<String> = leases
        .iter()
        .chain(std::iter::once(&unknown))
        .map(|id| format!("{follower}/v1/leases/{id}/keepalive"))
        .collect();
    let replies = join_all(urls.iter().map(|url| http.post(url, json!({})))).await;
    for (id, reply) in leases.iter().zip(&replies) {
        let reply = reply.as_ref().unwrap();
        assert_eq!(reply.status, 200, "keepalive of {id}: {:?}", reply.body);
        assert_eq!(reply.body["lease_id"].as_u64(), Some(*id));
        assert_eq!(reply.body["ttl_ms"].as_u64(), Some(30000));
    }
    let last = replies.last().unwrap().as_ref().unwrap();
    assert_eq!(last.status, 404, "{:?}", last.body);
    assert_eq!(last.code(), "lease_not_found");

    let kept = http
        .metric(&follower, "leasehold_keepalives_batched_total")
        .await;
    let batches = http
        .metric(&follower, "leasehold_keepalive_batches_total")
        .await
        - batches_before;
    let rounds = http
        .metric(&leader_url, "leasehold_confirm_rounds_total")
        .await
        - rounds_before;
    assert!(
        kept >= (N + 1) as u64,
        "only {kept} keepalives went through the batcher"
    );
    // One by one, these would be N + 1 forwards and N + 1 rounds.
    assert!(
        batches * 2 <= (N + 1) as u64,
        "{} keepalives took {batches} batches",
        N + 1
    );
    assert!(
        rounds * 2 <= (N + 1) as u64,
        "{} keepalives took {rounds} rounds",
        N + 1
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_a_follower_share_batches_and_each_gets_its_own_result() {
    const N: usize = 200;
    let cluster = TestCluster::start3().await.unwrap();
    let http = Http::new();
    let leader = cluster.leader().expect("a leader");
    let follower = cluster.url((leader + 1) % 3);

    let before = http
        .metric(&follower, "leasehold_write_batches_total")
        .await;
    // N distinct keys and, in the same batches, N contenders for one key: exactly one of
    // those may win.
    let urls: Vec<String> = (0..N)
        .map(|i| format!("{follower}/v1/locks/batch-{i}"))
        .collect();
    let contended = format!("{follower}/v1/locks/contended");
    let distinct = urls
        .iter()
        .enumerate()
        .map(|(i, url)| http.post(url, json!({"owner": format!("o{i}"), "ttl_ms": 30000})));
    let contenders = (0..N).map(|i| {
        http.post(
            &contended,
            json!({"owner": format!("c{i}"), "ttl_ms": 30000}),
        )
    });
    let (distinct, contenders) = tokio::join!(join_all(distinct), join_all(contenders));
    let mut tokens = std::collections::BTreeSet::new();
    for (i, reply) in distinct.iter().enumerate() {
        let reply = reply.as_ref().unwrap();
        assert_eq!(reply.status, 200, "batch-{i}: {:?}", reply.body);
        assert_eq!(reply.body["owner"], format!("o{i}"));
        assert!(
            tokens.insert(reply.body["token"].as_u64().unwrap()),
            "a token given twice"
        );
    }
    let winners: Vec<_> = contenders
        .iter()
        .map(|r| r.as_ref().unwrap())
        .filter(|r| r.status == 200)
        .collect();
    assert_eq!(winners.len(), 1, "one holder of `contended`");
    for loser in contenders
        .iter()
        .map(|r| r.as_ref().unwrap())
        .filter(|r| r.status != 200)
    {
        assert_eq!(loser.status, 409, "{:?}", loser.body);
        assert_eq!(loser.code(), "lock_held");
    }
    assert!(tokens.insert(winners[0].body["token"].as_u64().unwrap()));

    let batches = http
        .metric(&follower, "leasehold_write_batches_total")
        .await
        - before;
    assert!(
        batches * 2 <= (2 * N) as u64,
        "{} writes took {batches} forwarded batches",
        2 * N
    );
    cluster.shutdown().await;
}
