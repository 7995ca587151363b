//! Products, locations, and the roll-ups that use them: per item (by
//! region, location type, channel), per location, per region.
//!
//! Catalog writes go through the log like events (durable, ordered,
//! replayed); reads come from the catalog and the partitions' roll-ups,
//! which are kept incrementally, so no query scans levels.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use stockflow_core::catalog::{parse_location, parse_product};
use stockflow_core::{BodyFormat, CatalogChange, Location, Product, Rejected, Totals};

use super::asks::CatalogItem;
use super::asks::Page;
use super::auth::By;
use super::backend::{Backend, Read};
use super::ingest::read_body;
use super::query::limit;
use super::ApiError;
use stockflow_service::receipt::Receipt;

pub fn totals_json(t: &Totals) -> Value {
    json!({
        "onHand": t.on_hand,
        "reserved": t.reserved,
        "available": t.available,
        "inTransit": t.in_transit,
        "levels": t.levels,
        "atZero": t.at_zero,
        "belowThreshold": t.below_threshold,
    })
}

pub fn product_json(product: &Product) -> Value {
    let attributes: Value = serde_json::from_str(&product.attributes).unwrap_or(Value::Null);
    let money = |minor: i64| json!(minor as f64 / 100.0);
    json!({
        "sku": product.sku,
        "name": product.name,
        "category": product.category,
        "price": product.price_minor.map(money),
        "currency": product.currency,
        "lowStockThreshold": product.low_stock_threshold,
        "safetyStock": product.safety_stock,
        "attributes": attributes,
        "updatedAt": product.updated_at.to_rfc3339(),
        "updatedBy": by(&product.updated_by),
        "priceHistory": product.price_history.iter()
            .map(|(at, p)| json!({"at": at.to_rfc3339(), "price": money(*p)}))
            .collect::<Vec<_>>(),
    })
}

pub fn location_json(location: &Location) -> Value {
    json!({
        "locationId": location.location_id,
        "name": location.name,
        "type": location.kind.as_str(),
        "region": location.region,
        "channel": location.channel,
        "city": location.city,
        "lowStockThreshold": location.low_stock_threshold,
        "updatedBy": by(&location.updated_by),
    })
}

/// Who last wrote a catalog entry; null for a location only seen in events.
fn by(name: &str) -> Value {
    match name {
        "" => Value::Null,
        name => json!(name),
    }
}

/// One item of a bulk body: its raw text and its JSON, if it is JSON.
pub(crate) type Item = (String, Result<Value, String>);

/// The items of a bulk body (a JSON array, one object, or NDJSON) with
/// their raw text.
pub(crate) fn items(bytes: &[u8], format: BodyFormat, max: usize) -> Result<Vec<Item>, ApiError> {
    let messages = stockflow_service::sources::json_messages(bytes, format)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if messages.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("body holds more than {max} items; split it"),
        ));
    }
    Ok(messages
        .into_iter()
        .map(|m| (m.raw.into_owned(), m.value))
        .collect())
}

/// Parses every item of a bulk body; the refused ones become rejections.
fn parse_all(
    items: Vec<Item>,
    parse: impl Fn(&mut Value) -> Result<CatalogChange, String>,
) -> (Vec<CatalogItem>, Vec<Rejected>) {
    let mut changes = Vec::new();
    let mut rejected = Vec::new();
    for (index, (raw, value)) in items.into_iter().enumerate() {
        match value.and_then(|mut v| parse(&mut v).map(|change| (change, v))) {
            Ok((change, json)) => changes.push(CatalogItem { change, json }),
            Err(reason) => rejected.push(Rejected {
                index: index as u32,
                event_id: None,
                reason,
                raw,
            }),
        }
    }
    (changes, rejected)
}

