//! `NodeService`: the node's implementation of the one service trait.
//!
//! It is the one place that validates input (see ARCHITECTURE.md, "Validation"): every
//! caller, the HTTP router and an embedding application alike, goes through it, so bad
//! input gets the same 4xx error naming the field wherever it comes from. It turns
//! requests into replicated commands or reads and shapes the replies as wire types.
//!
//! - [`resources`]: what locks, names and semaphores share (a resource with a limit, FIFO
//!   waiters and holders): acquire, extend, release, read, list, history.
//! - [`locks`], [`names`], [`semaphores`]: where the three differ (reply shapes, the
//!   lock-delay, `proclaim`, the slot list).
//! - [`leases`]: create, keepalive, revoke, get and list leases.
//! - [`waiting`]: blocking acquires, blocking queries and wait-for-release, served on the
//!   node the client is connected to and woken by the local state machine's applies.
//! - [`cluster`]: status, membership changes, readiness and metrics.
//! - [`convert`]: state-machine values and errors to wire types and `ApiError`s.

mod cluster;
mod convert;
mod leases;
mod locks;
mod names;
mod resources;
mod semaphores;
mod waiting;

use std::sync::Arc;

use async_trait::async_trait;
use leasehold_api::auth::{Principal, Role};
use leasehold_api::error::ApiError;
use leasehold_api::service::LeaseService;
use leasehold_api::wire::*;
use leasehold_api::Limits;
use leasehold_raft::command::{
    BusyReason, Caller, Command, CommandResult, HoldView, Kind, LeaseId, Proposal,
};
use leasehold_raft::state::{Lease, LeaseState};

use crate::core::Core;
use convert::core_error;

/// The node's service, acting for one caller: trusted (auth off, or an embedding
/// application) or one authenticated [`Principal`].
#[derive(Clone)]
pub struct NodeService {
    core: Arc<Core>,
    limits: Arc<Limits>,
    principal: Option<Arc<Principal>>,
}

impl NodeService {
    pub(crate) fn new(core: Arc<Core>, limits: Limits) -> Self {
        NodeService {
            core,
            limits: Arc::new(limits),
            principal: None,
        }
    }

    /// The same service acting for `principal`: held to its role, its key prefixes, its
    /// own leases and its quota (SPEC §5 "Auth").
    pub fn for_principal(&self, principal: Arc<Principal>) -> NodeService {
        NodeService {
            principal: Some(principal),
            ..self.clone()
        }
    }

    /// The principal this service acts for (`None`: trusted).
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_deref()
    }

    /// The caller as the replicated state sees it (carried with every proposal).
    fn caller(&self) -> Option<Caller> {
        self.principal.as_ref().map(|p| Caller {
            principal: p.name.clone(),
            admin: p.is_admin(),
            max_leases: p.max_leases,
        })
    }

    /// 403 unless the caller has `needed` (trusted callers may do anything).
    fn allow(&self, needed: Role, what: &str) -> Result<(), ApiError> {
        match &self.principal {
            Some(p) => p.require_role(needed, what),
            None => Ok(()),
        }
    }

    /// 403 unless the caller has `needed` and `key` of `kind` is within its prefixes.
    fn allow_key(&self, needed: Role, what: &str, kind: Kind, key: &str) -> Result<(), ApiError> {
        let Some(p) = &self.principal else {
            return Ok(());
        };
        p.require_role(needed, what)?;
        p.require_key(kind.as_str(), key)
    }

    /// May the caller see `key` (lists and the expired ring show only those)?
    fn may_see(&self, key: &str) -> bool {
        match &self.principal {
            Some(p) => p.may_touch(key),
            None => true,
        }
    }

    /// May the caller use (see, keep alive, revoke, attach to) `lease`?
    fn may_use_lease(&self, lease: &Lease) -> bool {
        self.lease_access(lease).is_ok()
    }

    fn lease_access(&self, lease: &Lease) -> Result<(), ApiError> {
        match self.caller() {
            Some(caller) => LeaseState::lease_owner_check(lease, &caller)
                .map_err(|e| convert::sm_error(Kind::Lock, "", e)),
            None => Ok(()),
        }
    }

    /// The limits this service enforces (`[limits]` of the node's config).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn read<R>(&self, f: impl FnOnce(&LeaseState) -> R) -> R {
        self.core.read(f)
    }

    async fn write(
        &self,
        request_id: Option<String>,
        command: Command,
    ) -> Result<CommandResult, ApiError> {
        self.write_indexed(request_id, command)
            .await
            .map(|(_, result)| result)
    }

    /// Write, and return the log index the command was applied at with its result.
    async fn write_indexed(
        &self,
        request_id: Option<String>,
        command: Command,
    ) -> Result<(u64, CommandResult), ApiError> {
        self.core
            .write(Proposal {
                request_id,
                command,
                caller: self.caller(),
            })
            .await
            .map_err(core_error)
    }

    /// A linearizable read barrier unless the caller asked for a stale (local) read.
    async fn barrier(&self, stale: bool) -> Result<(), ApiError> {
        // The fault suite's bug switch (off unless built with `bug-switches` and named in
        // `LEASEHOLD_BUG`): a follower serves a linearizable read from its own state.
        let bugged =
            crate::bugs::active(crate::bugs::Bug::StaleFollowerReads) && !self.core.is_leader();
        if stale || bugged {
            // Even a stale read is refused from a node whose storage failed: its state is
            // frozen at the fault and would only grow older.
            return self.core.check_storage().map_err(core_error);
        }
        self.core.read_barrier().await.map_err(core_error)
    }

    /// The 409 for a busy resource, naming the time left on the first holder's lease;
    /// `waited`: the request queued and its wait ran out.
    async fn busy(
        &self,
        kind: Kind,
        key: &str,
        holders: &[HoldView],
        reason: &BusyReason,
        waited: bool,
    ) -> ApiError {
        let left = match holders.first() {
            Some(h) => self
                .expires_in(vec![h.lease_id], false)
                .await
                .into_iter()
                .next()
                .flatten(),
            None => None,
        };
        convert::busy_error(kind, key, holders, reason, left, waited)
    }

    /// Time left on each lease: exact from the leader's lease actor, else `None` (the
    /// caller reports the full TTL as an upper bound).
    async fn expires_in(&self, lease_ids: Vec<LeaseId>, stale: bool) -> Vec<Option<u64>> {
        if stale && !self.core.is_leader() {
            return vec![None; lease_ids.len()];
        }
        self.core.remaining_ms(lease_ids).await
    }
}

