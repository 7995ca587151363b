//! Per-level history: every event applied to a level (rejected reservations,
//! absorbed and stale events included), with the level before and after,
//! for GET …/history and `?asOf=`.
//!
//! History is derived data: the log holds everything it is made of. It
//! lives in per-partition append-only files, written by the partition's
//! applier (buffered, flushed once per group, never fsynced on the write
//! path), and each entry points back to the previous entry of its level, so
//! a level's history is a chain read newest first and the engine keeps only
//! one cursor per level (in the partition, snapshotted with it).
//!
//! ```text
//! DATA_DIR/history/PPPP/{first_offset:020}.hist
//! entry: len u32 | prev u64 | processed i64 | event_time i64 | record u64
//!        | event_type u8 | in_transit u8 | outcome u8 | quantity i64
//!        | before (onHand, reserved, inTransit) 3×i64 | after 3×i64
//!        | by_len u8 | sku_len u16 | location_len u16
//!        | eventId bytes | by bytes | sku bytes | location bytes  (little-endian)
//! ```
//! `by` is the token name that sent the event (empty: anonymous); sku and
//! location name the level, so that the files can be read in order by a
//! sink as well as back along a level's chain.
//! ```text
//! ```
//! Cursors are `offset + 1` (0 = none). A checkpoint fsyncs the files and
//! records the end offset; restart truncates history to it and the log
//! replay writes the rest again, so history never holds an entry twice.
//! Segments older than the retention are deleted whole; an entry keeps the
//! level *before* it, so as-of answers stay exact up to the retention.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stockflow_core::{Batch, Change, EventType, Numbers, Outcome, Partition, Rejection, Timestamp};

/// A history segment is closed past this size.
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// The version of the files' layout (a data directory's format and Kafka
/// mode's local files follow it).
pub const FILE_FORMAT: u32 = 2;
const FIXED: usize = 4 + 8 + 8 + 8 + 8 + 1 + 1 + 1 + 8 + 24 + 24 + 1 + 2 + 2;
/// The longest entry a reader accepts: three ids of at most
/// `ID_CHARS_MAX` characters (4 bytes each at most) and a sender.
const ENTRY_BYTES_MAX: usize =
    FIXED + 3 * 4 * stockflow_core::limits::ID_CHARS_MAX + stockflow_core::limits::BY_BYTES_MAX;
/// Bytes buffered before a write; groups also flush.
const BUFFER_BYTES: usize = 256 << 10;
/// Written bytes after which writeback is started in the background, so a
/// checkpoint's fsync finds little to do and never floods the disk that
/// the log's fdatasync waits on (RocksDB calls this `bytes_per_sync`).
const WRITEBACK_BYTES: u64 = 128 << 10;

pub fn partition_dir(data_dir: &Path, partition: u16) -> PathBuf {
    data_dir.join("history").join(format!("{partition:04}"))
}

/// Segments of a partition as (first offset, path), oldest first.
fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let path = entry?.path();
                let start = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u64>().ok());
                if let (Some(start), true) = (start, path.extension().is_some_and(|e| e == "hist"))
                {
                    found.push((start, path));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    found.sort();
    Ok(found)
}

/// Appends one partition's history. Owned by that partition's applier.
pub struct HistoryWriter {
    dir: PathBuf,
    segment_bytes_max: u64,
    file: BufWriter<File>,
    current: Arc<File>,
    segment_start: u64,
    end: u64,
    /// Files written since the last checkpoint, to fsync before it lands.
    unsynced: Vec<Arc<File>>,
    /// Offset up to which writeback was started.
    written_back: u64,
    buf: Vec<u8>,
}

impl HistoryWriter {
    /// Opens a partition's history for appending at `end`, cutting off
    /// anything after it (written after the checkpoint that said `end`;
    /// the log replay writes it again).
    pub fn open(data_dir: &Path, partition: u16, end: u64) -> std::io::Result<HistoryWriter> {
        HistoryWriter::open_with(data_dir, partition, end, SEGMENT_BYTES_MAX)
    }

