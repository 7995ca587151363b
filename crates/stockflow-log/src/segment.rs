//! Segment files: appending, opening with torn-tail repair, reading,
//! and telling a torn tail from damage.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::mark::Mark;
use crate::{sync_dir, IoContext, LogError, Result};

/// Segments of format 1: frames `len | crc`, read but no longer written.
const MAGIC_V1: &[u8; 8] = b"SFLOG\0\0\x01";
/// Segments of format 2: frames `len | crc | record number`.
const MAGIC: &[u8; 8] = b"SFLOG\0\0\x02";
/// Largest record: a group commit is bounded far below this by the shell's
/// batch limits; a larger length in a frame header can only be garbage.
pub const RECORD_BYTES_MAX: usize = 1 << 30;
/// How far past a bad frame a whole frame is looked for, in record numbers
/// (a torn tail is one interrupted write; more than this many records
/// after a bad one cannot be a tail).
const RESYNC_RECORDS: u64 = 1 << 20;

/// The frame layout of a segment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    V1,
    V2,
}

impl Format {
    fn of(bytes: &[u8]) -> Option<Format> {
        match bytes.get(..8)? {
            m if m == MAGIC => Some(Format::V2),
            m if m == MAGIC_V1 => Some(Format::V1),
            _ => None,
        }
    }

    fn header(self) -> usize {
        match self {
            Format::V1 => 8,
            Format::V2 => 16,
        }
    }
}

/// Checksum of a frame: covers the length, the record number (format 2)
/// and the payload, so a frame moved to another place does not verify.
fn frame_crc(format: Format, len: u32, record: u64, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&len.to_le_bytes());
    let crc = match format {
        Format::V1 => crc,
        Format::V2 => crc32c::crc32c_append(crc, &record.to_le_bytes()),
    };
    crc32c::crc32c_append(crc, payload)
}

pub(crate) fn segment_path(dir: &Path, first_record: u64) -> PathBuf {
    dir.join(format!("{first_record:020}.seg"))
}

/// Segment files of `dir` as (first record, path), oldest first.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Why a frame does not decode.
#[derive(Debug, PartialEq, Eq)]
enum Bad {
    /// The file ends inside the frame: what an interrupted write leaves.
    Short(String),
    /// The frame is whole but wrong: checksum, length or number.
    Wrong(String),
}

impl Bad {
    fn what(&self) -> &str {
        match self {
            Bad::Short(what) | Bad::Wrong(what) => what,
        }
    }
}

/// A frame header's fields: (payload length, checksum, the record number
/// it states; format 1 states none, so `record` stands in).
fn header_fields(
    header: &[u8],
    format: Format,
    record: u64,
) -> std::result::Result<(u32, u32, u64), Bad> {
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len as usize > RECORD_BYTES_MAX {
        return Err(Bad::Wrong(format!(
            "frame of record {record} has a length out of range"
        )));
    }
    let number = match format {
        Format::V1 => record,
        Format::V2 => u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")),
    };
    Ok((len, crc, number))
}

/// Checks a whole frame of record `record` against its header's fields.
fn check(
    format: Format,
    (len, crc, number): (u32, u32, u64),
    record: u64,
    payload: &[u8],
) -> std::result::Result<(), Bad> {
    if number != record {
        return Err(Bad::Wrong(format!(
            "frame of record {record} says it is record {number}"
        )));
    }
    if frame_crc(format, len, record, payload) != crc {
        return Err(Bad::Wrong(format!(
            "frame of record {record} fails its checksum"
        )));
    }
    Ok(())
}

/// Decodes the frame of record `record` at the start of `bytes`:
/// (payload, bytes used).
fn frame(bytes: &[u8], format: Format, record: u64) -> std::result::Result<(&[u8], usize), Bad> {
    let header = format.header();
    let Some(header_bytes) = bytes.get(..header) else {
        return Err(Bad::Short(format!(
            "frame header of record {record} is cut short"
        )));
    };
    let fields = header_fields(header_bytes, format, record)?;
    let len = fields.0;
    let end = header + len as usize;
    let Some(payload) = bytes.get(header..end) else {
        return Err(Bad::Short(format!(
            "frame of record {record} ({len} bytes) runs past the end of the file"
        )));
    };
    check(format, fields, record, payload)?;
    Ok((payload, end))
}

/// A segment's frames as far as they are whole.
pub(crate) struct Walk {
    format: Format,
    /// Number of the first record.
    pub first: u64,
    /// Whole frames from the start: (record, offset of its frame).
    pub frames: Vec<u64>,
    /// Offset just after the last whole frame.
    pub valid_end: u64,
    /// Where and why the walk stopped before the end of the file.
    problem: Option<Bad>,
}

