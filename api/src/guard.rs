//! Guards: hold a lock, a semaphore slot or a name (leadership) with background renewal,
//! generic over any [`LeaseService`] (the embedded node or the HTTP client).
//!
//! The client-deadline rule (SPEC §2 rule 5): a guard considers itself holder until
//! `t_send + ttl × (1 − drift)`, where `t_send` is when it sent the last request that
//! refreshed the lease (the acquire, or a renewal that succeeded). It renews every
//! heartbeat (default TTL/3, and it must be below TTL/2). While renewals fail but the
//! deadline has not passed, the state is [`GuardState::Jeopardy`]; when the deadline
//! passes without a successful renewal, or the cluster says the hold is gone, it is
//! [`GuardState::Lost`] and [`LockGuard::lost`] resolves with the reason. A grant that
//! arrives after a wait re-anchors with an immediate renewal before it is returned.
//!
//! Dropping a guard releases it, best effort, in the background.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{ApiError, ErrorCode};
use crate::service::LeaseService;
use crate::wire::*;

/// Default assumed clock-rate difference between client and server (1 %).
pub const DEFAULT_DRIFT: f64 = 0.01;

/// Why a guard was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossReason {
    /// The cluster no longer has the hold: it expired, was revoked, or was taken over.
    Expired(String),
    /// Renewals failed until the client deadline passed (the cluster was unreachable).
    Unreachable(String),
    /// The guard was released by its owner.
    Released,
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossReason::Expired(m) => write!(f, "the hold ended on the cluster: {m}"),
            LossReason::Unreachable(m) => {
                write!(f, "renewals failed until the client deadline passed: {m}")
            }
            LossReason::Released => write!(f, "released"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardState {
    Held,
    /// Renewals are failing but the client deadline has not passed yet.
    Jeopardy,
    Lost(LossReason),
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// The options are not usable (names the option and the rule).
    #[error("invalid options: {0}")]
    Options(String),
    /// The cluster refused or could not serve the acquire (`lock_held` when the wait ran out).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The hold was lost while the protected work ran.
    #[error("lost: {0}")]
    Lost(LossReason),
}

/// Options shared by the guards.
#[derive(Debug, Clone)]
pub struct GuardOptions {
    pub owner: String,
    pub ttl: Duration,
    /// How long to queue for the lock; zero tries once.
    pub wait: Duration,
    /// Renewal period; default TTL/3, must be below TTL/2.
    pub heartbeat: Option<Duration>,
    pub value: Option<String>,
    pub drift: f64,
}

impl Default for GuardOptions {
    fn default() -> Self {
        GuardOptions {
            owner: default_owner(),
            ttl: Duration::from_secs(30),
            wait: Duration::ZERO,
            heartbeat: None,
            value: None,
            drift: DEFAULT_DRIFT,
        }
    }
}

/// `hostname-pid-n`: unique per guard within a process.
pub fn default_owner() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl GuardOptions {
    fn heartbeat(&self) -> Result<Duration, GuardError> {
        let hb = self.heartbeat.unwrap_or(self.ttl / 3);
        if hb.is_zero() || hb * 2 >= self.ttl {
            return Err(GuardError::Options(format!(
                "heartbeat ({hb:?}) must be above zero and below ttl/2 ({:?})",
                self.ttl / 2
            )));
        }
        if !(0.0..0.5).contains(&self.drift) {
            return Err(GuardError::Options(format!(
                "drift ({}) must be in [0, 0.5)",
                self.drift
            )));
        }
        Ok(hb)
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    fn wait_ms(&self) -> Option<u64> {
        (!self.wait.is_zero()).then_some(self.wait.as_millis() as u64)
    }
}

macro_rules! builder_methods {
    () => {
        pub fn owner(mut self, owner: impl Into<String>) -> Self {
            self.opts.owner = owner.into();
            self
        }
        pub fn ttl(mut self, ttl: Duration) -> Self {
            self.opts.ttl = ttl;
            self
        }
        pub fn wait(mut self, wait: Duration) -> Self {
            self.opts.wait = wait;
            self
        }
        pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
            self.opts.heartbeat = Some(heartbeat);
            self
        }
        pub fn value(mut self, value: impl Into<String>) -> Self {
            self.opts.value = Some(value.into());
            self
        }
        pub fn drift(mut self, drift: f64) -> Self {
            self.opts.drift = drift;
            self
        }
        pub fn options(mut self, opts: GuardOptions) -> Self {
            self.opts = opts;
            self
        }
    };
}

/// What a guard holds, so one renewal loop serves locks, semaphores and names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Lock,
    Semaphore,
    Name,
}

