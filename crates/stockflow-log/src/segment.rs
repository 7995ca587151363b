//! Segment files: appending, opening with torn-tail repair, reading.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{sync_dir, IoContext, LogError, Result};

const MAGIC: &[u8; 8] = b"SFLOG\0\0\x01";
const FRAME_HEADER: usize = 8;
/// Largest record: a group commit is bounded far below this by the shell's
/// batch limits; a larger length in a frame header can only be garbage.
pub const RECORD_BYTES_MAX: usize = 1 << 30;

fn frame_crc(len: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload)
}

fn segment_path(dir: &Path, first_record: u64) -> PathBuf {
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

/// Result of walking a segment's frames.
struct Scan {
    records: u64,
    /// Offset just after the last whole frame.
    valid_end: u64,
    /// What stopped the walk before the end of the file, if anything.
    problem: Option<String>,
}

fn scan(bytes: &[u8]) -> Scan {
    let mut offset = MAGIC.len();
    let mut records = 0;
    loop {
        let rest = &bytes[offset..];
        if rest.is_empty() {
            return Scan {
                records,
                valid_end: offset as u64,
                problem: None,
            };
        }
        match frame(rest) {
            Ok((_, used)) => {
                offset += used;
                records += 1;
            }
            Err(problem) => {
                return Scan {
                    records,
                    valid_end: offset as u64,
                    problem: Some(problem),
                }
            }
        }
    }
}

/// Reads a frame header: (payload length, checksum), or why it is invalid.
fn frame_header(header: &[u8; FRAME_HEADER]) -> std::result::Result<(u32, u32), &'static str> {
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len as usize > RECORD_BYTES_MAX {
        return Err("frame length out of range");
    }
    Ok((len, crc))
}

/// Checks a payload against the checksum of its header.
fn verify(len: u32, crc: u32, payload: &[u8]) -> std::result::Result<(), &'static str> {
    if frame_crc(len, payload) == crc {
        Ok(())
    } else {
        Err("checksum mismatch")
    }
}

/// Decodes one frame at the start of `bytes`: (payload, bytes used).
fn frame(bytes: &[u8]) -> std::result::Result<(&[u8], usize), String> {
    let header: &[u8; FRAME_HEADER] = bytes
        .get(..FRAME_HEADER)
        .and_then(|h| h.try_into().ok())
        .ok_or("short frame header")?;
    let (len, crc) = frame_header(header)?;
    let end = FRAME_HEADER + len as usize;
    let payload = bytes
        .get(FRAME_HEADER..end)
        .ok_or_else(|| format!("frame of {len} bytes runs past the end"))?;
    verify(len, crc, payload)?;
    Ok((payload, end))
}

/// Appends records to the newest segment, rolling to a new one past a size.
pub struct LogWriter {
    dir: PathBuf,
    file: Arc<File>,
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
}

