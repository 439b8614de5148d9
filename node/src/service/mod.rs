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
use leasehold_api::error::ApiError;
use leasehold_api::service::LeaseService;
use leasehold_api::wire::*;
use leasehold_api::Limits;
use leasehold_raft::command::{Command, CommandResult, LeaseId, Proposal};
use leasehold_raft::state::LeaseState;

use crate::core::Core;
use convert::core_error;

#[derive(Clone)]
pub struct NodeService {
    core: Arc<Core>,
    limits: Arc<Limits>,
}

impl NodeService {
    pub(crate) fn new(core: Arc<Core>, limits: Limits) -> Self {
        NodeService {
            core,
            limits: Arc::new(limits),
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
            })
            .await
            .map_err(core_error)
    }

    /// A linearizable read barrier unless the caller asked for a stale (local) read.
    async fn barrier(&self, stale: bool) -> Result<(), ApiError> {
        if stale {
            return Ok(());
        }
        self.core.read_barrier().await.map_err(core_error)
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
        self.create_lease_impl(req).await
    }
    async fn keepalive(&self, lease_id: u64) -> Result<KeepaliveResponse, ApiError> {
        self.keepalive_impl(lease_id).await
    }
    async fn revoke_lease(&self, lease_id: u64) -> Result<RevokeResponse, ApiError> {
        self.revoke_lease_impl(lease_id).await
    }
    async fn get_lease(&self, lease_id: u64) -> Result<LeaseInfo, ApiError> {
        self.get_lease_impl(lease_id).await
    }
    async fn list_leases(&self, params: LeaseListParams) -> Result<LeaseList, ApiError> {
        self.list_leases_impl(params).await
    }

    async fn acquire_lock(&self, key: &str, req: AcquireRequest) -> Result<LockHolder, ApiError> {
        self.acquire_lock_impl(key, req).await
    }
    async fn extend_lock(&self, key: &str, req: ExtendRequest) -> Result<ExtendResponse, ApiError> {
        self.extend_checked(leasehold_raft::command::Kind::Lock, key, req)
            .await
    }
    async fn release_lock(
        &self,
        key: &str,
        params: ReleaseParams,
    ) -> Result<ReleaseResponse, ApiError> {
        self.release_checked(leasehold_raft::command::Kind::Lock, key, params)
            .await
    }
    async fn get_lock(&self, key: &str, params: ReadParams) -> Result<LockState, ApiError> {
        self.get_lock_impl(key, params).await
    }
    async fn wait_release(
        &self,
        key: &str,
        params: WaitReleaseParams,
    ) -> Result<WaitReleaseResponse, ApiError> {
        self.wait_release_impl(key, params).await
    }
    async fn lock_history(&self, key: &str) -> Result<HistoryResponse, ApiError> {
        self.history(leasehold_raft::command::Kind::Lock, key).await
    }
    async fn list_locks(&self, params: ListParams) -> Result<LockList, ApiError> {
        self.list_locks_impl(params).await
    }
    async fn expired(&self, params: ExpiredParams) -> Result<ExpiredList, ApiError> {
        self.expired_impl(params).await
    }

    async fn acquire_semaphore(
        &self,
        key: &str,
        req: SemaphoreAcquireRequest,
    ) -> Result<SemaphoreSlot, ApiError> {
        self.acquire_semaphore_impl(key, req).await
    }
    async fn extend_semaphore(
        &self,
        key: &str,
        req: ExtendRequest,
    ) -> Result<ExtendResponse, ApiError> {
        self.extend_checked(leasehold_raft::command::Kind::Semaphore, key, req)
            .await
    }
    async fn release_semaphore(
        &self,
        key: &str,
        params: ReleaseParams,
    ) -> Result<ReleaseResponse, ApiError> {
        self.release_checked(leasehold_raft::command::Kind::Semaphore, key, params)
            .await
    }
    async fn get_semaphore(
        &self,
        key: &str,
        params: ReadParams,
    ) -> Result<SemaphoreState, ApiError> {
        self.get_semaphore_impl(key, params).await
    }

    async fn register_name(
        &self,
        name: &str,
        req: RegisterRequest,
    ) -> Result<NameRecord, ApiError> {
        self.register_name_impl(name, req).await
    }
    async fn get_name(&self, name: &str, params: ReadParams) -> Result<NameState, ApiError> {
        self.get_name_impl(name, params).await
    }
    async fn proclaim(&self, name: &str, req: ProclaimRequest) -> Result<NameRecord, ApiError> {
        self.proclaim_impl(name, req).await
    }
    async fn extend_name(
        &self,
        name: &str,
        req: NameExtendRequest,
    ) -> Result<ExtendResponse, ApiError> {
        self.extend_name_impl(name, req).await
    }
    async fn unregister_name(
        &self,
        name: &str,
        params: ReleaseParams,
    ) -> Result<ReleaseResponse, ApiError> {
        self.release_checked(leasehold_raft::command::Kind::Name, name, params)
            .await
    }
    async fn list_names(&self, params: ListParams) -> Result<NameList, ApiError> {
        self.list_names_impl(params).await
    }

    async fn cluster_status(&self) -> Result<ClusterStatus, ApiError> {
        self.cluster_status_impl().await
    }
    async fn add_member(&self, req: AddMemberRequest) -> Result<ClusterStatus, ApiError> {
        self.add_member_impl(req).await
    }
    async fn remove_member(&self, id: u64) -> Result<ClusterStatus, ApiError> {
        self.remove_member_impl(id).await
    }
    async fn ready(&self) -> Result<(), ApiError> {
        self.barrier(false).await
    }
    async fn metrics_text(&self) -> String {
        self.metrics_text_impl()
    }
}
