//! Sending one request with failover between the endpoints, and the error of a failed
//! attempt (for a TLS handshake, with what to check).

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Client;
use crate::error::{ApiError, ErrorCode};
use crate::service::Result;

/// How the message of an error from a failed TLS handshake begins ([`is_tls_failure`]).
const TLS_FAILURE_PREFIX: &str = "TLS handshake with ";

/// True if `error` is a failed TLS handshake (a CA, certificate or protocol mismatch that
/// retrying will not fix), as opposed to a node that is down.
pub fn is_tls_failure(error: &ApiError) -> bool {
    error.message.starts_with(TLS_FAILURE_PREFIX)
}

impl Client {
    /// Send one request, failing over between endpoints.
    pub(super) async fn call<T: DeserializeOwned>(
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
    pub(super) async fn call_raw(
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

    pub(super) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: Option<String>,
        wait_ms: Option<u64>,
    ) -> Result<T> {
        self.call(Method::GET, path, query, None, wait_ms).await
    }

    pub(super) async fn send<T: DeserializeOwned, B: Serialize + Sync>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::LeaseService;

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
}
