//! `leasehold lock`: take a lock (or a semaphore slot) and run a command while it is held,
//! passing its exit status through; if the hold is lost, stop the command (SIGTERM, then
//! SIGKILL after `--grace`) and exit with [`EXIT_LOST`].

use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use leasehold_api::guard::{Lock, LockGuard, Semaphore};
use leasehold_api::{Client, ErrorCode};

use super::{
    acquire_failed, client, wait_for_signal, ClientArgs, EXIT_ERROR, EXIT_LOST, EXIT_USAGE,
};

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

/// Run `command` while `guard` holds; pass its status through; kill it if the hold is lost.
pub(super) async fn run_while_held(
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
