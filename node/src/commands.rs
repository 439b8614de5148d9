//! The client commands of the `leasehold` binary (SPEC §4): `lock`, `elect`, `status`,
//! `locks`, `names`, `leases`, `members`. They talk to a cluster over HTTP with
//! `leasehold_api::Client`, failing over between `--endpoints`.
//!
//! Exit statuses (also in `leasehold --help`):
//! - the command's own status for `lock`/`elect -- CMD` (128 + signal if it was killed),
//! - [`EXIT_NOT_ACQUIRED`] (75) when the lock or name was not acquired within `--wait`,
//! - [`EXIT_LOST`] (76) when the lock or leadership was lost while the command ran (the
//!   command was sent SIGTERM, then SIGKILL after `--grace`),
//! - [`EXIT_UNAVAILABLE`] (69) when no endpoint could serve the request,
//! - 2 for usage errors, 1 for any other error.

use std::process::Stdio;
use std::time::Duration;

use clap::{Args, Subcommand};
use leasehold_api::guard::{Election, Lock, LockGuard, Semaphore};
use leasehold_api::wire::*;
use leasehold_api::{ApiError, Client, ErrorCode, GuardError, LeaseService};
use serde::Serialize;

pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNAVAILABLE: i32 = 69;
pub const EXIT_NOT_ACQUIRED: i32 = 75;
pub const EXIT_LOST: i32 = 76;

/// Where the cluster is and how to print.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Comma-separated HTTP endpoints of the cluster's nodes.
    #[arg(
        long,
        env = "LEASEHOLD_ENDPOINTS",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub endpoints: String,
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LockArgs {
    /// The key to lock.
    pub key: String,
    /// Lease TTL; renewed every third of it while the command runs.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// How long to queue for the lock (0: try once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// Hold one of N slots (a semaphore) instead of an exclusive lock.
    #[arg(short = 'n', long = "limit", default_value_t = 1)]
    pub limit: u32,
    /// Owner name recorded with the lock (default: host-pid).
    #[arg(long)]
    pub owner: Option<String>,
    /// After SIGTERM on loss, how long before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// The command to run while holding the lock.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

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
}

#[derive(Subcommand, Debug)]
pub enum LeasesCommand {
    /// List live leases.
    Ls {
        #[arg(long)]
        limit: Option<usize>,
    },
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

fn client(args: &ClientArgs) -> Result<Client, i32> {
    Client::new(args.endpoints.split(',')).map_err(|e| {
        eprintln!("leasehold: {}", e.message);
        EXIT_USAGE
    })
}

/// Report an API error with what to do, and pick the exit status.
fn fail(what: &str, e: &ApiError) -> i32 {
    eprintln!("leasehold: {what}: {}", e.message);
    match e.code {
        ErrorCode::Unavailable | ErrorCode::Timeout => {
            eprintln!(
                "hint: check that the cluster is running and that --endpoints (or LEASEHOLD_ENDPOINTS) lists its nodes"
            );
            EXIT_UNAVAILABLE
        }
        ErrorCode::InvalidArgument | ErrorCode::PayloadTooLarge => EXIT_USAGE,
        _ => EXIT_ERROR,
    }
}

fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T)) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("leasehold: cannot print JSON: {e}"),
        }
    } else {
        human(value);
    }
}

pub async fn lock(client_args: &ClientArgs, args: LockArgs) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let owner = args
        .owner
        .clone()
        .unwrap_or_else(leasehold_api::guard::default_owner);
    let acquired = if args.limit > 1 {
        Semaphore::new(&client, &args.key, args.limit)
            .ttl(args.ttl)
            .wait(args.wait)
            .owner(owner)
            .acquire()
            .await
    } else {
        Lock::new(&client, &args.key)
            .ttl(args.ttl)
            .wait(args.wait)
            .owner(owner)
            .acquire()
            .await
    };
    let guard = match acquired {
        Ok(g) => g,
        Err(e) => return acquire_failed(&args.key, e),
    };
    if !client_args.json {
        eprintln!("leasehold: locked {} (token {})", args.key, guard.token());
    }
    run_while_held(guard, &args.command, args.grace, "lock").await
}

