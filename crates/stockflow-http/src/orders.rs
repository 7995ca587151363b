//! Orders: place, fulfil, cancel, extend, read. Every decision is taken by
//! the engine's order step (see `stockflow_core::orders`); handlers only
//! validate, submit and render.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use stockflow_core::limits::QUANTITY_ABS_MAX;
use stockflow_core::orders::{Answer, LineRequest, Mode, OrderCommand, Status};

use super::asks::Page;
use super::backend::{Backend, Read};
use super::ingest::read_body;
use super::query::limit;
use super::{json_body, ApiError, Whole};

/// Longest orderId: the events an order's lines become (Kafka mode) are
/// named `{orderId}/{line}.{attempt}/reserve`, within an eventId's 128.
pub const ORDER_ID_CHARS_MAX: usize = 100;

/// Most lines in one order.
pub const ORDER_LINES_MAX: usize = 100;
/// Longest hold: a week.
pub use stockflow_core::limits::HOLD_SECONDS_MAX;

/// What became of an order, as the API answers it.
fn answer(answer: Answer) -> Response {
    match answer {
        Answer::Done(order) => Json(stockflow_service::json::order_json(&order)).into_response(),
        Answer::Conflict(order, message) => (
            StatusCode::CONFLICT,
            Json(json!({"code": "conflict", "message": message, "order": stockflow_service::json::order_json(&order)})),
        )
            .into_response(),
        Answer::NotFound(message) => ApiError::not_found(message).into_response(),
    }
}

async fn submit<B: Backend>(backend: &B, command: OrderCommand) -> Result<Response, ApiError> {
    backend.order_command(command).await.map(answer)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PlaceBody {
    order_id: String,
    lines: Vec<LineBody>,
    mode: Option<String>,
    hold_seconds: Option<Whole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LineBody {
    sku: String,
    location_id: Option<String>,
    quantity: Whole,
}

/// The rules of an event's ids, for an order's (see `parse::check_id`).
fn check_id(value: &str, name: &str) -> Result<(), ApiError> {
    stockflow_core::parse::check_id(value, name).map_err(ApiError::bad_request)
}

fn hold_ns(default_seconds: u64, seconds: Option<Whole>) -> Result<i64, ApiError> {
    let seconds = seconds.map_or(Ok(default_seconds), |Whole(s)| u64::try_from(s));
    let Some(seconds) = seconds.ok().filter(|s| (1..=HOLD_SECONDS_MAX).contains(s)) else {
        return Err(ApiError::bad_request(format!(
            "holdSeconds: must be 1 to {HOLD_SECONDS_MAX}"
        )));
    };
    Ok(seconds as i64 * 1_000_000_000)
}

/// A checked POST /v1/orders body (both modes).
pub struct PlaceRequest {
    pub order_id: String,
    pub lines: Vec<LineRequest>,
    pub mode: Mode,
    pub hold_ns: i64,
    /// What makes two requests the same order: lines, mode and hold.
    pub fingerprint: u64,
}

/// Largest order body.
pub const ORDER_BODY_BYTES_MAX: usize = 1 << 20;

/// Checks a POST /v1/orders body; holds default to `default_hold_seconds`.
pub fn parse_place(bytes: &[u8], default_hold_seconds: u64) -> Result<PlaceRequest, ApiError> {
    let body: PlaceBody = json_body(bytes)?;
    check_id(&body.order_id, "orderId")?;
    if body.order_id.chars().count() > ORDER_ID_CHARS_MAX {
        return Err(ApiError::bad_request(format!(
            "orderId: longer than {ORDER_ID_CHARS_MAX} characters (an order's id leaves room for the ids of its lines' events)"
        )));
    }
    if body.lines.is_empty() || body.lines.len() > ORDER_LINES_MAX {
        return Err(ApiError::bad_request(format!(
            "lines: must hold 1 to {ORDER_LINES_MAX} lines"
        )));
    }
    let mut lines = Vec::with_capacity(body.lines.len());
    for (n, line) in body.lines.into_iter().enumerate() {
        check_id(&line.sku, &format!("lines[{n}].sku"))?;
        if let Some(location) = &line.location_id {
            check_id(location, &format!("lines[{n}].locationId"))?;
        }
        let Whole(quantity) = line.quantity;
        if !(1..=QUANTITY_ABS_MAX).contains(&quantity) {
            return Err(ApiError::bad_request(format!(
                "lines[{n}].quantity: must be 1 to {QUANTITY_ABS_MAX}"
            )));
        }
        lines.push(LineRequest {
            sku: line.sku,
            location_id: line.location_id,
            quantity,
        });
    }
    let mode = match body.mode.as_deref() {
        None | Some("all_or_nothing") => Mode::AllOrNothing,
        Some("partial") => Mode::Partial,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "mode: {other:?} is not all_or_nothing or partial"
            )))
        }
    };
    let hold_ns = hold_ns(default_hold_seconds, body.hold_seconds)?;
    let fingerprint = xxhash_rust::xxh3::xxh3_64(
        serde_json::to_string(&(&lines, &mode, hold_ns))
            .expect("serialisable")
            .as_bytes(),
    );
    Ok(PlaceRequest {
        order_id: body.order_id,
        lines,
        mode,
        hold_ns,
        fingerprint,
    })
}

