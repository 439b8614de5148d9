//! A data directory written by the build before openraft 0.10 (commit 640bb8d, openraft
//! 0.9.25) opens under this one: the sled log, the vote, the persisted snapshot and the
//! watermark decode, and the state is what that build left.
//!
//! The fixture (`fixtures/datadir-640bb8d.tar.gz`) is one durable node's directory, made
//! by that build's `leasehold serve --data-dir D --raft-snapshot-every-logs 10`: a lease,
//! locks `fixture/k1`..`k14` (tokens 1-14, `k3` released), the name `fixture-leader`
//! (token 15), stopped with SIGTERM. With a snapshot every 10 entries it holds both a
//! snapshot and log entries after it.

use std::time::Duration;

use leasehold_api::wire::{HistoryEventKind, ReadParams};
use leasehold_api::LeaseService;
use leasehold_config::Config;
use leasehold_node::Node;

fn unpack_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/datadir-640bb8d.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("run tar");
    assert!(
        status.success(),
        "tar could not unpack {}",
        fixture.display()
    );
    dir
}

async fn start_on(data: &std::path::Path) -> Node {
    let mut config = Config::in_memory_on(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.data_dir = Some(data.to_path_buf());
    // The previous round's node may hold sled's lock for a moment after its shutdown.
    let node = leasehold_cluster_tests::wait_until(Duration::from_secs(15), || async {
        match Node::start(config.clone()).await {
            Ok(node) => Some(node),
            Err(e) if e.to_string().contains("could not acquire lock") => None,
            Err(e) => panic!("the old data directory does not open: {e}"),
        }
    })
    .await
    .unwrap();
    node.wait_for_leader(Duration::from_secs(10)).await.unwrap();
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_the_openraft_0_9_build_opens_with_its_state() {
    let dir = unpack_fixture();
    let data = dir.path().join("data");
    for round in 0..2 {
        // Round 1 reopens what this build wrote on top of the old directory.
        let node = start_on(&data).await;
        let service = node.service();
        let k3 = service.lock_history("fixture/k3").await.unwrap();
        let k3: Vec<_> = k3.events.iter().map(|e| (e.event, e.token)).collect();
        assert_eq!(
            k3,
            vec![
                (HistoryEventKind::Released, 3),
                (HistoryEventKind::Acquired, 3)
            ],
            "round {round}"
        );
        let k14 = service.lock_history("fixture/k14").await.unwrap();
        assert_eq!(
            k14.events.last().map(|e| e.token),
            Some(14),
            "round {round}"
        );
        let name = service.name_history("fixture-leader").await.unwrap();
        assert_eq!(
            name.events.last().map(|e| e.token),
            Some(15),
            "round {round}"
        );
        // The fencing sequence goes on above everything the old build issued.
        let held = service
            .acquire_lock(
                &format!("after-upgrade/{round}"),
                leasehold_cluster_tests::acquire_request("new", 60_000, None),
            )
            .await
            .unwrap();
        assert!(held.token > 15, "round {round}: token {}", held.token);
        let state = service
            .get_lock(&format!("after-upgrade/{round}"), ReadParams::default())
            .await
            .unwrap();
        assert_eq!(state.holder.map(|h| h.token), Some(held.token));
        node.shutdown().await;
    }
}
