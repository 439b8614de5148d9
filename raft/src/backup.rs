//! Backups: the file `leasehold snapshot save` writes and `leasehold snapshot restore`
//! seeds a new cluster from (etcdctl's `snapshot save` and etcdutl's `snapshot restore`).
//!
//! Format, version 1:
//!
//! ```text
//! leasehold-snapshot v1\n
//! {"index":…,"saved_at_ms":…,"node_id":…,"leases":…,"keys":…,"last_token":…,
//!  "last_lease_id":…,"bytes":…,"sha256":"…"}\n
//! <the state: LeaseState::encode(), `bytes` long, whose SHA-256 is `sha256`>
//! ```
//!
//! The header is one line of JSON, so `head -2 FILE` shows what a backup holds; the
//! digest catches a file that was cut short or damaged in a copy, and [`read`] refuses
//! such a file by name rather than seed a cluster from part of a state.
//!
//! A restore ([`seed`]) writes a data directory that starts where the backup was taken: a
//! Raft log purged up to the backup's index (term 0, as openraft's own first entry) and a
//! snapshot at that index with the new cluster's membership. Every member is seeded from
//! the same file with the same members, so their logs agree; a member left empty is sent
//! the snapshot by the leader. The index carries on from the old cluster's, so blocking
//! queries and `mod_index`es keep their order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::log_store::SledLogStore;
use crate::state::LeaseState;
use crate::typ::{LogId, NodeId, PeerNode};

/// The first line of every backup file.
pub const MAGIC: &str = "leasehold-snapshot v1";

/// What a backup file's header says about the state it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The log index the state was taken at (every entry up to it is in).
    pub index: u64,
    /// Wall-clock time of the save, in ms since the Unix epoch.
    pub saved_at_ms: u64,
    /// The node that served the save.
    pub node_id: NodeId,
    pub leases: u64,
    /// Keys held, queued or remembered for their history.
    pub keys: u64,
    pub last_token: u64,
    pub last_lease_id: u64,
    /// Length of the encoded state after the header.
    pub bytes: u64,
    /// SHA-256 of the encoded state, lower-case hex.
    pub sha256: String,
}

