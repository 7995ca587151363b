//! The HTTP API in Kafka mode. Ingest produces to the canonical topic and
//! answers after the broker acknowledges (`?wait=applied`: after the
//! owners applied it). Every instance answers every query: a key owned
//! elsewhere is forwarded to its owner, a SKU's or a location's levels are
//! gathered from every member, and so are alerts and order lists; a SKU's
//! roll-up is read at its home partition ([`super::catalog`]). Orders go
//! to their home partition ([`super::orders`]). What the one HTTP layer
//! asks of Kafka mode is in [`super::backend`]; this is how it is done.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::Json;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use serde_json::{json, Value};
use stockflow_core::{route, LevelView, Parsed, Totals};

use super::cluster::Cluster;
use super::shared::{Reason, Shared, ACTIVE, NOT_OWNED, RESTORING};
use super::wire::canonical_json;
use super::{level_key, KafkaSettings};
use crate::dead_letters::{letter_headers, Origin};
use stockflow_http::backend::Read;
use stockflow_http::query::no_level;
use stockflow_http::{level_json, ApiError};
use stockflow_service::clock::wall_clock;
use stockflow_service::config::Config;
use stockflow_service::receipt::{Receipt, ReceiptError};

pub(crate) use stockflow_http::backend::FORWARDED;
/// Longest `?wait=applied` wait.
const WAIT_APPLIED_MAX: Duration = Duration::from_secs(30);

pub struct KafkaApp {
    /// The live stream's hub, fed from the output topics.
    pub hub: Arc<stockflow_service::stream::Hub>,
    pub settings: KafkaSettings,
    pub config: Config,
    pub producer: FutureProducer,
    pub shared: Arc<Shared>,
    pub cluster: Arc<Cluster>,
    pub client: reqwest::Client,
    pub instance_id: String,
    pub url: String,
    /// The dead letters resolved so far (see [`super::dead_letters`]).
    pub resolved: Arc<super::shared::Resolved>,
    /// The dashboard's simulator, producing as POST /v1/events does.
    pub simulator: Arc<stockflow_http::simulator::Simulator>,
    /// Ingest requests being read or parsed, and their bytes.
    pub admission: stockflow_http::Admission,
}

