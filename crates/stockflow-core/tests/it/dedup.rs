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

/// Against a plain FIFO model, in bursts with quiet gaps long enough to
/// forget everything (so the open chunk empties and refills in place),
/// with repeats, capacity evictions and snapshots taken mid-chunk.
#[test]
fn matches_a_fifo_model_across_chunks_gaps_and_snapshots() {
    use std::collections::{HashSet, VecDeque};
    let (retention, capacity) = (5 * SECOND, 150_000);
    let mut dedup = Dedup::new(retention, capacity);
    let (mut fifo, mut set) = (VecDeque::<(i64, u128)>::new(), HashSet::<u128>::new());
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut now = 0i64;
    let mut kept = None;
    for round in 0..12u64 {
        // A quiet gap every third round: longer than the retention.
        now += if round % 3 == 2 { 7 * SECOND } else { SECOND };
        let burst = 20_000 + (round * 17_011) % 90_000;
        for n in 0..burst {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // One in eight draws repeats a recent id.
            let key = if rng.is_multiple_of(8) {
                round * 1_000_000 + n / 2
            } else {
                round * 1_000_000 + n
            };
            let t = now + (n as i64) * 1_000; // a microsecond per id
            let horizon = t - retention;
            while fifo.front().is_some_and(|&(at, _)| at < horizon) {
                set.remove(&fifo.pop_front().unwrap().1);
            }
            let fresh = set.insert(id(key));
            if fresh {
                fifo.push_back((t, id(key)));
                if fifo.len() > capacity {
                    set.remove(&fifo.pop_front().unwrap().1);
                }
            }
            assert_eq!(
                dedup.admit(id(key), Timestamp(t)),
                fresh,
                "round {round}, id {n}"
            );
        }
        assert_eq!(dedup.len(), fifo.len(), "round {round}");
        // A snapshot holds exactly the model, in order, and stays put.
        let snapshot = dedup.snapshot();
        let expected: Vec<u128> = fifo.iter().map(|&(_, i)| i).collect();
        let taken: Vec<u128> = snapshot.entries().map(|(_, i)| i).collect();
        assert_eq!(taken, expected, "round {round}");
        // The previous round's snapshot was left alone by this round.
        if let Some((previous, ids)) = kept.replace((snapshot, expected)) {
            assert!(previous.entries().map(|(_, i)| i).eq(ids), "round {round}");
        }
    }
}
