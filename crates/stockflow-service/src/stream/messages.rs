//! The messages the appliers publish: a batch's stock changes, the
//! alerts a partition raised, an order step's orders, price drops; built
//! the same way live and when a restart rebuilds what the journal lacks.

use super::*;

/// The messages of a batch's stock changes (when `stock`) and of the alerts
/// the partition raised since `alerts_since`: what an applier publishes, and
/// what a restart builds again for records the journal lacks.
pub fn drafts_of(
    id: u16,
    partition: &stockflow_core::Partition,
    batch: &stockflow_core::Batch,
    changes: &[stockflow_core::Change],
    stock: bool,
    alerts_since: Option<u64>,
    out: &mut Vec<Draft>,
) {
    if stock {
        out.extend(changes.iter().map(|c| stock_draft(partition, batch, c)));
    }
    if let Some(since) = alerts_since {
        let alerts = &partition.alerts;
        let new = (alerts.next_seq - since) as usize;
        let skip = alerts.recent.len().saturating_sub(new);
        out.extend(
            alerts
                .recent
                .iter()
                .skip(skip)
                .map(|a| alert_draft(id, partition, a)),
        );
    }
}

/// The messages of the alerts a partition raised since `since`.
pub fn alert_drafts(
    id: u16,
    partition: &stockflow_core::Partition,
    since: u64,
    out: &mut Vec<Draft>,
) {
    let none = stockflow_core::Batch::default();
    drafts_of(id, partition, &none, &[], false, Some(since), out);
}

/// The messages of an order step: the orders its events' hold changes
/// moved (once each), the orders its timers expired, then the answers to
/// its commands (every order whose state changed).
pub fn order_drafts(
    book: &stockflow_core::OrderBook,
    expiring: &[String],
    observed: &[stockflow_core::orders::HoldChange],
    answers: &[stockflow_core::orders::Answer],
) -> Vec<Draft> {
    let mut seen = std::collections::BTreeSet::new();
    let moved = observed
        .iter()
        .filter(|c| seen.insert(c.order_id.as_str()))
        .filter_map(|c| book.orders.get(&c.order_id));
    let expired = expiring.iter().filter_map(|id| book.orders.get(id));
    let expired = moved.chain(expired);
    let answered = answers.iter().filter_map(|a| match a {
        stockflow_core::orders::Answer::Done(order) => Some(order),
        _ => None,
    });
    expired
        .chain(answered)
        .map(|order| Draft {
            kind: Kind::Orders,
            sku: None,
            location_id: None,
            body: Body::Json(crate::json::order_json(order)),
        })
        .collect()
}

/// A stock message for one change of a partition's level.
pub fn stock_draft(
    partition: &stockflow_core::Partition,
    batch: &stockflow_core::Batch,
    change: &stockflow_core::Change,
) -> Draft {
    let (sku, location) = partition.names_of(change.slot);
    let policy = partition.policy_of(change.slot);
    let n = &change.after;
    Draft {
        kind: Kind::Stock,
        sku: Some(sku.clone()),
        location_id: Some(location.clone()),
        body: Body::Stock {
            numbers: [n.on_hand, n.reserved, policy.available(n), n.in_transit],
            event_id: batch.event_id(change.position as usize).into(),
            event_type: batch.rec(change.position as usize).event_type.as_str(),
            outcome: crate::history::outcome_name(change.outcome),
        },
    }
}

/// An alert message.
pub fn alert_draft(
    id: u16,
    partition: &stockflow_core::Partition,
    alert: &stockflow_core::alerts::Alert,
) -> Draft {
    let (sku, location) = partition.names_of(alert.slot);
    Draft {
        kind: Kind::Alerts,
        sku: Some(sku.clone()),
        location_id: Some(location.clone()),
        body: Body::Json(crate::json::alert_json(id, alert, sku, location)),
    }
}

/// The messages of the PRICE_DROP alerts among `changes` (cuts of at
/// least `percent`), which the applier of each SKU's home partition
/// publishes.
pub fn price_drop_drafts(
    changes: &[stockflow_core::PriceChange],
    percent: u8,
    home: impl Fn(&str) -> bool,
    out: &mut Vec<Draft>,
) {
    let drops = changes
        .iter()
        .filter(|c| c.is_drop(percent) && home(&c.sku));
    out.extend(drops.map(|change| Draft {
        kind: Kind::Alerts,
        sku: Some(change.sku.as_str().into()),
        location_id: None,
        body: Body::Json(crate::json::price_drop_json(change)),
    }));
}

/// A SKU's or a location's totals as the stream and the Kafka totals
/// topics carry them: `{"sku": …}` or `{"locationId": …}`, then the
/// totals' fields (`onHand`, `reserved`, `available`, `inTransit`,
/// `levels`, `atZero`, `belowThreshold`).
pub fn totals_json(kind: Kind, key: &str, totals: &stockflow_core::Totals) -> Value {
    let mut value = serde_json::to_value(totals).expect("totals serialize");
    let field = match kind {
        Kind::Locations => "locationId",
        _ => "sku",
    };
    if let Value::Object(fields) = &mut value {
        fields.insert(field.to_owned(), Value::from(key));
    }
    value
}

/// The messages of a totals cycle: each SKU's, then each location's,
/// newest totals (one message per key, however many events moved it).
pub fn totals_drafts(
    items: impl IntoIterator<Item = (Arc<str>, stockflow_core::Totals)>,
    locations: impl IntoIterator<Item = (Arc<str>, stockflow_core::Totals)>,
) -> Vec<Draft> {
    let items = items.into_iter().map(|(sku, totals)| Draft {
        kind: Kind::Items,
        body: Body::Json(totals_json(Kind::Items, &sku, &totals)),
        sku: Some(sku),
        location_id: None,
    });
    let locations = locations.into_iter().map(|(location, totals)| Draft {
        kind: Kind::Locations,
        body: Body::Json(totals_json(Kind::Locations, &location, &totals)),
        sku: None,
        location_id: Some(location),
    });
    items.chain(locations).collect()
}
