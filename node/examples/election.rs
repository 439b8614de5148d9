//! Leader election among three application processes.
//!
//! Run: `cargo run -p leasehold-node --example election`
//!
//! The parent starts an embedded leasehold node, then three copies of itself as child
//! processes. Each child campaigns for `svc/leader` with its address as the value and,
//! while leader, "serves" (prints a heartbeat). The parent kills the leader with SIGKILL
//! after a while: its lease expires and the next candidate in line takes over.
//!
//! With a real cluster, run each candidate yourself:
//! `LEASEHOLD_ENDPOINTS=http://127.0.0.1:7001,... cargo run -p leasehold-node --example election -- candidate c1`

use std::time::Duration;

use leasehold_api::guard::{leader, Election};
use leasehold_api::Client;
use leasehold_node::{Config, Node};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("candidate") {
        let id = args.get(2).cloned().unwrap_or_else(|| "candidate".into());
        return candidate(&id).await;
    }

    let config = Config::in_memory_on("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?);
    let node = Node::start(config).await?;
    let endpoint = format!("http://{}", node.client_addr());
    println!("embedded node at {endpoint}; starting three candidates");
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for i in 1..=3 {
        children.push(
            tokio::process::Command::new(&exe)
                .args(["candidate", &format!("c{i}")])
                .env("LEASEHOLD_ENDPOINTS", &endpoint)
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    let client = Client::new([endpoint.clone()])?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for round in 0..2 {
        let Some(current) = leader(&client, "svc/leader").await? else {
            continue;
        };
        println!(
            "parent: leader is {} (token {}); killing it",
            current.owner, current.token
        );
        let i: usize = current.owner.trim_start_matches('c').parse()?;
        children[i - 1].start_kill()?;
        tokio::time::sleep(Duration::from_secs(4)).await;
        let next = leader(&client, "svc/leader").await?;
        println!(
            "parent: after round {round} the leader is {:?}",
            next.map(|n| (n.owner, n.token))
        );
    }
    drop(children);
    node.shutdown().await;
    Ok(())
}

async fn candidate(id: &str) -> anyhow::Result<()> {
    let client = Client::from_env()?;
    let leadership = Election::new(&client, "svc/leader", format!("{id}.internal:8080"))
        .owner(id)
        .ttl(Duration::from_secs(2))
        .campaign()
        .await?;
    println!("{id}: elected (token {})", leadership.token());
    let lost = leadership.lost();
    tokio::pin!(lost);
    loop {
        tokio::select! {
            reason = &mut lost => {
                println!("{id}: lost leadership: {reason}");
                return Ok(());
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => println!("{id}: serving as leader"),
        }
    }
}
