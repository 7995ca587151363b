//! GET /v1/stock/{sku}/{locationId}/history and the `asOf` form of the
//! level and SKU queries, read from the per-level history chains.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use stockflow_core::{Numbers, Policy, Timestamp};

use super::asks::HistoryPage;
use super::ApiError;
use stockflow_service::history::{outcome_name, ChainEnd, Entry, HistoryReader};

pub fn io_error(error: std::io::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "history_unreadable",
        format!("cannot read history: {error}"),
    )
}

fn numbers_json(n: &Numbers, policy: Policy) -> Value {
    json!({
        "onHand": n.on_hand,
        "reserved": n.reserved,
        "available": policy.available(n),
        "inTransit": n.in_transit,
    })
}

fn entry_json(e: &Entry, policy: Policy) -> Value {
    let mut entry = json!({
        "eventId": e.event_id,
        "eventType": e.event_type.as_str(),
        "quantity": e.quantity,
        "timestamp": e.event_time.to_rfc3339(),
        "processedAt": e.processed.to_rfc3339(),
        "outcome": outcome_name(e.outcome),
        "level": numbers_json(&e.after, policy),
        "by": e.by,
    });
    if e.in_transit {
        entry["part"] = json!("in_transit");
    }
    entry
}

/// GET /v1/stock/{sku}/{locationId}/history?before=&limit=: applied
/// events of a level with the level after each, newest first.
#[utoipa::path(get, path = "/v1/stock/{sku}/{locationId}/history",
    operation_id = "getLevelHistory", tag = "stock",
    summary = "The events applied to a level, newest first, with the level after each",
    description = "Includes rejected reservations (outcome insufficient_stock), events absorbed by a later COUNT (absorbed) and stale counts; the in-transit part of a TRANSFER_OUT appears at its destination with part=in_transit. In Kafka mode the level's owner answers (any instance forwards to it) from the history it rebuilds from the history topic when it is assigned the partition; until it has caught up the answer is 503 restoring with Retry-After. `processedAt` there is the time of the input records that cycle applied.",
    params(("sku" = String, Path), ("locationId" = String, Path), ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000), ("before" = Option<String>, Query, pattern = "^0*[1-9][0-9]{0,18}$", description = "nextBefore of the previous page.")),
    responses(
        (status = 200, description = "A page of history", body = crate::shapes::LevelHistory),
        (status = 404, description = "Level never seen, or its history has no page at `before`.", body = crate::error::ErrorBody),
        crate::openapi::ReadRefusals,
    ))]
pub async fn history<B: super::backend::Backend>(
    State(backend): State<Arc<B>>,
    Path((sku, location)): Path<(String, String)>,
    Query(query): Query<HistoryPage>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let read = super::query::ReadQuery::default().read(&headers, &uri)?;
    backend
        .level_history(&sku, &location, &query, &read)
        .await
        .map(Json)
}

/// Up to `limit` entries of a level's history from cursor `start` back,
/// as GET …/history answers them.
pub fn page_json(
    sku: &str,
    location: &str,
    reader: &HistoryReader,
    start: u64,
    limit: usize,
    policy: Policy,
) -> Result<Value, ApiError> {
    let (entries, next) = reader.walk(start, limit).map_err(io_error)?;
    Ok(json!({
        "sku": sku,
        "locationId": location,
        "events": entries.iter().map(|e| entry_json(e, policy)).collect::<Vec<_>>(),
        "nextBefore": next.ok().map(|n| n.to_string()),
        "olderCompacted": next == Err(ChainEnd::Compacted),
    }))
}

/// The cursor to start a page at: the newest entry (`head`) or the
/// `before` a previous page gave: 400 if it is not a cursor at all, 404
/// if it is one this level's history has no page at.
pub fn page_start(head: u64, before: Option<&str>) -> Result<u64, ApiError> {
    let Some(text) = before else {
        return Ok(head);
    };
    let cursor = text
        .parse::<u64>()
        .ok()
        .filter(|b| *b > 0 && text.bytes().all(|c| c.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::bad_request("before must be a nextBefore value of this level's history")
        })?;
    if cursor > head {
        return Err(ApiError::not_found(format!(
            "this level's history has no page before {cursor} (its newest entry is {head})"
        )));
    }
    Ok(cursor)
}

fn too_old(retention_ns: i64, at: Timestamp) -> ApiError {
    let days = retention_ns / (24 * 3600 * 1_000_000_000);
    ApiError::new(
        StatusCode::GONE,
        "beyond_retention",
        format!(
            "asOf {} is older than the history kept ({days} days)",
            at.to_rfc3339()
        ),
    )
}

/// The level whose newest history entry is at `head`, as processing had
/// left it at `at`; `None` if it did not exist yet.
pub fn as_of_json(
    sku: &str,
    location: &str,
    reader: &HistoryReader,
    head: u64,
    at: Timestamp,
    policy: Policy,
    retention_ns: i64,
) -> Result<Option<Value>, ApiError> {
    let found = reader.as_of(head, at).map_err(io_error)?;
    let Some((numbers, entry)) = found else {
        return Ok(None);
    };
    let horizon = stockflow_service::clock::wall_clock().saturating_sub_ns(retention_ns);
    if entry.is_none() && at < horizon {
        return Err(too_old(retention_ns, at));
    }
    let mut level = numbers_json(&numbers, policy);
    level["sku"] = json!(sku);
    level["locationId"] = json!(location);
    level["asOf"] = json!(at.to_rfc3339());
    match entry {
        Some(e) => {
            level["lastEventId"] = json!(e.event_id);
            level["lastEventType"] = json!(e.event_type.as_str());
            level["lastProcessedAt"] = json!(e.processed.to_rfc3339());
        }
        None => {
            level["lastEventId"] = Value::Null;
            level["explanation"] = json!("the events before asOf are past the history retention; these are the numbers just before the oldest event kept");
        }
    }
    Ok(Some(level))
}
