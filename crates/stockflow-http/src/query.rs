//! The read side: levels, per-SKU totals, a location's levels, dead letters.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use stockflow_core::{LevelView, Policy};

use super::asks::{Listing, Page, Status};
use super::backend::{Backend, Read};
use super::ApiError;

const PAGE_DEFAULT: usize = 100;
pub(crate) const PAGE_MAX: usize = 1000;

/// A level as the API shows it. Where the product has a safety stock,
/// `available` holds it back and the answer says so with `safetyStock`.
pub fn level_json(view: &LevelView, policy: Policy) -> Value {
    serde_json::to_value(LevelOut::new(view, policy)).expect("a level serializes")
}

/// A level as a location's listing shows it: with its low-stock
/// threshold, so a listing can mark low stock without a lookup per row.
pub fn listed_level_json(view: &LevelView, policy: Policy) -> Value {
    let mut level = level_json(view, policy);
    level["lowStockThreshold"] = json!(policy.low_stock_threshold);
    level
}

/// A level as the API and the stock-levels topic show it. Typed, so that
/// writing one to a buffer (as Kafka mode does per changed level) builds
/// no map.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Level)]
pub struct LevelOut<'a> {
    sku: &'a str,
    location_id: &'a str,
    /// May be negative: a sale is a fact.
    on_hand: i64,
    reserved: i64,
    /// max(0, onHand - reserved - safetyStock)
    available: i64,
    in_transit: i64,
    /// Number of events that changed this level.
    version: u64,
    #[schema(format = DateTime)]
    updated_at: String,
    /// Present when the product holds back safety stock.
    #[serde(skip_serializing_if = "Option::is_none")]
    safety_stock: Option<i64>,
    /// The event whose change this is (Kafka mode's stock-levels topic,
    /// and so its live stream, say it like the embedded stream does).
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<&'static str>,
}

impl<'a> LevelOut<'a> {
    pub fn new(view: &'a LevelView, policy: Policy) -> LevelOut<'a> {
        let l = &view.level;
        LevelOut {
            sku: &view.sku,
            location_id: &view.location_id,
            on_hand: l.on_hand,
            reserved: l.reserved,
            available: policy.available(&l.numbers()),
            in_transit: l.in_transit,
            version: l.version,
            updated_at: l.updated_at.to_rfc3339(),
            safety_stock: (policy.safety_stock > 0).then_some(policy.safety_stock),
            event_id: None,
            event_type: None,
        }
    }

    /// The level as the event `event_id` of type `event_type` left it.
    pub fn after(self, event_id: &'a str, event_type: &'static str) -> LevelOut<'a> {
        LevelOut {
            event_id: Some(event_id),
            event_type: Some(event_type),
            ..self
        }
    }
}

/// `?asOf=` and `?stale=`, the options of a read.
#[derive(Deserialize, Default)]
pub struct ReadQuery {
    #[serde(rename = "asOf")]
    as_of: Option<String>,
    stale: Option<bool>,
    /// `local`: only the answering instance's part (cluster-internal).
    scope: Option<String>,
}

impl ReadQuery {
    /// The read these options, headers and URI ask for (400 for an
    /// `asOf` that is not a time).
    pub fn read(
        &self,
        headers: &axum::http::HeaderMap,
        uri: &axum::http::Uri,
    ) -> Result<Read, ApiError> {
        Ok(Read {
            as_of: self.as_of.as_deref().map(parse_as_of).transpose()?,
            stale: self.stale == Some(true),
            forwarded: headers.contains_key(super::backend::FORWARDED),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            local_only: self.scope.as_deref() == Some("local"),
        })
    }
}

/// GET /v1/stock/{sku}/{locationId}?asOf=&stale=
#[utoipa::path(get, path = "/v1/stock/{sku}/{locationId}",
    operation_id = "getLevel", tag = "stock",
    summary = "One level",
    params(("sku" = String, Path), ("locationId" = String, Path), ("asOf" = Option<String>, Query, pattern = "^(19[7-9][0-9]|2[01][0-9][0-9]|22[0-5][0-9])-", format = DateTime, description = "Answer as processing had left the level at this server time (within the history retention, default 30 days); the answer names the last event applied before it (lastEventId). A time from 1970 to 2259.")),
    responses(
        (status = 200, description = "The level (with asOf: as it was then)", body = crate::shapes::LevelAnswer),
        (status = 404, description = "Never seen.", body = crate::error::ErrorBody),
        (status = 410, description = "asOf is older than the history retention.", body = crate::error::ErrorBody),
        crate::openapi::ReadRefusals,
    ))]
