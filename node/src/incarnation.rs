//! A data directory's identity, and how a wiped member is told from a new one.
//!
//! A member whose data directory was wiped and that is started plainly (without
//! `--rejoin`) looks exactly like a node about to be added: empty storage, a cluster that
//! exists. Caught up as a voter with an empty log, it could, before it catches up, grant a
//! vote its lost self already gave in that term, or help elect a leader that lacks
//! committed entries (openraft's FAQ, "Can I wipe out the data of ONE node").
//!
//! So every durable directory gets an identity, a random number drawn when the directory
//! is new (`DIR/incarnation`), and once a member has caught up it records its identity in
//! the replicated state (`Command::RecordIncarnation`). A member that starts with empty
//! storage asks the others first: if any of them counts it as a member with a recorded
//! identity, this directory is not the one the cluster knew, and the start is refused
//! with the way out (`--rejoin`, which has the leader remove the node first, so the
//! question is not asked of a member). A new cluster's members (nothing recorded yet) and
//! a node being added (not a member yet) start as before.
//!
//! Not covered: a member wiped before it ever recorded its identity (it crashed within a
//! moment of first catching up), and a wiped member that starts while no other member
//! answers (it cannot ask; it starts and logs a warning).

use openraft::async_runtime::WatchReceiver;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use leasehold_config::Config;
use leasehold_raft::command::{Command, Proposal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::core::Core;
use crate::node::StartError;
use crate::peer::{ForwardRequest, ForwardResponse, PeerClient};

const FILE: &str = "incarnation";
const HEADER: &str = "leasehold-incarnation v1";

/// This directory's identity: a new one for a pristine store (a new or wiped directory),
/// else the one on file (made now for a directory from before identities).
pub(crate) fn load_or_create(dir: &Path, pristine: bool) -> Result<u64, String> {
    let path = dir.join(FILE);
    if !pristine {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return text
                    .trim()
                    .strip_prefix(HEADER)
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| {
                        format!(
                            "{} is damaged (expected `{HEADER} N`, found {:?})",
                            path.display(),
                            text.chars().take(60).collect::<String>()
                        )
                    });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    // A randomly seeded hasher: different in every process, no extra dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    let incarnation = hasher.finish();
    write(&path, incarnation).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(incarnation)
}

fn write(path: &Path, incarnation: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{HEADER} {incarnation}")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// For a member starting with empty storage: refuse if another member counts it as a
/// member that recorded a data directory (so this one is that directory, wiped).
pub(crate) async fn refuse_if_wiped(
    peers: &PeerClient,
    config: &Config,
    dir: &Path,
) -> Result<(), StartError> {
    let me = config.node_id;
    let asks = config
        .cluster
        .members
        .iter()
        .filter(|m| m.id != me)
        .map(|m| {
            let addr = m.peer_addr.to_string();
            async move {
                let asked = peers
                    .forward(
                        &addr,
                        ForwardRequest::MemberRecord(me),
                        Duration::from_secs(1),
                    )
                    .await;
                (m.id, asked)
            }
        });
    let mut answered = 0;
    for (peer, asked) in futures::future::join_all(asks).await {
        let Ok(Ok(ForwardResponse::MemberRecord {
            member,
            incarnation,
        })) = asked
        else {
            continue;
        };
        answered += 1;
        if member && incarnation.is_some() {
            return Err(StartError::Storage {
                path: dir.display().to_string(),
                message: format!(
                    "it is empty, but node {peer} counts node {me} as a member that held data: \
                     this node's data was lost (a wiped or replaced directory). Started empty \
                     it could vote twice in a term or help elect a leader without committed \
                     entries"
                ),
            });
        }
    }
    if answered == 0 && config.cluster.members.len() > 1 {
        warn!(
            "storage is empty and no other member answered: cannot tell a new member from a \
             wiped one; starting (use --rejoin if this node's data was lost)"
        );
    }
    Ok(())
}

/// Record this directory's identity in the replicated state once this member has caught
/// up (a linearizable barrier passed, so it has applied what the leader committed), and
/// whenever the state holds another identity for it (after `--rejoin`, a restore, or a
/// directory from before identities). Retries every second until done or cancelled.
pub(crate) fn spawn_recorder(
    core: Arc<Core>,
    incarnation: u64,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let cancel = cancel.clone();
    let me = core.node_id();
    tracker.spawn(
        async move {
            loop {
                if core.read(|s| s.incarnation(me)) == Some(incarnation) {
                    return;
                }
                let member = core
                    .raft()
                    .metrics()
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .get_node(&me)
                    .is_some();
                if member && core.read_barrier().await.is_ok() {
                    let proposal = Proposal {
                        request_id: None,
                        caller: None,
                        command: Command::RecordIncarnation {
                            node_id: me,
                            incarnation,
                        },
                    };
                    if core.write(proposal).await.is_ok() {
                        info!(
                            incarnation,
                            "recorded this data directory's identity in the cluster"
                        );
                        return;
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        .in_current_span(),
    );
}
