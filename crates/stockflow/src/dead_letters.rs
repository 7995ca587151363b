//! The newest dead letters, in memory, for the API. Every dead letter is
//! also in the log, so the memory bound loses nothing.

use std::collections::BTreeMap;

use crate::record::DeadLetter;

#[derive(Debug)]
pub struct DeadLetters {
    by_id: BTreeMap<u64, DeadLetter>,
    capacity: usize,
}

impl DeadLetters {
    pub fn new(capacity: usize) -> DeadLetters {
        DeadLetters {
            by_id: BTreeMap::new(),
            capacity,
        }
    }

    pub fn insert(&mut self, letter: DeadLetter) {
        self.by_id.insert(letter.id, letter);
        while self.by_id.len() > self.capacity {
            self.by_id.pop_first();
        }
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
        self.by_id.remove(&id)
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
