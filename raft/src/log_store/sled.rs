//! The durable log store on sled.
//!
//! Durability rules (SPEC §2 rule 8): an append is flushed (fsync) before openraft is told
//! it is done, so nothing is acknowledged before it is on disk. Appends do not wait for
//! that: the flusher (`super::flusher`) group-commits everything outstanding with one
//! fsync and then reports each append. A vote is flushed before
//! `save_vote` returns; a purge records `last_purged` durably before deleting entries, so
//! a crash mid-purge never leaves a gap that looks like a shorter log.
//!
//! Layout: tree `logs` maps the big-endian index to `[FORMAT_VERSION] ++ bincode(entry)`;
//! tree `meta` holds `vote`, `committed` and `last_purged` in the same versioned encoding.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use std::sync::OnceLock;

use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::flusher::{Flusher, Job, Target};
use super::watermark::Watermark;
use super::{read_logs_err, read_vote_err, write_logs_err, write_vote_err};
use crate::closing::{self, Shared};
use crate::typ::{Entry, LogId, LogState, StorageError, TypeConfig, Vote};

/// Version of the on-disk encoding of every value this store writes.
const FORMAT_VERSION: u8 = 1;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("stored value has format version {0}, this build reads {FORMAT_VERSION}")]
    Version(u8),
    #[error("stored value is empty")]
    Empty,
    #[error("stored value is corrupt: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("cannot encode value: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())?;
    Ok(out)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version(version));
    }
    let (value, _) = bincode::serde::decode_from_slice(body, bincode::config::standard())?;
    Ok(value)
}

/// A Raft log in a sled database. Clones share the database (the log reader is a clone).
#[derive(Debug, Clone)]
pub struct SledLogStore {
    // Closed off the async runtime when the last clone goes (see `crate::closing`).
    db: Shared<sled::Db>,
    logs: Shared<sled::Tree>,
    meta: Shared<sled::Tree>,
    /// How far the log reached and the highest term voted in, kept outside sled.
    watermark: Option<Arc<Watermark>>,
    /// Hears how long each fsync of the log took.
    fsync_observer: Option<crate::Observer>,
    /// Hears how many appends each fsync made durable.
    group_observer: Option<GroupObserver>,
    /// The group-commit thread, started at the first append (after the observers are set).
    flusher: Arc<OnceLock<Flusher>>,
}

/// Called with the number of appends one fsync made durable.
#[derive(Clone)]
pub struct GroupObserver(pub Arc<dyn Fn(usize) + Send + Sync>);

impl Debug for GroupObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupObserver")
    }
}

impl SledLogStore {
    pub fn open(db: &sled::Db) -> Result<Self, StorageError> {
        let logs = db.open_tree("logs").map_err(read_logs_err)?;
        let meta = db.open_tree("meta").map_err(read_logs_err)?;
        Ok(SledLogStore {
            db: closing::shared(db.clone()),
            logs: closing::shared(logs),
            meta: closing::shared(meta),
            watermark: None,
            fsync_observer: None,
            group_observer: None,
            flusher: Arc::new(OnceLock::new()),
        })
    }

    /// Call `observer` with the duration of every fsync of the log.
    pub fn with_fsync_observer(mut self, observer: crate::Observer) -> Self {
        self.fsync_observer = Some(observer);
        self
    }

    /// Call `observer` with the number of appends each fsync made durable.
    pub fn with_group_observer(mut self, observer: GroupObserver) -> Self {
        self.group_observer = Some(observer);
        self
    }