/// A PUT body: written, or kept as a dead letter from `source` and
/// answered 400 with why.
async fn put_one<B: Backend>(
    backend: &B,
    headers: &HeaderMap,
    body: Body,
    source: &str,
    parse: impl Fn(&mut Value) -> Result<CatalogChange, String>,
) -> Result<(), ApiError> {
    let (bytes, _) = read_body(headers, body, backend.config().body_bytes_max).await?;
    let Ok(raw) = std::str::from_utf8(&bytes).map(str::to_owned) else {
        // Kept as it came: a dead letter's payload is never re-encoded.
        let reason = "body is not valid UTF-8".to_owned();
        let refused = stockflow_service::receipt::RefusedBody {
            reason: reason.clone(),
            payload: bytes.to_vec(),
        };
        backend.keep_refused(refused, source).await?;
        return Err(ApiError::bad_request(reason));
    };
    let parsed = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| format!("body is not valid JSON: {e}"))
        .and_then(|mut v| parse(&mut v).map(|change| CatalogItem { change, json: v }));
    match parsed {
        Ok(item) => backend
            .write_catalog(vec![item], Vec::new(), source)
            .await
            .map(drop),
        Err(reason) => {
            let rejected = Rejected {
                index: 0,
                event_id: None,
                reason: reason.clone(),
                raw,
            };
            backend
                .write_catalog(Vec::new(), vec![rejected], source)
                .await?;
            Err(ApiError::bad_request(reason))
        }
    }
}

/// A bulk body of catalog items: the valid ones written, the others kept
/// as dead letters and reported by index.
async fn post_bulk<B: Backend>(
    backend: &B,
    headers: &HeaderMap,
    body: Body,
    source: &str,
    parse: impl Fn(&mut Value) -> Result<CatalogChange, String>,
) -> Result<Json<Receipt>, ApiError> {
    let config = backend.config();
    let (bytes, format) = read_body(headers, body, config.body_bytes_max).await?;
    let items = items(&bytes, format, config.request_events_max)?;
    let (changes, rejected) = parse_all(items, parse);
    Ok(Json(
        backend.write_catalog(changes, rejected, source).await?,
    ))
}

/// A product as given: checked, with the path's sku filled in and
/// `updatedBy` set to the writer (whatever the body said).
pub(crate) fn product_change(
    v: &mut Value,
    sku: Option<&str>,
    by: &str,
) -> Result<CatalogChange, String> {
    stamp(v, by);
    let product = parse_product(v, sku)?;
    v["sku"] = json!(product.sku);
    Ok(CatalogChange::Product(product))
}

/// Sets who writes a catalog item; in Kafka mode the JSON goes to the
/// catalog topic with it.
fn stamp(v: &mut Value, by: &str) {
    if let Some(object) = v.as_object_mut() {
        object.insert("updatedBy".into(), json!(by));
    }
}

/// A location as given: checked, with the path's id filled in and
/// `updatedBy` set to the writer.
pub(crate) fn location_change(
    v: &mut Value,
    id: Option<&str>,
    by: &str,
) -> Result<CatalogChange, String> {
    stamp(v, by);
    let location = parse_location(v, id)?;
    v["locationId"] = json!(location.location_id);
    Ok(CatalogChange::Location(location))
}

/// PUT /v1/products/{sku}
#[utoipa::path(put, path = "/v1/products/{sku}",
    operation_id = "putProduct", tag = "catalog",
    summary = "Create or replace a product (durable, through the log)",
    description = "Upserts a product. In Kafka mode the product goes to the catalog topic (key `product:{sku}`, value this JSON), which every instance reads whole; the answer comes once this instance has read it back.",
    params(("sku" = crate::openapi::Id, Path)),
    request_body(content = ProductInput, content_type = "application/json"),
    responses(
        (status = 200, description = "The product as stored, with its stock (left out when the stock cannot be read right now, as during a rebalance in Kafka mode: the write stands)", body = crate::shapes::Product),
        (status = 404, description = "Not found; the message says what.", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn put_product<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(sku): Path<String>,
    By(by): By,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    put_one(&*backend, &headers, body, "http:/v1/products", |v| {
        product_change(v, Some(&sku), &by)
    })
    .await?;
    product_answer(&*backend, &sku, true).await.map(Json)
}

/// POST /v1/products
#[utoipa::path(post, path = "/v1/products",
    operation_id = "postProducts", tag = "catalog",
    summary = "Upsert products in bulk",
    description = "Upserts many products (a JSON array, one object, or NDJSON); refused items are dead letters, reported by index. In Kafka mode they go to the catalog topic as PUT does.",
    request_body(content((crate::openapi::Batch = "application/json"), (serde_json::Value = "application/x-ndjson")), description = "One item or an array of them (or NDJSON: one JSON object per line). Each is checked on its own (see the schema ProductInput): one refused is listed in the receipt's errors and kept as a dead letter, and the others are taken."),
    responses(
        (status = 200, description = "Receipt: accepted and rejected items (rejected ones are kept as dead letters).", body = stockflow_service::receipt::Receipt),
        crate::openapi::WriteRefusals,
    ))]
