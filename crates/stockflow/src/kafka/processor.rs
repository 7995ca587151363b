//! The owner of canonical partitions: applies their events with the
//! engine core, writes each batch to the changelog with the positions it
//! ends at, and publishes levels, alerts and in-transit effects.
//!
//! One thread, synchronous like the embedded appliers: it polls the group
//! consumer (canonical, cooperative-sticky) and a manually assigned
//! consumer of the repartition partitions it owns (group assignors cannot
//! promise that canonical p and repartition p go to the same member), then
//! per cycle: apply, produce, flush (the cycle's one wait for the broker),
//! commit the group offsets, publish positions. Rebalance callbacks run on
//! this thread too: a revoked partition is flushed and snapshotted before
//! it is released; an assigned one is restored before its first record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use stockflow_core::orders::hold_changes;
use stockflow_core::rollup::{sku_home, RollupBook};
use stockflow_core::saga::{order_home, reservation_line, LineAction, SagaBook, StepOut, ToHome};
use stockflow_core::{
    admit, parse_body, route, BodyFormat, Catalog, Dedup, EngineConfig, Partition, PartitionImage,
    PartitionSnapshot, PriceChange, Timestamp,
};

use super::wire::{
    canonical_json, decode_reports, from_millis, push_report, ChangelogRecord, Positions,
    SnapshotChunk, SnapshotIndex, SNAPSHOT_KEY_PREFIX,
};
use super::{level_key, Deliveries, KafkaSettings};
use crate::json::AlertOut;

/// A partition this instance does not own.
pub const NOT_OWNED: u8 = 0;
/// Owned, state being restored: queries answer 503.
pub const RESTORING: u8 = 1;
/// Owned and applying.
pub const ACTIVE: u8 = 2;

/// Most input records applied in one cycle: each cycle waits for the
/// broker twice (outputs, then changelog records), so cycles must be large
/// for throughput (2,000 gave 9k events/s on tansu, 20,000 gives 58k).
const CYCLE_RECORDS_MAX: usize = 20_000;
/// Most canonical records in one changelog record: ~100 bytes each keeps
/// a record well under Kafka's 1 MB default message size.
const CHANGELOG_EVENTS_MAX: usize = 4_000;
/// A local snapshot of a partition after this many applied records.
const SNAPSHOT_EVERY: u64 = 200_000;
/// Most changelog records between two changelog snapshots of a
/// partition (the keys to tombstone are kept until the next one).
const CHANGELOG_SNAPSHOT_RECORDS_MAX: usize = 20_000;
/// Bytes of state per changelog snapshot chunk, under Kafka's 1 MB
/// default message size.
const SNAPSHOT_CHUNK_BYTES: usize = 512 * 1024;
/// A restored partition: its state and how many changelog records it
/// took, and how long.
type Restored = (u16, Duration, anyhow::Result<(Owned, u64)>);

/// How often an idle processor looks for input on either topic.
const WAIT_SLICE: Duration = Duration::from_millis(5);
/// Partitions restored at once by a new owner.
const RESTORE_THREADS: usize = 12;
/// A restore has read the whole changelog partition once past its high
/// watermark nothing more arrives for this long.
const RESTORE_QUIET: Duration = Duration::from_millis(300);

/// A changelog snapshot being read back, chunk by chunk.
#[derive(Default)]
struct Assembly {
    positions: Positions,
    count: u32,
    next: u32,
    bytes: Vec<u8>,
}

impl Assembly {
    /// Adds the next chunk; the whole snapshot once its last chunk is in.
    /// Chunks out of order (an interrupted snapshot) start nothing.
    fn add(&mut self, chunk: SnapshotChunk) -> Option<(Positions, Vec<u8>)> {
        if chunk.index == 0 {
            *self = Assembly {
                positions: chunk.positions,
                count: chunk.count,
                next: 1,
                bytes: chunk.bytes,
            };
        } else if chunk.index == self.next
            && chunk.positions == self.positions
            && chunk.count == self.count
        {
            self.bytes.extend_from_slice(&chunk.bytes);
            self.next += 1;
        } else {
            *self = Assembly::default();
            return None;
        }
        if self.next != self.count {
            return None;
        }
        let whole = std::mem::take(self);
        Some((whole.positions, whole.bytes))
    }
}

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
    fn extend(&mut self, found: Vec<(i64, Reason)>) {
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
    fn reset(&mut self, next: i64) {
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
    pub activity: crate::activity::Activity,
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
            activity: crate::activity::Activity::default(),
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

/// The engine state of one owned partition besides its levels.
struct Owned {
    dedup: Dedup,
    /// In-transit events from other partitions, by eventId.
    transit: Dedup,
    positions: Positions,
    now: Timestamp,
    /// Changelog offset after the last record folded into this state.
    changelog_next: i64,
    since_snapshot: u64,
    since_changelog_snapshot: u64,
    /// Keys of this owner's changelog records since its last changelog
    /// snapshot: tombstoned once a snapshot covers them.
    logged_keys: Vec<String>,
    /// Chunks of the last changelog snapshot written (their keys are
    /// reused by the next one; extra ones are tombstoned).
    snapshot_chunks: u32,
}

/// A partition's state on local disk, so that a partition coming back to
/// this instance reads only the changelog written since.
#[derive(Serialize)]
struct LocalSnapshotOut<'a> {
    positions: Positions,
    now: Timestamp,
    changelog_next: i64,
    dedup: Vec<u8>,
    transit: Vec<u8>,
    partition: &'a PartitionImage,
    orders: &'a SagaBook,
    rollups: &'a RollupBook,
}

#[derive(Deserialize)]
struct LocalSnapshotIn {
    positions: Positions,
    now: Timestamp,
    changelog_next: i64,
    dedup: Vec<u8>,
    transit: Vec<u8>,
    partition: PartitionSnapshot,
    orders: SagaBook,
    rollups: RollupBook,
}

/// A partition's whole state, as a snapshot gives it.
struct State {
    owned: Owned,
    partition: Partition,
    orders: SagaBook,
    rollups: RollupBook,
}

impl State {
    /// Puts the shared parts where queries read them; the rest is the
    /// processor's.
    fn install(self, shared: &Shared, p: u16) -> Owned {
        *shared.partitions[p as usize].write() = self.partition;
        *shared.books[p as usize].write() = self.orders;
        *shared.rollups[p as usize].write() = self.rollups;
        self.owned
    }
}

/// Everything the thread owns; the rebalance callbacks reach it through
/// the consumer's context.
pub struct Processor {
    settings: KafkaSettings,
    engine: EngineConfig,
    data_dir: PathBuf,
    shared: Arc<Shared>,
    producer: BaseProducer<Deliveries>,
    repartition: BaseConsumer,
    owned: HashMap<u16, Owned>,
    /// Canonical partitions to read again from an offset.
    seek_back: Vec<(u16, i64)>,
    /// Repartition partitions to read again from an offset.
    reread: Vec<(u16, i64)>,
    canonical_gaps: super::Contiguity,
    transit_gaps: super::Contiguity,
    canonical_probe: super::Probe,
    transit_probe: super::Probe,
    /// The cycle's changelog records (partition, key, encoded record),
    /// held back until the cycle's outputs are acknowledged. The key says
    /// the positions the record ends at, for people reading the topic.
    changelog_due: Vec<(u16, String, Vec<u8>)>,
    /// When each home partition was last sent a Tick.
    ticked: HashMap<u16, Instant>,
    /// Reads the catalog topic (its one partition, from the start).
    catalog_reader: BaseConsumer,
}

/// The group consumer's context: rebalances go to the processor.
pub struct Rebalancer {
    processor: Arc<Mutex<Processor>>,
}

impl ClientContext for Rebalancer {}

impl ConsumerContext for Rebalancer {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut processor = self.processor.lock();
            let partitions = processor.canonical_partitions(list);
            processor.revoke(&partitions);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let mut processor = self.processor.lock();
            let partitions = processor.canonical_partitions(list);
            processor.assign(&partitions);
        }
    }
}

/// One input record of a cycle.
struct Input {
    offset: i64,
    timestamp_ms: i64,
    payload: Vec<u8>,
    kind: InputKind,
}

/// What a repartition record carries, told by its header.
#[derive(Clone, Copy, PartialEq, Eq)]
enum InputKind {
    /// A canonical event (JSON): an in-transit effect or a saga's line event.
    Event,
    /// A message to an order's home ([`ToHome`] JSON): `stockflow-order`.
    Order,
    /// Level reports to a SKU's home (postcard `LevelReport`s one after
    /// another, see `wire::push_report`): `stockflow-rollup`.
    Rollup,
}

impl Input {
    fn of<M: Message>(m: &M) -> Input {
        Input {
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
            payload: m.payload().unwrap_or_default().to_vec(),
            kind: match m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == ORDER_HEADER || h.key == ROLLUP_HEADER)
            }) {
                Some(h) if h.key == ORDER_HEADER => InputKind::Order,
                Some(_) => InputKind::Rollup,
                None => InputKind::Event,
            },
        }
    }
}

/// The header that marks a repartition record as an order saga message.
pub const ORDER_HEADER: &str = "stockflow-order";
/// The header that marks a repartition record as level reports for
/// SKU roll-ups.
pub const ROLLUP_HEADER: &str = "stockflow-rollup";
/// Level reports per repartition record, so one stays far below Kafka's
/// message size limit (a report is under 600 bytes at the longest ids).
const REPORTS_PER_MESSAGE: usize = 1_000;

fn poison(what: &str) -> ! {
    tracing::error!("{what}; stopping so that nothing is applied without its changelog record");
    std::process::abort()
}

impl Processor {
    fn canonical_partitions(&self, list: &TopicPartitionList) -> Vec<u16> {
        list.elements()
            .iter()
            .filter(|e| e.topic() == self.settings.topics.canonical)
            .map(|e| e.partition() as u16)
            .collect()
    }

