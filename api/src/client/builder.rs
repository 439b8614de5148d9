//! [`ClientBuilder`] and the [`Client`] constructors: endpoints, credentials and timeouts,
//! checked by [`ClientBuilder::build`]; [`Client::from_env`] reads them from `LEASEHOLD_*`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, AUTHORIZATION};

use super::credentials::{bearer_header, load_ca_certs, load_identity, PemSource};
use super::{
    Client, Inner, AUTH_TOKEN_ENV, CACERT_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV,
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, ENDPOINTS_ENV, REDACTED,
};
use crate::error::{ApiError, ErrorCode};
use crate::service::Result;

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