pub async fn post_products<B: Backend>(
    State(backend): State<Arc<B>>,
    By(by): By,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Receipt>, ApiError> {
    post_bulk(&*backend, &headers, body, "http:/v1/products", |v| {
        product_change(v, None, &by)
    })
    .await
}

/// GET /v1/products/{sku}: the product and its stock over every location.
#[utoipa::path(get, path = "/v1/products/{sku}",
    operation_id = "getProduct", tag = "catalog",
    summary = "One product",
    params(("sku" = String, Path)),
    responses(
        (status = 200, description = "product", body = crate::shapes::Product),
        (status = 404, description = "Unknown.", body = crate::error::ErrorBody),
        crate::openapi::ReadRefusals,
    ))]
pub async fn get_product<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(sku): Path<String>,
) -> Result<Json<Value>, ApiError> {
    product_answer(&*backend, &sku, false).await.map(Json)
}

/// The product and its stock. After a write (`written`), the answer is
/// what was stored: the stock is left out, rather than the write answered
/// as failed, when it cannot be read right now (a rebalance in Kafka mode).
async fn product_answer<B: Backend>(
    backend: &B,
    sku: &str,
    written: bool,
) -> Result<Value, ApiError> {
    let product = backend.catalog().products.get(sku).cloned();
    let product = product.ok_or_else(|| ApiError::not_found(format!("no product {sku:?}")))?;
    let mut answer = product_json(&product);
    match backend.item_totals(sku).await {
        Ok((totals, _)) => answer["stock"] = totals_json(&totals),
        Err(error) if !(written && error.retry_after.is_some()) => return Err(error),
        Err(_) => {}
    }
    Ok(answer)
}

#[derive(Deserialize)]
pub struct ProductFilter {
    category: Option<String>,
    q: Option<String>,
    #[serde(flatten)]
    page: Page,
}

/// GET /v1/products?category=&q=&limit=&after=: by sku; `q` matches sku or
/// name, case-insensitively.
#[utoipa::path(get, path = "/v1/products",
    operation_id = "listProducts", tag = "catalog",
    summary = "Search products",
    params(("category" = Option<String>, Query), ("q" = Option<String>, Query, description = "Case-insensitive substring of sku or name."), ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000), ("after" = Option<String>, Query, description = "nextAfter of the previous page.")),
    responses(
        (status = 200, description = "A page", body = crate::shapes::ProductPage),
        crate::openapi::ReadRefusals,
    ))]
pub async fn list_products<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(filter): Query<ProductFilter>,
) -> Result<Json<Value>, ApiError> {
    products_page(&backend.catalog(), &filter).map(Json)
}

/// One page of products matching `filter` (both modes).
pub fn products_page(
    catalog: &stockflow_core::Catalog,
    filter: &ProductFilter,
) -> Result<Value, ApiError> {
    let limit = limit(&filter.page)?;
    let q = filter.q.as_deref().map(str::to_lowercase);
    let start = filter
        .page
        .after
        .clone()
        .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    let mut matching = catalog
        .products
        .range::<String, _>((start, std::ops::Bound::Unbounded))
        .map(|(_, p)| p)
        .filter(|p| {
            filter
                .category
                .as_ref()
                .is_none_or(|c| p.category.eq_ignore_ascii_case(c))
        })
        .filter(|p| {
            q.as_ref().is_none_or(|q| {
                p.sku.to_lowercase().contains(q) || p.name.to_lowercase().contains(q)
            })
        });
    let page: Vec<&Product> = matching.by_ref().take(limit).collect();
    let next = (matching.next().is_some())
        .then(|| page.last().map(|p| p.sku.clone()))
        .flatten();
    Ok(json!({
        "products": page.iter().map(|p| product_json(p)).collect::<Vec<_>>(),
        "nextAfter": next,
    }))
}

