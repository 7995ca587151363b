//! Which eventIds were already committed.
//!
//! Ids are kept as 128-bit hashes (xxh3-128): 16 bytes instead of up to 128
//! characters, with a collision chance far below that of a disk error. Ids
//! are forgotten after the retention period, oldest first; past the capacity
//! the oldest are forgotten early, and counted.

use std::collections::VecDeque;

use griddle::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use std::sync::Arc;

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

/// (commit time, id) in commit order.
type Entry = (Timestamp, u128);

/// Entries per chunk of the FIFO. Full chunks are shared immutably with
/// snapshots, so taking one costs a pointer copy per chunk plus a copy of
/// the open chunk, not a copy of every id (the checkpoint encodes them on
/// another thread).
const CHUNK_ENTRIES: usize = 1 << 16;

#[derive(Debug)]
pub struct Dedup {
    seen: HashSet<u128, BuildHasherDefault<IdentityHasher>>,
    /// Entries oldest first: full chunks, then `open`. Commit times never
    /// decrease because the shell passes a monotonic `now`.
    chunks: VecDeque<Arc<Vec<Entry>>>,
    /// The chunk being filled. Not shared, so a push is a plain store: an
    /// `Arc::make_mut` per id was a locked instruction per event, which
    /// waited for the hash table's scattered stores to drain.
    open: Vec<Entry>,
    /// Entries of the first chunk (`open` when there are no full ones)
    /// already forgotten.
    head: usize,
    len: usize,
    retention_ns: i64,
    capacity: usize,
    evicted_early: u64,
}

/// A point-in-time view of the remembered ids, cheap to take; see
/// [`DedupSnapshot::encode`] for the stored form.
#[derive(Clone, Debug)]
pub struct DedupSnapshot {
    chunks: Vec<Arc<Vec<Entry>>>,
    head: usize,
    evicted_early: u64,
}

/// Why stored dedup bytes cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("dedup snapshot is {len} bytes, not a header plus whole {ENTRY_BYTES}-byte entries")]
pub struct DedupDecodeError {
    len: usize,
}

const HEADER_BYTES: usize = 8;
const ENTRY_BYTES: usize = 8 + 16;

impl DedupSnapshot {
    pub fn len(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum::<usize>() - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .flat_map(move |(i, c)| c[if i == 0 { self.head } else { 0 }..].iter().copied())
    }

    /// Fixed-width little-endian form: `evicted_early u64`, then per entry
    /// `time i64, id u128`. Fixed width because it encodes ~10x faster
    /// than varints and decodes without branches; the ids are random, so
    /// varints would not shrink them anyway.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.len() * ENTRY_BYTES);
        out.extend_from_slice(&self.evicted_early.to_le_bytes());
        for (t, id) in self.entries() {
            out.extend_from_slice(&t.0.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<DedupSnapshot, DedupDecodeError> {
        let error = DedupDecodeError { len: bytes.len() };
        let (header, body) = bytes.split_at_checked(HEADER_BYTES).ok_or(error)?;
        if body.len() % ENTRY_BYTES != 0 {
            return Err(DedupDecodeError { len: bytes.len() });
        }
        let evicted_early = u64::from_le_bytes(header.try_into().expect("8 bytes"));
        let entries: Vec<Entry> = body
            .chunks_exact(ENTRY_BYTES)
            .map(|e| {
                let (t, id) = e.split_at(8);
                (
                    Timestamp(i64::from_le_bytes(t.try_into().expect("8 bytes"))),
                    u128::from_le_bytes(id.try_into().expect("16 bytes")),
                )
            })
            .collect();
        Ok(DedupSnapshot {
            chunks: vec![Arc::new(entries)],
            head: 0,
            evicted_early,
        })
    }
}

impl Dedup {
    pub fn new(retention_ns: i64, capacity: usize) -> Dedup {
        assert!(capacity > 0, "dedup capacity must be positive");
        Dedup {
            seen: HashSet::default(),
            chunks: VecDeque::new(),
            open: Vec::new(),
            head: 0,
            len: 0,
            retention_ns,
            capacity,
            evicted_early: 0,
        }
    }

    /// Sizes the table for `entries` ids in all, so that it does not grow
    /// before then (see [`crate::limits::DEDUP_PRESIZED_ENTRIES`]).
    pub fn presize(&mut self, entries: usize) {
        self.seen
            .reserve(entries.min(self.capacity).saturating_sub(self.seen.len()));
    }

    /// True if `id` is new (and remembers it), false for a duplicate.
    pub fn admit(&mut self, id: u128, now: Timestamp) -> bool {
        debug_assert!(
            self.open
                .last()
                .or_else(|| self.chunks.back().and_then(|c| c.last()))
                .is_none_or(|(t, _)| *t <= now),
            "now must not go backwards"
        );
        self.expire(now);
        if !self.seen.insert(id) {
            return false;
        }
        self.push((now, id));
        if self.len > self.capacity {
            if let Some((_, oldest)) = self.pop_front() {
                self.seen.remove(&oldest);
                self.evicted_early += 1;
            }
        }
        true
    }

    fn push(&mut self, entry: Entry) {
        if self.open.len() == CHUNK_ENTRIES {
            let full = std::mem::replace(&mut self.open, Vec::with_capacity(CHUNK_ENTRIES));
            self.chunks.push_back(Arc::new(full));
        } else if self.open.capacity() == 0 {
            self.open.reserve_exact(CHUNK_ENTRIES);
        }
        self.open.push(entry);
        self.len += 1;
    }

    fn front(&self) -> Option<Entry> {
        self.chunks
            .front()
            .map_or(&self.open, |c| &**c)
            .get(self.head)
            .copied()
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.front()?;
        self.head += 1;
        self.len -= 1;
        match self.chunks.front() {
            Some(first) if self.head == first.len() => {
                self.chunks.pop_front();
                self.head = 0;
            }
            // Everything forgotten: the open chunk starts again, in place.
            None if self.head == self.open.len() => {
                self.open.clear();
                self.head = 0;
            }
            _ => {}
        }
        Some(entry)
    }

    /// Forgets ids committed more than the retention period before `now`.
    pub fn expire(&mut self, now: Timestamp) {
        let horizon = now.saturating_sub_ns(self.retention_ns);
        while let Some((t, id)) = self.front() {
            if t >= horizon {
                break;
            }
            self.pop_front();
            self.seen.remove(&id);
        }
    }

    pub fn contains(&self, id: u128) -> bool {
        self.seen.contains(&id)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ids forgotten before their retention ran out, because of capacity.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    /// Shares the full chunks and copies the open one: O(chunks) plus at
    /// most one chunk of ids (2 MiB).
    pub fn snapshot(&self) -> DedupSnapshot {
        let open = (!self.open.is_empty()).then(|| Arc::new(self.open.clone()));
        DedupSnapshot {
            chunks: self.chunks.iter().cloned().chain(open).collect(),
            head: self.head,
            evicted_early: self.evicted_early,
        }
    }

    pub fn restore(snapshot: &DedupSnapshot, retention_ns: i64, capacity: usize) -> Dedup {
        let mut dedup = Dedup::new(retention_ns, capacity);
        dedup.seen.reserve(snapshot.len());
        for entry in snapshot.entries() {
            dedup.seen.insert(entry.1);
            dedup.push(entry);
        }
        dedup.evicted_early = snapshot.evicted_early;
        dedup
    }
}
