//! The builders — [`Lock`], [`Semaphore`], [`Election`] — over one acquire path, plus
//! [`with_lock`] and [`leader`].

use std::future::Future;
use std::time::Duration;

use super::held::{ElectionGuard, GuardHandle, LockGuard, SemaphoreGuard};
use super::options::{GuardError, GuardOptions};
use super::target::{hold_is_gone, Target};
use crate::error::{ApiError, ErrorCode};
use crate::service::LeaseService;
use crate::wire::{NameRecord, ReadParams};

macro_rules! builder_methods {
    () => {
        pub fn owner(mut self, owner: impl Into<String>) -> Self {
            self.spec.opts.owner = owner.into();
            self
        }
        pub fn ttl(mut self, ttl: Duration) -> Self {
            self.spec.opts.ttl = ttl;
            self
        }
        pub fn wait(mut self, wait: Duration) -> Self {
            self.spec.opts.wait = wait;
            self
        }
        pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
            self.spec.opts.heartbeat = Some(heartbeat);
            self
        }
        pub fn value(mut self, value: impl Into<String>) -> Self {
            self.spec.opts.value = Some(value.into());
            self
        }
        pub fn drift(mut self, drift: f64) -> Self {
            self.spec.opts.drift = drift;
            self
        }
        pub fn options(mut self, opts: GuardOptions) -> Self {
            self.spec.opts = opts;
            self
        }
        /// Hold under an existing lease (one session, many holds). The guard's TTL is
        /// then at most the lease's, which it reads first.
        pub fn lease(mut self, lease_id: u64) -> Self {
            self.spec.opts.lease_id = Some(lease_id);
            self
        }
    };
}

/// What every builder carries: the service, what to hold, and the options.
struct Spec<'a, S> {
    service: &'a S,
    target: Target,
    key: String,
    opts: GuardOptions,
}

/// What to do after an acquire was refused.
enum Retry {
    Fail,
    Now,
    After(Duration),
}

/// Given the refusal and the heartbeat, whether to try again.
type RetryPolicy = fn(&ApiError, Duration) -> Retry;

fn never(_: &ApiError, _: Duration) -> Retry {
    Retry::Fail
}

/// A campaign queues again while the name is taken and backs off while the cluster
/// cannot answer.
fn until_elected(e: &ApiError, heartbeat: Duration) -> Retry {
    match e.code {
        ErrorCode::NameTaken => Retry::Now,
        ErrorCode::Unavailable | ErrorCode::Timeout => {
            Retry::After(heartbeat.min(Duration::from_millis(500)))
        }
        _ => Retry::Fail,
    }
}

impl<'a, S: LeaseService + Clone> Spec<'a, S> {
    fn new(service: &'a S, target: Target, key: String, opts: GuardOptions) -> Self {
        Spec {
            service,
            target,
            key,
            opts,
        }
    }

    /// The one acquire path: check the options, send the acquire (retrying refusals as
    /// `retry` says), and start renewing. With `wait_ms` set the request may have queued,
    /// and with a `lease_id` the hold joins a lease renewed earlier, so in both cases the
    /// client deadline is first re-anchored with an immediate renewal.
    async fn acquire(
        mut self,
        wait_ms: Option<u64>,
        retry: RetryPolicy,
    ) -> Result<LockGuard<S>, GuardError> {
        if let Some(lease_id) = self.opts.lease_id {
            // The client deadline must not outlast the lease the hold lives under.
            let lease = self.service.get_lease(lease_id).await?;
            self.opts.ttl = self.opts.ttl.min(Duration::from_millis(lease.ttl_ms));
        }
        let heartbeat = self.opts.heartbeat()?;
        let grant = loop {
            match self
                .target
                .acquire(self.service, &self.key, &self.opts, wait_ms)
                .await
            {
                Ok(grant) => break grant,
                Err(e) => match retry(&e, heartbeat) {
                    Retry::Fail => return Err(e.into()),
                    Retry::Now => {}
                    Retry::After(pause) => tokio::time::sleep(pause).await,
                },
            }
        };
        // Re-anchor the client deadline with an immediate renewal when the acquire did
        // not itself start the lease's TTL afresh: after a wait (the server kept the
        // waiting lease alive), and under an existing lease (the acquire attaches to it
        // without renewing it: its TTL runs from its last renewal, which may be long
        // before this acquire was sent).
        let grant = match (wait_ms, self.opts.lease_id) {
            (None, None) => grant,
            _ => grant.reanchor(self.service).await?,
        };
        Ok(LockGuard::start(
            self.service.clone(),
            grant,
            &self.opts,
            heartbeat,
        ))
    }
}