/// Produces parsed events to their canonical partitions, keeps the
/// refused ones as dead letters (from `source`) and answers the receipt.
pub(crate) async fn ingest_parsed(
    app: &KafkaApp,
    wait_applied: bool,
    parsed: Parsed,
    source: &str,
) -> Result<Receipt, ApiError> {
    let now = wall_clock();
    let mut deliveries = Vec::with_capacity(parsed.batch.len());
    for event in parsed.batch.iter() {
        let partition = route(event.sku, event.location_id, app.settings.partitions);
        let json = canonical_json(&event, now);
        let key = level_key(event.sku, event.location_id);
        let mut record = FutureRecord::to(&app.settings.topics.canonical)
            .partition(i32::from(partition))
            .key(&key)
            .payload(&json)
            .timestamp(now.0 / 1_000_000);
        if let Some(headers) = super::wire::by_headers(event.by) {
            record = record.headers(headers);
        }
        match app.producer.send_result(record) {
            Ok(delivery) => deliveries.push(delivery),
            Err((error, _)) => {
                return Err(ApiError::overloaded(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot queue for Kafka ({error}); retry shortly"),
                ))
            }
        }
    }
    let mut errors = keep_rejected(app, source, &parsed.rejected).await;
    // Where each event landed, and each partition's range of them.
    let mut landed: Vec<(u16, i64)> = Vec::with_capacity(deliveries.len());
    let mut ranges: BTreeMap<u16, (i64, i64)> = BTreeMap::new();
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(d)) => {
                let p = d.partition as u16;
                landed.push((p, d.offset));
                let range = ranges.entry(p).or_insert((d.offset, d.offset));
                *range = (range.0.min(d.offset), range.1.max(d.offset));
            }
            Ok(Err((error, _))) => {
                return Err(ApiError::overloaded(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("Kafka did not acknowledge ({error}); send the request again (eventIds make that safe)"),
                ))
            }
            Err(_) => return Err(ApiError::stopping(())),
        }
    }
    let mut duplicates = 0u64;
    if wait_applied {
        // The owners' word on each event: applied, duplicate or refused.
        let deadline = Instant::now() + WAIT_APPLIED_MAX;
        let mut reasons: HashMap<(u16, i64), String> = HashMap::new();
        let mut unknown_through: HashMap<u16, i64> = HashMap::new();
        for (&p, &(from, to)) in &ranges {
            let answer = wait_applied_on(app, p, from, to, deadline).await?;
            unknown_through.insert(p, answer["unknownThrough"].as_i64().unwrap_or(i64::MAX));
            for outcome in answer["outcomes"].as_array().into_iter().flatten() {
                if let (Some(offset), Some(reason)) =
                    (outcome["offset"].as_i64(), outcome["reason"].as_str())
                {
                    reasons.insert((p, offset), reason.to_owned());
                }
            }
        }
        for (event, (p, offset)) in parsed.batch.iter().zip(&landed) {
            let reason = match reasons.remove(&(*p, *offset)) {
                Some(reason) if reason == "duplicate" => {
                    duplicates += 1;
                    continue;
                }
                // Said as the embedded mode says it, naming the order.
                Some(reason) => match stockflow_core::Rejection::from_code(&reason) {
                    Some(why) => {
                        let order = event.correlation_id.filter(|_| event.event_type.moves_holds());
                        why.describe(event.sku, event.location_id, order)
                    }
                    None => reason,
                },
                None if *offset <= unknown_through[p] => "outcome_unknown: applied, but by an owner before a rebalance (or too long ago); read the level".to_owned(),
                None => continue,
            };
            errors.push(ReceiptError {
                index: event.index,
                event_id: Some(event.event_id.to_owned()),
                reason,
            });
        }
        errors.sort_by_key(|e| e.index);
    }
    Ok(Receipt {
        accepted: parsed.batch.len() as u64 - duplicates,
        duplicates,
        rejected: parsed.rejected.len() as u64,
        errors,
        order: None,
    })
}

/// Keeps a refused payload in the DLQ topic with its reason and source
/// (the route that refused it) as headers.
/// Keeps each refused item of a body as a dead letter from `source`, and
/// answers what a receipt says of them.
pub(super) async fn keep_rejected(
    app: &KafkaApp,
    source: &str,
    rejected: &[stockflow_core::Rejected],
) -> Vec<ReceiptError> {
    let mut errors = Vec::with_capacity(rejected.len());
    for refused in rejected {
        let item = (refused.index, refused.event_id.as_deref());
        dead_letter(
            app,
            source,
            refused.raw.as_bytes(),
            &refused.reason,
            Some(item),
        )
        .await;
        errors.push(ReceiptError {
            index: refused.index,
            event_id: refused.event_id.clone(),
            reason: refused.reason.clone(),
        });
    }
    errors
}

/// Keeps a refused payload in the DLQ topic, with why and where from;
/// `item` is its place in the body it came in, and its eventId if read.
pub(super) async fn dead_letter(
    app: &KafkaApp,
    source: &str,
    payload: &[u8],
    reason: &str,
    item: Option<(u32, Option<&str>)>,
) {
    let headers = letter_headers(reason, Origin::Request { source, item });
    let record = FutureRecord::<(), [u8]>::to(&app.settings.topics.dlq)
        .payload(payload)
        .headers(headers);
    if let Err((error, _)) = app.producer.send(record, Duration::from_secs(10)).await {
        tracing::warn!(%error, "dead letter not delivered");
    }
    metrics::counter!("stockflow_events_rejected_total").increment(1);
}

