//! sled handles whose last drop never blocks the async runtime.
//!
//! Dropping the last handle of a sled tree flushes the page cache, in a loop, and dropping
//! the last handle of a database joins its flusher thread. On a healthy disk both take
//! milliseconds; on a full one (ENOSPC) they can block indefinitely. openraft drops the
//! log store and the state machine on a runtime worker when its core stops at a storage
//! error, and a worker blocked there also holds the task it was about to run next (tokio
//! never steals a worker's LIFO slot): in CI that was the watcher that reports the fault,
//! so the node kept serving stale reads as if nothing had happened.
//!
//! [`Closing`] moves the final drop to a thread of its own and waits for it for at most
//! [`CLOSE_WAIT`] (so a healthy close is still finished when the drop returns and the
//! directory can be reopened at once), with the wait itself off the runtime's scheduler
//! (`block_in_place` hands the worker's queued tasks to another thread).

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

/// How long a drop waits for its close before leaving it to finish in the background.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A value (a sled tree or database) whose drop runs on a thread of its own.
#[derive(Debug)]
pub struct Closing<T: Send + 'static>(Option<T>);

/// A shared sled handle: the close runs once, when the last clone is dropped.
pub type Shared<T> = Arc<Closing<T>>;

/// Wrap `value` so that its last drop runs off the runtime.
pub fn shared<T: Send + 'static>(value: T) -> Shared<T> {
    Arc::new(Closing(Some(value)))
}

impl<T: Send + 'static> Deref for Closing<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0
            .as_ref()
            .expect("a Closing value is present until it is dropped")
    }
}

impl<T: Send + 'static> Drop for Closing<T> {
    fn drop(&mut self) {
        let Some(value) = self.0.take() else { return };
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let closer = std::thread::Builder::new()
            .name("sled-close".into())
            .spawn(move || {
                drop(value);
                let _ = done.send(());
            });
        if closer.is_err() {
            // No thread: the closure, and the value with it, was dropped right here.
            return;
        }
        let wait = || {
            if finished.recv_timeout(CLOSE_WAIT).is_err() {
                tracing::warn!(
                    "closing the sled database is taking longer than {CLOSE_WAIT:?} (is the \
                     disk full?); it goes on in the background"
                );
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct SlowDrop(Arc<AtomicBool>, Duration);

    impl Drop for SlowDrop {
        fn drop(&mut self) {
            std::thread::sleep(self.1);
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_quick_close_has_finished_when_the_drop_returns() {
        let closed = Arc::new(AtomicBool::new(false));
        let handle = shared(SlowDrop(closed.clone(), Duration::from_millis(20)));
        let clone = handle.clone();
        drop(handle);
        assert!(!closed.load(Ordering::SeqCst), "closed while a clone lives");
        drop(clone);
        assert!(closed.load(Ordering::SeqCst));
    }

    /// A close that never finishes (a full disk) leaves the runtime's other tasks running:
    /// a task woken just before the drop, on the same worker, runs before the drop returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_stuck_close_does_not_stall_the_runtime() {
        let closed = Arc::new(AtomicBool::new(false));
        let handle = shared(SlowDrop(closed.clone(), CLOSE_WAIT * 3));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let watcher = tokio::spawn(async move {
            let _ = ready_tx.send(());
            rx.await.unwrap();
            std::time::Instant::now()
        });
        ready_rx.await.unwrap();
        let dropper = tokio::spawn(async move {
            // Wakes the watcher onto this worker, then blocks it in the drop.
            tx.send(()).unwrap();
            drop(handle);
            std::time::Instant::now()
        });
        let drop_returned = dropper.await.unwrap();
        let watcher_ran = watcher.await.unwrap();
        assert!(
            watcher_ran < drop_returned,
            "the woken task waited for the stuck close"
        );
        assert!(
            !closed.load(Ordering::SeqCst),
            "left to finish in the background"
        );
    }
}
