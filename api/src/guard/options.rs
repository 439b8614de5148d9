//! Guard options and the states, loss reasons and errors a guard reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::ApiError;

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
    /// An operator force-released the hold (`DELETE ...?force=true`).
    Stolen(String),
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossReason::Expired(m) => write!(f, "the hold ended on the cluster: {m}"),
            LossReason::Unreachable(m) => {
                write!(f, "renewals failed until the client deadline passed: {m}")
            }
            LossReason::Released => write!(f, "released"),
            LossReason::Stolen(m) => write!(f, "released by an operator: {m}"),
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
    /// Hold under this existing lease (a session with many holds) instead of a new
    /// implicit one. The guard renews that lease; releasing the guard leaves it alive.
    pub lease_id: Option<u64>,
    /// Lock-delay (locks only): if the hold ends by expiry, nobody gets the key for this
    /// long after (Chubby, Consul).
    pub lock_delay: Option<Duration>,
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
            lease_id: None,
            lock_delay: None,
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
    pub(super) fn heartbeat(&self) -> Result<Duration, GuardError> {
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

    pub(super) fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    pub(super) fn wait_ms(&self) -> Option<u64> {
        (!self.wait.is_zero()).then_some(self.wait.as_millis() as u64)
    }
}