/// The trait's methods, each handed to the module of its concern.
#[async_trait]
impl LeaseService for NodeService {
    async fn create_lease(&self, req: CreateLeaseRequest) -> Result<LeaseGrant, ApiError> {
        self.allow(Role::Write, "creating a lease")?;
        self.create_lease_impl(req).await
    }
    async fn keepalive(&self, lease_id: u64) -> Result<KeepaliveResponse, ApiError> {
        self.allow(Role::Write, "keeping a lease alive")?;
        self.core.metrics().keepalives.inc();
        self.keepalive_impl(lease_id).await
    }
    async fn revoke_lease(
        &self,
        lease_id: u64,
        params: RevokeParams,
    ) -> Result<RevokeResponse, ApiError> {
        self.allow(Role::Write, "revoking a lease")?;
        self.revoke_lease_impl(lease_id, params).await
    }
    async fn get_lease(&self, lease_id: u64) -> Result<LeaseInfo, ApiError> {
        self.allow(Role::Read, "reading a lease")?;
        self.get_lease_impl(lease_id).await
    }
    async fn list_leases(&self, params: LeaseListParams) -> Result<LeaseList, ApiError> {
        self.allow(Role::Read, "listing leases")?;
        self.list_leases_impl(params).await
    }

    async fn acquire_lock(&self, key: &str, req: AcquireRequest) -> Result<LockHolder, ApiError> {
        self.allow_key(Role::Write, "acquiring a lock", Kind::Lock, key)?;
        self.acquire_lock_impl(key, req).await
    }
    async fn extend_lock(&self, key: &str, req: ExtendRequest) -> Result<ExtendResponse, ApiError> {
        self.allow_key(Role::Write, "extending a lock", Kind::Lock, key)?;
        self.core.metrics().keepalives.inc();
        self.extend_checked(leasehold_raft::command::Kind::Lock, key, req)
            .await
    }
    async fn release_lock(
        &self,
        key: &str,
        params: ReleaseParams,
    ) -> Result<ReleaseResponse, ApiError> {
        self.allow_key(Role::Write, "releasing a lock", Kind::Lock, key)?;
        self.release_checked(leasehold_raft::command::Kind::Lock, key, params)
            .await
    }
    async fn get_lock(&self, key: &str, params: ReadParams) -> Result<LockState, ApiError> {
        self.allow_key(Role::Read, "reading a lock", Kind::Lock, key)?;
        self.get_lock_impl(key, params).await
    }
    async fn wait_release(
        &self,
        key: &str,
        params: WaitReleaseParams,
    ) -> Result<WaitReleaseResponse, ApiError> {
        self.allow_key(Role::Read, "waiting for a release", Kind::Lock, key)?;
        self.wait_release_impl(key, params).await
    }
    async fn lock_history(&self, key: &str) -> Result<HistoryResponse, ApiError> {
        self.allow_key(Role::Read, "reading a lock's history", Kind::Lock, key)?;
        self.history(leasehold_raft::command::Kind::Lock, key).await
    }
    async fn semaphore_history(&self, key: &str) -> Result<HistoryResponse, ApiError> {
        self.allow_key(
            Role::Read,
            "reading a semaphore's history",
            Kind::Semaphore,
            key,
        )?;
        self.history(Kind::Semaphore, key).await
    }
    async fn list_semaphores(&self, params: ListParams) -> Result<SemaphoreList, ApiError> {
        self.allow(Role::Read, "listing semaphores")?;
        self.list_semaphores_impl(params).await
    }
    async fn name_history(&self, name: &str) -> Result<HistoryResponse, ApiError> {
        self.allow_key(Role::Read, "reading a name's history", Kind::Name, name)?;
        self.history(Kind::Name, name).await
    }
    async fn list_locks(&self, params: ListParams) -> Result<LockList, ApiError> {
        self.allow(Role::Read, "listing locks")?;
        self.list_locks_impl(params).await
    }
    async fn expired(&self, params: ExpiredParams) -> Result<ExpiredList, ApiError> {
        self.allow(Role::Read, "listing expired holds")?;
        self.expired_impl(params).await
    }

