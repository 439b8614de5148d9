//! [`LockGuard`]: a granted hold, renewed in the background under the client-deadline
//! rule, and released when dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::options::{GuardOptions, GuardState, LossReason};
use super::target::{hold_is_gone, Grant, Hold};
use crate::error::ApiError;
use crate::service::LeaseService;
use crate::wire::{NameRecord, ProclaimRequest};

/// A held lock, semaphore slot or name, renewed in the background.
pub struct LockGuard<S: LeaseService + Clone> {
    service: S,
    hold: Hold,
    lease_id: u64,
    state: watch::Receiver<GuardState>,
    valid_until: watch::Receiver<Instant>,
    renewal: Option<JoinHandle<()>>,
    /// Tells the renewal task to stop renewing (and still signal the loss at the deadline).
    stop: Arc<Notify>,
    released: bool,
    /// [`stop_heartbeat`](Self::stop_heartbeat) was called: dropping the guard leaves the
    /// hold to expire instead of releasing it.
    keep_on_drop: bool,
}

/// What the work under [`with_lock`](super::with_lock) may know of its hold: the token,
/// the lease, the client deadline and the loss signal. Owned and cheap to clone.
#[derive(Clone)]
pub struct GuardHandle {
    key: String,
    token: u64,
    lease_id: u64,
    state: watch::Receiver<GuardState>,
    valid_until: watch::Receiver<Instant>,
}

impl GuardHandle {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token: pass it to downstream writes.
    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn lease_id(&self) -> u64 {
        self.lease_id
    }

    /// The client deadline (see [`LockGuard::valid_until`]).
    pub fn valid_until(&self) -> Instant {
        *self.valid_until.borrow()
    }

    /// True while the client deadline has not passed.
    pub fn is_held(&self) -> bool {
        !matches!(*self.state.borrow(), GuardState::Lost(_))
    }

    pub fn state(&self) -> GuardState {
        self.state.borrow().clone()
    }

    /// Resolves when the hold is lost, with the reason.
    pub fn lost(&self) -> impl Future<Output = LossReason> + Send + 'static {
        lost_signal(self.state.clone())
    }
}

async fn lost_signal(mut state: watch::Receiver<GuardState>) -> LossReason {
    loop {
        if let GuardState::Lost(reason) = &*state.borrow_and_update() {
            return reason.clone();
        }
        if state.changed().await.is_err() {
            // The renewal task ended without a loss: the guard was released.
            return LossReason::Released;
        }
    }
}

/// An elected leader: a name held with renewal. Same API as [`LockGuard`].
pub type ElectionGuard<S> = LockGuard<S>;
/// A semaphore slot held with renewal.
pub type SemaphoreGuard<S> = LockGuard<S>;

impl<S: LeaseService + Clone> LockGuard<S> {
    /// Start renewing a hold granted by a request sent at `grant.t_send`.
    pub(super) fn start(
        service: S,
        grant: Grant,
        opts: &GuardOptions,
        heartbeat: Duration,
    ) -> Self {
        let Grant {
            hold,
            lease_id,
            t_send,
        } = grant;
        let valid_for = opts.ttl.mul_f64(1.0 - opts.drift);
        let (tx, rx) = watch::channel(GuardState::Held);
        let (until_tx, until_rx) = watch::channel(t_send + valid_for);
        let stop = Arc::new(Notify::new());
        let renewal = tokio::spawn(renewal_loop(
            service.clone(),
            hold.clone(),
            Renewal {
                t_send,
                valid_for,
                heartbeat,
                stop: stop.clone(),
            },
            tx,
            until_tx,
        ));
        LockGuard {
            service,
            hold,
            lease_id,
            state: rx,
            valid_until: until_rx,
            renewal: Some(renewal),
            stop,
            released: false,
            keep_on_drop: false,
        }
    }

    /// The fencing token of this hold: pass it to downstream writes.
    pub fn token(&self) -> u64 {
        self.hold.token
    }

    pub fn lease_id(&self) -> u64 {
        self.lease_id
    }

    pub fn key(&self) -> &str {
        &self.hold.key
    }

    pub fn owner(&self) -> &str {
        &self.hold.owner
    }

    /// True while the client deadline has not passed (Held or Jeopardy).
    pub fn is_held(&self) -> bool {
        !matches!(*self.state.borrow(), GuardState::Lost(_))
    }

    pub fn state(&self) -> GuardState {
        self.state.borrow().clone()
    }

    /// The client deadline: `t_send + ttl × (1 − drift)` of the last request that
    /// refreshed the lease. Past it the guard no longer believes it holds.
    pub fn valid_until(&self) -> Instant {
        *self.valid_until.borrow()
    }

    /// A watch of the state, for callers that react to Jeopardy too.
    pub fn watch(&self) -> watch::Receiver<GuardState> {
        self.state.clone()
    }

