//! The client commands of the `leasehold` binary (SPEC §4): `lock`, `elect`, `status`,
//! `locks`, `names`, `leases`, `members`, `snapshot`. They talk to a cluster over HTTP with
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
//! - `admin`: `leases`, `expired`, `semaphores`, and what `inspect` hands on (histories,
//!   waits, name registration).
//! - `snapshot`: `snapshot save|status|restore` (backups).

mod admin;
mod elect;
mod inspect;
mod lock;
mod snapshot;

pub use self::admin::{expired, leases, semaphores, LeasesCommand, SemaphoresCommand};
pub use self::elect::{elect, ElectArgs};
pub use self::inspect::{
    locks, members, names, status, LocksCommand, MembersCommand, NamesCommand,
};
pub use self::lock::{lock, LockArgs};
pub use self::snapshot::{snapshot_restore, snapshot_save, snapshot_status};

use std::path::PathBuf;

use clap::Args;
use leasehold_api::client::is_tls_failure;
use leasehold_api::{ApiError, Client, ErrorCode, GuardError};
use serde::Serialize;

pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_UNAVAILABLE: i32 = 69;
pub const EXIT_NOT_ACQUIRED: i32 = 75;
pub const EXIT_LOST: i32 = 76;

/// Where the cluster is, the credentials to show it, and how to print.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Comma-separated HTTP endpoints of the cluster's nodes.
    #[arg(
        long,
        env = "LEASEHOLD_ENDPOINTS",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub endpoints: String,
    /// Bearer token for a cluster with `[auth]` (not LEASEHOLD_TOKEN: that is the fencing
    /// token `lock` gives its command).
    #[arg(
        id = "auth_token",
        long = "token",
        env = "LEASEHOLD_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        global = true
    )]
    pub token: Option<String>,
    /// PEM CA to trust for https:// endpoints (the cluster's CA), besides the web roots.
    #[arg(long, env = "LEASEHOLD_CACERT", value_name = "FILE", global = true)]
    pub cacert: Option<PathBuf>,
    /// PEM client certificate, for nodes that require one (`tls.client_ca`); needs --key.
    #[arg(
        id = "client_cert",
        long = "cert",
        env = "LEASEHOLD_CLIENT_CERT",
        value_name = "FILE",
        global = true
    )]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(
        id = "client_key",
        long = "key",
        env = "LEASEHOLD_CLIENT_KEY",
        value_name = "FILE",
        global = true
    )]
    pub key: Option<PathBuf>,
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
}

/// By hand, so that the token never reaches a log or a panic message.
impl std::fmt::Debug for ClientArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArgs")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("json", &self.json)
            .finish()
    }
}

fn client(args: &ClientArgs) -> Result<Client, i32> {
    let usage = |message: &str| {
        eprintln!("leasehold: {message}");
        EXIT_USAGE
    };
    // An empty value counts as unset (`LEASEHOLD_AUTH_TOKEN=` clears it), as in
    // `Client::from_env`.
    let path = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    let mut builder = Client::builder(args.endpoints.split(','));
    if let Some(token) = args.token.as_deref().filter(|t| !t.trim().is_empty()) {
        builder = builder.token(token);
    }
    if let Some(ca) = path(&args.cacert) {
        builder = builder.ca_cert_file(ca);
    }
    builder = match (path(&args.cert), path(&args.key)) {
        (Some(cert), Some(key)) => builder.identity_files(cert, key),
        (None, None) => builder,
        (Some(_), None) => return Err(usage("--cert needs --key (or LEASEHOLD_CLIENT_KEY) too")),
        (None, Some(_)) => return Err(usage("--key needs --cert (or LEASEHOLD_CLIENT_CERT) too")),
    };
    builder.build().map_err(|e| usage(&flag_names(&e.message)))
}

/// The builder names its settings (`ca_cert: ...`); say which flag that is.
fn flag_names(message: &str) -> String {
    for (setting, flag) in [
        ("endpoints: ", "--endpoints"),
        ("token: ", "--token"),
        ("ca_cert: ", "--cacert"),
        ("client_cert: ", "--cert"),
        ("client_key: ", "--key"),
    ] {
        if let Some(rest) = message.strip_prefix(setting) {
            return format!("{flag}: {rest}");
        }
    }
    message.to_string()
}

/// Report an API error with what to do, and pick the exit status.
fn fail(what: &str, e: &ApiError) -> i32 {
    eprintln!("leasehold: {what}: {}", e.message);
    if is_tls_failure(e) {
        eprintln!(
            "hint: check --cacert (LEASEHOLD_CACERT: the CA that signed the nodes' certificates), --cert/--key, and that the endpoints say https:// for nodes with [tls]"
        );
        return EXIT_UNAVAILABLE;
    }
    match e.code {
        ErrorCode::Unavailable | ErrorCode::Timeout => {
            eprintln!(
                "hint: check that the cluster is running and that --endpoints (or LEASEHOLD_ENDPOINTS) lists its nodes"
            );
            EXIT_UNAVAILABLE
        }
        ErrorCode::Unauthorized => {
            eprintln!("hint: pass --token or set LEASEHOLD_AUTH_TOKEN (a token of this cluster)");
            EXIT_ERROR
        }
        ErrorCode::Forbidden => {
            eprintln!(
                "hint: the token's principal may not touch this key; see its prefixes (and its role) in the tokens file"
            );
            EXIT_ERROR
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
