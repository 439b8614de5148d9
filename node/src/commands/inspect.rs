//! The commands that read or change cluster state without holding anything: `status`,
//! `locks ls|get|release|history|wait`, `names ls|get [--watch]|register|resign|history`,
//! `members add|remove` (the rest are in `admin`).

use std::time::Duration;

use clap::Subcommand;
use leasehold_api::wire::*;
use leasehold_api::{Client, ErrorCode, LeaseService};

use super::{client, fail, print, wait_for_signal, ClientArgs, EXIT_ERROR};

#[derive(Subcommand, Debug)]
pub enum LocksCommand {
    /// List held locks.
    Ls {
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one lock.
    Get { key: String },
    /// A lock's recent events (acquired, released, expired, revoked, stolen), newest first.
    History { key: String },
    /// Wait until the lock is released (exit 0), or `--wait` runs out with it held (75).
    Wait {
        key: String,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        /// Wait for the end of this hold only (a newer holder counts as released).
        #[arg(long = "fencing-token")]
        token: Option<u64>,
    },
    /// Release a lock: yours (`--owner` and `--token`), or, with `--force`, whoever holds
    /// it (an operator's force release; admin only with auth). The next waiter gets it.
    Release {
        key: String,
        /// The holder (not with --force).
        #[arg(long, required_unless_present = "force", conflicts_with = "force")]
        owner: Option<String>,
        /// The hold's fencing token (with --force: only end that hold). Not `--token`:
        /// that is the bearer token of every command.
        #[arg(long = "fencing-token", required_unless_present = "force")]
        token: Option<u64>,
        /// End the hold whoever owns it; history records it as `stolen`.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum NamesCommand {
    /// List registered names.
    Ls {
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show who holds a name; with --watch, print every change (new holder or vacancy).
    Get {
        name: String,
        #[arg(long)]
        watch: bool,
    },
    /// Register a name (or queue for it with --wait) under a new lease; prints the token
    /// and lease id. Exit 75 if it is taken. `elect` keeps one alive while a command runs.
    Register {
        name: String,
        #[arg(long)]
        value: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// Resign a name you hold (the next candidate in line takes it).
    Resign {
        name: String,
        #[arg(long)]
        owner: String,
        #[arg(long = "fencing-token")]
        token: u64,
    },
    /// A name's recent events, newest first.
    History { name: String },
}

#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// Add a node: it joins as a learner, catches up, then becomes a voter.
    Add {
        id: u64,
        peer_addr: String,
        #[arg(default_value = "")]
        client_addr: String,
    },
    /// Remove a node.
    Remove { id: u64 },
}

pub async fn status(client_args: &ClientArgs) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut status = client.cluster_status().await;
    // Replication lag is known on the leader: ask the endpoint that leads, if one does.
    if let Ok(s) = &status {
        if s.leader_id != Some(s.node_id) {
            for endpoint in client_args.endpoints.split(',') {
                let mut one = client_args.clone();
                one.endpoints = endpoint.trim().to_string();
                let Ok(c) = super::client(&one) else { continue };
                if let Ok(l) = c.cluster_status().await {
                    if l.leader_id == Some(l.node_id) {
                        status = Ok(l);
                        break;
                    }
                }
            }
        }
    }
    match status {
        Ok(s) => {
            print(client_args.json, &s, |s| {
                println!(
                    "node {} · leader {} · term {} · commit {} · applied {}",
                    s.node_id,
                    s.leader_id.map_or("none".to_string(), |l| l.to_string()),
                    s.term,
                    s.commit_index,
                    s.applied_index
                );
                if let Some(fault) = &s.storage_fault {
                    println!("  STORAGE FAULT: {fault}");
                }
                // Replication lag is known on the leader only: how many entries each
                // member's log is behind the leader's commit index.
                let leading = s.leader_id == Some(s.node_id);
                for m in &s.members {
                    let lag = match (leading, m.lag) {
                        (_, Some(lag)) => format!("lag {lag}"),
                        (true, None) => "lag unknown".to_string(),
                        (false, None) => String::new(),
                    };
                    println!(
                        "  member {:<3} {:<22} {:<8} {:<10} {}",
                        m.id,
                        m.addr,
                        if m.voter { "voter" } else { "learner" },
                        match m.reachable {
                            Some(true) => "reachable",
                            Some(false) => "lagging",
                            None => "",
                        },
                        lag
                    );
                }
                if !leading {
                    println!(
                        "  (replication lag is known on the leader; list it in --endpoints to see it)"
                    );
                }
            });
            0
        }
        Err(e) => fail("cannot read the cluster status", &e),
    }
}

pub async fn locks(client_args: &ClientArgs, cmd: LocksCommand) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        LocksCommand::Ls { prefix, limit } => {
            match client
                .list_locks(ListParams {
                    prefix,
                    limit,
                    after: None,
                })
                .await
            {
                Ok(list) => {
                    print(client_args.json, &list, |list| {
                        if list.locks.is_empty() {
                            println!("no locks held");
                        }
                        for l in &list.locks {
                            println!(
                                "{}  owner={} token={} expires_in={}ms",
                                l.key, l.owner, l.token, l.expires_in_ms
                            );
                        }
                    });
                    0
                }
                Err(e) => fail("cannot list locks", &e),
            }
        }
        LocksCommand::Get { key } => match client.get_lock(&key, ReadParams::default()).await {
            Ok(state) => {
                print(client_args.json, &state, |s| match &s.holder {
                    Some(h) => println!(
                        "{} held by {} (token {}, expires in {} ms, {} waiting, acquired {} times)",
                        s.key, h.owner, h.token, h.expires_in_ms, s.waiters, h.acquisitions
                    ),
                    None => println!("{} is free", s.key),
                });
                0
            }
            Err(e) => fail(&format!("cannot read lock {key}"), &e),
        },
        LocksCommand::History { key } => super::admin::lock_history(client_args, &key).await,
        LocksCommand::Wait { key, wait, token } => {
            super::admin::lock_wait(client_args, &key, wait, token).await
        }
        LocksCommand::Release {
            key,
            owner,
            token,
            force,
        } => {
            let params = ReleaseParams {
                owner: owner.unwrap_or_default(),
                token: token.unwrap_or(0),
                request_id: None,
                force: force.then_some(true),
            };
            match client.release_lock(&key, params).await {
                Ok(r) => {
                    print(client_args.json, &r, |r| match (&r.owner, r.token) {
                        (Some(owner), Some(token)) => {
                            println!("{key}: ended the hold of {owner} (token {token})")
                        }
                        _ => println!("{key}: released"),
                    });
                    0
                }
                Err(e) => fail(&format!("cannot release lock {key}"), &e),
            }
        }
    }
}

