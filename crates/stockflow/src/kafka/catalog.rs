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

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};
use stockflow_core::catalog::{parse_location, parse_product};
use stockflow_core::rollup::sku_home;
use stockflow_core::{Location, Totals};

use super::http::{
    dead_letter, encode, gather, not_owned, restoring, KafkaApp, ReadQuery, FORWARDED,
};
use super::processor::{ACTIVE, RESTORING};
use crate::http::catalog::{
    item_json, items, location_json, locations_page, product_json, products_page, region_json,
    totals_json, LocationFilter, ProductFilter,
};
use crate::http::{read_body, ApiError};
use crate::pipeline::{Receipt, ReceiptError};

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

/// Checks and writes one catalog item (PUT); a refused one is kept as a
/// dead letter and answered 400.
async fn put_one(
    app: &KafkaApp,
    headers: &HeaderMap,
    body: Body,
    source: &str,
    key: String,
    check: impl Fn(&mut Value) -> Result<(), String>,
) -> Result<(), ApiError> {
    let (bytes, _) = read_body(headers, body, app.config.body_bytes_max).await?;
    let parsed = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| format!("body is not valid JSON: {e}"))
        .and_then(|mut v| check(&mut v).map(|()| v));
    match parsed {
        Ok(value) => {
            let offset = produce(app, &key, &value).await?;
            read_back(app, offset).await
        }
        Err(reason) => {
            dead_letter(app, source, &bytes, &reason).await;
            Err(ApiError::bad_request(reason))
        }
    }
}

/// Checks and writes every item of a bulk body (POST): the valid ones go
/// to the catalog topic, the others to the DLQ, reported by index.
async fn post_bulk(
    app: &KafkaApp,
    headers: &HeaderMap,
    body: Body,
    source: &str,
    key_of: impl Fn(&Value) -> Result<String, String>,
) -> Result<Json<Receipt>, ApiError> {
    let (bytes, format) = read_body(headers, body, app.config.body_bytes_max).await?;
    let mut receipt = Receipt::default();
    let mut last = None;
    for (index, (raw, value)) in items(&bytes, format, app.config.request_events_max)?
        .into_iter()
        .enumerate()
    {
        match value.and_then(|v| key_of(&v).map(|key| (key, v))) {
            Ok((key, value)) => {
                last = Some(produce(app, &key, &value).await?);
                receipt.accepted += 1;
            }
            Err(reason) => {
                dead_letter(app, source, raw.as_bytes(), &reason).await;
                receipt.rejected += 1;
                receipt.errors.push(ReceiptError {
                    index: index as u32,
                    event_id: None,
                    reason,
                });
            }
        }
    }
    if let Some(offset) = last {
        read_back(app, offset).await?;
    }
    Ok(Json(receipt))
}

/// PUT /v1/products/{sku}
pub async fn put_product(
    State(app): State<Arc<KafkaApp>>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    put_one(
        &app,
        &headers,
        body,
        "http:/v1/products",
        format!("product:{sku}"),
        |v| {
            parse_product(v, Some(&sku))?;
            v["sku"] = json!(sku);
            Ok(())
        },
    )
    .await?;
    get_product(State(app), Path(sku)).await
}

/// POST /v1/products
pub async fn post_products(
    State(app): State<Arc<KafkaApp>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Receipt>, ApiError> {
    post_bulk(&app, &headers, body, "http:/v1/products", |v| {
        parse_product(v, None).map(|p| format!("product:{}", p.sku))
    })
    .await
}

/// PUT /v1/locations/{id}
pub async fn put_location(
    State(app): State<Arc<KafkaApp>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    put_one(
        &app,
        &headers,
        body,
        "http:/v1/locations",
        format!("location:{id}"),
        |v| {
            parse_location(v, Some(&id))?;
            v["locationId"] = json!(id);
            Ok(())
        },
    )
    .await?;
    get_location(State(app), Path(id), Query(ReadQuery::default())).await
}

/// POST /v1/locations
pub async fn post_locations(
    State(app): State<Arc<KafkaApp>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Receipt>, ApiError> {
    post_bulk(&app, &headers, body, "http:/v1/locations", |v| {
        parse_location(v, None).map(|l| format!("location:{}", l.location_id))
    })
    .await
}

/// GET /v1/products?category=&q=&limit=&after=
pub async fn list_products(
    State(app): State<Arc<KafkaApp>>,
    Query(filter): Query<ProductFilter>,
) -> Result<Json<Value>, ApiError> {
    products_page(&app.shared.catalog.read(), &filter).map(Json)
}

/// GET /v1/products/{sku}: the product and its stock over every member.
pub async fn get_product(
    State(app): State<Arc<KafkaApp>>,
    Path(sku): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let product = app.shared.catalog.read().products.get(&sku).cloned();
    let product = product.ok_or_else(|| ApiError::not_found(format!("no product {sku:?}")))?;
    let (totals, _) = sku_rollup(&app, &sku).await?;
    let mut answer = product_json(&product);
    answer["stock"] = totals_json(&totals);
    Ok(Json(answer))
}

/// A SKU's totals, and its totals by location group (`region:…`, …).
type Rollup = (Totals, BTreeMap<String, Totals>);

/// A SKU's totals over the cluster, and by location group: the roll-up
/// kept at the SKU's home partition from its levels' reports (see
/// `stockflow_core::rollup`), read here or asked of the home's owner.
async fn sku_rollup(app: &KafkaApp, sku: &str) -> Result<Rollup, ApiError> {
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
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_owner",
            format!("partition {home} is not active here"),
        )),
    }
}

