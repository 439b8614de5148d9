//! [`Client`]: the HTTP implementation of [`LeaseService`](crate::LeaseService)
//! (feature `client`).
//!
//! It takes several endpoints and fails over between them: a request goes to the endpoint
//! that answered last; on a connection error, a 503 or a timeout it moves to the next one,
//! until every endpoint was tried or the request's deadline passed. Mutations carry a
//! `request_id` (generated if the caller gave none), so a retried mutation never acts
//! twice: the cluster returns the original result.
//!
//! `builder` holds [`ClientBuilder`] and the constructors, `credentials` the checks of the
//! token and the PEM files, `transport` sending with failover, and `lease_service` the
//! calls of the trait.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod builder;
mod credentials;
mod lease_service;
mod transport;

pub use self::builder::ClientBuilder;
pub use self::transport::is_tls_failure;

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

impl Client {
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
}
