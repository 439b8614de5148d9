//! `leasehold elect`: campaign for a name, publish a value while leader, and either run a
//! command for as long as leadership lasts or hold it until interrupted.

use std::time::Duration;

use clap::Args;
use leasehold_api::guard::Election;

use super::lock::run_while_held;
use super::{acquire_failed, client, wait_for_signal, ClientArgs, EXIT_LOST};

#[derive(Args, Debug)]
pub struct ElectArgs {
    /// The name to campaign for.
    pub name: String,
    /// The value to publish while leader (for example this instance's address).
    #[arg(long)]
    pub value: String,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    #[arg(long)]
    pub owner: Option<String>,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Run this while leader; without it, hold leadership until interrupted.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub async fn elect(client_args: &ClientArgs, args: ElectArgs) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let owner = args
        .owner
        .clone()
        .unwrap_or_else(leasehold_api::guard::default_owner);
    if !client_args.json {
        eprintln!("leasehold: campaigning for {} as {owner}", args.name);
    }
    let campaign = Election::new(&client, &args.name, &args.value)
        .ttl(args.ttl)
        .owner(owner)
        .campaign();
    let guard = tokio::select! {
        g = campaign => match g {
            Ok(g) => g,
            Err(e) => return acquire_failed(&args.name, e),
        },
        _ = wait_for_signal() => return 130,
    };
    if client_args.json {
        println!(
            "{}",
            serde_json::json!({"elected": args.name, "token": guard.token(), "value": args.value})
        );
    } else {
        println!("elected {} (token {})", args.name, guard.token());
    }
    if !args.command.is_empty() {
        return run_while_held(guard, &args.command, args.grace, "leadership").await;
    }
    let lost = guard.lost();
    tokio::select! {
        reason = lost => {
            eprintln!("leasehold: leadership of {} lost: {reason}", args.name);
            EXIT_LOST
        }
        _ = wait_for_signal() => {
            let _ = guard.release().await;
            eprintln!("leasehold: resigned {}", args.name);
            0
        }
    }
}