    async fn acquire_semaphore(
        &self,
        key: &str,
        req: SemaphoreAcquireRequest,
    ) -> Result<SemaphoreSlot, ApiError> {
        self.allow_key(
            Role::Write,
            "acquiring a semaphore slot",
            Kind::Semaphore,
            key,
        )?;
        self.acquire_semaphore_impl(key, req).await
    }
    async fn extend_semaphore(
        &self,
        key: &str,
        req: ExtendRequest,
    ) -> Result<ExtendResponse, ApiError> {
        self.allow_key(
            Role::Write,
            "extending a semaphore slot",
            Kind::Semaphore,
            key,
        )?;
        self.core.metrics().keepalives.inc();
        self.extend_checked(leasehold_raft::command::Kind::Semaphore, key, req)
            .await
    }
    async fn release_semaphore(
        &self,
        key: &str,
        params: ReleaseParams,
    ) -> Result<ReleaseResponse, ApiError> {
        self.allow_key(
            Role::Write,
            "releasing a semaphore slot",
            Kind::Semaphore,
            key,
        )?;
        self.release_checked(leasehold_raft::command::Kind::Semaphore, key, params)
            .await
    }
    async fn get_semaphore(
        &self,
        key: &str,
        params: ReadParams,
    ) -> Result<SemaphoreState, ApiError> {
        self.allow_key(Role::Read, "reading a semaphore", Kind::Semaphore, key)?;
        self.get_semaphore_impl(key, params).await
    }

    async fn register_name(
        &self,
        name: &str,
        req: RegisterRequest,
    ) -> Result<NameRecord, ApiError> {
        self.allow_key(Role::Write, "registering a name", Kind::Name, name)?;
        self.register_name_impl(name, req).await
    }
    async fn get_name(&self, name: &str, params: ReadParams) -> Result<NameState, ApiError> {
        self.allow_key(Role::Read, "reading a name", Kind::Name, name)?;
        self.get_name_impl(name, params).await
    }
    async fn proclaim(&self, name: &str, req: ProclaimRequest) -> Result<NameRecord, ApiError> {
        self.allow_key(Role::Write, "proclaiming a name's value", Kind::Name, name)?;
        self.proclaim_impl(name, req).await
    }
    async fn extend_name(
        &self,
        name: &str,
        req: NameExtendRequest,
    ) -> Result<ExtendResponse, ApiError> {
        self.allow_key(Role::Write, "extending a name", Kind::Name, name)?;
        self.core.metrics().keepalives.inc();
        self.extend_name_impl(name, req).await
    }
    async fn unregister_name(
        &self,
        name: &str,
        params: ReleaseParams,
    ) -> Result<ReleaseResponse, ApiError> {
        self.allow_key(Role::Write, "unregistering a name", Kind::Name, name)?;
        self.release_checked(leasehold_raft::command::Kind::Name, name, params)
            .await
    }
    async fn list_names(&self, params: ListParams) -> Result<NameList, ApiError> {
        self.allow(Role::Read, "listing names")?;
        self.list_names_impl(params).await
    }

    async fn cluster_status(&self) -> Result<ClusterStatus, ApiError> {
        self.allow(Role::Read, "reading the cluster status")?;
        self.cluster_status_impl().await
    }
    async fn add_member(&self, req: AddMemberRequest) -> Result<ClusterStatus, ApiError> {
        self.allow(Role::Admin, "adding a member")?;
        self.add_member_impl(req).await
    }
    async fn remove_member(&self, id: u64) -> Result<ClusterStatus, ApiError> {
        self.allow(Role::Admin, "removing a member")?;
        self.remove_member_impl(id).await
    }
    async fn ready(&self) -> Result<(), ApiError> {
        self.barrier(false).await
    }
    async fn metrics_text(&self) -> String {
        self.metrics_text_impl().await
    }
    fn observe_request(
        &self,
        method: &str,
        route: &str,
        status: u16,
        elapsed: std::time::Duration,
    ) {
        self.core
            .metrics()
            .observe_http(method, route, status, elapsed);
    }
    async fn status_view(&self, params: StatusParams) -> Result<StatusView, ApiError> {
        self.allow(Role::Read, "reading the status page")?;
        self.status_view_impl(params).await
    }
    async fn snapshot(&self) -> Result<Vec<u8>, ApiError> {
        self.allow(Role::Admin, "saving a snapshot of the whole state")?;
        self.snapshot_impl().await
    }
}