/// Waits until partition `p` has applied `offset`, here or at its owner;
/// answers with the outcomes of its records from `from` on (see
/// [`outcomes_json`]).
async fn wait_applied_on(
    app: &KafkaApp,
    p: u16,
    from: i64,
    offset: i64,
    deadline: Instant,
) -> Result<Value, ApiError> {
    let not_yet = || {
        ApiError::new(StatusCode::GATEWAY_TIMEOUT, "not_applied_yet", format!("partition {p} has not applied offset {offset} yet; the events are in the log and will be applied"))
    };
    loop {
        if app.shared.status(p) != super::shared::NOT_OWNED {
            match wait_local(&app.shared, p, from, offset, deadline).await? {
                Some(answer) => return Ok(answer),
                None => continue, // released meanwhile: ask the new owner
            }
        }
        let Some((owner, _)) = app.cluster.owner(p) else {
            if Instant::now() > deadline {
                return Err(not_owned(p));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = app
            .client
            .get(format!(
                "{}/v1/internal/applied?partition={p}&from={from}&offset={offset}&timeoutMs={}",
                owner.url,
                left.as_millis()
            ))
            .header(FORWARDED, "1")
            .timeout(left + Duration::from_secs(1))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => {
                return r.json().await.map_err(|_| not_yet());
            }
            // The owner moved (or is restoring): ask again.
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return Err(not_yet()),
        }
    }
}

/// Waits here; `None` if this instance stopped owning `p` meanwhile.
async fn wait_local(
    shared: &Shared,
    p: u16,
    from: i64,
    offset: i64,
    deadline: Instant,
) -> Result<Option<Value>, ApiError> {
    let applied = || match shared.status(p) {
        super::shared::NOT_OWNED => Some(None),
        ACTIVE if shared.applied[p as usize].load(Ordering::Acquire) > offset => {
            Some(Some(outcomes_json(shared, p, from, offset)))
        }
        _ => None,
    };
    shared.wait_for(deadline, applied).await.ok_or_else(|| {
        ApiError::new(StatusCode::GATEWAY_TIMEOUT, "not_applied_yet", format!("partition {p} has not applied offset {offset} yet; the events are in the log and will be applied"))
    })
}

/// `{"partition","applied","unknownThrough","outcomes":[{"offset","reason"}]}`:
/// the records in `from..=to` that were duplicates or refused; outcomes at
/// or before `unknownThrough` are not known here any more.
fn outcomes_json(shared: &Shared, p: u16, from: i64, to: i64) -> Value {
    let outcomes = shared.outcomes[p as usize].lock();
    let list: Vec<Value> = outcomes
        .between(from, to)
        .into_iter()
        .map(|(offset, reason)| {
            let reason = match reason {
                Reason::Duplicate => "duplicate",
                Reason::Rejected(why) => why.as_str(),
            };
            json!({"offset": offset, "reason": reason})
        })
        .collect();
    json!({
        "partition": p,
        "applied": shared.applied[p as usize].load(Ordering::Acquire),
        "unknownThrough": outcomes.unknown_through,
        "outcomes": list,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedQuery {
    partition: u16,
    offset: i64,
    /// First offset whose outcome is wanted (default: `offset`).
    from: Option<i64>,
    timeout_ms: Option<u64>,
}

/// 409 from a cluster-internal endpoint asked about partition `p`, which
/// is not active on this instance (moved, or restoring): the asker finds
/// the owner again.
pub(super) fn not_owner(p: u16) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_owner",
        format!("partition {p} is not active here"),
    )
}

/// GET /v1/internal/applied: answers once this instance's partition has
/// applied the offset (or 409 if it does not own it).
pub(super) async fn applied(
    State(app): State<Arc<KafkaApp>>,
    Query(q): Query<AppliedQuery>,
) -> Result<Json<Value>, ApiError> {
    let not_owner = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_owner",
            format!("partition {} is not owned here", q.partition),
        )
    };
    if q.partition >= app.settings.partitions
        || app.shared.status(q.partition) == super::shared::NOT_OWNED
    {
        return Err(not_owner());
    }
    let wait = Duration::from_millis(q.timeout_ms.unwrap_or(10_000)).min(WAIT_APPLIED_MAX);
    let from = q.from.unwrap_or(q.offset);
    match wait_local(
        &app.shared,
        q.partition,
        from,
        q.offset,
        Instant::now() + wait,
    )
    .await?
    {
        Some(answer) => Ok(Json(answer)),
        None => Err(not_owner()),
    }
}

