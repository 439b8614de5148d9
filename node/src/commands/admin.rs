//! The commands that cover the rest of the API: leases (`grant`, `keepalive`, `revoke`,
//! `get`), a lock's `history` and `wait`, `expired`, `semaphores`, and names `register`
//! and `resign`. Each prints text for people or, with `--json`, the API's reply.

use std::time::Duration;

use clap::Subcommand;
use leasehold_api::wire::*;
use leasehold_api::{ErrorCode, LeaseService};
use serde::Serialize;

use super::{client, fail, print, ClientArgs, EXIT_ERROR, EXIT_NOT_ACQUIRED};

/// A value's JSON word (`released`, `lock`), for text output.
fn word<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// Print a key's history, newest first.
fn print_history(h: &HistoryResponse) {
    if h.events.is_empty() {
        println!("{}: no history", h.key);
    }
    for e in &h.events {
        let mut line = format!(
            "{}  {:<9} owner={} token={}",
            e.at_ms,
            word(&e.event),
            e.owner,
            e.token
        );
        if let Some(held) = e.held_ms {
            line.push_str(&format!(" held={held}ms"));
        }
        if let Some(waited) = e.waited_ms {
            line.push_str(&format!(" waited={waited}ms"));
        }
        println!("{line}");
    }
}

#[derive(Subcommand, Debug)]
pub enum LeasesCommand {
    /// List live leases.
    Ls {
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Create a lease (a session to hold several locks under); prints its id.
    Grant {
        /// Its TTL (it ends unless kept alive within it).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ttl: Duration,
        #[arg(long)]
        owner: Option<String>,
    },
    /// Keep a lease alive once (renews its TTL).
    Keepalive { id: u64 },
    /// Revoke a lease: everything held under it is released.
    Revoke { id: u64 },
    /// Show a lease: its TTL, time left and what it holds.
    Get { id: u64 },
}

pub async fn leases(client_args: &ClientArgs, cmd: LeasesCommand) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let json = client_args.json;
    match cmd {
        LeasesCommand::Ls { limit } => {
            match client
                .list_leases(LeaseListParams { limit, after: None })
                .await
            {
                Ok(list) => {
                    print(json, &list, |list| {
                        if list.leases.is_empty() {
                            println!("no live leases");
                        }
                        for l in &list.leases {
                            print_lease(l);
                        }
                    });
                    0
                }
                Err(e) => fail("cannot list leases", &e),
            }
        }
        LeasesCommand::Grant { ttl, owner } => {
            let req = CreateLeaseRequest {
                ttl_ms: ms(ttl),
                owner,
                request_id: None,
            };
            match client.create_lease(req).await {
                Ok(g) => {
                    print(json, &g, |g| {
                        println!(
                            "lease {} granted (ttl {} ms, owner {})",
                            g.lease_id, g.ttl_ms, g.owner
                        )
                    });
                    0
                }
                Err(e) => fail("cannot grant a lease", &e),
            }
        }
        LeasesCommand::Keepalive { id } => match client.keepalive(id).await {
            Ok(k) => {
                print(json, &k, |k| {
                    println!("lease {} kept alive (ttl {} ms)", k.lease_id, k.ttl_ms)
                });
                0
            }
            Err(e) => fail(&format!("cannot keep lease {id} alive"), &e),
        },
        LeasesCommand::Revoke { id } => {
            match client.revoke_lease(id, RevokeParams::default()).await {
                Ok(r) => {
                    print(json, &r, |r| {
                        println!("lease {id} revoked; released {:?}", r.released)
                    });
                    0
                }
                Err(e) => fail(&format!("cannot revoke lease {id}"), &e),
            }
        }
        LeasesCommand::Get { id } => match client.get_lease(id).await {
            Ok(l) => {
                print(json, &l, print_lease);
                0
            }
            Err(e) => fail(&format!("cannot read lease {id}"), &e),
        },
    }
}

fn print_lease(l: &LeaseInfo) {
    println!(
        "lease {} owner={} ttl={}ms remaining={}ms locks={:?} names={:?} semaphores={:?}",
        l.lease_id, l.owner, l.ttl_ms, l.remaining_ms, l.locks, l.names, l.semaphores
    );
}

/// `locks history KEY`.
pub async fn lock_history(client_args: &ClientArgs, key: &str) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.lock_history(key).await {
        Ok(h) => {
            print(client_args.json, &h, print_history);
            0
        }
        Err(e) => fail(&format!("cannot read the history of lock {key}"), &e),
    }
}

/// `locks wait KEY`: wait for the lock to be released (Erlang locker's
/// `wait_for_release`); exit 0 when it was, 75 when the wait ran out with it still held.
pub async fn lock_wait(
    client_args: &ClientArgs,
    key: &str,
    wait: Duration,
    token: Option<u64>,
) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let params = WaitReleaseParams {
        wait_ms: Some(ms(wait)),
        token,
    };
    match client.wait_release(key, params).await {
        Ok(r) => {
            print(client_args.json, &r, |r| match (&r.reason, &r.owner) {
                _ if !r.released => match &r.holder {
                    Some(h) => println!("{key} is still held by {} (token {})", h.owner, h.token),
                    None => println!("{key} is still held"),
                },
                (Some(reason), Some(owner)) => {
                    println!("{key} was released ({}) by {owner}", word(reason))
                }
                _ => println!("{key} is free"),
            });
            if r.released {
                0
            } else {
                EXIT_NOT_ACQUIRED
            }
        }
        Err(e) => fail(&format!("cannot wait for lock {key}"), &e),
    }
}

