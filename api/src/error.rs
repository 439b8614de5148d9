//! The API's errors: one code per row of SPEC §3's table, a message that names the field
//! and the rule (and what to do), and details such as the current holder.

use serde::{Deserialize, Serialize};

use crate::wire::HolderSummary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    Unauthorized,
    Forbidden,
    LeaseNotFound,
    NameNotFound,
    NotFound,
    MethodNotAllowed,
    LockHeld,
    NameTaken,
    NotOwner,
    SemaphoreFull,
    LimitMismatch,
    PayloadTooLarge,
    UnsupportedMediaType,
    TooManyRequests,
    Internal,
    Unavailable,
    Timeout,
}

impl ErrorCode {
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::LeaseNotFound,
        ErrorCode::NameNotFound,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::LockHeld,
        ErrorCode::NameTaken,
        ErrorCode::NotOwner,
        ErrorCode::SemaphoreFull,
        ErrorCode::LimitMismatch,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::TooManyRequests,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
    ];

    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::LeaseNotFound | ErrorCode::NameNotFound | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::LockHeld
            | ErrorCode::NameTaken
            | ErrorCode::NotOwner
            | ErrorCode::SemaphoreFull
            | ErrorCode::LimitMismatch => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::LeaseNotFound => "lease_not_found",
            ErrorCode::NameNotFound => "name_not_found",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::LockHeld => "lock_held",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::SemaphoreFull => "semaphore_full",
            ErrorCode::LimitMismatch => "limit_mismatch",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
        }
    }
}

/// An API error, as returned by every service method and sent as
/// `{"error": {"code", "message", "holder"?, "retry_after_ms"?}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[error("{code}: {message}", code = code.as_str())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Why, where the code alone does not say: `"stolen"` on a `not_owner` for a hold an
    /// operator force-released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body of every error reply.
#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "server", schema(as = ErrorBody))]
pub(crate) struct Envelope {
    error: ApiError,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            holder: None,
            retry_after_ms: None,
            reason: None,
        }
    }

    /// 400 naming the field and the rule: `"{field}: {rule}"`.
    pub fn invalid(field: &str, rule: impl std::fmt::Display) -> Self {
        ApiError::new(ErrorCode::InvalidArgument, format!("{field}: {rule}"))
    }

    /// 413 naming the field and the limit.
    pub fn too_large(field: &str, rule: impl std::fmt::Display) -> Self {
        ApiError::new(ErrorCode::PayloadTooLarge, format!("{field}: {rule}"))
    }

    pub fn unavailable(message: impl Into<String>, retry_after_ms: u64) -> Self {
        let mut e = ApiError::new(ErrorCode::Unavailable, message);
        e.retry_after_ms = Some(retry_after_ms);
        e
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The JSON body of this error.
    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(&Envelope {
            error: self.clone(),
        })
        .expect("error serializes")
    }

    /// Parse an error body received from a server; falls back to a generic error.
    pub fn from_response_body(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) => envelope.error,
            Err(_) => {
                let code = ErrorCode::ALL
                    .iter()
                    .copied()
                    .find(|c| c.status() == status)
                    .unwrap_or(ErrorCode::Internal);
                ApiError::new(
                    code,
                    format!("HTTP {status}: {}", String::from_utf8_lossy(body).trim()),
                )
            }
        }
    }
}

#[cfg(feature = "server")]
impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        use axum::http::{header, HeaderValue, StatusCode};
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after_ms;
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.to_json(),
        )
            .into_response();
        if let Some(ms) = retry_after {
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}