    fn snapshot_path(&self, p: u16) -> PathBuf {
        self.data_dir.join(format!("partition-{p:05}.snap"))
    }

    /// Flushes what partitions `revoked` produced, snapshots and releases them.
    fn revoke(&mut self, revoked: &[u16]) {
        if revoked.is_empty() {
            return;
        }
        if let Err(error) = super::flush(&self.producer, Duration::from_secs(30)) {
            poison(&format!("flushing before a revocation: {error}"));
        }
        self.check_deliveries();
        for &p in revoked {
            if let Some(mut owned) = self.owned.remove(&p) {
                self.note_changelog(p, &mut owned);
                if let Err(error) = self.write_snapshot(p, &owned) {
                    tracing::warn!(partition = p, %error, "local snapshot not written");
                }
            }
            self.shared.status[p as usize].store(NOT_OWNED, Ordering::Release);
            *self.shared.partitions[p as usize].write() = Partition::default();
            *self.shared.books[p as usize].write() = SagaBook::default();
            *self.shared.rollups[p as usize].write() = RollupBook::default();
            self.canonical_probe.forget(i32::from(p));
            self.transit_probe.forget(i32::from(p));
        }
        self.reassign_repartition();
        self.shared.ownership_changed.store(true, Ordering::Release);
        tracing::info!(?revoked, "partitions released");
    }

