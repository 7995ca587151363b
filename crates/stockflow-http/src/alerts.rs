//! GET /v1/alerts: alert events (raised, cleared, fired), newest first, or
//! the active ones. Alerts are kept with their partition's state, so they
//! are as durable as the levels and replay the same.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};
use stockflow_core::alerts::{Alert, AlertKind};

use super::asks::{AlertFilter, Found};
use super::auth::By;
use super::backend::{Backend, Read};
use super::ingest::read_body;
use super::query::limit;
use super::ApiError;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use stockflow_core::marks::{Acknowledgement, Marks, Mute};
use stockflow_core::{CatalogChange, Timestamp};
use stockflow_service::clock::wall_clock;

impl AlertFilter {
    /// The level kind asked for, and whether PRICE_DROP was asked for.
    pub fn kind(&self) -> Result<(Option<AlertKind>, bool), ApiError> {
        match self.kind.as_deref() {
            None => Ok((None, false)),
            Some("PRICE_DROP") => Ok((None, true)),
            Some(text) => match AlertKind::from_wire(text) {
                Some(kind) => Ok((Some(kind), false)),
                None => Err(ApiError::bad_request(format!(
                    "kind: {text:?} is not one of {KINDS}"
                ))),
            },
        }
    }

    /// The filters other than paging, as (name, value) query pairs (what a
    /// Kafka-mode instance asks its members).
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let fields = [
            ("kind", self.kind.clone()),
            ("sku", self.sku.clone()),
            ("locationId", self.location_id.clone()),
            ("active", self.active.map(|a| a.to_string())),
        ];
        fields
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect()
    }
}

/// Within one instant: by partition, newest first.
fn order_key(partition: u16, seq: u64) -> String {
    format!("{partition:05}-{:020}", u64::MAX - seq)
}

/// The level alerts of one partition that pass `filter` (active ones, or
/// the recent ones), added to `found`.
pub fn partition_alerts(
    p: u16,
    partition: &stockflow_core::Partition,
    filter: &AlertFilter,
    kind: Option<AlertKind>,
    found: &mut Found,
) {
    let alerts = &partition.alerts;
    let chosen: Box<dyn Iterator<Item = &Arc<Alert>>> = if filter.active == Some(true) {
        Box::new(alerts.active.values())
    } else {
        Box::new(alerts.recent.iter())
    };
    for a in chosen {
        let (sku, location) = partition.names_of(a.slot);
        let keep = kind.is_none_or(|k| a.kind == k)
            && filter.sku.as_deref().is_none_or(|s| **sku == *s)
            && filter
                .location_id
                .as_deref()
                .is_none_or(|l| **location == *l);
        if keep {
            found.push((
                a.at.0,
                order_key(p, a.seq),
                stockflow_service::json::alert_json(p, a, sku, location),
            ));
        }
    }
}

/// An alert another instance sent (its JSON), with its sort key; `None`
/// if it is not one `alert_json` made.
pub fn found_from_json(alert: Value) -> Option<(i64, String, Value)> {
    let at = chrono::DateTime::parse_from_rfc3339(alert["at"].as_str()?).ok()?;
    let (p, seq) = alert["id"].as_str()?.split_once('-')?;
    let key = order_key(p.parse().ok()?, seq.parse().ok()?);
    Some((at.timestamp_nanos_opt()?, key, alert))
}

/// A page cursor: an alert's place in the newest-first order, `{at
/// ns}-{key}` (its time, then its order within that instant). A place,
/// not an id: a page goes on after it even once that alert is gone.
fn cursor(at: i64, key: &str) -> String {
    format!("{at}-{key}")
}

/// The place a cursor names, as (time ns, order key); 400 if it is not a
/// cursor.
fn parse_cursor(text: &str) -> Result<(i64, &str), ApiError> {
    text.split_once('-')
        .and_then(|(at, key)| Some((at.parse::<i64>().ok()?, key)))
        .ok_or_else(|| ApiError::bad_request("after must be a nextAfter of this listing"))
}