/// PUT /v1/locations/{id}
#[utoipa::path(put, path = "/v1/locations/{locationId}",
    operation_id = "putLocation", tag = "catalog",
    summary = "Create or replace a location (durable, through the log)",
    params(("locationId" = crate::openapi::Id, Path)),
    request_body(content = LocationInput, content_type = "application/json"),
    responses(
        (status = 200, description = "The location as stored, with its totals (left out when they cannot be read right now, as during a rebalance in Kafka mode: the write stands)", body = crate::shapes::Location),
        (status = 404, description = "Not found; the message says what.", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn put_location<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(id): Path<String>,
    By(by): By,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    put_one(&*backend, &headers, body, "http:/v1/locations", |v| {
        location_change(v, Some(&id), &by)
    })
    .await?;
    match backend.location_totals(&id, &Read::default()).await {
        Ok(totals) => location_answer(&*backend, &id, totals).map(Json),
        // Stored; its totals are left out for now (see `product_answer`).
        Err(error) if error.retry_after.is_some() => {
            let location = backend.catalog().locations.get(&id).cloned();
            let location = location.unwrap_or_else(|| Location::unknown(&id));
            Ok(Json(location_json(&location)))
        }
        Err(error) => Err(error),
    }
}

/// POST /v1/locations
#[utoipa::path(post, path = "/v1/locations",
    operation_id = "postLocations", tag = "catalog",
    summary = "Upsert locations in bulk",
    request_body(content((crate::openapi::Batch = "application/json"), (serde_json::Value = "application/x-ndjson")), description = "One item or an array of them (or NDJSON: one JSON object per line). Each is checked on its own (see the schema LocationInput): one refused is listed in the receipt's errors and kept as a dead letter, and the others are taken."),
    responses(
        (status = 200, description = "Receipt: accepted and rejected items (rejected ones are kept as dead letters).", body = stockflow_service::receipt::Receipt),
        crate::openapi::WriteRefusals,
    ))]
pub async fn post_locations<B: Backend>(
    State(backend): State<Arc<B>>,
    By(by): By,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Receipt>, ApiError> {
    post_bulk(&*backend, &headers, body, "http:/v1/locations", |v| {
        location_change(v, None, &by)
    })
    .await
}

/// A location's answer: the catalog's (type `unknown` if only seen in
/// events) with the roll-up of its stock; 404 if neither knows it.
fn location_answer<B: Backend>(
    backend: &B,
    id: &str,
    totals: Option<Totals>,
) -> Result<Value, ApiError> {
    let known = backend.catalog().locations.get(id).cloned();
    let location = match (known, totals) {
        (Some(location), _) => location,
        (None, Some(_)) => Location::unknown(id),
        (None, None) => return Err(ApiError::not_found(format!("no location {id:?}"))),
    };
    let mut answer = location_json(&location);
    answer["totals"] = totals_json(&totals.unwrap_or_default());
    Ok(answer)
}

/// `scope=local` and the headers of a cluster-internal read.
#[derive(Deserialize, Default)]
pub struct ScopeQuery {
    scope: Option<String>,
}

impl ScopeQuery {
    fn read(&self, headers: &HeaderMap) -> Read {
        Read::scoped(headers, self.scope.as_deref())
    }
}

/// GET /v1/locations/{id}: the location (type `unknown` if only seen in
/// events) and the roll-up of its stock. With `scope=local` (what the
/// members of a cluster ask each other): only the asked instance's part,
/// `{"parts":[{"totals"}]}`.
#[utoipa::path(get, path = "/v1/locations/{locationId}",
    operation_id = "getLocation", tag = "catalog",
    summary = "One location with the roll-up of its stock (totals)",
    params(("locationId" = String, Path)),
    responses(
        (status = 200, description = "location", body = crate::shapes::Location),
        (status = 404, description = "Unknown.", body = crate::error::ErrorBody),
        crate::openapi::ReadRefusals,
    ))]