    /// Restores partitions `assigned` (local snapshot, then the changelog).
    fn assign(&mut self, assigned: &[u16]) {
        // A partition assigned again without a revocation in between (seen
        // on tansu) keeps its live state: it is newer than any restore.
        let assigned: Vec<u16> = assigned
            .iter()
            .copied()
            .filter(|p| {
                let again = self.owned.contains_key(p);
                if again {
                    tracing::info!(
                        partition = p,
                        "assigned again while owned; keeping its state"
                    );
                }
                if !again {
                    // A new tenure: history records under a new writer id.
                    self.shared.writers[*p as usize].store(rand::random(), Ordering::Release);
                }
                !again
            })
            .collect();
        let assigned = &assigned[..];
        for &p in assigned {
            self.shared.status[p as usize].store(RESTORING, Ordering::Release);
        }
        self.shared.ownership_changed.store(true, Ordering::Release);
        let index = if assigned.is_empty() {
            HashMap::new()
        } else {
            self.read_index()
        };
        // Partitions restore side by side: each has its own reader and
        // state, and most of a restore is waiting for the broker (the
        // quiet wait at the end of each changelog partition alone is
        // RESTORE_QUIET).
        let restored: Vec<Restored> = {
            let this = &*self;
            let index = &index;
            std::thread::scope(|scope| {
                let workers: Vec<_> = assigned
                    .chunks(assigned.len().div_ceil(RESTORE_THREADS).max(1))
                    .map(|some| {
                        scope.spawn(move || {
                            some.iter()
                                .map(|&p| {
                                    let started = Instant::now();
                                    let result = this.restore(p, index.get(&p));
                                    (p, started.elapsed(), result)
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().expect("a restore thread panicked"))
                    .collect()
            })
        };
        for (p, took, result) in restored {
            match result {
                Ok((owned, records)) => {
                    self.shared.applied[p as usize]
                        .store(owned.positions.canonical, Ordering::Release);
                    self.shared.outcomes[p as usize]
                        .lock()
                        .reset(owned.positions.canonical);
                    self.canonical_probe
                        .placed(i32::from(p), owned.positions.canonical);
                    self.owned.insert(p, owned);
                    self.shared.status[p as usize].store(ACTIVE, Ordering::Release);
                    tracing::info!(
                        partition = p,
                        changelog_records = records,
                        ms = took.as_millis() as u64,
                        "partition restored"
                    );
                }
                Err(error) => poison(&format!("restoring partition {p}: {error:#}")),
            }
        }
        self.reassign_repartition();
        self.shared.ownership_changed.store(true, Ordering::Release);
    }

    /// The repartition consumer reads exactly the owned partitions, each
    /// from its state's position.
    fn reassign_repartition(&mut self) {
        for p in self.owned.keys() {
            self.transit_gaps.reset(i32::from(*p));
        }
        self.assign_repartition(&HashMap::new());
    }

    /// Makes the repartition consumer read exactly the owned partitions:
    /// new ones from `from` or their state's position, ones in `from` that
    /// it reads already moved there by a seek. Incremental, never a whole
    /// new assignment: librdkafka 2.12 can assert (a duplicate FETCH_STOP,
    /// librdkafka#5573) when assignments are replaced in quick succession.
    fn assign_repartition(&mut self, from: &HashMap<u16, i64>) {
        let topic = self.settings.topics.repartition.clone();
        let current: std::collections::HashSet<i32> = match self.repartition.assignment() {
            Ok(list) => list.elements().iter().map(|e| e.partition()).collect(),
            Err(error) => poison(&format!("reading the repartition assignment: {error}")),
        };
        let mut gone = TopicPartitionList::new();
        for &p in &current {
            if !self.owned.contains_key(&(p as u16)) {
                gone.add_partition(&topic, p);
                self.transit_probe.forget(p);
            }
        }
        if gone.count() > 0 {
            if let Err(error) = self.repartition.incremental_unassign(&gone) {
                poison(&format!("releasing repartition partitions: {error}"));
            }
        }
        let wanted: Vec<(i32, i64, bool)> = self
            .owned
            .iter()
            .map(|(p, owned)| {
                let p = i32::from(*p);
                let offset = from.get(&(p as u16)).copied();
                (
                    p,
                    offset.unwrap_or(owned.positions.repartition),
                    offset.is_some(),
                )
            })
            .collect();
        let mut added = TopicPartitionList::new();
        for (p, offset, moved) in wanted {
            if !current.contains(&p) {
                let _ = added.add_partition_offset(&topic, p, Offset::Offset(offset));
                self.transit_probe.placed(p, offset);
            } else if moved {
                match self.repartition.seek(
                    &topic,
                    p,
                    Offset::Offset(offset),
                    Duration::from_secs(5),
                ) {
                    Ok(()) => self.transit_probe.placed(p, offset),
                    // Not fetching yet: again next cycle.
                    Err(_) => self.reread.push((p as u16, offset)),
                }
            }
        }
        if added.count() > 0 {
            if let Err(error) = self.repartition.incremental_assign(&added) {
                poison(&format!("assigning repartition partitions: {error}"));
            }
        }
    }

    fn fresh(&self) -> State {
        // Empty, with the catalog's rules (roll-up groups, thresholds).
        let partition = Partition::restore(
            stockflow_core::PartitionSnapshot::default(),
            &self.shared.catalog.read(),
            self.engine.timers,
        );
        let owned = Owned {
            dedup: Dedup::new(self.engine.dedup_retention_ns, self.engine.dedup_capacity),
            transit: Dedup::new(self.engine.dedup_retention_ns, self.engine.dedup_capacity),
            positions: Positions::default(),
            now: Timestamp::default(),
            changelog_next: 0,
            since_snapshot: 0,
            since_changelog_snapshot: 0,
            logged_keys: Vec::new(),
            snapshot_chunks: 0,
        };
        State {
            owned,
            partition,
            orders: SagaBook::default(),
            rollups: RollupBook::default(),
        }
    }

    fn load_snapshot(&self, p: u16) -> anyhow::Result<Option<State>> {
        let path = self.snapshot_path(p);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = stockflow_log::read_snapshot(&path)?;
        self.decode_snapshot(&bytes).map(Some)
    }

    /// A partition's state from an encoded snapshot (local, or assembled
    /// from the changelog's snapshot chunks).
    fn decode_snapshot(&self, bytes: &[u8]) -> anyhow::Result<State> {
        let local: LocalSnapshotIn = postcard::from_bytes(bytes)?;
        let dedup = Dedup::restore(
            &stockflow_core::DedupSnapshot::decode(&local.dedup)?,
            self.engine.dedup_retention_ns,
            self.engine.dedup_capacity,
        );
        let transit = Dedup::restore(
            &stockflow_core::DedupSnapshot::decode(&local.transit)?,
            self.engine.dedup_retention_ns,
            self.engine.dedup_capacity,
        );
        let partition = Partition::restore(
            local.partition,
            &self.shared.catalog.read(),
            self.engine.timers,
        );
        let owned = Owned {
            dedup,
            transit,
            positions: local.positions,
            now: local.now,
            changelog_next: local.changelog_next,
            since_snapshot: 0,
            since_changelog_snapshot: 0,
            logged_keys: Vec::new(),
            snapshot_chunks: 0,
        };
        Ok(State {
            owned,
            partition,
            orders: local.orders,
            rollups: local.rollups,
        })
    }

    /// The state of partition `p`: its local snapshot if it has one that
    /// the changelog continues, then every changelog record after it.
    /// The levels are built in place in the shared partition, so
    /// `?stale=true` queries see the restore's progress.
    fn restore(&self, p: u16, hint: Option<&SnapshotIndex>) -> anyhow::Result<(Owned, u64)> {
        let topic = &self.settings.topics.changelog;
        let reader: BaseConsumer<EndIsNews> = self
            .settings
            .client(&[
                ("enable.auto.commit", "false"),
                ("group.id", "stockflow-restore"),
                ("fetch.wait.max.ms", "50"),
                // With transactions the end is the last stable offset,
                // which a read_committed reader is told about.
                (
                    "enable.partition.eof",
                    if self.settings.transactions {
                        "true"
                    } else {
                        "false"
                    },
                ),
            ])
            .create_with_context(EndIsNews)?;
        let (low, mut high) =
            reader.fetch_watermarks(topic, i32::from(p), Duration::from_secs(30))?;
        let state = match self.load_snapshot(p) {
            Ok(Some(state))
                if state.owned.changelog_next >= low && state.owned.changelog_next <= high =>
            {
                state
            }
            Ok(Some(_)) => {
                tracing::warn!(partition = p, "local snapshot does not match the changelog; restoring from the changelog alone");
                self.fresh()
            }
            Ok(None) => self.fresh(),
            Err(error) => {
                tracing::warn!(partition = p, %error, "local snapshot unreadable; restoring from the changelog alone");
                self.fresh()
            }
        };
        let mut owned = state.install(&self.shared, p);
        let fallback = owned.changelog_next.max(low);
        // The changelog's latest snapshot, when it is ahead of what the
        // local one gave: read from there instead.
        let (at, state) = (owned.positions.canonical, owned.positions.repartition);
        let mut from_snapshot = hint
            .filter(|h| h.offset > fallback && h.offset < high)
            .filter(|h| h.canonical >= at && h.repartition >= state)
            .map(|h| h.offset);
        let start = from_snapshot.unwrap_or(fallback);
        let mut assembly = Assembly::default();
        let left = &self.shared.restore_left[p as usize];
        left.store((high - start).max(0), Ordering::Release);
        let mut records = 0u64;
        {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(topic, i32::from(p), Offset::Offset(start))?;
            reader.assign(&list)?;
            let mut next = start;
            let mut gaps = super::Contiguity::with_transactions(self.settings.transactions);
            // Where the reader was last placed, whether anything arrived
            // since, and how far back to look if not (see `Probe`: a
            // fetch from inside tansu's last batch returns nothing, which
            // must not pass for the end of the changelog).
            let (mut placed, mut heard, mut step) = (start, false, 1i64);
            let mut last_log = Instant::now();
            loop {
                // Past the high watermark, read on until the partition is
                // quiet: tansu's watermarks can lag what a fetch returns,
                // and stopping short would make this owner write records
                // that fork from ones it never read.
                let transactions = self.settings.transactions;
                let wait = if next < high || transactions {
                    Duration::from_secs(30)
                } else {
                    RESTORE_QUIET
                };
                let message = match reader.poll(wait) {
                    Some(Ok(m)) => m,
                    Some(Err(KafkaError::PartitionEOF(_))) if transactions => break,
                    Some(Err(error)) => anyhow::bail!("reading the changelog: {error}"),
                    None if transactions => {
                        anyhow::bail!(
                            "no end of changelog partition {p} in 30 s (at offset {next})"
                        )
                    }
                    None if next < high => {
                        anyhow::bail!("the changelog stopped at offset {next} of {high}")
                    }
                    None if !heard && placed > low => {
                        let back = (placed - step).max(low);
                        step = step.saturating_mul(2);
                        reposition(&reader, topic, p, back)?;
                        continue;
                    }
                    None => {
                        // Quiet: done, unless the watermark moved meanwhile.
                        let (_, now_high) = reader.fetch_watermarks(
                            topic,
                            i32::from(p),
                            Duration::from_secs(30),
                        )?;
                        if now_high > next {
                            high = now_high;
                            continue;
                        }
                        break;
                    }
                };
                heard = true;
                match gaps.check(i32::from(p), next, message.offset(), || Some(low)) {
                    super::Next::Old => continue,
                    super::Next::Take => {}
                    super::Next::Gap => {
                        tracing::warn!(
                            partition = p,
                            expected = next,
                            got = message.offset(),
                            "changelog records deleted by retention; going on"
                        )
                    }
                    super::Next::Seek(offset) => {
                        reposition(&reader, topic, p, offset)?;
                        (placed, heard, step) = (offset, false, 1);
                        continue;
                    }
                }
                next = message.offset() + 1;
                let Some(payload) = message.payload() else {
                    continue;
                };
                let chunk = message
                    .key()
                    .is_some_and(|k| k.starts_with(SNAPSHOT_KEY_PREFIX.as_bytes()))
                    .then(|| SnapshotChunk::decode(payload))
                    .transpose()
                    .map_err(|e| unreadable(topic, p, message.offset(), &e))?;
                if let Some(expected) = from_snapshot.take() {
                    let found = chunk.as_ref().is_some_and(|c| c.index == 0)
                        && message.offset() == expected;
                    if !found {
                        // The index named a snapshot that is not there (an
                        // aborted transaction's): read everything instead.
                        tracing::warn!(partition = p, offset = expected, "no changelog snapshot where the index says; reading the changelog from the start");
                        reposition(&reader, topic, p, fallback)?;
                        next = fallback;
                        gaps = super::Contiguity::with_transactions(self.settings.transactions);
                        (placed, heard, step) = (fallback, false, 1);
                        continue;
                    }
                }
                if let Some(chunk) = chunk {
                    let Some((positions, bytes)) = assembly.add(chunk) else {
                        continue;
                    };
                    let s = owned.positions;
                    if positions.canonical >= s.canonical && positions.repartition >= s.repartition
                    {
                        let adopted = self
                            .decode_snapshot(&bytes)
                            .map_err(|e| unreadable(topic, p, message.offset(), &*e))?
                            .install(&self.shared, p);
                        metrics::counter!("stockflow_kafka_restored_from_snapshot_total")
                            .increment(1);
                        owned = Owned {
                            changelog_next: next,
                            ..adopted
                        };
                        records += 1;
                    }
                    continue;
                }
                assembly = Assembly::default();
                if let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    // Covered, and so tombstoned, by this owner's next snapshot.
                    owned.logged_keys.push(key.to_owned());
                }
                let record = ChangelogRecord::decode(payload)
                    .map_err(|e| unreadable(topic, p, message.offset(), &e))?;
                let folded = {
                    let mut partition = self.shared.partitions[p as usize].write();
                    self.fold(p, &mut owned, &mut partition, record)?
                };
                if folded {
                    records += 1;
                }
                left.store((high - next).max(0), Ordering::Release);
                if last_log.elapsed() > Duration::from_secs(5) {
                    tracing::info!(
                        partition = p,
                        left = high - next,
                        "restoring from the changelog"
                    );
                    last_log = Instant::now();
                }
            }
            owned.changelog_next = next;
        }
        left.store(0, Ordering::Release);
        metrics::counter!("stockflow_kafka_restored_records_total").increment(records);
        Ok((owned, records))
    }

    /// Applies one changelog record to a restoring state, exactly as the
    /// cycle that wrote it did. False if the state already holds it.
    fn fold(
        &self,
        p: u16,
        owned: &mut Owned,
        partition: &mut Partition,
        mut record: ChangelogRecord,
    ) -> anyhow::Result<bool> {
        let state = owned.positions;
        if record.to.canonical <= state.canonical && record.to.repartition <= state.repartition {
            return Ok(false);
        }
        if record.from != state {
            // Two owners wrote this partition for a while (a group that
            // assigned it twice, or a zombie without transactions to fence
            // it): their records form two chains from one point. Both are
            // folds of the same canonical input in the same order, so
            // either chain is a correct state; the first one read wins and
            // the other's records are skipped. Its outputs are harmless:
            // levels are latest-wins by version, transit events are
            // deduplicated by eventId at the target.
            tracing::warn!(
                partition = p,
                from = ?record.from,
                state = ?state,
                "changelog record of a second owner's chain skipped"
            );
            metrics::counter!("stockflow_kafka_changelog_forks_total").increment(1);
            return Ok(false);
        }
        for event in record.events.iter() {
            owned
                .dedup
                .admit(stockflow_core::event_id_hash(event.event_id), record.now);
        }
        for event in record.transit.iter() {
            owned
                .transit
                .admit(stockflow_core::event_id_hash(event.event_id), record.now);
        }
        let n = self.settings.partitions;
        record.events.compute_routes(n);
        record.transit.compute_routes(n);
        let (mut exceptions, mut changes) = (Vec::new(), Vec::new());
        partition.apply_batch(p, &record.events, record.now, &mut exceptions, &mut changes);
        partition.apply_batch(
            p,
            &record.transit,
            record.now,
            &mut exceptions,
            &mut changes,
        );
        partition.tick(record.now);
        let mut book = self.shared.books[p as usize].write();
        let mut asked = StepOut::default();
        for message in &record.orders {
            book.apply(message, record.now, &mut asked);
        }
        book.expire(record.now, &mut asked);
        let mut rollups = self.shared.rollups[p as usize].write();
        for payload in &record.rollups {
            for r in decode_reports(payload)? {
                rollups.apply(r.sku, r.location_id, r.version, r.numbers);
            }
        }
        owned.positions = record.to;
        owned.now = record.now;
        Ok(true)
    }

    fn note_changelog(&self, p: u16, owned: &mut Owned) {
        if let Some(last) = self
            .producer
            .context()
            .changelog_last
            .lock()
            .get(&i32::from(p))
        {
            owned.changelog_next = owned.changelog_next.max(last + 1);
        }
    }

    fn write_snapshot(&self, p: u16, owned: &Owned) -> anyhow::Result<()> {
        let bytes = self.encode_snapshot(p, owned)?;
        stockflow_log::write_snapshot(&self.snapshot_path(p), &bytes)?;
        Ok(())
    }

    fn encode_snapshot(&self, p: u16, owned: &Owned) -> anyhow::Result<Vec<u8>> {
        let image = self.shared.partitions[p as usize].read().snapshot();
        // Encoded under read locks, not copied: only this thread writes
        // them, and queries may read meanwhile.
        let orders = self.shared.books[p as usize].read();
        let rollups = self.shared.rollups[p as usize].read();
        let out = LocalSnapshotOut {
            positions: owned.positions,
            now: owned.now,
            changelog_next: owned.changelog_next,
            dedup: owned.dedup.snapshot().encode(),
            transit: owned.transit.snapshot().encode(),
            partition: &image,
            orders: &orders,
            rollups: &rollups,
        };
        Ok(postcard::to_stdvec(&out)?)
    }

    fn check_deliveries(&self) {
        if let Some(failure) = self.producer.context().failure() {
            poison(&failure);
        }
    }

    fn dead_letter(&self, topic: &str, partition: i32, offset: i64, payload: &[u8], reason: &str) {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "source-topic",
                value: Some(topic),
            })
            .insert(Header {
                key: "source-partition",
                value: Some(&partition.to_string()),
            })
            .insert(Header {
                key: "source-offset",
                value: Some(&offset.to_string()),
            });
        self.send(
            BaseRecord::<(), [u8]>::to(&self.settings.topics.dlq)
                .payload(payload)
                .headers(headers),
        );
        metrics::counter!("stockflow_events_rejected_total").increment(1);
    }

    /// Queues a record, waiting for room if librdkafka's queue is full.
    fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
        &self,
        record: BaseRecord<'_, K, P>,
    ) {
        if let Err(error) = super::send(&self.producer, record) {
            poison(&format!("producing: {error}"));
        }
    }

    /// Parses input records into a batch; refused ones go to the DLQ.
    /// Returns the batch and the largest record timestamp.
    /// Also returns the offset of each parsed line (events' `index`).
    fn parse(
        &self,
        topic: &str,
        p: u16,
        inputs: &[Input],
    ) -> (stockflow_core::Batch, i64, Vec<i64>) {
        let mut text = Vec::with_capacity(inputs.iter().map(|i| i.payload.len() + 1).sum());
        let mut lines: Vec<&Input> = Vec::with_capacity(inputs.len());
        let mut newest = 0i64;
        for input in inputs {
            newest = newest.max(input.timestamp_ms);
            if input.payload.iter().all(u8::is_ascii_whitespace) {
                self.dead_letter(
                    topic,
                    i32::from(p),
                    input.offset,
                    &input.payload,
                    "empty message",
                );
                continue;
            }
            // Raw newlines can only be whitespace in valid JSON: one line each.
            text.extend(
                input
                    .payload
                    .iter()
                    .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
            );
            text.push(b'\n');
            lines.push(input);
        }
        let parsed = match parse_body(&text, BodyFormat::Ndjson, lines.len().max(1)) {
            Ok(parsed) => parsed,
            Err(error) => {
                for input in &lines {
                    self.dead_letter(
                        topic,
                        i32::from(p),
                        input.offset,
                        &input.payload,
                        &error.to_string(),
                    );
                }
                return (stockflow_core::Batch::default(), newest, Vec::new());
            }
        };
        for rejected in &parsed.rejected {
            let input = lines[rejected.index as usize];
            self.dead_letter(
                topic,
                i32::from(p),
                input.offset,
                &input.payload,
                &rejected.reason,
            );
        }
        let mut batch = parsed.batch;
        // A record in the wrong partition would put its level where no
        // query looks: refuse it, saying how to produce it.
        let n = self.settings.partitions;
        let wrong: Vec<usize> = batch
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                topic == self.settings.topics.canonical && route(e.sku, e.location_id, n) != p
            })
            .map(|(i, _)| i)
            .collect();
        for &i in &wrong {
            let input = lines[batch.get(i).index as usize];
            let right = {
                let e = batch.get(i);
                route(e.sku, e.location_id, n)
            };
            self.dead_letter(topic, i32::from(p), input.offset, &input.payload,
                &format!("wrong partition: this key belongs in partition {right}; produce to a raw topic, or with stockflow's partitioner"));
        }
        if !wrong.is_empty() {
            batch.retain_positions(|i| wrong.binary_search(&i).is_err());
        }
        (batch, newest, lines.iter().map(|i| i.offset).collect())
    }

    /// Makes the cycle durable in two steps: first its outputs (in-transit
    /// effects, levels, alerts, dead letters), then the changelog records
    /// that say the cycle happened. Without broker transactions the two
    /// cannot be one write, so the order is what keeps exactly-once: a
    /// crash in between leaves outputs without their changelog record, and
    /// the next owner applies the input again and produces them again —
    /// in-transit effects are deduplicated by eventId at their target,
    /// levels are latest-wins. The other order could lose an in-transit
    /// effect whose changelog record survived it.
    fn commit_cycle(&mut self, group: Option<&ConsumerGroupMetadata>, processed: &[u16]) {
        if self.settings.transactions {
            return self.commit_transaction(group, processed);
        }
        if let Err(error) = super::flush(&self.producer, Duration::from_secs(60)) {
            poison(&format!("flushing a cycle's outputs: {error}"));
        }
        self.check_deliveries();
        self.send_changelog_due();
        if let Err(error) = super::flush(&self.producer, Duration::from_secs(60)) {
            poison(&format!("flushing a cycle's changelog records: {error}"));
        }
        self.check_deliveries();
    }

    /// Hands the cycle's held-back changelog records to the producer.
    fn send_changelog_due(&mut self) {
        for (p, key, record) in std::mem::take(&mut self.changelog_due) {
            self.send(
                BaseRecord::to(&self.settings.topics.changelog)
                    .partition(i32::from(p))
                    .key(&key)
                    .payload(&record),
            );
        }
    }

    /// With transactions the cycle is one: outputs, changelog records and
    /// the group's offsets of the partitions processed commit together or
    /// not at all (read_committed readers never see an aborted cycle).
    /// Any failure stops the process; the restart's `init_transactions`
    /// aborts what was open and the state comes back from the changelog.
    fn commit_transaction(&mut self, group: Option<&ConsumerGroupMetadata>, processed: &[u16]) {
        let mut offsets = TopicPartitionList::new();
        self.send_changelog_due();
        for p in processed {
            if let Some(owned) = self.owned.get(p) {
                let _ = offsets.add_partition_offset(
                    &self.settings.topics.canonical,
                    i32::from(*p),
                    Offset::Offset(owned.positions.canonical),
                );
            }
        }
        let timeout = Duration::from_secs(60);
        if offsets.count() > 0 {
            let Some(group) = group else {
                poison("no consumer group metadata to commit offsets with the transaction");
            };
            if let Err(error) = self
                .producer
                .send_offsets_to_transaction(&offsets, group, timeout)
            {
                poison(&format!("adding offsets to the transaction: {error}"));
            }
        }
        if let Err(error) = self.producer.commit_transaction(timeout) {
            poison(&format!("committing a cycle's transaction: {error}"));
        }
        self.check_deliveries();
        if let Err(error) = self.producer.begin_transaction() {
            poison(&format!("beginning the next transaction: {error}"));
        }
    }

    /// The order messages among a cycle's repartition records, and their
    /// newest timestamp; unreadable ones go to the DLQ.
    fn order_messages(&self, p: u16, inputs: &[&Input]) -> (Vec<ToHome>, i64) {
        let mut messages = Vec::new();
        let mut newest = 0i64;
        for input in inputs.iter().filter(|i| i.kind == InputKind::Order) {
            match serde_json::from_slice::<ToHome>(&input.payload) {
                Ok(message) => {
                    newest = newest.max(input.timestamp_ms);
                    messages.push(message);
                }
                Err(error) => self.dead_letter(
                    &self.settings.topics.repartition,
                    i32::from(p),
                    input.offset,
                    &input.payload,
                    &format!("not an order message: {error}"),
                ),
            }
        }
        (messages, newest)
    }

    /// Applies the level reports among a cycle's repartition records to
    /// the roll-ups of the SKUs homed in `p`; the records' payloads, for
    /// the changelog. Unreadable ones go to the DLQ, whole.
    fn level_reports(&self, p: u16, inputs: &[&Input]) -> Vec<Vec<u8>> {
        let mut payloads = Vec::new();
        let mut book = self.shared.rollups[p as usize].write();
        for input in inputs.iter().filter(|i| i.kind == InputKind::Rollup) {
            match decode_reports(&input.payload) {
                Ok(reports) => {
                    for r in reports {
                        book.apply(r.sku, r.location_id, r.version, r.numbers);
                    }
                    payloads.push(input.payload.clone());
                }
                Err(error) => self.dead_letter(
                    &self.settings.topics.repartition,
                    i32::from(p),
                    input.offset,
                    &input.payload,
                    &format!("not level reports: {error}"),
                ),
            }
        }
        payloads
    }

    /// Queues level reports to the home of their SKUs (repartition
    /// partition `home`).
    fn send_reports(&self, home: u16, payload: &[u8]) {
        let headers = OwnedHeaders::new().insert(Header {
            key: ROLLUP_HEADER,
            value: Some("1"),
        });
        self.send(
            BaseRecord::<(), [u8]>::to(&self.settings.topics.repartition)
                .partition(i32::from(home))
                .payload(payload)
                .headers(headers),
        );
    }

    /// Runs the order step of partition `p` (the home of some orders):
    /// the cycle's messages, then the holds due. Queues what it asks of
    /// line owners, this partition's answers to its line reservations,
    /// and every changed order to the orders topic.
    fn step_orders(&self, p: u16, messages: &[ToHome], replies: &[(u16, ToHome)], now: Timestamp) {
        let mut asked = StepOut::default();
        let mut book = self.shared.books[p as usize].write();
        for message in messages {
            book.apply(message, now, &mut asked);
        }
        book.expire(now, &mut asked);
        let n = self.settings.partitions;
        for action in &asked.actions {
            let payload = line_action_json(action, now);
            let key = level_key(&action.sku, &action.location_id);
            self.send(
                BaseRecord::to(&self.settings.topics.repartition)
                    .partition(i32::from(route(&action.sku, &action.location_id, n)))
                    .key(&key)
                    .payload(&payload),
            );
        }
        for (home, reply) in replies {
            self.send_order_message(*home, reply);
        }
        asked.changed.sort_unstable();
        asked.changed.dedup();
        for id in &asked.changed {
            if let Some(saga) = book.orders.get(id) {
                let json = crate::json::order_json(&saga.order).to_string();
                self.send(
                    BaseRecord::to(&self.settings.topics.orders)
                        .partition(i32::from(p))
                        .key(id)
                        .payload(&json),
                );
            }
        }
    }

    /// The changelog index: where each partition's latest changelog
    /// snapshot starts. A hint: unreadable or missing entries only mean a
    /// longer restore.
    fn read_index(&self) -> HashMap<u16, SnapshotIndex> {
        let mut found = HashMap::new();
        let topic = &self.settings.topics.changelog_index;
        let reader: BaseConsumer = match self
            .settings
            .client(&[
                ("enable.auto.commit", "false"),
                ("group.id", "stockflow-restore"),
                ("fetch.wait.max.ms", "50"),
            ])
            .create()
        {
            Ok(reader) => reader,
            Err(error) => {
                tracing::warn!(%error, "changelog index not read");
                return found;
            }
        };
        let Ok((low, high)) = reader.fetch_watermarks(topic, 0, Duration::from_secs(10)) else {
            return found;
        };
        let mut list = TopicPartitionList::new();
        if high <= low
            || list
                .add_partition_offset(topic, 0, Offset::Offset(low))
                .is_err()
            || reader.assign(&list).is_err()
        {
            return found;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match reader.poll(RESTORE_QUIET) {
                Some(Ok(m)) => {
                    let entry = m
                        .key()
                        .and_then(|k| std::str::from_utf8(k).ok()?.parse::<u16>().ok());
                    let value = m
                        .payload()
                        .and_then(|v| serde_json::from_slice::<SnapshotIndex>(v).ok());
                    if let (Some(p), Some(value)) = (entry, value) {
                        found.insert(p, value);
                    }
                    if m.offset() + 1 >= high {
                        break;
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
        found
    }

    /// Writes partition `p`'s state into its changelog as snapshot chunks,
    /// points the index at them and tombstones the records they cover
    /// (so compaction can drop them: the changelog stays the size of the
    /// state plus the records since, and so does a new owner's restore).
    fn snapshot_to_changelog(&mut self, p: u16) {
        let Some(mut owned) = self.owned.remove(&p) else {
            return;
        };
        let bytes = match self.encode_snapshot(p, &owned) {
            Ok(bytes) => bytes,
            Err(error) => poison(&format!("encoding partition {p}'s snapshot: {error}")),
        };
        let topic = self.settings.topics.changelog.clone();
        let count = bytes.len().div_ceil(SNAPSHOT_CHUNK_BYTES).max(1) as u32;
        for index in 0..count {
            let start = index as usize * SNAPSHOT_CHUNK_BYTES;
            let end = (start + SNAPSHOT_CHUNK_BYTES).min(bytes.len());
            let chunk = SnapshotChunk {
                positions: owned.positions,
                index,
                count,
                bytes: bytes[start..end].to_vec(),
            };
            self.send(
                BaseRecord::to(&topic)
                    .partition(i32::from(p))
                    .key(&format!("{SNAPSHOT_KEY_PREFIX}{index}"))
                    .payload(&chunk.encode()),
            );
        }
        // The index must name the offset of the first chunk.
        if let Err(error) = super::flush(&self.producer, Duration::from_secs(60)) {
            poison(&format!("flushing a changelog snapshot: {error}"));
        }
        self.check_deliveries();
        let first = self
            .producer
            .context()
            .snapshot_first
            .lock()
            .remove(&i32::from(p));
        if let Some(offset) = first {
            let entry = SnapshotIndex {
                offset,
                canonical: owned.positions.canonical,
                repartition: owned.positions.repartition,
            };
            let value = serde_json::to_vec(&entry).expect("an index entry serializes");
            self.send(
                BaseRecord::to(&self.settings.topics.changelog_index)
                    .partition(0)
                    .key(&p.to_string())
                    .payload(&value),
            );
            let mut covered = std::mem::take(&mut owned.logged_keys);
            covered.extend(
                (count..owned.snapshot_chunks).map(|i| format!("{SNAPSHOT_KEY_PREFIX}{i}")),
            );
            for key in &covered {
                self.send(
                    BaseRecord::<str, ()>::to(&topic)
                        .partition(i32::from(p))
                        .key(key),
                );
            }
            owned.snapshot_chunks = count;
            metrics::counter!("stockflow_kafka_changelog_snapshots_total").increment(1);
            tracing::debug!(
                partition = p,
                offset,
                chunks = count,
                tombstones = covered.len(),
                "changelog snapshot written"
            );
        }
        owned.since_changelog_snapshot = 0;
        self.owned.insert(p, owned);
    }

    /// Applies what the catalog topic has gained since the last cycle: to
    /// the shared catalog and to every owned partition (roll-up groups,
    /// alert thresholds; alerts the new rules raise or clear are published
    /// like any other).
    fn read_catalog(&mut self) {
        let mut changes = Vec::new();
        while let Some(message) = self.catalog_reader.poll(Duration::ZERO) {
            match message {
                Ok(m) => {
                    match catalog_change(&m) {
                        Ok(Some(change)) => {
                            changes.push((change, m.timestamp().to_millis().unwrap_or(0)))
                        }
                        Ok(None) => {}
                        Err(reason) => self.dead_letter(
                            &self.settings.topics.catalog,
                            0,
                            m.offset(),
                            m.payload().unwrap_or_default(),
                            &reason,
                        ),
                    }
                    self.shared
                        .catalog_applied
                        .store(m.offset() + 1, Ordering::Release);
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the catalog topic");
                    break;
                }
            }
        }
        if changes.is_empty() {
            return;
        }
        let prices: Vec<PriceChange> = {
            let mut catalog = self.shared.catalog.write();
            changes
                .iter()
                .filter_map(|(change, ms)| catalog.apply(change, from_millis(*ms)))
                .collect()
        };
        let mut told = self.publish_price_drops(&prices);
        let owned: Vec<u16> = self.owned.keys().copied().collect();
        for p in owned {
            let mut partition = self.shared.partitions[p as usize].write();
            let alerts_before = partition.alerts.next_seq;
            for (change, ms) in &changes {
                partition.apply_catalog(change, from_millis(*ms));
            }
            told += (partition.alerts.next_seq - alerts_before) as usize;
            self.publish_alerts(p, &partition, alerts_before);
        }
        if told > 0 && self.settings.transactions {
            // Visible only once committed; there may be no cycle to do it.
            self.commit_transaction(None, &[]);
        }
        self.shared.progress.notify_waiters();
    }

    /// Holds fall due with time, and time in Kafka mode is the input's: a
    /// home partition whose next hold is due by the wall clock is sent a
    /// Tick record, so its next cycle expires the hold (and replaying the
    /// changelog expires it at the same point).
    fn tick_due_holds(&mut self) {
        const AGAIN_AFTER: Duration = Duration::from_millis(200);
        let now = crate::clock::wall_clock();
        let mut sent = false;
        let owned: Vec<u16> = self.owned.keys().copied().collect();
        for p in owned {
            let due = self.shared.books[p as usize]
                .read()
                .next_expiry()
                .is_some_and(|at| at <= now);
            let recently = self
                .ticked
                .get(&p)
                .is_some_and(|t| t.elapsed() < AGAIN_AFTER);
            if due && !recently {
                self.send_order_message(p, &ToHome::Tick);
                self.ticked.insert(p, Instant::now());
                sent = true;
            }
        }
        if sent && self.settings.transactions {
            // Visible only once committed; there may be no cycle to do it.
            self.commit_transaction(None, &[]);
        }
    }

    /// Takes what the repartition consumer has now, up to `max` records,
    /// into `transit` by partition; how many it took.
    fn take_transit(&mut self, transit: &mut HashMap<u16, Vec<Input>>, max: usize) -> usize {
        let mut taken = 0;
        while taken < max {
            match self.repartition.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    self.transit_probe.heard(m.partition());
                    transit
                        .entry(m.partition() as u16)
                        .or_default()
                        .push(Input::of(&m));
                    taken += 1;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "consuming the repartition topic");
                    break;
                }
                None => break,
            }
        }
        taken
    }

    /// Queues the PRICE_DROP alerts among `prices`: each one by the owner
    /// of its SKU's home partition (every instance reads the catalog, one
    /// tells), to the alerts topic's partition of that home.
    /// Returns how many.
    fn publish_price_drops(&self, prices: &[PriceChange]) -> usize {
        let n = self.settings.partitions;
        let percent = self.settings.price_drop_percent;
        let mut told = 0;
        for change in prices.iter().filter(|c| c.is_drop(percent)) {
            let home = sku_home(&change.sku, n);
            if !self.owned.contains_key(&home) {
                continue;
            }
            told += 1;
            let json = crate::json::price_drop_json(change).to_string();
            self.send(
                BaseRecord::to(&self.settings.topics.alerts)
                    .partition(i32::from(home))
                    .key(&change.sku)
                    .payload(&json),
            );
        }
        told
    }

    /// Queues the alerts partition `p` raised since `alerts_before`.
    fn publish_alerts(&self, p: u16, partition: &Partition, alerts_before: u64) {
        let alerts = &partition.alerts;
        let fresh = (alerts.next_seq - alerts_before) as usize;
        let (mut key, mut json) = (String::new(), Vec::new());
        for alert in alerts
            .recent
            .iter()
            .skip(alerts.recent.len().saturating_sub(fresh))
        {
            let (sku, location) = partition.names_of(alert.slot);
            json.clear();
            serde_json::to_writer(&mut json, &AlertOut::new(p, alert, sku, location))
                .expect("an alert serializes");
            key.clear();
            key.push_str(sku);
            key.push(':');
            key.push_str(location);
            self.send(
                BaseRecord::to(&self.settings.topics.alerts)
                    .partition(i32::from(p))
                    .key(&key)
                    .payload(&json),
            );
        }
    }

    /// Queues a message to the home of an order (repartition partition `home`).
    fn send_order_message(&self, home: u16, message: &ToHome) {
        let payload = serde_json::to_vec(message).expect("an order message serializes");
        let headers = OwnedHeaders::new().insert(Header {
            key: ORDER_HEADER,
            value: Some("1"),
        });
        let key = message.order_id().unwrap_or_default();
        self.send(
            BaseRecord::to(&self.settings.topics.repartition)
                .partition(i32::from(home))
                .key(key)
                .payload(&payload)
                .headers(headers),
        );
    }

    /// Applies one cycle's input of partition `p`, queueing its changelog
    /// record and outputs.
    fn process(&mut self, p: u16, canonical: &[Input], transit: &[Input]) {
        let Some(mut owned) = self.owned.remove(&p) else {
            return;
        };
        let from = owned.positions;
        // Only the records that continue the state, in order; a hole
        // (records the broker skipped) ends the run and reads them again.
        let log_start = |topic: &str| {
            let reader = &self.repartition;
            let topic = topic.to_owned();
            move || {
                reader
                    .fetch_watermarks(&topic, i32::from(p), Duration::from_secs(10))
                    .ok()
                    .map(|(low, _)| low)
            }
        };
        let canonical = contiguous(
            &mut self.canonical_gaps,
            p,
            from.canonical,
            canonical,
            &mut self.seek_back,
            log_start(&self.settings.topics.canonical),
        );
        let transit_in = contiguous(
            &mut self.transit_gaps,
            p,
            from.repartition,
            transit,
            &mut self.reread,
            log_start(&self.settings.topics.repartition),
        );
        if canonical.is_empty() && transit_in.is_empty() {
            self.owned.insert(p, owned);
            return;
        }
        let to = Positions {
            canonical: canonical.last().map_or(from.canonical, |i| i.offset + 1),
            repartition: transit_in.last().map_or(from.repartition, |i| i.offset + 1),
        };
        let owned_inputs = |v: &[&Input]| -> Vec<Input> {
            v.iter()
                .filter(|i| i.kind == InputKind::Event)
                .map(|i| Input {
                    offset: i.offset,
                    timestamp_ms: i.timestamp_ms,
                    payload: i.payload.clone(),
                    kind: InputKind::Event,
                })
                .collect()
        };
        let (mut events, newest_a, line_offsets) = self.parse(
            &self.settings.topics.canonical.clone(),
            p,
            &owned_inputs(&canonical),
        );
        let (mut transit_batch, newest_b, _) = self.parse(
            &self.settings.topics.repartition.clone(),
            p,
            &owned_inputs(&transit_in),
        );
        let (messages, newest_c) = self.order_messages(p, &transit_in);
        let reports = self.level_reports(p, &transit_in);
        // Time is the input's: replaying the same records gives the same state.
        let now = owned
            .now
            .max(from_millis(newest_a.max(newest_b).max(newest_c)));
        events.stamp_missing_timestamps(now);
        let duplicates = admit(&mut owned.dedup, &mut events, now);
        let transit_duplicates = admit(&mut owned.transit, &mut transit_batch, now);
        let n = self.settings.partitions;
        events.compute_routes(n);
        transit_batch.compute_routes(n);

        let (mut exceptions, mut changes) = (Vec::new(), Vec::new());
        let mut partition = self.shared.partitions[p as usize].write();
        let alerts_before = partition.alerts.next_seq;
        partition.apply_batch(p, &events, now, &mut exceptions, &mut changes);
        // What events naming orders did to their holds here, for the
        // orders' homes (the sagas' own line events come back as answers).
        let mut replies: Vec<(u16, ToHome)> = hold_changes(&events, &changes)
            .map(|(_, change)| {
                let home = order_home(&change.order_id, self.settings.partitions);
                let hold_ns = self.settings.order_hold_ns;
                (home, ToHome::Held { change, hold_ns })
            })
            .collect();
        {
            // What `?wait=applied` requests report: duplicates and refusals.
            let mut outcomes = self.shared.outcomes[p as usize].lock();
            let offset_of = |index: u32| line_offsets[index as usize];
            let mut found: Vec<(i64, Reason)> = duplicates
                .iter()
                .map(|&index| (offset_of(index), Reason::Duplicate))
                .collect();
            found.extend(exceptions.iter().filter_map(|e| match e.outcome {
                stockflow_core::Outcome::Rejected(why) => Some((
                    offset_of(events.get(e.position as usize).index),
                    Reason::Rejected(why),
                )),
                _ => None,
            }));
            found.sort_unstable_by_key(|(offset, _)| *offset);
            let rejected = found
                .iter()
                .filter(|(_, r)| matches!(r, Reason::Rejected(_)))
                .count();
            let wall = crate::clock::wall_clock();
            let accepted = events.len() - rejected;
            self.shared.activity.counted(
                wall,
                accepted as u64,
                duplicates.len() as u64,
                rejected as u64,
            );
            self.shared.activity.heard(&events, "kafka", wall);
            outcomes.extend(found);
        }
        exceptions.clear();
        // Changes before this index are the canonical events', after it the transit batch's.
        let transit_changes = changes.len();
        // Before the changelog record takes the batch, so a restore
        // applies the same quantities.
        stockflow_core::saga::settle_fulfilments(&mut transit_batch, &partition);
        partition.apply_batch(p, &transit_batch, now, &mut exceptions, &mut changes);
        partition.tick(now);
        replies.extend(line_results(p, n, &transit_batch, &exceptions, &partition));

        // In-transit effects owned elsewhere go to their owner.
        for (position, r) in events.routes().iter().enumerate() {
            if let Some(d) = r.destination.filter(|d| *d != p) {
                let event = events.get(position);
                let key = level_key(event.sku, event.to_location_id.unwrap_or_default());
                let payload = canonical_json(&event, now);
                self.send(
                    BaseRecord::to(&self.settings.topics.repartition)
                        .partition(i32::from(d))
                        .key(&key)
                        .payload(&payload),
                );
            }
        }
        // The newest level of each changed one, to the stock-levels topic
        // and, for the roll-ups, to its SKU's home; and new alerts.
        let mut latest: HashMap<u32, usize> = HashMap::new();
        for (i, change) in changes.iter().enumerate() {
            latest.insert(change.slot, i);
        }
        let (mut key, mut json) = (String::new(), Vec::new());
        let mut to_homes: HashMap<u16, (Vec<u8>, usize)> = HashMap::new();
        for &i in latest.values() {
            let slot = changes[i].slot;
            let view = partition.view(slot);
            let home = sku_home(&view.sku, n);
            let (payload, count) = to_homes.entry(home).or_default();
            push_report(
                payload,
                &view.sku,
                &view.location_id,
                view.level.version,
                view.level.numbers(),
            );
            *count += 1;
            if *count == REPORTS_PER_MESSAGE {
                self.send_reports(home, payload);
                payload.clear();
                *count = 0;
            }
            json.clear();
            let change = &changes[i];
            let batch = if i < transit_changes {
                &events
            } else {
                &transit_batch
            };
            let event = batch.get(change.position as usize);
            let level = crate::http::LevelOut::new(&view, partition.policy_of(slot))
                .after(event.event_id, event.event_type.as_str());
            serde_json::to_writer(&mut json, &level).expect("a level serializes");
            key.clear();
            key.push_str(&view.sku);
            key.push(':');
            key.push_str(&view.location_id);
            self.send(
                BaseRecord::to(&self.settings.topics.stock_levels)
                    .partition(i32::from(p))
                    .key(&key)
                    .payload(&json),
            );
        }
        for (home, (payload, count)) in &to_homes {
            if *count > 0 {
                self.send_reports(*home, payload);
            }
        }
        // Every change, in order, for the level histories.
        let writer = self.shared.writers[p as usize].load(Ordering::Acquire);
        let mut history = super::history::Records::new(from, to, writer);
        for (i, change) in changes.iter().enumerate() {
            let batch = if i < transit_changes {
                &events
            } else {
                &transit_batch
            };
            // Names only: a view would copy the level and its COUNT history.
            let (sku, location) = partition.names_of(change.slot);
            // The level's previous entry is the materialiser's to link.
            let fixed = crate::history::Fixed::of(change, batch, now, 0, 0);
            history.push(
                sku,
                location,
                &fixed,
                batch.event_id(change.position as usize),
            );
        }
        for record in history.finish() {
            self.send(
                BaseRecord::<(), _>::to(&self.settings.topics.history)
                    .partition(i32::from(p))
                    .payload(&record),
            );
        }
        self.publish_alerts(p, &partition, alerts_before);
        drop(partition);
        self.step_orders(p, &messages, &replies, now);

        let applied = events.len() + transit_batch.len();
        let record = ChangelogRecord {
            from,
            to,
            now,
            events,
            transit: transit_batch,
            orders: messages,
            rollups: reports,
        };
        // Sent only once the outputs above are durable (see `run`).
        let key = format!("{}:{}", to.canonical, to.repartition);
        owned.logged_keys.push(key.clone());
        self.changelog_due.push((p, key, record.encode()));
        owned.positions = to;
        owned.now = now;
        let inputs = (canonical.len() + transit_in.len()) as u64;
        owned.since_snapshot += inputs;
        owned.since_changelog_snapshot += inputs;
        metrics::counter!("stockflow_events_accepted_total").increment(applied as u64);
        metrics::counter!("stockflow_events_duplicate_total")
            .increment((duplicates.len() + transit_duplicates.len()) as u64);
        self.shared
            .events_applied
            .fetch_add(applied as u64, Ordering::Relaxed);
        self.owned.insert(p, owned);
    }
}