impl Walk {
    pub(crate) fn of(bytes: &[u8], first: u64) -> Option<Walk> {
        let format = Format::of(bytes)?;
        let mut offset = MAGIC.len();
        let mut frames = Vec::new();
        let mut problem = None;
        while offset < bytes.len() {
            match frame(&bytes[offset..], format, first + frames.len() as u64) {
                Ok((_, used)) => {
                    frames.push(offset as u64);
                    offset += used;
                }
                Err(bad) => {
                    problem = Some(bad);
                    break;
                }
            }
        }
        Some(Walk {
            format,
            first,
            frames,
            valid_end: offset as u64,
            problem,
        })
    }

    /// Number of the next record after the whole frames.
    pub(crate) fn next_record(&self) -> u64 {
        self.first + self.frames.len() as u64
    }

    /// The whole frames' records: (number, payload).
    pub(crate) fn records<'a>(
        &'a self,
        bytes: &'a [u8],
    ) -> impl Iterator<Item = (u64, &'a [u8])> + 'a {
        self.frames.iter().enumerate().map(move |(i, &offset)| {
            let number = self.first + i as u64;
            let (payload, _) = frame(&bytes[offset as usize..], self.format, number)
                .expect("a frame the walk found whole");
            (number, payload)
        })
    }

    /// Whole frames after the bad one, found by looking at every offset
    /// for a frame numbered after it: (record, offset, payload).
    pub(crate) fn survivors<'a>(&self, bytes: &'a [u8]) -> Vec<(u64, u64, &'a [u8])> {
        let mut found = Vec::new();
        if self.problem.is_none() {
            return found;
        }
        let bad = self.next_record();
        let header = self.format.header();
        let mut offset = self.valid_end as usize + 1;
        while offset + header <= bytes.len() {
            let candidate = match self.format {
                // Format 1 frames carry no number: only the frame right
                // after the bad one's stated length can be checked.
                Format::V1 => None,
                Format::V2 => Some(u64::from_le_bytes(
                    bytes[offset + 8..offset + 16].try_into().expect("8 bytes"),
                )),
            };
            if let Some(number) = candidate.filter(|n| *n > bad && n - bad <= RESYNC_RECORDS) {
                if let Ok((payload, used)) = frame(&bytes[offset..], self.format, number) {
                    found.push((number, offset as u64, payload));
                    offset += used;
                    continue;
                }
            }
            offset += 1;
        }
        if self.format == Format::V1 {
            let at = self.valid_end as usize;
            let len = bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
            if let Some(next) = len.map(|len| at + header + len) {
                if let Some(Ok((payload, _))) = bytes
                    .get(next..)
                    .map(|rest| frame(rest, Format::V1, bad + 1))
                {
                    found.push((bad + 1, next as u64, payload));
                }
            }
        }
        found
    }

    /// The bad frame's payload as its header states it, or as much of it
    /// as the file holds (it may still decode, whole or in part: a flipped
    /// bit or a cut-off end rarely breaks everything).
    pub(crate) fn damaged_payload<'a>(&self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let at = self.valid_end as usize;
        let len = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let start = at + self.format.header();
        bytes.get(start..start.checked_add(len)?.min(bytes.len()))
    }
}

/// How a segment's end looks against what was acknowledged.
pub(crate) enum Verdict {
    /// Every byte is a whole frame.
    Whole,
    /// An interrupted last write, never acknowledged: cut it off.
    Torn(String),
    /// Damage to acknowledged data, or with whole records after it.
    Damaged(String),
}

/// Judges a walked segment. `acknowledged_end` is the offset up to which
/// the durable mark says this segment was synced and acknowledged.
pub(crate) fn judge(walk: &Walk, bytes: &[u8], acknowledged_end: Option<u64>) -> Verdict {
    let acknowledged_end = acknowledged_end.unwrap_or(0);
    let Some(problem) = &walk.problem else {
        if walk.valid_end < acknowledged_end {
            return Verdict::Damaged(format!(
                "the file ends at byte {} but records up to byte {acknowledged_end} were acknowledged; it was cut short",
                walk.valid_end
            ));
        }
        return Verdict::Whole;
    };
    if walk.valid_end < acknowledged_end {
        return Verdict::Damaged(format!(
            "{}, inside data acknowledged up to byte {acknowledged_end}",
            problem.what()
        ));
    }
    if let Some((number, offset, _)) = walk.survivors(bytes).first() {
        return Verdict::Damaged(format!(
            "{}, and record {number} at byte {offset} after it is whole (damage, not an interrupted write)",
            problem.what()
        ));
    }
    Verdict::Torn(problem.what().to_owned())
}

/// Appends records to the newest segment, rolling to a new one past a size.
pub struct LogWriter {
    dir: PathBuf,
    file: Arc<File>,
    /// First record of the current segment.
    segment: u64,
    segment_bytes: u64,
    segment_bytes_max: u64,
    next_record: u64,
    frame_buf: Vec<u8>,
}

