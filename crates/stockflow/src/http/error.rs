//! The one error type of the HTTP API: a stable `{code, message}` body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429/503.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
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

    /// The same error with a more precise code.
    pub fn with_code(self, code: &'static str) -> ApiError {
        ApiError { code, ..self }
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

impl From<crate::pipeline::Overloaded> for ApiError {
    fn from(refused: crate::pipeline::Overloaded) -> ApiError {
        use crate::pipeline::Overloaded;
        match refused {
            Overloaded::QueueFull => ApiError::queue_full(()),
            Overloaded::Stopping => ApiError::stopping(()),
            Overloaded::DiskFull { .. } => ApiError {
                retry_after: Some(30),
                ..ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "disk_full",
                    refused.to_string(),
                )
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