/// GET /v1/items/{sku}: totals over every location, and by region,
/// location type and channel.
pub async fn item(
    State(app): State<Arc<KafkaApp>>,
    Path(sku): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (totals, groups) = sku_rollup(&app, &sku).await?;
    let product = app.shared.catalog.read().products.get(&sku).cloned();
    item_json(&sku, product.as_ref(), &totals, &groups).map(Json)
}

/// GET /v1/regions/{region}/stock/{sku}
pub async fn region_stock(
    State(app): State<Arc<KafkaApp>>,
    Path((region, sku)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (_, groups) = sku_rollup(&app, &sku).await?;
    let totals = groups
        .get(&format!("region:{region}"))
        .copied()
        .unwrap_or_default();
    let catalog = app.shared.catalog.read();
    Ok(Json(region_json(&region, &sku, &totals, &catalog)))
}

/// GET /v1/locations/{id}: the location (type `unknown` if only seen in
/// events) and the roll-up of its stock over every member. With
/// `scope=local`: this instance's part, `{"parts":[{"totals"}]}`.
pub async fn get_location(
    State(app): State<Arc<KafkaApp>>,
    Path(id): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<Value>, ApiError> {
    let mut totals: Option<Totals> = None;
    for (p, status, _) in app.shared.owned() {
        if status != ACTIVE {
            if query.scope.as_deref() == Some("local") {
                return Err(restoring(p));
            }
            continue;
        }
        if let Some(t) = app.shared.partitions[p as usize]
            .read()
            .location_totals(&id)
        {
            totals.get_or_insert_with(Totals::default).add(&t);
        }
    }
    if query.scope.as_deref() == Some("local") {
        return Ok(Json(json!({"parts": [{"totals": totals}]})));
    }
    for part in gather(&app, &format!("/v1/locations/{}", encode(&id)), "parts").await? {
        if let Ok(Some(t)) = serde_json::from_value::<Option<Totals>>(part["totals"].clone()) {
            totals.get_or_insert_with(Totals::default).add(&t);
        }
    }
    let known = app.shared.catalog.read().locations.get(&id).cloned();
    let location = match (known, totals) {
        (Some(location), _) => location,
        (None, Some(_)) => Location::unknown(&id),
        (None, None) => return Err(ApiError::not_found(format!("no location {id:?}"))),
    };
    let mut answer = location_json(&location);
    answer["totals"] = totals_json(&totals.unwrap_or_default());
    Ok(Json(answer))
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

/// GET /v1/locations?type=&region=&limit=&after=: the catalog's locations
/// and every one seen in events on any member, each with its roll-up.
/// With `scope=local`: this instance's `{"parts":[{"locationId","totals"}]}`.
pub async fn list_locations(
    State(app): State<Arc<KafkaApp>>,
    Query(query): Query<ReadQuery>,
    Query(filter): Query<LocationFilter>,
) -> Result<Json<Value>, ApiError> {
    let (mut totals, restoring_here) = local_locations(&app);
    if query.scope.as_deref() == Some("local") {
        if let Some(p) = restoring_here {
            return Err(restoring(p));
        }
        let parts: Vec<Value> = totals
            .iter()
            .map(|(id, t)| json!({"locationId": id, "totals": t}))
            .collect();
        return Ok(Json(json!({ "parts": parts })));
    }
    for part in gather(&app, "/v1/locations", "parts").await? {
        let (Some(id), Ok(t)) = (
            part["locationId"].as_str(),
            serde_json::from_value::<Totals>(part["totals"].clone()),
        ) else {
            continue;
        };
        totals.entry(id.to_owned()).or_default().add(&t);
    }
    let mut all = app.shared.catalog.read().locations.clone();
    for id in totals.keys() {
        if !all.contains_key(id) {
            all.insert(id.clone(), Location::unknown(id));
        }
    }
    locations_page(&all, &filter, |id| {
        totals.get(id).copied().unwrap_or_default()
    })
    .map(Json)
}
