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

mod catalog_feed;
mod changelog;
mod cycle;
mod restore;
mod sagas;

pub use catalog_feed::{catalog_change, ACKNOWLEDGEMENT, MUTE};
use catalog_feed::{catalog_reader, load_catalog};
use changelog::Assembly;
use cycle::unreadable;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use stockflow_core::orders::hold_changes;
use stockflow_core::rollup::{location_home, sku_home, RollupBook};
use stockflow_core::saga::{order_home, reservation_line, LineAction, SagaBook, StepOut, ToHome};
use stockflow_core::{
    admit, parse_body, route, BodyFormat, Dedup, EngineConfig, Partition, PartitionImage,
    PartitionSnapshot, PriceChange, Step, Timestamp,
};

use super::shared::{Reason, Shared, ACTIVE, NOT_OWNED, RESTORING};
use super::wire::{
    by_headers, canonical_json, decode_reports, from_millis, push_report, ChangelogRecord,
    Positions, SnapshotChunk, SnapshotIndex, SNAPSHOT_KEY_PREFIX,
};
use super::{level_key, Deliveries, KafkaSettings};
use crate::dead_letters::{letter_headers, Origin};
use stockflow_service::json::AlertOut;

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
    /// Who sent it (the `stockflow-by` header), if anyone is named.
    by: Option<Box<str>>,
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
            by: super::wire::sender(m.headers()).map(Box::from),
        }
    }
}

/// The local files' format: the changelog's and the history records'.
const LOCAL_FORMAT_FILE: &str = "FORMAT";

/// Removes local snapshots and history files another build wrote in a
/// format this one reads differently: both are derived from the topics
/// and rebuilt from them, while misread they would answer wrongly.
fn drop_other_formats(dir: &Path) -> anyhow::Result<()> {
    let marker = dir.join(LOCAL_FORMAT_FILE);
    let this = format!(
        "changelog {} history {}\n",
        super::wire::CHANGELOG_FORMAT,
        crate::history::VERSION
    );
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(this.as_str()) {
        return Ok(());
    }
    let mut dropped = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "history" {
            std::fs::remove_dir_all(&path)?;
            dropped += 1;
        } else if name.starts_with("partition-") && name.ends_with(".snap") {
            std::fs::remove_file(&path)?;
            dropped += 1;
        }
    }
    if dropped > 0 {
        tracing::warn!(dir = %dir.display(), "local snapshots and history of another format removed; rebuilding them from the topics");
    }
    std::fs::write(&marker, this)?;
    Ok(())
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
    drop_other_formats(&data_dir)?;
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
        .spawn(move || {
            let topics = [settings.topics.canonical.as_str()];
            if settings.join(&consumer, &topics, || stopping.load(Ordering::Acquire)) {
                run(consumer, processor, settings, stopping)
            }
        })?;
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
        processor.shared.activity.committed(
            stockflow_service::clock::wall_clock(),
            cycle_started.elapsed(),
        );
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

fn processor_progress(consumer: &BaseConsumer<Rebalancer>) {
    let processor = consumer.context().processor.lock();
    processor.shared.progress.notify_waiters();
}

impl Processor {
    fn check_deliveries(&self) {
        if let Some(failure) = self.producer.context().failure() {
            poison(&failure);
        }
    }

    fn dead_letter(&self, topic: &str, partition: i32, offset: i64, payload: &[u8], reason: &str) {
        let origin = Origin::Record {
            topic,
            partition,
            offset,
        };
        let headers = letter_headers(reason, origin);
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
}
