//! Extractors: JSON bodies, strict query strings and path segments, each rejected with
//! the JSON `ApiError` naming the field (axum's own rejections are plain text).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::AppState;
use crate::error::ApiError;

/// A JSON body: any content type, size-limited, errors as [`ApiError`].
pub(super) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let BodyBytes(bytes) = BodyBytes::from_request(req, state).await?;
        parse_json(&bytes)
            .map(JsonBody)
            .map_err(IntoResponse::into_response)
    }
}

/// The raw body, at most `limits.max_body_bytes`. A body over the limit (declared in
/// `Content-Length` or found while reading) is refused with 413 without buffering it, and
/// the refusal closes the connection cleanly (see [`refuse_oversized`]).
pub(super) struct BodyBytes(pub Bytes);

/// A refused body is read and thrown away up to this many bytes...
const DRAIN_MAX_BYTES: usize = 16 * 1024 * 1024;
/// ...or for this long, whichever ends first, before the connection closes.
const DRAIN_MAX_TIME: Duration = Duration::from_secs(2);

impl FromRequest<AppState> for BodyBytes {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        use http_body_util::BodyExt;
        let limit = state.limits.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut body = req.into_body();
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(refuse_oversized(body).await);
        }
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::invalid("body", format!("cannot read the request body: {e}"))
                    .into_response()
            })?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(refuse_oversized(body).await);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(BodyBytes(Bytes::from(buf)))
    }
}

/// Refuse a body over `limits.max_body_bytes` so that a pooled client reads the 413 and
/// does not reuse the socket: the reply carries `Connection: close` (the server closes
/// after it), and the rest of the body is first read and dropped (bounded by
/// [`DRAIN_MAX_BYTES`] and [`DRAIN_MAX_TIME`]). Closing a socket with unread input
/// makes the kernel send a reset, which can destroy the 413 before the client reads it
/// or fail the client's next write with a broken pipe.
async fn refuse_oversized(body: axum::body::Body) -> Response {
    drain(body, DRAIN_MAX_BYTES).await;
    let mut response =
        ApiError::too_large("body", "request body is over limits.max_body_bytes").into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Read and drop `body`, at most `max_bytes` of it and for at most [`DRAIN_MAX_TIME`];
/// whether it was read to its end.
async fn drain(mut body: axum::body::Body, max_bytes: usize) -> bool {
    use http_body_util::BodyExt;
    let drain = async {
        let mut drained = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            drained += frame.data_ref().map_or(0, |d| d.len());
            if drained > max_bytes {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_MAX_TIME, drain)
        .await
        .unwrap_or(false)
}

/// Middleware: read the whole request body (at most `limits.max_body_bytes`) before the
/// request is authenticated or routed, so that every reply, including one that refuses the
/// request before looking at its body (401, 404, 405, a bad query), is sent on a
/// connection whose input has been read. A server that closes a socket with unread input
/// makes the kernel reset it, and the client may then never see the reply (a broken pipe
/// while it is still sending). A body over the limit is refused here with 413.
pub(super) async fn read_body_first(
    State(s): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    use axum::body::HttpBody as _;
    use http_body_util::BodyExt;
    let (parts, mut body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let limit = s.limits.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return refuse_oversized(body).await;
    }
    // A body must arrive within the request deadline: a client that sends its body slowly
    // (or never) would otherwise hold a request in flight, and its buffer, for ever.
    let budget = s.limits.request_timeout();
    let read = async {
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    let e = ApiError::invalid("body", format!("cannot read the request body: {e}"));
                    return Err(closing(e.into_response()));
                }
            };
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(refuse_oversized(body).await);
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf)
    };
    let buf = match tokio::time::timeout(budget, read).await {
        Ok(Ok(buf)) => buf,
        Ok(Err(response)) => return response,
        Err(_) => {
            let e = ApiError::invalid(
                "body",
                format!(
                    "the request body did not arrive within {} ms (limits.request_timeout_ms)",
                    budget.as_millis()
                ),
            );
            return closing(e.into_response());
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(buf)))
        .await
}

/// `response` with `Connection: close`: the rest of the request is not going to be read.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

pub(super) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    super::trace::record_request_id(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("body", "a JSON object is required"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = match parsed {
        Ok(value) => value,
        // JSON (and JSON Schema's `integer`) counts `5.0` as the integer 5; serde does not.
        // Only on that failure, re-read the body with integral numbers made integers.
        Err(e) if e.inner().to_string().contains("floating point") => {
            let mut json: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| json_error(None, &e))?;
            integral_floats_to_integers(&mut json);
            return serde_path_to_error::deserialize(json).map_err(|e| {
                let path = e.path().to_string();
                json_error(Some(path).filter(|p| p != "."), e.inner())
            });
        }
        Err(e) => {
            let path = e.path().to_string();
            return Err(json_error(Some(path).filter(|p| p != "."), e.inner()));
        }
    };
    de.end().map_err(|e| json_error(None, &e))?;
    Ok(value)
}

/// Turn every number with no fractional part that fits a `u64` (`5.0`, `1e3`) into that
/// integer; other numbers are left for the field's own type to refuse.
fn integral_floats_to_integers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                // 2^64 is exactly representable; anything below it with no fraction fits.
                if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                    *value = serde_json::Value::from(f as u64);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(integral_floats_to_integers)
        }
        _ => {}
    }
}

/// Name the field: the path where a value was wrong, or the field serde names in messages
/// like "unknown field `x`" / "missing field `owner`".
fn json_error(path: Option<String>, e: &serde_json::Error) -> ApiError {
    let message = e.to_string();
    let named = message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("field"))
        .map(str::to_string);
    let field = named.or(path).unwrap_or_else(|| "body".to_string());
    ApiError::invalid(&field, format!("invalid JSON: {message}"))
}

/// A strict query string.
pub(super) struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or("")).map(QueryParams)
    }
}

/// The one path parameter of a route, percent-decoded. A segment that does not decode to
/// UTF-8 (`/v1/names/%8a`) is a 400 naming the parameter, in the same JSON shape as every
/// other error (axum's own rejection is plain text).
pub(super) struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::{path::ErrorKind, rejection::PathRejection};
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParam(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => Err(ApiError::invalid(
                    key.as_str(),
                    "must be valid UTF-8 once percent-decoded",
                )),
                other => Err(ApiError::invalid("path", other.to_string())),
            },
            Err(other) => Err(ApiError::invalid("path", other.body_text())),
        }
    }
}

/// Parse a numeric path segment (`/v1/leases/{id}`).
pub(super) fn path_id(field: &str, raw: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::invalid(field, format!("must be a positive integer, got {raw:?}")))
}

/// Parse a strict query string; errors name the parameter.
pub(super) fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        let named = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field"))
            .map(str::to_string);
        let field = named
            .or(Some(path).filter(|p| p != "."))
            .unwrap_or_else(|| "query".to_string());
        ApiError::invalid(&field, format!("invalid query string: {message}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON Schema's `integer` includes `5.0`; the body parser reads it as 5, and still
    /// refuses a fraction, naming the field.
    #[test]
    fn integral_numbers_written_as_floats_are_integers() {
        let req: crate::wire::CreateLeaseRequest =
            parse_json(br#"{"ttl_ms": 242471.0, "owner": null}"#).unwrap();
        assert_eq!(req.ttl_ms, 242_471);
        let e = parse_json::<crate::wire::CreateLeaseRequest>(br#"{"ttl_ms": 1.5}"#).unwrap_err();
        assert!(e.message.starts_with("ttl_ms: "), "{}", e.message);
    }
}