/// Sorts `found` newest first and answers the page after `after`.
pub fn page(mut found: Found, after: Option<&str>, limit: usize) -> Result<Json<Value>, ApiError> {
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    if let Some(after) = after {
        // Continue after the cursor's place in this order.
        let (at, key) = parse_cursor(after)?;
        let past = found
            .iter()
            .position(|(t, k, _)| *t < at || (*t == at && k.as_str() > key))
            .unwrap_or(found.len());
        found.drain(..past);
    }
    let more = found.len() > limit;
    found.truncate(limit);
    let next = more
        .then(|| found.last().map(|(at, key, _)| cursor(*at, key)))
        .flatten();
    Ok(Json(json!({
        "alerts": found.into_iter().map(|(_, _, v)| v).collect::<Vec<_>>(),
        "nextAfter": next,
    })))
}

/// The kinds a filter can ask for: the level kinds, and PRICE_DROP.
const KINDS: &str = "LOW_STOCK, OUT_OF_STOCK, BACK_IN_STOCK, NEGATIVE_ON_HAND, PRICE_DROP";

/// PRICE_DROP alerts, read from the products' price histories (which are
/// durable and replayed): one per change that cut the price by at least
/// `percent`. The same ones were streamed when they happened.
fn price_drops(
    catalog: &stockflow_core::Catalog,
    percent: u8,
    sku: Option<&str>,
) -> Vec<(i64, String, Value)> {
    let products: Box<dyn Iterator<Item = &stockflow_core::Product>> = match sku {
        Some(sku) => Box::new(catalog.products.get(sku).into_iter()),
        None => Box::new(catalog.products.values()),
    };
    products
        .flat_map(|product| product.price_changes())
        .filter(|change| change.is_drop(percent))
        .map(|change| {
            let id = stockflow_service::json::price_drop_id(&change);
            (
                change.at.0,
                id,
                stockflow_service::json::price_drop_json(&change),
            )
        })
        .collect()
}

/// GET /v1/alerts?kind=&sku=&locationId=&active=&limit=&after=: level
/// alerts from the backend, and price drops from the catalog, newest first.
#[utoipa::path(get, path = "/v1/alerts",
    operation_id = "listAlerts", tag = "alerts",
    summary = "Alert events (raised, cleared, fired), newest first, or the active ones",
    description = "LOW_STOCK (available < the threshold: the location's lowStockThreshold if it sets one, else the product's, default 10; CRITICAL at or below half), OUT_OF_STOCK (available reaches 0), BACK_IN_STOCK (fired when available leaves 0), NEGATIVE_ON_HAND, STALE (no change to the level for --stale-after-seconds, default 1 h; cleared by its next change), RESERVATION_REJECTED (--reservation-burst refused reservations, default 5, within --reservation-burst-seconds, default 60; cleared after as long with none). One event per transition, never one per stock event; kept with the state (durable, replayed); time-driven alerts are raised by the engine's timers, at most about a second late. PRICE_DROP (a product price cut of at least --price-drop-percent, default 10) is derived from the price history; it is never active and has no location. In Kafka mode every instance gathers the level alerts from every member (members ask each other with scope=local); PRICE_DROP comes from the catalog topic, which every instance reads whole.",
    params(("kind" = Option<String>, Query, pattern = "^(LOW_STOCK|OUT_OF_STOCK|BACK_IN_STOCK|NEGATIVE_ON_HAND|STALE|RESERVATION_REJECTED|PRICE_DROP)$"), ("sku" = Option<String>, Query), ("locationId" = Option<String>, Query), ("active" = Option<bool>, Query), ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000), ("after" = Option<String>, Query, pattern = "^[0-9]{1,18}-.+$", description = "nextAfter of the previous page: a place in the list (a time, then an order within it).")),
    responses(
        (status = 200, description = "A page", body = crate::shapes::AlertPage),
        crate::openapi::ReadRefusals,
    ))]
