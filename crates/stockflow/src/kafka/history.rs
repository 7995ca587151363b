//! Level history in Kafka mode: what GET …/history and `?asOf=` read.
//!
//! The owner of a partition writes the history entries of each cycle
//! (every change, with the level before and after) to partition p of the
//! history topic, before the cycle's changelog record. Each instance keeps
//! the history of the partitions it owns in the same local files as the
//! embedded mode ([`crate::history`]), built by one thread, the
//! materialiser, from that topic: from its beginning when a partition is
//! assigned (queries answer 503 until it has caught up), then as it grows.
//!
//! A record carries the input positions its cycle covered. Without broker
//! transactions an owner can die after its history record and before its
//! changelog record; the next owner applies the same inputs again and
//! writes their history again, starting from the same positions. So a
//! record whose start equals that of one already materialised replaces it
//! and everything after it: the materialiser cuts its files back and
//! restores each level's cursor. History thus holds each applied event
//! once, exactly as the changelog does. (With transactions the orphan is
//! aborted and never read.)
//!
//! ```text
//! record: version u8 (1) | from (canonical, repartition) 2×i64
//!         | to 2×i64 | part u16 | entries…                (little-endian)
//! entry:  sku_len u16 | sku | location_len u16 | location
//!         | the local entry (see crate::history), prev = 0
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::processor::{Shared, NOT_OWNED};
use super::wire::Positions;
use super::KafkaSettings;
use crate::history::{Entry, Fixed, HistoryWriter};

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 * 8 + 2;
/// Most entries in one history record: ~150 bytes each keeps a record
/// well under Kafka's 1 MB default message size.
pub const ENTRIES_PER_RECORD: usize = 4_000;
/// Cycles remembered per partition to undo: orphans are at most the
/// cycles after the last changelog record, one or two.
const CYCLES_KEPT: usize = 32;
/// How often ownership is compared with what is materialised.
const SYNC_EVERY: Duration = Duration::from_millis(50);
/// How often local history older than the retention is deleted.
const COMPACT_EVERY: Duration = Duration::from_secs(600);

/// One partition's history as queries see it.
#[derive(Default)]
pub struct Book {
    /// Caught up with the history topic since it was assigned.
    pub current: bool,
    heads: HashMap<String, u64>,
}

fn level(sku: &str, location: &str) -> String {
    let mut key = String::with_capacity(sku.len() + location.len() + 1);
    key.push_str(sku);
    key.push('\u{1f}');
    key.push_str(location);
    key
}

impl Book {
    /// The cursor of a level's newest entry.
    pub fn head(&self, sku: &str, location: &str) -> Option<u64> {
        self.heads.get(&level(sku, location)).copied()
    }
}

/// The history records of one cycle of partition p, built by its owner.
pub struct Records {
    from: Positions,
    to: Positions,
    part: u16,
    entries: usize,
    buf: Vec<u8>,
    done: Vec<Vec<u8>>,
}

impl Records {
    pub fn new(from: Positions, to: Positions) -> Records {
        let mut records = Records {
            from,
            to,
            part: 0,
            entries: 0,
            buf: Vec::new(),
            done: Vec::new(),
        };
        records.start();
        records
    }

    fn start(&mut self) {
        self.buf.clear();
        self.buf.push(VERSION);
        for v in [
            self.from.canonical,
            self.from.repartition,
            self.to.canonical,
            self.to.repartition,
        ] {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        self.buf.extend_from_slice(&self.part.to_le_bytes());
        self.entries = 0;
    }

    pub fn push(&mut self, sku: &str, location: &str, fixed: &Fixed, event_id: &str) {
        for text in [sku, location] {
            self.buf
                .extend_from_slice(&(text.len() as u16).to_le_bytes());
            self.buf.extend_from_slice(text.as_bytes());
        }
        fixed.encode(event_id, &mut self.buf);
        self.entries += 1;
        if self.entries == ENTRIES_PER_RECORD {
            self.done.push(std::mem::take(&mut self.buf));
            self.part += 1;
            self.start();
        }
    }

    /// The records to send, in order (none for a cycle without changes).
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        if self.entries > 0 {
            self.done.push(self.buf);
        }
        self.done
    }
}

/// A history record read back.
struct Record<'a> {
    from: Positions,
    part: u16,
    entries: &'a [u8],
}

