//! What one log record holds: one group commit.
//!
//! A record is the unit of durability: every event in it, its dedup record
//! (the eventId itself) and the dead letters rejected alongside are written
//! in one frame and made durable by one fsync. State is derived from
//! records, so an event counts if and only if its record is in the log.

use serde::{Deserialize, Serialize};
use stockflow_core::{Batch, CatalogChange, OrderCommand, Timestamp};
use stockflow_service::dead_letter::DeadLetter;

/// Encoded form of a group commit. Field order is the format; see
/// ARCHITECTURE.md before changing it.
#[derive(Serialize)]
pub struct CommitGroupRef<'a> {
    pub now: Timestamp,
    /// Applied before the batches.
    pub catalog: &'a [CatalogChange],
    pub batches: Vec<&'a Batch>,
    pub dead_letters: &'a [DeadLetter],
    /// Dead letters resolved (replayed) or discarded: id, and the token
    /// name that did it.
    pub discarded: &'a [(u64, String)],
    /// Order commands, decided after the batches (see `orders`).
    pub orders: &'a [OrderCommand],
    /// The hold an order gets when an event of these batches reserves for
    /// it (the server's setting when the record was written, so replay
    /// expires it at the same time).
    pub event_hold_ns: i64,
}

/// Decoded form of [`CommitGroupRef`].
#[derive(Deserialize)]
pub struct CommitGroup {
    pub now: Timestamp,
    pub catalog: Vec<CatalogChange>,
    pub batches: Vec<Batch>,
    pub dead_letters: Vec<DeadLetter>,
    pub discarded: Vec<(u64, String)>,
    pub orders: Vec<OrderCommand>,
    pub event_hold_ns: i64,
}

impl CommitGroupRef<'_> {
    pub fn encode_into(&self, buf: Vec<u8>) -> Vec<u8> {
        let mut buf = buf;
        buf.clear();
        postcard::to_extend(self, buf).expect("encoding into a Vec cannot fail")
    }
}

impl CommitGroup {
    pub fn decode(bytes: &[u8]) -> Result<CommitGroup, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}