/// `expired`: the most recent expirations (NoBrainer's expired locks).
pub async fn expired(client_args: &ClientArgs, limit: Option<usize>) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.expired(ExpiredParams { limit }).await {
        Ok(list) => {
            print(client_args.json, &list, |list| {
                if list.expired.is_empty() {
                    println!("nothing expired recently");
                }
                for e in &list.expired {
                    println!(
                        "{}  {} {}  owner={} token={}",
                        e.expired_at_ms,
                        word(&e.kind),
                        e.key,
                        e.owner,
                        e.token
                    );
                }
            });
            0
        }
        Err(e) => fail("cannot list expirations", &e),
    }
}

#[derive(Subcommand, Debug)]
pub enum SemaphoresCommand {
    /// List semaphores with holders.
    Ls {
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one semaphore: its limit, holders and queue.
    Get { key: String },
    /// A semaphore's recent events, newest first.
    History { key: String },
}

pub async fn semaphores(client_args: &ClientArgs, cmd: SemaphoresCommand) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let json = client_args.json;
    match cmd {
        SemaphoresCommand::Ls { prefix, limit } => {
            let params = ListParams {
                prefix,
                limit,
                after: None,
            };
            match client.list_semaphores(params).await {
                Ok(list) => {
                    print(json, &list, |list| {
                        if list.semaphores.is_empty() {
                            println!("no semaphores held");
                        }
                        for s in &list.semaphores {
                            print_semaphore(s);
                        }
                    });
                    0
                }
                Err(e) => fail("cannot list semaphores", &e),
            }
        }
        SemaphoresCommand::Get { key } => {
            match client.get_semaphore(&key, ReadParams::default()).await {
                Ok(s) => {
                    print(json, &s, print_semaphore);
                    0
                }
                Err(e) => fail(&format!("cannot read semaphore {key}"), &e),
            }
        }
        SemaphoresCommand::History { key } => match client.semaphore_history(&key).await {
            Ok(h) => {
                print(json, &h, print_history);
                0
            }
            Err(e) => fail(&format!("cannot read the history of semaphore {key}"), &e),
        },
    }
}

fn print_semaphore(s: &SemaphoreState) {
    println!(
        "{}  {} of {} slots held, {} waiting",
        s.key,
        s.holders.len(),
        s.limit,
        s.waiters
    );
    for h in &s.holders {
        println!(
            "  owner={} token={} expires_in={}ms",
            h.owner, h.token, h.expires_in_ms
        );
    }
}

/// `names register NAME`: register (or campaign for) a name under a new lease; prints
/// the fencing token and lease id to keep it alive with (`leases keepalive`) or resign
/// with (`names resign`). Exit 75 when it is taken (after `--wait`).
pub async fn name_register(
    client_args: &ClientArgs,
    name: &str,
    owner: Option<String>,
    value: Option<String>,
    ttl: Duration,
    wait: Duration,
) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let req = RegisterRequest {
        owner: owner.unwrap_or_else(leasehold_api::guard::default_owner),
        value,
        ttl_ms: Some(ms(ttl)),
        lease_id: None,
        wait_ms: (!wait.is_zero()).then(|| ms(wait)),
        request_id: None,
    };
    match client.register_name(name, req).await {
        Ok(r) => {
            print(client_args.json, &r, |r| {
                println!(
                    "{} registered to {} (token {}, lease {}, expires in {} ms)",
                    r.name, r.owner, r.token, r.lease_id, r.expires_in_ms
                )
            });
            0
        }
        Err(e) if e.code == ErrorCode::NameTaken => {
            eprintln!("leasehold: {}", e.message);
            EXIT_NOT_ACQUIRED
        }
        Err(e) => fail(&format!("cannot register {name}"), &e),
    }
}

/// `names resign NAME --owner O --fencing-token N`.
pub async fn name_resign(client_args: &ClientArgs, name: &str, owner: String, token: u64) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let params = ReleaseParams {
        owner,
        token,
        force: None,
        request_id: None,
    };
    match client.unregister_name(name, params).await {
        Ok(r) => {
            print(client_args.json, &r, |_| println!("{name}: resigned"));
            0
        }
        Err(e) if e.code == ErrorCode::NotOwner => {
            eprintln!("leasehold: {}", e.message);
            EXIT_ERROR
        }
        Err(e) => fail(&format!("cannot resign {name}"), &e),
    }
}

/// `names history NAME`.
pub async fn name_history(client_args: &ClientArgs, name: &str) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.name_history(name).await {
        Ok(h) => {
            print(client_args.json, &h, print_history);
            0
        }
        Err(e) => fail(&format!("cannot read the history of name {name}"), &e),
    }
}
