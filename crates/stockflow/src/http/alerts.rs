//! GET /v1/alerts: alert events (raised, cleared, fired), newest first, or
//! the active ones. Alerts are kept with their partition's state, so they
//! are as durable as the levels and replay the same.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use stockflow_core::alerts::{Alert, AlertKind};

use super::query::{limit, Page};
use super::{ApiError, AppState};

#[derive(Deserialize)]
pub struct AlertFilter {
    kind: Option<String>,
    sku: Option<String>,
    #[serde(rename = "locationId")]
    location_id: Option<String>,
    active: Option<bool>,
    #[serde(flatten)]
    page: Page,
}

/// Sorts newest first; the id orders the same way within one instant.
fn key(partition: u16, alert: &Alert) -> (std::cmp::Reverse<i64>, u16, std::cmp::Reverse<u64>) {
    (
        std::cmp::Reverse(alert.at.0),
        partition,
        std::cmp::Reverse(alert.seq),
    )
}

pub fn alert_json(partition: u16, alert: &Alert, sku: &str, location: &str) -> Value {
    json!({
        "id": format!("{partition}-{}", alert.seq),
        "kind": alert.kind.as_str(),
        "state": alert.transition.as_str(),
        "severity": alert.severity.as_str(),
        "sku": sku,
        "locationId": location,
        "at": alert.at.to_rfc3339(),
        "onHand": alert.on_hand,
        "available": alert.available,
        "threshold": alert.threshold,
        "eventId": &*alert.event_id,
    })
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(filter): Query<AlertFilter>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(&filter.page)?;
    let kind = match filter.kind.as_deref() {
        None => None,
        Some(text) => Some(AlertKind::from_wire(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "kind: {text:?} is not one of LOW_STOCK, OUT_OF_STOCK, BACK_IN_STOCK, NEGATIVE_ON_HAND"
            ))
        })?),
    };
    let after = match filter.page.after.as_deref() {
        None => None,
        Some(text) => {
            let parsed = text
                .split_once('-')
                .and_then(|(p, s)| Some((p.parse::<u16>().ok()?, s.parse::<u64>().ok()?)));
            Some(parsed.ok_or_else(|| ApiError::bad_request("after must be an alert id"))?)
        }
    };
    // (partition, alert, sku, location)
    type Found = (u16, Alert, Arc<str>, Arc<str>);
    let mut found: Vec<Found> = Vec::new();
    for (p, partition) in state.pipeline.shared.partitions.iter().enumerate() {
        let partition = partition.read();
        let alerts = &partition.alerts;
        let chosen: Box<dyn Iterator<Item = &Alert>> = if filter.active == Some(true) {
            Box::new(alerts.active.values())
        } else {
            Box::new(alerts.recent.iter())
        };
        for a in chosen {
            let (sku, location) = partition.names_of(a.slot);
            let keep = kind.is_none_or(|k| a.kind == k)
                && filter.sku.as_deref().is_none_or(|s| **sku == *s)
                && filter
                    .location_id
                    .as_deref()
                    .is_none_or(|l| **location == *l);
            if keep {
                found.push((p as u16, a.clone(), sku.clone(), location.clone()));
            }
        }
    }
    found.sort_by_key(|(p, a, _, _)| key(*p, a));
    if let Some((p, seq)) = after {
        // Continue after the cursor in this order.
        if let Some(at) = found
            .iter()
            .position(|(fp, a, _, _)| *fp == p && a.seq == seq)
        {
            found.drain(..=at);
        }
    }
    let more = found.len() > limit;
    found.truncate(limit);
    let next = more
        .then(|| found.last().map(|(p, a, _, _)| format!("{p}-{}", a.seq)))
        .flatten();
    Ok(Json(json!({
        "alerts": found.iter().map(|(p, a, s, l)| alert_json(*p, a, s, l)).collect::<Vec<_>>(),
        "nextAfter": next,
    })))
}
