//! The catalog in Kafka mode. Writes go to the catalog topic (one
//! partition, compacted; key `product:{sku}` or `location:{id}`, value the
//! API's JSON), which every instance reads whole into its own copy, so
//! catalog reads are local. A write answers once the broker has it and
//! this instance has read it back. A SKU's stock (a product's stock, an
//! item's totals by region, type and channel) is read from the roll-up at
//! the SKU's home partition; a location's is gathered from every member,
//! each answering for its own partitions.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};
use stockflow_core::rollup::sku_home;
use stockflow_core::{CatalogChange, Rejected, Totals};

use super::http::{encode, gather, keep_rejected, not_owned, restoring, KafkaApp, FORWARDED};
use super::shared::{ACTIVE, RESTORING};
use stockflow_http::asks::{CatalogItem, Rollup};
use stockflow_http::backend::Read;
use stockflow_http::ApiError;
use stockflow_service::receipt::Receipt;

/// Longest wait for this instance to read back its own catalog write.
const READ_BACK_MAX: Duration = Duration::from_secs(10);

/// Produces one catalog record; its offset once the broker has it.
async fn produce(app: &KafkaApp, key: &str, value: &Value) -> Result<i64, ApiError> {
    let payload = value.to_string();
    let record = FutureRecord::to(&app.settings.topics.catalog)
        .partition(0)
        .key(key)
        .payload(&payload);
    match app.producer.send(record, Duration::from_secs(10)).await {
        Ok(delivery) => Ok(delivery.offset),
        Err((error, _)) => Err(ApiError::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Kafka did not acknowledge the catalog write ({error}); send it again (writes are upserts)"),
        )),
    }
}

/// Waits until this instance has read the catalog topic past `offset`.
async fn read_back(app: &KafkaApp, offset: i64) -> Result<(), ApiError> {
    let deadline = Instant::now() + READ_BACK_MAX;
    let read = || (app.shared.catalog_applied.load(Ordering::Acquire) > offset).then_some(());
    app.shared.wait_for(deadline, read).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "not_read_back",
            format!("the catalog write is in the log (offset {offset}) but this instance has not read it back yet; it will"),
        )
    })
}

/// Writes checked catalog items to the catalog topic and keeps the
/// refused ones as dead letters; answers once this instance has read its
/// own write back.
pub(super) async fn write(
    app: &KafkaApp,
    items: Vec<CatalogItem>,
    rejected: Vec<Rejected>,
    source: &str,
) -> Result<Receipt, ApiError> {
    let errors = keep_rejected(app, source, &rejected).await;
    let mut receipt = Receipt {
        rejected: errors.len() as u64,
        errors,
        ..Receipt::default()
    };
    let mut last = None;
    for item in items {
        let key = match &item.change {
            CatalogChange::Product(p) => format!("product:{}", p.sku),
            CatalogChange::Location(l) => format!("location:{}", l.location_id),
            CatalogChange::Acknowledge(a) => format!(
                "{}{}",
                super::processor::ACKNOWLEDGEMENT,
                stockflow_core::marks::scope_id(&a.key())
            ),
            CatalogChange::Mute(m) => format!("{}{}", super::processor::MUTE, m.id),
        };
        last = Some(produce(app, &key, &item.json).await?);
        receipt.accepted += 1;
    }
    if let Some(offset) = last {
        read_back(app, offset).await?;
    }
    Ok(receipt)
}

/// A SKU's totals over the cluster, and by location group: the roll-up
/// kept at the SKU's home partition from its levels' reports (see
/// `stockflow_core::rollup`), read here or asked of the home's owner.
pub(super) async fn sku_rollup(app: &KafkaApp, sku: &str) -> Result<Rollup, ApiError> {
    let body = at_home(app, sku, false).await?;
    let totals = serde_json::from_value(body["totals"].clone()).unwrap_or_default();
    let groups = serde_json::from_value(body["groups"].clone()).unwrap_or_default();
    Ok((totals, groups))
}

/// What is available of `sku` at each location, most first (then by
/// location id), as the SKU's home has it: within a processing cycle of
/// the levels. For sourcing a line by the most available.
pub async fn availability(app: &KafkaApp, sku: &str) -> Result<Vec<(String, i64)>, ApiError> {
    let body = at_home(app, sku, true).await?;
    let mut found: Vec<(String, i64)> = body["locations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            Some((
                l["locationId"].as_str()?.to_owned(),
                l["available"].as_i64()?,
            ))
        })
        .collect();
    found.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(found)
}

