//! What a guard holds, and the one place that maps a lock, a semaphore slot or a name onto
//! the [`LeaseService`] calls that acquire, renew and release it.

use tokio::time::Instant;

use super::options::GuardOptions;
use crate::error::{ApiError, ErrorCode};
use crate::service::LeaseService;
use crate::wire::{
    AcquireRequest, ExtendRequest, NameExtendRequest, RegisterRequest, ReleaseParams,
    SemaphoreAcquireRequest,
};

/// The kind of resource a guard holds, so one acquire path and one renewal loop serve
/// locks, semaphores and names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Lock,
    /// A slot of a semaphore with up to `limit` holders.
    Semaphore {
        limit: u32,
    },
    /// A name (leadership); the value it publishes comes from the options.
    Name,
}

impl Target {
    /// Send one acquire of `key` (queueing up to `wait_ms` when set) with the owner, TTL
    /// and value of `opts`, and map the reply to a [`Grant`] stamped with the send time.
    pub(super) async fn acquire<S: LeaseService>(
        self,
        service: &S,
        key: &str,
        opts: &GuardOptions,
        wait_ms: Option<u64>,
    ) -> Result<Grant, ApiError> {
        let t_send = Instant::now();
        let owner = opts.owner.clone();
        // Under an existing lease, or a new implicit one with the guard's TTL.
        let (ttl_ms, lease) = match opts.lease_id {
            Some(lease_id) => (None, Some(lease_id)),
            None => (Some(opts.ttl_ms()), None),
        };
        let value = opts.value.clone();
        let (owner, token, lease_id) = match self {
            Target::Lock => {
                let req = AcquireRequest {
                    owner,
                    ttl_ms,
                    lease_id: lease,
                    wait_ms,
                    value,
                    lock_delay_ms: opts.lock_delay.map(|d| d.as_millis() as u64),
                    ..Default::default()
                };
                let hold = service.acquire_lock(key, req).await?;
                (hold.owner, hold.token, hold.lease_id)
            }
            Target::Semaphore { limit } => {
                let req = SemaphoreAcquireRequest {
                    owner,
                    limit,
                    ttl_ms,
                    lease_id: lease,
                    wait_ms,
                    value,
                    ..Default::default()
                };
                let slot = service.acquire_semaphore(key, req).await?;
                (slot.owner, slot.token, slot.lease_id)
            }
            Target::Name => {
                let req = RegisterRequest {
                    owner,
                    value,
                    ttl_ms,
                    lease_id: lease,
                    wait_ms,
                    ..Default::default()
                };
                let record = service.register_name(key, req).await?;
                (record.owner, record.token, record.lease_id)
            }
        };
        Ok(Grant {
            hold: Hold {
                target: self,
                key: key.to_string(),
                owner,
                token,
            },
            lease_id,
            t_send,
        })
    }
}

/// One granted hold: what it is, and the owner and token that prove it.
#[derive(Debug, Clone)]
pub(super) struct Hold {
    pub(super) target: Target,
    pub(super) key: String,
    pub(super) owner: String,
    pub(super) token: u64,
}

impl Hold {
    /// Renew the hold's lease (a keepalive: the TTL is unchanged).
    pub(super) async fn extend<S: LeaseService>(&self, service: &S) -> Result<(), ApiError> {
        let key = self.key.as_str();
        match self.target {
            Target::Lock => service.extend_lock(key, self.keepalive()).await.map(|_| ()),
            Target::Semaphore { .. } => service
                .extend_semaphore(key, self.keepalive())
                .await
                .map(|_| ()),
            Target::Name => {
                let req = NameExtendRequest {
                    owner: self.owner.clone(),
                    token: self.token,
                    request_id: None,
                };
                service.extend_name(key, req).await.map(|_| ())
            }
        }
    }

    fn keepalive(&self) -> ExtendRequest {
        ExtendRequest {
            owner: self.owner.clone(),
            token: self.token,
            ttl_ms: None,
            request_id: None,
        }
    }

    /// Release the lock or slot, or unregister the name.
    pub(super) async fn release<S: LeaseService>(&self, service: &S) -> Result<(), ApiError> {
        let key = self.key.as_str();
        let params = ReleaseParams {
            owner: self.owner.clone(),
            token: self.token,
            request_id: None,
            force: None,
        };
        match self.target {
            Target::Lock => service.release_lock(key, params).await.map(|_| ()),
            Target::Semaphore { .. } => service.release_semaphore(key, params).await.map(|_| ()),
            Target::Name => service.unregister_name(key, params).await.map(|_| ()),
        }
    }
}

/// What the cluster granted, and when the request that refreshed it was sent.
pub(super) struct Grant {
    pub(super) hold: Hold,
    pub(super) lease_id: u64,
    pub(super) t_send: Instant,
}

impl Grant {
    /// After a wait, re-anchor the client deadline with an immediate renewal: the grant
    /// then dates from when that renewal was sent.
    pub(super) async fn reanchor<S: LeaseService>(self, service: &S) -> Result<Grant, ApiError> {
        let sent = Instant::now();
        self.hold.extend(service).await?;
        Ok(Grant {
            t_send: sent,
            ..self
        })
    }
}

/// Is this error the cluster saying the hold is gone (as opposed to "cannot tell now")?
pub(super) fn hold_is_gone(e: &ApiError) -> bool {
    matches!(
        e.code,
        ErrorCode::NotOwner
            | ErrorCode::LeaseNotFound
            | ErrorCode::NameNotFound
            | ErrorCode::NotFound
    )
}