/// Why a restore stops at a changelog record it cannot read, and what to
/// do: a record in another format was written by another version of
/// stockflow (see `wire::CHANGELOG_FORMAT`).
fn unreadable(topic: &str, p: u16, offset: i64, error: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "changelog {topic} partition {p} offset {offset} cannot be read: {error}; it was written by another version of stockflow: run that version, or start this one on new topics (`stockflow topics create --topic-prefix NEW`, then `serve --topic-prefix NEW --group NEW`)"
    )
}

/// The line owner's answers to the saga RESERVATIONs of an applied
/// transit batch, each to its order's home: granted unless refused.
fn line_results(
    p: u16,
    partitions: u16,
    batch: &stockflow_core::Batch,
    exceptions: &[stockflow_core::Exception],
    partition: &stockflow_core::Partition,
) -> Vec<(u16, ToHome)> {
    let mut replies = Vec::new();
    for position in 0..batch.len() {
        let event = batch.get(position);
        if event.event_type != stockflow_core::EventType::Reservation {
            continue;
        }
        let Some((line, attempt)) = reservation_line(event.event_id, event.correlation_id) else {
            continue;
        };
        let order_id = event.correlation_id.unwrap_or_default();
        let refused = exceptions
            .iter()
            .find(|e| e.position as usize == position)
            .map(|e| match e.outcome {
                // Said as the embedded mode says it: how much of the line
                // the level had when it refused it.
                stockflow_core::Outcome::Rejected(stockflow_core::Rejection::InsufficientStock) => {
                    let available = partition
                        .policy_of_level(event.sku, event.location_id)
                        .available(&e.level);
                    format!(
                        "insufficient_stock: {} of {} available",
                        available.clamp(0, event.quantity),
                        event.quantity
                    )
                }
                stockflow_core::Outcome::Rejected(why) => why.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            // Sent to the wrong partition, so not applied here.
            .or_else(|| {
                (route(event.sku, event.location_id, partitions) != p)
                    .then(|| "wrong_partition".to_owned())
            });
        replies.push((
            order_home(order_id, partitions),
            ToHome::LineResult {
                order_id: order_id.to_owned(),
                line,
                attempt,
                reserved: refused.is_none(),
                reason: refused,
            },
        ));
    }
    replies
}

/// The records of `inputs` that continue from offset `next`: older ones
/// are dropped, and a hole stops the run and queues a re-read in `seeks`.
fn contiguous<'a>(
    gaps: &mut super::Contiguity,
    p: u16,
    mut next: i64,
    inputs: &'a [Input],
    seeks: &mut Vec<(u16, i64)>,
    log_start: impl Fn() -> Option<i64>,
) -> Vec<&'a Input> {
    let mut run = Vec::with_capacity(inputs.len());
    for input in inputs {
        match gaps.check(i32::from(p), next, input.offset, &log_start) {
            super::Next::Old => continue,
            super::Next::Take => {}
            super::Next::Gap => {
                tracing::warn!(
                    partition = p,
                    expected = next,
                    got = input.offset,
                    "records deleted by retention before they were applied; going on"
                );
            }
            super::Next::Seek(offset) => {
                seeks.push((p, offset));
                break;
            }
        }
        run.push(input);
        next = input.offset + 1;
    }
    run
}

