//! A refused input as both modes keep it, and where a page of them ends.

use serde::{Deserialize, Serialize};
use stockflow_core::Timestamp;

/// A rejected event (or unparseable body), kept with its raw payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: u64,
    pub received_at: Timestamp,
    /// Where it came from (`http:/v1/events`).
    pub source: String,
    /// Position in the request; `None` when the whole body was refused.
    pub index: Option<u32>,
    pub event_id: Option<String>,
    pub reason: String,
    /// The bytes as received: a refused body need not be UTF-8. (Encoded
    /// as a String was before, so older records read the same.)
    pub payload: Vec<u8>,
}

/// Where a page of dead letters ends (both modes): at `limit` letters, or
/// before the letter whose payload would take the page over `bytes_max`
/// (a page always holds one), so a page of large refused bodies does not
/// take hundreds of megabytes to answer.
pub struct PageCut {
    limit: usize,
    bytes_max: usize,
    taken: usize,
    bytes: usize,
}

impl PageCut {
    pub fn new(limit: usize, bytes_max: usize) -> PageCut {
        PageCut {
            limit,
            bytes_max,
            taken: 0,
            bytes: 0,
        }
    }

    /// Whether the next matching letter, of `payload_bytes`, goes on this
    /// page; false: it is the first of the next one.
    pub fn takes(&mut self, payload_bytes: usize) -> bool {
        self.bytes += payload_bytes;
        if self.taken == self.limit || (self.taken > 0 && self.bytes > self.bytes_max) {
            return false;
        }
        self.taken += 1;
        true
    }
}
