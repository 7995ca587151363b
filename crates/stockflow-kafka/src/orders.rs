//! Orders in Kafka mode: the HTTP side of the saga in
//! [`stockflow_core::saga`]. Any instance takes a request; it produces the
//! command to the order's home partition (through the repartition topic)
//! and waits for the home's owner, wherever it runs, to say the order has
//! moved on. Decisions are never taken here: the home decides the order,
//! the owner of each level decides its line.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use serde::Deserialize;
use serde_json::{json, Value};
use stockflow_core::orders::{Answer, LineRequest, Mode, Order, OrderCommand, Sourcing, Status};
use stockflow_core::route;
use stockflow_core::saga::{judge, order_home, PlaceLine, ToHome};

use super::http::{encode, not_owner, KafkaApp, FORWARDED};
use super::processor::ORDER_HEADER;
use super::shared::{ACTIVE, NOT_OWNED};
use stockflow_http::backend::Read;
use stockflow_http::ApiError;
use stockflow_service::clock::wall_clock;
use stockflow_service::json::order_json;

/// Longest wait for an order's home to answer a command.
const ORDER_WAIT_MAX: Duration = Duration::from_secs(30);

/// An order as its home holds it.
#[derive(Clone, Debug)]
struct Homed {
    order: Order,
    version: u64,
}