/// Handle to the processor thread.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    history: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops after the current cycle: flushes, snapshots, leaves the group.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        for thread in [self.thread.take(), self.history.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

/// Starts the processor thread, and the thread that keeps the owned
/// partitions' level histories (kept `history_retention_ns`).
pub fn start(
    settings: KafkaSettings,
    engine: EngineConfig,
    data_dir: &Path,
    shared: Arc<Shared>,
    history_retention_ns: i64,
) -> anyhow::Result<Running> {
    let data_dir = data_dir.join("kafka");
    let history_dir = data_dir.clone();
    std::fs::create_dir_all(&data_dir)?;
    let mut config = settings.producer_config();
    if settings.transactions {
        config.set("transactional.id", transactional_id(&settings, &data_dir)?);
    }
    let producer: BaseProducer<Deliveries> = config.create_with_context(Deliveries {
        changelog_topic: settings.topics.changelog.clone(),
        ..Deliveries::default()
    })?;
    if settings.transactions {
        // Fences an earlier incarnation of this instance and aborts what
        // it left open; then every cycle runs in a transaction.
        producer.init_transactions(Duration::from_secs(60))?;
        producer.begin_transaction()?;
    }
    let repartition: BaseConsumer = settings
        .client(&[
            ("enable.auto.commit", "false"),
            ("group.id", &format!("{}-repartition", settings.group)),
            // Every step of an order saga crosses this topic: an idle
            // fetch must not hold the next step back (librdkafka's
            // default waits up to 500 ms, and tansu waits it out).
            ("fetch.wait.max.ms", "10"),
        ])
        .create()?;
    let catalog_reader = catalog_reader(&settings)?;
    // The whole catalog before any partition is restored, so restores
    // build their roll-ups and alert rules from it.
    load_catalog(&catalog_reader, &settings, &shared);
    let processor = Arc::new(Mutex::new(Processor {
        settings: settings.clone(),
        engine,
        data_dir,
        shared: shared.clone(),
        producer,
        repartition,
        owned: HashMap::new(),
        seek_back: Vec::new(),
        reread: Vec::new(),
        canonical_gaps: super::Contiguity::with_transactions(settings.transactions),
        transit_gaps: super::Contiguity::with_transactions(settings.transactions),
        canonical_probe: super::Probe::default(),
        transit_probe: super::Probe::default(),
        changelog_due: Vec::new(),
        ticked: HashMap::new(),
        catalog_reader,
    }));
    let consumer: BaseConsumer<Rebalancer> = settings
        .client(&[
            ("group.id", settings.group.as_str()),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            // Restores run inside the rebalance callback.
            ("max.poll.interval.ms", "600000"),
        ])
        .create_with_context(Rebalancer {
            processor: processor.clone(),
        })?;
    consumer.subscribe(&[&settings.topics.canonical])?;
    let stop = Arc::new(AtomicBool::new(false));
    let history = super::history::start(
        &settings,
        history_dir,
        shared.clone(),
        history_retention_ns,
        stop.clone(),
    )?;
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("kafka-processor".into())
        .spawn(move || run(consumer, processor, settings, stopping))?;
    Ok(Running {
        stop,
        thread: Some(thread),
        history: Some(history),
    })
}

