//! The JSON of alerts and orders: one shape wherever they are shown (the
//! API, the live stream, webhooks, Kafka mode's topics), so the places
//! that show them cannot drift apart.

use serde_json::{json, Value};
use stockflow_core::alerts::Alert;
use stockflow_core::orders::{Mode, Order, Status};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// An alert as the API, the stream and the alerts topic show it. Typed,
/// so that writing one to a buffer (as Kafka mode does per alert) builds
/// no map.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertOut<'a> {
    /// `{partition}-{seq}`.
    id: AlertId,
    kind: &'static str,
    state: &'static str,
    severity: &'static str,
    sku: &'a str,
    location_id: &'a str,
    at: String,
    on_hand: i64,
    available: i64,
    threshold: i64,
    event_id: &'a str,
}

struct AlertId(u16, u64);

impl serde::Serialize for AlertId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}-{}", self.0, self.1))
    }
}

impl<'a> AlertOut<'a> {
    pub fn new(partition: u16, alert: &'a Alert, sku: &'a str, location: &'a str) -> AlertOut<'a> {
        AlertOut {
            id: AlertId(partition, alert.seq),
            kind: alert.kind.as_str(),
            state: alert.transition.as_str(),
            severity: alert.severity.as_str(),
            sku,
            location_id: location,
            at: alert.at.to_rfc3339(),
            on_hand: alert.on_hand,
            available: alert.available,
            threshold: alert.threshold,
            event_id: &alert.event_id,
        }
    }
}

pub fn alert_json(partition: u16, alert: &Alert, sku: &str, location: &str) -> Value {
    serde_json::to_value(AlertOut::new(partition, alert, sku, location))
        .expect("an alert serializes")
}

/// A PRICE_DROP's id: the same wherever and whenever it is shown.
pub fn price_drop_id(change: &stockflow_core::PriceChange) -> String {
    format!("price:{}:{}", change.sku, change.at.0)
}

/// A PRICE_DROP alert as the API, the stream, webhooks and the alerts
/// topic show it: a one-off notice, for a product, not a level.
pub fn price_drop_json(change: &stockflow_core::PriceChange) -> Value {
    json!({
        "id": price_drop_id(change),
        "kind": "PRICE_DROP",
        "state": "fired",
        "severity": "INFO",
        "sku": change.sku,
        "locationId": null,
        "at": change.at.to_rfc3339(),
        "previousPrice": change.before as f64 / 100.0,
        "price": change.after as f64 / 100.0,
        "dropPercent": change.drop_permille() as f64 / 10.0,
    })
}

/// The schema of a string that is one of `values` (written by hand: the
/// derive lists an enum's variants, and these lists live in the core as
/// the words the API uses, not as types of their own).
fn one_of(values: impl IntoIterator<Item = &'static str>, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .description(Some(description))
        .into()
}

/// An order's status, as the API writes it.
pub struct OrderStatus;

impl PartialSchema for OrderStatus {
    fn schema() -> RefOr<Schema> {
        one_of(
            Status::ALL.map(Status::as_str),
            "pending (Kafka mode only, while lines are out), reserved, partially_reserved, rejected, fulfilled, cancelled or expired.",
        )
    }
}

impl ToSchema for OrderStatus {}

/// An order's mode, as the API writes it.
pub struct OrderMode;

/// The word for a mode.
fn mode_str(mode: Mode) -> &'static str {
    match mode {
        Mode::AllOrNothing => "all_or_nothing",
        Mode::Partial => "partial",
    }
}

impl PartialSchema for OrderMode {
    fn schema() -> RefOr<Schema> {
        one_of(
            [Mode::AllOrNothing, Mode::Partial].map(mode_str),
            "all_or_nothing: every line is reserved or none; partial: each line as far as it can be.",
        )
    }
}

impl ToSchema for OrderMode {}

/// An event's type, as the API writes it.
pub struct EventTypeName;

impl PartialSchema for EventTypeName {
    fn schema() -> RefOr<Schema> {
        one_of(
            stockflow_core::EventType::ALL.map(stockflow_core::EventType::as_str),
            "What happened to the stock.",
        )
    }
}

impl ToSchema for EventTypeName {}

/// An order as the API, the stream and webhooks show it.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Order)]
pub struct OrderOut<'a> {
    order_id: &'a str,
    #[schema(value_type = OrderStatus)]
    status: &'static str,
    #[schema(value_type = OrderMode)]
    mode: &'static str,
    lines: Vec<LineOut<'a>>,
    /// While the order holds stock: when the hold ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// Who placed the order and who changed it since, oldest first (the
    /// first and the newest 31 when there were more).
    transitions: Vec<TransitionOut<'a>>,
}

/// One change of an order.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = OrderTransition)]
pub struct TransitionOut<'a> {
    /// place, fulfil, cancel, extend, expire, or an event naming the
    /// order: reservation_event, release_event, fulfillment_event.
    action: &'static str,
    /// The order's status right after it.
    #[schema(value_type = OrderStatus)]
    status: &'static str,
    #[schema(format = DateTime)]
    at: String,
    /// The token's name, `anonymous` (no token) or `stockflow` (the
    /// server: an expired hold).
    by: &'a str,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = OrderLine)]
pub struct LineOut<'a> {
    sku: &'a str,
    /// The location asked for, or the one location it was sourced from.
    location_id: Option<&'a str>,
    requested: i64,
    reserved: i64,
    allocations: Vec<AllocationOut<'a>>,
    /// Why the line holds less than requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Allocation)]
pub struct AllocationOut<'a> {
    location_id: &'a str,
    quantity: i64,
    fulfilled: bool,
}

impl<'a> OrderOut<'a> {
    pub fn new(order: &'a Order) -> OrderOut<'a> {
        OrderOut {
            order_id: &order.order_id,
            status: order.status.as_str(),
            mode: mode_str(order.mode),
            lines: order
                .lines
                .iter()
                .map(|line| LineOut {
                    sku: &line.sku,
                    location_id: line.location_id.as_deref().or_else(|| {
                        (line.allocations.len() == 1)
                            .then(|| line.allocations[0].location_id.as_str())
                    }),
                    requested: line.requested,
                    reserved: line.reserved(),
                    allocations: line
                        .allocations
                        .iter()
                        .map(|a| AllocationOut {
                            location_id: &a.location_id,
                            quantity: a.quantity,
                            fulfilled: a.fulfilled,
                        })
                        .collect(),
                    reason: line.reason.as_deref(),
                })
                .collect(),
            expires_at: order.expires_at.map(|at| at.to_rfc3339()),
            created_at: order.created_at.to_rfc3339(),
            updated_at: order.updated_at.to_rfc3339(),
            transitions: order
                .transitions
                .iter()
                .map(|t| TransitionOut {
                    action: t.action.as_str(),
                    status: t.status.as_str(),
                    at: t.at.to_rfc3339(),
                    by: match t.by.as_str() {
                        "" => stockflow_core::ANONYMOUS,
                        by => by,
                    },
                })
                .collect(),
        }
    }
}

/// An order as the API shows it.
pub fn order_json(order: &Order) -> Value {
    serde_json::to_value(OrderOut::new(order)).expect("an order serializes")
}
