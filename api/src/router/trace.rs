//! One tracing span per client request: `request{method route key request_id}`.
//!
//! `route` is the matched route (`/v1/locks/{*key}`), `key` the lock, name or semaphore
//! key as it appears in the path (still percent-encoded, so a log line cannot be forged
//! through it), and `request_id` the body's `request_id` (quoted: it is the client's text,
//! not yet validated), recorded once the body is parsed.
//! The node wraps the router in its own `node{id}` span, so every line a request causes
//! carries the node id, its route, its key and its request id. When a request finishes,
//! a `served` event at DEBUG gives its status and duration.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{field, Instrument, Span};

use crate::service::LeaseService;

pub(super) async fn request_span(
    State(service): State<Arc<dyn LeaseService>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        route = %route.as_deref().unwrap_or("unmatched"),
        key = field::Empty,
        request_id = field::Empty,
        principal = field::Empty,
    );
    if let Some(key) = resource_key(req.uri().path()) {
        span.record("key", field::display(key));
    }
    let started = Instant::now();
    async move {
        let response = next.run(req).await;
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        tracing::debug!(status, elapsed_us = elapsed.as_micros() as u64, "served");
        // Unmatched paths count under one label, so a scanner cannot grow the label set.
        let route = route.as_deref().unwrap_or("unmatched");
        // Likewise any method outside the standard ones.
        let method = match method.as_str() {
            m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m,
            _ => "other",
        };
        service.observe_request(method, route, status, elapsed);
        response
    }
    .instrument(span)
    .await
}

/// The key of a lock, name or semaphore route, without an action suffix.
fn resource_key(path: &str) -> Option<&str> {
    let rest = ["/v1/locks/", "/v1/names/", "/v1/semaphores/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix))?;
    let key = ["/extend", "/wait", "/history"]
        .iter()
        .find_map(|action| rest.strip_suffix(action))
        .unwrap_or(rest);
    (!key.is_empty()).then_some(key)
}

#[derive(Deserialize)]
struct RequestIdProbe {
    #[serde(default)]
    request_id: Option<String>,
}

/// Record a JSON body's `request_id` on the current request span (when tracing is on).
pub(super) fn record_request_id(body: &[u8]) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    if let Ok(RequestIdProbe {
        request_id: Some(id),
    }) = serde_json::from_slice(body)
    {
        span.record("request_id", id.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::resource_key;

    #[test]
    fn keys_come_out_of_resource_paths() {
        assert_eq!(resource_key("/v1/locks/a/b"), Some("a/b"));
        assert_eq!(resource_key("/v1/locks/a/extend"), Some("a"));
        assert_eq!(resource_key("/v1/names/leader/history"), Some("leader"));
        assert_eq!(resource_key("/v1/semaphores/pool/wait"), Some("pool"));
        assert_eq!(resource_key("/v1/locks"), None);
        assert_eq!(resource_key("/v1/leases/7"), None);
    }
}