fn decode(bytes: &[u8]) -> Option<Record<'_>> {
    if bytes.len() < HEADER || bytes[0] != VERSION {
        return None;
    }
    let i64_at = |at: usize| i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Some(Record {
        from: Positions {
            canonical: i64_at(1),
            repartition: i64_at(9),
        },
        part: u16::from_le_bytes([bytes[33], bytes[34]]),
        entries: &bytes[HEADER..],
    })
}

/// A length-prefixed text at the start of `bytes`, and its size.
fn text(bytes: &[u8]) -> Option<(&str, usize)> {
    let len = u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
    let text = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
    Some((text, 2 + len))
}

/// The next (sku, location, entry) of `bytes` and the rest.
fn next_entry(bytes: &[u8]) -> Option<(&str, &str, Entry, &[u8])> {
    let (sku, a) = text(bytes)?;
    let (location, b) = text(&bytes[a..])?;
    let rest = &bytes[a + b..];
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let entry = Entry::decode(rest.get(..len)?)?;
    Some((sku, location, entry, &rest[len..]))
}

/// A cycle materialised: where its entries start in the local files, and
/// the cursors they replaced, to undo it.
struct Cycle {
    from: Positions,
    start: u64,
    undo: Vec<(String, u64)>,
}

/// One owned partition being materialised.
struct Local {
    /// The instance's history root and this partition.
    dir: PathBuf,
    p: u16,
    writer: HistoryWriter,
    heads: HashMap<String, u64>,
    cycles: std::collections::VecDeque<Cycle>,
    /// Cursors changed since the last publish (0: removed).
    dirty: Vec<(String, u64)>,
    /// Caught up once the record before this offset is read.
    target: i64,
    next: i64,
}

struct Materialiser {
    topic: String,
    dir: PathBuf,
    shared: Arc<Shared>,
    consumer: BaseConsumer,
    locals: HashMap<u16, Local>,
    retention_ns: i64,
}

/// Starts the materialiser thread; it stops when `stop` is set.
pub fn start(
    settings: &KafkaSettings,
    dir: PathBuf,
    shared: Arc<Shared>,
    retention_ns: i64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let consumer: BaseConsumer = settings
        .client(&[
            ("enable.auto.commit", "false"),
            ("group.id", &format!("{}-history", settings.group)),
            ("fetch.wait.max.ms", "50"),
        ])
        .create()?;
    let mut materialiser = Materialiser {
        topic: settings.topics.history.clone(),
        dir,
        shared,
        consumer,
        locals: HashMap::new(),
        retention_ns,
    };
    Ok(std::thread::Builder::new()
        .name("kafka-history".into())
        .spawn(move || {
            let mut synced = Instant::now() - SYNC_EVERY;
            let mut compacted = Instant::now();
            while !stop.load(Ordering::Acquire) {
                if synced.elapsed() >= SYNC_EVERY {
                    materialiser.sync();
                    synced = Instant::now();
                }
                if compacted.elapsed() >= COMPACT_EVERY {
                    materialiser.compact();
                    compacted = Instant::now();
                }
                materialiser.poll();
            }
        })?)
}

impl Materialiser {
    /// Follows ownership: a newly owned partition is rebuilt from the
    /// topic's beginning, one no longer owned is dropped.
    fn sync(&mut self) {
        let owned: Vec<u16> = (0..self.shared.partitions.len() as u16)
            .filter(|p| self.shared.status(*p) != NOT_OWNED)
            .collect();
        let mut gone = TopicPartitionList::new();
        let dropped: Vec<u16> = self
            .locals
            .keys()
            .filter(|p| !owned.contains(p))
            .copied()
            .collect();
        for p in dropped {
            self.locals.remove(&p);
            *self.shared.history[p as usize].write() = Book::default();
            gone.add_partition(&self.topic, i32::from(p));
        }
        if gone.count() > 0 {
            if let Err(error) = self.consumer.incremental_unassign(&gone) {
                tracing::warn!(%error, "history: cannot release partitions");
            }
        }
        let mut added = TopicPartitionList::new();
        for p in owned {
            if self.locals.contains_key(&p) {
                continue;
            }
            let (low, high) = match self.consumer.fetch_watermarks(
                &self.topic,
                i32::from(p),
                Duration::from_secs(5),
            ) {
                Ok(marks) => marks,
                Err(error) => {
                    tracing::warn!(%error, partition = p, "history: no watermarks yet");
                    continue;
                }
            };
            let writer = match HistoryWriter::open(&self.dir, p, 0) {
                Ok(writer) => writer,
                Err(error) => {
                    tracing::error!(%error, partition = p, "history: cannot open local files");
                    continue;
                }
            };
            let current = high <= low;
            *self.shared.history[p as usize].write() = Book {
                current,
                heads: HashMap::new(),
            };
            tracing::info!(
                partition = p,
                records = high - low,
                "history: rebuilding from the history topic"
            );
            self.locals.insert(
                p,
                Local {
                    dir: self.dir.clone(),
                    p,
                    writer,
                    heads: HashMap::new(),
                    cycles: Default::default(),
                    dirty: Vec::new(),
                    target: high,
                    next: low,
                },
            );
            let _ = added.add_partition_offset(&self.topic, i32::from(p), Offset::Beginning);
        }
        if added.count() > 0 {
            if let Err(error) = self.consumer.incremental_assign(&added) {
                tracing::warn!(%error, "history: cannot assign partitions");
                for e in added.elements() {
                    self.locals.remove(&(e.partition() as u16));
                }
            }
        }
    }