pub async fn get_location<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(id): Path<String>,
    Query(scope): Query<ScopeQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let read = scope.read(&headers);
    let totals = backend.location_totals(&id, &read).await?;
    if read.local_only {
        return Ok(Json(json!({"parts": [{"totals": totals}]})));
    }
    location_answer(&*backend, &id, totals).map(Json)
}

#[derive(Deserialize)]
pub struct LocationFilter {
    #[serde(rename = "type")]
    kind: Option<String>,
    region: Option<String>,
    #[serde(flatten)]
    page: Page,
}

/// GET /v1/locations?type=&region=&limit=&after=: the location master plus
/// every location seen only in events (type `unknown`), by id, each with
/// the roll-up of its stock. With `scope=local`: only the asked
/// instance's part, `{"parts":[{"locationId","totals"}]}`.
#[utoipa::path(get, path = "/v1/locations",
    operation_id = "listLocations", tag = "catalog",
    summary = "List locations (the master plus those only seen in events, as type unknown)",
    description = "Each location carries `totals`, the roll-up of its stock.",
    params(("type" = Option<String>, Query), ("region" = Option<String>, Query), ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000), ("after" = Option<String>, Query, description = "nextAfter of the previous page.")),
    responses(
        (status = 200, description = "A page", body = crate::shapes::LocationPage),
        crate::openapi::ReadRefusals,
    ))]
pub async fn list_locations<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(scope): Query<ScopeQuery>,
    Query(filter): Query<LocationFilter>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let read = scope.read(&headers);
    let totals = backend.locations_totals(&read).await?;
    if read.local_only {
        let parts: Vec<Value> = totals
            .iter()
            .map(|(id, t)| json!({"locationId": id, "totals": t}))
            .collect();
        return Ok(Json(json!({ "parts": parts })));
    }
    let mut all = backend.catalog().locations.clone();
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

/// One page of `all` locations matching `filter`, each with its stock
/// roll-up from `totals_of` (both modes).
pub fn locations_page(
    all: &BTreeMap<String, Location>,
    filter: &LocationFilter,
    totals_of: impl Fn(&str) -> Totals,
) -> Result<Value, ApiError> {
    let limit = limit(&filter.page)?;
    let after = filter.page.after.as_deref().unwrap_or("");
    let mut matching = all
        .values()
        .filter(|l| filter.page.after.is_none() || l.location_id.as_str() > after)
        .filter(|l| filter.kind.as_ref().is_none_or(|k| l.kind.as_str() == k))
        .filter(|l| {
            filter
                .region
                .as_ref()
                .is_none_or(|r| l.region.as_ref() == Some(r))
        });
    let page: Vec<&Location> = matching.by_ref().take(limit).collect();
    let next = matching
        .next()
        .and(page.last().map(|l| l.location_id.clone()));
    let locations: Vec<Value> = page
        .iter()
        .map(|l| {
            let mut json = location_json(l);
            json["totals"] = totals_json(&totals_of(&l.location_id));
            json
        })
        .collect();
    Ok(json!({
        "locations": locations,
        "nextAfter": next,
    }))
}

/// GET /v1/items/{sku}: totals over every location, and by region,
/// location type and channel.
#[utoipa::path(get, path = "/v1/items/{sku}",
    operation_id = "getItem", tag = "stock",
    summary = "Roll-up of an item: totals, by region, by location type, by channel (maintained incrementally)",
    description = "Embedded mode: summed from every partition's incremental roll-ups. Kafka mode: read at the SKU's home partition (a hash of the SKU), which every level's owner reports to through the repartition topic; it follows the levels within a processing cycle, and answers 503 while that partition restores.",
    params(("sku" = String, Path)),
    responses(
        (status = 200, description = "Item roll-up", body = crate::shapes::ItemRollup),
        (status = 404, description = "Neither stock nor product.", body = crate::error::ErrorBody),
        crate::openapi::ReadRefusals,
    ))]
