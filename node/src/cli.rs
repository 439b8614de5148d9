//! Command-line interface (SPEC §4).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::{Arg, ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use leasehold_config::{Config, LogFormat, KEYS};
use leasehold_node::Node;
use sd_notify::NotifyState;
use tracing_subscriber::EnvFilter;

use crate::commands;

#[derive(Parser, Debug)]
#[command(
    name = "leasehold",
    version,
    about = "Locks, leases and leader election on a Raft cluster",
    after_help = "Exit statuses: 0 on success; lock/elect -- CMD: the command's own status; 75 if \
the lock or name was not acquired within --wait (also `names register` when taken, `locks wait` \
when still held); 76 if it was lost while the command ran (the command got SIGTERM, then SIGKILL \
after --grace); 69 if no endpoint could serve; 2 for usage errors; 1 otherwise. Every command \
takes --json for scripts."
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
    /// Grant, keep alive, revoke and inspect leases.
    #[command(subcommand)]
    Leases(commands::LeasesCommand),
    /// Inspect semaphores.
    #[command(subcommand)]
    Semaphores(commands::SemaphoresCommand),
    /// The most recent expirations (locks, names and slots whose lease ran out).
    Expired {
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print a shell completion script: `leasehold completions bash > /etc/bash_completion.d/leasehold`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Add or remove cluster members.
    #[command(subcommand)]
    Members(commands::MembersCommand),
    /// Back up a cluster's state, check a backup, restore one into a new cluster.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// A node's configuration on the command line: `--config FILE` plus one flag per config
/// key (`--limits-max-key-bytes`), over `LEASEHOLD_*` env vars, over the file.
#[derive(Debug, Default, Clone)]
struct ConfigArgs {
    config: Option<PathBuf>,
    overrides: Vec<(String, String)>,
}

impl ConfigArgs {
    /// The configuration these flags, the environment and the file give; on error, say so
    /// on stderr and return the exit status.
    fn load(&self) -> Result<Config, i32> {
        let env =
            std::env::vars().filter(|(k, _)| k.starts_with("LEASEHOLD_") && !is_bug_switch(k));
        #[cfg(feature = "bug-switches")]
        match leasehold_node::bug_switch_from_env() {
            Ok(None) => {}
            Ok(Some(bug)) => eprintln!(
                "leasehold: WARNING: bug switch {bug:?} is on (a test build of the fault suite)"
            ),
            Err(e) => {
                eprintln!("leasehold: {e}");
                return Err(2);
            }
        }
        Config::load(self.config.as_deref(), env, &self.overrides).map_err(|e| {
            eprintln!("leasehold: {e}");
            eprintln!("fix the setting named above (see `leasehold serve --help`) and start again");
            2
        })
    }
}

/// `LEASEHOLD_BUG` is not a setting: with the `bug-switches` feature it names a bug switch
/// (`leasehold_node`'s `bugs`); without, it is refused like any unknown variable.
fn is_bug_switch(var: &str) -> bool {
    #[cfg(feature = "bug-switches")]
    return var == leasehold_node::BUG_SWITCH_ENV;
    #[cfg(not(feature = "bug-switches"))]
    {
        let _ = var;
        false
    }
}

impl FromArgMatches for ConfigArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ConfigArgs {
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

impl Args for ConfigArgs {
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

/// `serve` flags: the configuration, and `--rejoin`.
#[derive(Args, Debug, Default)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Rejoin as an empty member: for a node whose data directory is damaged or was lost.
    /// Needs a majority of the members up; moves the data directory aside
    /// (DIR.rejoin-<time>), has the leader remove this node and add it back as a learner,
    /// caught up, then a voter.
    #[arg(long)]
    rejoin: bool,
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Save a backup of a running cluster's whole state to FILE, consistent as of one
    /// linearizable read (admin with auth). Like `etcdctl snapshot save`.
    Save { file: PathBuf },
    /// Check a backup file (format, length, SHA-256, state) and show what it holds.
    Status { file: PathBuf },
    /// Seed one member's data directory of a NEW cluster from a backup (run it for every
    /// member, with that member's config, then start them). Like `etcdutl snapshot
    /// restore`.
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
struct RestoreArgs {
    file: PathBuf,
    /// Raise the fencing-token and lease-id floors by N, so the new cluster never issues a
    /// token or lease id the old one issued after the backup was taken (as etcdutl's
    /// --bump-revision). Make it larger than the grants the old cluster may have made
    /// since the save.
    #[arg(long, value_name = "N", default_value_t = 1_000_000_000)]
    bump_tokens: u64,
    /// The member's configuration: `--data-dir` (must be empty or absent), `--node-id` and
    /// `--cluster-members` of the new cluster (or `--config FILE`, as for serve).
    #[command(flatten)]
    config: ConfigArgs,
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
    /// Serve HTTPS only, with mutual TLS between the nodes: makes a CA and a certificate
    /// per node in DIR/tls (or a temporary directory removed on exit) and prints the CA.
    #[arg(long)]
    tls: bool,
    /// Require bearer tokens: writes a tokens file with three new tokens (admin; demo, who
    /// may write under demo/; viewer, who may read) and prints them.
    #[arg(long)]
    auth: bool,
}

pub async fn run() -> i32 {
    let cli = Cli::parse();
    let c = &cli.client;
    if !matches!(cli.command, Command::Serve(_)) {
        init_tracing(LogFormat::Text);
    }
    match cli.command {
        // `serve` sets up its logs once its config says in which format.
        Command::Serve(args) => serve(args).await,
        Command::LocalCluster(args) => local_cluster(args).await,
        Command::Lock(args) => commands::lock(c, args).await,
        Command::Elect(args) => commands::elect(c, args).await,
        Command::Status => commands::status(c).await,
        Command::Locks(cmd) => commands::locks(c, cmd).await,
        Command::Names(cmd) => commands::names(c, cmd).await,
        Command::Leases(cmd) => commands::leases(c, cmd).await,
        Command::Semaphores(cmd) => commands::semaphores(c, cmd).await,
        Command::Expired { limit } => commands::expired(c, limit).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "leasehold",
                &mut std::io::stdout(),
            );
            0
        }
        Command::Members(cmd) => commands::members(c, cmd).await,
        Command::Snapshot(SnapshotCommand::Save { file }) => {
            commands::snapshot_save(c, &file).await
        }
        Command::Snapshot(SnapshotCommand::Status { file }) => commands::snapshot_status(c, &file),
        Command::Snapshot(SnapshotCommand::Restore(args)) => match args.config.load() {
            Ok(config) => commands::snapshot_restore(c, &args.file, args.bump_tokens, &config),
            Err(code) => code,
        },
    }
}

fn init_tracing(format: LogFormat) {
    let filter = std::env::var("LEASEHOLD_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // Colour codes only on a terminal: a log file or journald gets plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // One JSON object per line: timestamp, level, target, fields (the message among
        // them), the innermost span and the list of spans (node id, request, key).
        LogFormat::Json => builder.json().with_span_list(true).try_init(),
    };
}

async fn serve(args: ServeArgs) -> i32 {
    let config = match args.config.load() {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_tracing(config.log.format);
    let started = match args.rejoin {
        true => Node::rejoin(config).await,
        false => Node::start(config).await,
    };
    let node = match started {
        Ok(node) => node,
        Err(e) => {
            eprintln!("leasehold: {e}");
            return 1;
        }
    };
    eprintln!(
        "leasehold node {} serving {} on {} (peers on {})",
        node.node_id(),
        if node.client_url().starts_with("https") {
            "HTTPS"
        } else {
            "HTTP"
        },
        node.client_url(),
        node.peer_addr()
    );
    let notifier = tokio::spawn(notify_when_ready(node.service()));
    // A storage fault stops the node's Raft core; the node keeps answering (503 naming the
    // disk) and probes its data directory. Once that is writable again, the process
    // restarts itself (same pid, arguments and environment) to reopen the data directory
    // from scratch: a sled call stuck since the fault may still hold the old handle.
    let storage_back = tokio::select! {
        _ = serve_until_stopped(&node) => false,
        _ = node.storage_writable_again() => true,
    };
    notifier.abort();
    if !storage_back {
        eprintln!("leasehold: shutting down");
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
        node.shutdown().await;
        return 0;
    }
    eprintln!("leasehold: the data directory is writable again; restarting this process");
    let _ = sd_notify::notify(&[NotifyState::Status(
        "restarting in place after a storage fault",
    )]);
    let _ = tokio::time::timeout(Duration::from_secs(10), node.shutdown()).await;
    let err = restart_process();
    eprintln!(
        "leasehold: could not restart itself ({err}); exiting with {EXIT_RESTART} for the \
         supervisor to start it again"
    );
    EXIT_RESTART
}

/// systemd's `Type=notify` (as etcd does): `READY=1` once the node is ready in the sense
/// of `/readyz` (a leader is known and this node has applied its commit index), with a
/// `STATUS=` line meanwhile; `STOPPING=1` is sent on shutdown. Nothing without
/// `NOTIFY_SOCKET`.
async fn notify_when_ready(service: leasehold_node::NodeService) {
    use leasehold_api::LeaseService;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut said_waiting = false;
    loop {
        match service.ready().await {
            Ok(()) => {
                if let Err(e) =
                    sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("ready")])
                {
                    tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
                }
                return;
            }
            Err(e) if !said_waiting => {
                let status = format!("waiting to be ready: {}", e.message);
                let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
                said_waiting = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The exit status that asks the supervisor for a restart (EX_TEMPFAIL).
const EXIT_RESTART: i32 = 75;

/// Replace this process with a fresh run of the same binary, arguments and environment.
/// Returns only if that failed.
fn restart_process() -> std::io::Error {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        match std::env::current_exe() {
            // Never `--rejoin` again: the data directory is the one to reopen.
            Ok(exe) => std::process::Command::new(exe)
                .args(std::env::args_os().skip(1).filter(|a| a != "--rejoin"))
                .exec(),
            Err(e) => e,
        }
    }
    #[cfg(not(unix))]
    {
        std::io::Error::other("restarting in place needs unix")
    }
}

/// Serve until SIGTERM or Ctrl-C; on SIGHUP, re-read the TLS certificates and the tokens
/// file (what is bad keeps what was in force, and the log says why).
async fn serve_until_stopped(node: &Node) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            let stop = wait_for_signal();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = hangup.recv() => match node.reload() {
                        Ok(()) => tracing::info!("SIGHUP: reloaded"),
                        Err(e) => tracing::warn!(error = %e, "SIGHUP: reload refused"),
                    },
                }
            }
        }
    }
    wait_for_signal().await
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
    // Declared before the children, so it outlives them: a temporary directory is removed
    // only once every node has stopped.
    let security = match LocalSecurity::prepare(&args) {
        Ok(security) => security,
        Err(e) => {
            eprintln!("leasehold: {e}");
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
        if let Some(tls) = &security.tls {
            let (cert, key) = &tls.nodes[(n - 1) as usize];
            cmd.arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key)
                .arg("--tls-ca")
                .arg(&tls.ca);
        }
        if let Some(tokens_file) = &security.tokens_file {
            cmd.arg("--auth-tokens-file").arg(tokens_file);
        }
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                eprintln!("leasehold: cannot start node {n}: {e}");
                return 1;
            }
        }
    }
    let scheme = if security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoints: Vec<String> = (1..=args.nodes)
        .map(|n| format!("{scheme}://127.0.0.1:{}", client_port(n)))
        .collect();
    let ca = security.tls.as_ref().map(|tls| tls.ca.as_path());
    if let Err(e) = wait_ready(&endpoints, ca, &mut children).await {
        eprintln!("leasehold: {e}");
        for child in &mut children {
            let _ = child.kill().await;
        }
        return 1;
    }
    println!(
        "leasehold local cluster of {} nodes is up{}:",
        args.nodes,
        security.describe()
    );
    for (i, (endpoint, child)) in endpoints.iter().zip(&children).enumerate() {
        println!(
            "  node {}  {endpoint}  (pid {})",
            i + 1,
            child.id().map_or("?".to_string(), |p| p.to_string())
        );
    }
    security.print(&endpoints);
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

