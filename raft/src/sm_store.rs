//! openraft's state-machine storage around [`LeaseState`].
//!
//! The applied state lives in [`SharedState`], which the node reads directly (under a
//! short read lock, never across an `.await`) and subscribes to: every apply bumps a watch
//! of the last applied index, which wakes long-polls and blocking acquires, and leaves
//! [`StateEvent`]s for the lease actor.
//!
//! Snapshots are a versioned envelope (`SnapshotEnvelope`) around [`LeaseState::encode`].
//! With a sled database, every built or installed snapshot is also written there (and
//! flushed), and restored on open, so a restarted node does not depend on purged logs.
//! A persisted snapshot that cannot be decoded is an error, never "no snapshot".

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::command::BatchResult;
use crate::state::{LeaseState, StateEvent};
use crate::typ::{
    LogId, Membership, Snapshot, SnapshotData, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

/// Version of the snapshot envelope.
const SNAPSHOT_FORMAT_VERSION: u8 = 1;
const SNAPSHOT_TREE: &str = "snapshot";
const SNAPSHOT_KEY: &[u8] = b"current";

/// The applied state: the lease state plus what openraft needs to know about it.
#[derive(Debug, Default)]
struct Applied {
    lease: LeaseState,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// The state machine as the rest of the node sees it.
pub struct SharedState {
    applied: RwLock<Applied>,
    applied_tx: watch::Sender<u64>,
    events: Mutex<Vec<StateEvent>>,
    generation: AtomicU64,
}

impl SharedState {
    fn new() -> Self {
        let (applied_tx, _) = watch::channel(0);
        SharedState {
            applied: RwLock::new(Applied::default()),
            applied_tx,
            events: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// Read the applied lease state. Keep `f` short: applies wait for it.
    pub fn read<R>(&self, f: impl FnOnce(&LeaseState) -> R) -> R {
        // Poisoning means a panic while applying; the state is then not trustworthy.
        let applied = self.applied.read().expect("state machine lock poisoned");
        f(&applied.lease)
    }

    /// A watch of the last applied log index; it changes after every apply.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied_tx.borrow()
    }

    /// Take the events left by applies since the last call.
    pub fn drain_events(&self) -> Vec<StateEvent> {
        std::mem::take(&mut *self.events.lock().expect("event lock poisoned"))
    }

    /// Incremented whenever a snapshot replaces the state wholesale.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotEnvelope {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The last snapshot, as openraft hands it to a follower that is too far behind.
///
/// A durable node keeps only its meta in memory and reads the bytes back from disk when
/// asked (rarely: only for a lagging or new member). Holding them would cost every node
/// the snapshot's size again, ~140 B per lease (docs/performance.md). An in-memory node
/// has nowhere else to keep them.
#[derive(Debug, Clone)]
enum CurrentSnapshot {
    InMemory(StoredSnapshot),
    OnDisk(SnapshotMeta),
}

type SharedCurrent = Arc<Mutex<Option<CurrentSnapshot>>>;

/// Remember `stored` as the current snapshot: its bytes only if there is no disk.
fn set_current(current: &SharedCurrent, stored: StoredSnapshot, durable: bool) {
    let entry = if durable {
        CurrentSnapshot::OnDisk(stored.meta)
    } else {
        CurrentSnapshot::InMemory(stored)
    };
    *current.lock().expect("snapshot lock poisoned") = Some(entry);
}

fn read_persisted(tree: &sled::Tree) -> Result<Option<StoredSnapshot>, StorageError> {
    let Some(bytes) = tree
        .get(SNAPSHOT_KEY)
        .map_err(|e| sm_err(ErrorVerb::Read, e))?
    else {
        return Ok(None);
    };
    let (stored, _): (StoredSnapshot, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
            .map_err(|e| sm_err(ErrorVerb::Read, e))?;
    Ok(Some(stored))
}

fn encode_envelope(envelope: &SnapshotEnvelope) -> Result<Vec<u8>, StorageError> {
    let mut out = vec![SNAPSHOT_FORMAT_VERSION];
    let body = bincode::serde::encode_to_vec(envelope, bincode::config::standard())
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
    out.extend(body);
    Ok(out)
}

fn decode_envelope(bytes: &[u8]) -> Result<SnapshotEnvelope, StorageError> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| snapshot_err(ErrorVerb::Read, "snapshot is empty"))?;
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(snapshot_err(
            ErrorVerb::Read,
            &format!("snapshot format version {version} is not supported"),
        ));
    }
    let (envelope, _) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| sm_err(ErrorVerb::Read, e))?;
    Ok(envelope)
}

/// How a state machine or snapshot error is worded: what was being done, and why it failed.
#[derive(Clone, Copy)]
enum ErrorVerb {
    Read,
    Write,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    let doing = match verb {
        ErrorVerb::Read => "reading the state machine",
        ErrorVerb::Write => "writing the state machine",
    };
    std::io::Error::other(format!("{doing}: {e}"))
}

fn snapshot_err(verb: ErrorVerb, message: &str) -> StorageError {
    let doing = match verb {
        ErrorVerb::Read => "reading a snapshot",
        ErrorVerb::Write => "writing a snapshot",
    };
    std::io::Error::other(format!("{doing}: {message}"))
}

/// openraft's handle on the state machine.
pub struct StateMachineStore {
    shared: Arc<SharedState>,
    current: SharedCurrent,
    persist: Option<crate::closing::Shared<sled::Tree>>,
    snapshot_seq: Arc<AtomicU64>,
    snapshot_observer: Option<crate::Observer>,
}

impl StateMachineStore {
    /// Open the state machine; with a sled database, restore its last persisted snapshot.
    pub fn new(db: Option<sled::Db>) -> Result<(Self, Arc<SharedState>), StorageError> {
        let shared = Arc::new(SharedState::new());
        let persist = match db {
            // Closed off the async runtime when the last clone goes (`crate::closing`).
            Some(db) => Some(crate::closing::shared(
                db.open_tree(SNAPSHOT_TREE)
                    .map_err(|e| sm_err(ErrorVerb::Read, e))?,
            )),
            None => None,
        };
        let current: SharedCurrent = Arc::new(Mutex::new(None));
        if let Some(tree) = &persist {
            if let Some(stored) = read_persisted(tree)? {
                install(&shared, &stored.data)?;
                set_current(&current, stored, true);
            }
        }
        let store = StateMachineStore {
            shared: shared.clone(),
            current,
            persist,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            snapshot_observer: None,
        };
        Ok((store, shared))
    }

    /// Call `observer` with the duration of every snapshot build.
    pub fn with_snapshot_observer(mut self, observer: crate::Observer) -> Self {
        self.snapshot_observer = Some(observer);
        self
    }
}

/// Seed an empty database with `state` as the snapshot at `last`, with `membership` as
/// the cluster's (a restore from a backup). The node that opens it starts from there.
pub fn seed_snapshot(
    db: &sled::Db,
    last: LogId,
    membership: Membership,
    state: &LeaseState,
) -> Result<(), String> {
    let tree = db.open_tree(SNAPSHOT_TREE).map_err(|e| e.to_string())?;
    if read_persisted(&tree).map_err(|e| e.to_string())?.is_some() {
        return Err("a snapshot is already stored".into());
    }
    let membership = StoredMembership::new(Some(last), membership);
    let data = encode_envelope(&SnapshotEnvelope {
        last_applied: Some(last),
        membership: membership.clone(),
        state: state.encode(),
    })
    .map_err(|e| e.to_string())?;
    let stored = StoredSnapshot {
        meta: SnapshotMeta {
            last_log_id: Some(last),
            last_membership: membership,
        },
        data,
    };
    persist_snapshot(&tree, &stored).map_err(|e| e.to_string())
}

/// Replace the shared state with a snapshot's.
fn install(shared: &SharedState, data: &[u8]) -> Result<(), StorageError> {
    let envelope = decode_envelope(data)?;
    let lease = LeaseState::decode(&envelope.state).map_err(|e| sm_err(ErrorVerb::Read, e))?;
    let index = envelope.last_applied.map_or(0, |l| l.index);
    {
        let mut applied = shared.applied.write().expect("state machine lock poisoned");
        *applied = Applied {
            lease,
            last_applied: envelope.last_applied,
            membership: envelope.membership,
        };
    }
    shared.generation.fetch_add(1, Ordering::AcqRel);
    shared.applied_tx.send_replace(index);
    Ok(())
}

fn persist_snapshot(tree: &sled::Tree, stored: &StoredSnapshot) -> Result<(), StorageError> {
    let bytes = bincode::serde::encode_to_vec(stored, bincode::config::standard())
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
    tree.insert(SNAPSHOT_KEY, bytes)
        .map_err(|e| sm_err(ErrorVerb::Write, e))?;
    tree.flush().map_err(|e| sm_err(ErrorVerb::Write, e))?;
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self
            .shared
            .applied
            .read()
            .expect("state machine lock poisoned");
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), StorageError>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, StorageError>>
            + Unpin
            + openraft::OptionalSend,
    {
        let mut events = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let index = entry.log_id.index;
            let result = {
                let mut applied = self
                    .shared
                    .applied
                    .write()
                    .expect("state machine lock poisoned");
                applied.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => BatchResult {
                        index,
                        results: Vec::new(),
                    },
                    EntryPayload::Normal(batch) => {
                        let term = entry.log_id.leader_id.term;
                        applied.lease.apply_batch(index, term, &batch, &mut events)
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                        BatchResult {
                            index,
                            results: Vec::new(),
                        }
                    }
                }
            };
            if !events.is_empty() {
                self.shared
                    .events
                    .lock()
                    .expect("event lock poisoned")
                    .append(&mut events);
            }
            // Applied (state, events, index) before the writer hears its result.
            self.shared.applied_tx.send_replace(index);
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
            current: self.current.clone(),
            persist: self.persist.clone(),
            snapshot_seq: self.snapshot_seq.clone(),
            observer: self.snapshot_observer.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        install(&self.shared, &data)?;
        // Events of the replaced state are meaningless now; the actors rescan.
        self.shared.drain_events();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        // Written and flushed on a blocking thread, off the runtime's workers.
        let stored = match self.persist.clone() {
            Some(tree) => tokio::task::spawn_blocking(move || {
                persist_snapshot(&tree, &stored).map(|()| stored)
            })
            .await
            .map_err(|e| snapshot_err(ErrorVerb::Write, &e.to_string()))??,
            None => stored,
        };
        set_current(&self.current, stored, self.persist.is_some());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let current = self.current.lock().expect("snapshot lock poisoned").clone();
        let stored = match current {
            None => return Ok(None),
            Some(CurrentSnapshot::InMemory(stored)) => stored,
            Some(CurrentSnapshot::OnDisk(meta)) => {
                let tree = self
                    .persist
                    .clone()
                    .ok_or_else(|| snapshot_err(ErrorVerb::Read, "no snapshot store"))?;
                let stored = tokio::task::spawn_blocking(move || read_persisted(&tree))
                    .await
                    .map_err(|e| snapshot_err(ErrorVerb::Read, &e.to_string()))??
                    .ok_or_else(|| snapshot_err(ErrorVerb::Read, "the snapshot is gone"))?;
                // A newer build may have replaced it meanwhile; that one is as good (it
                // is only ever replaced by a later state), so send what is on disk.
                if stored.meta.last_log_id != meta.last_log_id {
                    tracing::debug!(
                        wanted = ?meta.last_log_id,
                        found = ?stored.meta.last_log_id,
                        "sending the newer snapshot on disk"
                    );
                }
                stored
            }
        };
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Cursor::new(stored.data),
        }))
    }
}

