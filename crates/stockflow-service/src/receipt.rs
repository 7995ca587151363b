//! What a write is answered, whichever backend took it: how many events
//! were accepted, duplicates or rejected, and why each refused one was;
//! and a body refused whole, to be kept as a dead letter.

use serde::{Deserialize, Serialize};
use stockflow_core::orders::Answer;

/// The answer to one ingest request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Receipt {
    /// New events committed and applied (including rejected reservations).
    pub accepted: u64,
    pub duplicates: u64,
    /// Invalid events, kept as dead letters.
    pub rejected: u64,
    pub errors: Vec<ReceiptError>,
    /// The answer to an order command, for order requests.
    #[serde(skip)]
    #[schema(ignore)]
    pub order: Option<Answer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptError {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// A field-named validation message, or for accepted events that
    /// changed nothing (their outcome is in the level's history):
    /// insufficient_stock, count_beyond_history, quantity_overflow,
    /// too_many_holds: …, or no_hold: order X holds nothing at
    /// sku@location.
    pub reason: String,
}

/// A body refused as a whole, to be kept as a dead letter.
#[derive(Clone)]
pub struct RefusedBody {
    pub reason: String,
    /// As received (kept verbatim, whatever its encoding).
    pub payload: Vec<u8>,
}
