//! Whole-or-nothing snapshot files.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::{sync_dir, IoContext, LogError, Result};

const MAGIC: &[u8; 8] = b"SFSNAP\0\x01";
const HEADER: usize = 8 + 8 + 4;

/// Writes `payload` to `path` durably: temporary file, fsync, rename, fsync
/// of the directory.
pub fn write_snapshot(path: &Path, payload: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).at(&tmp)?;
    file.write_all(MAGIC).at(&tmp)?;
    file.write_all(&(payload.len() as u64).to_le_bytes())
        .at(&tmp)?;
    file.write_all(&crc32c::crc32c(payload).to_le_bytes())
        .at(&tmp)?;
    file.write_all(payload).at(&tmp)?;
    file.sync_all().at(&tmp)?;
    fs::rename(&tmp, path).at(path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Reads a snapshot written by [`write_snapshot`], verifying its checksum.
pub fn read_snapshot(path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path).at(path)?;
    let corrupt = |what: &str| LogError::Corrupt {
        path: path.to_owned(),
        offset: 0,
        what: what.into(),
    };
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(corrupt("not a stockflow snapshot"));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER..];
    if payload.len() != len || crc32c::crc32c(payload) != crc {
        return Err(corrupt("length or checksum mismatch"));
    }
    Ok(payload.to_vec())
}