impl LogWriter {
    /// Opens (creating if needed) the log in `dir`, cutting off a torn tail.
    pub fn open(dir: &Path, segment_bytes_max: u64) -> Result<(LogWriter, Opened)> {
        fs::create_dir_all(dir).at(dir)?;
        let existing = segments(dir)?;
        let Some((first, path)) = existing.last().cloned() else {
            let writer = Self::create_segment(dir, 0, segment_bytes_max)?;
            return Ok((
                writer,
                Opened {
                    next_record: 0,
                    truncated_bytes: 0,
                    tail_problem: None,
                },
            ));
        };
        let bytes = fs::read(&path).at(&path)?;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            // A segment whose header never reached the disk holds nothing.
            if bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
                fs::remove_file(&path).at(&path)?;
                return Self::open(dir, segment_bytes_max);
            }
            return Err(LogError::Corrupt {
                path,
                offset: 0,
                what: "not a stockflow log segment".into(),
            });
        }
        let scanned = scan(&bytes);
        let truncated_bytes = bytes.len() as u64 - scanned.valid_end;
        let file = OpenOptions::new().append(true).open(&path).at(&path)?;
        if truncated_bytes > 0 {
            file.set_len(scanned.valid_end).at(&path)?;
            file.sync_all().at(&path)?;
        }
        let next_record = first + scanned.records;
        let writer = LogWriter {
            dir: dir.to_owned(),
            file: Arc::new(file),
            segment_bytes: scanned.valid_end,
            segment_bytes_max,
            next_record,
            frame_buf: Vec::new(),
        };
        Ok((
            writer,
            Opened {
                next_record,
                truncated_bytes,
                tail_problem: scanned.problem,
            },
        ))
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
            segment_bytes: MAGIC.len() as u64,
            segment_bytes_max,
            next_record: first_record,
            frame_buf: Vec::new(),
        })
    }

    /// Writes one record (not yet durable: see [`Appended::file`]).
    pub fn append(&mut self, payload: &[u8]) -> Result<Appended> {
        if payload.len() > RECORD_BYTES_MAX {
            return Err(LogError::TooLarge {
                len: payload.len(),
                max: RECORD_BYTES_MAX,
            });
        }
        let frame_len = (FRAME_HEADER + payload.len()) as u64;
        if self.segment_bytes > MAGIC.len() as u64
            && self.segment_bytes + frame_len > self.segment_bytes_max
        {
            // The old segment's Arc<File> stays with records already handed
            // out, so whoever syncs them still syncs the right file.
            *self = Self::create_segment(&self.dir, self.next_record, self.segment_bytes_max)?;
        }
        let len = payload.len() as u32;
        self.frame_buf.clear();
        self.frame_buf.extend_from_slice(&len.to_le_bytes());
        self.frame_buf
            .extend_from_slice(&frame_crc(len, payload).to_le_bytes());
        self.frame_buf.extend_from_slice(payload);
        let path = segment_path(&self.dir, self.next_record);
        (&*self.file).write_all(&self.frame_buf).at(&path)?;
        self.segment_bytes += frame_len;
        let record = self.next_record;
        self.next_record += 1;
        Ok(Appended {
            record,
            file: self.file.clone(),
        })
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().at(&self.dir)
    }

    pub fn next_record(&self) -> u64 {
        self.next_record
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

/// Iterator over (record number, payload).
pub struct RecordIter {
    segments: std::vec::IntoIter<(u64, PathBuf)>,
    current: Option<(PathBuf, BufReader<File>, u64, u64)>,
    from: u64,
}

impl RecordIter {
    fn open_next(&mut self) -> Result<bool> {
        let Some((first, path)) = self.segments.next() else {
            return Ok(false);
        };
        let mut reader = BufReader::with_capacity(1 << 20, File::open(&path).at(&path)?);
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic).at(&path)?;
        if &magic != MAGIC {
            return Err(LogError::Corrupt {
                path,
                offset: 0,
                what: "not a stockflow log segment".into(),
            });
        }
        self.current = Some((path, reader, first, MAGIC.len() as u64));
        Ok(true)
    }

    fn next_record(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let (path, reader, record, offset) = self.current.as_mut().expect("opened above");
            let mut header = [0u8; FRAME_HEADER];
            match read_full(reader, &mut header).at(path)? {
                0 => {
                    self.current = None;
                    continue;
                }
                FRAME_HEADER => {}
                _ => return Err(corrupt(path, *offset, "short frame header")),
            }
            let (len, crc) = frame_header(&header).map_err(|what| corrupt(path, *offset, what))?;
            let mut payload = vec![0u8; len as usize];
            if read_full(reader, &mut payload).at(path)? != payload.len() {
                return Err(corrupt(path, *offset, "frame runs past the end"));
            }
            verify(len, crc, &payload).map_err(|what| corrupt(path, *offset, what))?;
            let number = *record;
            *record += 1;
            *offset += (FRAME_HEADER + payload.len()) as u64;
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