    /// Resolves when the hold is lost, with the reason.
    pub fn lost(&self) -> impl Future<Output = LossReason> + Send + 'static {
        lost_signal(self.state.clone())
    }

    /// The token, lease, deadline and loss signal, owned (what [`with_lock`](super::with_lock)
    /// hands its work).
    pub fn handle(&self) -> GuardHandle {
        GuardHandle {
            key: self.hold.key.clone(),
            token: self.hold.token,
            lease_id: self.lease_id,
            state: self.state.clone(),
            valid_until: self.valid_until.clone(),
        }
    }

    /// Stop renewing, and keep the hold until its lease runs out (the DynamoDB lock
    /// client's `StopHeartbeat`): nothing is released, now or when the guard is dropped.
    /// The guard reports the loss when its client deadline passes; the cluster expires
    /// the hold at the lease's TTL. A later [`release`](Self::release) still releases.
    pub fn stop_heartbeat(&mut self) {
        self.keep_on_drop = true;
        self.stop.notify_one();
    }

    /// Proclaim a new value (names only).
    pub async fn proclaim(&self, value: impl Into<String>) -> Result<NameRecord, ApiError> {
        self.service
            .proclaim(
                &self.hold.key,
                ProclaimRequest {
                    owner: self.hold.owner.clone(),
                    token: self.hold.token,
                    value: Some(value.into()),
                    request_id: None,
                },
            )
            .await
    }

    /// Release (or resign) now. Stops renewal first.
    pub async fn release(mut self) -> Result<(), ApiError> {
        self.released = true;
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        self.hold.release(&self.service).await
    }
}

impl<S: LeaseService + Clone> Drop for LockGuard<S> {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            // After stop_heartbeat the task only waits for the client deadline to signal
            // the loss (it renews nothing); let it, so `lost()` still resolves then.
            if !self.keep_on_drop {
                renewal.abort();
            }
        }
        if self.released || self.keep_on_drop || matches!(*self.state.borrow(), GuardState::Lost(_))
        {
            return;
        }
        // Best effort: release in the background if a runtime is still there.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (service, hold) = (self.service.clone(), self.hold.clone());
            handle.spawn(async move {
                let _ = hold.release(&service).await;
            });
        }
    }
}

/// Keep `hold` alive: renew every `heartbeat` (sooner while renewals fail), moving the
/// client deadline to `valid_for` after each successful renewal was sent, until the
/// deadline passes or the cluster says the hold is gone.
/// How a renewal loop starts: the send time of the grant's request, how long a renewal
/// keeps the hold valid on this side, the period, and the stop switch.
struct Renewal {
    t_send: Instant,
    valid_for: Duration,
    heartbeat: Duration,
    stop: Arc<Notify>,
}

async fn renewal_loop<S: LeaseService>(
    service: S,
    hold: Hold,
    renewal: Renewal,
    state: watch::Sender<GuardState>,
    valid_until: watch::Sender<Instant>,
) {
    let Renewal {
        mut t_send,
        valid_for,
        heartbeat,
        stop,
    } = renewal;
    let mut deadline = t_send + valid_for;
    let mut next = t_send + heartbeat;
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                let _ = state.send(GuardState::Lost(LossReason::Unreachable(last_error)));
                return;
            }
            _ = stop.notified() => {
                // stop_heartbeat: renew no more; the hold is believed until the deadline.
                tokio::time::sleep_until(deadline).await;
                let _ = state.send(GuardState::Lost(LossReason::Expired(
                    "the heartbeat was stopped and the client deadline passed".into(),
                )));
                return;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let attempt = tokio::select! {
            r = hold.extend(&service) => Some(r),
            _ = tokio::time::sleep_until(deadline) => None,
        };
        match attempt {
            None => {
                let _ = state.send(GuardState::Lost(LossReason::Unreachable(
                    "no renewal answered before the deadline".into(),
                )));
                return;
            }
            Some(Ok(())) => {
                t_send = sent;
                deadline = t_send + valid_for;
                let _ = valid_until.send(deadline);
                next = t_send + heartbeat;
                state.send_if_modified(|s| {
                    let changed = *s != GuardState::Held;
                    *s = GuardState::Held;
                    changed
                });
            }
            Some(Err(e)) if hold_is_gone(&e) => {
                let reason = match e.reason.as_deref() {
                    Some("stolen") => LossReason::Stolen(e.message),
                    _ => LossReason::Expired(e.message),
                };
                let _ = state.send(GuardState::Lost(reason));
                return;
            }
            Some(Err(e)) => {
                last_error = e.to_string();
                state.send_if_modified(|s| {
                    let changed = *s != GuardState::Jeopardy;
                    *s = GuardState::Jeopardy;
                    changed
                });
                // Retry sooner while in jeopardy.
                next = Instant::now() + (heartbeat / 4).max(Duration::from_millis(10));
            }
        }
    }
}
