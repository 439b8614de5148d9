//! [`Client`]: the HTTP implementation of [`LeaseService`] (feature `client`).
//!
//! It takes several endpoints and fails over between them: a request goes to the endpoint
//! that answered last; on a connection error, a 503 or a timeout it moves to the next one,
//! until every endpoint was tried or the request's deadline passed. Mutations carry a
//! `request_id` (generated if the caller gave none), so a retried mutation never acts
//! twice: the cluster returns the original result.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::Method;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ApiError, ErrorCode};
use crate::service::{LeaseService, Result};
use crate::wire::*;

/// Environment variable with comma-separated endpoint URLs.
pub const ENDPOINTS_ENV: &str = "LEASEHOLD_ENDPOINTS";
/// Environment variable with the bearer token ([`ClientBuilder::token`]). Not
/// `LEASEHOLD_TOKEN`: that is the fencing token `leasehold lock` gives its child.
pub const AUTH_TOKEN_ENV: &str = "LEASEHOLD_AUTH_TOKEN";
/// Environment variable with the path of a PEM CA to trust ([`ClientBuilder::ca_cert_file`]).
pub const CACERT_ENV: &str = "LEASEHOLD_CACERT";
/// Environment variables with the paths of a PEM client certificate and its key
/// ([`ClientBuilder::identity_files`]); set both or neither.
pub const CLIENT_CERT_ENV: &str = "LEASEHOLD_CLIENT_CERT";
pub const CLIENT_KEY_ENV: &str = "LEASEHOLD_CLIENT_KEY";
/// Default deadline of a request (long-polls get their `wait_ms` on top).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default deadline of one attempt at one endpoint before trying the next (plus `wait_ms`):
/// a paused or partitioned node accepts connections but never answers.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How the message of an error from a failed TLS handshake begins ([`is_tls_failure`]).
const TLS_FAILURE_PREFIX: &str = "TLS handshake with ";

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
    /// Whether requests carry a bearer token (the token itself lives, marked sensitive, in
    /// the HTTP client's default headers only).
    has_token: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints)
            .field("token", &self.inner.has_token.then_some(REDACTED))
            .finish()
    }
}

const REDACTED: &str = "<redacted>";

/// Where a PEM document comes from: given in code, or a file read by [`ClientBuilder::build`].
#[derive(Clone)]
enum PemSource {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl PemSource {
    /// The bytes, and how to name their origin in an error.
    fn load(&self, field: &str, what: &str) -> Result<(Vec<u8>, String)> {
        match self {
            PemSource::Bytes(bytes) => Ok((bytes.clone(), format!("the {what} PEM given"))),
            PemSource::File(path) => match std::fs::read(path) {
                Ok(bytes) => Ok((bytes, path.display().to_string())),
                Err(e) => Err(ApiError::invalid(
                    field,
                    format!("cannot read {what} file {}: {e}", path.display()),
                )),
            },
        }
    }
}

impl std::fmt::Debug for PemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemSource::Bytes(b) => write!(f, "<{} bytes of PEM>", b.len()),
            PemSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Builds a [`Client`]: endpoints, credentials (bearer token, CA, client certificate) and
/// timeouts. Files are read and PEM is checked by [`build`](ClientBuilder::build), whose
/// error names the file and what is wrong with it.
///
/// ```no_run
/// # fn main() -> Result<(), leasehold_api::ApiError> {
/// let client = leasehold_api::Client::builder(["https://127.0.0.1:7001"])
///     .token("s3cret")
///     .ca_cert_file("/etc/leasehold/ca.crt")
///     .build()?;
/// # drop(client);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    token: Option<String>,
    ca_certs: Vec<PemSource>,
    identity: Option<(PemSource, PemSource)>,
    request_timeout: Duration,
    attempt_timeout: Duration,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoints", &self.endpoints)
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .field("ca_certs", &self.ca_certs)
            .field("identity", &self.identity)
            .field("request_timeout", &self.request_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

impl ClientBuilder {
    /// Send `Authorization: Bearer <token>` with every request (SPEC §5 "Auth").
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trust the CA certificate(s) in this PEM for `https://` endpoints, in addition to
    /// the built-in web roots. May be called more than once.
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certs.push(PemSource::Bytes(pem.into()));
        self
    }

    /// [`ca_cert_pem`](Self::ca_cert_pem) with the PEM read from `path` at build time.
    pub fn ca_cert_file(mut self, path: impl AsRef<Path>) -> Self {
        self.ca_certs
            .push(PemSource::File(path.as_ref().to_path_buf()));
        self
    }

    /// Present this client certificate (PEM chain) and private key (PEM, PKCS#8, PKCS#1 or
    /// SEC1) to servers that ask for one (`tls.client_ca`).
    pub fn identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((
            PemSource::Bytes(cert_pem.into()),
            PemSource::Bytes(key_pem.into()),
        ));
        self
    }