pub async fn level<B: Backend>(
    State(backend): State<Arc<B>>,
    Path((sku, location)): Path<(String, String)>,
    Query(query): Query<ReadQuery>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let read = query.read(&headers, &uri)?;
    backend.level(&sku, &location, &read).await.map(Json)
}

/// 404 for a level that does not exist (the same words in both modes).
pub fn no_level(sku: &str, location: &str) -> ApiError {
    ApiError::not_found(format!(
        "no stock level for sku {sku:?} at location {location:?}"
    ))
}

/// GET /v1/stock/{sku}?asOf=: a SKU's levels and their totals.
#[utoipa::path(get, path = "/v1/stock/{sku}",
    operation_id = "getSkuStock", tag = "stock",
    summary = "A SKU at every location, with totals",
    params(("sku" = String, Path), ("asOf" = Option<String>, Query, pattern = "^(19[7-9][0-9]|2[01][0-9][0-9]|22[0-5][0-9])-", format = DateTime, description = "Answer as processing had left the level at this server time (within the history retention, default 30 days); the answer names the last event applied before it (lastEventId). A time from 1970 to 2259.")),
    responses(
        (status = 200, description = "Totals and levels", body = crate::shapes::SkuStock),
        (status = 404, description = "Never seen.", body = crate::error::ErrorBody),
        (status = 410, description = "asOf is older than the history retention.", body = crate::error::ErrorBody),
        crate::openapi::ReadRefusals,
    ))]
pub async fn sku<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(sku): Path<String>,
    Query(query): Query<ReadQuery>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let read = query.read(&headers, &uri)?;
    backend.sku_levels(&sku, &read).await.map(Json)
}

pub fn limit(page: &Page) -> Result<usize, ApiError> {
    match &page.limit {
        None => Ok(PAGE_DEFAULT),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=PAGE_MAX).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be an integer from 1 to {PAGE_MAX}"
            ))),
        },
    }
}

#[derive(Deserialize)]
pub struct LocationFilter {
    status: Option<String>,
    #[serde(flatten)]
    page: Page,
}

/// GET /v1/locations/{locationId}/stock?status=&limit=&after=
#[utoipa::path(get, path = "/v1/locations/{locationId}/stock",
    operation_id = "getLocationStock", tag = "stock",
    summary = "A location's levels, by sku, optionally only those low, out of stock or negative",
    params(("locationId" = String, Path), ("status" = Option<String>, Query, pattern = "^(low|out|negative|ok)$", description = "low: available below the low-stock threshold; out: nothing available; negative: onHand below 0; ok: at or above the threshold. Pages skip what the filter leaves out."), ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000), ("after" = Option<String>, Query, description = "The nextAfter of the previous page.")),
    responses(
        (status = 200, description = "A page", body = crate::shapes::LocationStockPage),
        (status = 404, description = "Never seen.", body = crate::error::ErrorBody),
        crate::openapi::ReadRefusals,
    ))]
pub async fn location<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(location): Path<String>,
    Query(filter): Query<LocationFilter>,
    Query(query): Query<ReadQuery>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let listing = Listing {
        limit: limit(&filter.page)?,
        status: filter.status.as_deref().map(Status::parse).transpose()?,
        status_text: filter.status,
        after: filter.page.after,
    };
    let read = query.read(&headers, &uri)?;
    backend
        .location_levels(&location, &listing, &read)
        .await
        .map(Json)
}

/// GET /v1/sources: the formats accepted at /v1/sources/{format}/events,
/// each with its mapping (so a user can copy one to write their own).
#[utoipa::path(get, path = "/v1/sources",
    operation_id = "listSourceFormats", tag = "events",
    summary = "List source formats",
    description = "Every accepted format with its description, input kind, endpoint and mapping (copy one to write your own and load it with `serve --sources DIR`).",
    responses(
        (status = 200, description = "Formats", body = crate::shapes::SourceFormats),
    ))]
pub async fn sources<B: Backend>(State(backend): State<Arc<B>>) -> Json<Value> {
    Json(sources_json(&backend.config().sources))
}

/// The source formats this server translates, with their mappings.
pub fn sources_json(sources: &stockflow_service::sources::Sources) -> Value {
    let formats: Vec<Value> = sources
        .all()
        .map(|m| {
            json!({
                "format": m.format,
                "description": m.description,
                "input": m.input,
                "endpoint": format!("/v1/sources/{}/events", m.format),
                "mapping": m,
            })
        })
        .collect();
    json!({ "formats": formats })
}

/// Parses `asOf`.
pub fn parse_as_of(text: &str) -> Result<stockflow_core::Timestamp, ApiError> {
    stockflow_core::Timestamp::parse_rfc3339(text)
        .ok_or_else(|| ApiError::bad_request(format!("asOf: {text:?} is not an RFC 3339 time")))
}
