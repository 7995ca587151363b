//! Level history in Kafka mode: what GET …/history and `?asOf=` read.
//!
//! The owner of a partition writes the history entries of each cycle
//! (every change, with the level before and after) to partition p of the
//! history topic, before the cycle's changelog record. Each instance keeps
//! the history of the partitions it owns in the same local files as the
//! embedded mode ([`stockflow_service::history`]), built by one thread, the
//! materialiser, from that topic: from its beginning when a partition is
//! assigned (queries answer 503 until it has caught up), then as it grows.
//!
//! A record carries the input positions its cycle covered and its
//! writer (a new id each time a processor takes the partition); every
//! cycle writes one, changes or not, so a writer's records form a chain
//! (each starts where the last ended). The materialiser follows one chain:
//! - **Orphans.** Without broker transactions an owner can die after its
//!   history record and before its changelog record; the next owner
//!   applies the same inputs again from the same positions. A record that
//!   starts where a materialised one started replaces it and everything
//!   after it: the files are cut back and each level's cursor restored.
//!   (With transactions the orphan is aborted and never read.)
//! - **Forks.** A group that assigns a partition twice (seen on tansu) or
//!   a zombie has two writers at once, each with its own chain. The
//!   chain of this instance's processor in its current tenure of the
//!   partition wins once it has written; before that, the writer that
//!   last replaced or continued the chain. Records of other chains are
//!   skipped.
//!
//! History thus holds each applied event once, as the changelog does.
//!
//! What a partition's materialiser has built is saved beside its files
//! (`materialised`: the next history-topic offset, the files' end, the
//! levels' cursors and the recent cycles), after fsyncing the files, when
//! the partition leaves this instance, when the instance stops, and every
//! minute. A partition that comes back resumes from there instead of
//! rebuilding from the topic's beginning.
//!
//! ```text
//! record: version u8 (3) | from (canonical, repartition) 2×i64
//!         | to 2×i64 | part u16 | writer u64 | entries…   (little-endian)
//! entry:  the local entry (see stockflow_service::history), prev = 0;
//!         it names its level (sku, location)
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::shared::Shared;
use super::wire::Positions;
use super::KafkaSettings;
use stockflow_service::history::{Entry, Fixed, HistoryWriter, Level};

/// 2: entries carry who sent the event (`by`). 3: the local entry's
/// layout names the level (no separate sku and location before it).
pub(crate) const VERSION: u8 = 3;
const HEADER: usize = 1 + 4 * 8 + 2 + 8;
/// Most entries in one history record: ~150 bytes each, ~280 at the
/// longest ids and token name, keeps a record under Kafka's 1 MB default
/// message size.
pub const ENTRIES_PER_RECORD: usize = 3_000;
/// Cycles remembered per partition to undo: orphans are at most the
/// cycles after the last changelog record, one or two.
const CYCLES_KEPT: usize = 32;
/// How often ownership is compared with what is materialised.
const SYNC_EVERY: Duration = Duration::from_millis(50);
/// How often local history older than the retention is deleted.
const COMPACT_EVERY: Duration = Duration::from_secs(600);
/// How often what is materialised is saved (also on release and stop).
const SAVE_EVERY: Duration = Duration::from_secs(60);
/// The saved state's file, in the partition's history directory.
const SAVED: &str = "materialised";

/// What a partition's materialiser saves to resume from.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    next: i64,
    end: u64,
    heads: HashMap<String, u64>,
    cycles: std::collections::VecDeque<Cycle>,
}

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
    writer: u64,
    part: u16,
    entries: usize,
    buf: Vec<u8>,
    done: Vec<Vec<u8>>,
}

impl Records {
    pub fn new(from: Positions, to: Positions, writer: u64) -> Records {
        let mut records = Records {
            from,
            to,
            writer,
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
        self.buf.extend_from_slice(&self.writer.to_le_bytes());
        self.entries = 0;
    }

    pub fn push(&mut self, sku: &str, location: &str, fixed: &Fixed, event_id: &str, by: &str) {
        fixed.encode(event_id, by, Level { sku, location }, &mut self.buf);
        self.entries += 1;
        if self.entries == ENTRIES_PER_RECORD {
            self.done.push(std::mem::take(&mut self.buf));
            self.part += 1;
            self.start();
        }
    }

    /// The records to send, in order: at least one, so that a writer's
    /// chain has no holes.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        if self.entries > 0 || self.done.is_empty() {
            self.done.push(self.buf);
        }
        self.done
    }
}

