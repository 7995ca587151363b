//! What the embedded engine answers reads from: its partitions, its
//! catalog and its history files, read-locked one partition at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use stockflow_core::alerts::AlertKind;
use stockflow_core::{route, LevelView, Numbers, Policy, Timestamp, Totals};

use super::Embedded;
use stockflow_http::alerts::partition_alerts;
use stockflow_http::asks::HistoryPage;
use stockflow_http::asks::Listing;
use stockflow_http::asks::Rollup;
use stockflow_http::asks::{AlertFilter, Found};
use stockflow_http::backend::Read;
use stockflow_http::history::{as_of_json, io_error, page_json, page_start};
use stockflow_http::query::{level_json, limit, listed_level_json, no_level};
use stockflow_http::ApiError;
use stockflow_service::clock::wall_clock;
use stockflow_service::history::HistoryReader;

/// The stock rules of `sku` at `location` (see [`Catalog::policy`]).
///
/// [`Catalog::policy`]: stockflow_core::Catalog::policy
pub fn policy(state: &Embedded, sku: &str, location: &str) -> Policy {
    state.pipeline.shared.catalog.read().policy(sku, location)
}

/// The embedded engine's level, now or as of a past time.
pub(crate) fn level_here(
    state: &Embedded,
    sku: &str,
    location: &str,
    read: &Read,
) -> Result<Value, ApiError> {
    if let Some(at) = read.as_of {
        return level_at(state, sku, location, at);
    }
    let shared = &state.pipeline.shared;
    let partition = route(sku, location, shared.partition_count());
    let view = shared.partitions[partition as usize]
        .read()
        .get(sku, location);
    let policy = policy(state, sku, location);
    view.map(|v| level_json(&v, policy))
        .ok_or_else(|| no_level(sku, location))
}

/// The embedded engine's levels of a SKU, now or as of a past time.
pub(crate) fn sku_here(state: &Embedded, sku: &str, read: &Read) -> Result<Value, ApiError> {
    if let Some(at) = read.as_of {
        return sku_at(state, sku, at);
    }
    let mut views: Vec<LevelView> = Vec::new();
    for partition in &state.pipeline.shared.partitions {
        views.extend(partition.read().levels_of_sku(sku));
    }
    if views.is_empty() {
        return Err(ApiError::not_found(format!(
            "no stock levels for sku {sku:?}"
        )));
    }
    views.sort_by(|a, b| a.location_id.cmp(&b.location_id));
    let catalog = state.pipeline.shared.catalog.read();
    let mut totals = Totals::default();
    let mut locations = Vec::with_capacity(views.len());
    for v in &views {
        let policy = catalog.policy(sku, &v.location_id);
        totals.add(&Totals::of(&v.level.numbers(), policy));
        locations.push(level_json(v, policy));
    }
    drop(catalog);
    Ok(json!({
        "sku": sku,
        "totals": {"onHand": totals.on_hand, "reserved": totals.reserved, "available": totals.available, "inTransit": totals.in_transit},
        "locations": locations,
    }))
}

/// The embedded engine's page of a location's levels.
pub(crate) fn location_here(
    state: &Embedded,
    location: &str,
    listing: &Listing,
) -> Result<Value, ApiError> {
    let (limit, status) = (listing.limit, listing.status);
    let after = listing.after.as_deref();
    // Each partition holds this location's levels sorted by sku; merge the
    // first `limit` of each.
    let mut views: Vec<LevelView> = Vec::new();
    for partition in &state.pipeline.shared.partitions {
        views.extend(partition.read().levels_of_location(
            location,
            after,
            limit + 1,
            |level, policy| status.is_none_or(|s| s.holds(level, policy)),
        ));
    }
    if views.is_empty() && after.is_none() && status.is_none() {
        return Err(ApiError::not_found(format!(
            "no stock levels at location {location:?}"
        )));
    }
    views.sort_by(|a, b| a.sku.cmp(&b.sku));
    let more = views.len() > limit;
    views.truncate(limit);
    let next = if more {
        views.last().map(|v| v.sku.to_string())
    } else {
        None
    };
    let levels: Vec<Value> = {
        let catalog = state.pipeline.shared.catalog.read();
        views
            .iter()
            .map(|v| listed_level_json(v, catalog.policy(&v.sku, &v.location_id)))
            .collect()
    };
    Ok(json!({
        "locationId": location,
        "levels": levels,
        "nextAfter": next,
    }))
}

