//! The one service trait. The embedded node and the HTTP client both implement it, so
//! application code is written once and the backend is configuration.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::ApiError;
use crate::wire::*;

pub type Result<T> = std::result::Result<T, ApiError>;

/// Leases, locks, semaphores, names and cluster status (SPEC §3, §6).
///
/// Blocking calls (`acquire_*` with `wait_ms`, reads with `index` + `wait_ms`,
/// `wait_release`) wait inside the call; dropping the future abandons the wait (a queued
/// acquire then leaves the queue).
#[async_trait]
pub trait LeaseService: Send + Sync + 'static {
    // Leases
    async fn create_lease(&self, req: CreateLeaseRequest) -> Result<LeaseGrant>;
    async fn keepalive(&self, lease_id: u64) -> Result<KeepaliveResponse>;
    async fn revoke_lease(&self, lease_id: u64, params: RevokeParams) -> Result<RevokeResponse>;
    async fn get_lease(&self, lease_id: u64) -> Result<LeaseInfo>;
    async fn list_leases(&self, params: LeaseListParams) -> Result<LeaseList>;

    // Locks
    async fn acquire_lock(&self, key: &str, req: AcquireRequest) -> Result<LockHolder>;
    async fn extend_lock(&self, key: &str, req: ExtendRequest) -> Result<ExtendResponse>;
    async fn release_lock(&self, key: &str, params: ReleaseParams) -> Result<ReleaseResponse>;
    async fn get_lock(&self, key: &str, params: ReadParams) -> Result<LockState>;
    async fn wait_release(
        &self,
        key: &str,
        params: WaitReleaseParams,
    ) -> Result<WaitReleaseResponse>;
    async fn lock_history(&self, key: &str) -> Result<HistoryResponse>;
    async fn list_locks(&self, params: ListParams) -> Result<LockList>;
    async fn expired(&self, params: ExpiredParams) -> Result<ExpiredList>;

    // Semaphores
    async fn acquire_semaphore(
        &self,
        key: &str,
        req: SemaphoreAcquireRequest,
    ) -> Result<SemaphoreSlot>;
    async fn extend_semaphore(&self, key: &str, req: ExtendRequest) -> Result<ExtendResponse>;
    async fn release_semaphore(&self, key: &str, params: ReleaseParams) -> Result<ReleaseResponse>;
    async fn get_semaphore(&self, key: &str, params: ReadParams) -> Result<SemaphoreState>;
    /// A semaphore's recent events, newest first (as for locks).
    async fn semaphore_history(&self, key: &str) -> Result<HistoryResponse>;
    /// Held semaphores in key order, with holders and queues.
    async fn list_semaphores(&self, params: ListParams) -> Result<SemaphoreList>;

    // Names
    async fn register_name(&self, name: &str, req: RegisterRequest) -> Result<NameRecord>;
    async fn get_name(&self, name: &str, params: ReadParams) -> Result<NameState>;
    async fn proclaim(&self, name: &str, req: ProclaimRequest) -> Result<NameRecord>;
    async fn extend_name(&self, name: &str, req: NameExtendRequest) -> Result<ExtendResponse>;
    async fn unregister_name(&self, name: &str, params: ReleaseParams) -> Result<ReleaseResponse>;
    async fn list_names(&self, params: ListParams) -> Result<NameList>;
    /// A name's recent events, newest first (as for locks).
    async fn name_history(&self, name: &str) -> Result<HistoryResponse>;

    // Cluster
    async fn cluster_status(&self) -> Result<ClusterStatus>;
    async fn add_member(&self, req: AddMemberRequest) -> Result<ClusterStatus>;
    async fn remove_member(&self, id: u64) -> Result<ClusterStatus>;
    /// Ok when a leader is known and this node has applied its commit index of the moment.
    async fn ready(&self) -> Result<()>;
    /// Prometheus text exposition.
    async fn metrics_text(&self) -> String;
    /// A backup of the whole state, consistent as of a linearizable read (admin only): the
    /// file `leasehold snapshot save` writes (`leasehold_raft::backup`).
    async fn snapshot(&self) -> Result<Vec<u8>>;
    /// What the status page shows (a blocking query on the applied index).
    async fn status_view(&self, params: StatusParams) -> Result<StatusView>;
    /// Hears every request the HTTP router served: its method, route template (never the
    /// key), status and duration. The node's metrics; the default does nothing.
    fn observe_request(
        &self,
        _method: &str,
        _route: &str,
        _status: u16,
        _elapsed: std::time::Duration,
    ) {
    }
}

