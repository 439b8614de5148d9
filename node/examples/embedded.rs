//! Embed a leasehold node in an application and use it through the one service trait.
//!
//! Run: `cargo run -p leasehold-node --example embedded`
//!
//! The same code works against a remote cluster: replace `node.service()` with
//! `leasehold_api::Client::new(["http://127.0.0.1:7001", ...])?`.

use std::time::Duration;

use leasehold_api::guard::Lock;
use leasehold_api::{with_lock, Fence, GuardOptions, LeaseService};
use leasehold_node::{Config, Node};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // An in-memory single node on free ports (the default for tests and trying it out).
    let config = Config::in_memory_on("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    let node = Node::start(config).await?;
    let locks = node.service(); // impl LeaseService, no HTTP hop

    // A downstream store that rejects writes carrying an older fencing token.
    let fence = Fence::new();

    let guard = Lock::new(&locks, "jobs:sitemap")
        .ttl(Duration::from_secs(30))
        .wait(Duration::from_secs(10))
        .acquire()
        .await?;
    println!("holding jobs:sitemap with token {}", guard.token());
    fence.check("sitemap.xml", guard.token())?; // downstream write accepted
    guard.release().await?;

    // The same in one call: acquire, run, release (cancelled if the lock is lost).
    let token = with_lock(
        &locks,
        "jobs:sitemap",
        GuardOptions::default(),
        |guard| async move {
            // The guard: token, lease, client deadline and the loss signal.
            println!(
                "with_lock: working under token {} until at most {:?} from now",
                guard.token(),
                guard.valid_until() - tokio::time::Instant::now()
            );
            guard.token()
        },
    )
    .await?;
    fence.check("sitemap.xml", token)?;
    // A write from the earlier holder would now be refused:
    println!(
        "stale write refused: {}",
        fence.check("sitemap.xml", token - 1).unwrap_err()
    );

    let status = locks.cluster_status().await?;
    println!("node {} leads term {}", status.node_id, status.term);
    node.shutdown().await;
    Ok(())
}