    /// [`HistoryWriter::open`] with a segment size (tests use small ones).
    pub fn open_with(
        data_dir: &Path,
        partition: u16,
        end: u64,
        segment_bytes_max: u64,
    ) -> std::io::Result<HistoryWriter> {
        let dir = partition_dir(data_dir, partition);
        fs::create_dir_all(&dir)?;
        let mut end = end;
        let mut last: Option<(u64, PathBuf)> = None;
        for (start, path) in segments(&dir)? {
            if start >= end && !(start == 0 && end == 0) {
                fs::remove_file(&path)?;
            } else {
                last = Some((start, path));
            }
        }
        let (segment_start, path) = match last {
            Some((start, path)) => {
                let file = fs::OpenOptions::new().write(true).open(&path)?;
                let length = file.metadata()?.len();
                // Shorter than the checkpoint said (history files lost):
                // carry on from what is there.
                end = end.min(start + length);
                file.set_len(end - start)?;
                (start, path)
            }
            None => {
                end = 0;
                (0, dir.join(format!("{:020}.hist", 0)))
            }
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let current = Arc::new(file.try_clone()?);
        Ok(HistoryWriter {
            dir,
            segment_bytes_max,
            file: BufWriter::with_capacity(BUFFER_BYTES, file),
            current: current.clone(),
            segment_start,
            end,
            unsynced: vec![current],
            written_back: end,
            buf: Vec::with_capacity(FIXED + 128),
        })
    }

    /// Where the next entry goes.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Appends what `changes` did to `partition`'s levels (events from
    /// `batch`, group `record` at server time `now`) and moves each level's
    /// cursor.
    pub fn record(
        &mut self,
        partition: &mut Partition,
        batch: &Batch,
        changes: &[Change],
        now: Timestamp,
        record: u64,
    ) -> std::io::Result<()> {
        for change in changes {
            let prev = partition.history_head(change.slot);
            let fixed = Fixed::of(change, batch, now, record, prev);
            let at = change.position as usize;
            let (sku, location) = partition.names_of(change.slot);
            let level = Level { sku, location };
            let head = self.append(&fixed, batch.event_id(at), batch.by(at), level)?;
            partition.set_history_head(change.slot, head);
        }
        Ok(())
    }

    /// Appends one entry of `level` (its `prev` as given); returns its
    /// cursor.
    pub fn append(
        &mut self,
        fixed: &Fixed,
        event_id: &str,
        by: &str,
        level: Level<'_>,
    ) -> std::io::Result<u64> {
        if self.end - self.segment_start >= self.segment_bytes_max {
            self.roll()?;
        }
        self.buf.clear();
        fixed.encode(event_id, by, level, &mut self.buf);
        self.file.write_all(&self.buf)?;
        let head = self.end + 1;
        self.end += self.buf.len() as u64;
        Ok(head)
    }

    fn roll(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let path = self.dir.join(format!("{:020}.hist", self.end));
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        self.current = Arc::new(file.try_clone()?);
        self.unsynced.push(self.current.clone());
        self.file = BufWriter::with_capacity(BUFFER_BYTES, file);
        self.segment_start = self.end;
        Ok(())
    }

    /// Makes everything appended visible to readers (not durable), and
    /// starts writeback every [`WRITEBACK_BYTES`].
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.end - self.written_back >= WRITEBACK_BYTES {
            let from = self.written_back.max(self.segment_start);
            stockflow_log::start_writeback(
                &self.current,
                from - self.segment_start,
                self.end - from,
            );
            self.written_back = self.end;
        }
        Ok(())
    }

    /// Flushes and hands over the files to fsync before a checkpoint that
    /// covers them lands; returns them and the end offset.
    pub fn checkpoint(&mut self) -> std::io::Result<(Vec<Arc<File>>, u64)> {
        self.flush()?;
        let files = std::mem::replace(&mut self.unsynced, vec![self.current.clone()]);
        Ok((files, self.end))
    }
}

