//! GET /v1/alerts: alert events (raised, cleared, fired), newest first, or
//! the active ones. Alerts are kept with their partition's state, so they
//! are as durable as the levels and replay the same.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};
use stockflow_core::alerts::{Alert, AlertKind};

use super::asks::{AlertFilter, Found};
use super::query::limit;
use super::ApiError;

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
    found.extend(filter.price_drops(kind.is_none() || price_drop, &backend.catalog(), percent));
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