pub(super) fn not_owned(p: u16) -> ApiError {
    let mut error = ApiError::overloaded(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("partition {p} has no owner right now (a rebalance or restore is under way); retry shortly"),
    );
    error.code = "no_owner".into();
    error
}

pub(super) fn restoring(p: u16) -> ApiError {
    let mut error = ApiError::overloaded(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("partition {p} is restoring its state; retry shortly, or ask with ?stale=true for what it has so far"),
    );
    error.code = "restoring".into();
    error
}

/// A forwarded answer as the API's own: its JSON, or its error as it was
/// (status, code, message and Retry-After).
async fn forward_json(app: &KafkaApp, url: &str, path_and_query: &str) -> Result<Value, ApiError> {
    let unanswered = |error: &dyn std::fmt::Display| {
        ApiError::overloaded(
            StatusCode::BAD_GATEWAY,
            format!("the owner at {url} did not answer ({error}); retry shortly"),
        )
    };
    let response = app
        .client
        .get(format!("{url}{path_and_query}"))
        .header(FORWARDED, "1")
        .send()
        .await
        .map_err(|e| unanswered(&e))?;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body: Value = response.json().await.map_err(|e| unanswered(&e))?;
    if status.is_success() {
        return Ok(body);
    }
    Err(ApiError {
        status,
        code: body["code"]
            .as_str()
            .unwrap_or("owner_error")
            .to_owned()
            .into(),
        message: body["message"].as_str().unwrap_or_default().to_owned(),
        retry_after,
    })
}

/// Asks partition `p`'s owner (never a second time).
async fn at_owner_json(app: &KafkaApp, p: u16, read: &Read) -> Result<Value, ApiError> {
    if read.forwarded {
        return Err(not_owned(p));
    }
    match app.cluster.owner(p) {
        Some((owner, _)) if owner.instance_id != app.instance_id => {
            forward_json(app, &owner.url, &read.path_and_query).await
        }
        _ => Err(not_owned(p)),
    }
}

impl KafkaApp {
    /// A level here if its partition is owned here, else at its owner.
    pub(crate) async fn read_level(
        &self,
        sku: &str,
        location: &str,
        read: &Read,
    ) -> Result<Value, ApiError> {
        let p = route(sku, location, self.settings.partitions);
        let status = self.shared.status(p);
        if let Some(at) = read.as_of {
            if status != NOT_OWNED {
                return local_as_of(self, p, sku, location, at);
            }
            return at_owner_json(self, p, read).await;
        }
        if status == ACTIVE || (status == RESTORING && read.stale) {
            let partition = self.shared.partitions[p as usize].read();
            return match partition.get(sku, location) {
                Some(view) => {
                    let mut level = level_json(&view, partition.policy_of_level(sku, location));
                    if status == RESTORING {
                        level["stale"] = json!(true);
                    }
                    Ok(level)
                }
                // Not restored yet is not "never seen".
                None if status == RESTORING => Err(restoring(p)),
                None => Err(no_level(sku, location)),
            };
        }
        if status == RESTORING {
            return Err(restoring(p));
        }
        at_owner_json(self, p, read).await
    }