    /// [`identity_pem`](Self::identity_pem) with both read from files at build time.
    pub fn identity_files(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.identity = Some((
            PemSource::File(cert.as_ref().to_path_buf()),
            PemSource::File(key.as_ref().to_path_buf()),
        ));
        self
    }

    /// Bounds a whole call across endpoints (plus `wait_ms` for blocking calls).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Bounds one try at one endpoint before the next is tried (plus `wait_ms`).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Check everything and make the client. Errors are `invalid_argument` naming the
    /// setting (`endpoints`, `token`, `ca_cert`, `client_cert`, `client_key`).
    pub fn build(self) -> Result<Client> {
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
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
        let mut http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2));
        let has_token = self.token.is_some();
        if let Some(token) = &self.token {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, bearer_header(token)?);
            http = http.default_headers(headers);
        }
        for source in &self.ca_certs {
            for cert in load_ca_certs(source)? {
                http = http.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &self.identity {
            http = http.identity(load_identity(cert, key)?);
        }
        let http = http.build().map_err(|e| {
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
                request_timeout: self.request_timeout,
                attempt_timeout: self.attempt_timeout,
                id_prefix: format!("c{:x}-{nanos:x}-", std::process::id()),
                id_counter: AtomicU64::new(0),
                has_token,
            }),
        })
    }

    /// The builder [`Client::from_env`] uses, reading variables through `var`.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        // An empty variable counts as unset (`export LEASEHOLD_CACERT=` clears it).
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let endpoints = var(ENDPOINTS_ENV).unwrap_or_default();
        let mut builder = Client::builder(endpoints.split(','));
        if let Some(token) = var(AUTH_TOKEN_ENV) {
            builder = builder.token(token);
        }
        if let Some(ca) = var(CACERT_ENV) {
            builder = builder.ca_cert_file(ca);
        }
        match (var(CLIENT_CERT_ENV), var(CLIENT_KEY_ENV)) {
            (Some(cert), Some(key)) => builder = builder.identity_files(cert, key),
            (None, None) => {}
            (Some(_), None) => {
                return Err(ApiError::invalid(
                    "client_key",
                    format!(
                        "{CLIENT_CERT_ENV} is set, so set {CLIENT_KEY_ENV} to its key file too"
                    ),
                ))
            }
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    "client_cert",
                    format!(
                    "{CLIENT_KEY_ENV} is set, so set {CLIENT_CERT_ENV} to its certificate file too"
                ),
                ))
            }
        }
        Ok(builder)
    }
}

/// `Bearer <token>`, marked sensitive so that it is never logged.
fn bearer_header(token: &str) -> Result<HeaderValue> {
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::invalid("token", "must not be empty"));
    }
    // The message never repeats the token: it is a secret.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "token",
            "must be printable ASCII without spaces (check for a stray character when copying it)",
        ));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ApiError::invalid("token", "must be printable ASCII without spaces"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The CA certificates of one PEM source, each checked to be usable as a trust anchor.
fn load_ca_certs(source: &PemSource) -> Result<Vec<reqwest::Certificate>> {
    let field = "ca_cert";
    let (pem, origin) = source.load(field, "CA")?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ApiError::invalid(field, format!("{origin} is not valid PEM: {e}")))?;
    if ders.is_empty() {
        return Err(ApiError::invalid(
            field,
            format!("{origin} holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)"),
        ));
    }
    let mut certs = Vec::with_capacity(ders.len());
    for (i, der) in ders.into_iter().enumerate() {
        // The same check rustls makes when the client is built, but here it names the file.
        rustls::RootCertStore::empty()
            .add(der.clone())
            .map_err(|e| {
                ApiError::invalid(
                    field,
                    format!(
                        "certificate #{} in {origin} is not a usable CA certificate: {e}",
                        i + 1
                    ),
                )
            })?;
        certs.push(reqwest::Certificate::from_der(der.as_ref()).map_err(|e| {
            ApiError::invalid(field, format!("certificate #{} in {origin}: {e}", i + 1))
        })?);
    }
    Ok(certs)
}

