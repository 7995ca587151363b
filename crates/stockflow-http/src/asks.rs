//! What a client can ask the inventory, and what comes back, in the
//! shapes the seam ([`Backend`](super::backend::Backend)) takes: the
//! handlers parse requests into these, both backends answer them. Below
//! the trait and the handlers alike, so neither imports the other.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use stockflow_core::{CatalogChange, Policy, Totals};

use super::ApiError;

/// When an ingest request is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Once the events are durable. The embedded mode applies them in the
    /// same step, so there it is the same as [`Wait::Applied`].
    Durable,
    /// Once their owners have applied them, with each one's outcome
    /// (`?wait=applied`).
    Applied,
}

impl Wait {
    /// The `wait` query parameter: absent, or `applied`.
    pub fn from_query(wait: Option<&str>) -> Result<Wait, ApiError> {
        match wait {
            None => Ok(Wait::Durable),
            Some("applied") => Ok(Wait::Applied),
            Some(other) => Err(ApiError::bad_request(format!(
                "wait: {} is not `applied`",
                stockflow_core::parse::quote(other)
            ))),
        }
    }
}

/// A level's quantities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantities {
    pub on_hand: i64,
    pub reserved: i64,
    pub in_transit: i64,
}

#[derive(Deserialize, Default)]
pub struct AlertFilter {
    pub kind: Option<String>,
    pub sku: Option<String>,
    #[serde(rename = "locationId")]
    pub location_id: Option<String>,
    pub active: Option<bool>,
    /// Only alerts that are (true) or are not (false) acknowledged.
    pub acknowledged: Option<bool>,
    /// Only alerts that a mute in force covers (true) or does not (false).
    pub muted: Option<bool>,
    /// Kafka mode: `local` asks one member for its own partitions' alerts.
    pub scope: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

/// (time ns, order within an instant, alert): sorted ascending by the first
/// two, the list is newest first.
pub type Found = Vec<(i64, String, Value)>;

/// A checked catalog write: the change, and the item's JSON as given
/// with its id filled in (what Kafka mode's catalog topic carries).
pub struct CatalogItem {
    pub change: CatalogChange,
    pub json: Value,
}

/// A SKU's totals over every location, and by location group
/// (`region:…`, `type:…`, `channel:…`).
pub type Rollup = (Totals, BTreeMap<String, Totals>);

#[derive(Deserialize, Clone, Default)]
pub struct LetterFilter {
    /// A source (`http:/v1/events`, `source:store-item`, …) or a prefix of
    /// one (`webhook:`), or a format name (see `dead_letters::format_of`).
    pub source: Option<String>,
    /// Case-insensitive substring of the reason.
    pub reason: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

/// A dead letter as a replay needs it.
pub struct Letter {
    /// Where it came from (`http:/v1/events`, `source:{format}`, …).
    pub source: String,
    /// The source format its payload is in, if it has one.
    pub format: Option<String>,
    /// The refused bytes, exactly as received.
    pub payload: Vec<u8>,
}

#[derive(Deserialize)]
pub struct HistoryPage {
    pub before: Option<String>,
    #[serde(flatten)]
    pub page: Page,
}

#[derive(Deserialize, Default, Clone)]
pub struct Page {
    pub limit: Option<String>,
    pub after: Option<String>,
}

/// Which levels of a location to list, by how their stock stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// available below the low-stock threshold (including none).
    Low,
    /// nothing available.
    Out,
    /// onHand below zero (sales ahead of receipts).
    Negative,
    /// at or above the threshold.
    Ok,
}

impl Status {
    pub fn parse(text: &str) -> Result<Status, ApiError> {
        match text {
            "low" => Ok(Status::Low),
            "out" => Ok(Status::Out),
            "negative" => Ok(Status::Negative),
            "ok" => Ok(Status::Ok),
            _ => Err(ApiError::bad_request(format!(
                "status: {text:?} is not one of low, out, negative, ok"
            ))),
        }
    }

    pub fn holds(self, level: &stockflow_core::Level, policy: Policy) -> bool {
        let available = policy.available(&level.numbers());
        match self {
            Status::Low => available < policy.low_stock_threshold,
            Status::Out => available == 0,
            Status::Negative => level.on_hand < 0,
            Status::Ok => available >= policy.low_stock_threshold,
        }
    }
}

/// A page of a location's levels, as asked.
#[derive(Clone, Debug)]
pub struct Listing {
    /// Only levels whose stock stands so.
    pub status: Option<Status>,
    /// The status as asked (to ask other members the same).
    pub status_text: Option<String>,
    pub limit: usize,
    /// After this SKU.
    pub after: Option<String>,
}
