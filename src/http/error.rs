//! Client-facing errors: every one becomes `{"error": code, "message": sentence}` with one
//! status per kind, exactly as `openapi.yaml` lists them. Internal causes are logged, never sent.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::store::StoreError;

/// The stable `error` codes clients can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 401.
    Unauthorized,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 400 for malformed requests.
    InvalidRequest,
    /// 400 for a signed ingest body that is not a usable JSON object.
    InvalidPayload,
    /// 413.
    PayloadTooLarge,
    /// 422 for a hook URL breaking a rule.
    InvalidUrl,
    /// 422 for an unknown event type.
    InvalidEvent,
    /// 422 for another field breaking a rule.
    ValidationFailed,
    /// 409.
    Conflict,
    /// 429.
    RateLimited,
    /// 503.
    Unavailable,
    /// 408: the request body did not arrive in time.
    RequestTimeout,
}

impl ErrorCode {
    /// Every code, for documentation checks.
    pub const ALL: [ErrorCode; 13] = [
        Self::Unauthorized,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::InvalidRequest,
        Self::InvalidPayload,
        Self::PayloadTooLarge,
        Self::InvalidUrl,
        Self::InvalidEvent,
        Self::ValidationFailed,
        Self::Conflict,
        Self::RateLimited,
        Self::Unavailable,
        Self::RequestTimeout,
    ];

    /// The code as it appears in `{"error": …}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidPayload => "invalid_payload",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InvalidUrl => "invalid_url",
            Self::InvalidEvent => "invalid_event",
            Self::ValidationFailed => "validation_failed",
            Self::Conflict => "conflict",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::RequestTimeout => "request_timeout",
        }
    }
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), headers: Vec::new() }
    }

    /// 401: unknown connection, bad signature, missing or unknown key (one answer for all).
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing or invalid credentials")
    }

    /// 404 for a resource this caller cannot see.
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, format!("{what} not found"))
    }

    /// 405 with the methods the path takes.
    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut e = Self::new(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed, format!("use {allow}"));
        e.headers.push((hyper::header::ALLOW, HeaderValue::from_static(allow)));
        e
    }

    /// 400: the request itself is malformed.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }

    /// 400: a correctly signed ingest body that is not a usable JSON object.
    pub fn invalid_payload(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, message)
    }

    /// 413.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than {limit} bytes"),
        )
    }

    /// 422: the hook's target URL breaks a rule (the message says which).
    pub fn invalid_url(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidUrl, message)
    }

    /// 422: an event type the relay does not know.
    pub fn invalid_event(event: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidEvent,
            format!("unknown event type {event:?}; known: image.created"),
        )
    }

    /// 422: a well-formed request with a field that breaks a rule.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::ValidationFailed, message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, "too many requests; retry later");
        e.headers.push((RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1))));
        e
    }

    /// 408: the client sent its body too slowly.
    pub fn request_timeout(limit: Duration) -> Self {
        let message = format!("the request body did not arrive within {}", humantime::format_duration(limit));
        Self::new(StatusCode::REQUEST_TIMEOUT, ErrorCode::RequestTimeout, message)
    }

    /// 408 when a body arrives slower than the minimum rate.
    pub fn too_slow(min_rate: u64) -> Self {
        let message = format!("the request body arrived slower than {min_rate} bytes per second");
        Self::new(StatusCode::REQUEST_TIMEOUT, ErrorCode::RequestTimeout, message)
    }

    /// 503 when the relay is at its limit of concurrent work; nothing was accepted.
    pub fn overloaded() -> Self {
        let mut e =
            Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "the relay is busy; retry later");
        e.headers.push((RETRY_AFTER, HeaderValue::from_static("1")));
        e
    }

    /// 503: the store cannot serve or commit; nothing was accepted.
    pub fn unavailable() -> Self {
        let mut e =
            Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "the store is unavailable; retry later");
        e.headers.push((RETRY_AFTER, HeaderValue::from_static("1")));
        e
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON answer.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({ "error": self.code.as_str(), "message": self.message });
        let mut response = super::response::json(self.status, &body);
        response.headers_mut().extend(self.headers);
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let cause: &dyn std::error::Error = &e;
        tracing::error!(cause = %cause, source = ?std::error::Error::source(cause), "store operation failed");
        Self::unavailable()
    }
}