/// The client certificate chain and its key, checked to parse and to belong together.
fn load_identity(cert: &PemSource, key: &PemSource) -> Result<reqwest::Identity> {
    let (cert_pem, cert_origin) = cert.load("client_cert", "client certificate")?;
    let (key_pem, key_origin) = key.load("client_key", "client key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            ApiError::invalid(
                "client_cert",
                format!("{cert_origin} is not valid PEM: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(ApiError::invalid(
            "client_cert",
            format!(
                "{cert_origin} holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)"
            ),
        ));
    }
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        ApiError::invalid(
            "client_key",
            format!("{key_origin} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, private_key, &provider).map_err(|e| {
        ApiError::invalid(
            "client_key",
            format!("{key_origin} is not the private key of the certificate in {cert_origin}: {e}"),
        )
    })?;
    // reqwest wants the chain and the key in one PEM document.
    let mut both = cert_pem;
    if !both.ends_with(b"\n") {
        both.push(b'\n');
    }
    both.extend_from_slice(&key_pem);
    reqwest::Identity::from_pem(&both).map_err(|e| {
        ApiError::invalid(
            "client_cert",
            format!("{cert_origin} with {key_origin}: {e}"),
        )
    })
}

/// True if `error` is a failed TLS handshake (a CA, certificate or protocol mismatch that
/// retrying will not fix), as opposed to a node that is down.
pub fn is_tls_failure(error: &ApiError) -> bool {
    error.message.starts_with(TLS_FAILURE_PREFIX)
}

impl Client {
    /// A builder for a client of the given endpoint URLs (`http://host:port` or
    /// `https://host:port`), with the default timeouts and no credentials.
    pub fn builder<I, E>(endpoints: I) -> ClientBuilder
    where
        I: IntoIterator<Item = E>,
        E: Into<String>,
    {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            token: None,
            ca_certs: Vec::new(),
            identity: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
        }
    }

    /// A client for the given endpoint URLs, without credentials.
    pub fn new<I, E>(endpoints: I) -> Result<Self>
    where
        I: IntoIterator<Item = E>,
        E: Into<String>,
    {
        Self::builder(endpoints).build()
    }

    pub fn with_timeout<I, E>(endpoints: I, request_timeout: Duration) -> Result<Self>
    where
        I: IntoIterator<Item = E>,
        E: Into<String>,
    {
        Self::builder(endpoints)
            .request_timeout(request_timeout)
            .build()
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
        Self::builder(endpoints)
            .request_timeout(request_timeout)
            .attempt_timeout(attempt_timeout)
            .build()
    }

    /// A client configured from the environment: the comma-separated endpoints in
    /// `LEASEHOLD_ENDPOINTS`, the bearer token in `LEASEHOLD_AUTH_TOKEN`, a CA file in
    /// `LEASEHOLD_CACERT`, and a client certificate and key in `LEASEHOLD_CLIENT_CERT`
    /// and `LEASEHOLD_CLIENT_KEY`.
    pub fn from_env() -> Result<Self> {
        ClientBuilder::from_vars(|name| std::env::var(name).ok())?.build()
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
        let (url, bytes) = self.call_raw(method, path, query, body, wait_ms).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("unexpected reply from {url}: {e}"),
            )
        })
    }

    /// Send a request with failover; a 2xx reply's body, with the URL that gave it.
    async fn call_raw(
        &self,
        method: Method,
        path: &str,
        query: Option<String>,
        body: Option<&(dyn erased::Body + Sync)>,
        wait_ms: Option<u64>,
    ) -> Result<(String, bytes::Bytes)> {
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
                        return Ok((url, bytes));
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
    } else if let Some(tls) = tls_error(e) {
        // Not retryable by waiting: a wrong CA, a missing client certificate, or a plain
        // HTTP node behind an https:// endpoint. Another endpoint may still be right.
        ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "{TLS_FAILURE_PREFIX}{url} failed: {tls} ({})",
                tls_hint(tls)
            ),
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

/// The rustls error somewhere in `e`'s chain of causes. tokio-rustls wraps it in an
/// `io::Error` (itself wrapped in another by the connector), and an `io::Error`'s
/// `source()` skips what it wraps, so those are opened with `get_ref`.
fn tls_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    // Bounded: a chain of causes is short, and a cycle would be a bug elsewhere.
    for _ in 0..16 {
        let err = cause?;
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = match err.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => None,
            },
            None => err.source(),
        };
    }
    None
}