async fn renew<S: LeaseService>(
    service: &S,
    what: Held,
    key: &str,
    owner: &str,
    token: u64,
) -> Result<(), ApiError> {
    let req = ExtendRequest {
        owner: owner.to_string(),
        token,
        ttl_ms: None,
        request_id: None,
    };
    match what {
        Held::Lock => service.extend_lock(key, req).await.map(|_| ()),
        Held::Semaphore => service.extend_semaphore(key, req).await.map(|_| ()),
        Held::Name => service
            .extend_name(
                key,
                NameExtendRequest {
                    owner: owner.to_string(),
                    token,
                },
            )
            .await
            .map(|_| ()),
    }
}

async fn release<S: LeaseService>(
    service: &S,
    what: Held,
    key: &str,
    owner: &str,
    token: u64,
) -> Result<(), ApiError> {
    let params = ReleaseParams {
        owner: owner.to_string(),
        token,
    };
    match what {
        Held::Lock => service.release_lock(key, params).await.map(|_| ()),
        Held::Semaphore => service.release_semaphore(key, params).await.map(|_| ()),
        Held::Name => service.unregister_name(key, params).await.map(|_| ()),
    }
}

/// Is this error the cluster saying the hold is gone (as opposed to "cannot tell now")?
fn hold_is_gone(e: &ApiError) -> bool {
    matches!(
        e.code,
        ErrorCode::NotOwner
            | ErrorCode::LeaseNotFound
            | ErrorCode::NameNotFound
            | ErrorCode::NotFound
    )
}

/// What the cluster granted, and when the request that refreshed it was sent.
struct Grant {
    what: Held,
    key: String,
    owner: String,
    token: u64,
    lease_id: u64,
    t_send: Instant,
}

/// A held lock, semaphore slot or name, renewed in the background.
pub struct LockGuard<S: LeaseService + Clone> {
    service: S,
    what: Held,
    key: String,
    owner: String,
    token: u64,
    lease_id: u64,
    state: watch::Receiver<GuardState>,
    valid_until: watch::Receiver<Instant>,
    renewal: Option<JoinHandle<()>>,
    released: bool,
}

/// An elected leader: a name held with renewal. Same API as [`LockGuard`].
pub type ElectionGuard<S> = LockGuard<S>;
/// A semaphore slot held with renewal.
pub type SemaphoreGuard<S> = LockGuard<S>;

impl<S: LeaseService + Clone> LockGuard<S> {
    /// Start renewing a hold granted by a request sent at `grant.t_send`.
    fn start(service: S, grant: Grant, opts: &GuardOptions, heartbeat: Duration) -> Self {
        let Grant {
            what,
            key,
            owner,
            token,
            lease_id,
            t_send,
        } = grant;
        let (tx, rx) = watch::channel(GuardState::Held);
        let ttl = opts.ttl;
        let drift = opts.drift;
        let (until_tx, until_rx) = watch::channel(t_send + ttl.mul_f64(1.0 - drift));
        let task_service = service.clone();
        let (task_key, task_owner) = (key.clone(), owner.clone());
        let renewal = tokio::spawn(async move {
            let held = HeldBy {
                what,
                key: task_key,
                owner: task_owner,
                token,
            };
            renewal_loop(
                task_service,
                held,
                t_send,
                ttl,
                drift,
                heartbeat,
                tx,
                until_tx,
            )
            .await;
        });
        LockGuard {
            service,
            what,
            key,
            owner,
            token,
            lease_id,
            state: rx,
            valid_until: until_rx,
            renewal: Some(renewal),
            released: false,
        }
    }

    /// The fencing token of this hold: pass it to downstream writes.
    pub fn token(&self) -> u64 {
        self.token
    }