    /// Reads what arrived, writes it, then lets queries see it.
    fn poll(&mut self) {
        let mut wait = Duration::from_millis(20);
        let mut touched: Vec<u16> = Vec::new();
        for _ in 0..512 {
            let message = match self.consumer.poll(wait) {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(%error, "history: read failed");
                    break;
                }
                None => break,
            };
            wait = Duration::ZERO;
            let p = message.partition() as u16;
            let Some(local) = self.locals.get_mut(&p) else {
                continue;
            };
            local.next = message.offset() + 1;
            let applied = match message.payload().and_then(decode) {
                Some(record) => local.apply(&record),
                None => Err("not a history record of this version".into()),
            };
            if let Err(error) = applied {
                tracing::error!(partition = p, offset = message.offset(), %error, "history: record skipped");
            }
            if !touched.contains(&p) {
                touched.push(p);
            }
        }
        for p in touched {
            let local = self
                .locals
                .get_mut(&p)
                .expect("touched partitions are local");
            if let Err(error) = local.writer.flush() {
                tracing::error!(%error, partition = p, "history: cannot write local files");
            }
            let mut book = self.shared.history[p as usize].write();
            for (key, head) in local.dirty.drain(..) {
                if head == 0 {
                    book.heads.remove(&key);
                } else {
                    book.heads.insert(key, head);
                }
            }
            if !book.current && local.next >= local.target {
                book.current = true;
                tracing::info!(partition = p, "history: rebuilt");
            }
        }
    }

    fn compact(&self) {
        let horizon = crate::pipeline::wall_clock().saturating_sub_ns(self.retention_ns);
        for p in self.locals.keys() {
            if let Err(error) = crate::history::compact(&self.dir, *p, horizon) {
                tracing::warn!(%error, partition = p, "history: compaction failed");
            }
        }
    }
}