/// A history record read back.
struct Record<'a> {
    version: u8,
    from: Positions,
    to: Positions,
    part: u16,
    writer: u64,
    entries: &'a [u8],
}

fn decode(bytes: &[u8]) -> Option<Record<'_>> {
    // Version 2 is still read: a rolling upgrade, and the history an
    // older build wrote, keep their entries.
    if bytes.len() < HEADER || !(2..=VERSION).contains(&bytes[0]) {
        return None;
    }
    let i64_at = |at: usize| i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Some(Record {
        version: bytes[0],
        from: Positions {
            canonical: i64_at(1),
            repartition: i64_at(9),
        },
        to: Positions {
            canonical: i64_at(17),
            repartition: i64_at(25),
        },
        part: u16::from_le_bytes([bytes[33], bytes[34]]),
        writer: u64::from_le_bytes(bytes[35..43].try_into().expect("8 bytes")),
        entries: &bytes[HEADER..],
    })
}

/// The next entry of `bytes` (of a record of `version`) and the rest.
fn next_entry(version: u8, bytes: &[u8]) -> Option<(Entry, &[u8])> {
    if version == 2 {
        // sku_len u16 | sku | location_len u16 | location | entry
        let text = |bytes: &[u8]| -> Option<(String, usize)> {
            let len = u16::from_le_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
            let text = std::str::from_utf8(bytes.get(2..2 + len)?).ok()?;
            Some((text.to_owned(), 2 + len))
        };
        let (sku, a) = text(bytes)?;
        let (location, b) = text(&bytes[a..])?;
        let rest = &bytes[a + b..];
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let entry = Entry::decode_without_level(rest.get(..len)?, &sku, &location)?;
        return Some((entry, &rest[len..]));
    }
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let entry = Entry::decode(bytes.get(..len)?)?;
    Some((entry, &bytes[len..]))
}

/// The entries of a history record, in order (`None`: not a history
/// record this build reads).
pub(crate) fn entries_of(bytes: &[u8]) -> Option<Vec<Entry>> {
    let record = decode(bytes)?;
    let (mut rest, mut entries) = (record.entries, Vec::new());
    while !rest.is_empty() {
        let (entry, after) = next_entry(record.version, rest)?;
        entries.push(entry);
        rest = after;
    }
    Some(entries)
}

/// A cycle materialised: where its entries start in the local files, and
/// the cursors they replaced, to undo it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Cycle {
    from: Positions,
    to: Positions,
    writer: u64,
    /// Parts read so far.
    parts: u16,
    start: u64,
    undo: Vec<(String, u64)>,
}

enum Placement {
    /// Starts the next cycle of the chain.
    Next,
    /// The next part of the last cycle.
    Continue,
    /// Starts where the cycle at this index of `cycles` started.
    Replace(usize),
    /// Another chain's.
    Skip,
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
    /// This instance's processor's writer in its current tenure, whose
    /// chain wins once it has written.
    own: u64,
    own_seen: bool,
    /// Records of other chains skipped.
    skipped: u64,
}

struct Materialiser {
    /// Keep the reader contiguous on tansu (see [`super::Contiguity`] and
    /// [`super::Probe`]): a skipped history record would be a lost entry.
    gaps: super::Contiguity,
    probe: super::Probe,
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
        gaps: super::Contiguity::with_transactions(settings.transactions),
        probe: super::Probe::default(),
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
            let mut saved = Instant::now();
            while !stop.load(Ordering::Acquire) {
                if saved.elapsed() >= SAVE_EVERY {
                    materialiser.save_all();
                    saved = Instant::now();
                }
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
            materialiser.save_all();
        })?)
}