fn acquire_failed(what: &str, e: GuardError) -> i32 {
    match e {
        GuardError::Options(m) => {
            eprintln!("leasehold: {m}");
            EXIT_USAGE
        }
        GuardError::Api(e)
            if matches!(
                e.code,
                ErrorCode::LockHeld | ErrorCode::SemaphoreFull | ErrorCode::NameTaken
            ) =>
        {
            eprintln!("leasehold: {what} not acquired: {}", e.message);
            eprintln!("hint: pass --wait to queue for it");
            EXIT_NOT_ACQUIRED
        }
        GuardError::Api(e) => fail(&format!("cannot acquire {what}"), &e),
        GuardError::Lost(reason) => {
            eprintln!("leasehold: {what} lost: {reason}");
            EXIT_LOST
        }
    }
}

/// Run `command` while `guard` holds; pass its status through; kill it if the hold is lost.
async fn run_while_held(
    guard: LockGuard<Client>,
    command: &[String],
    grace: Duration,
    what: &str,
) -> i32 {
    let Some((program, rest)) = command.split_first() else {
        eprintln!("leasehold: give the command to run after --");
        return EXIT_USAGE;
    };
    let mut child = match tokio::process::Command::new(program)
        .args(rest)
        .env("LEASEHOLD_TOKEN", guard.token().to_string())
        .env("LEASEHOLD_KEY", guard.key())
        .env("LEASEHOLD_LEASE_ID", guard.lease_id().to_string())
        .stdin(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("leasehold: cannot run {program:?}: {e}");
            let _ = guard.release().await;
            return 127;
        }
    };
    let lost = guard.lost();
    tokio::select! {
        status = child.wait() => {
            let code = exit_code(status);
            if let Err(e) = guard.release().await {
                if !matches!(e.code, ErrorCode::NotOwner | ErrorCode::LeaseNotFound | ErrorCode::NameNotFound) {
                    eprintln!("leasehold: could not release {}: {} (it expires with its TTL)", guard_key_hint(what), e.message);
                }
            }
            code
        }
        reason = lost => {
            eprintln!("leasehold: {what} lost ({reason}); stopping the command");
            stop_child(&mut child, grace).await;
            EXIT_LOST
        }
        _ = wait_for_signal() => {
            stop_child(&mut child, grace).await;
            let _ = guard.release().await;
            130
        }
    }
}

fn guard_key_hint(what: &str) -> &str {
    what
}

fn exit_code(status: std::io::Result<std::process::ExitStatus>) -> i32 {
    match status {
        Ok(status) => {
            if let Some(code) = status.code() {
                return code;
            }
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                if let Some(signal) = status.signal() {
                    return 128 + signal;
                }
            }
            EXIT_ERROR
        }
        Err(e) => {
            eprintln!("leasehold: waiting for the command failed: {e}");
            EXIT_ERROR
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn stop_child(child: &mut tokio::process::Child, grace: Duration) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid with SIGTERM.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
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

pub async fn status(client_args: &ClientArgs) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match client.cluster_status().await {
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
                for m in &s.members {
                    println!(
                        "  member {:<3} {:<22} {:<8} {}",
                        m.id,
                        m.addr,
                        if m.voter { "voter" } else { "learner" },
                        match m.reachable {
                            Some(true) => "reachable",
                            Some(false) => "lagging",
                            None => "",
                        }
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

pub async fn leases(client_args: &ClientArgs, cmd: LeasesCommand) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let LeasesCommand::Ls { limit } = cmd;
    match client
        .list_leases(LeaseListParams { limit, after: None })
        .await
    {
        Ok(list) => {
            print(client_args.json, &list, |list| {
                if list.leases.is_empty() {
                    println!("no live leases");
                }
                for l in &list.leases {
                    println!(
                        "lease {} owner={} ttl={}ms remaining={}ms locks={:?} names={:?}",
                        l.lease_id, l.owner, l.ttl_ms, l.remaining_ms, l.locks, l.names
                    );
                }
            });
            0
        }
        Err(e) => fail("cannot list leases", &e),
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
