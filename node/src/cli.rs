//! Command-line interface (SPEC §4).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::{Arg, ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use leasehold_config::{Config, KEYS};
use leasehold_node::Node;
use tracing_subscriber::EnvFilter;

use crate::commands;

#[derive(Parser, Debug)]
#[command(
    name = "leasehold",
    version,
    about = "Locks, leases and leader election on a Raft cluster",
    after_help = "Exit statuses of lock/elect: the command's own status; 75 if the lock was not \
acquired within --wait; 76 if it was lost while the command ran (the command got SIGTERM, then \
SIGKILL after --grace); 69 if no endpoint could serve; 2 for usage errors; 1 otherwise."
)]
struct Cli {
    #[command(flatten)]
    client: commands::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node. With no arguments: one in-memory node on 127.0.0.1:7070.
    Serve(ServeArgs),
    /// Start a real cluster of `--nodes` processes on loopback and print its endpoints.
    LocalCluster(LocalClusterArgs),
    /// Run a command while holding a lock (or one of N semaphore slots), like flock(1).
    Lock(commands::LockArgs),
    /// Campaign for a name; run a command (or hold) while leader; resign on exit.
    Elect(commands::ElectArgs),
    /// Show the cluster: leader, term, indexes, members.
    Status,
    /// Inspect locks.
    #[command(subcommand)]
    Locks(commands::LocksCommand),
    /// Inspect the name registry.
    #[command(subcommand)]
    Names(commands::NamesCommand),
    /// Inspect leases.
    #[command(subcommand)]
    Leases(commands::LeasesCommand),
    /// Add or remove cluster members.
    #[command(subcommand)]
    Members(commands::MembersCommand),
}

/// `serve` flags: `--config FILE` plus one flag per config key (`--limits-max-key-bytes`).
#[derive(Debug, Default)]
struct ServeArgs {
    config: Option<PathBuf>,
    overrides: Vec<(String, String)>,
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs {
            config: matches.get_one::<PathBuf>("config").cloned(),
            overrides: Vec::new(),
        };
        for key in KEYS {
            if let Some(value) = matches.get_one::<String>(key.key) {
                args.overrides.push((key.key.to_string(), value.clone()));
            }
        }
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for ServeArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let mut cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML config file (flags and LEASEHOLD_* env vars override it)"),
        );
        for key in KEYS {
            cmd = cmd.arg(
                Arg::new(key.key)
                    .long(key.flag.trim_start_matches("--"))
                    .value_name("VALUE")
                    .help(format!(
                        "{} [env: {}] [default: {}]",
                        key.help, key.env, key.default
                    )),
            );
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Args, Debug)]
struct LocalClusterArgs {
    /// Number of nodes (3 or 5 make sense).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Keep each node's Raft log in DIR/node-N (sled); omit for in-memory nodes.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Node N serves HTTP on BASE+N and Raft on BASE+100+N.
    #[arg(long, default_value_t = 7000)]
    base_port: u16,
}

pub async fn run() -> i32 {
    let cli = Cli::parse();
    init_tracing();
    let c = &cli.client;
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::LocalCluster(args) => local_cluster(args).await,
        Command::Lock(args) => commands::lock(c, args).await,
        Command::Elect(args) => commands::elect(c, args).await,
        Command::Status => commands::status(c).await,
        Command::Locks(cmd) => commands::locks(c, cmd).await,
        Command::Names(cmd) => commands::names(c, cmd).await,
        Command::Leases(cmd) => commands::leases(c, cmd).await,
        Command::Members(cmd) => commands::members(c, cmd).await,
    }
}

fn init_tracing() {
    let filter = std::env::var("LEASEHOLD_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info,openraft=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn serve(args: ServeArgs) -> i32 {
    let env = std::env::vars().filter(|(k, _)| k.starts_with("LEASEHOLD_"));
    let config = match Config::load(args.config.as_deref(), env, &args.overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("leasehold: {e}");
            eprintln!("fix the setting named above (see `leasehold serve --help`) and start again");
            return 2;
        }
    };
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("leasehold: {e}");
            return 1;
        }
    };
    eprintln!(
        "leasehold node {} serving HTTP on http://{} (peers on {})",
        node.node_id(),
        node.client_addr(),
        node.peer_addr()
    );
    wait_for_signal().await;
    eprintln!("leasehold: shutting down");
    node.shutdown().await;
    0
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn local_cluster(args: LocalClusterArgs) -> i32 {
    if args.nodes == 0 || args.nodes > 9 {
        eprintln!(
            "leasehold: --nodes must be between 1 and 9, got {}",
            args.nodes
        );
        return 2;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("leasehold: cannot find my own executable: {e}");
            return 1;
        }
    };
    let client_port = |n: u64| args.base_port as u64 + n;
    let peer_port = |n: u64| args.base_port as u64 + 100 + n;
    let members: Vec<String> = (1..=args.nodes)
        .map(|n| format!("{n}=127.0.0.1:{}", peer_port(n)))
        .collect();
    let mut children = Vec::new();
    for n in 1..=args.nodes {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("serve")
            .args(["--node-id", &n.to_string()])
            .args(["--client-addr", &format!("127.0.0.1:{}", client_port(n))])
            .args(["--peer-addr", &format!("127.0.0.1:{}", peer_port(n))])
            .args(["--cluster-members", &members.join(",")])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(dir) = &args.data_dir {
            cmd.args(["--data-dir", &node_dir(dir, n).display().to_string()]);
        }
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                eprintln!("leasehold: cannot start node {n}: {e}");
                return 1;
            }
        }
    }
    let endpoints: Vec<String> = (1..=args.nodes)
        .map(|n| format!("http://127.0.0.1:{}", client_port(n)))
        .collect();
    wait_ready(&endpoints).await;
    println!("leasehold local cluster of {} nodes is up:", args.nodes);
    for (i, (endpoint, child)) in endpoints.iter().zip(&children).enumerate() {
        println!(
            "  node {}  {endpoint}  (pid {})",
            i + 1,
            child.id().map_or("?".to_string(), |p| p.to_string())
        );
    }
    println!("export LEASEHOLD_ENDPOINTS={}", endpoints.join(","));
    println!("press Ctrl-C to stop the cluster");
    wait_for_signal().await;
    for child in &mut children {
        if let Some(pid) = child.id() {
            terminate(pid);
        }
    }
    for child in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        let _ = child.kill().await;
    }
    0
}

fn node_dir(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("node-{n}"))
}

/// Wait (bounded) until every node answers `/readyz`, so the printed endpoints work.
async fn wait_ready(endpoints: &[String]) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for endpoint in endpoints {
        let url = format!("{endpoint}/readyz");
        loop {
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status().is_success() {
                    break;
                }
            }
            if tokio::time::Instant::now() > deadline {
                eprintln!("leasehold: {endpoint} is not ready yet; check its log above");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(unix)]
fn terminate(pid: u32) {
    // SAFETY: kill(2) with a pid we spawned and SIGTERM has no memory effects.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

#[cfg(not(unix))]
fn terminate(_pid: u32) {}