    /// A page of a level's history, answered by the level's owner from
    /// the history it keeps ([`super::history`]).
    pub(crate) async fn read_history(
        &self,
        sku: &str,
        location: &str,
        query: &stockflow_http::asks::HistoryPage,
        read: &Read,
    ) -> Result<Value, ApiError> {
        let p = route(sku, location, self.settings.partitions);
        if self.shared.status(p) == NOT_OWNED {
            return at_owner_json(self, p, read).await;
        }
        let limit = stockflow_http::query::limit(&query.page)?;
        tokio::task::block_in_place(|| {
            let (book, reader) = history_of(self, p)?;
            let head = book
                .head(sku, location)
                .ok_or_else(|| no_level(sku, location))?;
            let start = stockflow_http::history::page_start(head, query.before.as_deref())?;
            let policy = self.shared.partitions[p as usize]
                .read()
                .policy_of_level(sku, location);
            // The book stays read-locked while the files are read: undoing
            // an orphaned cycle cuts them.
            stockflow_http::history::page_json(sku, location, &reader, start, limit, policy)
        })
    }
}

/// Partition `p`'s history, read-locked, and a reader of its files; 503
/// while it is being rebuilt.
fn history_of(
    app: &KafkaApp,
    p: u16,
) -> Result<
    (
        parking_lot::RwLockReadGuard<'_, super::history::Book>,
        stockflow_service::history::HistoryReader,
    ),
    ApiError,
> {
    let book = app.shared.history[p as usize].read();
    if !book.current {
        let mut error = ApiError::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the history of partition {p} is being rebuilt from the history topic after a rebalance; retry shortly"),
        );
        error.code = "restoring".into();
        return Err(error);
    }
    let reader =
        stockflow_service::history::HistoryReader::open(&app.config.data_dir.join("kafka"), p)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "history_unreadable",
                    format!("cannot read history: {e}"),
                )
            })?;
    Ok((book, reader))
}

/// A level of an owned partition as of `text`: 404 if it did not exist then.
fn local_as_of(
    app: &KafkaApp,
    p: u16,
    sku: &str,
    location: &str,
    at: stockflow_core::Timestamp,
) -> Result<Value, ApiError> {
    tokio::task::block_in_place(|| {
        let (book, reader) = history_of(app, p)?;
        let head = book
            .head(sku, location)
            .ok_or_else(|| no_level(sku, location))?;
        let policy = app.shared.partitions[p as usize]
            .read()
            .policy_of_level(sku, location);
        let retention = app.config.history_retention_ns;
        stockflow_http::history::as_of_json(sku, location, &reader, head, at, policy, retention)?
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "sku {sku:?} at location {location:?} had no stock level yet at {}",
                    at.to_rfc3339()
                ))
            })
    })
}

pub(super) fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Levels from this instance's active partitions, and which partitions
/// it could not answer for.
fn local_views(
    app: &KafkaApp,
    read: impl Fn(&stockflow_core::Partition) -> Vec<(LevelView, stockflow_core::Policy)>,
) -> (Vec<(LevelView, stockflow_core::Policy)>, Vec<u16>) {
    let mut views = Vec::new();
    let mut restoring = Vec::new();
    for (p, status, _) in app.shared.owned() {
        if status != ACTIVE {
            restoring.push(p);
            continue;
        }
        views.extend(read(&app.shared.partitions[p as usize].read()));
    }
    (views, restoring)
}