macro_rules! forward_arc {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        #[async_trait]
        impl<T: LeaseService + ?Sized> LeaseService for Arc<T> {
            $( async fn $name(&self $(, $arg: $ty)*) -> $ret { (**self).$name($($arg),*).await } )*
            fn observe_request(
                &self,
                method: &str,
                route: &str,
                status: u16,
                elapsed: std::time::Duration,
            ) {
                (**self).observe_request(method, route, status, elapsed)
            }
        }
    };
}

forward_arc! {
    fn create_lease(&self, req: CreateLeaseRequest) -> Result<LeaseGrant>;
    fn keepalive(&self, lease_id: u64) -> Result<KeepaliveResponse>;
    fn revoke_lease(&self, lease_id: u64, params: RevokeParams) -> Result<RevokeResponse>;
    fn get_lease(&self, lease_id: u64) -> Result<LeaseInfo>;
    fn list_leases(&self, params: LeaseListParams) -> Result<LeaseList>;
    fn acquire_lock(&self, key: &str, req: AcquireRequest) -> Result<LockHolder>;
    fn extend_lock(&self, key: &str, req: ExtendRequest) -> Result<ExtendResponse>;
    fn release_lock(&self, key: &str, params: ReleaseParams) -> Result<ReleaseResponse>;
    fn get_lock(&self, key: &str, params: ReadParams) -> Result<LockState>;
    fn wait_release(&self, key: &str, params: WaitReleaseParams) -> Result<WaitReleaseResponse>;
    fn lock_history(&self, key: &str) -> Result<HistoryResponse>;
    fn list_locks(&self, params: ListParams) -> Result<LockList>;
    fn expired(&self, params: ExpiredParams) -> Result<ExpiredList>;
    fn acquire_semaphore(&self, key: &str, req: SemaphoreAcquireRequest) -> Result<SemaphoreSlot>;
    fn extend_semaphore(&self, key: &str, req: ExtendRequest) -> Result<ExtendResponse>;
    fn release_semaphore(&self, key: &str, params: ReleaseParams) -> Result<ReleaseResponse>;
    fn get_semaphore(&self, key: &str, params: ReadParams) -> Result<SemaphoreState>;
    fn semaphore_history(&self, key: &str) -> Result<HistoryResponse>;
    fn list_semaphores(&self, params: ListParams) -> Result<SemaphoreList>;
    fn register_name(&self, name: &str, req: RegisterRequest) -> Result<NameRecord>;
    fn get_name(&self, name: &str, params: ReadParams) -> Result<NameState>;
    fn proclaim(&self, name: &str, req: ProclaimRequest) -> Result<NameRecord>;
    fn extend_name(&self, name: &str, req: NameExtendRequest) -> Result<ExtendResponse>;
    fn unregister_name(&self, name: &str, params: ReleaseParams) -> Result<ReleaseResponse>;
    fn list_names(&self, params: ListParams) -> Result<NameList>;
    fn name_history(&self, name: &str) -> Result<HistoryResponse>;
    fn cluster_status(&self) -> Result<ClusterStatus>;
    fn add_member(&self, req: AddMemberRequest) -> Result<ClusterStatus>;
    fn remove_member(&self, id: u64) -> Result<ClusterStatus>;
    fn ready(&self) -> Result<()>;
    fn metrics_text(&self) -> String;
    fn snapshot(&self) -> Result<Vec<u8>>;
    fn status_view(&self, params: StatusParams) -> Result<StatusView>;
}