impl Local {
    fn apply(&mut self, record: &Record<'_>) -> Result<(), String> {
        if record.part == 0 {
            // The same inputs again: what was materialised from them on
            // was never committed. Undo it, newest first.
            if let Some(at) = self.cycles.iter().position(|c| c.from == record.from) {
                let undone: Vec<Cycle> = self.cycles.drain(at..).collect();
                for cycle in undone.iter().rev() {
                    for (key, head) in cycle.undo.iter().rev() {
                        if *head == 0 {
                            self.heads.remove(key);
                        } else {
                            self.heads.insert(key.clone(), *head);
                        }
                        self.dirty.push((key.clone(), *head));
                    }
                }
                let start = undone[0].start;
                self.writer.flush().map_err(|e| e.to_string())?;
                self.writer =
                    HistoryWriter::open(&self.dir, self.p, start).map_err(|e| e.to_string())?;
                tracing::info!(
                    partition = self.p,
                    cycles = undone.len(),
                    "history: replaced what an owner wrote before it died"
                );
            }
            if self.cycles.len() == CYCLES_KEPT {
                self.cycles.pop_front();
            }
            self.cycles.push_back(Cycle {
                from: record.from,
                start: self.writer.end(),
                undo: Vec::new(),
            });
        }
        let cycle = self
            .cycles
            .back_mut()
            .ok_or("a record continues a cycle never seen")?;
        let mut rest = record.entries;
        while !rest.is_empty() {
            let (sku, location, mut entry, after) =
                next_entry(rest).ok_or("an entry cannot be read")?;
            rest = after;
            let key = level(sku, location);
            let prev = self.heads.get(&key).copied().unwrap_or(0);
            entry.fixed.prev = prev;
            let head = self
                .writer
                .append(&entry.fixed, &entry.event_id)
                .map_err(|e| e.to_string())?;
            cycle.undo.push((key.clone(), prev));
            self.heads.insert(key.clone(), head);
            self.dirty.push((key, head));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockflow_core::{EventType, Numbers, Outcome, Timestamp};

    fn fixed(on_hand: i64) -> Fixed {
        Fixed {
            prev: 0,
            processed: Timestamp(5),
            event_time: Timestamp(4),
            record: 0,
            event_type: EventType::Receipt,
            in_transit: false,
            outcome: Outcome::Applied,
            quantity: 1,
            before: Numbers::default(),
            after: Numbers {
                on_hand,
                ..Numbers::default()
            },
        }
    }

    fn at(c: i64) -> Positions {
        Positions {
            canonical: c,
            repartition: 0,
        }
    }

    fn local(dir: &std::path::Path) -> Local {
        Local {
            dir: dir.to_owned(),
            p: 3,
            writer: HistoryWriter::open(dir, 3, 0).unwrap(),
            heads: HashMap::new(),
            cycles: Default::default(),
            dirty: Vec::new(),
            target: 0,
            next: 0,
        }
    }

    fn feed(local: &mut Local, from: i64, to: i64, ids: &[&str]) {
        let mut records = Records::new(at(from), at(to));
        for (i, id) in ids.iter().enumerate() {
            records.push("S", "L", &fixed(i as i64), id);
        }
        for bytes in records.finish() {
            local.apply(&decode(&bytes).unwrap()).unwrap();
        }
        local.writer.flush().unwrap();
    }

    fn chain(dir: &std::path::Path, local: &Local) -> Vec<String> {
        let reader = crate::history::HistoryReader::open(dir, 3).unwrap();
        let head = local.heads[&level("S", "L")];
        let (entries, _) = reader.walk(head, 100).unwrap();
        entries.into_iter().rev().map(|e| e.event_id).collect()
    }

    #[test]
    fn cycles_chain_a_level_and_a_repeated_start_replaces_the_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = local(dir.path());
        feed(&mut local, 0, 2, &["a", "b"]);
        feed(&mut local, 2, 3, &["c"]);
        // Orphans: written by an owner that died before its changelog record.
        feed(&mut local, 3, 5, &["d", "e"]);
        feed(&mut local, 5, 6, &["f"]);
        assert_eq!(chain(dir.path(), &local), ["a", "b", "c", "d", "e", "f"]);
        // The next owner resumes at 3 and batches differently.
        feed(&mut local, 3, 4, &["d"]);
        feed(&mut local, 4, 6, &["e", "f"]);
        assert_eq!(chain(dir.path(), &local), ["a", "b", "c", "d", "e", "f"]);
        // The undone entries are gone from the files, not just unlinked.
        let reader = crate::history::HistoryReader::open(dir.path(), 3).unwrap();
        let (all, _) = reader.walk(local.heads[&level("S", "L")], 100).unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(
            local.writer.end() as usize,
            all.iter()
                .map(|e| 4 + 8 * 4 + 3 + 8 + 48 + e.event_id.len())
                .sum::<usize>()
        );
    }

    #[test]
    fn a_cycle_larger_than_a_record_is_split_and_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = local(dir.path());
        let ids: Vec<String> = (0..ENTRIES_PER_RECORD + 10)
            .map(|i| format!("e{i}"))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut records = Records::new(at(0), at(9));
        for (i, id) in ids.iter().enumerate() {
            records.push("S", "L", &fixed(i as i64), id);
        }
        let records = records.finish();
        assert_eq!(records.len(), 2);
        for bytes in &records {
            local.apply(&decode(bytes).unwrap()).unwrap();
        }
        local.writer.flush().unwrap();
        assert_eq!(chain(dir.path(), &local).len(), 100);
        assert_eq!(local.heads.len(), 1);
        // Replayed whole after a crash: still each entry once.
        for bytes in &records {
            local.apply(&decode(bytes).unwrap()).unwrap();
        }
        local.writer.flush().unwrap();
        let reader = crate::history::HistoryReader::open(dir.path(), 3).unwrap();
        let (all, _) = reader
            .walk(local.heads[&level("S", "L")], usize::MAX)
            .unwrap();
        assert_eq!(all.len(), ids.len());
    }
}
