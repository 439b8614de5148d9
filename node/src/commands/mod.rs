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
//!
//! Layout:
//! - here: the exit statuses, [`ClientArgs`], and what every command shares (making the
//!   client, reporting API and acquire errors, printing text or JSON, waiting for a signal).
//! - `lock`: `lock`, and running a command while a hold lasts (kill on loss), also used
//!   by `elect -- CMD`.
//! - `elect`: `elect`.
//! - `inspect`: `status`, `locks`, `names` (with `--watch`), `leases`, `members`.

mod elect;
mod inspect;
mod lock;

pub use self::elect::{elect, ElectArgs};
pub use self::inspect::{
    leases, locks, members, names, status, LeasesCommand, LocksCommand, MembersCommand,
    NamesCommand,
};
pub use self::lock::{lock, LockArgs};

use clap::Args;
use leasehold_api::{ApiError, Client, ErrorCode, GuardError};
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