/// Deletes a partition's segments whose every entry is older than
/// `horizon` (never the newest segment).
pub fn compact(data_dir: &Path, partition: u16, horizon: Timestamp) -> std::io::Result<usize> {
    let dir = partition_dir(data_dir, partition);
    let all = segments(&dir)?;
    let mut deleted = 0;
    for pair in all.windows(2) {
        let (_, path) = &pair[0];
        let (next_start, next_path) = &pair[1];
        // A segment ends where the next begins; the next one's first entry
        // is newer than everything in this one.
        let first_of_next = read_at(next_path, *next_start, *next_start)?;
        match first_of_next {
            Some(entry) if entry.processed < horizon => {
                stockflow_log::remove_gently(path).map_err(std::io::Error::other)?;
                deleted += 1;
            }
            _ => break,
        }
    }
    Ok(deleted)
}

/// The level an entry belongs to.
#[derive(Clone, Copy, Debug)]
pub struct Level<'a> {
    pub sku: &'a str,
    pub location: &'a str,
}

/// One history entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub fixed: Fixed,
    pub event_id: String,
    /// Who sent the event: a token name, or `anonymous`.
    pub by: String,
    pub sku: String,
    pub location: String,
}

impl std::ops::Deref for Entry {
    type Target = Fixed;
    fn deref(&self) -> &Fixed {
        &self.fixed
    }
}

/// The fixed-size part of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fixed {
    /// Cursor of the level's previous entry (0 = none).
    pub prev: u64,
    pub processed: Timestamp,
    pub event_time: Timestamp,
    pub record: u64,
    pub event_type: EventType,
    pub in_transit: bool,
    pub outcome: Outcome,
    pub quantity: i64,
    pub before: Numbers,
    pub after: Numbers,
}

const OUTCOMES: [Outcome; 8] = [
    Outcome::Applied,
    Outcome::Absorbed,
    Outcome::StaleCount,
    Outcome::Rejected(Rejection::InsufficientStock),
    Outcome::Rejected(Rejection::CountBeyondHistory),
    Outcome::Rejected(Rejection::QuantityOverflow),
    Outcome::Rejected(Rejection::NoHold),
    Outcome::Rejected(Rejection::TooManyHolds),
];

impl Fixed {
    /// The entry of `change`, made by an event of `batch` applied at `now`
    /// (in log record `record`), after the level's entry `prev`.
    pub fn of(change: &Change, batch: &Batch, now: Timestamp, record: u64, prev: u64) -> Fixed {
        let event = batch.rec(change.position as usize);
        Fixed {
            prev,
            processed: now,
            event_time: event.timestamp.unwrap_or(now),
            record,
            event_type: event.event_type,
            in_transit: change.in_transit,
            outcome: change.outcome,
            quantity: event.quantity,
            before: change.before,
            after: change.after,
        }
    }

    /// Appends the entry's bytes (length first) to `out`. `by` is cut to
    /// [`BY_BYTES_MAX`] (token names are never longer).
    ///
    /// [`BY_BYTES_MAX`]: stockflow_core::limits::BY_BYTES_MAX
    pub fn encode(&self, event_id: &str, by: &str, level: Level<'_>, out: &mut Vec<u8>) {
        let by = match by {
            stockflow_core::ANONYMOUS => "",
            by => cut(by, stockflow_core::limits::BY_BYTES_MAX),
        };
        let len =
            (FIXED + event_id.len() + by.len() + level.sku.len() + level.location.len()) as u32;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&self.prev.to_le_bytes());
        out.extend_from_slice(&self.processed.0.to_le_bytes());
        out.extend_from_slice(&self.event_time.0.to_le_bytes());
        out.extend_from_slice(&self.record.to_le_bytes());
        let kind = EventType::ALL
            .iter()
            .position(|t| *t == self.event_type)
            .unwrap_or(0);
        let outcome = OUTCOMES
            .iter()
            .position(|o| *o == self.outcome)
            .unwrap_or(0);
        out.extend_from_slice(&[kind as u8, u8::from(self.in_transit), outcome as u8]);
        out.extend_from_slice(&self.quantity.to_le_bytes());
        for n in [self.before, self.after] {
            for v in [n.on_hand, n.reserved, n.in_transit] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.push(by.len() as u8);
        out.extend_from_slice(&(level.sku.len() as u16).to_le_bytes());
        out.extend_from_slice(&(level.location.len() as u16).to_le_bytes());
        out.extend_from_slice(event_id.as_bytes());
        out.extend_from_slice(by.as_bytes());
        out.extend_from_slice(level.sku.as_bytes());
        out.extend_from_slice(level.location.as_bytes());
    }
}