/// The restore reader's context: reaching the end of the changelog is
/// how a transactional restore knows it is done, not an error to log
/// (librdkafka also reports it as a client error, which rust-rdkafka's
/// default context logs at ERROR on every restore).
pub struct EndIsNews;

impl ClientContext for EndIsNews {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_)
            | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {
                tracing::debug!(reason, "end of a changelog partition")
            }
            error => tracing::error!(%error, reason, "librdkafka"),
        }
    }
}

impl ConsumerContext for EndIsNews {}

/// Moves a restore reader: a seek, not a new assignment (replacing
/// assignments in quick succession can trip librdkafka 2.12's duplicate
/// FETCH_STOP assertion, librdkafka#5573). A seek needs the partition's
/// fetcher started, which takes a moment after the assignment.
fn reposition<C: ConsumerContext>(
    reader: &BaseConsumer<C>,
    topic: &str,
    p: u16,
    offset: i64,
) -> anyhow::Result<()> {
    let mut tries = 0;
    loop {
        match reader.seek(
            topic,
            i32::from(p),
            Offset::Offset(offset),
            Duration::from_secs(5),
        ) {
            Ok(()) => return Ok(()),
            Err(error) if tries >= 100 => {
                anyhow::bail!("cannot move the changelog reader to {offset}: {error}")
            }
            Err(_) => {
                tries += 1;
                // Serves the reader's queue so its fetcher starts.
                let _ = reader.poll(Duration::from_millis(20));
            }
        }
    }
}