/// Gathers `path` (with `?scope=local`) from every other live member;
/// fails if some partition has no active owner.
pub(super) async fn gather(app: &KafkaApp, path: &str, key: &str) -> Result<Vec<Value>, ApiError> {
    let members = app.cluster.live();
    let mut covered: Vec<bool> = vec![false; app.settings.partitions as usize];
    for member in &members {
        for owned in member.partitions.iter().filter(|o| o.status == "active") {
            if let Some(c) = covered.get_mut(owned.partition as usize) {
                *c = true;
            }
        }
    }
    for (p, status, _) in app.shared.owned() {
        if status == ACTIVE {
            covered[p as usize] = true;
        }
    }
    if let Some(p) = covered.iter().position(|c| !c) {
        return Err(not_owned(p as u16));
    }
    let mut out = Vec::new();
    for member in members.iter().filter(|m| m.instance_id != app.instance_id) {
        let separator = if path.contains('?') { '&' } else { '?' };
        let answer = app
            .client
            .get(format!("{}{path}{separator}scope=local", member.url))
            .header(FORWARDED, "1")
            .send()
            .await
            .map_err(|e| {
                ApiError::overloaded(
                    StatusCode::BAD_GATEWAY,
                    format!("member {} did not answer ({e}); retry shortly", member.url),
                )
            })?;
        if !answer.status().is_success() {
            return Err(ApiError::overloaded(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "member {} answered {}; retry shortly",
                    member.url,
                    answer.status()
                ),
            ));
        }
        let body: Value = answer.json().await.map_err(|e| {
            ApiError::overloaded(
                StatusCode::BAD_GATEWAY,
                format!("member {}: {e}", member.url),
            )
        })?;
        if let Some(items) = body[key].as_array() {
            out.extend(items.iter().cloned());
        }
    }
    Ok(out)
}

fn number(level: &Value, field: &str) -> i64 {
    level[field].as_i64().unwrap_or(0)
}

impl KafkaApp {
    /// A SKU's levels from every member (members ask each other for
    /// their own part with `scope=local`).
    pub(crate) async fn read_sku(&self, sku: &str, read: &Read) -> Result<Value, ApiError> {
        let app = self;
        let (views, restoring_here) = local_views(app, |p| {
            p.levels_of_sku(sku)
                .into_iter()
                .map(|v| {
                    let policy = p.policy_of_level(&v.sku, &v.location_id);
                    (v, policy)
                })
                .collect()
        });
        let mut levels: Vec<Value> = match read.as_of {
            None => views
                .iter()
                .map(|(v, policy)| level_json(v, *policy))
                .collect(),
            // Every level there is now, as of then (404: it did not exist yet).
            Some(at) => {
                let mut levels = Vec::new();
                for (v, _) in &views {
                    let p = route(&v.sku, &v.location_id, app.settings.partitions);
                    match local_as_of(app, p, sku, &v.location_id, at) {
                        Ok(level) => levels.push(level),
                        Err(error) if error.status == StatusCode::NOT_FOUND => {}
                        Err(error) => return Err(error),
                    }
                }
                levels
            }
        };
        if read.local_only {
            if let Some(p) = restoring_here.first() {
                return Err(restoring(*p));
            }
            return Ok(json!({"sku": sku, "locations": levels}));
        }
        let path = match read.as_of {
            None => format!("/v1/stock/{}", encode(sku)),
            Some(at) => format!(
                "/v1/stock/{}?asOf={}",
                encode(sku),
                encode(&at.to_rfc3339())
            ),
        };
        levels.extend(gather(app, &path, "locations").await?);
        if levels.is_empty() {
            return Err(ApiError::not_found(match read.as_of {
                None => format!("no stock levels for sku {sku:?}"),
                Some(at) => format!("sku {sku:?} had no stock levels yet at {}", at.to_rfc3339()),
            }));
        }
        levels.sort_by(|a, b| a["locationId"].as_str().cmp(&b["locationId"].as_str()));
        let mut totals = Totals::default();
        for l in &levels {
            totals.on_hand += number(l, "onHand");
            totals.reserved += number(l, "reserved");
            totals.available += number(l, "available");
            totals.in_transit += number(l, "inTransit");
        }
        let mut answer = json!({
            "sku": sku,
            "totals": {"onHand": totals.on_hand, "reserved": totals.reserved, "available": totals.available, "inTransit": totals.in_transit},
            "locations": levels,
        });
        if let Some(at) = read.as_of {
            answer["asOf"] = json!(at.to_rfc3339());
        }
        Ok(answer)
    }
}