impl Entry {
    /// The entry whose bytes (length first) are all of `bytes`.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let i64_at = |at: usize| i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if bytes.len() < FIXED {
            return None;
        }
        let numbers = |at: usize| Numbers {
            on_hand: i64_at(at),
            reserved: i64_at(at + 8),
            in_transit: i64_at(at + 16),
        };
        let fixed = Fixed {
            prev: u64_at(4),
            processed: Timestamp(i64_at(12)),
            event_time: Timestamp(i64_at(20)),
            record: u64_at(28),
            event_type: *EventType::ALL.get(bytes[36] as usize)?,
            in_transit: bytes[37] == 1,
            outcome: *OUTCOMES.get(bytes[38] as usize)?,
            quantity: i64_at(39),
            before: numbers(47),
            after: numbers(71),
        };
        let by_len = bytes[FIXED - 5] as usize;
        let sku_len = u16::from_le_bytes([bytes[FIXED - 4], bytes[FIXED - 3]]) as usize;
        let location_len = u16::from_le_bytes([bytes[FIXED - 2], bytes[FIXED - 1]]) as usize;
        let location_at = bytes.len().checked_sub(location_len)?;
        let sku_at = location_at.checked_sub(sku_len)?;
        let by_at = sku_at.checked_sub(by_len).filter(|at| *at >= FIXED)?;
        let text = |range: std::ops::Range<usize>| String::from_utf8(bytes[range].to_vec()).ok();
        let by = text(by_at..sku_at)?;
        Some(Entry {
            fixed,
            event_id: text(FIXED..by_at)?,
            by: match by.as_str() {
                "" => stockflow_core::ANONYMOUS.to_owned(),
                _ => by,
            },
            sku: text(sku_at..location_at)?,
            location: text(location_at..bytes.len())?,
        })
    }
}

impl Entry {
    /// An entry of the layout before entries named their level (history
    /// file format 1, Kafka history records of version 2), whose level
    /// the record gave beside it.
    pub fn decode_without_level(bytes: &[u8], sku: &str, location: &str) -> Option<Entry> {
        const FIXED_BEFORE: usize = FIXED - 4;
        if bytes.len() < FIXED_BEFORE {
            return None;
        }
        // The same fixed part but for the level's lengths: decode it as
        // a current entry with an empty level.
        let by_len = bytes[FIXED_BEFORE - 1];
        let mut current = Vec::with_capacity(bytes.len() + 4);
        current.extend_from_slice(&((bytes.len() + 4) as u32).to_le_bytes());
        current.extend_from_slice(&bytes[4..FIXED_BEFORE - 1]);
        current.push(by_len);
        current.extend_from_slice(&[0, 0, 0, 0]);
        current.extend_from_slice(&bytes[FIXED_BEFORE..]);
        let mut entry = Entry::decode(&current)?;
        entry.sku = sku.to_owned();
        entry.location = location.to_owned();
        Some(entry)
    }
}

/// The longest prefix of `text` of at most `max` bytes, on a character
/// boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn read_at(path: &Path, segment_start: u64, offset: u64) -> std::io::Result<Option<Entry>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let at = offset - segment_start;
    let mut len = [0u8; 4];
    if file.read_exact_at(&mut len, at).is_err() {
        return Ok(None);
    }
    let len = u32::from_le_bytes(len) as usize;
    if !(FIXED..=ENTRY_BYTES_MAX).contains(&len) {
        return Ok(None);
    }
    let mut bytes = vec![0u8; len];
    if file.read_exact_at(&mut bytes, at).is_err() {
        return Ok(None);
    }
    Ok(Entry::decode(&bytes))
}

/// Entries of one partition read in the order they were written (what a
/// sink reads), from an offset on.
#[derive(Debug, Default)]
pub struct Scan {
    /// Each entry with its offset.
    pub entries: Vec<(u64, Entry)>,
    /// Where the next scan starts.
    pub next: u64,
    /// Offsets asked for that the retention deleted: (from, to).
    pub deleted: Option<(u64, u64)>,
}

