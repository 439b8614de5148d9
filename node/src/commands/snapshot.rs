//! `snapshot save|status|restore`: backups of a cluster's state (`leasehold_raft::backup`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use leasehold_api::LeaseService;
use leasehold_config::Config;
use leasehold_raft::backup::{self, BackupInfo};
use leasehold_raft::typ::PeerNode;
use serde::Serialize;

use super::{client, fail, print, ClientArgs, EXIT_ERROR, EXIT_USAGE};

/// `snapshot save FILE`: fetch a backup from the cluster, check it, and write it
/// atomically (a temporary file, synced, renamed over FILE).
pub async fn snapshot_save(client_args: &ClientArgs, file: &Path) -> i32 {
    let client = match client(client_args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let bytes = match client.snapshot().await {
        Ok(bytes) => bytes,
        Err(e) => return fail("cannot save a snapshot", &e),
    };
    // Check what arrived before keeping it: a backup that cannot be restored is worse than
    // none, because nobody finds out until they need it.
    let info = match backup::read(&bytes) {
        Ok((info, _)) => info,
        Err(e) => {
            eprintln!("leasehold: the node sent a backup that does not check out: {e}");
            return EXIT_ERROR;
        }
    };
    if let Err(e) = write_atomically(file, &bytes) {
        eprintln!("leasehold: cannot write {}: {e}", file.display());
        return EXIT_ERROR;
    }
    print(client_args.json, &info, |i| {
        println!(
            "saved {}: index {}, {} leases, {} keys, last token {}, {} bytes",
            file.display(),
            i.index,
            i.leases,
            i.keys,
            i.last_token,
            bytes.len()
        )
    });
    0
}

/// `snapshot status FILE`: check a backup and show its header.
pub fn snapshot_status(client_args: &ClientArgs, file: &Path) -> i32 {
    let info = match read_file(file) {
        Ok(info) => info.0,
        Err(code) => return code,
    };
    print(client_args.json, &info, |i| {
        println!(
            "{}: a good backup (format, length, SHA-256 and state check out)",
            file.display()
        );
        println!("  index          {}", i.index);
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(i.saved_at_ms);
        println!(
            "  saved at       {} by node {}",
            humantime::format_rfc3339_seconds(at),
            i.node_id
        );
        println!("  leases         {}", i.leases);
        println!("  keys           {}", i.keys);
        println!("  last token     {}", i.last_token);
        println!("  last lease id  {}", i.last_lease_id);
        println!("  state          {} bytes, sha256 {}", i.bytes, i.sha256);
    });
    0
}

#[derive(Serialize)]
struct Restored<'a> {
    data_dir: String,
    node_id: u64,
    members: Vec<u64>,
    index: u64,
    leases: u64,
    keys: u64,
    /// The highest token (and lease id) the restored cluster counts on from.
    token_floor: u64,
    lease_id_floor: u64,
    backup: &'a BackupInfo,
}

/// `snapshot restore FILE`: seed this member's (empty) data directory for a new cluster.
pub fn snapshot_restore(
    client_args: &ClientArgs,
    file: &Path,
    bump_tokens: u64,
    config: &Config,
) -> i32 {
    let Some(dir) = &config.data_dir else {
        eprintln!(
            "leasehold: a restore writes a data directory: set --data-dir (or data_dir in the \
             config file) to this member's, empty or absent"
        );
        return EXIT_USAGE;
    };
    let (info, mut state) = match read_file(file) {
        Ok(read) => read,
        Err(code) => return code,
    };
    if let Err(e) = state.raise_floors(bump_tokens) {
        eprintln!("leasehold: --bump-tokens: {e}");
        return EXIT_USAGE;
    }
    let members: BTreeMap<u64, PeerNode> = if config.cluster.members.is_empty() {
        [(
            config.node_id,
            PeerNode {
                peer_addr: config.advertised_peer_addr(config.peer_addr),
                client_addr: config.advertised_client_addr(config.client_addr),
            },
        )]
        .into()
    } else {
        if !config
            .cluster
            .members
            .iter()
            .any(|m| m.id == config.node_id)
        {
            eprintln!(
                "leasehold: node {} is not in --cluster-members; restore each member of the \
                 new cluster with its own --node-id",
                config.node_id
            );
            return EXIT_USAGE;
        }
        // Exactly the membership a bootstrap from these members would propose.
        config
            .cluster
            .members
            .iter()
            .map(|m| {
                let node = PeerNode {
                    peer_addr: m.peer_addr.to_string(),
                    client_addr: String::new(),
                };
                (m.id, node)
            })
            .collect()
    };
    let member_ids: Vec<u64> = members.keys().copied().collect();
    if let Err(e) = backup::seed(dir, &state, members) {
        eprintln!("leasehold: cannot restore into {}: {e}", dir.display());
        return EXIT_ERROR;
    }
    let restored = Restored {
        data_dir: dir.display().to_string(),
        node_id: config.node_id,
        members: member_ids,
        index: info.index,
        leases: info.leases,
        keys: info.keys,
        token_floor: state.last_token(),
        lease_id_floor: state.last_lease_id(),
        backup: &info,
    };
    print(client_args.json, &restored, |r| {
        println!(
            "restored {} leases and {} keys at index {} into {} (node {} of members {:?})",
            r.leases, r.keys, r.index, r.data_dir, r.node_id, r.members
        );
        println!(
            "new fencing tokens start above {} and new lease ids above {}",
            r.token_floor, r.lease_id_floor
        );
        println!(
            "restore every member the same way, then start each with `leasehold serve` and \
             the same settings; the leases restart their TTL when the new cluster elects a \
             leader"
        );
    });
    0
}

fn read_file(file: &Path) -> Result<(BackupInfo, leasehold_raft::state::LeaseState), i32> {
    let bytes = std::fs::read(file).map_err(|e| {
        eprintln!("leasehold: cannot read {}: {e}", file.display());
        EXIT_ERROR
    })?;
    backup::read(&bytes).map_err(|e| {
        eprintln!("leasehold: {}: {e}", file.display());
        EXIT_ERROR
    })
}

fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".part");
    let tmp = file.with_file_name(tmp_name);
    {
        let mut out = std::fs::File::create(&tmp)?;
        out.write_all(bytes)?;
        out.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}