/// The order as its home partition's owner holds it: at once
/// (`after_version` None), or once its version passed `after_version` and
/// it is no longer pending (long-polled at the owner). `Ok(None)`: no such
/// order.
async fn ask_home(
    app: &KafkaApp,
    order_id: &str,
    after_version: Option<u64>,
    deadline: Instant,
) -> Result<Option<Homed>, ApiError> {
    let p = order_home(order_id, app.settings.partitions);
    loop {
        if app.shared.status(p) == ACTIVE {
            match wait_local(app, p, order_id, after_version, deadline).await {
                Some(found) => return Ok(found),
                // No longer the owner: ask whoever is now.
                None => continue,
            }
        }
        if let Some((owner, wait_ms)) = elsewhere(app, p, deadline) {
            let after = after_version.map_or(String::new(), |v| format!("&afterVersion={v}"));
            let answer = app
                .client
                .get(format!(
                    "{owner}/v1/internal/orders/{}?timeoutMs={wait_ms}{after}",
                    encode(order_id)
                ))
                .header(FORWARDED, "1")
                .timeout(ORDER_WAIT_MAX + Duration::from_secs(5))
                .send()
                .await;
            if let Ok(r) = answer {
                match r.status().as_u16() {
                    200 => {
                        let body: Value = r.json().await.map_err(|e| {
                            ApiError::overloaded(StatusCode::BAD_GATEWAY, e.to_string())
                        })?;
                        return Ok(homed_from_json(&body));
                    }
                    404 => return Ok(None),
                    // Moved or restoring: ask again below.
                    _ => {}
                }
            }
        }
        if Instant::now() >= deadline {
            let mut error = ApiError::overloaded(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the home partition {p} of order {order_id:?} has no active owner right now (a rebalance or restore is under way); retry shortly"),
            );
            error.code = "no_owner".into();
            return Err(error);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The URL of the instance that owns partition `p`, if another one does,
/// and how long (ms) it may wait there before `deadline`.
fn elsewhere(app: &KafkaApp, p: u16, deadline: Instant) -> Option<(String, u128)> {
    let (owner, _) = app
        .cluster
        .owner(p)
        .filter(|(o, _)| o.instance_id != app.instance_id)?;
    let wait_ms = deadline
        .saturating_duration_since(Instant::now())
        .as_millis();
    Some((owner.url, wait_ms))
}

fn homed_from_json(body: &Value) -> Option<Homed> {
    let order = serde_json::from_value(body["saga"].clone()).ok()?;
    Some(Homed {
        order,
        version: body["version"].as_u64().unwrap_or(0),
    })
}

/// Waits at the owner of `p`; `None` if this instance stops owning it.
async fn wait_local(
    app: &KafkaApp,
    p: u16,
    order_id: &str,
    after_version: Option<u64>,
    deadline: Instant,
) -> Option<Option<Homed>> {
    let current = || {
        (app.shared.status(p) == ACTIVE).then(|| {
            app.shared.books[p as usize]
                .read()
                .orders
                .get(order_id)
                .map(|saga| Homed {
                    order: saga.order.clone(),
                    version: saga.version,
                })
        })
    };
    let moved_on = || match current() {
        None => Some(None),
        Some(found) => {
            let done = match (&found, after_version) {
                (_, None) => true,
                (Some(h), Some(after)) => h.version > after && h.order.status != Status::Pending,
                (None, Some(_)) => false,
            };
            done.then_some(Some(found))
        }
    };
    match app.shared.wait_for(deadline, moved_on).await {
        Some(answer) => answer,
        // The wait is over: the order as it is.
        None => current(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InternalQuery {
    after_version: Option<u64>,
    timeout_ms: Option<u64>,
}

/// GET /v1/internal/orders/{id}: the home owner's order with its saga
/// version (see [`ask_home`]); 409 if this instance does not own the home.
pub async fn internal(
    State(app): State<Arc<KafkaApp>>,
    Path(id): Path<String>,
    Query(q): Query<InternalQuery>,
) -> Response {
    let p = order_home(&id, app.settings.partitions);
    let wait = Duration::from_millis(q.timeout_ms.unwrap_or(0)).min(ORDER_WAIT_MAX);
    let not_owner = || not_owner(p).into_response();
    if app.shared.status(p) == NOT_OWNED {
        return not_owner();
    }
    match wait_local(&app, p, &id, q.after_version, Instant::now() + wait).await {
        Some(Some(h)) => Json(json!({"saga": h.order, "version": h.version})).into_response(),
        Some(None) => ApiError::not_found(format!("no order {id:?}")).into_response(),
        None => not_owner(),
    }
}

/// Produces `message` to the home partition of its order and waits for
/// the broker's acknowledgement.
async fn send_home(app: &KafkaApp, message: &ToHome) -> Result<(), ApiError> {
    let order_id = message.order_id().unwrap_or_default();
    let home = order_home(order_id, app.settings.partitions);
    let payload = serde_json::to_vec(message).expect("an order message serializes");
    let record = FutureRecord::to(&app.settings.topics.repartition)
        .partition(i32::from(home))
        .key(order_id)
        .payload(&payload)
        .headers(OwnedHeaders::new().insert(Header {
            key: ORDER_HEADER,
            value: Some("1"),
        }))
        .timestamp(wall_clock().0 / 1_000_000);
    match app.producer.send(record, Duration::from_secs(10)).await {
        Ok(_) => Ok(()),
        Err((error, _)) => Err(ApiError::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Kafka did not acknowledge the order command ({error}); send the request again (it is idempotent)"),
        )),
    }
}

fn not_found(order_id: &str) -> Answer {
    Answer::NotFound(format!("no order {order_id:?}"))
}

fn still_pending(order_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "order_pending",
        format!("order {order_id:?} is still being reserved; GET /v1/orders/{order_id} later for the outcome"),
    )
}

/// Locations a most-available line tries, at most: those the SKU's
/// roll-up says can fill it, most available first. The roll-up follows
/// the levels within a cycle, so a candidate may refuse; more would only
/// add round trips to a line that the stock cannot fill.
const MOST_AVAILABLE_CANDIDATES: usize = 5;

/// Where a most-available line of `quantity` tries, from each location's
/// available (most first): the ones that can fill it, or else the one
/// with the most, whose owner refuses it with the reason.
fn most_available(found: &[(String, i64)], quantity: i64) -> Vec<String> {
    let can: Vec<String> = found
        .iter()
        .filter(|(_, available)| *available >= quantity)
        .take(MOST_AVAILABLE_CANDIDATES)
        .map(|(location, _)| location.clone())
        .collect();
    if can.is_empty() {
        found
            .iter()
            .take(1)
            .map(|(location, _)| location.clone())
            .collect()
    } else {
        can
    }
}

/// An order placed in Kafka mode. A line without a location is sourced
/// by the configured priority list, or by the most available location as
/// the SKU's roll-up (at its home partition) has it; either way the
/// candidates are tried in turn until one owner grants the whole line.
#[allow(clippy::too_many_arguments)]
async fn place(
    app: &KafkaApp,
    order_id: String,
    request: Vec<LineRequest>,
    sourcing: &Sourcing,
    mode: Mode,
    hold_ns: i64,
    fingerprint: u64,
    by: String,
) -> Result<Answer, ApiError> {
    let mut lines = Vec::with_capacity(request.len());
    let mut stock: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for (n, line) in request.into_iter().enumerate() {
        let candidates = match (&line.location_id, sourcing) {
            (Some(location), _) => vec![location.clone()],
            (None, Sourcing::Priority(list)) if !list.is_empty() => list.clone(),
            (None, Sourcing::Priority(_)) => {
                return Err(ApiError::bad_request(format!(
                    "lines[{n}].locationId: required, the server's priority list is empty"
                )))
            }
            (None, Sourcing::MostAvailable) => {
                if !stock.contains_key(&line.sku) {
                    let found = super::catalog::availability(app, &line.sku).await?;
                    stock.insert(line.sku.clone(), found);
                }
                let candidates = most_available(&stock[&line.sku], line.quantity);
                if candidates.is_empty() {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "insufficient_stock",
                        format!(
                            "lines[{n}]: no location holds sku {:?}, so there is nothing to reserve",
                            line.sku
                        ),
                    ));
                }
                candidates
            }
        };
        lines.push(PlaceLine {
            sku: line.sku,
            location_id: line.location_id,
            quantity: line.quantity,
            candidates,
        });
    }
    let deadline = Instant::now() + ORDER_WAIT_MAX;
    let differs = |order: Order| {
        Answer::Conflict(
            order,
            format!("order {order_id:?} exists with a different body; use a new orderId"),
        )
    };
    let existing = ask_home(app, &order_id, None, deadline).await?;
    let after = match existing {
        Some(h) if h.order.fingerprint != fingerprint => return Ok(differs(h.order)),
        Some(h) if h.order.status != Status::Pending => return Ok(Answer::Done(h.order)),
        Some(h) => h.version,
        None => {
            send_home(
                app,
                &ToHome::Place {
                    order_id: order_id.clone(),
                    lines,
                    mode,
                    hold_ns,
                    fingerprint,
                    by,
                },
            )
            .await?;
            0
        }
    };
    match ask_home(app, &order_id, Some(after), deadline).await? {
        Some(h) if h.order.fingerprint != fingerprint => Ok(differs(h.order)),
        Some(h) if h.order.status != Status::Pending => Ok(Answer::Done(h.order)),
        _ => Err(still_pending(&order_id)),
    }
}

/// Fulfil, cancel and extend: judged against the order as its home holds
/// it, sent home, answered once the home has handled it.
async fn change(app: &KafkaApp, order_id: String, message: ToHome) -> Result<Answer, ApiError> {
    let deadline = Instant::now() + ORDER_WAIT_MAX;
    let Some(current) = ask_home(app, &order_id, None, deadline).await? else {
        return Ok(not_found(&order_id));
    };
    match judge(&current.order, &message) {
        Err(why) => return Ok(Answer::Conflict(current.order, why)),
        Ok(false) => {
            // Done before (a retry, say): answered as the first time was.
            if moves_units(&message) {
                let seen = [&current.order];
                settled_at_levels(app, &order_id, &seen, &current.order, deadline).await;
            }
            return Ok(Answer::Done(current.order));
        }
        Ok(true) => {}
    }
    send_home(app, &message).await?;
    match ask_home(app, &order_id, Some(current.version), deadline).await? {
        Some(h) if h.version > current.version => {
            // Judged again: something else (an expiry) may have come first.
            let done = match &message {
                ToHome::Cancel { .. } => h.order.status == Status::Cancelled,
                ToHome::Extend { until, .. } => h.order.expires_at == Some(*until),
                _ => h.order.status.is_live() || h.order.status == Status::Fulfilled,
            };
            if done {
                if moves_units(&message) {
                    let seen = [&current.order, &h.order];
                    settled_at_levels(app, &order_id, &seen, &h.order, deadline).await;
                }
                Ok(Answer::Done(h.order))
            } else {
                let why = judge(&h.order, &message).err().unwrap_or_else(|| {
                    format!("the order became {} first", h.order.status.as_str())
                });
                Ok(Answer::Conflict(h.order, why))
            }
        }
        Some(_) => Err(still_pending(&order_id)),
        None => Ok(not_found(&order_id)),
    }
}

/// Whether the command moves units at levels (fulfil, cancel), which
/// its answer then waits for; an extend moves none.
fn moves_units(message: &ToHome) -> bool {
    matches!(message, ToHome::Fulfil { .. } | ToHome::Cancel { .. })
}

/// Longest wait, once the home has decided a fulfil or cancel, for its
/// levels to show it (see [`settled_at_levels`]).
const LEVEL_WAIT_MAX: Duration = Duration::from_secs(5);

/// Units `order` holds at each of its levels: its unfulfilled allocations.
fn held(order: &Order) -> BTreeMap<(&str, &str), i64> {
    let mut held = BTreeMap::new();
    for line in &order.lines {
        for a in line.allocations.iter().filter(|a| !a.fulfilled) {
            *held
                .entry((line.sku.as_str(), a.location_id.as_str()))
                .or_default() += a.quantity;
        }
    }
    held
}

/// Every level an order names: where it holds or held units, and each
/// line's own location.
fn levels_of(order: &Order) -> impl Iterator<Item = (&str, &str)> {
    order.lines.iter().flat_map(|line| {
        let held = line.allocations.iter().map(|a| a.location_id.as_str());
        let own = line.location_id.as_deref();
        held.chain(own)
            .map(move |location| (line.sku.as_str(), location))
    })
}

/// A fulfil or cancel is decided at the order's home, but its FULFILLMENT
/// and RELEASE events reach the levels' owners a moment later (through
/// the repartition topic). Waits until every level of `seen` (the order
/// as read before and after the command) holds no more for it than
/// `decided` says, so that a read after the answer sees the units gone or
/// back, as in the embedded mode (a SKU's roll-up follows within a cycle).
/// Gives up after [`LEVEL_WAIT_MAX`] or at `deadline`: the decision stands
/// and its events are on their way. A retried command waits the same way,
/// so its answer means the same.
async fn settled_at_levels(
    app: &KafkaApp,
    order_id: &str,
    seen: &[&Order],
    decided: &Order,
    deadline: Instant,
) {
    let deadline = deadline.min(Instant::now() + LEVEL_WAIT_MAX);
    let at_most = held(decided);
    let levels: std::collections::BTreeSet<(&str, &str)> =
        seen.iter().flat_map(|order| levels_of(order)).collect();
    for (sku, location) in levels {
        let at_most = at_most.get(&(sku, location)).copied().unwrap_or(0);
        if !hold_at_most(app, sku, location, order_id, at_most, deadline).await {
            metrics::counter!("stockflow_kafka_order_level_waits_timed_out_total").increment(1);
            tracing::warn!(
                order = order_id,
                sku,
                location,
                "answering before the level shows the order's fulfil or cancel"
            );
            return;
        }
    }
}

/// Waits until the level's owner, wherever it runs, holds at most
/// `at_most` units for `order_id` there; false at `deadline`.
async fn hold_at_most(
    app: &KafkaApp,
    sku: &str,
    location: &str,
    order_id: &str,
    at_most: i64,
    deadline: Instant,
) -> bool {
    let p = route(sku, location, app.settings.partitions);
    loop {
        if app.shared.status(p) == ACTIVE {
            match wait_hold_local(app, p, sku, location, order_id, at_most, deadline).await {
                Some(settled) => return settled,
                None => continue, // no longer the owner: ask whoever is now
            }
        }
        if let Some((owner, wait_ms)) = elsewhere(app, p, deadline) {
            let answer = app
                .client
                .get(format!(
                    "{owner}/v1/internal/holds/{}/{}?order={}&atMost={at_most}&timeoutMs={wait_ms}",
                    encode(sku),
                    encode(location),
                    encode(order_id)
                ))
                .header(FORWARDED, "1")
                .timeout(ORDER_WAIT_MAX + Duration::from_secs(5))
                .send()
                .await;
            match answer.map(|r| r.status().as_u16()) {
                Ok(200) => return true,
                // Not by the deadline, or a member that cannot tell.
                Ok(504 | 400 | 404) => return false,
                _ => {} // moved or restoring: ask again below
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// At the owner of `p`: whether the level came to hold at most `at_most`
/// for the order by `deadline`; `None` if this instance stops owning `p`.
async fn wait_hold_local(
    app: &KafkaApp,
    p: u16,
    sku: &str,
    location: &str,
    order_id: &str,
    at_most: i64,
    deadline: Instant,
) -> Option<bool> {
    let check = || {
        if app.shared.status(p) != ACTIVE {
            return Some(None);
        }
        let partition = app.shared.partitions[p as usize].read();
        let holds = partition
            .get(sku, location)
            .map_or(0, |v| v.level.hold_of(order_id));
        (holds <= at_most).then_some(Some(true))
    };
    match app.shared.wait_for(deadline, check).await {
        Some(answer) => answer,
        None => Some(false),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldsQuery {
    order: String,
    at_most: i64,
    timeout_ms: Option<u64>,
}

/// GET /v1/internal/holds/{sku}/{location}: answers 200 once the level
/// holds at most `atMost` units for `order` (see [`hold_at_most`]), 504
/// if it does not by `timeoutMs`, 409 if this instance does not own it.
pub async fn internal_holds(
    State(app): State<Arc<KafkaApp>>,
    Path((sku, location)): Path<(String, String)>,
    Query(q): Query<HoldsQuery>,
) -> Response {
    if q.at_most < 0 {
        return ApiError::bad_request("atMost: a number of units, 0 or more").into_response();
    }
    let p = route(&sku, &location, app.settings.partitions);
    let wait = Duration::from_millis(q.timeout_ms.unwrap_or(0)).min(LEVEL_WAIT_MAX);
    let deadline = Instant::now() + wait;
    match wait_hold_local(&app, p, &sku, &location, &q.order, q.at_most, deadline).await {
        Some(true) => StatusCode::OK.into_response(),
        Some(false) => StatusCode::GATEWAY_TIMEOUT.into_response(),
        None => not_owner(p).into_response(),
    }
}

/// An order command in Kafka mode: to the order's home, through the
/// repartition topic; the answer once the home has moved the order on.
pub(super) async fn command(app: &KafkaApp, command: OrderCommand) -> Result<Answer, ApiError> {
    match command {
        OrderCommand::Place {
            order_id,
            lines,
            mode,
            hold_ns,
            sourcing,
            fingerprint,
            by,
        } => {
            place(
                app,
                order_id,
                lines,
                &sourcing,
                mode,
                hold_ns,
                fingerprint,
                by,
            )
            .await
        }
        OrderCommand::Fulfil {
            order_id,
            lines,
            by,
        } => {
            let message = ToHome::Fulfil {
                order_id: order_id.clone(),
                lines,
                by,
            };
            change(app, order_id, message).await
        }
        OrderCommand::Cancel { order_id, by } => {
            let message = ToHome::Cancel {
                order_id: order_id.clone(),
                by,
            };
            change(app, order_id, message).await
        }
        // The hold ends hold_ns from now, by this instance's clock.
        OrderCommand::Extend {
            order_id,
            hold_ns,
            by,
        } => {
            let message = ToHome::Extend {
                order_id: order_id.clone(),
                until: wall_clock().saturating_add_ns(hold_ns),
                by,
            };
            change(app, order_id, message).await
        }
    }
}

/// An order, from its home's owner.
pub(super) async fn get(app: &KafkaApp, order_id: &str) -> Result<Option<Order>, ApiError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    Ok(ask_home(app, order_id, None, deadline)
        .await?
        .map(|h| h.order))
}

/// Every member's homed orders after `after`, merged by orderId: at most
/// `limit + 1` (see [`stockflow_http::backend::Backend::orders`]).
pub(super) async fn list(
    app: &KafkaApp,
    status: Option<Status>,
    after: Option<&str>,
    limit: usize,
    read: &Read,
) -> Result<Vec<Value>, ApiError> {
    let from = after.unwrap_or("");
    // Enough of each member's to fill a page after merging.
    let mut orders: Vec<Value> = Vec::new();
    for (p, s, _) in app.shared.owned() {
        if s != ACTIVE {
            if read.local_only {
                return Err(super::http::restoring(p));
            }
            continue;
        }
        let book = app.shared.books[p as usize].read();
        let matching = book
            .orders
            .range::<str, _>((std::ops::Bound::Excluded(from), std::ops::Bound::Unbounded))
            .map(|(_, s)| &s.order)
            .filter(|o| status.is_none_or(|s| o.status == s))
            .take(limit + 1);
        orders.extend(matching.map(order_json));
    }
    if !read.local_only {
        let mut path = format!("/v1/orders?limit={limit}");
        if let Some(s) = status {
            path.push_str(&format!("&status={}", s.as_str()));
        }
        if let Some(a) = after {
            path.push_str(&format!("&after={}", encode(a)));
        }
        orders.extend(super::http::gather(app, &path, "orders").await?);
    }
    orders.sort_by(|a, b| a["orderId"].as_str().cmp(&b["orderId"].as_str()));
    orders.truncate(limit + 1);
    Ok(orders)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_most_available_line_tries_the_locations_that_can_fill_it_most_first() {
        let found: Vec<(String, i64)> = [("B", 12), ("C", 8), ("A", 5), ("D", 0)]
            .iter()
            .map(|(l, a)| (l.to_string(), *a))
            .collect();
        assert_eq!(most_available(&found, 6), ["B", "C"]);
        assert_eq!(most_available(&found, 1), ["B", "C", "A"]);
        // Nobody can: the most available, to be refused with the reason.
        assert_eq!(most_available(&found, 13), ["B"]);
        assert!(most_available(&[], 1).is_empty());
        let many: Vec<(String, i64)> = (0..10).map(|i| (format!("L{i}"), 100)).collect();
        assert_eq!(most_available(&many, 1).len(), MOST_AVAILABLE_CANDIDATES);
    }
}
