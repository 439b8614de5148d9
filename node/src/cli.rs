//! Command-line interface (SPEC §4).
//!
//! The arguments and their dispatch are here; `serve` and `local_cluster` run those two
//! commands (the client commands are in `commands`).

use std::path::PathBuf;

use clap::{Arg, ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use leasehold_config::{Config, LogFormat, KEYS};
use tracing_subscriber::EnvFilter;

use crate::commands;

mod local_cluster;
mod serve;

use self::local_cluster::local_cluster;
use self::serve::serve;

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
    /// (`DIR.rejoin-<time>`), has the leader remove this node and add it back as a learner,
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

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

    /// Every subcommand's flags are well formed (clap checks a subcommand only when it
    /// is parsed, so a clash such as a second `--token` would otherwise surface at run time).
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