pub async fn list<B: super::backend::Backend>(
    State(backend): State<Arc<B>>,
    Query(filter): Query<AlertFilter>,
    Query(query): Query<super::query::ReadQuery>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(&filter.page)?;
    let (kind, price_drop) = filter.kind()?;
    let read = query.read(&headers, &uri)?;
    let mut found = if price_drop {
        Found::new()
    } else {
        backend.level_alerts(&filter, kind, &read).await?
    };
    if read.local_only {
        // Every match of this member's partitions (at most
        // ALERTS_KEPT_PER_PARTITION each): the asker merges and pages.
        let alerts: Vec<Value> = found.into_iter().map(|(_, _, v)| v).collect();
        return Ok(Json(json!({ "alerts": alerts })));
    }
    // Price drops come from the catalog, which every Kafka-mode instance
    // holds whole: added here, never gathered.
    let percent = backend.config().price_drop_percent;
    {
        let catalog = backend.catalog();
        found.extend(filter.price_drops(kind.is_none() || price_drop, &catalog, percent));
        // So are acknowledgements and mutes: marked here, once.
        mark(&mut found, &catalog.marks, wall_clock());
    }
    found.retain(|(_, _, a)| filter.wants(a));
    page(found, filter.page.after.as_deref(), limit)
}

impl AlertFilter {
    /// The PRICE_DROP alerts this filter matches (`wanted`: its kinds
    /// include them). Price drops are one-off notices: never active, and
    /// not per location.
    pub fn price_drops(
        &self,
        wanted: bool,
        catalog: &stockflow_core::Catalog,
        percent: u8,
    ) -> Vec<(i64, String, Value)> {
        if !wanted || self.active == Some(true) || self.location_id.is_some() {
            return Vec::new();
        }
        price_drops(catalog, percent, self.sku.as_deref())
    }
}

impl AlertFilter {
    /// Whether a marked alert passes the `acknowledged` and `muted`
    /// filters.
    fn wants(&self, alert: &Value) -> bool {
        let has = |field: &str| !alert[field].is_null();
        self.acknowledged.is_none_or(|a| a == has("acknowledged"))
            && self.muted.is_none_or(|m| m == has("muted"))
    }
}

/// Adds what people said of each alert: `acknowledged` (`{by, at, note}`:
/// this very alert was acknowledged) and `muted` (`{id, by, until,
/// reason}`: a mute in force at `now` covers it), each absent otherwise
/// (so an alert no one marked reads as it was streamed).
pub fn mark(found: &mut Found, marks: &Marks, now: Timestamp) {
    for (_, _, alert) in found.iter_mut() {
        let (Some(id), Some(kind), Some(sku)) = (
            alert["id"].as_str(),
            alert["kind"].as_str(),
            alert["sku"].as_str(),
        ) else {
            continue;
        };
        let location = alert["locationId"].as_str();
        let acknowledged = marks
            .acknowledgement(id, kind, sku, location, now)
            .map(|a| json!({"by": a.by, "at": a.at.to_rfc3339(), "note": a.note}));
        let muted = marks.mute_over(kind, sku, location, now).map(
            |m| json!({"id": m.id, "by": m.by, "until": m.until.to_rfc3339(), "reason": m.reason}),
        );
        if let Some(acknowledged) = acknowledged {
            alert["acknowledged"] = acknowledged;
        }
        if let Some(muted) = muted {
            alert["muted"] = muted;
        }
    }
}

/// A mute as the API shows it.
pub fn mute_json(mute: &Mute) -> Value {
    json!({
        "id": mute.id,
        "kind": mute.kind,
        "sku": mute.sku,
        "locationId": mute.location_id,
        "minutes": mute.minutes,
        "reason": mute.reason,
        "by": mute.by,
        "at": mute.at.to_rfc3339(),
        "until": mute.until.to_rfc3339(),
    })
}

/// Largest acknowledgement or mute body.
const MARK_BODY_BYTES_MAX: usize = 16 << 10;

/// A body's JSON object (an empty body is `{}`), or 400.
async fn object_body(headers: &HeaderMap, body: axum::body::Body) -> Result<Value, ApiError> {
    let (bytes, _) = read_body(headers, body, MARK_BODY_BYTES_MAX).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(ApiError::bad_request("body: must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!(
            "body is not valid JSON: {e}"
        ))),
    }
}

