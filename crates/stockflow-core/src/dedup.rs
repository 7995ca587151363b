//! Which eventIds were already committed.
//!
//! Ids are kept as 128-bit hashes (xxh3-128): 16 bytes instead of up to 128
//! characters, with a collision chance far below that of a disk error. Ids
//! are forgotten after the retention period, oldest first; past the capacity
//! the oldest are forgotten early, and counted.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// The 128-bit hash that stands for an eventId.
pub fn event_id_hash(event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// Keys are already uniform hashes; hashing them again would be waste.
/// (Hand-written because no crate offers an identity hasher for u128.)
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = (n as u64) ^ ((n >> 64) as u64);
    }
}

#[derive(Debug)]
pub struct Dedup {
    seen: HashSet<u128, BuildHasherDefault<IdentityHasher>>,
    /// (commit time, id) oldest first; commit times never decrease because
    /// the shell passes a monotonic `now`.
    order: VecDeque<(Timestamp, u128)>,
    retention_ns: i64,
    capacity: usize,
    evicted_early: u64,
}

/// The stored form: ids with their commit time, oldest first.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DedupSnapshot {
    pub entries: Vec<(Timestamp, u128)>,
    pub evicted_early: u64,
}

impl Dedup {
    pub fn new(retention_ns: i64, capacity: usize) -> Dedup {
        assert!(capacity > 0, "dedup capacity must be positive");
        Dedup {
            seen: HashSet::default(),
            order: VecDeque::new(),
            retention_ns,
            capacity,
            evicted_early: 0,
        }
    }

    /// True if `id` is new (and remembers it), false for a duplicate.
    pub fn admit(&mut self, id: u128, now: Timestamp) -> bool {
        debug_assert!(
            self.order.back().is_none_or(|(t, _)| *t <= now),
            "now must not go backwards"
        );
        self.expire(now);
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back((now, id));
        if self.order.len() > self.capacity {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.seen.remove(&oldest);
                self.evicted_early += 1;
            }
        }
        true
    }

    /// Forgets ids committed more than the retention period before `now`.
    pub fn expire(&mut self, now: Timestamp) {
        let horizon = now.saturating_sub_ns(self.retention_ns);
        while let Some((t, id)) = self.order.front().copied() {
            if t >= horizon {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&id);
        }
    }

    pub fn contains(&self, id: u128) -> bool {
        self.seen.contains(&id)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Ids forgotten before their retention ran out, because of capacity.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    pub fn snapshot(&self) -> DedupSnapshot {
        DedupSnapshot {
            entries: self.order.iter().copied().collect(),
            evicted_early: self.evicted_early,
        }
    }

    pub fn restore(snapshot: DedupSnapshot, retention_ns: i64, capacity: usize) -> Dedup {
        let mut dedup = Dedup::new(retention_ns, capacity);
        dedup.seen.reserve(snapshot.entries.len());
        for (t, id) in snapshot.entries {
            dedup.seen.insert(id);
            dedup.order.push_back((t, id));
        }
        dedup.evicted_early = snapshot.evicted_early;
        dedup
    }
}
