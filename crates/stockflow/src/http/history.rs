//! GET /v1/stock/{sku}/{locationId}/history and the `asOf` form of the
//! level and SKU queries, read from the per-level history chains.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use stockflow_core::{route, Numbers, Policy, Timestamp, Totals};

use super::query::{limit, Page};
use super::{ApiError, AppState};
use crate::history::{outcome_name, ChainEnd, Entry, HistoryReader};

fn io_error(error: std::io::Error) -> ApiError {
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
    });
    if e.in_transit {
        entry["part"] = json!("in_transit");
    }
    entry
}

/// The history cursor of a level, or 404.
fn head(state: &AppState, sku: &str, location: &str) -> Result<(u16, u64), ApiError> {
    let shared = &state.pipeline.shared;
    let partition = route(sku, location, shared.partition_count());
    let head = shared.partitions[partition as usize]
        .read()
        .history_head_of(sku, location)
        .ok_or_else(|| super::query::no_level(sku, location))?;
    Ok((partition, head))
}

fn reader(state: &AppState, partition: u16) -> Result<HistoryReader, ApiError> {
    HistoryReader::open(&state.config.data_dir, partition).map_err(io_error)
}

#[derive(Deserialize)]
pub struct HistoryPage {
    pub before: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

/// GET /v1/stock/{sku}/{locationId}/history?before=&limit=: applied
/// events of a level with the level after each, newest first.
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

/// The embedded engine's history of a level.
pub(crate) fn history_here(
    state: &AppState,
    sku: &str,
    location: &str,
    query: &HistoryPage,
) -> Result<Value, ApiError> {
    let limit = limit(&query.page)?;
    let (partition, head) = head(state, sku, location)?;
    let start = page_start(head, query.before.as_deref())?;
    let policy = super::query::policy(state, sku, location);
    let reader = reader(state, partition)?;
    tokio::task::block_in_place(|| page_json(sku, location, &reader, start, limit, policy))
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
/// `before` a previous page gave.
pub fn page_start(head: u64, before: Option<&str>) -> Result<u64, ApiError> {
    match before {
        None => Ok(head),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|b| *b > 0 && *b <= head)
            .ok_or_else(|| {
                ApiError::bad_request("before must be a nextBefore value of this level's history")
            }),
    }
}

/// Parses `asOf`.
pub fn parse_as_of(text: &str) -> Result<Timestamp, ApiError> {
    Timestamp::parse_rfc3339(text)
        .ok_or_else(|| ApiError::bad_request(format!("asOf: {text:?} is not an RFC 3339 time")))
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

/// The level of (sku, location) as processing had left it at `at`.
pub fn level_as_of(
    state: &AppState,
    sku: &str,
    location: &str,
    at: Timestamp,
) -> Result<Option<Value>, ApiError> {
    let (partition, head) = head(state, sku, location)?;
    let reader = reader(state, partition)?;
    let policy = super::query::policy(state, sku, location);
    let retention = state.config.history_retention_ns;
    tokio::task::block_in_place(|| as_of_json(sku, location, &reader, head, at, policy, retention))
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
    let horizon = crate::pipeline::wall_clock().saturating_sub_ns(retention_ns);
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

/// GET /v1/stock/{sku}/{locationId}?asOf=
pub fn level_at(
    state: &AppState,
    sku: &str,
    location: &str,
    at: Timestamp,
) -> Result<Value, ApiError> {
    level_as_of(state, sku, location, at)?.ok_or_else(|| {
        ApiError::not_found(format!(
            "sku {sku:?} at location {location:?} had no stock level yet at {}",
            at.to_rfc3339()
        ))
    })
}

/// GET /v1/stock/{sku}?asOf=: every level of the SKU as of then.
pub fn sku_at(state: &AppState, sku: &str, at: Timestamp) -> Result<Value, ApiError> {
    let mut locations: Vec<String> = Vec::new();
    for partition in &state.pipeline.shared.partitions {
        locations.extend(
            partition
                .read()
                .levels_of_sku(sku)
                .iter()
                .map(|v| v.location_id.to_string()),
        );
    }
    locations.sort();
    let mut levels = Vec::new();
    let mut totals = Totals::default();
    for location in &locations {
        if let Some(level) = level_as_of(state, sku, location, at)? {
            let n = Numbers {
                on_hand: level["onHand"].as_i64().unwrap_or(0),
                reserved: level["reserved"].as_i64().unwrap_or(0),
                in_transit: level["inTransit"].as_i64().unwrap_or(0),
            };
            totals.add(&Totals::of(&n, super::query::policy(state, sku, location)));
            levels.push(level);
        }
    }
    if levels.is_empty() {
        return Err(ApiError::not_found(format!(
            "sku {sku:?} had no stock levels yet at {}",
            at.to_rfc3339()
        )));
    }
    Ok(json!({
        "sku": sku,
        "asOf": at.to_rfc3339(),
        "totals": {"onHand": totals.on_hand, "reserved": totals.reserved, "available": totals.available, "inTransit": totals.in_transit},
        "locations": levels,
    }))
}