/// Writes one change through the catalog's path: the log in the
/// embedded mode, the catalog topic in Kafka mode; answers once it is
/// applied here.
async fn write_mark<B: Backend>(
    backend: &B,
    change: CatalogChange,
    json: Value,
) -> Result<(), ApiError> {
    let item = super::asks::CatalogItem { change, json };
    backend
        .write_catalog(vec![item], Vec::new(), "alerts")
        .await
        .map(drop)
}

/// POST /v1/alerts/{id}/acknowledge, optionally `{"note": "…"}`.
#[utoipa::path(post, path = "/v1/alerts/{id}/acknowledge",
    operation_id = "acknowledgeAlert", tag = "alerts",
    summary = "Acknowledge an active alert: you have seen it and own it",
    description = "Recorded with the caller's token name and the server time, durably (through the log in the embedded mode, the catalog topic in Kafka mode) and on every instance. The alert shows `acknowledged` ({by, at, note}) until it clears; the next alert of the same level and kind starts unacknowledged. Acknowledging again replaces the note. Acknowledgements are kept 30 days.",
    params(("id" = String, Path, description = "The alert's id, as GET /v1/alerts?active=true lists it."),
        ("kind" = Option<String>, Query, pattern = "^(LOW_STOCK|OUT_OF_STOCK|BACK_IN_STOCK|NEGATIVE_ON_HAND|STALE|RESERVATION_REJECTED)$", description = "The alert's kind, sku and locationId, as listed, to tell apart alerts rebuilt at a restart (their raise gone from the kept recent alerts), which share a stand-in id."),
        ("sku" = Option<String>, Query), ("locationId" = Option<String>, Query)),
    request_body(content = crate::shapes::AcknowledgeRequest, content_type = "application/json", description = "Optional; an empty body is no note."),
    responses(
        (status = 200, description = "The alert, acknowledged", body = crate::shapes::Alert),
        (status = 404, description = "No active alert has this id (only an active alert can be acknowledged).", body = crate::error::ErrorBody),
        (status = 409, description = "Several active alerts have this id (stand-ins after a restart): say which with kind, sku and locationId.", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn acknowledge<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(id): Path<String>,
    Query(which): Query<AlertFilter>,
    By(by): By,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let mut body = object_body(&headers, body).await?;
    let (kind, _) = which.kind()?;
    let filter = AlertFilter {
        active: Some(true),
        sku: which.sku.clone(),
        location_id: which.location_id.clone(),
        kind: which.kind.clone(),
        ..AlertFilter::default()
    };
    let found = backend
        .level_alerts(&filter, kind, &Read::default())
        .await?;
    let mut matching: Vec<_> = found
        .into_iter()
        .filter(|(_, _, a)| a["id"] == id.as_str())
        .collect();
    if matching.len() > 1 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ambiguous_alert",
            format!("{} active alerts have the id {id:?} (alerts rebuilt at a restart share a stand-in id); say which with ?kind=&sku=&locationId=", matching.len()),
        ));
    }
    let Some((at, key, alert)) = matching.pop() else {
        return Err(ApiError::not_found(format!(
            "no active alert {id:?}; only an active alert can be acknowledged (see GET /v1/alerts?active=true)"
        )));
    };
    for field in ["kind", "sku", "locationId"] {
        body[field] = alert[field].clone();
    }
    body["alertId"] = json!(id);
    body["by"] = json!(by);
    let acknowledgement: Acknowledgement =
        stockflow_core::marks::parse_acknowledgement(&body).map_err(ApiError::bad_request)?;
    write_mark(&*backend, CatalogChange::Acknowledge(acknowledgement), body).await?;
    let mut found = vec![(at, key, alert)];
    mark(&mut found, &backend.catalog().marks, wall_clock());
    Ok(Json(found.pop().expect("one alert").2))
}

