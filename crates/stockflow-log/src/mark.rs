//! The durable mark: how far the log had been synced and acknowledged.
//!
//! Frames alone cannot tell an interrupted last write from acknowledged
//! records that were damaged or cut off later: both end the file in a bad
//! frame. The mark, `log/durable`, says where the acknowledged records end
//! (record count, segment, byte offset), so that opening can refuse to cut
//! anything before it.
//!
//! It is written after every fdatasync of the log, with a plain `pwrite`
//! and no fsync of its own: the page cache keeps it across a crash of the
//! process (kill -9), which is when torn tails happen; a clean stop syncs
//! it. After a power loss it may be behind the log (never ahead: it is
//! written only once the log is synced), and the records acknowledged
//! since it last reached the disk are judged by their frames alone.
//!
//! The file holds two 32-byte slots, `next_record | segment | end |
//! crc32c | 0`, written in turn; the valid one with the larger count wins,
//! so a torn write of one slot leaves the other.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{sync_dir, IoContext, Result};

const FILE: &str = "durable";
const SLOT: u64 = 512;

/// Where the acknowledged records end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Records acknowledged (the number of the next record).
    pub next_record: u64,
    /// First record of the segment they end in.
    pub segment: u64,
    /// Offset in that segment just after the last acknowledged frame.
    pub end: u64,
}

impl Mark {
    /// The mark once `appended` and everything before it are synced.
    pub fn after(appended: &crate::Appended) -> Mark {
        Mark {
            next_record: appended.record + 1,
            segment: appended.segment,
            end: appended.end,
        }
    }

    fn encode(&self) -> [u8; 32] {
        let mut slot = [0u8; 32];
        slot[0..8].copy_from_slice(&self.next_record.to_le_bytes());
        slot[8..16].copy_from_slice(&self.segment.to_le_bytes());
        slot[16..24].copy_from_slice(&self.end.to_le_bytes());
        let crc = crc32c::crc32c(&slot[..24]);
        slot[24..28].copy_from_slice(&crc.to_le_bytes());
        slot
    }

    fn decode(slot: &[u8]) -> Option<Mark> {
        let slot: &[u8; 32] = slot.get(..32)?.try_into().ok()?;
        let crc = u32::from_le_bytes(slot[24..28].try_into().ok()?);
        if crc32c::crc32c(&slot[..24]) != crc {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(slot[i..i + 8].try_into().expect("8 bytes"));
        Some(Mark {
            next_record: word(0),
            segment: word(8),
            end: word(16),
        })
    }

    /// The newest valid mark of the log in `dir`, if it has one.
    pub fn read(dir: &Path) -> Result<Option<Mark>> {
        let path = dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).at(&path),
        };
        let slots = [0, SLOT as usize].map(|at| bytes.get(at..).and_then(Mark::decode));
        let newest = slots.into_iter().flatten().max_by_key(|m| m.next_record);
        if newest.is_none() && !bytes.is_empty() {
            // Written but unreadable: where the acknowledged records end is
            // unknown, so no bad frame could be told from a torn tail.
            return Err(crate::LogError::Corrupt {
                path,
                offset: 0,
                what: "the durable mark is damaged (neither slot verifies)".into(),
            });
        }
        Ok(newest)
    }

    /// Replaces a damaged mark by one at the end of the last segment's
    /// whole frames; returns the number of records there. For `repair`:
    /// what the damaged mark knew past that end is lost with it.
    pub fn reset(dir: &Path) -> Result<u64> {
        let (mark, records) = match crate::segment::segments(dir)?.pop() {
            Some((first, path)) => {
                let bytes = std::fs::read(&path).at(&path)?;
                match crate::segment::Walk::of(&bytes, first) {
                    Some(walk) => (
                        Mark {
                            next_record: walk.next_record(),
                            segment: first,
                            end: walk.valid_end,
                        },
                        walk.next_record(),
                    ),
                    None => (
                        Mark {
                            next_record: first,
                            segment: first,
                            end: 0,
                        },
                        first,
                    ),
                }
            }
            None => (
                Mark {
                    next_record: 0,
                    segment: 0,
                    end: 0,
                },
                0,
            ),
        };
        let path = dir.join(FILE);
        std::fs::remove_file(&path).at(&path)?;
        Mark::write_synced(dir, mark)?;
        Ok(records)
    }

    /// Replaces the mark durably (for repairs, not the hot path).
    pub fn write_synced(dir: &Path, mark: Mark) -> Result<()> {
        let marker = DurableMark::open(dir)?;
        marker.write(mark);
        marker.write(mark);
        marker.sync()
    }
}

/// The writer of the mark: one per log, used by whoever syncs it.
pub struct DurableMark {
    file: File,
    path: std::path::PathBuf,
    turn: std::sync::atomic::AtomicU64,
}

impl DurableMark {
    /// Opens (creating) the mark of the log in `dir`.
    pub fn open(dir: &Path) -> Result<DurableMark> {
        let path = dir.join(FILE);
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .at(&path)?;
        if !existed {
            file.sync_all().at(&path)?;
            sync_dir(dir)?;
        }
        Ok(DurableMark {
            file,
            path,
            turn: Default::default(),
        })
    }

    /// Records that everything up to `mark` is synced. Call it only after
    /// the fdatasync that covers it has returned.
    pub fn write(&self, mark: Mark) {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A failed write leaves an older mark: opening is then only less
        // strict about the newest records, never wrong about older ones.
        let _ = self.file.write_all_at(&mark.encode(), (turn % 2) * SLOT);
    }

    /// Makes the mark durable (at a clean stop).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().at(&self.path)
    }
}
