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
#[utoipa::path(get, path = "/v1/check",
    operation_id = "check", tag = "operations",
    summary = "Verify invariants on the live state",
    description = "reserved ≥ Σ live holds at every level (= with strict=true), and every roll-up equals the sum of its levels. In Kafka mode the answer is gathered from every member: holds from the orders' home partitions, reserved units from the levels' owners, and each SKU's roll-up (kept at its home) against the sum of its levels; roll-ups follow their levels a processing cycle later, so while events flow a mismatch can be momentary (ask again); 503 while a partition restores.",
    params(("strict" = Option<bool>, Query)),
    responses(
        (status = 200, description = "Report", body = crate::shapes::CheckReport),
        crate::openapi::ReadRefusals,
    ))]
pub async fn check<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(query): Query<CheckQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let read = Read::scoped(&headers, query.scope.as_deref());
    backend.check(query.strict, &read).await.map(Json)
}
