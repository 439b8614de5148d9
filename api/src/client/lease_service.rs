//! [`Client`]'s implementation of [`LeaseService`]: each call's route, query and body,
//! with keys percent-encoded for the path.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use reqwest::Method;
use serde::Serialize;

use super::Client;
use crate::error::ApiError;
use crate::service::{LeaseService, Result};
use crate::wire::*;

/// A key's path segment; an empty key is refused here as the server would (its route
/// would not even match).
fn seg(field: &str, key: &str) -> Result<String> {
    if key.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    Ok(enc(key))
}

/// Percent-encode a key for a path (keeping `/`, which the server allows in keys).
fn enc(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn query<T: Serialize>(params: &T) -> Option<String> {
    serde_urlencoded::to_string(params).ok()
}

#[async_trait]
impl LeaseService for Client {
    async fn create_lease(&self, mut req: CreateLeaseRequest) -> Result<LeaseGrant> {
        self.ensure_id(&mut req.request_id);
        self.send(Method::POST, "/v1/leases", &req, None).await
    }

    async fn keepalive(&self, lease_id: u64) -> Result<KeepaliveResponse> {
        self.send(
            Method::POST,
            &format!("/v1/leases/{lease_id}/keepalive"),
            &serde_json::json!({}),
            None,
        )
        .await
    }

    async fn revoke_lease(
        &self,
        lease_id: u64,
        mut params: RevokeParams,
    ) -> Result<RevokeResponse> {
        self.ensure_id(&mut params.request_id);
        self.call(
            Method::DELETE,
            &format!("/v1/leases/{lease_id}"),
            query(&params),
            None,
            None,
        )
        .await
    }

    async fn get_lease(&self, lease_id: u64) -> Result<LeaseInfo> {
        self.get(&format!("/v1/leases/{lease_id}"), None, None)
            .await
    }

    async fn list_leases(&self, params: LeaseListParams) -> Result<LeaseList> {
        self.get("/v1/leases", query(&params), None).await
    }

    async fn acquire_lock(&self, key: &str, mut req: AcquireRequest) -> Result<LockHolder> {
        self.ensure_id(&mut req.request_id);
        let wait = req.wait_ms;
        self.send(
            Method::POST,
            &format!("/v1/locks/{}", seg("key", key)?),
            &req,
            wait,
        )
        .await
    }

    async fn extend_lock(&self, key: &str, mut req: ExtendRequest) -> Result<ExtendResponse> {
        self.ensure_id(&mut req.request_id);
        self.send(
            Method::POST,
            &format!("/v1/locks/{}/extend", seg("key", key)?),
            &req,
            None,
        )
        .await
    }

    async fn release_lock(&self, key: &str, mut params: ReleaseParams) -> Result<ReleaseResponse> {
        self.ensure_id(&mut params.request_id);
        self.call(
            Method::DELETE,
            &format!("/v1/locks/{}", seg("key", key)?),
            query(&params),
            None,
            None,
        )
        .await
    }

    async fn get_lock(&self, key: &str, params: ReadParams) -> Result<LockState> {
        let wait = params.wait_ms;
        self.get(
            &format!("/v1/locks/{}", seg("key", key)?),
            query(&params),
            wait,
        )
        .await
    }

    async fn wait_release(
        &self,
        key: &str,
        params: WaitReleaseParams,
    ) -> Result<WaitReleaseResponse> {
        let wait = params.wait_ms;
        self.get(
            &format!("/v1/locks/{}/wait", seg("key", key)?),
            query(&params),
            wait,
        )
        .await
    }

    async fn lock_history(&self, key: &str) -> Result<HistoryResponse> {
        self.get(
            &format!("/v1/locks/{}/history", seg("key", key)?),
            None,
            None,
        )
        .await
    }

    async fn semaphore_history(&self, key: &str) -> Result<HistoryResponse> {
        self.get(
            &format!("/v1/semaphores/{}/history", seg("key", key)?),
            None,
            None,
        )
        .await
    }

    async fn list_semaphores(&self, params: ListParams) -> Result<SemaphoreList> {
        self.get("/v1/semaphores", query(&params), None).await
    }

    async fn name_history(&self, name: &str) -> Result<HistoryResponse> {
        self.get(
            &format!("/v1/names/{}/history", seg("name", name)?),
            None,
            None,
        )
        .await
    }

    async fn list_locks(&self, params: ListParams) -> Result<LockList> {
        self.get("/v1/locks", query(&params), None).await
    }

    async fn expired(&self, params: ExpiredParams) -> Result<ExpiredList> {
        self.get("/v1/expired", query(&params), None).await
    }

    async fn acquire_semaphore(
        &self,
        key: &str,
        mut req: SemaphoreAcquireRequest,
    ) -> Result<SemaphoreSlot> {
        self.ensure_id(&mut req.request_id);
        let wait = req.wait_ms;
        self.send(
            Method::POST,
            &format!("/v1/semaphores/{}", seg("key", key)?),
            &req,
            wait,
        )
        .await
    }

    async fn extend_semaphore(&self, key: &str, mut req: ExtendRequest) -> Result<ExtendResponse> {
        self.ensure_id(&mut req.request_id);
        self.send(
            Method::POST,
            &format!("/v1/semaphores/{}/extend", seg("key", key)?),
            &req,
            None,
        )
        .await
    }

    async fn release_semaphore(
        &self,
        key: &str,
        mut params: ReleaseParams,
    ) -> Result<ReleaseResponse> {
        self.ensure_id(&mut params.request_id);
        self.call(
            Method::DELETE,
            &format!("/v1/semaphores/{}", seg("key", key)?),
            query(&params),
            None,
            None,
        )
        .await
    }

    async fn get_semaphore(&self, key: &str, params: ReadParams) -> Result<SemaphoreState> {
        let wait = params.wait_ms;
        self.get(
            &format!("/v1/semaphores/{}", seg("key", key)?),
            query(&params),
            wait,
        )
        .await
    }

    async fn register_name(&self, name: &str, mut req: RegisterRequest) -> Result<NameRecord> {
        self.ensure_id(&mut req.request_id);
        let wait = req.wait_ms;
        self.send(
            Method::PUT,
            &format!("/v1/names/{}", seg("name", name)?),
            &req,
            wait,
        )
        .await
    }

    async fn get_name(&self, name: &str, params: ReadParams) -> Result<NameState> {
        let wait = params.wait_ms;
        self.get(
            &format!("/v1/names/{}", seg("name", name)?),
            query(&params),
            wait,
        )
        .await
    }

    async fn proclaim(&self, name: &str, mut req: ProclaimRequest) -> Result<NameRecord> {
        self.ensure_id(&mut req.request_id);
        self.send(
            Method::PATCH,
            &format!("/v1/names/{}", seg("name", name)?),
            &req,
            None,
        )
        .await
    }

    async fn extend_name(&self, name: &str, mut req: NameExtendRequest) -> Result<ExtendResponse> {
        self.ensure_id(&mut req.request_id);
        self.send(
            Method::POST,
            &format!("/v1/names/{}/extend", seg("name", name)?),
            &req,
            None,
        )
        .await
    }

    async fn unregister_name(
        &self,
        name: &str,
        mut params: ReleaseParams,
    ) -> Result<ReleaseResponse> {
        self.ensure_id(&mut params.request_id);
        self.call(
            Method::DELETE,
            &format!("/v1/names/{}", seg("name", name)?),
            query(&params),
            None,
            None,
        )
        .await
    }

    async fn list_names(&self, params: ListParams) -> Result<NameList> {
        self.get("/v1/names", query(&params), None).await
    }

    async fn cluster_status(&self) -> Result<ClusterStatus> {
        self.get("/v1/cluster", None, None).await
    }

    async fn add_member(&self, req: AddMemberRequest) -> Result<ClusterStatus> {
        let slack = Some(self.inner.request_timeout.as_millis() as u64 * 5);
        self.send(Method::POST, "/v1/cluster/members", &req, slack)
            .await
    }

    async fn remove_member(&self, id: u64) -> Result<ClusterStatus> {
        self.call(
            Method::DELETE,
            &format!("/v1/cluster/members/{id}"),
            None,
            None,
            None,
        )
        .await
    }

    async fn ready(&self) -> Result<()> {
        let _: serde_json::Value = self.get("/readyz", None, None).await?;
        Ok(())
    }

    async fn status_view(&self, params: StatusParams) -> Result<StatusView> {
        let wait = params.wait_ms;
        self.get("/v1/status", query(&params), wait).await
    }

    async fn snapshot(&self) -> Result<Vec<u8>> {
        // A large state takes a while to encode and send: allow five request timeouts.
        let wait_ms = (self.inner.request_timeout * 4).as_millis() as u64;
        let (_, bytes) = self
            .call_raw(
                Method::GET,
                "/v1/cluster/snapshot",
                None,
                None,
                Some(wait_ms),
            )
            .await?;
        Ok(bytes.to_vec())
    }

    async fn metrics_text(&self) -> String {
        let url = format!(
            "{}/metrics",
            self.inner.endpoints[self.inner.current.load(Ordering::Relaxed)]
        );
        match self.inner.http.get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_for_paths() {
        assert_eq!(enc("jobs/sitemap:1"), "jobs/sitemap:1");
        assert_eq!(enc("a b?c#d%"), "a%20b%3Fc%23d%25");
    }
}