/// The principals `local-cluster --auth` makes: name, role, prefixes, `max_leases`.
const LOCAL_PRINCIPALS: [(&str, &str, &[&str], Option<u64>); 3] = [
    ("admin", "admin", &[""], None),
    ("demo", "write", &["demo/"], Some(1000)),
    ("viewer", "read", &[""], None),
];

/// Random bytes in a generated token (192 bits).
const LOCAL_TOKEN_BYTES: usize = 24;

/// A bearer token made by `local-cluster --auth`, and whom it stands for.
struct LocalToken {
    name: &'static str,
    role: &'static str,
    prefixes: &'static [&'static str],
    max_leases: Option<u64>,
    token: String,
}

/// The CA and the per-node certificates of `local-cluster --tls`.
struct LocalTls {
    ca: PathBuf,
    /// Certificate and key of node N at index N - 1.
    nodes: Vec<(PathBuf, PathBuf)>,
}

/// What `local-cluster --tls` and `--auth` made, and where. A temporary directory is
/// removed when this is dropped.
#[derive(Default)]
struct LocalSecurity {
    tls: Option<LocalTls>,
    tokens_file: Option<PathBuf>,
    tokens: Vec<LocalToken>,
    temporary_dir: Option<PathBuf>,
}

impl Drop for LocalSecurity {
    fn drop(&mut self) {
        if let Some(dir) = self.temporary_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl LocalSecurity {
    /// Make the certificates and tokens asked for, in `--data-dir` or a new temporary
    /// directory. Files of an earlier run are replaced: tokens are only printed once.
    fn prepare(args: &LocalClusterArgs) -> Result<Self, String> {
        let mut security = LocalSecurity::default();
        if !args.tls && !args.auth {
            return Ok(security);
        }
        let dir = match &args.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                dir.clone()
            }
            None => {
                let dir = new_private_temp_dir()?;
                security.temporary_dir = Some(dir.clone());
                dir
            }
        };
        if args.tls {
            security.tls = Some(make_local_certs(&dir.join("tls"), args.nodes)?);
        }
        if args.auth {
            for (name, role, prefixes, max_leases) in LOCAL_PRINCIPALS {
                security.tokens.push(LocalToken {
                    name,
                    role,
                    prefixes,
                    max_leases,
                    token: new_token()?,
                });
            }
            let path = dir.join("tokens.toml");
            std::fs::write(&path, tokens_file_text(&security.tokens))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            security.tokens_file = Some(path);
        }
        Ok(security)
    }

