//! The dedup set across its chunked storage: expiry, capacity, and
//! snapshots that stay fixed while the live set moves on.

use stockflow_core::{Dedup, DedupSnapshot, Timestamp};

const SECOND: i64 = 1_000_000_000;

fn id(n: u64) -> u128 {
    (n as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
}

#[test]
fn ids_are_remembered_for_the_retention_period_then_forgotten() {
    // 200k ids over 200 s with a 100 s retention: expiry crosses chunks.
    let mut dedup = Dedup::new(100 * SECOND, usize::MAX);
    for n in 0..200_000u64 {
        let now = Timestamp((n / 1000) as i64 * SECOND);
        assert!(dedup.admit(id(n), now), "id {n} is new");
    }
    let now = Timestamp(199 * SECOND);
    dedup.expire(now);
    assert!(!dedup.contains(id(98_999)), "committed at 98 s, forgotten");
    assert!(dedup.contains(id(99_000)), "committed at 99 s, kept");
    assert_eq!(dedup.len(), 101_000);
    assert!(
        !dedup.admit(id(150_000), now),
        "a duplicate within retention"
    );
    assert!(dedup.admit(id(5), now), "a forgotten id is new again");
}

#[test]
fn capacity_forgets_the_oldest_early_and_counts_them() {
    let mut dedup = Dedup::new(i64::MAX, 70_000);
    for n in 0..100_000u64 {
        dedup.admit(id(n), Timestamp(0));
    }
    assert_eq!(dedup.len(), 70_000);
    assert_eq!(dedup.evicted_early(), 30_000);
    assert!(!dedup.contains(id(29_999)));
    assert!(dedup.contains(id(30_000)));
}

#[test]
fn a_snapshot_is_unchanged_by_later_admits_and_round_trips() {
    let mut dedup = Dedup::new(10 * SECOND, usize::MAX);
    for n in 0..100_000u64 {
        dedup.admit(id(n), Timestamp((n / 10_000) as i64 * SECOND));
    }
    let snapshot = dedup.snapshot();
    let bytes = snapshot.encode();
    // The live set moves on: more ids, and expiry of the first chunks.
    for n in 100_000..250_000u64 {
        dedup.admit(id(n), Timestamp((n / 10_000) as i64 * SECOND));
    }
    assert_eq!(snapshot.encode(), bytes, "the snapshot did not move");
    assert_eq!(snapshot.len(), 100_000);

    let restored = Dedup::restore(
        &DedupSnapshot::decode(&bytes).unwrap(),
        10 * SECOND,
        usize::MAX,
    );
    assert_eq!(restored.len(), 100_000);
    assert!((0..100_000).all(|n| restored.contains(id(n))));
    assert!(!restored.contains(id(100_000)));
}

#[test]
fn damaged_snapshot_bytes_are_refused() {
    let mut dedup = Dedup::new(SECOND, usize::MAX);
    dedup.admit(id(1), Timestamp(0));
    let bytes = dedup.snapshot().encode();
    assert!(DedupSnapshot::decode(&bytes[..bytes.len() - 1]).is_err());
    assert!(DedupSnapshot::decode(&bytes[..3]).is_err());
}