/// What to check for a failed handshake.
fn tls_hint(e: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription, CertificateError};
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the node's certificate does not name this host: use a host from its SANs in the endpoint",
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => "the node's certificate is expired or not yet valid: check it and this machine's clock",
        rustls::Error::InvalidCertificate(_) => "is --cacert (LEASEHOLD_CACERT) the cluster's CA?",
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::HandshakeFailure,
        ) => "the node wants a client certificate signed by its tls.client_ca: pass --cert and --key (LEASEHOLD_CLIENT_CERT, LEASEHOLD_CLIENT_KEY)",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "is the node serving https? use http:// for a node without [tls]"
        }
        _ => "check --cacert and the node's [tls] settings",
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
    fn endpoints_are_checked() {
        assert!(Client::new(Vec::<String>::new()).is_err());
        assert!(Client::new(["localhost:7070"]).is_err());
        let c = Client::new(["http://a:1/", " http://b:2"]).unwrap();
        assert_eq!(c.endpoints(), ["http://a:1", "http://b:2"]);
        assert_ne!(c.new_request_id(), c.new_request_id());
    }

    #[test]
    fn the_builder_checks_the_token_and_never_shows_it() {
        let secret = "tok-1234567890";
        let builder = Client::builder(["http://a:1"]).token(secret);
        assert!(!format!("{builder:?}").contains(secret));
        let client = builder.build().unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains(secret), "{debug}");
        assert!(debug.contains(REDACTED), "{debug}");
        assert!(!format!("{:?}", Client::new(["http://a:1"]).unwrap()).contains(REDACTED));

        for bad in ["", "  ", "has space", "tab\tin", "\u{e9}t\u{e9}"] {
            let e = Client::builder(["http://a:1"])
                .token(bad)
                .build()
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert!(e.message.starts_with("token: "), "{e}");
            if !bad.trim().is_empty() {
                assert!(
                    !e.message.contains(bad),
                    "the message repeats the token: {e}"
                );
            }
        }
        // Surrounding whitespace (a newline from a file) is not part of the token.
        Client::builder(["http://a:1"])
            .token(" tok\n")
            .build()
            .unwrap();
    }

    #[test]
    fn the_builder_keeps_the_timeouts() {
        let c = Client::builder(["http://a:1"])
            .request_timeout(Duration::from_secs(3))
            .attempt_timeout(Duration::from_millis(700))
            .build()
            .unwrap();
        assert_eq!(c.inner.request_timeout, Duration::from_secs(3));
        assert_eq!(c.inner.attempt_timeout, Duration::from_millis(700));
        let c = Client::with_timeouts(
            ["http://a:1"],
            Duration::from_secs(4),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(c.inner.request_timeout, Duration::from_secs(4));
        assert_eq!(c.inner.attempt_timeout, Duration::from_secs(1));
        let c = Client::with_timeout(["http://a:1"], Duration::from_secs(5)).unwrap();
        assert_eq!(c.inner.attempt_timeout, DEFAULT_ATTEMPT_TIMEOUT);
    }

    fn build_err(builder: ClientBuilder) -> ApiError {
        let e = builder.build().unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
        e
    }

    #[test]
    fn bad_ca_certs_are_refused_naming_the_file_and_the_problem() {
        let dir =
            std::env::temp_dir().join(format!("leasehold-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let b = || Client::builder(["https://a:1"]);

        let missing = dir.join("missing.crt");
        let e = build_err(b().ca_cert_file(&missing));
        assert!(e.message.starts_with("ca_cert: cannot read CA file"), "{e}");
        assert!(e.message.contains(&missing.display().to_string()), "{e}");

        let garbage = dir.join("garbage.crt");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let e = build_err(b().ca_cert_file(&garbage));
        assert!(e.message.contains(&garbage.display().to_string()), "{e}");
        assert!(e.message.contains("holds no PEM certificate"), "{e}");

        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let e = build_err(b().ca_cert_pem(broken));
        assert!(e.message.contains("is not valid PEM"), "{e}");

        let unterminated = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        let e = build_err(b().ca_cert_pem(unterminated));
        assert!(e.message.contains("is not valid PEM"), "{e}");

        // Well-formed PEM around bytes that are no certificate.
        let not_der = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        let e = build_err(b().ca_cert_pem(not_der));
        assert!(
            e.message
                .contains("certificate #1 in the CA PEM given is not a usable CA certificate"),
            "{e}"
        );

        // A private key is not a CA.
        let key = "-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n";
        let e = build_err(b().ca_cert_pem(key));
        assert!(e.message.contains("holds no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_client_identities_are_refused_naming_the_file() {
        let b = || Client::builder(["https://a:1"]);
        let e = build_err(b().identity_files("/nonexistent/client.crt", "/nonexistent/client.key"));
        assert!(
            e.message.starts_with(
                "client_cert: cannot read client certificate file /nonexistent/client.crt"
            ),
            "{e}"
        );
        let e = build_err(b().identity_pem("no pem here", "nor here"));
        assert!(
            e.message.starts_with(
                "client_cert: the client certificate PEM given holds no PEM certificate"
            ),
            "{e}"
        );
    }

    #[test]
    fn the_environment_configures_credentials() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let b = ClientBuilder::from_vars(env(&[
            (ENDPOINTS_ENV, "https://a:1,https://b:2"),
            (AUTH_TOKEN_ENV, "env-token-xyz"),
            (CACERT_ENV, "/etc/ca.crt"),
            (CLIENT_CERT_ENV, ""),
        ]))
        .unwrap();
        assert_eq!(b.token.as_deref(), Some("env-token-xyz"));
        assert!(matches!(&b.ca_certs[..], [PemSource::File(p)] if p == Path::new("/etc/ca.crt")));
        assert!(b.identity.is_none(), "an empty variable is unset");
        assert!(!format!("{b:?}").contains("env-token-xyz"));
        let e = build_err(b);
        assert!(e.message.contains("/etc/ca.crt"), "{e}");

        let e = ClientBuilder::from_vars(env(&[(CLIENT_CERT_ENV, "/c.crt")])).unwrap_err();
        assert!(e.message.starts_with("client_key: "), "{e}");
        assert!(e.message.contains(CLIENT_KEY_ENV), "{e}");
        let e = ClientBuilder::from_vars(env(&[(CLIENT_KEY_ENV, "/c.key")])).unwrap_err();
        assert!(e.message.starts_with("client_cert: "), "{e}");

        let b = ClientBuilder::from_vars(env(&[(ENDPOINTS_ENV, "http://a:1")])).unwrap();
        assert!(b.token.is_none() && b.ca_certs.is_empty());
        b.build().unwrap();
    }

    #[test]
    fn tls_failures_say_what_to_check() {
        use rustls::{AlertDescription, CertificateError};
        let unknown_ca = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(tls_hint(&unknown_ca).contains("--cacert"));
        let wrong_name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(tls_hint(&wrong_name).contains("SANs"));
        let no_client_cert = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert!(tls_hint(&no_client_cert).contains("--cert"));
        let e = ApiError::new(
            ErrorCode::Unavailable,
            format!("{TLS_FAILURE_PREFIX}https://a:1 failed: x"),
        );
        assert!(is_tls_failure(&e));
        assert!(!is_tls_failure(&ApiError::new(
            ErrorCode::Unavailable,
            "down"
        )));
    }

    /// A one-connection HTTP server that records the request head and answers `reply`.
    async fn answer_once(reply: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            socket.write_all(reply.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
            String::from_utf8_lossy(&head).to_lowercase()
        });
        (url, task)
    }

    #[tokio::test]
    async fn requests_carry_the_token_and_401_403_keep_their_codes() {
        let body = r#"{"error":{"code":"unauthorized","message":"missing bearer token"}}"#;
        let reply: &'static str = Box::leak(
            format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\nwww-authenticate: Bearer\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let (url, server) = answer_once(reply).await;
        let client = Client::builder([url]).token("tok-abc").build().unwrap();
        let e = client.cluster_status().await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthorized, "{e}");
        assert_eq!(e.message, "missing bearer token");
        let head = server.await.unwrap();
        assert!(
            head.contains("\r\nauthorization: bearer tok-abc\r\n"),
            "{head}"
        );

        // A 403 without our JSON body (a proxy's, say) still maps by its status.
        let (url, server) = answer_once(
            "HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\nconnection: close\r\n\r\nno way",
        )
        .await;
        let client = Client::new([url]).unwrap();
        let e = client.cluster_status().await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden, "{e}");
        assert!(
            !server.await.unwrap().contains("authorization"),
            "no token, no header"
        );
    }

    #[test]
    fn keys_are_encoded_for_paths() {
        assert_eq!(enc("jobs/sitemap:1"), "jobs/sitemap:1");
        assert_eq!(enc("a b?c#d%"), "a%20b%3Fc%23d%25");
    }
}
