//! Finding damage in a log and moving it aside, for `repair`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::mark::Mark;
use crate::segment::{judge, segment_path, segments, Verdict, Walk};
use crate::{sync_dir, IoContext, LogWriter, Result};

/// The first damage in a log: everything from it on is moved aside.
#[derive(Debug)]
pub struct Damage {
    /// The segment it is in, and that segment's first record.
    pub segment: PathBuf,
    pub segment_first: u64,
    /// Where the first bad frame starts.
    pub offset: u64,
    /// Number of the first record that cannot be read.
    pub record: u64,
    pub what: String,
    /// Records the durable mark says were acknowledged (at least).
    pub acknowledged: Option<u64>,
    /// The bad record's bytes as its frame header states them, or as many
    /// as the file holds (they may still decode, whole or in part).
    pub damaged: Option<Vec<u8>>,
    /// Whole records after the damage, in this segment and later ones.
    pub after: Vec<(u64, Vec<u8>)>,
    /// Segments after the damaged one.
    pub later: Vec<PathBuf>,
}

/// Walks every segment of the log in `dir` and returns the first damage,
/// if any. A torn tail of the last segment is not damage (opening cuts
/// it).
pub fn find_damage(dir: &Path) -> Result<Option<Damage>> {
    let mark = Mark::read(dir)?;
    let all = segments(dir)?;
    for (i, (first, path)) in all.iter().enumerate() {
        let last = i + 1 == all.len();
        let bytes = fs::read(path).at(path)?;
        let later: Vec<PathBuf> = all[i + 1..].iter().map(|(_, p)| p.clone()).collect();
        let damage = |offset: u64, record: u64, what: String, walk: Option<&Walk>| {
            let mut after: Vec<(u64, Vec<u8>)> = walk.map_or_else(Vec::new, |w| {
                w.survivors(&bytes)
                    .into_iter()
                    .map(|(n, _, p)| (n, p.to_vec()))
                    .collect()
            });
            for (first, path) in &all[i + 1..] {
                if let Some(w) = fs::read(path)
                    .ok()
                    .and_then(|b| Walk::of(&b, *first).map(|w| (w, b)))
                {
                    let (walk, bytes) = w;
                    after.extend(walk.records(&bytes).map(|(n, p)| (n, p.to_vec())));
                }
            }
            Damage {
                segment: path.clone(),
                segment_first: *first,
                offset,
                record,
                what,
                acknowledged: mark.map(|m| m.next_record),
                damaged: walk.and_then(|w| w.damaged_payload(&bytes).map(<[u8]>::to_vec)),
                after,
                later: later.clone(),
            }
        };
        let Some(walk) = Walk::of(&bytes, *first) else {
            let acknowledged = mark.is_some_and(|m| m.segment >= *first);
            if last && !acknowledged && bytes.len() < 8 {
                return Ok(None); // a header that never reached the disk
            }
            return Ok(Some(damage(
                0,
                *first,
                "not a stockflow log segment".into(),
                None,
            )));
        };
        let acknowledged_end = match mark {
            Some(m) if m.segment == *first => Some(m.end),
            Some(m) if m.segment > *first => Some(bytes.len() as u64),
            _ => None,
        };
        let verdict = if last {
            judge(&walk, &bytes, acknowledged_end)
        } else {
            judge(&walk, &bytes, Some(bytes.len() as u64))
        };
        match verdict {
            Verdict::Whole | Verdict::Torn(_) => {}
            Verdict::Damaged(what) => {
                return Ok(Some(damage(
                    walk.valid_end,
                    walk.next_record(),
                    what,
                    Some(&walk),
                )))
            }
        }
    }
    if let Some(mark) = mark {
        let missing = all.last().is_none_or(|(first, _)| mark.segment > *first);
        if missing && mark.next_record > 0 {
            return Ok(Some(Damage {
                segment: segment_path(dir, mark.segment),
                segment_first: mark.segment,
                offset: 0,
                record: mark.segment,
                what: "the segment is missing".into(),
                acknowledged: Some(mark.next_record),
                damaged: None,
                after: Vec::new(),
                later: Vec::new(),
            }));
        }
    }
    Ok(None)
}

/// Moves the damage and everything after it into `aside` (created), so
/// that the log ends at the last whole record before it, and makes the
/// durable mark say so. Nothing is deleted: the bytes cut from the
/// damaged segment are kept in `aside` under the segment's name with the
/// offset they started at.
pub fn move_aside(dir: &Path, damage: &Damage, aside: &Path) -> Result<()> {
    fs::create_dir_all(aside).at(aside)?;
    for path in &damage.later {
        let to = aside.join(path.file_name().expect("a segment has a name"));
        fs::rename(path, &to).at(path)?;
    }
    if damage.segment.exists() {
        let bytes = fs::read(&damage.segment).at(&damage.segment)?;
        let name = damage
            .segment
            .file_name()
            .expect("a segment has a name")
            .to_string_lossy()
            .into_owned();
        let kept = aside.join(format!("{name}.from-byte-{}", damage.offset));
        let cut = (damage.offset as usize).min(bytes.len());
        fs::write(&kept, &bytes[cut..]).at(&kept)?;
        fs::File::open(&kept).and_then(|f| f.sync_all()).at(&kept)?;
        if damage.offset < 8 {
            fs::remove_file(&damage.segment).at(&damage.segment)?;
        } else {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(&damage.segment)
                .at(&damage.segment)?;
            file.set_len(damage.offset).at(&damage.segment)?;
            file.sync_all().at(&damage.segment)?;
        }
    }
    sync_dir(aside)?;
    sync_dir(dir)?;
    if damage.offset < 8 {
        return LogWriter::start_at(dir, damage.record);
    }
    Mark::write_synced(
        dir,
        Mark {
            next_record: damage.record,
            segment: damage.segment_first,
            end: damage.offset,
        },
    )
}