impl KafkaApp {
    /// A page of a location's levels, merged from every member.
    pub(crate) async fn read_location(
        &self,
        location: &str,
        listing: &stockflow_http::asks::Listing,
        read: &Read,
    ) -> Result<Value, ApiError> {
        let app = self;
        let (limit, status, after) = (listing.limit, listing.status, listing.after.clone());
        let (views, restoring_here) = local_views(app, |p| {
            p.levels_of_location(location, after.as_deref(), limit + 1, |level, policy| {
                status.is_none_or(|s| s.holds(level, policy))
            })
            .into_iter()
            .map(|v| {
                let policy = p.policy_of_level(&v.sku, &v.location_id);
                (v, policy)
            })
            .collect()
        });
        let mut levels: Vec<Value> = views
            .iter()
            .map(|(v, policy)| stockflow_http::query::listed_level_json(v, *policy))
            .collect();
        if read.local_only {
            if let Some(p) = restoring_here.first() {
                return Err(restoring(*p));
            }
            return Ok(json!({"locationId": location, "levels": levels}));
        }
        let mut path = format!("/v1/locations/{}/stock?limit={limit}", encode(location));
        if let Some(status) = &listing.status_text {
            path.push_str(&format!("&status={}", encode(status)));
        }
        if let Some(after) = &after {
            path.push_str(&format!("&after={}", encode(after)));
        }
        levels.extend(gather(app, &path, "levels").await?);
        levels.sort_by(|a, b| a["sku"].as_str().cmp(&b["sku"].as_str()));
        let more = levels.len() > limit;
        levels.truncate(limit);
        let next = more
            .then(|| {
                levels
                    .last()
                    .and_then(|l| l["sku"].as_str().map(str::to_owned))
            })
            .flatten();
        if levels.is_empty() && after.is_none() && status.is_none() {
            return Err(ApiError::not_found(format!(
                "no stock levels at location {location:?}"
            )));
        }
        Ok(json!({"locationId": location, "levels": levels, "nextAfter": next}))
    }
}

impl KafkaApp {
    /// The level alerts of every partition, from every member (members ask
    /// each other for every match of their own with `scope=local`).
    pub(crate) async fn read_level_alerts(
        &self,
        filter: &stockflow_http::asks::AlertFilter,
        kind: Option<stockflow_core::alerts::AlertKind>,
        read: &Read,
    ) -> Result<stockflow_http::asks::Found, ApiError> {
        use stockflow_http::alerts::{found_from_json, partition_alerts};
        use stockflow_http::asks::Found;
        let mut found = Found::new();
        let mut restoring_here = Vec::new();
        for (p, status, _) in self.shared.owned() {
            if status != ACTIVE {
                restoring_here.push(p);
                continue;
            }
            let partition = self.shared.partitions[p as usize].read();
            partition_alerts(p, &partition, filter, kind, &mut found);
        }
        if read.local_only {
            if let Some(p) = restoring_here.first() {
                return Err(restoring(*p));
            }
            return Ok(found);
        }
        let query: Vec<String> = filter
            .query_pairs()
            .into_iter()
            .map(|(name, value)| format!("{name}={}", encode(&value)))
            .collect();
        let path = format!("/v1/alerts?{}", query.join("&"));
        for alert in gather(self, &path, "alerts").await? {
            found.extend(found_from_json(alert));
        }
        Ok(found)
    }
}

impl KafkaApp {
    /// The overview's series and source freshness, merged from every
    /// member's own (`scope=local`). A member counts what its processor
    /// applied; its latency is a processing cycle's, from taking the input
    /// to committing the offsets.
    pub(crate) async fn read_activity(
        &self,
        seconds: usize,
        stale: Duration,
        read: &Read,
    ) -> Result<Value, ApiError> {
        let mine = self.shared.activity.json(seconds, wall_clock(), stale);
        if read.local_only {
            return Ok(json!({ "parts": [mine] }));
        }
        let path = format!(
            "/v1/activity?seconds={seconds}&staleAfterSeconds={}",
            stale.as_secs()
        );
        let mut parts = vec![mine];
        parts.extend(gather(self, &path, "parts").await?);
        Ok(stockflow_service::activity::merge(&parts))
    }
}
