//! openraft's storage conformance suite against both log stores, and the sled store's
//! durability across reopen.

// openraft's suite returns its large `StorageError` by value.
#![allow(clippy::result_large_err)]

use leasehold_raft::command::{Batch, Command, Proposal};
use leasehold_raft::log_store::{MemLogStore, SledLogStore};
use leasehold_raft::sm_store::StateMachineStore;
use leasehold_raft::typ::{CommittedLeaderId, Entry, LogId, TypeConfig, Vote};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder};

type StorageError = openraft::StorageError<TypeConfig>;

fn storage_error(e: std::io::Error) -> StorageError {
    StorageError::from_io_error(openraft::ErrorSubject::Store, openraft::ErrorVerb::Write, e)
}

struct MemBuilder;

impl StoreBuilder<TypeConfig, MemLogStore, StateMachineStore, ()> for MemBuilder {
    async fn build(&self) -> Result<((), MemLogStore, StateMachineStore), StorageError> {
        let (sm, _) = StateMachineStore::new(None).map_err(storage_error)?;
        Ok(((), MemLogStore::default(), sm))
    }
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, SledLogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, SledLogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path()).expect("sled opens");
        let log = SledLogStore::open(&db).map_err(storage_error)?;
        let (sm, _) = StateMachineStore::new(Some(db)).map_err(storage_error)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test]
async fn mem_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(MemBuilder).await
}

#[tokio::test]
async fn sled_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder).await
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId { term, node_id: 1 }, index)
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Batch::new(
            1_000 + index,
            vec![Proposal {
                request_id: None,
                caller: None,
                command: Command::CreateLease {
                    ttl_ms: 5_000,
                    owner: format!("o{index}"),
                    max_leases: 100,
                },
            }],
        )),
    }
}

async fn append(store: &mut SledLogStore, entries: Vec<Entry>) {
    use openraft::storage::RaftLogStorageExt;
    store.blocking_append(entries).await.unwrap();
}

#[tokio::test]
async fn sled_log_vote_and_purge_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let mut store = SledLogStore::open(&db).unwrap();
        append(&mut store, (1..=10).map(|i| entry(1, i)).collect()).await;
        store.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        store.purge(log_id(1, 4)).await.unwrap();
        store.truncate_after(Some(log_id(1, 8))).await.unwrap();
    }
    let db = sled::open(dir.path()).unwrap();
    let mut store = SledLogStore::open(&db).unwrap();
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(3, 2))
    );
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 8)));
    let entries = store.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![5, 6, 7, 8]);
    assert_eq!(entries[0], entry(1, 5));
}

#[tokio::test]
async fn sled_snapshot_is_restored_on_open_and_corruption_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (expected, built_snapshot) = {
        let db = sled::open(dir.path()).unwrap();
        let (mut sm, shared) = StateMachineStore::new(Some(db)).unwrap();
        let entries = (1..=3).map(|i| Ok((entry(1, i), None)));
        sm.apply(futures::stream::iter(entries)).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        let built = builder.build_snapshot().await.unwrap();
        // A durable store keeps only the meta in memory and reads the bytes back.
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, built.meta);
        assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());
        (
            shared.read(|s| s.encode()),
            (built.meta, built.snapshot.into_inner()),
        )
    };
    {
        let db = sled::open(dir.path()).unwrap();
        let (mut sm, shared) = StateMachineStore::new(Some(db)).unwrap();
        assert_eq!(shared.read(|s| s.encode()), expected);
        assert_eq!(shared.read(|s| s.lease_count()), 3);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 3)));
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        let (meta, data) = built_snapshot;
        assert_eq!(current.meta, meta);
        assert_eq!(current.snapshot.into_inner(), data);
    }
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("snapshot").unwrap();
        let mut bytes = tree.get("current").unwrap().unwrap().to_vec();
        let len = bytes.len();
        bytes.truncate(len / 2);
        tree.insert("current", bytes).unwrap();
        db.flush().unwrap();
    }
    let db = sled::open(dir.path()).unwrap();
    assert!(
        StateMachineStore::new(Some(db)).is_err(),
        "a corrupt snapshot is an error"
    );
}
