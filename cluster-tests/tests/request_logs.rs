//! Following one request through the logs of an in-process three-node cluster.
//!
//! Alone in its binary, so that no concurrently running test touches tracing's callsites.

use leasehold_cluster_tests::{Http, TestCluster};
use serde_json::json;

/// A log buffer for the tracing test.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// One request can be followed through the logs: the node that serves it logs it under
/// `node{id}:request{method route key request_id}`, and the leader it forwarded the write
/// to logs the peer RPC under its own node id with the same request id.
/// (Single-threaded, so the thread-local subscriber sees every task of every node.)
///
/// In its own test binary: in `lease_core`, running beside other tests that hit the same
/// tracing callsites from other threads, the serving node's line was once missing (CI,
/// 1 run in ~10), as if a callsite's cached interest had been computed without this
/// test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn one_request_can_be_followed_through_the_logs_by_node_route_key_and_request_id() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "leasehold_api=debug,leasehold_node=trace",
        ))
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cluster = TestCluster::start3().await.unwrap();
    let leader = cluster.leader().unwrap();
    let follower = cluster.follower().unwrap();
    let http = Http::new();
    let r = http
        .post(
            &format!("{}/v1/locks/traced/key", cluster.url(follower)),
            json!({"owner": "a", "ttl_ms": 5000, "request_id": "rid-follow-me"}),
        )
        .await
        .expect("request");
    assert_eq!(r.status, 200, "{:?}", r.body);
    cluster.shutdown().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("rid-follow-me"))
        .collect();
    let follower_id = follower + 1;
    let leader_id = leader + 1;
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("node{{id={follower_id}}}"))
                && l.contains("request{method=POST route=/v1/locks/{*key} key=traced/key")
                && l.contains("served status=200")),
        "no line of the serving node names the request: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("node{{id={leader_id}}}"))
                && l.contains("peer_rpc{rpc=\"forward\"")),
        "no line of the leader names the forwarded write: {lines:#?}"
    );
}