    /// For the "is up" line.
    fn describe(&self) -> &'static str {
        match (self.tls.is_some(), self.tokens_file.is_some()) {
            (true, true) => " (HTTPS, mutual TLS between the nodes, bearer tokens)",
            (true, false) => " (HTTPS, mutual TLS between the nodes)",
            (false, true) => " (bearer tokens)",
            (false, false) => "",
        }
    }

    /// The CA, the tokens, and lines to paste into a shell.
    fn print(&self, endpoints: &[String]) {
        if let Some(tls) = &self.tls {
            println!("CA certificate: {}", tls.ca.display());
        }
        if let Some(tokens_file) = &self.tokens_file {
            println!(
                "tokens (shown only now; {} keeps only their SHA-256):",
                tokens_file.display()
            );
            for t in &self.tokens {
                let prefixes: Vec<String> = t.prefixes.iter().map(|p| format!("{p:?}")).collect();
                let quota = t
                    .max_leases
                    .map_or(String::new(), |m| format!("  max_leases={m}"));
                println!(
                    "  {:<7} role={:<6} prefixes=[{}]{quota}  {}",
                    t.name,
                    t.role,
                    prefixes.join(", "),
                    t.token
                );
            }
        }
        println!("export LEASEHOLD_ENDPOINTS={}", endpoints.join(","));
        let mut curl = String::from("curl");
        if let Some(tls) = &self.tls {
            let ca = shell_quote(&tls.ca.display().to_string());
            println!("export LEASEHOLD_CACERT={ca}");
            curl.push_str(&format!(" --cacert {ca}"));
        }
        if let Some(admin) = self.tokens.iter().find(|t| t.name == "admin") {
            println!("# the admin token; an app confined to demo/ would use demo's");
            println!("export LEASEHOLD_AUTH_TOKEN={}", admin.token);
            curl.push_str(&format!(" -H \"Authorization: Bearer {}\"", admin.token));
        }
        if self.tls.is_some() || self.tokens_file.is_some() {
            if let Some(first) = endpoints.first() {
                println!("{curl} {first}/v1/cluster");
            }
        }
    }
}

