//! The log survives what a crash can leave on disk.

use std::fs::OpenOptions;
use std::io::Write;

use stockflow_log::{
    read_records, read_snapshot, write_snapshot, DurableMark, LogError, LogWriter, Mark,
};

fn all(dir: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
    read_records(dir, 0).unwrap().map(Result::unwrap).collect()
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn records_survive_reopen_and_roll_over_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, opened) = LogWriter::open(dir.path(), 100).unwrap();
    assert_eq!(opened.next_record, 0);
    for i in 0..10u8 {
        log.append(&[i; 40]).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    assert!(
        segment_files(dir.path()).len() >= 5,
        "100-byte segments hold at most two 48-byte frames"
    );
    let (mut log, opened) = LogWriter::open(dir.path(), 100).unwrap();
    assert_eq!((opened.next_record, opened.truncated_bytes), (10, 0));
    log.append(b"eleventh").unwrap();
    let records = all(dir.path());
    assert_eq!(records.len(), 11);
    assert_eq!(records[3], (3, vec![3; 40]));
    assert_eq!(records[10], (10, b"eleventh".to_vec()));
    let from_seven: Vec<u64> = read_records(dir.path(), 7)
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(from_seven, vec![7, 8, 9, 10]);
}

#[test]
fn a_torn_tail_is_cut_off_and_writing_resumes_after_the_last_whole_record() {
    for torn in [
        &[0x05u8][..],
        &[10, 0, 0, 0, 1, 2, 3, 4, 9],
        &[3, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        log.append(b"one").unwrap();
        log.append(b"two").unwrap();
        drop(log);
        let segment = segment_files(dir.path()).pop().unwrap();
        OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap()
            .write_all(torn)
            .unwrap();
        let (mut log, opened) = LogWriter::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(opened.next_record, 2);
        assert_eq!(opened.truncated_bytes, torn.len() as u64);
        log.append(b"three").unwrap();
        let payloads: Vec<Vec<u8>> = all(dir.path()).into_iter().map(|(_, p)| p).collect();
        assert_eq!(
            payloads,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
    }
}

#[test]
fn corruption_before_the_tail_is_an_error_not_a_skip() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = LogWriter::open(dir.path(), 60).unwrap();
    for i in 0..6u8 {
        log.append(&[i; 20]).unwrap();
    }
    drop(log);
    let first = segment_files(dir.path()).remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let error = read_records(dir.path(), 0)
        .unwrap()
        .find_map(Result::err)
        .expect("corruption must surface");
    assert!(matches!(error, LogError::Corrupt { .. }), "{error}");
}

#[test]
fn snapshots_are_whole_or_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.snap");
    write_snapshot(&path, b"state bytes").unwrap();
    assert_eq!(read_snapshot(&path).unwrap(), b"state bytes");
    let mut bytes = std::fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        read_snapshot(&path),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn remove_gently_deletes_large_files_and_whole_trees() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("old");
    std::fs::create_dir_all(tree.join("nested")).unwrap();
    std::fs::write(tree.join("big"), vec![7u8; 20 << 20]).unwrap();
    std::fs::write(tree.join("nested/small"), b"x").unwrap();
    let single = dir.path().join("single");
    std::fs::write(&single, vec![1u8; 9 << 20]).unwrap();
    stockflow_log::remove_gently(&tree).unwrap();
    stockflow_log::remove_gently(&single).unwrap();
    assert!(!tree.exists() && !single.exists());
    assert!(
        stockflow_log::remove_gently(&single).is_err(),
        "a missing path is an error"
    );
}

/// A log of eight 40-byte records in two segments (records 0-4, then 5-7
/// at offsets 8, 64 and 120 of the second), synced and marked as the
/// server marks it; `acknowledged` records are covered by the mark.
fn marked_log(acknowledged: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = LogWriter::open(dir.path(), 8 + 5 * 56).unwrap();
    let mark = DurableMark::open(dir.path()).unwrap();
    for i in 0..8u8 {
        let appended = log.append(&[i; 40]).unwrap();
        log.sync().unwrap();
        if appended.record < acknowledged {
            mark.write(Mark::after(&appended));
        }
    }
    dir
}

fn last_segment(dir: &std::path::Path) -> std::path::PathBuf {
    stockflow_log::segments(dir).unwrap().pop().unwrap().1
}