pub async fn names(client_args: &ClientArgs, cmd: NamesCommand) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        NamesCommand::Ls { prefix, limit } => {
            match client
                .list_names(ListParams {
                    prefix,
                    limit,
                    after: None,
                })
                .await
            {
                Ok(list) => {
                    print(client_args.json, &list, |list| {
                        if list.names.is_empty() {
                            println!("no names registered");
                        }
                        for n in &list.names {
                            println!(
                                "{}  owner={} value={} token={}",
                                n.name,
                                n.owner,
                                n.value.as_deref().unwrap_or(""),
                                n.token
                            );
                        }
                    });
                    0
                }
                Err(e) => fail("cannot list names", &e),
            }
        }
        NamesCommand::Get { name, watch: false } => {
            match client.get_name(&name, ReadParams::default()).await {
                Ok(state) => {
                    print(client_args.json, &state, print_name);
                    0
                }
                Err(e) if e.code == ErrorCode::NameNotFound => {
                    eprintln!("leasehold: {name} is not registered");
                    EXIT_ERROR
                }
                Err(e) => fail(&format!("cannot read name {name}"), &e),
            }
        }
        NamesCommand::Get { name, watch: true } => {
            watch_name(&client, client_args.json, &name).await
        }
        NamesCommand::Register {
            name,
            value,
            owner,
            ttl,
            wait,
        } => super::admin::name_register(client_args, &name, owner, value, ttl, wait).await,
        NamesCommand::Resign { name, owner, token } => {
            super::admin::name_resign(client_args, &name, owner, token).await
        }
        NamesCommand::History { name } => super::admin::name_history(client_args, &name).await,
    }
}

fn print_name(state: &NameState) {
    match &state.record {
        Some(r) => println!(
            "{} = {} (owner {}, token {})",
            state.name,
            r.value.as_deref().unwrap_or(""),
            r.owner,
            r.token
        ),
        None => println!("{} is vacant", state.name),
    }
}

/// Print the name's state, then every change, until interrupted.
async fn watch_name(client: &Client, json: bool, name: &str) -> i32 {
    let mut index = 0;
    let mut first = true;
    loop {
        let params = ReadParams {
            index: Some(index),
            wait_ms: Some(if first { 0 } else { 60_000 }),
            stale: None,
        };
        let read = tokio::select! {
            r = client.get_name(name, params) => r,
            _ = wait_for_signal() => return 0,
        };
        match read {
            Ok(state) => {
                if first || state.index > index {
                    print(json, &state, print_name);
                }
                first = false;
                index = state.index;
            }
            Err(e) if matches!(e.code, ErrorCode::Unavailable | ErrorCode::Timeout) => {
                eprintln!("leasehold: {}; retrying", e.message);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return fail(&format!("cannot watch {name}"), &e),
        }
    }
}

pub async fn members(client_args: &ClientArgs, cmd: MembersCommand) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match cmd {
        MembersCommand::Add {
            id,
            peer_addr,
            client_addr,
        } => {
            client
                .add_member(AddMemberRequest {
                    id,
                    peer_addr,
                    client_addr,
                })
                .await
        }
        MembersCommand::Remove { id } => client.remove_member(id).await,
    };
    match result {
        Ok(status) => {
            print(client_args.json, &status, |s| {
                let ids: Vec<String> = s.members.iter().map(|m| m.id.to_string()).collect();
                println!("members: {}", ids.join(", "));
            });
            0
        }
        Err(e) => fail("cannot change the members", &e),
    }
}