/// The entries of `partition` from offset `from` on, as many as whole
/// entries fit in `bytes_max` (at least one if any is there). An entry
/// still being written (its bytes not all flushed) ends the scan: it is
/// read by the next one.
pub fn scan(data_dir: &Path, partition: u16, from: u64, bytes_max: usize) -> std::io::Result<Scan> {
    let all = segments(&partition_dir(data_dir, partition))?;
    let mut scan = Scan {
        next: from,
        ..Scan::default()
    };
    let Some(first) = all.first().map(|(start, _)| *start) else {
        return Ok(scan);
    };
    if scan.next < first {
        scan.deleted = Some((scan.next, first));
        scan.next = first;
    }
    let mut index = all.partition_point(|(start, _)| *start <= scan.next) - 1;
    let mut budget = bytes_max;
    loop {
        let (start, path) = &all[index];
        let file = File::open(path)?;
        let length = file.metadata()?.len();
        let at = scan.next - start;
        let wanted = (length.saturating_sub(at) as usize).min(budget.max(ENTRY_BYTES_MAX));
        let mut bytes = vec![0u8; wanted];
        let read = file.read_at(&mut bytes, at)?;
        bytes.truncate(read);
        let mut used = 0;
        while bytes.len() - used >= 4 {
            let len =
                u32::from_le_bytes(bytes[used..used + 4].try_into().expect("4 bytes")) as usize;
            // A length is written whole before its entry: one out of
            // range is damage, never an entry still being written.
            if !(FIXED..=ENTRY_BYTES_MAX).contains(&len) {
                return Err(std::io::Error::other(format!(
                    "history of partition {partition} is damaged at offset {}: an entry of {len} bytes",
                    scan.next + used as u64
                )));
            }
            if bytes.len() - used < len {
                break;
            }
            let entry = Entry::decode(&bytes[used..used + len]).ok_or_else(|| {
                std::io::Error::other(format!(
                    "history entry at {} of partition {partition} cannot be read",
                    scan.next + used as u64
                ))
            })?;
            scan.entries.push((scan.next + used as u64, entry));
            used += len;
        }
        scan.next += used as u64;
        budget = budget.saturating_sub(used);
        // A segment read to its end goes on in the next one (which starts
        // where it ends: a segment being deleted, seen shorter, does not).
        let next_segment = all.get(index + 1).map(|(start, _)| *start);
        match next_segment {
            Some(next) if scan.next == next && budget > 0 => {
                scan.next = next;
                index += 1;
            }
            _ => return Ok(scan),
        }
    }
}

/// Where `partition`'s history ends on disk now (what a scan could reach).
pub fn end_of(data_dir: &Path, partition: u16) -> std::io::Result<u64> {
    let all = segments(&partition_dir(data_dir, partition))?;
    match all.last() {
        Some((start, path)) => Ok(start + fs::metadata(path)?.len()),
        None => Ok(0),
    }
}

/// Why a walk back through a level's history stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainEnd {
    /// The level's first entry was reached.
    Start,
    /// Older entries were deleted by the retention.
    Compacted,
}

/// Reads levels' histories of one partition.
pub struct HistoryReader {
    segments: Vec<(u64, PathBuf)>,
}

impl HistoryReader {
    pub fn open(data_dir: &Path, partition: u16) -> std::io::Result<HistoryReader> {
        Ok(HistoryReader {
            segments: segments(&partition_dir(data_dir, partition))?,
        })
    }

    /// The entry at cursor `head`, or `None` if it was compacted away.
    pub fn get(&self, head: u64) -> std::io::Result<Option<Entry>> {
        let offset = head - 1;
        let index = self.segments.partition_point(|(start, _)| *start <= offset);
        let Some((start, path)) = index.checked_sub(1).map(|i| &self.segments[i]) else {
            return Ok(None);
        };
        read_at(path, *start, offset)
    }

    /// Up to `limit` entries from cursor `head` back, newest first, and
    /// the cursor to continue from (or why there is no more).
    pub fn walk(
        &self,
        head: u64,
        limit: usize,
    ) -> std::io::Result<(Vec<Entry>, Result<u64, ChainEnd>)> {
        let mut entries = Vec::new();
        let mut next = head;
        while next != 0 && entries.len() < limit {
            match self.get(next)? {
                Some(entry) => {
                    next = entry.prev;
                    entries.push(entry);
                }
                None => return Ok((entries, Err(ChainEnd::Compacted))),
            }
        }
        Ok((
            entries,
            if next == 0 {
                Err(ChainEnd::Start)
            } else {
                Ok(next)
            },
        ))
    }