pub async fn item<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(sku): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (totals, groups) = backend.item_totals(&sku).await?;
    let product = backend.catalog().products.get(&sku).cloned();
    item_json(&sku, product.as_ref(), &totals, &groups).map(Json)
}

/// GET /v1/items/{sku}'s answer from a SKU's totals and its totals by
/// location group (`region:…`, `type:…`, `channel:…`).
pub fn item_json(
    sku: &str,
    product: Option<&Product>,
    totals: &Totals,
    groups: &BTreeMap<String, Totals>,
) -> Result<Value, ApiError> {
    if totals.levels == 0 && product.is_none() {
        return Err(ApiError::not_found(format!(
            "no stock or product for sku {sku:?}"
        )));
    }
    let by = |prefix: &str| -> Value {
        groups
            .iter()
            .filter_map(|(g, t)| {
                g.strip_prefix(prefix)
                    .map(|name| (name.to_owned(), totals_json(t)))
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    Ok(json!({
        "sku": sku,
        "product": product.map(product_json),
        "totals": totals_json(totals),
        "byRegion": by("region:"),
        "byType": by("type:"),
        "byChannel": by("channel:"),
    }))
}

/// GET /v1/regions/{region}/stock/{sku}.
#[utoipa::path(get, path = "/v1/regions/{region}/stock/{sku}",
    operation_id = "getRegionStock", tag = "stock",
    summary = "Roll-up of an item over a region's locations",
    params(("region" = String, Path), ("sku" = String, Path)),
    responses(
        (status = 200, description = "Region roll-up", body = crate::shapes::RegionRollup),
        (status = 404, description = "Not found; the message says what.", body = crate::error::ErrorBody),
        crate::openapi::ReadRefusals,
    ))]
pub async fn region_stock<B: Backend>(
    State(backend): State<Arc<B>>,
    Path((region, sku)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (_, groups) = backend.item_totals(&sku).await?;
    let totals = groups
        .get(&format!("region:{region}"))
        .copied()
        .unwrap_or_default();
    Ok(Json(region_json(
        &region,
        &sku,
        &totals,
        &backend.catalog(),
    )))
}

/// GET /v1/regions/{region}/stock/{sku}'s answer (both modes).
pub fn region_json(
    region: &str,
    sku: &str,
    totals: &Totals,
    catalog: &stockflow_core::Catalog,
) -> Value {
    let locations = catalog
        .locations
        .values()
        .filter(|l| l.region.as_deref() == Some(region))
        .count();
    json!({
        "region": region,
        "sku": sku,
        "totals": totals_json(totals),
        "regionLocations": locations,
    })
}

/// A product as written: the path's sku names it. Unknown top-level fields
/// are kept in `attributes`. (Read field by field by `product_change`,
/// which keeps unknown fields; this type only describes it.)
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct ProductInput {
    #[schema(min_length = 1, max_length = 512)]
    name: String,
    #[schema(min_length = 1, max_length = 128)]
    category: Option<String>,
    /// At most 2 decimals, no exponent.
    #[schema(minimum = 0, maximum = 10000000000.0, multiple_of = 0.01)]
    price: Option<f64>,
    /// Three capital letters; USD when absent.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
    #[schema(minimum = 0, maximum = 1000000000)]
    low_stock_threshold: Option<i64>,
    /// Held back from available where set.
    #[schema(minimum = 0, maximum = 1000000000)]
    safety_stock: Option<i64>,
    attributes: Option<HashMap<String, serde_json::Value>>,
}

/// A location as written: the path's locationId names it. (Read field by
/// field by `location_change`; this type only describes it.)
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub(crate) struct LocationInput {
    #[schema(min_length = 1, max_length = 512)]
    name: Option<String>,
    /// store, warehouse, online, dc or unknown.
    #[serde(rename = "type")]
    #[schema(pattern = "^(store|warehouse|online|dc|unknown)$")]
    kind: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    region: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    channel: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    city: Option<String>,
    /// Overrides the products' low-stock threshold for stock held here.
    #[schema(minimum = 0, maximum = 1000000000)]
    low_stock_threshold: Option<i64>,
}