/// Encode `state` as a backup file.
pub fn write(state: &LeaseState, node_id: NodeId, saved_at_ms: u64) -> Vec<u8> {
    let body = state.encode();
    let info = BackupInfo {
        index: state.last_index(),
        saved_at_ms,
        node_id,
        leases: state.lease_count() as u64,
        keys: state.resource_count() as u64,
        last_token: state.last_token(),
        last_lease_id: state.last_lease_id(),
        bytes: body.len() as u64,
        sha256: hex(&Sha256::digest(&body)),
    };
    let header = serde_json::to_string(&info).expect("the header is plain data");
    let mut out = Vec::with_capacity(MAGIC.len() + header.len() + body.len() + 2);
    out.extend_from_slice(MAGIC.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(header.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&body);
    out
}

/// Read and check a backup file: its first line, its header, its length, its digest and
/// the state itself. Every error says what is wrong with the file.
pub fn read(bytes: &[u8]) -> Result<(BackupInfo, LeaseState), String> {
    let (magic, rest) = split_line(bytes)
        .ok_or_else(|| format!("not a leasehold backup: it does not begin with `{MAGIC}`"))?;
    if magic != MAGIC.as_bytes() {
        return Err(match magic.starts_with(b"leasehold-snapshot ") {
            true => format!(
                "unsupported backup format `{}` (this build reads `{MAGIC}`)",
                String::from_utf8_lossy(magic)
            ),
            false => format!("not a leasehold backup: it does not begin with `{MAGIC}`"),
        });
    }
    let (header, body) =
        split_line(rest).ok_or("the backup is cut short: its header line is incomplete")?;
    let info: BackupInfo = serde_json::from_slice(header)
        .map_err(|e| format!("the backup's header is damaged: {e}"))?;
    if body.len() as u64 != info.bytes {
        return Err(format!(
            "the backup holds {} bytes of state but its header says {}: the file was cut \
             short or has bytes appended",
            body.len(),
            info.bytes
        ));
    }
    let digest = hex(&Sha256::digest(body));
    if digest != info.sha256 {
        return Err(format!(
            "the backup's state does not match its SHA-256 (header {}, contents {digest}): the \
             file is damaged",
            info.sha256
        ));
    }
    let state = LeaseState::decode(body).map_err(|e| format!("the backup's state: {e}"))?;
    if state.last_index() != info.index || state.last_token() != info.last_token {
        return Err("the backup's header does not describe its state".into());
    }
    Ok((info, state))
}

/// Seed the data directory `dir` of one member of a new cluster with `state`, whose
/// members are `members` (each member is seeded the same way). `dir` must be empty or
/// absent: a restore never overwrites a node's data.
pub fn seed(
    dir: &Path,
    state: &LeaseState,
    members: BTreeMap<NodeId, PeerNode>,
) -> Result<(), String> {
    if members.is_empty() {
        return Err("a cluster needs at least one member".into());
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "{} is not empty: a restore writes a new data directory and never \
                     overwrites one (move it aside or pick another)",
                    dir.display()
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    }
    // The new cluster's members are new directories: no identity of the old one's
    // applies to them (an empty member of the new cluster must not look like a wiped one).
    let mut state = state.clone();
    state.forget_incarnations();
    let state = &state;
    // The same first log id openraft gives a cluster's first entry: term 0, node 0.
    let leader = crate::typ::CommittedLeaderId {
        term: 0,
        node_id: 0,
    };
    let last = LogId::new(leader, state.last_index());
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = crate::typ::Membership::new(vec![voters], members)
        .map_err(|e| format!("the restored membership is not valid: {e}"))?;
    let db = sled::Config::new()
        .path(dir.join("raft"))
        .open()
        .map_err(|e| format!("cannot open {}: {e}", dir.join("raft").display()))?;
    SledLogStore::seed_purged(&db, last)?;
    crate::sm_store::seed_snapshot(&db, last, membership, state)?;
    db.flush()
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
    Ok(())
}

fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b'\n')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use openraft::storage::{RaftLogStorage, RaftStateMachine};

    use super::*;
    use crate::command::{Acquire, Batch, Command, CommandResult, Kind, LeaseSpec, Proposal};
    use crate::sm_store::StateMachineStore;

    /// A state holding `n` locks, built by applying real commands.
    fn state_with_locks(n: u64) -> LeaseState {
        let mut state = LeaseState::default();
        let mut events = Vec::new();
        for i in 0..n {
            let batch = Batch::new(
                1_000 + i,
                vec![Proposal {
                    request_id: None,
                    caller: None,
                    command: Command::Acquire(Acquire {
                        kind: Kind::Lock,
                        key: format!("k{i}"),
                        owner: "o".into(),
                        lease: LeaseSpec::New { ttl_ms: 10_000 },
                        wait: false,
                        value: None,
                        lock_delay_ms: 0,
                        limit: 1,
                        max_waiters: 10,
                        max_leases: 100,
                    }),
                }],
            );
            let result = state.apply_batch(10 + i, 1, &batch, &mut events);
            assert!(matches!(result.results[0], CommandResult::Granted(_)));
        }
        state
    }

    #[test]
    fn a_backup_round_trips_and_any_damage_is_refused_by_name() {
        let state = state_with_locks(3);
        let file = write(&state, 2, 1_234);
        let (info, back) = read(&file).unwrap();
        assert_eq!(back, state);
        assert_eq!(
            (info.index, info.node_id, info.leases, info.keys),
            (12, 2, 3, 3)
        );
        assert_eq!(info.last_token, 3);

        let err = read(&file[..file.len() - 1]).unwrap_err();
        assert!(err.contains("cut short"), "{err}");
        let mut flipped = file.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let err = read(&flipped).unwrap_err();
        assert!(err.contains("SHA-256"), "{err}");
        let err = read(b"SQLite format 3\0").unwrap_err();
        assert!(err.contains("not a leasehold backup"), "{err}");
        let err = read(b"leasehold-snapshot v9\n{}\n").unwrap_err();
        assert!(err.contains("unsupported backup format"), "{err}");
    }

    #[test]
    fn the_floors_rise_within_json_safe_integers_only() {
        let mut state = state_with_locks(2);
        state.raise_floors(1_000).unwrap();
        assert_eq!((state.last_token(), state.last_lease_id()), (1_002, 1_002));
        let err = state.raise_floors(u64::MAX / 2).unwrap_err();
        assert!(err.contains("at most"), "{err}");
        assert_eq!(state.last_token(), 1_002, "a refused raise changes nothing");
    }

    #[tokio::test]
    async fn a_seeded_directory_opens_at_the_backups_index_with_the_new_membership() {
        let state = state_with_locks(2);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let members: BTreeMap<NodeId, PeerNode> = (1..=3)
            .map(|id| {
                let node = PeerNode {
                    peer_addr: format!("127.0.0.1:{}", 9000 + id),
                    client_addr: String::new(),
                };
                (id, node)
            })
            .collect();
        seed(&data, &state, members.clone()).unwrap();
        let err = seed(&data, &state, members).unwrap_err();
        assert!(err.contains("not empty"), "{err}");

        let db = sled::Config::new().path(data.join("raft")).open().unwrap();
        let mut log = SledLogStore::open_checked(&db, &data.join("log.watermark")).unwrap();
        let log_state = log.get_log_state().await.unwrap();
        assert_eq!(log_state.last_log_id.map(|l| l.index), Some(11));
        assert_eq!(log_state.last_purged_log_id, log_state.last_log_id);
        let (mut sm, shared) = StateMachineStore::new(Some(db)).unwrap();
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, log_state.last_log_id);
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        assert_eq!(voters, vec![1, 2, 3]);
        assert_eq!(shared.read(|s| s.clone()), state);
    }
}