    pub fn lease_id(&self) -> u64 {
        self.lease_id
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn owner(&self) -> &str {
        &self.owner
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
        let mut state = self.state.clone();
        async move {
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
    }

    /// Proclaim a new value (names only).
    pub async fn proclaim(&self, value: impl Into<String>) -> Result<NameRecord, ApiError> {
        self.service
            .proclaim(
                &self.key,
                ProclaimRequest {
                    owner: self.owner.clone(),
                    token: self.token,
                    value: Some(value.into()),
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
        release(&self.service, self.what, &self.key, &self.owner, self.token).await
    }
}

impl<S: LeaseService + Clone> Drop for LockGuard<S> {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        if self.released || matches!(*self.state.borrow(), GuardState::Lost(_)) {
            return;
        }
        // Best effort: release in the background if a runtime is still there.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (service, what, key, owner, token) = (
                self.service.clone(),
                self.what,
                self.key.clone(),
                self.owner.clone(),
                self.token,
            );
            handle.spawn(async move {
                let _ = release(&service, what, &key, &owner, token).await;
            });
        }
    }
}

/// Which hold a renewal loop keeps alive.
struct HeldBy {
    what: Held,
    key: String,
    owner: String,
    token: u64,
}

#[allow(clippy::too_many_arguments)]
async fn renewal_loop<S: LeaseService>(
    service: S,
    held: HeldBy,
    mut t_send: Instant,
    ttl: Duration,
    drift: f64,
    heartbeat: Duration,
    state: watch::Sender<GuardState>,
    valid_until: watch::Sender<Instant>,
) {
    let HeldBy {
        what,
        key,
        owner,
        token,
    } = held;
    let valid_for = ttl.mul_f64(1.0 - drift);
    let mut deadline = t_send + valid_for;
    let mut next = t_send + heartbeat;
    let mut last_error = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                let _ = state.send(GuardState::Lost(LossReason::Unreachable(last_error)));
                return;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let attempt = tokio::select! {
            r = renew(&service, what, &key, &owner, token) => Some(r),
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
                let _ = state.send(GuardState::Lost(LossReason::Expired(e.message)));
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

/// After a wait, re-anchor the client deadline with an immediate renewal.
async fn reanchor<S: LeaseService>(
    service: &S,
    what: Held,
    key: &str,
    owner: &str,
    token: u64,
) -> Result<Instant, ApiError> {
    let sent = Instant::now();
    renew(service, what, key, owner, token).await?;
    Ok(sent)
}

/// Builder for a lock guard: `Lock::new(&svc, "key").ttl(..).wait(..).acquire().await`.
pub struct Lock<'a, S> {
    service: &'a S,
    key: String,
    opts: GuardOptions,
}

impl<'a, S: LeaseService + Clone> Lock<'a, S> {
    pub fn new(service: &'a S, key: impl Into<String>) -> Self {
        Lock {
            service,
            key: key.into(),
            opts: GuardOptions::default(),
        }
    }

    builder_methods!();

    /// Acquire (queueing up to `wait`), then renew in the background.
    pub async fn acquire(self) -> Result<LockGuard<S>, GuardError> {
        let heartbeat = self.opts.heartbeat()?;
        let t_send = Instant::now();
        let hold = self
            .service
            .acquire_lock(
                &self.key,
                AcquireRequest {
                    owner: self.opts.owner.clone(),
                    ttl_ms: Some(self.opts.ttl_ms()),
                    wait_ms: self.opts.wait_ms(),
                    value: self.opts.value.clone(),
                    ..Default::default()
                },
            )
            .await?;
        let t_send = if self.opts.wait.is_zero() {
            t_send
        } else {
            reanchor(self.service, Held::Lock, &self.key, &hold.owner, hold.token).await?
        };
        Ok(LockGuard::start(
            self.service.clone(),
            Grant {
                what: Held::Lock,
                key: self.key,
                owner: hold.owner,
                token: hold.token,
                lease_id: hold.lease_id,
                t_send,
            },
            &self.opts,
            heartbeat,
        ))
    }
}

/// Builder for a semaphore slot: up to `limit` holders at once.
pub struct Semaphore<'a, S> {
    service: &'a S,
    key: String,
    limit: u32,
    opts: GuardOptions,
}

impl<'a, S: LeaseService + Clone> Semaphore<'a, S> {
    pub fn new(service: &'a S, key: impl Into<String>, limit: u32) -> Self {
        Semaphore {
            service,
            key: key.into(),
            limit,
            opts: GuardOptions::default(),
        }
    }