    /// Open the store with its watermark file at `watermark` and check the log against
    /// it: a log that ends before the recorded index, or a vote older than the recorded
    /// term, lost what this node had written, and the error says so, naming the files.
    /// A missing watermark file (a new directory, or one from before watermarks) is
    /// started from what the log holds.
    pub fn open_checked(db: &sled::Db, watermark: &Path) -> Result<Self, String> {
        let mut store = Self::open(db).map_err(|e| e.to_string())?;
        let (mark, recorded) = Watermark::open(watermark)?;
        let last_purged: Option<LogId> =
            store.get_meta(KEY_LAST_PURGED).map_err(|e| e.to_string())?;
        store.verify_entries(last_purged, &watermark.with_file_name("raft"))?;
        let last_index = store
            .last_entry()
            .map_err(|e| e.to_string())?
            .map(|e| e.log_id.index)
            .or(last_purged.map(|l| l.index))
            .unwrap_or(0);
        let vote: Option<Vote> = match store.meta.get(KEY_VOTE).map_err(|e| e.to_string())? {
            None => None,
            Some(bytes) => Some(decode(&bytes).map_err(|e| format!("the stored vote: {e}"))?),
        };
        let vote_term = vote.map_or(0, |v| v.leader_id().term);
        if let Some(recorded) = recorded {
            if last_index < recorded.index {
                return Err(format!(
                    "the Raft log ends at index {last_index}, but this node had written up to \
                     index {} (recorded in {}): entries were lost (a truncated or damaged \
                     file, or an older copy of the directory)",
                    recorded.index,
                    watermark.display()
                ));
            }
            if vote_term < recorded.term {
                return Err(format!(
                    "the stored vote is for term {vote_term}, but this node had voted in term \
                     {} (recorded in {}): the vote was lost, and with it this node could vote \
                     twice in one term",
                    recorded.term,
                    watermark.display()
                ));
            }
        }
        mark.advance(last_index);
        mark.voted(vote_term)
            .map_err(|e| format!("cannot write {}: {e}", watermark.display()))?;
        store.watermark = Some(mark);
        Ok(store)
    }

    /// Seed an empty database as a log whose entries up to `last` were purged into a
    /// snapshot (a restore from a backup: the snapshot holds the state at `last`).
    pub fn seed_purged(db: &sled::Db, last: LogId) -> Result<(), String> {
        let store = Self::open(db).map_err(|e| e.to_string())?;
        if store.logs.iter().next().is_some() || store.meta.iter().next().is_some() {
            return Err("the Raft log is not empty".into());
        }
        store
            .put_meta(KEY_LAST_PURGED, &last)
            .map_err(|e| e.to_string())?;
        db.flush().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// True if this store never held anything: no entry, no purge point, no vote. A
    /// member's directory in this state is new, or was wiped.
    pub fn is_pristine(&self) -> Result<bool, String> {
        let empty_logs = self.logs.iter().next().is_none();
        let no_meta = [KEY_VOTE, KEY_LAST_PURGED]
            .iter()
            .all(|k| !self.meta.contains_key(k).unwrap_or(true));
        Ok(empty_logs && no_meta)
    }

    /// Read back every entry of the log: its version byte, its encoding, and its place in
    /// the sequence (each entry says the index it is stored at, and none is missing after
    /// the purge point). The error names the database (`db_path`), the entry and the fault.
    /// This is what a start reads before it serves anything: a node never runs on a log it
    /// could not read all of.
    fn verify_entries(&self, last_purged: Option<LogId>, db_path: &Path) -> Result<(), String> {
        let at = db_path.display();
        let mut expected = last_purged.map(|l| l.index + 1);
        for item in self.logs.iter() {
            let (key, bytes) =
                item.map_err(|e| format!("cannot read the Raft log in {at}: {e}"))?;
            let index = <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| format!("the Raft log in {at} holds a key of {} bytes", key.len()))?;
            let entry: Entry = decode(&bytes)
                .map_err(|e| format!("log entry {index} in {at} cannot be read: {e}"))?;
            if entry.log_id.index != index {
                return Err(format!(
                    "log entry {index} in {at} says it is entry {}",
                    entry.log_id.index
                ));
            }
            if let Some(expected) = expected.filter(|&e| e != index) {
                return Err(format!(
                    "the Raft log in {at} has a gap: entry {expected} is missing (the next is {index})"
                ));
            }
            expected = Some(index + 1);
        }
        Ok(())
    }

    /// The group-commit thread, started on first use.
    fn flusher(&self) -> Result<&Flusher, StorageError> {
        if let Some(f) = self.flusher.get() {
            return Ok(f);
        }
        let started = Flusher::start(Target {
            db: self.db.clone(),
            watermark: self.watermark.clone(),
            observer: self.fsync_observer.clone(),
            group_observer: self.group_observer.clone(),
        })
        .map_err(write_logs_err)?;
        Ok(self.flusher.get_or_init(|| started))
    }