/// POST /v1/orders
pub async fn place<B: Backend>(
    State(state): State<Arc<B>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (bytes, _) = read_body(&headers, body, ORDER_BODY_BYTES_MAX).await?;
    let request = parse_place(&bytes, state.config().order_hold_seconds)?;
    submit(
        &*state,
        OrderCommand::Place {
            order_id: request.order_id,
            lines: request.lines,
            mode: request.mode,
            hold_ns: request.hold_ns,
            sourcing: state.config().sourcing.clone(),
            fingerprint: request.fingerprint,
        },
    )
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FulfilBody {
    lines: Option<Vec<Whole>>,
}

/// POST /v1/orders/{id}/fulfil, optionally `{"lines": [0, 2]}`.
pub async fn fulfil<B: Backend>(
    State(state): State<Arc<B>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (bytes, _) = read_body(&headers, body, COMMAND_BODY_BYTES_MAX).await?;
    let lines = parse_fulfil(&bytes)?;
    submit(
        &*state,
        OrderCommand::Fulfil {
            order_id: id,
            lines,
        },
    )
    .await
}

/// Largest fulfil or extend body.
pub const COMMAND_BODY_BYTES_MAX: usize = 64 << 10;

/// The lines a fulfil body names (`None`: all; an empty body is all).
pub fn parse_fulfil(bytes: &[u8]) -> Result<Option<Vec<usize>>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let body: FulfilBody = json_body(bytes)?;
    body.lines
        .map(|lines| {
            lines
                .into_iter()
                .map(|Whole(n)| {
                    usize::try_from(n).map_err(|_| {
                        ApiError::bad_request(format!(
                            "lines: {n} is not a line number (0 or more)"
                        ))
                    })
                })
                .collect()
        })
        .transpose()
}

/// The new hold of an extend body, in ns.
pub fn parse_extend(bytes: &[u8]) -> Result<i64, ApiError> {
    let body: ExtendBody = json_body(bytes)?;
    hold_ns(0, Some(body.hold_seconds))
}

/// POST /v1/orders/{id}/cancel
pub async fn cancel<B: Backend>(
    State(state): State<Arc<B>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    submit(&*state, OrderCommand::Cancel { order_id: id }).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExtendBody {
    hold_seconds: Whole,
}

/// POST /v1/orders/{id}/extend `{"holdSeconds": n}`: the hold now ends n
/// seconds from now.
pub async fn extend<B: Backend>(
    State(state): State<Arc<B>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (bytes, _) = read_body(&headers, body, COMMAND_BODY_BYTES_MAX).await?;
    let hold_ns = parse_extend(&bytes)?;
    submit(
        &*state,
        OrderCommand::Extend {
            order_id: id,
            hold_ns,
        },
    )
    .await
}

/// GET /v1/orders/{id}
pub async fn get<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    backend
        .order(&id)
        .await?
        .map(|o| Json(stockflow_service::json::order_json(&o)))
        .ok_or_else(|| ApiError::not_found(format!("no order {id:?}")))
}

#[derive(Deserialize)]
pub struct OrderFilter {
    status: Option<String>,
    /// `local`: only the answering instance's orders (cluster-internal).
    scope: Option<String>,
    #[serde(flatten)]
    page: Page,
}

/// The answer to `?status=` naming no order status.
pub(crate) fn not_a_status(text: &str) -> ApiError {
    ApiError::bad_request(format!(
        "status: {} is not one of pending, reserved, partially_reserved, rejected, fulfilled, cancelled, expired",
        stockflow_core::parse::quote(text)
    ))
}

/// GET /v1/orders?status=&limit=&after=, by orderId.
pub async fn list<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(filter): Query<OrderFilter>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(&filter.page)?;
    let status = match filter.status.as_deref() {
        None => None,
        Some(text) => Some(Status::from_wire(text).ok_or_else(|| not_a_status(text))?),
    };
    let read = Read::scoped(&headers, filter.scope.as_deref());
    let mut orders = backend
        .orders(status, filter.page.after.as_deref(), limit, &read)
        .await?;
    if read.local_only {
        // A member's part of a gathered answer: the asker pages.
        return Ok(Json(json!({ "orders": orders })));
    }
    let more = orders.len() > limit;
    orders.truncate(limit);
    let next = more
        .then(|| {
            orders
                .last()
                .and_then(|o| o["orderId"].as_str().map(str::to_owned))
        })
        .flatten();
    Ok(Json(json!({"orders": orders, "nextAfter": next})))
}
