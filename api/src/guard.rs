//! Guards: hold a lock, a semaphore slot or a name (leadership) with background renewal,
//! generic over any [`LeaseService`](crate::service::LeaseService) (the embedded node or
//! the HTTP client).
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

// Layout: `options` (options, states, errors); `target` (what a guard holds and the
// service calls for it); `acquire` (the builders over one acquire path, `with_lock`,
// `leader`); `held` (`LockGuard` and its renewal loop); `fence`.

mod acquire;
mod fence;
mod held;
mod options;
mod target;
#[cfg(test)]
mod tests;

pub use self::acquire::{leader, with_lock, Election, Lock, Semaphore};
pub use self::fence::{Fence, StaleToken};
pub use self::held::{ElectionGuard, GuardHandle, LockGuard, SemaphoreGuard};
pub use self::options::{
    default_owner, GuardError, GuardOptions, GuardState, LossReason, DEFAULT_DRIFT,
};
