//! The store of record: an append-only log of CRC-framed records in
//! segment files, plus checksummed snapshot files for checkpoints.
//!
//! This crate knows bytes, files and fsync; it knows nothing of events.
//!
//! On disk (all integers little-endian):
//! - `log/{first_record:020}.seg`: an 8-byte magic `SFLOG\0\0\x01`, then
//!   frames `len: u32 | crc32c(len ++ payload): u32 | payload`. Records are
//!   numbered from 0 across segments; a segment's name is the number of its
//!   first record.
//! - A snapshot file: 8-byte magic `SFSNAP\0\x01`, `len: u64`,
//!   `crc32c(payload): u32`, payload. Written to a temporary name, fsynced
//!   and renamed, so a snapshot is either whole or absent.
//!
//! Recovery ([`LogWriter::open`]): only the last segment can end in a torn
//! frame (frames are appended in order and a record is acknowledged only
//! after an fsync that covers it). The first frame there that is short or
//! fails its CRC, and everything after it, is cut off. A bad frame in any
//! earlier segment is corruption and an error, never skipped.
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

mod segment;
mod snapshot;

pub use segment::{read_records, Appended, LogWriter, Opened, RecordIter};
pub use snapshot::{read_snapshot, write_snapshot};

/// Errors of the log and snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: corrupt at byte {offset}: {what}; restore this file from a backup or move it away to start without it")]
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
