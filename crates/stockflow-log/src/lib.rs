//! The store of record: an append-only log of CRC-framed records in
//! segment files, plus checksummed snapshot files for checkpoints.
//!
//! This crate knows bytes, files and fsync; it knows nothing of events.
//!
//! On disk (all integers little-endian):
//! - `log/{first_record:020}.seg`: an 8-byte magic `SFLOG\0\0\x02`, then
//!   frames `len: u32 | crc32c(len ++ record ++ payload): u32 | record: u64
//!   | payload`. Records are numbered from 0 across segments; a segment's
//!   name is the number of its first record. Segments of format 1 (magic
//!   ending `\x01`, frames without the record number) are still read.
//! - `log/durable`: the durable mark, where the acknowledged records end
//!   (see [`mark`]).
//! - A snapshot file: 8-byte magic `SFSNAP\0\x01`, `len: u64`,
//!   `crc32c(payload): u32`, payload. Written to a temporary name, fsynced
//!   and renamed, so a snapshot is either whole or absent.
//!
//! Recovery ([`LogWriter::open`]): only the last segment can end in a torn
//! frame (frames are appended in order and a record is acknowledged only
//! after an fsync that covers it). A bad frame there is a torn tail, cut
//! off, only if it lies past the durable mark and no whole frame follows
//! it. Anything else is damage: opening fails with the file and offset,
//! and nothing is cut; [`find_damage`] and [`move_aside`] are the repair.
//! A bad frame in any earlier segment is damage too, never skipped.
//!
//! ```
//! # let dir = tempfile::tempdir().unwrap();
//! use stockflow_log::{LogWriter, read_records};
//! let (mut log, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
//! log.append(b"first").unwrap();
//! log.sync().unwrap();
//! let records: Vec<_> = read_records(dir.path(), 0).unwrap().map(Result::unwrap).collect();
//! assert_eq!(records, vec![(0, b"first".to_vec())]);
//! ```

mod damage;
pub mod mark;
mod segment;
mod snapshot;

pub use damage::{find_damage, move_aside, Damage};
pub use mark::{DurableMark, Mark};
pub use segment::{read_records, segments, Appended, LogWriter, Opened, RecordIter};

/// Asks the kernel to start writing a range of `file` back, without waiting
/// for it; spreads the work of a later fsync so that it does not arrive at
/// the device in one burst. Not a durability guarantee.
pub fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    write_back(file, offset, len, false);
}

/// Bytes freed per step by [`remove_gently`].
const FREE_STEP_BYTES: u64 = 8 << 20;

/// Deletes a file or a directory tree without one big burst of freed
/// blocks: large files are cut down a step at a time, each step made
/// durable, before they are unlinked. On a filesystem mounted with
/// `discard` (this one is), freeing 100 MB at once makes the next journal
/// commit, and so the log's next fdatasync, wait for the device to trim
/// it all (measured: 300 ms). Run it on a background thread.
pub fn remove_gently(path: &std::path::Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).at(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).at(path)? {
            remove_gently(&entry.at(path)?.path())?;
        }
        return std::fs::remove_dir(path).at(path);
    }
    if meta.len() > FREE_STEP_BYTES {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .at(path)?;
        let mut len = meta.len();
        while len > FREE_STEP_BYTES {
            len -= FREE_STEP_BYTES;
            file.set_len(len).at(path)?;
            file.sync_data().at(path)?;
        }
    }
    std::fs::remove_file(path).at(path)
}

/// sync_file_range(2): hand-written over libc because no maintained crate
/// wraps it. With `wait`, returns once the range is on the device (data
/// only: still not durable without fsync). Failures are ignored: the
/// caller's fsync does the work instead.
fn write_back(file: &std::fs::File, offset: u64, len: u64, wait: bool) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let flags = if wait {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER
        } else {
            libc::SYNC_FILE_RANGE_WRITE
        };
        // SAFETY: sync_file_range only reads its integer arguments and the
        // descriptor, which `file` keeps open for the call.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                flags,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len, wait);
}
pub use snapshot::{read_snapshot, write_snapshot};

/// Errors of the log and snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: damaged at byte {offset}: {what}")]
    Corrupt {
        path: std::path::PathBuf,
        offset: u64,
        what: String,
    },
    #[error("record of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

pub type Result<T> = std::result::Result<T, LogError>;

trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| LogError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// fsyncs a directory so that a created or renamed entry in it is durable.
pub fn sync_dir(dir: &std::path::Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
