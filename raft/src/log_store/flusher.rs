//! Group commit for the sled log: one thread makes every outstanding append durable with
//! one fsync, then reports each append's `IOFlushed`.
//!
//! `SledLogStore::append` writes its entries into sled (readable at once, as openraft asks)
//! and queues a [`Job::Append`] here; it does not wait. openraft 0.10 replicates what was
//! submitted and counts the leader in the quorum only when the callback fires, so nothing
//! is acknowledged before the leader's own copy is on disk (SPEC §2 rule 8). Appends that
//! queue while an fsync runs share the next one.
//!
//! Thread hops per flush: the raft core hands the job to this thread (a channel send), and
//! this thread completes openraft's watch (a send back). The fsync itself runs here, not on
//! a blocking-pool thread and not behind a runtime task.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use openraft::storage::IOFlushed;

use super::watermark::Watermark;
use crate::closing::Shared;
use crate::typ::TypeConfig;

pub(crate) enum Job {
    /// Entries up to `last` are written to sled; report `callback` once they are durable.
    Append {
        last: Option<u64>,
        callback: IOFlushed<TypeConfig>,
    },
    /// Answered once every job queued before it is done (a truncation waits on it, so the
    /// watermark only ever moves in the order the log changed).
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// The flusher thread and its queue. Dropping it ends the thread after the queued jobs
/// and waits for it, so the database is closed when the store's last clone is gone.
pub(crate) struct Flusher {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// What the flusher needs of the store.
pub(crate) struct Target {
    pub db: Shared<sled::Db>,
    pub watermark: Option<Arc<Watermark>>,
    pub observer: Option<crate::Observer>,
    /// Hears how many appends each fsync made durable.
    pub group_observer: Option<super::GroupObserver>,
}

impl Flusher {
    pub(crate) fn start(target: Target) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || run(target, rx))?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queue a job. False if the thread is gone (it only ends when the store does).
    pub(crate) fn submit(&self, job: Job) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Flusher")
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.tx.take());
        let Some(thread) = self.thread.take() else {
            return;
        };
        // The thread finishes what was queued (one last fsync at most) and closes its
        // handle on the database. Waited for off the runtime's workers where possible,
        // as `crate::closing` does.
        let join = || {
            let _ = thread.join();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(join)
            }
            _ => join(),
        }
    }
}

fn run(target: Target, rx: mpsc::Receiver<Job>) {
    // After a failed fsync nothing written since can be called durable: every later
    // append fails too, and openraft stops the node (a storage error is fatal).
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let appends = jobs
            .iter()
            .filter(|j| matches!(j, Job::Append { .. }))
            .count();
        if appends > 0 && failed.is_none() {
            let started = Instant::now();
            if let Err(e) = target.db.flush() {
                failed = Some(e.to_string());
            }
            if let Some(observer) = &target.observer {
                observer.observe(started.elapsed());
            }
            if let Some(group) = &target.group_observer {
                (group.0)(appends);
            }
        }
        let mut durable = None;
        for job in jobs {
            match job {
                Job::Append { last, callback } => match &failed {
                    None => {
                        durable = last.or(durable);
                        callback.io_completed(Ok(()));
                    }
                    Some(e) => callback.io_completed(Err(std::io::Error::other(format!(
                        "flushing the Raft log: {e}"
                    )))),
                },
                Job::Barrier(done) => {
                    advance(&target, &mut durable);
                    let _ = done.send(());
                }
            }
        }
        advance(&target, &mut durable);
    }
}

fn advance(target: &Target, durable: &mut Option<u64>) {
    if let (Some(w), Some(last)) = (&target.watermark, durable.take()) {
        w.advance(last);
    }
}