    /// Wait until every append queued so far is reported (durable, or failed).
    async fn settle(&self) -> Result<(), StorageError> {
        let Some(flusher) = self.flusher.get() else {
            return Ok(());
        };
        let (done, settled) = tokio::sync::oneshot::channel();
        if !flusher.submit(Job::Barrier(done)) {
            return Err(write_logs_err("the log's flusher thread is gone"));
        }
        settled
            .await
            .map_err(|_| write_logs_err("the log's flusher thread is gone"))
    }

    /// fsync everything written so far, off the async runtime.
    async fn flush(&self) -> Result<(), sled::Error> {
        let db = self.db.clone();
        let observer = self.fsync_observer.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let result = db.flush();
            if let Some(observer) = observer {
                observer.observe(started.elapsed());
            }
            result
        });
        match flushed.await {
            Ok(result) => result.map(|_| ()),
            Err(join) => Err(sled::Error::Io(std::io::Error::other(join.to_string()))),
        }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.meta.get(key).map_err(read_logs_err)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some).map_err(read_logs_err),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = encode(value).map_err(write_logs_err)?;
        self.meta.insert(key, bytes).map_err(write_logs_err)?;
        Ok(())
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        match self.logs.last().map_err(read_logs_err)? {
            None => Ok(None),
            Some((_, bytes)) => decode(&bytes).map(Some).map_err(read_logs_err),
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for item in self.logs.range::<[u8; 8], _>((start, end)) {
            let (_, bytes) = item.map_err(read_logs_err)?;
            entries.push(decode(&bytes).map_err(read_logs_err)?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        match self.meta.get(KEY_VOTE).map_err(read_vote_err)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some).map_err(read_vote_err),
        }
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = encode(vote).map_err(write_vote_err)?;
        self.meta.insert(KEY_VOTE, bytes).map_err(write_vote_err)?;
        self.flush().await.map_err(write_vote_err)?;
        if let Some(w) = self.watermark.clone() {
            let term = vote.leader_id().term;
            tokio::task::spawn_blocking(move || w.voted(term))
                .await
                .map_err(write_vote_err)?
                .map_err(write_vote_err)?;
        }
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: losing it only makes a restart re-apply from the snapshot.
        self.put_meta(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        let mut last = None;
        for entry in entries {
            let bytes = encode(&entry).map_err(write_logs_err)?;
            batch.insert(&index_key(entry.log_id.index), bytes);
            last = Some(entry.log_id.index);
        }
        // Written (readable at once), then made durable by the flusher, which reports it.
        self.logs.apply_batch(batch).map_err(write_logs_err)?;
        if !self.flusher()?.submit(Job::Append { last, callback }) {
            return Err(write_logs_err("the log's flusher thread is gone"));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), StorageError> {
        // Every append before this one is reported first, so the watermark below is not
        // raised again by a flush that raced the truncation.
        self.settle().await?;
        let from = last.map_or(0, |l| l.index + 1);
        // Lower the watermark first: a legitimate truncation must never look like a loss.
        if let Some(w) = self.watermark.clone() {
            let kept = from.saturating_sub(1);
            tokio::task::spawn_blocking(move || w.lower(kept))
                .await
                .map_err(write_logs_err)?
                .map_err(write_logs_err)?;
        }
        let mut batch = sled::Batch::default();
        for item in self.logs.range(index_key(from)..) {
            let (key, _) = item.map_err(write_logs_err)?;
            batch.remove(key);
        }
        self.logs.apply_batch(batch).map_err(write_logs_err)?;
        self.flush().await.map_err(write_logs_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point durably first; then delete.
        self.put_meta(KEY_LAST_PURGED, &log_id)?;
        self.flush().await.map_err(write_logs_err)?;
        let mut batch = sled::Batch::default();
        for item in self.logs.range(..=index_key(log_id.index)) {
            let (key, _) = item.map_err(write_logs_err)?;
            batch.remove(key);
        }
        self.logs.apply_batch(batch).map_err(write_logs_err)?;
        Ok(())
    }
}