fn edit(path: &std::path::Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    change(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

/// What opening a damaged log must do.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Opens; the records from this one on were cut off as a torn tail.
    TornFrom(u64),
    /// Refuses to open, naming the last segment and this offset.
    DamagedAt(u64),
}

#[test]
fn faults_at_every_place_of_a_real_log_are_told_apart() {
    use Outcome::*;
    let flip = |at: usize| move |b: &mut Vec<u8>| b[at] ^= 0x10;
    let cut = |n: usize| move |b: &mut Vec<u8>| b.truncate(b.len() - n);
    type Fault = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, u64, Fault, Outcome)> = vec![
        // An interrupted write past what was acknowledged: cut, silently.
        ("half-written last record", 7, Box::new(cut(5)), TornFrom(7)),
        (
            "last record's header torn",
            7,
            Box::new(cut(50)),
            TornFrom(7),
        ),
        (
            "garbage appended",
            8,
            Box::new(|b: &mut Vec<u8>| b.extend([9; 20])),
            TornFrom(8),
        ),
        // Anything that was acknowledged is never cut.
        ("last record cut short", 8, Box::new(cut(5)), DamagedAt(120)),
        (
            "last record removed whole",
            8,
            Box::new(cut(56)),
            DamagedAt(120),
        ),
        (
            "last record's payload",
            8,
            Box::new(flip(120 + 30)),
            DamagedAt(120),
        ),
        (
            "last record's length",
            8,
            Box::new(flip(120)),
            DamagedAt(120),
        ),
        (
            "last record's checksum",
            8,
            Box::new(flip(120 + 5)),
            DamagedAt(120),
        ),
        (
            "last record's number",
            8,
            Box::new(flip(120 + 9)),
            DamagedAt(120),
        ),
        // A damaged record with whole records after it is damage, even
        // when the mark knows nothing (a power loss can leave it behind).
        (
            "middle record's payload",
            0,
            Box::new(flip(64 + 30)),
            DamagedAt(64),
        ),
        (
            "middle record's length",
            0,
            Box::new(flip(64 + 1)),
            DamagedAt(64),
        ),
        (
            "middle record's checksum",
            0,
            Box::new(flip(64 + 6)),
            DamagedAt(64),
        ),
        (
            "middle record's number",
            0,
            Box::new(flip(64 + 8)),
            DamagedAt(64),
        ),
        (
            "first record's payload",
            8,
            Box::new(flip(8 + 16)),
            DamagedAt(8),
        ),
        ("segment header", 8, Box::new(flip(3)), DamagedAt(0)),
        (
            "segment header, nothing acknowledged",
            0,
            Box::new(flip(3)),
            DamagedAt(0),
        ),
    ];
    for (name, acknowledged, fault, expected) in cases {
        let dir = marked_log(acknowledged);
        let segment = last_segment(dir.path());
        edit(&segment, &*fault);
        let before = std::fs::read(&segment).unwrap();
        let outcome = match LogWriter::open(dir.path(), 1 << 20) {
            Ok((_, opened)) => {
                assert!(opened.tail_problem.is_some(), "{name}: {opened:?}");
                TornFrom(opened.next_record)
            }
            Err(LogError::Corrupt { path, offset, what }) => {
                assert_eq!(path, segment, "{name}: {what}");
                assert_eq!(
                    std::fs::read(&segment).unwrap(),
                    before,
                    "{name}: a refused open changes nothing"
                );
                DamagedAt(offset)
            }
            Err(other) => panic!("{name}: {other}"),
        };
        assert_eq!(outcome, expected, "{name}");
        let payloads: Vec<u8> = match outcome {
            TornFrom(next) => {
                assert_eq!(
                    stockflow_log::find_damage(dir.path())
                        .unwrap()
                        .map(|d| d.record),
                    None,
                    "{name}"
                );
                let payloads: Vec<u8> = all(dir.path()).iter().map(|(_, p)| p[0]).collect();
                assert_eq!(payloads.len() as u64, next, "{name}");
                payloads
            }
            DamagedAt(offset) => {
                let damage = stockflow_log::find_damage(dir.path())
                    .unwrap()
                    .unwrap_or_else(|| panic!("{name}: repair must find it"));
                assert_eq!(
                    (damage.segment.as_path(), damage.offset),
                    (segment.as_path(), offset),
                    "{name}"
                );
                let aside = dir.path().join("aside");
                stockflow_log::move_aside(dir.path(), &damage, &aside).unwrap();
                let kept: Vec<_> = std::fs::read_dir(&aside).unwrap().collect();
                assert_eq!(kept.len(), 1, "{name}: the cut bytes are kept");
                let (_, opened) = LogWriter::open(dir.path(), 1 << 20).unwrap();
                assert_eq!(opened.next_record, damage.record, "{name}");
                assert_eq!(opened.truncated_bytes, 0, "{name}");
                all(dir.path()).iter().map(|(_, p)| p[0]).collect()
            }
        };
        let intact = payloads.len() as u8;
        assert_eq!(
            payloads,
            (0..intact).collect::<Vec<u8>>(),
            "{name}: records before the fault are intact"
        );
    }
}