/// What opening found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Number of the next record to be written (= records in the log).
    pub next_record: u64,
    /// Bytes of a torn tail cut off, if any.
    pub truncated_bytes: u64,
    /// Why the tail was cut (for the log line that reports it).
    pub tail_problem: Option<String>,
}

/// Where an appended record went.
#[derive(Clone)]
pub struct Appended {
    pub record: u64,
    /// The segment it was written to; `sync_data` on it makes it durable.
    pub file: Arc<File>,
    /// First record of that segment.
    pub segment: u64,
    /// Offset just after the record's frame in that segment.
    pub end: u64,
}

impl LogWriter {
    /// Opens (creating if needed) the log in `dir`, cutting off a torn tail.
    ///
    /// A bad frame is a torn tail only if it lies past what the durable
    /// mark says was acknowledged and no whole frame follows it; anything
    /// else is [`LogError::Corrupt`], and nothing is cut.
    pub fn open(dir: &Path, segment_bytes_max: u64) -> Result<(LogWriter, Opened)> {
        fs::create_dir_all(dir).at(dir)?;
        let mark = Mark::read(dir)?;
        let existing = segments(dir)?;
        let Some((first, path)) = existing.last().cloned() else {
            if let Some(mark) = mark.filter(|m| m.next_record > 0) {
                return Err(LogError::Corrupt {
                    path: segment_path(dir, mark.segment),
                    offset: 0,
                    what: format!(
                        "the log has no segment but records up to {} were acknowledged",
                        mark.next_record
                    ),
                });
            }
            let writer = Self::create_segment(dir, 0, segment_bytes_max)?;
            return Ok((writer, opened(0, 0, None)));
        };
        if let Some(mark) = mark.filter(|m| m.segment > first) {
            return Err(LogError::Corrupt {
                path: segment_path(dir, mark.segment),
                offset: 0,
                what: format!(
                    "this segment is missing but records up to {} were acknowledged in it",
                    mark.next_record
                ),
            });
        }
        let bytes = fs::read(&path).at(&path)?;
        let Some(walk) = Walk::of(&bytes, first) else {
            // A segment whose header never reached the disk holds nothing.
            let acknowledged = mark.is_some_and(|m| m.segment == first);
            if !acknowledged && bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
                fs::remove_file(&path).at(&path)?;
                return Self::open(dir, segment_bytes_max);
            }
            return Err(LogError::Corrupt {
                path,
                offset: 0,
                what: "not a stockflow log segment".into(),
            });
        };
        let acknowledged_end = mark.filter(|m| m.segment == first).map(|m| m.end);
        let tail_problem = match judge(&walk, &bytes, acknowledged_end) {
            Verdict::Whole => None,
            Verdict::Torn(why) => Some(why),
            Verdict::Damaged(what) => {
                return Err(LogError::Corrupt {
                    path,
                    offset: walk.valid_end,
                    what,
                })
            }
        };
        let truncated_bytes = bytes.len() as u64 - walk.valid_end;
        let file = OpenOptions::new().append(true).open(&path).at(&path)?;
        if truncated_bytes > 0 {
            file.set_len(walk.valid_end).at(&path)?;
            file.sync_all().at(&path)?;
        }
        let next_record = walk.next_record();
        let opened = opened(next_record, truncated_bytes, tail_problem);
        if walk.format == Format::V1 {
            // Old segments are read as they are; new records go to a
            // segment of the current format.
            let writer = Self::create_segment(dir, next_record, segment_bytes_max)?;
            return Ok((writer, opened));
        }
        let writer = LogWriter {
            dir: dir.to_owned(),
            file: Arc::new(file),
            segment: first,
            segment_bytes: walk.valid_end,
            segment_bytes_max,
            next_record,
            frame_buf: Vec::new(),
        };
        Ok((writer, opened))
    }

    fn create_segment(dir: &Path, first_record: u64, segment_bytes_max: u64) -> Result<LogWriter> {
        let path = segment_path(dir, first_record);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .at(&path)?;
        file.write_all(MAGIC).at(&path)?;
        file.sync_all().at(&path)?;
        sync_dir(dir)?;
        Ok(LogWriter {
            dir: dir.to_owned(),
            file: Arc::new(file),
            segment: first_record,
            segment_bytes: MAGIC.len() as u64,
            segment_bytes_max,
            next_record: first_record,
            frame_buf: Vec::new(),
        })
    }

    /// Starts the log again at record `next_record` in a new, empty segment
    /// (after `repair` moved damaged records aside that a checkpoint still
    /// holds: numbering carries on where the checkpoint ends).
    pub fn start_at(dir: &Path, next_record: u64) -> Result<()> {
        let writer = Self::create_segment(dir, next_record, u64::MAX)?;
        Mark::write_synced(
            dir,
            Mark {
                next_record,
                segment: next_record,
                end: writer.segment_bytes,
            },
        )
    }

    /// Writes one record (not yet durable: see [`Appended::file`]).
    pub fn append(&mut self, payload: &[u8]) -> Result<Appended> {
        if payload.len() > RECORD_BYTES_MAX {
            return Err(LogError::TooLarge {
                len: payload.len(),
                max: RECORD_BYTES_MAX,
            });
        }
        let header = Format::V2.header();
        let frame_len = (header + payload.len()) as u64;
        if self.segment_bytes > MAGIC.len() as u64
            && self.segment_bytes + frame_len > self.segment_bytes_max
        {
            // The old segment's Arc<File> stays with records already handed
            // out, so whoever syncs them still syncs the right file.
            *self = Self::create_segment(&self.dir, self.next_record, self.segment_bytes_max)?;
        }
        let len = payload.len() as u32;
        let record = self.next_record;
        self.frame_buf.clear();
        self.frame_buf.extend_from_slice(&len.to_le_bytes());
        self.frame_buf
            .extend_from_slice(&frame_crc(Format::V2, len, record, payload).to_le_bytes());
        self.frame_buf.extend_from_slice(&record.to_le_bytes());
        self.frame_buf.extend_from_slice(payload);
        let path = segment_path(&self.dir, self.segment);
        (&*self.file).write_all(&self.frame_buf).at(&path)?;
        self.segment_bytes += frame_len;
        self.next_record += 1;
        Ok(Appended {
            record,
            file: self.file.clone(),
            segment: self.segment,
            end: self.segment_bytes,
        })
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().at(&self.dir)
    }

    pub fn next_record(&self) -> u64 {
        self.next_record
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn opened(next_record: u64, truncated_bytes: u64, tail_problem: Option<String>) -> Opened {
    Opened {
        next_record,
        truncated_bytes,
        tail_problem,
    }
}

/// Reads records numbered `from` onwards, verifying every checksum.
pub fn read_records(dir: &Path, from: u64) -> Result<RecordIter> {
    let mut all = segments(dir)?;
    // Start at the last segment whose first record is <= from.
    let start = all
        .iter()
        .rposition(|(first, _)| *first <= from)
        .unwrap_or(0);
    Ok(RecordIter {
        segments: {
            all.drain(..start);
            all.into_iter()
        },
        current: None,
        from,
    })
}

/// An open segment being read.
struct Reading {
    path: PathBuf,
    reader: BufReader<File>,
    format: Format,
    record: u64,
    offset: u64,
}

/// Iterator over (record number, payload).
pub struct RecordIter {
    segments: std::vec::IntoIter<(u64, PathBuf)>,
    current: Option<Reading>,
    from: u64,
}

impl RecordIter {
    fn open_next(&mut self) -> Result<bool> {
        let Some((first, path)) = self.segments.next() else {
            return Ok(false);
        };
        let mut reader = BufReader::with_capacity(1 << 20, File::open(&path).at(&path)?);
        let mut magic = [0u8; 8];
        let format = match reader.read_exact(&mut magic) {
            Ok(()) => Format::of(&magic),
            Err(_) => None,
        };
        let Some(format) = format else {
            return Err(corrupt(&path, 0, "not a stockflow log segment"));
        };
        self.current = Some(Reading {
            path,
            reader,
            format,
            record: first,
            offset: MAGIC.len() as u64,
        });
        Ok(true)
    }

    fn next_record(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let r = self.current.as_mut().expect("opened above");
            let header_len = r.format.header();
            let mut header = [0u8; 16];
            match read_full(&mut r.reader, &mut header[..header_len]).at(&r.path)? {
                0 => {
                    self.current = None;
                    continue;
                }
                n if n == header_len => {}
                _ => return Err(corrupt(&r.path, r.offset, "short frame header")),
            }
            let fields = header_fields(&header[..header_len], r.format, r.record)
                .map_err(|bad| corrupt(&r.path, r.offset, bad.what()))?;
            let mut payload = vec![0u8; fields.0 as usize];
            if read_full(&mut r.reader, &mut payload).at(&r.path)? != payload.len() {
                return Err(corrupt(&r.path, r.offset, "frame runs past the end"));
            }
            check(r.format, fields, r.record, &payload)
                .map_err(|bad| corrupt(&r.path, r.offset, bad.what()))?;
            let number = r.record;
            r.record += 1;
            r.offset += (header_len + payload.len()) as u64;
            if number >= self.from {
                return Ok(Some((number, payload)));
            }
        }
    }
}

fn corrupt(path: &Path, offset: u64, what: &str) -> LogError {
    LogError::Corrupt {
        path: path.to_owned(),
        offset,
        what: what.into(),
    }
}

/// Reads until `buf` is full or EOF; returns bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

impl Iterator for RecordIter {
    type Item = Result<(u64, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}
