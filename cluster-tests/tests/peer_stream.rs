//! The peer transport: a follower's forwarded writes and keepalives, and the leader's
//! appends, travel on one long-lived stream per peer (`node::peer::stream`), cut into
//! frames when they are long; a member too far behind is sent a whole snapshot. In-process
//! three-node clusters over real sockets.

use std::time::Duration;

use futures::future::join_all;
use leasehold_cluster_tests::{wait_until, ClusterOptions, Http, TestCluster};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_writes_and_keepalives_through_a_follower_share_one_stream() {
    const N: usize = 40;
    let cluster = TestCluster::start3().await.unwrap();
    let http = Http::new();
    let leader = cluster.leader().expect("a leader");
    let follower = cluster.url((leader + 1) % 3);
    let other = cluster.url((leader + 2) % 3);
    let opened = "leasehold_peer_streams_opened_total";

    // One write opens the follower's stream to the leader (if replication has not).
    let r = http
        .post(
            &format!("{follower}/v1/locks/warm-up"),
            json!({"owner": "w", "ttl_ms": 30000}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let before = [
        http.metric(&follower, opened).await,
        http.metric(&cluster.url(leader), opened).await,
    ];
    assert!(
        before[0] >= 1 && before[1] >= 2,
        "streams opened: {before:?}"
    );

    // Values of 60 KiB: a batch of forwarded writes, and the leader's append of it, is
    // longer than a 64 KiB frame, so each is cut into frames and put back together.
    let value = |i: usize| format!("{i:04}").repeat(15 * 1024);
    let urls: Vec<String> = (0..N)
        .map(|i| format!("{follower}/v1/locks/long-{i}"))
        .collect();
    let writes = urls.iter().enumerate().map(|(i, url)| {
        http.post(
            url,
            json!({"owner": format!("o{i}"), "ttl_ms": 30000, "value": value(i)}),
        )
    });
    let mut leases = Vec::new();
    for (i, reply) in join_all(writes).await.into_iter().enumerate() {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200, "long-{i}: {:?}", reply.body);
        let lease = &reply.body["lease_id"];
        leases.push(
            lease
                .as_str()
                .map_or_else(|| lease.to_string(), String::from),
        );
    }
    let urls: Vec<String> = leases
        .iter()
        .map(|lease| format!("{follower}/v1/leases/{lease}/keepalive"))
        .collect();
    let keepalives = urls.iter().map(|url| http.post(url, json!({})));
    for reply in join_all(keepalives).await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    // Every value arrived whole, on the other follower too (replicated over its stream).
    for i in 0..N {
        let reply = http
            .get(&format!("{other}/v1/locks/long-{i}"))
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.body["value"], value(i), "long-{i}");
    }
    let after = [
        http.metric(&follower, opened).await,
        http.metric(&cluster.url(leader), opened).await,
    ];
    assert_eq!(before, after, "the same streams carried everything");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_cut_off_past_the_purged_log_catches_up_from_a_multi_megabyte_snapshot() {
    const LONG: usize = 64;
    // openraft keeps 1,000 entries after a snapshot: more than that many writes while the
    // member is cut off leave it nothing to catch up from but a snapshot.
    const FILL: usize = 1_300;
    let cluster = TestCluster::start(ClusterOptions {
        tweak: |c| c.raft.snapshot_every_logs = 200,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let http = Http::new();
    let leader = cluster.leader().expect("a leader");
    let lagging = (leader + 1) % 3;
    let base = cluster.url(leader);
    cluster.isolate(lagging);

    // 64 values of 60 KiB: a state of about 4 MB.
    let value = |i: usize| format!("{i:04}").repeat(15 * 1024);
    let urls: Vec<String> = (0..LONG)
        .map(|i| format!("{base}/v1/locks/long-{i}"))
        .collect();
    let writes = urls.iter().enumerate().map(|(i, url)| {
        http.post(
            url,
            json!({"owner": "o", "ttl_ms": 600_000, "value": value(i)}),
        )
    });
    for reply in join_all(writes).await {
        let reply = reply.unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    for i in 0..FILL {
        let url = format!("{base}/v1/locks/fill-{i}");
        let reply = http
            .post(&url, json!({"owner": "o", "ttl_ms": 600_000}))
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }

    // The leader built snapshots on its own (`node::snapshots`, every 200 entries here),
    // and purged its log behind them.
    let built = http
        .metric(&base, "leasehold_snapshot_duration_seconds_count")
        .await;
    assert!(built >= 1, "no snapshot built by the trigger");

    cluster.heal();
    let behind = cluster.url(lagging);
    let last = format!("{behind}/v1/locks/fill-{}?stale=true", FILL - 1);
    wait_until(Duration::from_secs(30), || async {
        let reply = http.get(&last).await.ok()?;
        (reply.body["held"] == true).then_some(())
    })
    .await
    .expect("the cut-off member caught up");
    for i in 0..LONG {
        let url = format!("{behind}/v1/locks/long-{i}?stale=true");
        let reply = http.get(&url).await.unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let mut shown = reply.body.clone();
        shown["value"] = json!(format!(
            "({} bytes)",
            reply.body["value"].as_str().map_or(0, str::len)
        ));
        assert!(reply.body["value"] == value(i), "long-{i}: {shown}");
    }
    cluster.shutdown().await;
}
