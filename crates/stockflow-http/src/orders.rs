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
use super::auth::By;
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
            Json(ConflictBody {
                code: "conflict",
                message: &message,
                order: stockflow_service::json::OrderOut::new(&order),
            }),
        )
            .into_response(),
        Answer::NotFound(message) => ApiError::not_found(message).into_response(),
    }
}

async fn submit<B: Backend>(backend: &B, command: OrderCommand) -> Result<Response, ApiError> {
    backend.order_command(command).await.map(answer)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = OrderRequest)]
pub(crate) struct PlaceBody {
    #[schema(value_type = crate::openapi::OrderId)]
    order_id: String,
    #[schema(min_items = 1, max_items = 100)]
    lines: Vec<LineBody>,
    /// all_or_nothing (the default) reserves every line or none; partial
    /// reserves what it can.
    #[schema(pattern = "^(all_or_nothing|partial)$")]
    mode: Option<String>,
    /// How long the order holds its units (the server's
    /// --order-hold-seconds when absent).
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 604800)]
    hold_seconds: Option<Whole>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = OrderLineRequest)]
pub(crate) struct LineBody {
    #[schema(value_type = crate::openapi::Id)]
    sku: String,
    /// Where to reserve; absent: sourced by the server's --sourcing.
    #[schema(value_type = Option<crate::openapi::Id>)]
    location_id: Option<String>,
    #[schema(value_type = i64, minimum = 1, maximum = 1000000000)]
    quantity: Whole,
}

/// What a command on an existing order answers, besides the refusals of
/// any write.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum CommandAnswers<'a> {
    /// The order
    #[response(status = 200)]
    Done(stockflow_service::json::OrderOut<'a>),
    /// No such order.
    #[response(status = 404)]
    NotFound(crate::error::ErrorBody<'a>),
    /// Not allowed in the order's current state.
    #[response(status = 409)]
    Conflict(ConflictBody<'a>),
}

/// A refusal that shows the order as it stands.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = OrderConflict)]
pub(crate) struct ConflictBody<'a> {
    code: &'a str,
    message: &'a str,
    order: stockflow_service::json::OrderOut<'a>,
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
#[utoipa::path(post, path = "/v1/orders",
    operation_id = "placeOrder", tag = "orders",
    summary = "Place an order (reserve stock with a hold)",
    description = "Decided by the engine at one log position: all_or_nothing reserves every line or none; lines without locationId are sourced (most available first, split over locations). Idempotent by orderId. In Kafka mode an order is a saga run by its home partition (a hash of orderId): each line is reserved whole or refused by the single owner of its level, and an all_or_nothing order with a refused line releases the others; a line without locationId tries the locations of the server's priority list (`--sourcing priority:A,B`) in turn, and is reserved whole at the first that grants it (with `most-available` sourcing such a line is refused with 400). The answer comes once the home has decided (504 order_pending after 30 s: GET the order later); the levels reflect the decision within a processing cycle. Status `pending` is only seen in Kafka mode, while lines are out.",
    request_body(content = PlaceBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The order", body = stockflow_service::json::OrderOut),
        (status = 409, description = "Not allowed in the order's current state, or a different body for an existing orderId.", body = ConflictBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn place<B: Backend>(
    State(state): State<Arc<B>>,
    By(by): By,
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
            by,
        },
    )
    .await
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = FulfilRequest)]
pub(crate) struct FulfilBody {
    /// The lines to fulfil, by index (all when absent).
    #[schema(value_type = Option<Vec<u32>>)]
    lines: Option<Vec<Whole>>,
}

/// POST /v1/orders/{id}/fulfil, optionally `{"lines": [0, 2]}`.
#[utoipa::path(post, path = "/v1/orders/{id}/fulfil",
    operation_id = "fulfilOrder", tag = "orders",
    summary = "Fulfil the order (or the given lines): FULFILLMENT of the held units",
    params(("id" = String, Path)),
    request_body(content = FulfilBody, content_type = "application/json"),
    responses(
        CommandAnswers,
        crate::openapi::WriteRefusals,
    ))]
pub async fn fulfil<B: Backend>(
    State(state): State<Arc<B>>,
    Path(id): Path<String>,
    By(by): By,
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
            by,
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
#[utoipa::path(post, path = "/v1/orders/{id}/cancel",
    operation_id = "cancelOrder", tag = "orders",
    summary = "Cancel: release the held units",
    params(("id" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json", description = "Nothing is read from it; send `{}` (a write must carry Content-Type application/json, so a web page of another origin cannot send it)."),
    responses(
        CommandAnswers,
        crate::openapi::WriteRefusals,
    ))]
pub async fn cancel<B: Backend>(
    State(state): State<Arc<B>>,
    Path(id): Path<String>,
    By(by): By,
) -> Result<Response, ApiError> {
    submit(&*state, OrderCommand::Cancel { order_id: id, by }).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = ExtendRequest)]
pub(crate) struct ExtendBody {
    #[schema(value_type = i64, minimum = 1, maximum = 604800)]
    hold_seconds: Whole,
}

/// POST /v1/orders/{id}/extend `{"holdSeconds": n}`: the hold now ends n
/// seconds from now.
#[utoipa::path(post, path = "/v1/orders/{id}/extend",
    operation_id = "extendOrder", tag = "orders",
    summary = "The hold now ends holdSeconds from now",
    params(("id" = String, Path)),
    request_body(content = ExtendBody, content_type = "application/json"),
    responses(
        CommandAnswers,
        crate::openapi::WriteRefusals,
    ))]
pub async fn extend<B: Backend>(
    State(state): State<Arc<B>>,
    Path(id): Path<String>,
    By(by): By,
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
            by,
        },
    )
    .await
}

/// GET /v1/orders/{id}
#[utoipa::path(get, path = "/v1/orders/{id}",
    operation_id = "getOrder", tag = "orders",
    summary = "One order",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "The order", body = stockflow_service::json::OrderOut),
        (status = 404, description = "No such order.", body = crate::error::ErrorBody),
        crate::openapi::ReadRefusals,
    ))]
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
#[utoipa::path(get, path = "/v1/orders",
    operation_id = "listOrders", tag = "orders",
    summary = "List orders",
    params(("status" = Option<stockflow_service::json::OrderStatus>, Query), ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000), ("after" = Option<String>, Query)),
    responses(
        (status = 200, description = "A page", body = crate::shapes::OrderPage),
        crate::openapi::ReadRefusals,
    ))]
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
