//! Clock faults for node processes, through libfaketime (Debian's `libfaketime`, which
//! `scripts/test-deps.sh` installs), the way real clocks fail:
//!
//! - **Steps of the wall clock** ([`FakeClocks`], through
//!   [`ProcCluster::start_with_fake_clocks`](crate::procs::ProcCluster::start_with_fake_clocks)
//!   and `step_clock`): each node reads its offset from
//!   a file of its own (`FAKETIME_TIMESTAMP_FILE`), replaced atomically while it runs, and
//!   its monotonic clock is left alone (`FAKETIME_DONT_FAKE_MONOTONIC=1`): a kernel never
//!   steps the monotonic clock, only the wall clock.
//! - **Rate skew** ([`rate_env`]): a node started with `+0 xR` runs both clocks, and its
//!   timers, at rate R. The rate is fixed for the life of the process: changing it on a
//!   running process would jump its clock by the elapsed time times the change.

use std::path::{Path, PathBuf};

/// How long a step takes to be in force: libfaketime re-reads a node's offset file at
/// most once a second (`FAKETIME_CACHE_DURATION=1`).
pub const STEP_TAKES: std::time::Duration = std::time::Duration::from_millis(1_300);

/// The preload library, if installed.
pub fn libfaketime() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    for dir in dirs.flatten() {
        let lib = dir.path().join("faketime/libfaketime.so.1");
        if lib.exists() {
            return Some(lib);
        }
    }
    None
}

fn require_libfaketime() -> PathBuf {
    libfaketime().expect(
        "libfaketime is not installed: run scripts/test-deps.sh (Debian package libfaketime)",
    )
}

/// Per-node wall-clock offsets that the test steps while the nodes run, one file per node
/// id in a directory of their own.
pub struct FakeClocks {
    dir: tempfile::TempDir,
    lib: PathBuf,
}

impl FakeClocks {
    /// Offsets for any node ids (each starts at +0).
    pub fn new() -> anyhow::Result<Self> {
        Ok(FakeClocks {
            dir: tempfile::tempdir()?,
            lib: require_libfaketime(),
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, node: u64) -> PathBuf {
        self.path().join(format!("node-{node}.faketime"))
    }

    /// The environment of node `node`'s process (its offset file is created at +0).
    pub fn env(&self, node: u64) -> Vec<(String, String)> {
        let file = self.file(node);
        if !file.exists() {
            let _ = std::fs::write(&file, "+0\n");
        }
        vec![
            ("LD_PRELOAD".into(), self.lib.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            // Re-read the file every second.
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ]
    }

    /// Step node `node`'s wall clock to `offset_secs` from the real time (the file is
    /// replaced atomically; the node sees it within a second or so).
    pub fn set_offset(&self, node: u64, offset_secs: i64) -> anyhow::Result<()> {
        let tmp = self.path().join(format!("node-{node}.faketime.tmp"));
        std::fs::write(&tmp, format!("{offset_secs:+}\n"))?;
        std::fs::rename(&tmp, self.file(node))?;
        Ok(())
    }
}

/// The environment of a node whose clocks (wall and monotonic, and so its timers) run at
/// `rate` times real time, e.g. `1.005` for 0.5 % fast.
pub fn rate_env(rate: f64) -> Vec<(String, String)> {
    vec![
        (
            "LD_PRELOAD".into(),
            require_libfaketime().display().to_string(),
        ),
        ("FAKETIME".into(), format!("+0 x{rate}")),
    ]
}