/// Builder for a lock guard: `Lock::new(&svc, "key").ttl(..).wait(..).acquire().await`.
pub struct Lock<'a, S> {
    spec: Spec<'a, S>,
}

impl<'a, S: LeaseService + Clone> Lock<'a, S> {
    pub fn new(service: &'a S, key: impl Into<String>) -> Self {
        Lock {
            spec: Spec::new(service, Target::Lock, key.into(), GuardOptions::default()),
        }
    }

    builder_methods!();

    /// Lock-delay: if this hold ends by expiry (its holder died), nobody gets the key
    /// for this long after.
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.spec.opts.lock_delay = Some(delay);
        self
    }

    /// Acquire (queueing up to `wait`), then renew in the background.
    pub async fn acquire(self) -> Result<LockGuard<S>, GuardError> {
        let wait_ms = self.spec.opts.wait_ms();
        self.spec.acquire(wait_ms, never).await
    }
}

/// Builder for a semaphore slot: up to `limit` holders at once.
pub struct Semaphore<'a, S> {
    spec: Spec<'a, S>,
}

impl<'a, S: LeaseService + Clone> Semaphore<'a, S> {
    pub fn new(service: &'a S, key: impl Into<String>, limit: u32) -> Self {
        Semaphore {
            spec: Spec::new(
                service,
                Target::Semaphore { limit },
                key.into(),
                GuardOptions::default(),
            ),
        }
    }

    builder_methods!();

    pub async fn acquire(self) -> Result<SemaphoreGuard<S>, GuardError> {
        let wait_ms = self.spec.opts.wait_ms();
        self.spec.acquire(wait_ms, never).await
    }
}

/// Leader election on a name: `Election::new(&svc, "svc/leader", my_addr).campaign().await`.
pub struct Election<'a, S> {
    spec: Spec<'a, S>,
}

impl<'a, S: LeaseService + Clone> Election<'a, S> {
    /// Campaign for `name`, publishing `value` (for example this instance's address).
    pub fn new(service: &'a S, name: impl Into<String>, value: impl Into<String>) -> Self {
        let opts = GuardOptions {
            ttl: Duration::from_secs(10),
            value: Some(value.into()),
            ..GuardOptions::default()
        };
        Election {
            spec: Spec::new(service, Target::Name, name.into(), opts),
        }
    }

    builder_methods!();

    /// Wait (FIFO with the other candidates) until elected; `wait` bounds each queued
    /// request, and the campaign goes on until elected (or an error other than "taken").
    pub async fn campaign(self) -> Result<ElectionGuard<S>, GuardError> {
        let per_request = if self.spec.opts.wait.is_zero() {
            Duration::from_secs(60)
        } else {
            self.spec.opts.wait
        };
        let wait_ms = Some(per_request.as_millis() as u64);
        self.spec.acquire(wait_ms, until_elected).await
    }

    /// Try once: elected now, or `name_taken`.
    pub async fn try_campaign(self) -> Result<ElectionGuard<S>, GuardError> {
        self.spec.acquire(None, never).await
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

/// Run `work` while holding `key`; release afterwards. `work` gets a [`GuardHandle`]: the
/// fencing token, the lease, the client deadline and the loss signal. If the lock is lost
/// while `work` runs, `work` is dropped (cancelled) and the result is [`GuardError::Lost`].
pub async fn with_lock<S, F, Fut, T>(
    service: &S,
    key: &str,
    opts: GuardOptions,
    work: F,
) -> Result<T, GuardError>
where
    S: LeaseService + Clone,
    F: FnOnce(GuardHandle) -> Fut,
    Fut: Future<Output = T>,
{
    let guard = Lock::new(service, key).options(opts).acquire().await?;
    let lost = guard.lost();
    let outcome = tokio::select! {
        out = work(guard.handle()) => Ok(out),
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
