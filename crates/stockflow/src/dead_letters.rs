//! The newest dead letters, in memory (and in each checkpoint), for the
//! API. Every dead letter is also in the log, so the bounds lose nothing.
//!
//! Bounded in count and in bytes: a few huge refused bodies must not take
//! the memory that a hundred thousand small ones are allowed.

use std::collections::BTreeMap;

use crate::record::DeadLetter;

#[derive(Debug)]
pub struct DeadLetters {
    by_id: BTreeMap<u64, DeadLetter>,
    capacity: usize,
    bytes_max: usize,
    bytes: usize,
}

/// About what a letter takes in memory.
fn size(letter: &DeadLetter) -> usize {
    std::mem::size_of::<DeadLetter>()
        + letter.payload.len()
        + letter.reason.len()
        + letter.source.len()
        + letter.event_id.as_ref().map_or(0, String::len)
}

impl DeadLetters {
    /// Keeps at most `capacity` letters and `bytes_max` bytes of them,
    /// dropping the oldest first.
    pub fn new(capacity: usize, bytes_max: usize) -> DeadLetters {
        DeadLetters {
            by_id: BTreeMap::new(),
            capacity,
            bytes_max,
            bytes: 0,
        }
    }

    pub fn insert(&mut self, letter: DeadLetter) {
        self.bytes += size(&letter);
        if let Some(old) = self.by_id.insert(letter.id, letter) {
            self.bytes -= size(&old);
        }
        while self.by_id.len() > self.capacity || self.bytes > self.bytes_max {
            let Some((_, oldest)) = self.by_id.pop_first() else {
                break;
            };
            self.bytes -= size(&oldest);
        }
    }

    /// Bytes the letters held take (about).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Up to `limit` letters with id > `after` that `keep` accepts, oldest
    /// first.
    pub fn page(
        &self,
        after: Option<u64>,
        limit: usize,
        keep: impl Fn(&DeadLetter) -> bool,
    ) -> Vec<DeadLetter> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        self.by_id
            .range(start..)
            .map(|(_, l)| l)
            .filter(|l| keep(l))
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<&DeadLetter> {
        self.by_id.get(&id)
    }

    pub fn remove(&mut self, id: u64) -> Option<DeadLetter> {
        let removed = self.by_id.remove(&id)?;
        self.bytes -= size(&removed);
        Some(removed)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn all(&self) -> Vec<DeadLetter> {
        self.by_id.values().cloned().collect()
    }
}
