//! The newest dead letters, in memory (and in each checkpoint), for the
//! API. Every dead letter is also in the log, so the bounds lose nothing.
//!
//! Bounded in count and in bytes: a few huge refused bodies must not take
//! the memory that a hundred thousand small ones are allowed.

use std::collections::BTreeMap;

use stockflow_service::dead_letter::{DeadLetter, PageCut};

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
    /// first, with no more than `payload_bytes_max` of payloads (but at
    /// least one letter); and whether more follow.
    pub fn page(
        &self,
        after: Option<u64>,
        limit: usize,
        payload_bytes_max: usize,
        keep: impl Fn(&DeadLetter) -> bool,
    ) -> (Vec<DeadLetter>, bool) {
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut page = Vec::new();
        let mut cut = PageCut::new(limit, payload_bytes_max);
        for letter in self
            .by_id
            .range(start..)
            .map(|(_, l)| l)
            .filter(|l| keep(l))
        {
            if !cut.takes(letter.payload.len()) {
                return (page, true);
            }
            page.push(letter.clone());
        }
        (page, false)
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

#[cfg(test)]
mod tests {
    use super::*;
    use stockflow_core::Timestamp;

    fn letter(id: u64, bytes: usize) -> DeadLetter {
        DeadLetter {
            id,
            received_at: Timestamp(0),
            source: "test".into(),
            index: None,
            event_id: None,
            reason: "bad".into(),
            payload: vec![0xFF; bytes],
        }
    }

    /// Found by a hostile test: a page of four 15 MiB letters answered
    /// 272 MB, and eight such reads at once took 2.9 GB.
    #[test]
    fn a_page_stops_at_its_payload_bytes_and_says_more_follow() {
        let mut letters = DeadLetters::new(100, 1 << 30);
        (0..5).for_each(|id| letters.insert(letter(id, 3 << 20)));
        let (page, more) = letters.page(None, 100, 8 << 20, |_| true);
        assert_eq!((page.len(), more), (2, true));
        let (page, more) = letters.page(Some(3), 100, 8 << 20, |_| true);
        assert_eq!((page.len(), more), (1, false));
        let (page, more) = letters.page(None, 100, 1 << 20, |_| true);
        assert_eq!((page.len(), more), (1, true), "one letter even if larger");
    }

    #[test]
    fn the_oldest_go_first_past_the_bytes_bound_and_removals_count() {
        let mut letters = DeadLetters::new(100, 10 << 20);
        (0..5).for_each(|id| letters.insert(letter(id, 3 << 20)));
        assert_eq!(letters.len(), 3);
        assert_eq!(letters.page(None, 10, usize::MAX, |_| true).0[0].id, 2);
        letters.remove(3);
        assert!(letters.bytes() < 7 << 20 && letters.bytes() >= 6 << 20);
    }
}
