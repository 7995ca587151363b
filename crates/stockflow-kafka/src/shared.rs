//! What a Kafka-mode instance's queries read while its processor writes:
//! per partition, whether it is owned and restored, its levels, orders
//! and roll-ups, and the outcomes `?wait=applied` answers with.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use stockflow_core::rollup::RollupBook;
use stockflow_core::saga::SagaBook;
use stockflow_core::{Catalog, Partition};

/// A partition this instance does not own.
pub const NOT_OWNED: u8 = 0;

/// Owned, state being restored: queries answer 503.
pub const RESTORING: u8 = 1;

/// Owned and applying.
pub const ACTIVE: u8 = 2;

/// Why an applied input record changed nothing.
#[derive(Clone, Copy, Debug)]
pub enum Reason {
    Duplicate,
    Rejected(stockflow_core::Rejection),
}

/// The recent duplicate and refused input records of one partition, by
/// canonical offset, for `?wait=applied` answers.
#[derive(Default)]
pub struct Outcomes {
    recent: std::collections::VecDeque<(i64, Reason)>,
    /// Outcomes at or before this offset are no longer known: dropped for
    /// room, or applied by an earlier owner.
    pub unknown_through: i64,
}

/// Outcomes kept per partition (16 bytes each).
const OUTCOMES_KEPT: usize = 65_536;

impl Outcomes {
    pub(crate) fn extend(&mut self, found: Vec<(i64, Reason)>) {
        for entry in found {
            if self.recent.len() == OUTCOMES_KEPT {
                if let Some((offset, _)) = self.recent.pop_front() {
                    self.unknown_through = self.unknown_through.max(offset);
                }
            }
            self.recent.push_back(entry);
        }
    }

    /// Outcomes of offsets in `from..=to`, oldest first.
    pub fn between(&self, from: i64, to: i64) -> Vec<(i64, Reason)> {
        let start = self.recent.partition_point(|(o, _)| *o < from);
        self.recent
            .range(start..)
            .take_while(|(o, _)| *o <= to)
            .copied()
            .collect()
    }

    /// Starts over for a partition applied by someone else up to `next`.
    pub(crate) fn reset(&mut self, next: i64) {
        self.recent.clear();
        self.unknown_through = next - 1;
    }
}

/// What queries read while the processor writes.
pub struct Shared {
    /// Recent outcomes that were not plain applications, per partition.
    pub outcomes: Vec<Mutex<Outcomes>>,
    pub partitions: Vec<RwLock<Partition>>,
    /// The orders homed in each partition (the saga coordinators' state).
    pub books: Vec<RwLock<SagaBook>>,
    /// The levels of the SKUs homed in each partition, as their owners
    /// reported them: the SKU and region roll-ups.
    pub rollups: Vec<RwLock<RollupBook>>,
    /// The history of each owned partition (see [`super::history`]).
    pub history: Vec<RwLock<super::history::Book>>,
    /// Per partition, the id this processor writes its history records
    /// under: new each time it takes the partition (see [`super::history`]).
    pub writers: Vec<AtomicU64>,
    pub status: Vec<AtomicU8>,
    /// Next canonical offset to apply, per partition (valid when owned).
    pub applied: Vec<AtomicI64>,
    /// Changelog records left to read, per restoring partition.
    pub restore_left: Vec<AtomicI64>,
    pub events_applied: AtomicU64,
    /// Woken after every cycle, for `?wait=applied`.
    pub progress: tokio::sync::Notify,
    /// Set when the owned set changes, so membership is announced at once.
    pub ownership_changed: AtomicBool,
    /// Every product and location: each instance reads the whole catalog
    /// topic, so catalog reads are local.
    pub catalog: RwLock<Catalog>,
    /// Next catalog-topic offset to read: writes wait for it to pass theirs.
    pub catalog_applied: AtomicI64,
    /// This instance's events and cycle latency per second, and the
    /// sources it heard from: its part of the cluster's overview.
    pub activity: stockflow_service::activity::Activity,
}

impl Shared {
    pub fn new(partitions: u16) -> Shared {
        let n = partitions as usize;
        Shared {
            partitions: (0..n).map(|_| RwLock::new(Partition::default())).collect(),
            books: (0..n).map(|_| RwLock::new(SagaBook::default())).collect(),
            rollups: (0..n).map(|_| RwLock::new(RollupBook::default())).collect(),
            history: (0..n).map(|_| RwLock::default()).collect(),
            writers: (0..n).map(|_| AtomicU64::new(0)).collect(),
            status: (0..n).map(|_| AtomicU8::new(NOT_OWNED)).collect(),
            outcomes: (0..n).map(|_| Mutex::new(Outcomes::default())).collect(),
            applied: (0..n).map(|_| AtomicI64::new(0)).collect(),
            restore_left: (0..n).map(|_| AtomicI64::new(0)).collect(),
            events_applied: AtomicU64::new(0),
            progress: tokio::sync::Notify::new(),
            ownership_changed: AtomicBool::new(false),
            catalog: RwLock::new(Catalog::default()),
            catalog_applied: AtomicI64::new(0),
            activity: stockflow_service::activity::Activity::default(),
        }
    }

    /// Waits, woken after every cycle, until `check` has an answer; `None`
    /// once `deadline` passes without one.
    pub async fn wait_for<T>(
        &self,
        deadline: Instant,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        loop {
            let notified = self.progress.notified();
            if let Some(answer) = check() {
                return Some(answer);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }

    pub fn status(&self, p: u16) -> u8 {
        self.status[p as usize].load(Ordering::Acquire)
    }

    /// The partitions this instance owns (restoring or active).
    pub fn owned_partitions(&self) -> Vec<u16> {
        (0..self.status.len() as u16)
            .filter(|p| self.status(*p) != NOT_OWNED)
            .collect()
    }

    /// (partition, status, next canonical offset applied) of owned ones.
    pub fn owned(&self) -> Vec<(u16, u8, i64)> {
        (0..self.status.len() as u16)
            .filter_map(|p| {
                let s = self.status(p);
                (s != NOT_OWNED).then(|| (p, s, self.applied[p as usize].load(Ordering::Acquire)))
            })
            .collect()
    }
}

/// The letters resolved so far, as this instance has read the markers.
#[derive(Default)]
pub struct Resolved {
    pub(crate) ids: RwLock<std::collections::HashSet<i64>>,
    /// The DLQ offset read up to (exclusive).
    pub(crate) read_to: AtomicI64,
}

impl Resolved {
    pub fn contains(&self, id: i64) -> bool {
        self.ids.read().contains(&id)
    }
}