/// The internal endpoint's answer for `sku`: computed here if its home
/// partition is active here, else asked of the home's owner.
async fn at_home(app: &KafkaApp, sku: &str, locations: bool) -> Result<Value, ApiError> {
    let home = sku_home(sku, app.settings.partitions);
    if let Some(answer) = local_rollup(app, home, sku, locations)? {
        return Ok(answer);
    }
    let owner = app
        .cluster
        .owner(home)
        .map(|(owner, _)| owner)
        .filter(|owner| owner.instance_id != app.instance_id)
        .ok_or_else(|| not_owned(home))?;
    let failed = |what: String| {
        ApiError::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the owner of partition {home}, the home of sku {sku:?}, at {}: {what}; retry shortly",
                owner.url
            ),
        )
    };
    let answer = app
        .client
        .get(format!(
            "{}/v1/internal/rollups/{}?locations={locations}",
            owner.url,
            encode(sku)
        ))
        .header(FORWARDED, "1")
        .send()
        .await
        .map_err(|e| failed(format!("no answer ({e})")))?;
    if !answer.status().is_success() {
        return Err(failed(format!("answered {}", answer.status())));
    }
    answer
        .json()
        .await
        .map_err(|e| failed(format!("unreadable answer ({e})")))
}

/// The roll-up of `sku` (with each location's available, if asked) if
/// its home partition is active here; `None` if another member owns it.
fn local_rollup(
    app: &KafkaApp,
    home: u16,
    sku: &str,
    locations: bool,
) -> Result<Option<Value>, ApiError> {
    match app.shared.status(home) {
        ACTIVE => {
            let book = app.shared.rollups[home as usize].read();
            let catalog = app.shared.catalog.read();
            let (totals, groups) = book.totals(sku, &catalog);
            let mut answer = json!({"totals": totals, "groups": groups});
            if locations {
                answer["locations"] = book
                    .levels(sku)
                    .map(|(location, numbers)| {
                        let available = catalog.policy(sku, location).available(&numbers);
                        json!({"locationId": location, "available": available})
                    })
                    .collect();
            }
            Ok(Some(answer))
        }
        RESTORING => Err(restoring(home)),
        _ => Ok(None),
    }
}

#[derive(serde::Deserialize)]
pub struct InternalRollupQuery {
    #[serde(default)]
    locations: bool,
}

/// GET /v1/internal/rollups/{sku}?locations=: the roll-up at the SKU's
/// home, for members asking its owner; 409 if the home is not owned here.
pub async fn internal_rollup(
    State(app): State<Arc<KafkaApp>>,
    Path(sku): Path<String>,
    Query(query): Query<InternalRollupQuery>,
) -> Result<Json<Value>, ApiError> {
    let home = sku_home(&sku, app.settings.partitions);
    match local_rollup(&app, home, &sku, query.locations)? {
        Some(answer) => Ok(Json(answer)),
        None => Err(super::http::not_owner(home)),
    }
}

/// The roll-up of a location's stock over every member; with
/// `read.local_only`, this instance's part.
pub(super) async fn location_totals(
    app: &KafkaApp,
    id: &str,
    read: &Read,
) -> Result<Option<Totals>, ApiError> {
    let mut totals: Option<Totals> = None;
    for (p, status, _) in app.shared.owned() {
        if status != ACTIVE {
            if read.local_only {
                return Err(restoring(p));
            }
            continue;
        }
        if let Some(t) = app.shared.partitions[p as usize].read().location_totals(id) {
            totals.get_or_insert_with(Totals::default).add(&t);
        }
    }
    if read.local_only {
        return Ok(totals);
    }
    for part in gather(app, &format!("/v1/locations/{}", encode(id)), "parts").await? {
        if let Ok(Some(t)) = serde_json::from_value::<Option<Totals>>(part["totals"].clone()) {
            totals.get_or_insert_with(Totals::default).add(&t);
        }
    }
    Ok(totals)
}

/// Every location with stock on this instance's active partitions and
/// its totals here; the first partition still restoring, if any.
fn local_locations(app: &KafkaApp) -> (BTreeMap<String, Totals>, Option<u16>) {
    let mut found: BTreeMap<String, Totals> = BTreeMap::new();
    let mut restoring_here = None;
    for (p, status, _) in app.shared.owned() {
        if status != ACTIVE {
            restoring_here.get_or_insert(p);
            continue;
        }
        let partition = app.shared.partitions[p as usize].read();
        for id in partition.locations() {
            if let Some(t) = partition.location_totals(id) {
                found.entry(id.to_string()).or_default().add(&t);
            }
        }
    }
    (found, restoring_here)
}

/// The roll-up of every location with stock on any member; with
/// `read.local_only`, this instance's part.
pub(super) async fn locations_totals(
    app: &KafkaApp,
    read: &Read,
) -> Result<BTreeMap<String, Totals>, ApiError> {
    let (mut totals, restoring_here) = local_locations(app);
    if read.local_only {
        if let Some(p) = restoring_here {
            return Err(restoring(p));
        }
        return Ok(totals);
    }
    for part in gather(app, "/v1/locations", "parts").await? {
        let (Some(id), Ok(t)) = (
            part["locationId"].as_str(),
            serde_json::from_value::<Totals>(part["totals"].clone()),
        ) else {
            continue;
        };
        totals.entry(id.to_owned()).or_default().add(&t);
    }
    Ok(totals)
}
