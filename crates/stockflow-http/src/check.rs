//! GET /v1/check: the engine's invariants, verified on the live state by
//! the backend (see `embedded::check` and `kafka::check` for what holds).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::backend::{Backend, Read};
use super::ApiError;

#[derive(Deserialize)]
pub struct CheckQuery {
    #[serde(default)]
    strict: bool,
    /// `local`: only the asked instance's part (cluster-internal).
    scope: Option<String>,
}

/// GET /v1/check?strict=: whether the books hold together.
pub async fn check<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(query): Query<CheckQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let read = Read::scoped(&headers, query.scope.as_deref());
    backend.check(query.strict, &read).await.map(Json)
}