impl Materialiser {
    /// Follows ownership: a newly owned partition is rebuilt from the
    /// topic's beginning, one no longer owned is dropped.
    fn sync(&mut self) {
        let owned: Vec<u16> = self.shared.owned_partitions();
        let mut gone = TopicPartitionList::new();
        let dropped: Vec<u16> = self
            .locals
            .keys()
            .filter(|p| !owned.contains(p))
            .copied()
            .collect();
        for p in dropped {
            if let Some(mut local) = self.locals.remove(&p) {
                local.save_logged();
            }
            self.gaps.reset(i32::from(p));
            self.probe.forget(i32::from(p));
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
            let own = self.shared.writers[p as usize].load(Ordering::Acquire);
            let local = match Local::resume(&self.dir, p, own) {
                Some(local) => {
                    tracing::info!(
                        partition = p,
                        records = high - local.next.max(low),
                        "history: resuming from what was materialised here"
                    );
                    local
                }
                None => {
                    // A saved state would point into files about to be
                    // rewritten: it goes first.
                    let _ = std::fs::remove_file(Local::saved_path(&self.dir, p));
                    let writer = match HistoryWriter::open(&self.dir, p, 0) {
                        Ok(writer) => writer,
                        Err(error) => {
                            tracing::error!(%error, partition = p, "history: cannot open local files");
                            continue;
                        }
                    };
                    tracing::info!(
                        partition = p,
                        records = high - low,
                        "history: rebuilding from the history topic"
                    );
                    Local {
                        dir: self.dir.clone(),
                        p,
                        writer,
                        heads: HashMap::new(),
                        cycles: Default::default(),
                        dirty: Vec::new(),
                        target: high,
                        next: low,
                        own,
                        own_seen: false,
                        skipped: 0,
                    }
                }
            };
            let next = local.next.max(low);
            *self.shared.history[p as usize].write() = Book {
                current: next >= high,
                heads: local.heads.clone(),
            };
            let local = Local {
                target: high,
                next,
                ..local
            };
            self.locals.insert(p, local);
            let _ = added.add_partition_offset(&self.topic, i32::from(p), Offset::Offset(next));
            self.gaps.reset(i32::from(p));
            self.probe.placed(i32::from(p), next);
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

    /// Moves a reader back to `offset` (records were skipped, or nothing
    /// arrives where it was placed).
    fn seek(&mut self, p: i32, offset: i64) {
        match self.consumer.seek(
            &self.topic,
            p,
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            Ok(()) => self.probe.placed(p, offset),
            Err(error) => tracing::warn!(%error, partition = p, "history: cannot seek"),
        }
    }

    /// Reads what arrived, writes it, then lets queries see it.
    fn poll(&mut self) {
        let nexts: HashMap<i32, i64> = self
            .locals
            .iter()
            .map(|(p, l)| (i32::from(*p), l.next))
            .collect();
        self.probe.recheck_idle(|p| nexts.get(&p).copied());
        for (p, offset) in self.probe.due() {
            self.seek(p, offset);
        }
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
            let Some(expected) = self.locals.get(&p).map(|l| l.next) else {
                continue;
            };
            self.probe.heard(i32::from(p));
            let (consumer, topic) = (&self.consumer, &self.topic);
            let log_start = || {
                consumer
                    .fetch_watermarks(topic, i32::from(p), Duration::from_secs(5))
                    .ok()
                    .map(|(low, _)| low)
            };
            match self
                .gaps
                .check(topic, i32::from(p), expected, message.offset(), log_start)
            {
                super::Next::Old => continue,
                super::Next::Seek(offset) => {
                    self.seek(i32::from(p), offset);
                    continue;
                }
                super::Next::Take => {}
            }
            let local = self.locals.get_mut(&p).expect("checked above");
            // Taken again since (without this thread seeing it go): a
            // new tenure, whose writer is the one to follow from now on.
            let own = self.shared.writers[p as usize].load(Ordering::Acquire);
            if own != local.own {
                local.own = own;
                local.own_seen = false;
            }
            local.next = message.offset() + 1;
            let applied = match message.payload().and_then(decode) {
                Some(record) => local.apply(&record).map(|followed| {
                    if !followed {
                        local.skipped += 1;
                        metrics::counter!("stockflow_kafka_history_forks_total").increment(1);
                    }
                }),
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

    fn save_all(&mut self) {
        for local in self.locals.values_mut() {
            local.save_logged();
        }
    }

    fn compact(&self) {
        let horizon = stockflow_service::clock::wall_clock().saturating_sub_ns(self.retention_ns);
        for p in self.locals.keys() {
            if let Err(error) = stockflow_service::history::compact(&self.dir, *p, horizon) {
                tracing::warn!(%error, partition = p, "history: compaction failed");
            }
        }
    }
}

impl Local {
    fn saved_path(dir: &std::path::Path, p: u16) -> PathBuf {
        stockflow_service::history::partition_dir(dir, p).join(SAVED)
    }

    /// What was materialised here before, if it was saved and the files
    /// still hold all of it.
    fn resume(dir: &std::path::Path, p: u16, own: u64) -> Option<Local> {
        let bytes = std::fs::read(Local::saved_path(dir, p)).ok()?;
        let saved: Saved = match postcard::from_bytes(&bytes) {
            Ok(saved) => saved,
            Err(error) => {
                tracing::warn!(%error, partition = p, "history: saved state unreadable; rebuilding");
                return None;
            }
        };
        let writer = HistoryWriter::open(dir, p, saved.end).ok()?;
        if writer.end() != saved.end {
            tracing::warn!(
                partition = p,
                "history: files shorter than saved; rebuilding"
            );
            return None;
        }
        Some(Local {
            dir: dir.to_owned(),
            p,
            writer,
            heads: saved.heads,
            cycles: saved.cycles,
            dirty: Vec::new(),
            target: 0,
            next: saved.next,
            own,
            own_seen: false,
            skipped: 0,
        })
    }

    /// Saves what is materialised: the files made durable first, then the
    /// state that points into them, replaced whole (write, then rename).
    fn save(&mut self) -> std::io::Result<()> {
        let (files, end) = self.writer.checkpoint()?;
        for file in files {
            file.sync_data()?;
        }
        let saved = Saved {
            next: self.next,
            end,
            heads: std::mem::take(&mut self.heads),
            cycles: std::mem::take(&mut self.cycles),
        };
        let bytes = postcard::to_stdvec(&saved).map_err(std::io::Error::other);
        (self.heads, self.cycles) = (saved.heads, saved.cycles);
        let path = Local::saved_path(&self.dir, self.p);
        let partial = path.with_extension("partial");
        std::fs::write(&partial, bytes?)?;
        std::fs::rename(&partial, &path)
    }

    fn save_logged(&mut self) {
        if let Err(error) = self.save() {
            tracing::warn!(%error, partition = self.p, "history: cannot save what is materialised");
        }
    }

    /// Whether `record` belongs to the chain followed, and if so where.
    fn place(&self, record: &Record<'_>) -> Placement {
        let own = record.writer == self.own;
        if self.own_seen && !own {
            return Placement::Skip;
        }
        let last = self.cycles.back();
        if record.part > 0 {
            return match last {
                Some(c)
                    if c.writer == record.writer
                        && c.from == record.from
                        && c.parts == record.part =>
                {
                    Placement::Continue
                }
                _ => Placement::Skip,
            };
        }
        if let Some(at) = self.cycles.iter().position(|c| c.from == record.from) {
            return Placement::Replace(at);
        }
        match last {
            None => Placement::Next,
            Some(c) if c.to == record.from => Placement::Next,
            // A hole in a chain followed (nothing of it should be lost),
            // or this instance's writer starting where nothing ended.
            Some(c) if c.writer == record.writer || own => Placement::Next,
            Some(_) => Placement::Skip,
        }
    }

    /// Materialises `record`; false if it was skipped as another chain's.
    fn apply(&mut self, record: &Record<'_>) -> Result<bool, String> {
        let placement = self.place(record);
        if matches!(placement, Placement::Skip) {
            return Ok(false);
        }
        self.own_seen |= record.writer == self.own;
        if let Placement::Replace(at) = placement {
            // The same inputs again: what was materialised from them on
            // was never committed, or is another chain's. Undo it, newest
            // first.
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
                "history: replaced cycles another writer wrote from the same inputs"
            );
        }
        if record.part == 0 {
            if self.cycles.len() == CYCLES_KEPT {
                self.cycles.pop_front();
            }
            self.cycles.push_back(Cycle {
                from: record.from,
                to: record.to,
                writer: record.writer,
                parts: 0,
                start: self.writer.end(),
                undo: Vec::new(),
            });
        }
        let cycle = self
            .cycles
            .back_mut()
            .ok_or("a record continues a cycle never seen")?;
        cycle.parts += 1;
        let mut rest = record.entries;
        while !rest.is_empty() {
            let (mut entry, after) =
                next_entry(record.version, rest).ok_or("an entry cannot be read")?;
            rest = after;
            let key = level(&entry.sku, &entry.location);
            let prev = self.heads.get(&key).copied().unwrap_or(0);
            entry.fixed.prev = prev;
            let at = Level {
                sku: &entry.sku,
                location: &entry.location,
            };
            let head = self
                .writer
                .append(&entry.fixed, &entry.event_id, &entry.by, at)
                .map_err(|e| e.to_string())?;
            cycle.undo.push((key.clone(), prev));
            self.heads.insert(key.clone(), head);
            self.dirty.push((key, head));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockflow_core::{EventType, Numbers, Outcome, Timestamp};

    const A: u64 = 1;
    const B: u64 = 2;
    const OWN: u64 = 9;

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
            own: OWN,
            own_seen: false,
            skipped: 0,
        }
    }

    fn feed(local: &mut Local, writer: u64, from: i64, to: i64, ids: &[&str]) {
        let mut records = Records::new(at(from), at(to), writer);
        for (i, id) in ids.iter().enumerate() {
            records.push("S", "L", &fixed(i as i64), id, "pos");
        }
        for bytes in records.finish() {
            if !local.apply(&decode(&bytes).unwrap()).unwrap() {
                local.skipped += 1;
            }
        }
        local.writer.flush().unwrap();
    }

    /// The level's entries, oldest first, and their count in the files.
    fn chain(dir: &std::path::Path, local: &Local) -> Vec<String> {
        let reader = stockflow_service::history::HistoryReader::open(dir, 3).unwrap();
        let head = local.heads[&level("S", "L")];
        let (entries, _) = reader.walk(head, usize::MAX).unwrap();
        // An entry: 100 fixed bytes, its eventId, who sent it and its level.
        let bytes: usize = entries
            .iter()
            .map(|e| 100 + e.event_id.len() + e.by.len() + e.sku.len() + e.location.len())
            .sum();
        assert_eq!(
            local.writer.end() as usize,
            bytes,
            "files hold only the chain"
        );
        entries.into_iter().rev().map(|e| e.event_id).collect()
    }

    #[test]
    fn cycles_chain_a_level_and_a_repeated_start_replaces_the_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = local(dir.path());
        feed(&mut local, A, 0, 2, &["a", "b"]);
        feed(&mut local, A, 2, 3, &["c"]);
        feed(&mut local, A, 3, 4, &[]);
        // Orphans: written by an owner that died before its changelog record.
        feed(&mut local, A, 4, 6, &["d", "e"]);
        feed(&mut local, A, 6, 7, &["f"]);
        assert_eq!(chain(dir.path(), &local), ["a", "b", "c", "d", "e", "f"]);
        // The next owner resumes at 4 and batches differently.
        feed(&mut local, B, 4, 5, &["d"]);
        feed(&mut local, B, 5, 7, &["e", "f"]);
        feed(&mut local, B, 7, 8, &["g"]);
        assert_eq!(
            chain(dir.path(), &local),
            ["a", "b", "c", "d", "e", "f", "g"]
        );
        assert_eq!(local.skipped, 0);
    }

    #[test]
    fn of_two_writers_at_once_this_instances_chain_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = local(dir.path());
        feed(&mut local, A, 0, 2, &["a", "b"]);
        feed(&mut local, A, 2, 3, &["c"]);
        // This instance's processor restored at 2 while A still writes.
        feed(&mut local, OWN, 2, 4, &["c", "d"]);
        feed(&mut local, A, 3, 4, &["d"]);
        feed(&mut local, A, 4, 5, &["e"]);
        feed(&mut local, OWN, 4, 6, &["e", "f"]);
        // A's records never replace this instance's, even from a shared start.
        feed(&mut local, A, 5, 6, &["f"]);
        feed(&mut local, A, 6, 7, &["g"]);
        feed(&mut local, OWN, 6, 7, &["g"]);
        assert_eq!(
            chain(dir.path(), &local),
            ["a", "b", "c", "d", "e", "f", "g"]
        );
        assert_eq!(local.skipped, 4);
    }

    #[test]
    fn before_this_instance_writes_the_replacing_writer_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = local(dir.path());
        feed(&mut local, A, 0, 2, &["a", "b"]);
        feed(&mut local, A, 2, 4, &["c", "d"]);
        feed(&mut local, B, 2, 3, &["c"]);
        // A's next record continues a chain no longer followed.
        feed(&mut local, A, 4, 5, &["e"]);
        feed(&mut local, B, 3, 5, &["d", "e"]);
        // Then this instance takes over where B's chain ended.
        feed(&mut local, OWN, 5, 6, &["f"]);
        assert_eq!(chain(dir.path(), &local), ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(local.skipped, 1);
    }

    #[test]
    fn an_earlier_tenure_of_this_instance_is_just_another_writer() {
        // This instance owned the partition (writer 7), lost it to B, and
        // has it again (writer OWN): B's records in between are history.
        let dir = tempfile::tempdir().unwrap();
        let mut local = local(dir.path());
        feed(&mut local, 7, 0, 2, &["a", "b"]);
        feed(&mut local, B, 2, 3, &["c"]);
        feed(&mut local, B, 3, 5, &["d", "e"]);
        feed(&mut local, OWN, 5, 6, &["f"]);
        assert_eq!(chain(dir.path(), &local), ["a", "b", "c", "d", "e", "f"]);
        assert_eq!(local.skipped, 0);
    }

    #[test]
    fn a_partition_resumes_from_what_was_saved_and_still_replaces_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = local(dir.path());
        feed(&mut first, A, 0, 2, &["a", "b"]);
        first.next = 7;
        first.save().unwrap();
        // Written after the save (then the instance died): cut on resume.
        feed(&mut first, A, 2, 3, &["c"]);
        drop(first);
        let mut resumed = Local::resume(dir.path(), 3, OWN).expect("saved state");
        assert_eq!(resumed.next, 7);
        assert_eq!(chain(dir.path(), &resumed), ["a", "b"]);
        // The saved cycles still let a repeated start replace an orphan.
        feed(&mut resumed, A, 2, 4, &["c", "d"]);
        feed(&mut resumed, B, 2, 3, &["c"]);
        feed(&mut resumed, B, 3, 4, &["d"]);
        assert_eq!(chain(dir.path(), &resumed), ["a", "b", "c", "d"]);
        // Files shorter than the state says: no resume, a rebuild.
        resumed.save().unwrap();
        let saved = Local::saved_path(dir.path(), 3);
        let mut state: Saved = postcard::from_bytes(&std::fs::read(&saved).unwrap()).unwrap();
        state.end += 1;
        std::fs::write(&saved, postcard::to_stdvec(&state).unwrap()).unwrap();
        assert!(Local::resume(dir.path(), 3, OWN).is_none());
    }

    #[test]
    fn a_cycle_larger_than_a_record_is_split_and_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut local = local(dir.path());
        let ids: Vec<String> = (0..ENTRIES_PER_RECORD + 10)
            .map(|i| format!("e{i}"))
            .collect();
        let mut records = Records::new(at(0), at(9), A);
        for (i, id) in ids.iter().enumerate() {
            records.push("S", "L", &fixed(i as i64), id, "pos");
        }
        let records = records.finish();
        assert_eq!(records.len(), 2);
        // Read whole, and again whole after a crash: each entry once.
        for _ in 0..2 {
            for bytes in &records {
                assert!(local.apply(&decode(bytes).unwrap()).unwrap());
            }
            local.writer.flush().unwrap();
            assert_eq!(chain(dir.path(), &local), ids);
        }
        // A second part alone (its first never read) is not followed.
        let mut orphan_part = Records::new(at(9), at(12), B);
        for (i, id) in ids.iter().enumerate() {
            orphan_part.push("S", "L", &fixed(i as i64), id, "pos");
        }
        let parts = orphan_part.finish();
        assert!(!local.apply(&decode(&parts[1]).unwrap()).unwrap());
        assert_eq!(chain(dir.path(), &local), ids);
    }
}
