//! The watermark: a small file beside the sled database that remembers how far this
//! node's log reached and the highest term it voted in, so that a start can tell a log
//! that lost entries from one that never had them.
//!
//! sled recovers a damaged or truncated file silently, to its last valid record (that is
//! how it survives a torn write), so a file cut short by a bad copy or a failing disk
//! opens as a shorter log. Raft assumes a node never loses what it acknowledged: such a
//! node could help elect a leader that lacks committed entries, vote twice in one term
//! once its vote is gone, and openraft's leader stops on a follower whose log went
//! backwards. The watermark lets the node refuse to start instead (and name `--rejoin`).
//!
//! - The term is written (and synced) with every vote, before `save_vote` returns: a lost
//!   vote is always detected.
//! - The index follows appends in the background, at most every `EVERY` (200 ms), off the path
//!   that acknowledges them: a loss of more than the last moment's entries is detected.
//! - A truncation (a new leader overwriting this node's unacknowledged suffix) lowers the
//!   index durably before the entries are removed, so a legitimate truncation never looks
//!   like a loss.
//!
//! Format: one line, `leasehold-watermark v1 index=<u64> term=<u64>`, replaced atomically
//! (write a temporary file, sync it, rename it over, sync the directory).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How often the background writer records a higher index.
const EVERY: Duration = Duration::from_millis(200);
const HEADER: &str = "leasehold-watermark v1";

/// How far the log reached and the highest term voted in, as last recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    pub index: u64,
    pub term: u64,
}

#[derive(Debug)]
struct Inner {
    /// What the file says.
    written: Mark,
    /// What it should say.
    wanted: Mark,
}

/// The watermark file of one log store.
#[derive(Debug)]
pub struct Watermark {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl Watermark {
    /// Open (or start) the watermark at `path`; returns it with what the file said
    /// (`None`: no file yet). An unreadable file is an error naming it.
    pub fn open(path: &Path) -> Result<(Arc<Watermark>, Option<Mark>), String> {
        let recorded = match std::fs::read_to_string(path) {
            Ok(text) => Some(parse(&text).ok_or_else(|| {
                format!(
                    "{} is damaged (expected `{HEADER} index=N term=N`, found {:?})",
                    path.display(),
                    text.chars().take(80).collect::<String>()
                )
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mark = recorded.unwrap_or_default();
        let watermark = Arc::new(Watermark {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                written: mark,
                wanted: mark,
            }),
        });
        let weak = Arc::downgrade(&watermark);
        std::thread::Builder::new()
            .name("leasehold-watermark".into())
            .spawn(move || writer(weak))
            .map_err(|e| format!("cannot start the watermark writer: {e}"))?;
        Ok((watermark, recorded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The log reached `index` (written later, in the background).
    pub fn advance(&self, index: u64) {
        let mut inner = self.inner.lock().expect("watermark lock");
        inner.wanted.index = inner.wanted.index.max(index);
    }

    /// This node voted in `term`: recorded and synced before returning.
    pub fn voted(&self, term: u64) -> std::io::Result<()> {
        let mut inner = self.inner.lock().expect("watermark lock");
        if term <= inner.written.term {
            return Ok(());
        }
        inner.wanted.term = inner.wanted.term.max(term);
        let wanted = inner.wanted;
        write(&self.path, wanted)?;
        inner.written = wanted;
        Ok(())
    }

    /// The log is about to be cut back to end at `last` (the entries after it are being
    /// overwritten): recorded and synced before returning.
    pub fn lower(&self, last: u64) -> std::io::Result<()> {
        let mut inner = self.inner.lock().expect("watermark lock");
        inner.wanted.index = inner.wanted.index.min(last);
        if inner.written.index <= last {
            return Ok(());
        }
        let wanted = Mark {
            index: inner.wanted.index,
            term: inner.written.term.max(inner.wanted.term),
        };
        write(&self.path, wanted)?;
        inner.written = wanted;
        Ok(())
    }

    /// Write what is wanted now, if it differs from the file (the background writer).
    fn catch_up(&self) {
        let mut inner = self.inner.lock().expect("watermark lock");
        if inner.wanted == inner.written {
            return;
        }
        let wanted = inner.wanted;
        match write(&self.path, wanted) {
            Ok(()) => inner.written = wanted,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot update the log watermark")
            }
        }
    }
}

fn writer(watermark: Weak<Watermark>) {
    loop {
        std::thread::sleep(EVERY);
        match watermark.upgrade() {
            Some(w) => w.catch_up(),
            None => return,
        }
    }
}

fn parse(text: &str) -> Option<Mark> {
    let rest = text.trim().strip_prefix(HEADER)?;
    let mut index = None;
    let mut term = None;
    for field in rest.split_whitespace() {
        match field.split_once('=')? {
            ("index", v) => index = Some(v.parse().ok()?),
            ("term", v) => term = Some(v.parse().ok()?),
            _ => return None,
        }
    }
    Some(Mark {
        index: index?,
        term: term?,
    })
}

fn write(path: &Path, mark: Mark) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{HEADER} index={} term={}", mark.index, mark.term)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_garbage_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.watermark");
        let (w, recorded) = Watermark::open(&path).unwrap();
        assert_eq!(recorded, None);
        w.voted(3).unwrap();
        w.advance(42);
        w.catch_up();
        drop(w);
        let (_, recorded) = Watermark::open(&path).unwrap();
        assert_eq!(recorded, Some(Mark { index: 42, term: 3 }));
        // A truncation lowers it at once.
        let (w, _) = Watermark::open(&path).unwrap();
        w.lower(40).unwrap();
        assert_eq!(
            parse(&std::fs::read_to_string(&path).unwrap()),
            Some(Mark { index: 40, term: 3 })
        );
        std::fs::write(&path, "garbage").unwrap();
        let err = Watermark::open(&path).unwrap_err();
        assert!(err.contains("log.watermark is damaged"), "{err}");
    }
}
