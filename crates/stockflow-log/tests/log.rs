//! The log survives what a crash can leave on disk.

use std::fs::OpenOptions;
use std::io::Write;

use stockflow_log::{read_records, read_snapshot, write_snapshot, LogError, LogWriter};

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
