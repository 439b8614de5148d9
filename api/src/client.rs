//! [`Client`]: the HTTP implementation of [`LeaseService`] (feature `client`).
//!
//! It takes several endpoints and fails over between them: a request goes to the endpoint
//! that answered last; on a connection error, a 503 or a timeout it moves to the next one,
//! until every endpoint was tried or the request's deadline passed. Mutations carry a
//! `request_id` (generated if the caller gave none), so a retried mutation never acts
//! twice: the cluster returns the original result.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ApiError, ErrorCode};
use crate::service::{LeaseService, Result};
use crate::wire::*;

/// Environment variable with comma-separated endpoint URLs.
pub const ENDPOINTS_ENV: &str = "LEASEHOLD_ENDPOINTS";
/// Default deadline of a request (long-polls get their `wait_ms` on top).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline of one attempt at one endpoint before trying the next (plus `wait_ms`):
/// a paused or partitioned node accepts connections but never answers.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoints: Vec<String>,
    /// The endpoint that answered last.
    current: AtomicUsize,
    request_timeout: Duration,
    attempt_timeout: Duration,
    id_prefix: String,
    id_counter: AtomicU64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints)
            .finish()
    }
}

impl Client {
    /// A client for the given endpoint URLs (`http://host:port`).
    pub fn new<I, E>(endpoints: I) -> Result<Self>
    where
        I: IntoIterator<Item = E>,
        E: Into<String>,
    {
        Self::with_timeout(endpoints, DEFAULT_REQUEST_TIMEOUT)
    }

    pub fn with_timeout<I, E>(endpoints: I, request_timeout: Duration) -> Result<Self>
    where
        I: IntoIterator<Item = E>,
        E: Into<String>,
    {
        Self::with_timeouts(endpoints, request_timeout, DEFAULT_ATTEMPT_TIMEOUT)
    }

    /// `request_timeout` bounds a whole call across endpoints; `attempt_timeout` one try
    /// at one endpoint (both plus `wait_ms` for blocking calls).
    pub fn with_timeouts<I, E>(
        endpoints: I,
        request_timeout: Duration,
        attempt_timeout: Duration,
    ) -> Result<Self>
    where
        I: IntoIterator<Item = E>,
        E: Into<String>,
    {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(Into::into)
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(ApiError::invalid(
                "endpoints",
                format!("give at least one endpoint URL (or set {ENDPOINTS_ENV})"),
            ));
        }
        for e in &endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ApiError::invalid(
                    "endpoints",
                    format!("{e:?} must start with http:// or https://"),
                ));
            }
        }
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::Internal,
                    format!("cannot build the HTTP client: {e}"),
                )
            })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                endpoints,
                current: AtomicUsize::new(0),
                request_timeout,
                attempt_timeout,
                id_prefix: format!("c{:x}-{nanos:x}-", std::process::id()),
                id_counter: AtomicU64::new(0),
            }),
        })
    }

    /// A client for the comma-separated endpoints in `LEASEHOLD_ENDPOINTS`.
    pub fn from_env() -> Result<Self> {
        let value = std::env::var(ENDPOINTS_ENV).unwrap_or_default();
        Self::new(value.split(','))
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// A fresh idempotency key.
    pub fn new_request_id(&self) -> String {
        let n = self.inner.id_counter.fetch_add(1, Ordering::Relaxed);
        format!("{}{n}", self.inner.id_prefix)
    }

    fn ensure_id(&self, id: &mut Option<String>) {
        if id.is_none() {
            *id = Some(self.new_request_id());
        }
    }

    /// Send one request, failing over between endpoints.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: Option<String>,
        body: Option<&(dyn erased::Body + Sync)>,
        wait_ms: Option<u64>,
    ) -> Result<T> {
        let budget = self.inner.request_timeout + Duration::from_millis(wait_ms.unwrap_or(0));
        let deadline = tokio::time::Instant::now() + budget;
        let n = self.inner.endpoints.len();
        let start = self.inner.current.load(Ordering::Relaxed);
        let mut last_error = None;
        // Go round the endpoints twice: a node may be mid-failover on the first pass.
        for attempt in 0..(2 * n) {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break;
            }
            let i = (start + attempt) % n;
            let mut url = format!("{}{path}", self.inner.endpoints[i]);
            if let Some(q) = &query {
                if !q.is_empty() {
                    url.push('?');
                    url.push_str(q);
                }
            }
            let per_try = (self.inner.attempt_timeout
                + Duration::from_millis(wait_ms.unwrap_or(0)))
            .min(remaining);
            let mut req = self
                .inner
                .http
                .request(method.clone(), &url)
                .timeout(per_try);
            if let Some(body) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(body.to_json());
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let bytes = match resp.bytes().await {
                        Ok(b) => b,
                        Err(e) => {
                            last_error = Some(transport_error(&url, &e));
                            continue;
                        }
                    };
                    if (200..300).contains(&status) {
                        self.inner.current.store(i, Ordering::Relaxed);
                        return serde_json::from_slice(&bytes).map_err(|e| {
                            ApiError::new(
                                ErrorCode::Internal,
                                format!("unexpected reply from {url}: {e}"),
                            )
                        });
                    }
                    let error = ApiError::from_response_body(status, &bytes);
                    if status == 503 {
                        // This node cannot serve now (no leader, no quorum): try another.
                        last_error = Some(error);
                        if attempt + 1 >= n {
                            // Every node said so once: pause before the second pass.
                            let pause = Duration::from_millis(100).min(remaining);
                            tokio::time::sleep(pause).await;
                        }
                        continue;
                    }
                    self.inner.current.store(i, Ordering::Relaxed);
                    return Err(error);
                }
                Err(e) => {
                    last_error = Some(transport_error(&url, &e));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            ApiError::new(
                ErrorCode::Timeout,
                format!("no endpoint answered within {budget:?}"),
            )
        }))
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: Option<String>,
        wait_ms: Option<u64>,
    ) -> Result<T> {
        self.call(Method::GET, path, query, None, wait_ms).await
    }

    async fn send<T: DeserializeOwned, B: Serialize + Sync>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        wait_ms: Option<u64>,
    ) -> Result<T> {
        self.call(method, path, None, Some(&erased::Json(body)), wait_ms)
            .await
    }
}