/// Builds a snapshot of the state as of the moment it is called.
pub struct SnapshotBuilder {
    shared: Arc<SharedState>,
    current: SharedCurrent,
    persist: Option<crate::closing::Shared<sled::Tree>>,
    snapshot_seq: Arc<AtomicU64>,
    observer: Option<crate::Observer>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let started = std::time::Instant::now();
        // Copy the state under the read lock (applies wait only for the copy), then encode
        // the copy on a blocking thread, off the lock and off the runtime's workers.
        let (last_applied, membership, lease) = {
            let applied = self
                .shared
                .applied
                .read()
                .expect("state machine lock poisoned");
            (
                applied.last_applied,
                applied.membership.clone(),
                applied.lease.clone(),
            )
        };
        let locked_ms = started.elapsed().as_millis() as u64;
        let envelope_membership = membership.clone();
        let data = tokio::task::spawn_blocking(move || {
            let envelope = SnapshotEnvelope {
                last_applied,
                membership: envelope_membership,
                state: lease.encode(),
            };
            encode_envelope(&envelope)
        })
        .await
        .map_err(|e| snapshot_err(ErrorVerb::Write, &e.to_string()))??;
        let encoded_ms = started.elapsed().as_millis() as u64;
        let seq = self.snapshot_seq.fetch_add(1, Ordering::AcqRel) + 1;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
        };
        let stored = StoredSnapshot { meta, data };
        if let Some(tree) = self.persist.clone() {
            let to_persist = stored.clone();
            tokio::task::spawn_blocking(move || persist_snapshot(&tree, &to_persist))
                .await
                .map_err(|e| snapshot_err(ErrorVerb::Write, &e.to_string()))??;
        }
        let result = Snapshot {
            meta: stored.meta.clone(),
            snapshot: Cursor::new(stored.data.clone()),
        };
        set_current(&self.current, stored, self.persist.is_some());
        // Building freed several snapshot-sized buffers; hand their pages back (below).
        tokio::task::spawn_blocking(release_free_memory);
        if let Some(observer) = &self.observer {
            observer.observe(started.elapsed());
        }
        tracing::info!(
            last_log_id = ?result.meta.last_log_id,
            seq,
            bytes = result.snapshot.get_ref().len(),
            locked_ms,
            encoded_ms,
            total_ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
        Ok(result)
    }
}

/// Return the allocator's free pages to the OS.
///
/// A snapshot build allocates and frees a few buffers the size of the snapshot (the
/// encoding, the envelope, the persisted copy). glibc's allocator keeps freed memory that is
/// not at the top of its heap, so without this the node's RSS stays at its peak: at 100 k
/// leases, about 1 KB per lease more (docs/performance.md). `malloc_trim` releases it; it
/// walks the heap once, off the runtime's workers. Other allocators return memory by
/// themselves.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only touches the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