/// `{group}-{id}`, the id kept in the data dir: the same instance gets the
/// same transactional.id after a restart (so it fences its former self),
/// two instances never share one.
fn transactional_id(settings: &KafkaSettings, data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("transactional-id");
    let id = match std::fs::read_to_string(&path) {
        Ok(id) => id.trim().to_owned(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("{:016x}", rand::random::<u64>());
            std::fs::write(&path, &id)?;
            id
        }
        Err(error) => return Err(error.into()),
    };
    Ok(format!("{}-{id}", settings.group))
}

fn run(
    consumer: BaseConsumer<Rebalancer>,
    processor: Arc<Mutex<Processor>>,
    settings: KafkaSettings,
    stop: Arc<AtomicBool>,
) {
    let canonical_topic = settings.topics.canonical.clone();
    while !stop.load(Ordering::Acquire) {
        let mut canonical: HashMap<u16, Vec<Input>> = HashMap::new();
        let mut transit: HashMap<u16, Vec<Input>> = HashMap::new();
        let mut count = 0usize;
        // Wait up to the commit interval for the first record — canonical,
        // or a repartition record (a saga step must not wait out the
        // interval) — then take what is there, up to the cycle's limit.
        let deadline = Instant::now() + settings.commit_interval;
        let mut wait = WAIT_SLICE;
        while count < CYCLE_RECORDS_MAX {
            match consumer.poll(wait) {
                Some(Ok(m)) => {
                    canonical
                        .entry(m.partition() as u16)
                        .or_default()
                        .push(Input::of(&m));
                    count += 1;
                    wait = Duration::ZERO;
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "consuming {canonical_topic}");
                    break;
                }
                None if count > 0 => break,
                None => {
                    // Not while polling canonical: its rebalance callbacks
                    // take the processor.
                    let heard = processor
                        .lock()
                        .take_transit(&mut transit, CYCLE_RECORDS_MAX);
                    count += heard;
                    if heard > 0 || Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        let mut guard = processor.lock();
        let processor = &mut *guard;
        for p in canonical.keys() {
            processor.canonical_probe.heard(i32::from(*p));
        }
        count += processor.take_transit(
            &mut transit,
            CYCLE_RECORDS_MAX * 2 - count.min(CYCLE_RECORDS_MAX * 2),
        );
        // Readers placed inside a record batch that hear nothing: further back.
        let owned = &processor.owned;
        let position = |p: i32| owned.get(&(p as u16)).map(|o| o.positions);
        processor
            .canonical_probe
            .recheck_idle(|p| position(p).map(|at| at.canonical));
        processor
            .transit_probe
            .recheck_idle(|p| position(p).map(|at| at.repartition));
        for (p, offset) in processor.canonical_probe.due() {
            tracing::debug!(
                partition = p,
                offset,
                "no canonical records since placed; reading from further back"
            );
            if let Err(error) = consumer.seek(
                &canonical_topic,
                p,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                tracing::debug!(%error, "reading from further back");
            }
        }
        for (p, offset) in processor.transit_probe.due() {
            tracing::debug!(
                partition = p,
                offset,
                "no transit records since placed; reading from further back"
            );
            let topic = processor.settings.topics.repartition.clone();
            if let Err(error) = processor.repartition.seek(
                &topic,
                p,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                tracing::debug!(%error, "reading from further back");
            }
        }
        processor.tick_due_holds();
        processor.read_catalog();
        if count == 0 {
            processor.producer.poll(Duration::ZERO);
            drop(guard);
            continue;
        }
        let cycle_started = Instant::now();
        let mut partitions: Vec<u16> = canonical.keys().chain(transit.keys()).copied().collect();
        partitions.sort_unstable();
        partitions.dedup();
        for &p in &partitions {
            let c = canonical.remove(&p).unwrap_or_default();
            let t = transit.remove(&p).unwrap_or_default();
            // One changelog record per chunk, each continuing the last.
            let mut chunks = c.chunks(CHANGELOG_EVENTS_MAX);
            processor.process(p, chunks.next().unwrap_or_default(), &t);
            for chunk in chunks {
                processor.process(p, chunk, &[]);
            }
        }
        let group = consumer.group_metadata();
        processor.commit_cycle(group.as_ref(), &partitions);
        processor
            .shared
            .activity
            .committed(crate::clock::wall_clock(), cycle_started.elapsed());
        let mut offsets = TopicPartitionList::new();
        let mut due = Vec::new();
        let owned: Vec<u16> = processor.owned.keys().copied().collect();
        for p in owned {
            let mut owned = processor.owned.remove(&p).expect("listed");
            processor.note_changelog(p, &mut owned);
            processor.shared.applied[p as usize]
                .store(owned.positions.canonical, Ordering::Release);
            if partitions.contains(&p) {
                let _ = offsets.add_partition_offset(
                    &canonical_topic,
                    i32::from(p),
                    Offset::Offset(owned.positions.canonical),
                );
            }
            if owned.since_snapshot >= SNAPSHOT_EVERY {
                due.push(p);
            }
            processor.owned.insert(p, owned);
        }
        for p in due {
            let owned = processor.owned.get(&p).expect("listed");
            match processor.write_snapshot(p, owned) {
                Ok(()) => processor.owned.get_mut(&p).expect("listed").since_snapshot = 0,
                Err(error) => tracing::warn!(partition = p, %error, "local snapshot not written"),
            }
        }
        let snapshots_due: Vec<u16> = processor
            .owned
            .iter()
            .filter(|(_, o)| {
                o.since_changelog_snapshot >= settings.changelog_snapshot_every
                    || o.logged_keys.len() >= CHANGELOG_SNAPSHOT_RECORDS_MAX
            })
            .map(|(p, _)| *p)
            .collect();
        for p in snapshots_due {
            processor.snapshot_to_changelog(p);
        }
        let seek_back = std::mem::take(&mut processor.seek_back);
        for &(p, offset) in &seek_back {
            processor.canonical_probe.placed(i32::from(p), offset);
        }
        let reread: HashMap<u16, i64> = std::mem::take(&mut processor.reread).into_iter().collect();
        if !reread.is_empty() {
            processor.assign_repartition(&reread);
        }
        drop(guard);
        for (p, offset) in seek_back {
            if let Err(error) = consumer.seek(
                &canonical_topic,
                i32::from(p),
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                tracing::warn!(partition = p, %error, "seeking back");
            }
        }
        if offsets.count() > 0 && !settings.transactions {
            // Informational: the changelog holds the real positions.
            let _ = consumer.commit(&offsets, CommitMode::Async);
        }
        processor_progress(&consumer);
    }
    // Leaving: release everything the way a revocation does.
    let partitions: Vec<u16> = {
        let processor = consumer.context().processor.lock();
        processor.owned.keys().copied().collect()
    };
    consumer.context().processor.lock().revoke(&partitions);
    // Dropping the consumer leaves the group (its revocation finds
    // nothing left to release).
    drop(consumer);
}

/// The catalog topic's reader: its one partition, from the start.
fn catalog_reader(settings: &KafkaSettings) -> anyhow::Result<BaseConsumer> {
    let reader: BaseConsumer = settings
        .client(&[
            ("enable.auto.commit", "false"),
            ("group.id", &format!("{}-catalog", settings.group)),
            ("fetch.wait.max.ms", "50"),
        ])
        .create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&settings.topics.catalog, 0, Offset::Beginning)?;
    reader.assign(&list)?;
    Ok(reader)
}

/// Reads the catalog topic to its end into `shared.catalog` (a missing or
/// unreadable topic leaves it empty: the catalog is then built as it comes).
fn load_catalog(reader: &BaseConsumer, settings: &KafkaSettings, shared: &Shared) {
    let topic = &settings.topics.catalog;
    let Ok((low, high)) = reader.fetch_watermarks(topic, 0, Duration::from_secs(30)) else {
        tracing::warn!(%topic, "catalog topic not readable; starting with an empty catalog");
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next = low;
    let mut catalog = shared.catalog.write();
    while next < high && Instant::now() < deadline {
        let Some(message) = reader.poll(RESTORE_QUIET) else {
            continue;
        };
        let Ok(m) = message else { continue };
        next = m.offset() + 1;
        if let Ok(Some(change)) = catalog_change(&m) {
            catalog.apply(&change, from_millis(m.timestamp().to_millis().unwrap_or(0)));
        }
    }
    shared.catalog_applied.store(next, Ordering::Release);
    tracing::info!(
        products = catalog.products.len(),
        locations = catalog.locations.len(),
        "catalog loaded"
    );
}

/// A catalog-topic record: key `product:{sku}` or `location:{id}`, value
/// the API's JSON for it. `Ok(None)` for a tombstone.
pub fn catalog_change<M: Message>(m: &M) -> Result<Option<stockflow_core::CatalogChange>, String> {
    let Some(payload) = m.payload() else {
        return Ok(None);
    };
    let key = m
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .unwrap_or("");
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(sku) = key.strip_prefix("product:") {
        stockflow_core::catalog::parse_product(&value, Some(sku))
            .map(|p| Some(stockflow_core::CatalogChange::Product(p)))
    } else if let Some(id) = key.strip_prefix("location:") {
        stockflow_core::catalog::parse_location(&value, Some(id))
            .map(|l| Some(stockflow_core::CatalogChange::Location(l)))
    } else {
        Err(format!(
            "key {key:?}: a catalog record's key is product:{{sku}} or location:{{locationId}}"
        ))
    }
}

/// A saga's line action as the canonical event its level's owner applies.
fn line_action_json(action: &LineAction, now: Timestamp) -> String {
    let event_id = action.event_id();
    let event = stockflow_core::EventRef {
        event_id: &event_id,
        event_type: action.event_type,
        sku: &action.sku,
        location_id: &action.location_id,
        quantity: action.quantity,
        timestamp: Some(now),
        to_location_id: None,
        source_system: Some("stockflow-orders"),
        correlation_id: Some(&action.order_id),
        hold_seconds: None,
        index: 0,
    };
    canonical_json(&event, now)
}

fn processor_progress(consumer: &BaseConsumer<Rebalancer>) {
    let processor = consumer.context().processor.lock();
    processor.shared.progress.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(at: i64, index: u32, count: u32, byte: u8) -> SnapshotChunk {
        SnapshotChunk {
            positions: Positions {
                canonical: at,
                repartition: 0,
            },
            index,
            count,
            bytes: vec![byte; 3],
        }
    }

    #[test]
    fn a_snapshot_is_whole_only_when_its_chunks_come_in_a_row() {
        let mut a = Assembly::default();
        assert!(a.add(chunk(5, 0, 3, 1)).is_none());
        assert!(a.add(chunk(5, 1, 3, 2)).is_none());
        let (positions, bytes) = a.add(chunk(5, 2, 3, 3)).expect("whole");
        assert_eq!(positions.canonical, 5);
        assert_eq!(bytes, [1, 1, 1, 2, 2, 2, 3, 3, 3]);

        // A writer that died mid-snapshot, then a later snapshot.
        let mut a = Assembly::default();
        assert!(a.add(chunk(5, 0, 3, 1)).is_none());
        assert!(
            a.add(chunk(9, 1, 2, 2)).is_none(),
            "another snapshot's chunk"
        );
        assert!(a.add(chunk(5, 2, 3, 3)).is_none(), "the run is broken");
        assert!(a.add(chunk(9, 0, 2, 4)).is_none());
        assert_eq!(a.add(chunk(9, 1, 2, 5)).map(|(_, b)| b.len()), Some(6));
        // A one-chunk snapshot is whole at once.
        assert!(a.add(chunk(11, 0, 1, 6)).is_some());
    }
}