    builder_methods!();

    pub async fn acquire(self) -> Result<SemaphoreGuard<S>, GuardError> {
        let heartbeat = self.opts.heartbeat()?;
        let t_send = Instant::now();
        let slot = self
            .service
            .acquire_semaphore(
                &self.key,
                SemaphoreAcquireRequest {
                    owner: self.opts.owner.clone(),
                    limit: self.limit,
                    ttl_ms: Some(self.opts.ttl_ms()),
                    wait_ms: self.opts.wait_ms(),
                    value: self.opts.value.clone(),
                    ..Default::default()
                },
            )
            .await?;
        let t_send = if self.opts.wait.is_zero() {
            t_send
        } else {
            reanchor(
                self.service,
                Held::Semaphore,
                &self.key,
                &slot.owner,
                slot.token,
            )
            .await?
        };
        Ok(LockGuard::start(
            self.service.clone(),
            Grant {
                what: Held::Semaphore,
                key: self.key,
                owner: slot.owner,
                token: slot.token,
                lease_id: slot.lease_id,
                t_send,
            },
            &self.opts,
            heartbeat,
        ))
    }
}

/// Leader election on a name: `Election::new(&svc, "svc/leader", my_addr).campaign().await`.
pub struct Election<'a, S> {
    service: &'a S,
    name: String,
    opts: GuardOptions,
}

impl<'a, S: LeaseService + Clone> Election<'a, S> {
    /// Campaign for `name`, publishing `value` (for example this instance's address).
    pub fn new(service: &'a S, name: impl Into<String>, value: impl Into<String>) -> Self {
        Election {
            service,
            name: name.into(),
            opts: GuardOptions {
                ttl: Duration::from_secs(10),
                value: Some(value.into()),
                ..GuardOptions::default()
            },
        }
    }

    builder_methods!();

