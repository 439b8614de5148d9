//! `Node`: the composition root. Wires config, storage, Raft, the actors and both listeners.

use openraft::async_runtime::WatchReceiver;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use leasehold_config::Config;
use leasehold_raft::log_store::{MemLogStore, SledLogStore};
use leasehold_raft::sm_store::{SharedState, StateMachineStore};
use leasehold_raft::typ::{NodeId, PeerNode, Raft};
use openraft::SnapshotPolicy;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument, Span};

use crate::clock::Clock;
use crate::core::Core;
use crate::error::CoreError;
use crate::overload::listener::CappedTcp;
use crate::peer::network::RaftTransport;
use crate::peer::{Faults, ForwardRequest, MembershipChange, PeerClient};
use crate::service::NodeService;
use crate::tls::{Material, Tls, TlsError, TlsListener};
use leasehold_api::auth::Authenticator;
use leasehold_api::LeaseService;

/// How long shutdown waits for open requests (long-polls) before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] leasehold_config::ConfigError),
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot open the data directory {path}: {message}. If this directory is damaged or \
         was lost (not merely unwritable, full or locked by another process), start this node with `leasehold serve --rejoin` and the same settings: it \
         moves the directory aside and rejoins the cluster as an empty member caught up from \
         the leader (docs/faults.md, \"Disk\")"
    )]
    Storage { path: String, message: String },
    #[error("cannot rejoin: {0}")]
    Rejoin(String),
    #[error("cannot read the cluster secret file {path}: {source}")]
    Secret {
        path: String,
        source: std::io::Error,
    },
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("{0}")]
    Auth(String),
    #[error("invalid TLS material: {0}")]
    Tls(#[from] TlsError),
}

/// Already-bound listeners, for callers (tests, `local-cluster`) that pick ports first.
pub struct Listeners {
    pub client: TcpListener,
    pub peer: TcpListener,
}

/// A running leasehold node.
pub struct Node {
    core: Arc<Core>,
    service: NodeService,
    /// The bearer tokens in force, when `[auth]` is set.
    auth: Option<Arc<Authenticator>>,
    /// The certificates in force, when `[tls]` is set.
    tls: Option<Arc<Tls>>,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
    servers: Vec<JoinHandle<()>>,
    /// Where the Raft log lives (`None`: in memory).
    data_dir: Option<std::path::PathBuf>,
}

/// How much a probe of a failed data directory writes (and syncs) before the node is
/// restarted on it: enough for sled to take its next segments.
const PROBE_BYTES: usize = 1 << 20;
/// How often a failed data directory is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