#[test]
fn a_missing_acknowledged_segment_stops_the_start() {
    let dir = marked_log(8);
    std::fs::remove_file(last_segment(dir.path())).unwrap();
    let error = LogWriter::open(dir.path(), 1 << 20)
        .err()
        .expect("must refuse");
    assert!(error.to_string().contains("missing"), "{error}");
}

#[test]
fn damage_in_an_earlier_segment_is_found_by_repair() {
    let dir = marked_log(8);
    let first = stockflow_log::segments(dir.path()).unwrap()[0].1.clone();
    edit(&first, |b| b[64 + 20] ^= 1);
    let damage = stockflow_log::find_damage(dir.path())
        .unwrap()
        .expect("damage");
    assert_eq!((damage.record, damage.offset), (1, 64));
    let after: Vec<u64> = damage.after.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        after,
        vec![2, 3, 4, 5, 6, 7],
        "whole records after it are listed"
    );
    let mut flipped = vec![1u8; 40];
    flipped[4] ^= 1;
    assert_eq!(
        damage.damaged,
        Some(flipped),
        "the damaged bytes are offered as they are"
    );
}

#[test]
fn logs_of_the_first_format_are_read_and_continued() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = b"SFLOG\0\0\x01".to_vec();
    for payload in [&b"one"[..], b"two"] {
        let len = payload.len() as u32;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload);
        bytes.extend(len.to_le_bytes());
        bytes.extend(crc.to_le_bytes());
        bytes.extend(payload);
    }
    std::fs::write(dir.path().join(format!("{:020}.seg", 0)), bytes).unwrap();
    let (mut log, opened) = LogWriter::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(opened.next_record, 2);
    log.append(b"three").unwrap();
    let payloads: Vec<Vec<u8>> = all(dir.path()).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        payloads,
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
}

/// Found by a hostile test: with both slots of the mark damaged, a cut-off
/// last record was taken for a torn tail and cut, acknowledged as it was.
/// A mark that was written but verifies in neither slot stops the start;
/// resetting it (what `repair` does) puts it at the last whole record.
#[test]
fn a_damaged_mark_stops_the_start_until_it_is_reset() {
    let dir = marked_log(8);
    edit(&dir.path().join("durable"), |b| {
        b[0] ^= 1;
        b[512] ^= 1;
    });
    let segment = last_segment(dir.path());
    edit(&segment, |b| b.truncate(b.len() - 5));
    let error = LogWriter::open(dir.path(), 1 << 20)
        .err()
        .expect("must refuse");
    assert!(
        matches!(&error, LogError::Corrupt { path, .. } if path.ends_with("durable")),
        "{error}"
    );
    assert!(stockflow_log::find_damage(dir.path()).is_err());
    assert_eq!(Mark::reset(dir.path()).unwrap(), 7);
    let (_, opened) = LogWriter::open(dir.path(), 1 << 20).unwrap();
    assert_eq!((opened.next_record, opened.truncated_bytes), (7, 51));
}

#[test]
fn a_mark_written_in_only_one_slot_is_enough() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = LogWriter::open(dir.path(), 1 << 20).unwrap();
    let mark = DurableMark::open(dir.path()).unwrap();
    let appended = log.append(b"one").unwrap();
    log.sync().unwrap();
    mark.write(Mark::after(&appended));
    drop((log, mark));
    assert_eq!(
        std::fs::metadata(dir.path().join("durable")).unwrap().len(),
        32
    );
    assert_eq!(
        Mark::read(dir.path()).unwrap().map(|m| m.next_record),
        Some(1)
    );
    edit(&last_segment(dir.path()), |b| b.truncate(b.len() - 1));
    assert!(
        LogWriter::open(dir.path(), 1 << 20).is_err(),
        "the one record was acknowledged"
    );
}