    /// Wait (FIFO with the other candidates) until elected; `wait` bounds each queued
    /// request, and the campaign goes on until elected (or an error other than "taken").
    pub async fn campaign(self) -> Result<ElectionGuard<S>, GuardError> {
        let heartbeat = self.opts.heartbeat()?;
        let per_request = if self.opts.wait.is_zero() {
            Duration::from_secs(60)
        } else {
            self.opts.wait
        };
        loop {
            let result = self
                .service
                .register_name(
                    &self.name,
                    RegisterRequest {
                        owner: self.opts.owner.clone(),
                        value: self.opts.value.clone(),
                        ttl_ms: Some(self.opts.ttl_ms()),
                        wait_ms: Some(per_request.as_millis() as u64),
                        ..Default::default()
                    },
                )
                .await;
            match result {
                Ok(record) => {
                    let t_send = reanchor(
                        self.service,
                        Held::Name,
                        &self.name,
                        &record.owner,
                        record.token,
                    )
                    .await?;
                    return Ok(LockGuard::start(
                        self.service.clone(),
                        Grant {
                            what: Held::Name,
                            key: self.name,
                            owner: record.owner,
                            token: record.token,
                            lease_id: record.lease_id,
                            t_send,
                        },
                        &self.opts,
                        heartbeat,
                    ));
                }
                Err(e) if e.code == ErrorCode::NameTaken => continue,
                Err(e) if e.code == ErrorCode::Unavailable || e.code == ErrorCode::Timeout => {
                    tokio::time::sleep(heartbeat.min(Duration::from_millis(500))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Try once: elected now, or `name_taken`.
    pub async fn try_campaign(self) -> Result<ElectionGuard<S>, GuardError> {
        let heartbeat = self.opts.heartbeat()?;
        let t_send = Instant::now();
        let record = self
            .service
            .register_name(
                &self.name,
                RegisterRequest {
                    owner: self.opts.owner.clone(),
                    value: self.opts.value.clone(),
                    ttl_ms: Some(self.opts.ttl_ms()),
                    ..Default::default()
                },
            )
            .await?;
        Ok(LockGuard::start(
            self.service.clone(),
            Grant {
                what: Held::Name,
                key: self.name,
                owner: record.owner,
                token: record.token,
                lease_id: record.lease_id,
                t_send,
            },
            &self.opts,
            heartbeat,
        ))
    }
}

/// Who leads `name` now, if anyone (a linearizable whereis).
pub async fn leader<S: LeaseService>(
    service: &S,
    name: &str,
) -> Result<Option<NameRecord>, ApiError> {
    match service.get_name(name, ReadParams::default()).await {
        Ok(state) => Ok(state.record.map(|r| NameRecord {
            name: state.name,
            owner: r.owner,
            value: r.value,
            token: r.token,
            lease_id: r.lease_id,
            registered_at_ms: r.registered_at_ms,
            expires_in_ms: r.expires_in_ms,
        })),
        Err(e) if e.code == ErrorCode::NameNotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Run `work` while holding `key`; release afterwards. If the lock is lost while `work`
/// runs, `work` is dropped (cancelled) and the result is [`GuardError::Lost`].
pub async fn with_lock<S, F, Fut, T>(
    service: &S,
    key: &str,
    opts: GuardOptions,
    work: F,
) -> Result<T, GuardError>
where
    S: LeaseService + Clone,
    F: FnOnce(u64) -> Fut,
    Fut: Future<Output = T>,
{
    let guard = Lock::new(service, key).options(opts).acquire().await?;
    let lost = guard.lost();
    let outcome = tokio::select! {
        out = work(guard.token()) => Ok(out),
        reason = lost => Err(GuardError::Lost(reason)),
    };
    if outcome.is_ok() {
        guard
            .release()
            .await
            .or_else(|e| if hold_is_gone(&e) { Ok(()) } else { Err(e) })?;
    }
    outcome
}

/// Rejects writes that carry an older fencing token than one already seen, per resource.
/// A downstream store embeds one and checks every write's token.
#[derive(Debug, Default)]
pub struct Fence {
    highest: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing token {token} for {resource:?}: {highest} was already seen")]
pub struct StaleToken {
    pub resource: String,
    pub token: u64,
    pub highest: u64,
}

impl Fence {
    pub fn new() -> Self {
        Fence::default()
    }

    /// Accept `token` for `resource` if it is at least the highest seen, and remember it.
    pub fn check(&self, resource: &str, token: u64) -> Result<(), StaleToken> {
        // The map holds plain integers; a panic while holding it cannot leave it invalid.
        let mut highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        let seen = highest.entry(resource.to_string()).or_insert(0);
        if token < *seen {
            return Err(StaleToken {
                resource: resource.to_string(),
                token,
                highest: *seen,
            });
        }
        *seen = token;
        Ok(())
    }

    pub fn highest(&self, resource: &str) -> Option<u64> {
        let highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        highest.get(resource).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_rejects_older_tokens_per_resource() {
        let fence = Fence::new();
        fence.check("a", 5).unwrap();
        fence.check("a", 5).unwrap();
        fence.check("a", 7).unwrap();
        let err = fence.check("a", 6).unwrap_err();
        assert_eq!((err.token, err.highest), (6, 7));
        fence.check("b", 1).unwrap();
        assert_eq!(fence.highest("a"), Some(7));
    }

    #[test]
    fn heartbeat_must_be_below_half_the_ttl() {
        let mut opts = GuardOptions {
            ttl: Duration::from_secs(3),
            ..GuardOptions::default()
        };
        assert_eq!(opts.heartbeat().unwrap(), Duration::from_secs(1));
        opts.heartbeat = Some(Duration::from_millis(1500));
        assert!(matches!(opts.heartbeat(), Err(GuardError::Options(_))));
        opts.heartbeat = Some(Duration::from_millis(1499));
        assert!(opts.heartbeat().is_ok());
        opts.drift = 0.6;
        assert!(opts.heartbeat().is_err());
    }
}
