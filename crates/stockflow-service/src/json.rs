//! The JSON of alerts and orders: one shape wherever they are shown (the
//! API, the live stream, webhooks, Kafka mode's topics), so the places
//! that show them cannot drift apart.

use serde_json::{json, Value};
use stockflow_core::alerts::Alert;
use stockflow_core::orders::{Mode, Order};

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

/// An order as the API shows it.
pub fn order_json(order: &Order) -> Value {
    let lines: Vec<Value> = order
        .lines
        .iter()
        .map(|line| {
            let location = line.location_id.clone().or_else(|| {
                (line.allocations.len() == 1).then(|| line.allocations[0].location_id.clone())
            });
            let mut out = json!({
                "sku": line.sku,
                "locationId": location,
                "requested": line.requested,
                "reserved": line.reserved(),
                "allocations": line.allocations.iter().map(|a| json!({
                    "locationId": a.location_id, "quantity": a.quantity, "fulfilled": a.fulfilled,
                })).collect::<Vec<_>>(),
            });
            if let Some(reason) = &line.reason {
                out["reason"] = json!(reason);
            }
            out
        })
        .collect();
    let mut out = json!({
        "orderId": order.order_id,
        "status": order.status.as_str(),
        "mode": match order.mode { Mode::AllOrNothing => "all_or_nothing", Mode::Partial => "partial" },
        "lines": lines,
        "createdAt": order.created_at.to_rfc3339(),
        "updatedAt": order.updated_at.to_rfc3339(),
    });
    if let Some(at) = order.expires_at {
        out["expiresAt"] = json!(at.to_rfc3339());
    }
    out
}
