//! The one error type of the HTTP API: a stable `{code, message}` body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// What every refusal answers: a stable code and a message for people.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable and machine-readable; owned only when relayed from another
    /// instance (Kafka mode forwards a read to its owner).
    pub code: std::borrow::Cow<'static, str>,
    pub message: String,
    /// Seconds, for 429/503.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// The pipeline refused or dropped a submission (queue full, or
    /// stopping): 503 with Retry-After.
    pub fn unavailable<E>(_: E) -> ApiError {
        ApiError::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            "ingest queue is full or the server is stopping; retry shortly",
        )
    }

    /// The ingest queue refused a submission: 503 with Retry-After.
    pub fn queue_full<E>(_: E) -> ApiError {
        ApiError::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            "ingest queue is full; retry shortly",
        )
        .with_code("queue_full")
    }

    /// Too many ingest requests are being read or parsed: 429 with
    /// Retry-After.
    pub fn in_flight_full() -> ApiError {
        ApiError::overloaded(
            StatusCode::TOO_MANY_REQUESTS,
            "too many ingest requests in flight; retry shortly",
        )
        .with_code("in_flight_full")
    }

    /// The same error with another message.
    pub fn with_message(self, message: impl Into<String>) -> ApiError {
        ApiError {
            message: message.into(),
            ..self
        }
    }

    /// The same error with a more precise code.
    pub fn with_code(self, code: &'static str) -> ApiError {
        ApiError {
            code: code.into(),
            ..self
        }
    }

    /// The pipeline stopped before answering: 503 with Retry-After.
    pub fn stopping<E>(_: E) -> ApiError {
        ApiError::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            "server is shutting down; retry against a running instance",
        )
        .with_code("stopping")
    }

    pub fn overloaded(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(status, "overloaded", message)
        }
    }
}

/// Middleware for both modes' routers: an error the framework answered in
/// plain text (a path that is not UTF-8, a query string that does not
/// parse, a JSON body of the wrong shape, a method not allowed) gets the
/// API's `{code, message}` body, keeping its status and headers.
pub async fn errors_are_json(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        _ if status.is_client_error() => "bad_request",
        _ => "internal",
    };
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    let fresh = ApiError::new(status, code, message).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, fresh.into_body())
}

/// Counts a write refused to shed load, and says so in the log at most
/// once per 10 s per reason, with how many were refused meanwhile: a flood
/// of refusals must not become a flood of log lines.
pub fn shed(reason: &'static str) {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};
    static LOGGED: std::sync::Mutex<Option<HashMap<&'static str, (Instant, u64)>>> =
        std::sync::Mutex::new(None);
    metrics::counter!("stockflow_writes_refused_total", "reason" => reason).increment(1);
    let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    let (at, since) = logged
        .get_or_insert_with(HashMap::new)
        .entry(reason)
        .or_insert((Instant::now() - Duration::from_secs(3600), 0));
    *since += 1;
    if at.elapsed() >= Duration::from_secs(10) {
        tracing::warn!(reason, refused = *since, "shedding load: writes refused");
        *at = Instant::now();
        *since = 0;
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: &self.code,
            message: &self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