    /// The level as processing had left it at `at`: the numbers, and the
    /// entry that made them (None when only the `before` of an older-kept
    /// entry tells them). `Ok(None)`: the level did not exist yet.
    pub fn as_of(
        &self,
        head: u64,
        at: Timestamp,
    ) -> std::io::Result<Option<(Numbers, Option<Entry>)>> {
        let mut next = head;
        let mut oldest_after: Option<Entry> = None;
        while next != 0 {
            match self.get(next)? {
                Some(entry) if entry.processed <= at => {
                    return Ok(Some((entry.after, Some(entry))))
                }
                Some(entry) => {
                    next = entry.prev;
                    oldest_after = Some(entry);
                }
                // Compacted: the oldest kept entry's `before` is the level
                // as it was at `at`.
                None => return Ok(oldest_after.map(|e| (e.before, None))),
            }
        }
        Ok(None)
    }
}

/// The wire name of an outcome in history answers.
pub fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Applied => "applied",
        Outcome::Absorbed => "absorbed",
        Outcome::StaleCount => "stale_count",
        Outcome::Rejected(why) => why.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000_000;

    /// One entry per second for one level: onHand goes 1, 2, 3, …
    fn write(writer: &mut HistoryWriter, seconds: std::ops::Range<i64>, mut head: u64) -> u64 {
        for t in seconds {
            let fixed = Fixed {
                prev: head,
                processed: Timestamp(t * SECOND),
                event_time: Timestamp(t * SECOND),
                record: t as u64,
                event_type: EventType::Receipt,
                in_transit: false,
                outcome: Outcome::Applied,
                quantity: 1,
                before: Numbers {
                    on_hand: t,
                    ..Numbers::default()
                },
                after: Numbers {
                    on_hand: t + 1,
                    ..Numbers::default()
                },
            };
            let level = Level {
                sku: "A",
                location: "S1",
            };
            head = writer
                .append(&fixed, &format!("e{t}"), "pos", level)
                .unwrap();
        }
        writer.flush().unwrap();
        head
    }

    #[test]
    fn chains_cross_segments_and_compaction_keeps_as_of_exact_within_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = HistoryWriter::open_with(dir.path(), 3, 0, 1000).unwrap();
        let head = write(&mut writer, 0..100, 0);
        let reader = HistoryReader::open(dir.path(), 3).unwrap();
        assert!(reader.segments.len() > 5, "small segments roll");
        let (all, end) = reader.walk(head, 1000).unwrap();
        assert_eq!(all.len(), 100);
        assert_eq!(end, Err(ChainEnd::Start));
        assert_eq!(all[0].event_id, "e99");
        assert_eq!(all[99].after.on_hand, 1);

        let deleted = compact(dir.path(), 3, Timestamp(50 * SECOND)).unwrap();
        assert!(deleted > 0);
        let reader = HistoryReader::open(dir.path(), 3).unwrap();
        let (kept, end) = reader.walk(head, 1000).unwrap();
        assert_eq!(end, Err(ChainEnd::Compacted));
        assert!(kept.len() < 100 && kept.last().unwrap().processed <= Timestamp(50 * SECOND));
        // Every instant from the horizon on is answered exactly.
        for t in 50..100 {
            let at = Timestamp(t * SECOND + SECOND / 2);
            let (numbers, _) = reader.as_of(head, at).unwrap().unwrap();
            assert_eq!(numbers.on_hand, t + 1, "as of {t}.5 s");
        }
    }

    #[test]
    fn a_scan_reads_every_entry_once_in_order_across_segments_and_stops_at_a_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = HistoryWriter::open_with(dir.path(), 1, 0, 1000).unwrap();
        write(&mut writer, 0..100, 0);
        // Budgets smaller than a segment, and than an entry.
        for budget in [1, 150, 700, 5000] {
            let (mut seen, mut from) = (Vec::new(), 0);
            loop {
                let scan = scan(dir.path(), 1, from, budget).unwrap();
                assert!(scan.deleted.is_none());
                if scan.entries.is_empty() {
                    break;
                }
                seen.extend(scan.entries.into_iter().map(|(_, e)| e));
                from = scan.next;
            }
            let ids: Vec<String> = seen.iter().map(|e| e.event_id.clone()).collect();
            let want: Vec<String> = (0..100).map(|t| format!("e{t}")).collect();
            assert_eq!(ids, want, "budget {budget}");
            assert!(seen.iter().all(
                |e| (e.sku.as_str(), e.location.as_str(), e.by.as_str()) == ("A", "S1", "pos")
            ));
            assert_eq!(from, end_of(dir.path(), 1).unwrap());
        }
        // Half an entry written: the scan stops before it, and reads it
        // once it is whole.
        let end = end_of(dir.path(), 1).unwrap();
        let mut bytes = Vec::new();
        let level = Level {
            sku: "B",
            location: "S2",
        };
        let fixed = scan(dir.path(), 1, 0, 1).unwrap().entries[0].1.fixed;
        fixed.encode("torn", "", level, &mut bytes);
        let (last, _) = segments(&partition_dir(dir.path(), 1))
            .unwrap()
            .pop()
            .unwrap();
        let path = partition_dir(dir.path(), 1).join(format!("{last:020}.hist"));
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&bytes[..bytes.len() / 2]).unwrap();
        let torn = scan(dir.path(), 1, end, 1 << 20).unwrap();
        assert!(torn.entries.is_empty());
        assert_eq!(torn.next, end);
        file.write_all(&bytes[bytes.len() / 2..]).unwrap();
        let whole = scan(dir.path(), 1, end, 1 << 20).unwrap();
        assert_eq!(whole.entries.len(), 1);
        assert_eq!(
            (
                whole.entries[0].1.event_id.as_str(),
                whole.entries[0].1.sku.as_str()
            ),
            ("torn", "B")
        );
        // Compacted away: the scan says what it skipped.
        compact(dir.path(), 1, Timestamp(50 * SECOND)).unwrap();
        let after = scan(dir.path(), 1, 0, 1 << 20).unwrap();
        let (from, to) = after.deleted.unwrap();
        assert_eq!(from, 0);
        assert_eq!(after.entries[0].0, to);
    }

    #[test]
    fn an_entry_of_the_layout_before_levels_reads_with_the_level_given() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = HistoryWriter::open(dir.path(), 0, 0).unwrap();
        write(&mut writer, 0..1, 0);
        let now = scan(dir.path(), 0, 0, 1 << 20).unwrap().entries.remove(0).1;
        // The same entry as format 1 wrote it: no level lengths, no level.
        let mut current = Vec::new();
        let nowhere = Level {
            sku: "",
            location: "",
        };
        now.fixed
            .encode(&now.event_id, &now.by, nowhere, &mut current);
        let mut before = Vec::new();
        before.extend_from_slice(&((current.len() - 4) as u32).to_le_bytes());
        before.extend_from_slice(&current[4..FIXED - 4]);
        before.extend_from_slice(&current[FIXED..]);
        let read = Entry::decode_without_level(&before, "A", "S1").unwrap();
        assert_eq!(read, now);
    }

    #[test]
    fn reopening_cuts_what_the_checkpoint_did_not_cover() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = HistoryWriter::open_with(dir.path(), 0, 0, 1000).unwrap();
        let head = write(&mut writer, 0..30, 0);
        let (_, end) = writer.checkpoint().unwrap();
        write(&mut writer, 30..60, head);
        drop(writer);
        let mut writer = HistoryWriter::open_with(dir.path(), 0, end, 1000).unwrap();
        assert_eq!(writer.end(), end);
        let head = write(&mut writer, 30..40, head);
        let reader = HistoryReader::open(dir.path(), 0).unwrap();
        let (all, _) = reader.walk(head, 1000).unwrap();
        let ids: Vec<i64> = all.iter().map(|e| e.processed.0 / SECOND).collect();
        assert_eq!(
            ids,
            (0..40).rev().collect::<Vec<_>>(),
            "no entry twice, none lost"
        );
    }
}