impl Node {
    /// Start a node, binding the addresses in `config`.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let client = TcpListener::bind(config.client_addr)
            .await
            .map_err(|source| StartError::Bind {
                what: "client_addr",
                addr: config.client_addr,
                source,
            })?;
        let peer = TcpListener::bind(config.peer_addr)
            .await
            .map_err(|source| StartError::Bind {
                what: "peer_addr",
                addr: config.peer_addr,
                source,
            })?;
        Self::start_on(config, Listeners { client, peer }).await
    }

    /// Start a node on listeners the caller bound (their addresses win over the config's).
    ///
    /// Everything the node does runs in a `node{id}` span: its actors, its listeners and
    /// every request they serve, so each log line names the node.
    pub async fn start_on(config: Config, listeners: Listeners) -> Result<Node, StartError> {
        let span = tracing::info_span!("node", id = config.node_id);
        Self::start_in_span(config, listeners, span.clone())
            .instrument(span)
            .await
    }

    async fn start_in_span(
        config: Config,
        listeners: Listeners,
        span: Span,
    ) -> Result<Node, StartError> {
        config.validate()?;
        let client_addr = local_addr(&listeners.client, "client_addr", config.client_addr)?;
        let peer_addr = local_addr(&listeners.peer, "peer_addr", config.peer_addr)?;
        let secret = read_secret(&config)?;
        let tls = match config.tls.enabled() {
            true => Some(Arc::new(Tls::load(&config.tls)?)),
            false => None,
        };
        if tls.is_none() && secret.is_none() {
            warn!(
                %peer_addr,
                "the peer port is unauthenticated (neither [tls] nor cluster.secret_file is set): \
                 anyone who can reach it can vote, append to the log and read every key; \
                 keep it on a private network or set one of them"
            );
        }

        let raft_config = openraft::Config {
            cluster_name: "leasehold".into(),
            heartbeat_interval: config.raft.heartbeat_interval_ms,
            election_timeout_min: config.raft.election_timeout_min_ms,
            election_timeout_max: config.raft.election_timeout_max_ms,
            // Triggered by `crate::snapshots`, at indices staggered by node id.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 1000,
            // A node that led before it stopped runs an election like any other, rather
            // than resuming as leader of its old term with a committed index only as fresh
            // as sled flushed it (openraft 0.10 restores it by default; 0.9 did so always,
            // which the confirmer's term floor had to correct for reads).
            enable_leader_restore: Some(false),
            // A candidate first asks whether it could win, so a node back from a partition
            // or a restart does not raise the term and depose a healthy leader.
            enable_pre_vote: Some(true),
            // A follower whose newest entries were lost below the watermark's reach (a
            // torn final write) is re-replicated from scratch instead of stopping the
            // leader: 0.9's `loosen-follower-log-revert`, which leasehold always ran with.
            allow_log_reversion: Some(true),
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| StartError::Raft(e.to_string()))?,
        );
        let faults = Arc::new(Faults::default());
        let peers = PeerClient::new(
            secret.clone(),
            faults.clone(),
            config.cluster.peer_proxy,
            tls.as_ref().map(|t| t.current().peer_client.clone()),
        )
        .with_frame_bytes(config.raft.peer_frame_bytes);
        let network = RaftTransport::new(peers.clone());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let snapshot_observer = {
            let metrics = metrics.clone();
            leasehold_raft::Observer::new(move |d| metrics.snapshot.observe(d.as_secs_f64()))
        };
        let mut incarnation = None;
        let (raft, shared) = match &config.data_dir {
            Some(dir) => {
                let storage_err = |message: String| StartError::Storage {
                    path: dir.display().to_string(),
                    message,
                };
                std::fs::create_dir_all(dir).map_err(|e| storage_err(e.to_string()))?;
                let db = sled::Config::new()
                    .path(dir.join("raft"))
                    .cache_capacity(config.raft.log_cache_mib * 1024 * 1024)
                    .open()
                    .map_err(|e| storage_err(e.to_string()))?;
                let fsync_observer = {
                    let metrics = metrics.clone();
                    leasehold_raft::Observer::new(move |d| metrics.fsync.observe(d.as_secs_f64()))
                };
                let group_observer = {
                    let metrics = metrics.clone();
                    leasehold_raft::log_store::GroupObserver(Arc::new(move |n| {
                        metrics.appends_per_fsync.observe(n as f64)
                    }))
                };
                let log_store = SledLogStore::open_checked(&db, &dir.join("log.watermark"))
                    .map_err(storage_err)?
                    .with_fsync_observer(fsync_observer)
                    .with_group_observer(group_observer);
                let pristine = log_store.is_pristine().map_err(storage_err)?;
                incarnation =
                    Some(crate::incarnation::load_or_create(dir, pristine).map_err(storage_err)?);
                if pristine && !config.cluster.members.is_empty() {
                    crate::incarnation::refuse_if_wiped(&peers, &config, dir).await?;
                }
                let (sm_store, shared) = StateMachineStore::new(Some(db)).map_err(|e| {
                    storage_err(format!(
                        "the stored snapshot (tree `snapshot` in {}) cannot be read: {e}",
                        dir.join("raft").display()
                    ))
                })?;
                let sm_store = sm_store.with_snapshot_observer(snapshot_observer);
                let raft = Raft::new(config.node_id, raft_config, network, log_store, sm_store)
                    .await
                    .map_err(|e| StartError::Raft(e.to_string()))?;
                (raft, shared)
            }
            None => {
                let log_store = MemLogStore::default();
                let (sm_store, shared) =
                    StateMachineStore::new(None).map_err(|e| StartError::Raft(e.to_string()))?;
                let sm_store = sm_store.with_snapshot_observer(snapshot_observer);
                let raft = Raft::new(config.node_id, raft_config, network, log_store, sm_store)
                    .await
                    .map_err(|e| StartError::Raft(e.to_string()))?;
                (raft, shared)
            }
        };

        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let core = Core::start(
            &config,
            crate::core::CoreParts {
                raft,
                shared,
                peers,
                clock: Clock::System,
                metrics,
            },
            &tracker,
            &cancel,
        );
        crate::snapshots::spawn_trigger(core.clone(), config.raft.snapshot_every_logs);
        if let Some(incarnation) = incarnation {
            crate::incarnation::spawn_recorder(core.clone(), incarnation, &tracker, &cancel);
        }

        let mut servers = Vec::new();
        let peer_router = in_span(crate::peer::server::router(core.clone(), secret), &span);
        // The peer listener is never capped: shedding Raft traffic would shed the cluster.
        servers.push(serve(
            CappedTcp::new(listeners.peer, None, false),
            tls.clone()
                .map(|t| (t, peer_listener_config as ServerConfigOf)),
            peer_router,
            cancel.clone(),
        )?);

        let service = NodeService::new(core.clone(), config.limits.clone());
        let auth = match &config.auth.tokens_file {
            Some(path) => Some(Arc::new(
                Authenticator::from_file(path).map_err(StartError::Auth)?,
            )),
            None => None,
        };
        let router_auth = auth.as_ref().map(|authenticator| {
            let service = service.clone();
            leasehold_api::router::Auth {
                authenticator: authenticator.clone(),
                scope: Arc::new(move |principal| {
                    Arc::new(service.for_principal(principal)) as Arc<dyn LeaseService>
                }),
            }
        });
        let overload = core.overload().clone();
        let client_router = in_span(
            leasehold_api::router::router_with_auth(
                Arc::new(service.clone()),
                service.limits().clone(),
                router_auth,
            ),
            &span,
        )
        .layer(axum::middleware::from_fn_with_state(
            overload.clone(),
            crate::overload::admit,
        ));
        crate::overload::raise_fd_limit(&config.limits);
        let connections = Some(overload.connections.clone());
        servers.push(serve(
            CappedTcp::new(listeners.client, connections, tls.is_none()),
            tls.clone()
                .map(|t| (t, client_listener_config as ServerConfigOf)),
            client_router,
            cancel.clone(),
        )?);

        let node = Node {
            core,
            service,
            auth,
            tls,
            client_addr,
            peer_addr,
            cancel,
            tracker,
            servers,
            data_dir: config.data_dir.clone(),
        };
        if let Err(e) = node.bootstrap(&config, client_addr, peer_addr).await {
            node.shutdown().await;
            return Err(e);
        }
        info!(
            node_id = config.node_id,
            %client_addr,
            %peer_addr,
            data_dir = ?config.data_dir,
            tls = config.tls.enabled(),
            auth = config.auth.tokens_file.is_some(),
            "leasehold node started"
        );
        Ok(node)
    }

    /// Initialize the cluster on empty storage only, and never a node that was wiped
    /// while the cluster it belonged to lives on.
    async fn bootstrap(
        &self,
        config: &Config,
        client_addr: SocketAddr,
        peer_addr: SocketAddr,
    ) -> Result<(), StartError> {
        let raft = self.core.raft();
        if raft.is_initialized().await.unwrap_or(true) {
            return Ok(());
        }
        let members: std::collections::BTreeMap<NodeId, PeerNode> =
            if config.cluster.members.is_empty() {
                // A lone node (the default): a cluster of one.
                [(
                    config.node_id,
                    PeerNode {
                        peer_addr: config.advertised_peer_addr(peer_addr),
                        client_addr: config.advertised_client_addr(client_addr),
                    },
                )]
                .into()
            } else {
                // Every member must propose the identical membership, so only peer addresses.
                for member in &config.cluster.members {
                    if member.id == config.node_id {
                        continue;
                    }
                    let peer_addr = member.peer_addr.to_string();
                    let asked = self
                        .core
                        .peers()
                        .is_initialized(&peer_addr, Duration::from_millis(500))
                        .await;
                    if asked {
                        // Empty storage in a live cluster: a node about to be added, or a
                        // member whose data was lost (`--rejoin` is the safe way back for
                        // that one; started plainly it is caught up as it is).
                        warn!(
                            peer = member.id,
                            "storage is empty but the cluster already exists: not bootstrapping; \
                         this node waits to be caught up by the leader"
                        );
                        return Ok(());
                    }
                }
                config
                    .cluster
                    .members
                    .iter()
                    .map(|m| {
                        (
                            m.id,
                            PeerNode {
                                peer_addr: m.peer_addr.to_string(),
                                client_addr: String::new(),
                            },
                        )
                    })
                    .collect()
            };
        match raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Another member's initialization reached us first: fine.
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => Ok(()),
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    /// Re-read what SIGHUP re-reads: the TLS certificates and keys (new connections use
    /// them; the peer client too) and the tokens file. Whatever is bad keeps what was in
    /// force, and the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(material) => {
                    self.core.peers().set_tls(material.peer_client.clone());
                    info!("reloaded the TLS certificates");
                }
                Err(e) => errors.push(format!("kept the TLS certificates in force: {e}")),
            }
        }
        match self.reload_tokens() {
            Ok(Some(n)) => info!(principals = n, "reloaded the tokens file"),
            Ok(None) => {}
            Err(e) => errors.push(format!("kept the tokens in force: {e}")),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// The URL of the client listener (`https://` with `[tls]`).
    pub fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr)
    }

    /// Re-read `auth.tokens_file` (SIGHUP): the new tokens serve every later request. A
    /// bad file keeps the tokens in force and the error says why. `Ok(None)` without auth.
    pub fn reload_tokens(&self) -> Result<Option<usize>, String> {
        match &self.auth {
            Some(auth) => auth.reload().map(Some),
            None => Ok(None),
        }
    }

    /// The service this node offers (the same trait the HTTP client implements).
    pub fn service(&self) -> NodeService {
        self.service.clone()
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn node_id(&self) -> NodeId {
        self.core.node_id()
    }

    pub fn raft(&self) -> &Raft {
        self.core.raft()
    }

    /// The tracker of every task this node runs (its actors and background clean-ups):
    /// for diagnostics and tests. After [`Node::shutdown`] returns it is empty.
    pub fn tasks(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// The fault-injection switch of this node's peer links (tests cut links with it).
    pub fn faults(&self) -> &Arc<Faults> {
        self.core.peers().faults()
    }

    pub fn shared_state(&self) -> &Arc<SharedState> {
        self.core.shared()
    }

    /// Wait until some node leads and this node has applied the leader's first entry.
    pub async fn wait_for_leader(
        &self,
        timeout: Duration,
    ) -> Result<NodeId, crate::error::CoreError> {
        let mut metrics = self.core.raft().metrics();
        let wait = async move {
            loop {
                if let Some(leader) = metrics.borrow_watched().current_leader {
                    return Ok(leader);
                }
                metrics.changed().await?;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(leader)) => Ok(leader),
            Ok(Err(openraft::async_runtime::RecvError { .. })) => {
                Err(crate::error::CoreError::ShuttingDown)
            }
            Err(_) => Err(crate::error::CoreError::Timeout),
        }
    }

    /// Set when this node's Raft core stopped on a storage error (a full or failing disk),
    /// with a message naming the data directory and the error. From then on the node
    /// answers 503 naming it, `/readyz` is not ready, and the node takes no part in the
    /// cluster (it neither votes nor acknowledges appends) until it is restarted.
    pub fn storage_fault(&self) -> Option<String> {
        self.core.storage_fault().borrow().clone()
    }

    /// Resolves once this node's storage failed and a probe (write and fsync
    /// `PROBE_BYTES` in its data directory, every `PROBE_EVERY`) has since succeeded:
    /// the moment to restart it, [`shutdown`](Node::shutdown) then [`Node::start`] on the
    /// same config, so it rejoins from its data directory and catches up from the leader.
    /// `leasehold serve` does exactly that. Never resolves for an in-memory node.
    pub async fn storage_writable_again(&self) {
        let mut fault = self.core.storage_fault();
        if fault.wait_for(Option::is_some).await.is_err() {
            return std::future::pending().await;
        }
        let Some(dir) = self.data_dir.clone() else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let dir = dir.clone();
            let probe = tokio::task::spawn_blocking(move || probe_writable(&dir)).await;
            match probe {
                Ok(Ok(())) => {
                    info!("storage probe: the data directory is writable again");
                    return;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "storage probe: still failing"),
                Err(e) => warn!(error = %e, "storage probe task failed"),
            }
        }
    }

    /// Stop serving, stop Raft and every task; returns when all of them have ended.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Err(e) = self.core.raft().shutdown().await {
            warn!(error = %e, "raft did not shut down cleanly");
        }
        // The streams to the peers carry nothing more: the peers see them close.
        self.core.peers().close_streams("the node shut down");
        self.tracker.close();
        let aborts: Vec<_> = self.servers.iter().map(|s| s.abort_handle()).collect();
        let servers = futures::future::join_all(self.servers);
        if tokio::time::timeout(SHUTDOWN_GRACE, servers).await.is_err() {
            warn!("shutdown grace passed with requests still open; dropping them");
            // Close the listeners now, so the addresses can be bound again at once.
            for abort in &aborts {
                abort.abort();
            }
        }
        // Every tracked task ends on the cancellation (or fails at once now that Raft has
        // stopped); the bound only keeps a bug from hanging shutdown.
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                running = self.tracker.len(),
                "tasks still running after shutdown; this is a bug"
            );
        }
    }
}

fn read_secret(config: &Config) -> Result<Option<Arc<String>>, StartError> {
    let Some(path) = &config.cluster.secret_file else {
        return Ok(None);
    };
    let secret = std::fs::read_to_string(path).map_err(|source| StartError::Secret {
        path: path.display().to_string(),
        source,
    })?;
    let secret = secret.trim();
    if secret.is_empty() {
        // An empty secret would let through any request that sends an empty header.
        return Err(StartError::Secret {
            path: path.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file is empty (or only whitespace); put the cluster's secret in it",
            ),
        });
    }
    Ok(Some(Arc::new(secret.to_string())))
}

/// Which server config of the TLS material a listener serves.
type ServerConfigOf = fn(&Material) -> Arc<rustls::ServerConfig>;

/// Write and sync [`PROBE_BYTES`] in `dir`, then remove them.
fn probe_writable(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".leasehold-probe");
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&vec![0u8; PROBE_BYTES])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

mod listen;
mod rejoin;

use self::listen::{client_listener_config, in_span, local_addr, peer_listener_config, serve};