/// The history cursor of a level, or 404.
fn head(state: &Embedded, sku: &str, location: &str) -> Result<(u16, u64), ApiError> {
    let shared = &state.pipeline.shared;
    let partition = route(sku, location, shared.partition_count());
    let head = shared.partitions[partition as usize]
        .read()
        .history_head_of(sku, location)
        .ok_or_else(|| stockflow_http::query::no_level(sku, location))?;
    Ok((partition, head))
}

fn reader(state: &Embedded, partition: u16) -> Result<HistoryReader, ApiError> {
    HistoryReader::open(&state.config.data_dir, partition).map_err(io_error)
}

/// The embedded engine's history of a level.
pub(crate) fn history_here(
    state: &Embedded,
    sku: &str,
    location: &str,
    query: &HistoryPage,
) -> Result<Value, ApiError> {
    let limit = limit(&query.page)?;
    let (partition, head) = head(state, sku, location)?;
    let start = page_start(head, query.before.as_deref())?;
    let policy = policy(state, sku, location);
    let reader = reader(state, partition)?;
    tokio::task::block_in_place(|| page_json(sku, location, &reader, start, limit, policy))
}

/// The level of (sku, location) as processing had left it at `at`.
pub fn level_as_of(
    state: &Embedded,
    sku: &str,
    location: &str,
    at: Timestamp,
) -> Result<Option<Value>, ApiError> {
    let (partition, head) = head(state, sku, location)?;
    let reader = reader(state, partition)?;
    let policy = policy(state, sku, location);
    let retention = state.config.history_retention_ns;
    tokio::task::block_in_place(|| as_of_json(sku, location, &reader, head, at, policy, retention))
}

/// GET /v1/stock/{sku}/{locationId}?asOf=
pub fn level_at(
    state: &Embedded,
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
pub fn sku_at(state: &Embedded, sku: &str, at: Timestamp) -> Result<Value, ApiError> {
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
            totals.add(&Totals::of(&n, policy(state, sku, location)));
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

/// The embedded engine's level alerts matching `filter`.
pub(crate) fn level_alerts_here(
    state: &Embedded,
    filter: &AlertFilter,
    kind: Option<AlertKind>,
) -> Found {
    let mut found = Found::new();
    for (p, partition) in state.pipeline.shared.partitions.iter().enumerate() {
        partition_alerts(p as u16, &partition.read(), filter, kind, &mut found);
    }
    found
}

/// The embedded engine's activity.
pub(crate) fn activity_here(state: &Embedded, seconds: usize, stale: Duration) -> Value {
    state
        .pipeline
        .shared
        .activity
        .json(seconds, wall_clock(), stale)
}

/// The embedded engine's roll-up of a location's stock; `None` if no
/// level is there.
pub(crate) fn location_totals_here(state: &Embedded, id: &str) -> Option<Totals> {
    let mut found = None::<Totals>;
    for partition in &state.pipeline.shared.partitions {
        if let Some(t) = partition.read().location_totals(id) {
            found.get_or_insert_with(Totals::default).add(&t);
        }
    }
    found
}

/// The embedded engine's roll-up of every location with stock.
pub(crate) fn locations_totals_here(state: &Embedded) -> BTreeMap<String, Totals> {
    let mut found: BTreeMap<String, Totals> = BTreeMap::new();
    for partition in &state.pipeline.shared.partitions {
        let partition = partition.read();
        for id in partition.locations() {
            if let Some(t) = partition.location_totals(id) {
                found.entry(id.to_string()).or_default().add(&t);
            }
        }
    }
    found
}

/// The embedded engine's roll-up of a SKU, over every location and by
/// location group.
pub(crate) fn item_totals_here(state: &Embedded, sku: &str) -> Rollup {
    let mut groups: BTreeMap<String, Totals> = BTreeMap::new();
    let mut totals = Totals::default();
    for partition in &state.pipeline.shared.partitions {
        let partition = partition.read();
        if let Some(t) = partition.sku_totals(sku) {
            totals.add(&t);
        }
        for (group, t) in partition.group_totals(sku) {
            groups.entry(group.to_string()).or_default().add(&t);
        }
    }
    (totals, groups)
}