/// GET /v1/alerts/mutes
#[utoipa::path(get, path = "/v1/alerts/mutes",
    operation_id = "listAlertMutes", tag = "alerts",
    summary = "The mutes in force, soonest to end first",
    responses(
        (status = 200, description = "The mutes", body = crate::shapes::MuteList),
        crate::openapi::ReadRefusals,
    ))]
pub async fn mutes<B: Backend>(State(backend): State<Arc<B>>) -> Json<Value> {
    let catalog = backend.catalog();
    let mut mutes: Vec<&Mute> = catalog.marks.mutes_at(wall_clock()).collect();
    mutes.sort_by(|a, b| a.until.cmp(&b.until).then_with(|| a.id.cmp(&b.id)));
    Json(json!({ "mutes": mutes.into_iter().map(mute_json).collect::<Vec<_>>() }))
}

/// POST /v1/alerts/mutes
#[utoipa::path(post, path = "/v1/alerts/mutes",
    operation_id = "muteAlerts", tag = "alerts",
    summary = "Mute the alerts of a kind, SKU and/or location for a while",
    description = "Every alert the mute covers (each given field matches; none given: every alert, say for a stocktake) shows `muted` in GET /v1/alerts, can be left out with `muted=false`, and is not sent to webhooks while the mute is in force. Alerts are still raised and kept: a mute hides, it does not forget. The same scope muted again replaces the mute (its id is the scope's). Recorded with the caller's token name, durably and on every instance. At most 1,000 mutes at once.",
    request_body(content = crate::shapes::MuteRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The mute, in force", body = crate::shapes::MuteOut),
        (status = 409, description = "1,000 mutes are in force already; end some first.", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn mute<B: Backend>(
    State(backend): State<Arc<B>>,
    By(by): By,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut body = object_body(&headers, body).await?;
    body["by"] = json!(by);
    let mute = stockflow_core::marks::parse_mute(&body, None).map_err(ApiError::bad_request)?;
    if mute.minutes == 0 {
        return Err(ApiError::bad_request(
            "minutes: must be from 1; to end a mute, DELETE /v1/alerts/mutes/{id}",
        ));
    }
    {
        let catalog = backend.catalog();
        let now = wall_clock();
        let replaces = catalog
            .marks
            .mutes
            .get(&mute.id)
            .is_some_and(|m| m.until > now);
        if !replaces && catalog.marks.mutes_at(now).count() >= stockflow_core::limits::MUTES_MAX {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many_mutes",
                format!("{} mutes are in force already; end some first (DELETE /v1/alerts/mutes/{{id}})", stockflow_core::limits::MUTES_MAX),
            ));
        }
    }
    let id = mute.id.clone();
    write_mark(&*backend, CatalogChange::Mute(mute), body).await?;
    let catalog = backend.catalog();
    let mute = catalog.marks.mutes.get(&id).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_read_back",
            "the mute is written but not yet applied here; GET /v1/alerts/mutes shortly",
        )
    })?;
    Ok((StatusCode::CREATED, Json(mute_json(mute))))
}

/// DELETE /v1/alerts/mutes/{id}
#[utoipa::path(delete, path = "/v1/alerts/mutes/{id}",
    operation_id = "unmuteAlerts", tag = "alerts",
    summary = "End a mute now",
    description = "Recorded with the caller's token name, like the mute.",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The mute as it was", body = crate::shapes::MuteOut),
        (status = 404, description = "No mute with this id is in force.", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn unmute<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(id): Path<String>,
    By(by): By,
) -> Result<Json<Value>, ApiError> {
    let ended = {
        let catalog = backend.catalog();
        catalog
            .marks
            .mutes
            .get(&id)
            .filter(|m| m.until > wall_clock())
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no mute {id:?} is in force (see GET /v1/alerts/mutes)"
                ))
            })?
    };
    let body = json!({
        "kind": ended.kind,
        "sku": ended.sku,
        "locationId": ended.location_id,
        "minutes": 0,
        "by": by,
    });
    let change =
        stockflow_core::marks::parse_mute(&body, Some(&id)).map_err(ApiError::bad_request)?;
    write_mark(&*backend, CatalogChange::Mute(change), body).await?;
    Ok(Json(mute_json(&ended)))
}