/// The CA and node certificates, made by the node crate's generator.
fn make_local_certs(dir: &Path, nodes: u64) -> Result<LocalTls, String> {
    let certs = leasehold_node::generate_local_certs(dir, nodes)?;
    Ok(LocalTls {
        ca: certs.ca,
        nodes: certs.nodes,
    })
}

/// A new directory only this user can read, under the system's temporary directory.
fn new_private_temp_dir() -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "leasehold-local-cluster-{}-{nanos:x}",
        std::process::id()
    ));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    // `create`, not `create_all`: an existing directory of that name is not ours.
    builder
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// A new random bearer token: `lh_` and 48 hex digits.
fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; LOCAL_TOKEN_BYTES];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "cannot get random bytes for the tokens".to_string())?;
    Ok(format!("lh_{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tokens file (SPEC §5 "Auth"): one `[[token]]` table per principal, with the
/// SHA-256 of its token, never the token.
fn tokens_file_text(tokens: &[LocalToken]) -> String {
    use sha2::{Digest, Sha256};
    let mut text = String::from(
        "# Written by `leasehold local-cluster --auth`, which printed the tokens once.\n",
    );
    for t in tokens {
        // Names, roles and prefixes are the fixed ASCII strings of LOCAL_PRINCIPALS, so
        // Rust's quoting is TOML's.
        let prefixes: Vec<String> = t.prefixes.iter().map(|p| format!("{p:?}")).collect();
        text.push_str(&format!(
            "\n[[token]]\nname = {:?}\nsha256 = \"{}\"\nrole = {:?}\nprefixes = [{}]\n",
            t.name,
            hex(&Sha256::digest(t.token.as_bytes())),
            t.role,
            prefixes.join(", ")
        ));
        if let Some(m) = t.max_leases {
            text.push_str(&format!("max_leases = {m}\n"));
        }
    }
    text
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:,=@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Wait (bounded) until every node answers `/readyz`, so the printed endpoints work.
/// `ca`: the CA to trust for `https://` endpoints (`/readyz` needs no token). A node
/// that is slow is reported and waited for no longer; one that exited is an error.
async fn wait_ready(
    endpoints: &[String],
    ca: Option<&Path>,
    children: &mut [tokio::process::Child],
) -> Result<(), String> {
    // Loopback never goes through a proxy, whatever HTTPS_PROXY says.
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2));
    if let Some(ca) = ca {
        let cert = std::fs::read(ca)
            .map_err(|e| e.to_string())
            .and_then(|pem| reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string()));
        match cert {
            Ok(cert) => builder = builder.add_root_certificate(cert),
            Err(e) => return Err(format!("cannot use the CA {}: {e}", ca.display())),
        }
    }
    let client = match builder.build() {
        Ok(client) => client,
        Err(e) => {
            return Err(format!(
                "cannot make an HTTP client to wait for the nodes: {e}"
            ))
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for (i, endpoint) in endpoints.iter().enumerate() {
        let url = format!("{endpoint}/readyz");
        loop {
            if let Ok(resp) = client.get(&url).send().await {
                if resp.status().is_success() {
                    break;
                }
            }
            if let Some(Ok(Some(status))) = children.get_mut(i).map(|c| c.try_wait()) {
                return Err(format!(
                    "node {} exited ({status}) before it was ready; see its log above",
                    i + 1
                ));
            }
            if tokio::time::Instant::now() > deadline {
                eprintln!("leasehold: {endpoint} is not ready yet; check its log above");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use leasehold_api::auth::{Role, TokenTable};

    use super::*;

    fn local_tokens() -> Vec<LocalToken> {
        LOCAL_PRINCIPALS
            .iter()
            .map(|&(name, role, prefixes, max_leases)| LocalToken {
                name,
                role,
                prefixes,
                max_leases,
                token: new_token().unwrap(),
            })
            .collect()
    }

    #[test]
    fn the_tokens_file_parses_and_finds_each_principal_by_its_token() {
        let tokens = local_tokens();
        let text = tokens_file_text(&tokens);
        for t in &tokens {
            assert!(!text.contains(&t.token), "the file holds a token:\n{text}");
        }
        let table = TokenTable::parse(&text).unwrap();
        assert_eq!(table.len(), 3);
        let admin = table.lookup(&tokens[0].token).unwrap();
        assert_eq!((admin.name.as_str(), admin.role), ("admin", Role::Admin));
        let demo = table.lookup(&tokens[1].token).unwrap();
        assert_eq!((demo.name.as_str(), demo.role), ("demo", Role::Write));
        assert_eq!(demo.prefixes, ["demo/"]);
        assert_eq!(demo.max_leases, Some(1000));
        assert!(demo.may_touch("demo/job") && !demo.may_touch("other/job"));
        let viewer = table.lookup(&tokens[2].token).unwrap();
        assert_eq!((viewer.name.as_str(), viewer.role), ("viewer", Role::Read));
        assert_eq!(viewer.prefixes, [""]);
        assert!(table.lookup("lh_not-a-token").is_none());
    }

    #[test]
    fn tokens_are_new_each_time() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 2 * LOCAL_TOKEN_BYTES);
        assert!(a.starts_with("lh_") && a[3..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn credential_flags_parse_everywhere_and_the_token_is_not_shown() {
        let cli = Cli::try_parse_from([
            "leasehold",
            "--token",
            "sekrit-token",
            "--cacert",
            "/ca.crt",
            "lock",
            "some/key",
            "--cert",
            "/c.crt",
            "--key",
            "/c.key",
            "--",
            "true",
        ])
        .unwrap();
        assert_eq!(cli.client.token.as_deref(), Some("sekrit-token"));
        assert_eq!(cli.client.cacert.as_deref(), Some(Path::new("/ca.crt")));
        assert_eq!(cli.client.cert.as_deref(), Some(Path::new("/c.crt")));
        assert_eq!(cli.client.key.as_deref(), Some(Path::new("/c.key")));
        assert!(matches!(&cli.command, Command::Lock(args) if args.key == "some/key"));
        assert!(!format!("{cli:?}").contains("sekrit-token"));
        let cli = Cli::try_parse_from(["leasehold", "locks", "get", "k", "--key", "/k"]).unwrap();
        assert_eq!(cli.client.key.as_deref(), Some(Path::new("/k")));
    }

    #[test]
    fn printed_paths_are_one_shell_word() {
        assert_eq!(shell_quote("/tmp/x/ca.crt"), "/tmp/x/ca.crt");
        assert_eq!(shell_quote("/tmp/my dir/ca.crt"), "'/tmp/my dir/ca.crt'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    /// Every subcommand's flags are well formed (clap checks a subcommand only when it
    /// is parsed, so a clash such as a second `--token` would otherwise surface at run time).
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