fn transport_error(url: &str, e: &reqwest::Error) -> ApiError {
    if e.is_timeout() {
        ApiError::new(
            ErrorCode::Timeout,
            format!("{url}: no answer before the deadline"),
        )
    } else {
        let mut err = ApiError::new(
            ErrorCode::Unavailable,
            format!("{url}: cannot reach the node ({e}); check the endpoint or try another"),
        );
        err.retry_after_ms = Some(1000);
        err
    }
}

/// Object-safe JSON bodies.
mod erased {
    pub trait Body {
        fn to_json(&self) -> Vec<u8>;
    }

    pub struct Json<'a, T>(pub &'a T);

    impl<T: serde::Serialize> Body for Json<'_, T> {
        fn to_json(&self) -> Vec<u8> {
            // Wire types are plain data; serializing them cannot fail.
            serde_json::to_vec(self.0).expect("wire type serializes")
        }
    }
}

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

    async fn revoke_lease(&self, lease_id: u64) -> Result<RevokeResponse> {
        self.call(
            Method::DELETE,
            &format!("/v1/leases/{lease_id}"),
            None,
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

    async fn extend_lock(&self, key: &str, req: ExtendRequest) -> Result<ExtendResponse> {
        self.send(
            Method::POST,
            &format!("/v1/locks/{}/extend", seg("key", key)?),
            &req,
            None,
        )
        .await
    }

    async fn release_lock(&self, key: &str, params: ReleaseParams) -> Result<ReleaseResponse> {
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

    async fn extend_semaphore(&self, key: &str, req: ExtendRequest) -> Result<ExtendResponse> {
        self.send(
            Method::POST,
            &format!("/v1/semaphores/{}/extend", seg("key", key)?),
            &req,
            None,
        )
        .await
    }

    async fn release_semaphore(&self, key: &str, params: ReleaseParams) -> Result<ReleaseResponse> {
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

    async fn proclaim(&self, name: &str, req: ProclaimRequest) -> Result<NameRecord> {
        self.send(
            Method::PATCH,
            &format!("/v1/names/{}", seg("name", name)?),
            &req,
            None,
        )
        .await
    }

    async fn extend_name(&self, name: &str, req: NameExtendRequest) -> Result<ExtendResponse> {
        self.send(
            Method::POST,
            &format!("/v1/names/{}/extend", seg("name", name)?),
            &req,
            None,
        )
        .await
    }

    async fn unregister_name(&self, name: &str, params: ReleaseParams) -> Result<ReleaseResponse> {
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
    fn endpoints_are_checked() {
        assert!(Client::new(Vec::<String>::new()).is_err());
        assert!(Client::new(["localhost:7070"]).is_err());
        let c = Client::new(["http://a:1/", " http://b:2"]).unwrap();
        assert_eq!(c.endpoints(), ["http://a:1", "http://b:2"]);
        assert_ne!(c.new_request_id(), c.new_request_id());
    }

    #[test]
    fn keys_are_encoded_for_paths() {
        assert_eq!(enc("jobs/sitemap:1"), "jobs/sitemap:1");
        assert_eq!(enc("a b?c#d%"), "a%20b%3Fc%23d%25");
    }
}
