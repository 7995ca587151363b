//! The data directory: its layout, checkpoints, and restart.
//!
//! ```text
//! DATA_DIR/stockflow.json          format version and partition count
//! DATA_DIR/LOCK                    held (flock) by the running process
//! DATA_DIR/log/*.seg               the log: one record per group commit
//! DATA_DIR/checkpoints/N/          state as of log record N (exclusive):
//!     meta.snap dedup.snap dead-letters.snap catalog.snap orders.snap part-PPPP.snap
//! ```
//! Restart = newest whole checkpoint + replay of the records after it. A
//! checkpoint directory is written under `N.tmp` and renamed when every
//! part is durable, so a half-written checkpoint is never loaded.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use stockflow_core::orders::{hold_changes, step_due, HoldChange, StepEffects, StockOf};
use stockflow_core::rollup::sku_home;
use stockflow_core::{
    admit, Catalog, Dedup, DedupSnapshot, Engine, EngineConfig, OrderBook, Partition,
    PartitionSnapshot, Timestamp,
};
use stockflow_log::{read_records, read_snapshot, write_snapshot, LogWriter};

use crate::config::Config;
use crate::dead_letters::DeadLetters;
use crate::history::HistoryWriter;
use crate::record::{CommitGroup, DeadLetter};
use crate::stream::Draft;

/// 2: log records and checkpoints carry the catalog.
/// 3: each partition's checkpoint part has its own log position.
const FORMAT: u32 = 4;
/// Whole checkpoints kept; older ones are deleted after a new one lands.
const CHECKPOINTS_KEPT: usize = 2;

#[derive(Debug, Serialize, Deserialize)]
struct DataDirMeta {
    format: u32,
    partitions: u16,
}

/// What a checkpoint says about the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Records before this one are included in the dedup, dead-letter,
    /// catalog and order parts, and in every partition part.
    pub next_record: u64,
    /// Per partition: records before this one are included in its part
    /// (never less than `next_record`). The appliers spread a checkpoint's
    /// partition copies over the next few groups, so that no single group
    /// waits for all of them; they finish it before a group with an order
    /// step or a catalog change, so between `next_record` and the largest
    /// of these the log holds neither, and replay never needs partitions
    /// at different positions to agree.
    pub partition_records: Vec<u64>,
    pub next_dead_letter_id: u64,
    pub last_now: Timestamp,
    pub partitions: u16,
}

/// Everything a restart rebuilt.
pub struct Recovered {
    pub engine: Engine,
    pub dead_letters: DeadLetters,
    pub log: LogWriter,
    pub next_dead_letter_id: u64,
    pub last_now: Timestamp,
    pub events_since_checkpoint: u64,
    /// Log records between the loaded checkpoint's earliest and latest
    /// partition positions (0: every partition was copied at one position).
    pub checkpoint_spread: u64,
    /// Holds the data directory's lock for the life of the process.
    pub lock: File,
    /// One history writer per partition, positioned after the replay.
    pub history: Vec<HistoryWriter>,
    /// The live stream's journal and the messages the replay built again
    /// for records it lacks (`None`: no journal, the stream starts anew).
    pub stream: Option<crate::stream::Restored>,
}

pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

fn checkpoints_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoints")
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encoding into a Vec cannot fail")
}

pub(crate) fn load<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let bytes = read_snapshot(path)?;
    postcard::from_bytes(&bytes).with_context(|| format!("{}: cannot decode", path.display()))
}

/// Takes the data directory's lock, held for the life of the returned file.
pub(crate) fn lock(dir: &Path) -> anyhow::Result<File> {
    let lock = File::create(dir.join("LOCK"))
        .with_context(|| format!("cannot open {}", dir.join("LOCK").display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "{} is in use by another stockflow process; stop it or pick another --data-dir",
            dir.display()
        );
    }
    Ok(lock)
}

/// Whole checkpoints of a data directory, oldest first.
pub(crate) fn checkpoints(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let root = checkpoints_dir(dir);
    if !root.exists() {
        return Ok(Vec::new());
    }
    Ok(whole_checkpoints(&root)?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

/// Says how to get past a damaged log.
fn damaged(dir: &Path) -> impl Fn(stockflow_log::LogError) -> anyhow::Error + '_ {
    move |error| {
        match error {
        stockflow_log::LogError::Corrupt { .. } => anyhow::anyhow!(
            "the log is damaged: {error}. Nothing was cut. Run `stockflow repair --data-dir {}` to move the damaged part aside (it is kept) and list the events lost, then start again",
            dir.display()
        ),
        other => other.into(),
    }
    }
}

/// Opens the data directory: lock, layout check, checkpoint, log replay.
pub fn recover(config: &Config) -> anyhow::Result<Recovered> {
    let started = Instant::now();
    let dir = &config.data_dir;
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let lock = lock(dir)?;
    let partitions = partitions_of(dir, config.engine.partitions)?;
    let engine_config = EngineConfig {
        partitions,
        ..config.engine
    };

    let (mut engine, mut dead_letters, mut meta) = match newest_checkpoint(dir)? {
        Some(path) => load_checkpoint(&path, engine_config, config)?,
        None => (
            Engine::new(engine_config),
            DeadLetters::new(
                config.dead_letters_in_memory_max,
                config.dead_letters_in_memory_bytes_max,
            ),
            CheckpointMeta {
                next_record: 0,
                partition_records: vec![0; partitions as usize],
                next_dead_letter_id: 0,
                last_now: Timestamp(0),
                partitions,
            },
        ),
    };
    engine
        .dedup
        .presize(stockflow_core::limits::DEDUP_PRESIZED_ENTRIES);
    let (log, opened) =
        LogWriter::open(&log_dir(dir), config.segment_bytes_max).map_err(damaged(dir))?;
    if opened.truncated_bytes > 0 {
        tracing::warn!(bytes = opened.truncated_bytes, problem = ?opened.tail_problem, "cut a torn tail off the log (never acknowledged)");
    }
    if opened.next_record < meta.next_record {
        bail!(
            "the log ends at record {} but the checkpoint covers {}: the log was truncated or replaced; restore it",
            opened.next_record,
            meta.next_record
        );
    }
    // History past the checkpoint is cut and written again by the replay.
    let mut history = (0..partitions)
        .map(|p| HistoryWriter::open(dir, p, engine.partitions[p as usize].history_end))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot open the history files")?;
    let mut events = 0u64;
    let replayed_records = opened.next_record - meta.next_record;
    // The stream's messages of records past its journal are built again
    // (the `stream` module explains why). Records inside the checkpoint
    // cannot be: if the journal stops before them, that is a gap.
    let journal = crate::stream::Loaded::read(dir, partitions);
    let mut replay = Replay {
        pending: Vec::new(),
        events: 0,
        regen: journal.as_ref().map(|j| j.partition_next.clone()),
        backlog: (0..partitions).map(|_| Vec::new()).collect(),
    };
    let orders_next = journal.as_ref().map(|j| j.orders_next);
    let gap = journal.as_ref().map_or([false; 3], |j| {
        let lost = j
            .partition_next
            .iter()
            .zip(&meta.partition_records)
            .any(|(next, from)| next < from);
        [lost, lost, j.orders_next < meta.next_record]
    });
    let mut order_backlog = Vec::new();
    let checkpoint_spread = meta
        .partition_records
        .iter()
        .max()
        .map_or(0, |last| last - meta.next_record);
    // Records with neither an order step nor a catalog change touch each
    // partition on its own: they are gathered and replayed by one thread
    // per core over disjoint partitions. The others are barriers, replayed
    // in place once everything before them is in.
    for item in read_records(&log_dir(dir), meta.next_record)? {
        let (number, payload) = item.map_err(damaged(dir))?;
        let group = CommitGroup::decode(&payload)
            .with_context(|| format!("log record {number} does not decode"))?;
        let from = &meta.partition_records;
        let spread = from.iter().any(|&first| number < first);
        // The batches do not touch the order book: decided once per record.
        let order_events = group.batches.iter().any(|b| b.has_order_events());
        let order_step = step_due(&engine.orders, &group.orders, order_events, group.now);
        if spread && (!group.catalog.is_empty() || order_step) {
            bail!("log record {number} has an order step or a catalog change inside a checkpoint's spread (partitions at {from:?}); this is a bug: move the newest checkpoint away to restart from an older one");
        }
        let barrier = order_step || !group.catalog.is_empty();
        if barrier {
            replay.flush(&mut engine.partitions, &mut history, from)?;
        }
        let prices = engine.apply_catalog(&group.catalog, group.now);
        if let Some(next) = replay.regen.as_ref().filter(|_| !prices.is_empty()) {
            // As the pipeline: a SKU's home partition publishes its price
            // drops, before the record's events.
            for (id, next) in next.iter().enumerate() {
                if number >= *next {
                    let drafts = backlog_entry(&mut replay.backlog[id], number);
                    let home = |sku: &str| sku_home(sku, partitions) as usize == id;
                    let percent = config.price_drop_percent;
                    crate::stream::price_drop_drafts(&prices, percent, home, drafts);
                }
            }
        }
        let mut batches = group.batches;
        for batch in &mut batches {
            events += batch.len() as u64;
            replay.events += batch.len();
            // Engine::apply, with the changes kept for the history.
            let duplicates = admit(&mut engine.dedup, batch, group.now);
            debug_assert!(duplicates.is_empty(), "the log holds no duplicates");
            batch.compute_routes(partitions);
        }
        replay.pending.push(Pending {
            number,
            now: group.now,
            batches,
            // A barrier's timers run after its order step, below.
            tick: !barrier,
            observe: order_events,
        });
        let observed = match barrier {
            true => replay.flush(&mut engine.partitions, &mut history, from)?,
            false => Vec::new(),
        };
        let rebuild = |p: usize| replay.regen.as_ref().is_some_and(|next| number >= next[p]);
        // Where a barrier's order step and timers start raising alerts.
        let alerts_before: Vec<u64> = match barrier {
            true => engine
                .partitions
                .iter()
                .map(|p| p.alerts.next_seq)
                .collect(),
            false => Vec::new(),
        };
        // The order step, exactly when the pipeline ran it: after the
        // record's batches, before its timers.
        if order_step {
            let views: Vec<&Partition> = engine.partitions.iter().collect();
            let stock = StockOf {
                partitions: &views,
                catalog: &engine.catalog,
            };
            engine
                .orders
                .observe(&observed, group.now, group.event_hold_ns);
            let expiring = engine.orders.due_by(group.now);
            let (decided, answers) = engine.orders.decide(&group.orders, group.now, &stock);
            drop(views);
            if orders_next.is_some_and(|next| number >= next) {
                let drafts =
                    crate::stream::order_drafts(&engine.orders, &expiring, &observed, &answers);
                order_backlog.push((crate::stream::ORDER_STEP, number, drafts));
            }
            let step = StepEffects::new(&group.orders, &decided, &answers, group.now, partitions);
            let changes = apply_with_history(
                &mut engine.partitions,
                &mut history,
                &step.batch,
                group.now,
                number,
                from,
            )?;
            for (id, changes) in changes.iter().enumerate() {
                if rebuild(id) {
                    let drafts = backlog_entry(&mut replay.backlog[id], number);
                    let partition = &engine.partitions[id];
                    crate::stream::drafts_of(
                        id as u16,
                        partition,
                        &step.batch,
                        changes,
                        true,
                        None,
                        drafts,
                    );
                }
            }
            for (id, partition) in engine.partitions.iter_mut().enumerate() {
                if number >= from[id] {
                    step.apply_refusals(id as u16, partition, group.now);
                }
            }
        }
        if barrier {
            for (id, partition) in engine.partitions.iter_mut().enumerate() {
                if number >= from[id] {
                    partition.tick(group.now);
                }
                if rebuild(id) {
                    let drafts = backlog_entry(&mut replay.backlog[id], number);
                    crate::stream::alert_drafts(id as u16, partition, alerts_before[id], drafts);
                }
            }
        }
        if replay.events >= REPLAY_CHUNK_EVENTS {
            replay.flush(&mut engine.partitions, &mut history, from)?;
        }
        for letter in group.dead_letters {
            meta.next_dead_letter_id = meta.next_dead_letter_id.max(letter.id + 1);
            dead_letters.insert(letter);
        }
        for id in group.discarded {
            dead_letters.remove(id);
        }
        meta.last_now = meta.last_now.max(group.now);
        meta.next_record = number + 1;
    }
    replay.flush(
        &mut engine.partitions,
        &mut history,
        &meta.partition_records,
    )?;
    let stream = journal.map(|journal| {
        let backlog = replay
            .backlog
            .into_iter()
            .enumerate()
            .flat_map(|(id, entries)| {
                entries
                    .into_iter()
                    .map(move |(record, drafts)| (id as u16, record, drafts))
            })
            .chain(order_backlog)
            .collect();
        crate::stream::Restored {
            journal,
            backlog,
            gap,
        }
    });
    for writer in &mut history {
        writer.flush().context("cannot write history")?;
    }
    tracing::info!(
        levels = engine.partitions.iter().map(Partition::len).sum::<usize>(),
        replayed_records,
        replayed_events = events,
        checkpoint_spread,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered"
    );
    Ok(Recovered {
        engine,
        dead_letters,
        log,
        next_dead_letter_id: meta.next_dead_letter_id,
        last_now: meta.last_now,
        events_since_checkpoint: events,
        checkpoint_spread,
        lock,
        history,
        stream,
    })
}

/// The drafts rebuilt for `record` of one partition, appended to.
fn backlog_entry(entries: &mut Vec<(u64, Vec<Draft>)>, record: u64) -> &mut Vec<Draft> {
    if entries.last().is_none_or(|(last, _)| *last != record) {
        entries.push((record, Vec::new()));
    }
    &mut entries.last_mut().expect("just pushed").1
}

/// Events gathered before the replay threads take them: enough to keep
/// both cores busy for tens of milliseconds, few enough to stay small.
const REPLAY_CHUNK_EVENTS: usize = 100_000;

/// Records gathered for [`replay_pending`], and the stream messages the
/// replay builds again.
struct Replay {
    pending: Vec<Pending>,
    /// Events in `pending`.
    events: usize,
    /// Per partition, the first record whose stream messages are rebuilt
    /// (`None`: no journal, none are).
    regen: Option<Vec<u64>>,
    /// Per partition, (record, messages) rebuilt.
    backlog: Vec<Vec<(u64, Vec<Draft>)>>,
}

impl Replay {
    /// Replays everything gathered; returns what events naming orders did
    /// to their holds, in the order the pipeline received them.
    fn flush(
        &mut self,
        partitions: &mut [Partition],
        history: &mut [HistoryWriter],
        from: &[u64],
    ) -> anyhow::Result<Vec<HoldChange>> {
        let regen = self.regen.as_deref();
        let observed = replay_pending(
            partitions,
            history,
            &mut self.pending,
            from,
            regen,
            &mut self.backlog,
        )?;
        self.events = 0;
        Ok(observed)
    }
}

/// A log record's admitted, routed batches, waiting to be replayed.
struct Pending {
    number: u64,
    now: Timestamp,
    batches: Vec<stockflow_core::Batch>,
    /// Run the partitions' timers after the batches.
    tick: bool,
    /// Some batch has events naming orders, whose hold changes the order
    /// step takes in.
    observe: bool,
}

/// Replays `pending` records, each followed by its timers (unless told
/// otherwise), on one thread
/// per core, each owning a contiguous share of the partitions and their
/// history writers. Each partition sees the records in log order, which is
/// all the order there is: within a record no partition reads another.
fn replay_pending(
    partitions: &mut [Partition],
    history: &mut [HistoryWriter],
    pending: &mut Vec<Pending>,
    from: &[u64],
    regen: Option<&[u64]>,
    backlog: &mut [Vec<(u64, Vec<Draft>)>],
) -> anyhow::Result<Vec<HoldChange>> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = partitions
        .len()
        .div_ceil(threads.clamp(1, partitions.len().max(1)));
    let records = &*pending;
    let observed = std::thread::scope(|scope| {
        let workers: Vec<_> = partitions
            .chunks_mut(share)
            .zip(history.chunks_mut(share))
            .zip(backlog.chunks_mut(share))
            .enumerate()
            .map(|(worker, ((partitions, history), backlog))| {
                scope.spawn(move || {
                    let (mut exceptions, mut changes) = (Vec::new(), Vec::new());
                    let mut observed = Vec::new();
                    for record in records {
                        for (offset, ((partition, history), backlog)) in partitions
                            .iter_mut()
                            .zip(history.iter_mut())
                            .zip(backlog.iter_mut())
                            .enumerate()
                        {
                            let id = worker * share + offset;
                            if record.number < from[id] {
                                continue;
                            }
                            let rebuild = regen.is_some_and(|next| record.number >= next[id]);
                            let alerts_before = partition.alerts.next_seq;
                            for (n, batch) in record.batches.iter().enumerate() {
                                exceptions.clear();
                                changes.clear();
                                partition.apply_batch(
                                    id as u16,
                                    batch,
                                    record.now,
                                    &mut exceptions,
                                    &mut changes,
                                );
                                if record.observe {
                                    let held = hold_changes(batch, &changes);
                                    observed.extend(held.map(|(at, c)| (record.number, n, at, c)));
                                }
                                history
                                    .record(partition, batch, &changes, record.now, record.number)
                                    .context("cannot write history")?;
                                if rebuild {
                                    let drafts = backlog_entry(backlog, record.number);
                                    let p = &*partition;
                                    crate::stream::drafts_of(
                                        id as u16, p, batch, &changes, true, None, drafts,
                                    );
                                }
                            }
                            if record.tick {
                                partition.tick(record.now);
                            }
                            if rebuild {
                                let drafts = backlog_entry(backlog, record.number);
                                let p = &*partition;
                                crate::stream::alert_drafts(id as u16, p, alerts_before, drafts);
                            }
                        }
                    }
                    anyhow::Ok(observed)
                })
            })
            .collect();
        let mut observed = Vec::new();
        for worker in workers {
            observed.extend(worker.join().expect("replay thread panicked")?);
        }
        anyhow::Ok(observed)
    });
    let mut observed = observed?;
    observed.sort_by_key(|(record, batch, position, _)| (*record, *batch, *position));
    pending.clear();
    Ok(observed.into_iter().map(|(.., c)| c).collect())
}

/// Applies an admitted, routed batch of log record `record` to every
/// partition whose checkpoint part does not already include it (`from`),
/// and writes what it did to their history, as the appliers do.
fn apply_with_history(
    partitions: &mut [Partition],
    history: &mut [HistoryWriter],
    batch: &stockflow_core::Batch,
    now: Timestamp,
    record: u64,
    from: &[u64],
) -> anyhow::Result<Vec<Vec<stockflow_core::Change>>> {
    let mut exceptions = Vec::new();
    let mut all = Vec::with_capacity(partitions.len());
    for (id, partition) in partitions.iter_mut().enumerate() {
        let mut changes = Vec::new();
        if record >= from[id] {
            partition.apply_batch(id as u16, batch, now, &mut exceptions, &mut changes);
            history[id]
                .record(partition, batch, &changes, now, record)
                .context("cannot write history")?;
        }
        all.push(changes);
    }
    Ok(all)
}

/// The partition count stored with the data; `requested` for a new one.
fn partitions_of(dir: &Path, requested: u16) -> anyhow::Result<u16> {
    let path = dir.join("stockflow.json");
    match fs::read(&path) {
        Ok(bytes) => {
            let meta: DataDirMeta = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged", path.display()))?;
            if meta.format != FORMAT {
                bail!(
                    "{} has data format {}, this build reads {FORMAT}; start this build on a new --data-dir (and re-send the events, e.g. with `stockflow import`), or run the build that wrote it",
                    dir.display(),
                    meta.format
                );
            }
            if meta.partitions != requested {
                tracing::warn!(stored = meta.partitions, requested, "partition count is fixed when a data directory is created; using the stored one");
            }
            Ok(meta.partitions)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let meta = DataDirMeta {
                format: FORMAT,
                partitions: requested,
            };
            write_snapshot_json(&path, &meta)?;
            Ok(requested)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_snapshot_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)?;
    stockflow_log::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(())
}

/// Whole checkpoints under `root` as (record, path), oldest first. Their
/// names are the zero-padded record number; `*.tmp` ones are not whole.
fn whole_checkpoints(root: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut whole = Vec::new();
    for entry in fs::read_dir(root)? {
        let path = entry?.path();
        let record = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(record) = record {
            whole.push((record, path));
        }
    }
    whole.sort();
    Ok(whole)
}

fn newest_checkpoint(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let root = checkpoints_dir(dir);
    if !root.exists() {
        return Ok(None);
    }
    for entry in fs::read_dir(&root)? {
        let path = entry?.path();
        // An interrupted checkpoint, or an old one being deleted.
        if path.extension().is_some_and(|e| e == "tmp" || e == "old") {
            fs::remove_dir_all(&path)?;
        }
    }
    Ok(whole_checkpoints(&root)?.pop().map(|(_, path)| path))
}

/// Deletes the newest whole checkpoint, leaving the one before it; false if
/// there were fewer than two. Benchmarks use it to recreate the disk as a
/// crash just before a checkpoint leaves it.
pub fn drop_newest_checkpoint(dir: &Path) -> anyhow::Result<bool> {
    let mut whole = whole_checkpoints(&checkpoints_dir(dir))?;
    if whole.len() < 2 {
        return Ok(false);
    }
    let (_, newest) = whole.pop().expect("two or more");
    fs::remove_dir_all(newest)?;
    Ok(true)
}

fn load_checkpoint(
    path: &Path,
    config: EngineConfig,
    shell: &Config,
) -> anyhow::Result<(Engine, DeadLetters, CheckpointMeta)> {
    let meta: CheckpointMeta = load(&path.join("meta.snap"))?;
    if meta.partitions != config.partitions
        || meta.partition_records.len() != meta.partitions as usize
    {
        bail!(
            "{}: checkpoint has {} partitions, data directory {}",
            path.display(),
            meta.partitions,
            config.partitions
        );
    }
    let started = Instant::now();
    let letters: Vec<DeadLetter> = load(&path.join("dead-letters.snap"))?;
    let catalog: Catalog = load(&path.join("catalog.snap"))?;
    let orders: OrderBook = load(&path.join("orders.snap"))?;
    // The partitions decode in parallel, and the dedup set (one table,
    // built on one thread) beside them: together they are all the time.
    let catalog = &catalog;
    let (dedup, partitions) = std::thread::scope(|scope| {
        let dedup = scope.spawn(move || {
            let dedup_path = path.join("dedup.snap");
            let snapshot = DedupSnapshot::decode(&read_snapshot(&dedup_path)?)
                .with_context(|| format!("{}: cannot decode", dedup_path.display()))?;
            let dedup = Dedup::restore(&snapshot, config.dedup_retention_ns, config.dedup_capacity);
            anyhow::Ok((dedup, started.elapsed()))
        });
        let handles: Vec<_> = (0..config.partitions)
            .map(|p| {
                scope.spawn(move || {
                    load::<PartitionSnapshot>(&part_path(path, p))
                        .map(|snapshot| Partition::restore(snapshot, catalog, config.timers))
                })
            })
            .collect();
        let partitions = handles
            .into_iter()
            .map(|h| h.join().expect("checkpoint loader panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
            .map(|partitions| (partitions, started.elapsed()));
        let dedup = dedup.join().expect("dedup loader panicked");
        anyhow::Ok((dedup?, partitions?))
    })?;
    let ((dedup, dedup_took), (partitions, partitions_took)) = (dedup, partitions);
    let mut dead_letters = DeadLetters::new(
        shell.dead_letters_in_memory_max,
        shell.dead_letters_in_memory_bytes_max,
    );
    letters.into_iter().for_each(|l| dead_letters.insert(l));
    let engine = Engine {
        config,
        dedup,
        partitions,
        catalog: catalog.clone(),
        orders,
    };
    tracing::info!(
        checkpoint = %path.display(),
        next_record = meta.next_record,
        dedup_ms = dedup_took.as_millis() as u64,
        partitions_ms = partitions_took.as_millis() as u64,
        "loaded checkpoint"
    );
    Ok((engine, dead_letters, meta))
}

fn part_path(checkpoint: &Path, partition: u16) -> PathBuf {
    checkpoint.join(format!("part-{partition:04}.snap"))
}

/// Checkpoint parts being written, so that shutdown can wait for them.
static WRITERS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

struct InFlight;

impl Drop for InFlight {
    fn drop(&mut self) {
        WRITERS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Checkpoint writers yield the CPU to the write path. Nice levels are not
/// enough: a checkpoint has a writer per part, and a dozen nice-10 threads
/// together outweigh an applier on a 2-core machine. SCHED_IDLE threads run
/// only on CPU time nobody else wants; under sustained saturation a
/// checkpoint is late, which costs restart time, never data.
fn lower_priority() {
    // SAFETY: sched_setscheduler reads the parameter struct, which lives for
    // the call. On Linux, pid 0 names the calling thread.
    #[cfg(target_os = "linux")]
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        }
    }
}

/// Waits (up to `limit`) for checkpoint parts still being written.
pub fn wait_for_checkpoint_writers(limit: std::time::Duration) {
    let deadline = Instant::now() + limit;
    while WRITERS_IN_FLIGHT.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A checkpoint being written in parts. The pipeline threads only encode
/// their part in memory (at a group boundary, so the parts agree); writing
/// and fsyncing happen on a short-lived thread per part, so a checkpoint
/// never stalls ingest on the disk. The last part to land makes it whole.
pub struct CheckpointJob {
    data_dir: PathBuf,
    tmp: PathBuf,
    meta: CheckpointMeta,
    /// Filled in as the partition parts are taken (see [`CheckpointMeta`]).
    partition_records: parking_lot::Mutex<Vec<u64>>,
    parts_left: AtomicUsize,
    started: Instant,
    history_retention_ns: i64,
}

impl CheckpointJob {
    /// Starts a checkpoint as of `meta.next_record` with `parts` parts to
    /// come from [`CheckpointJob::write_part`]; the dedup set is one of them
    /// and is handed over here.
    pub fn start(
        data_dir: &Path,
        meta: CheckpointMeta,
        dedup: &Dedup,
        parts: usize,
        history_retention_ns: i64,
    ) -> anyhow::Result<Arc<CheckpointJob>> {
        let tmp = checkpoints_dir(data_dir).join(format!("{:020}.tmp", meta.next_record));
        fs::create_dir_all(&tmp)?;
        let job = Arc::new(CheckpointJob {
            data_dir: data_dir.to_owned(),
            tmp,
            partition_records: parking_lot::Mutex::new(meta.partition_records.clone()),
            meta,
            parts_left: AtomicUsize::new(parts),
            started: Instant::now(),
            history_retention_ns,
        });
        // Taking the view is O(chunks); the ids are encoded by the writer.
        let dedup = dedup.snapshot();
        job.write_part("dedup.snap".into(), move || dedup.encode());
        Ok(job)
    }

    /// The log position of the parts that are not partitions.
    pub fn next_record(&self) -> u64 {
        self.meta.next_record
    }

    /// Writes a partition as of log record `next_record` (exclusive) once
    /// its history `files` are durable (the snapshot's history end must
    /// never point past what is on disk), then deletes history older than
    /// the retention.
    pub fn write_partition(
        self: &Arc<Self>,
        id: u16,
        partition: &Partition,
        next_record: u64,
        files: Vec<Arc<File>>,
    ) {
        let image = partition.snapshot();
        self.partition_records.lock()[id as usize] = next_record;
        let (data_dir, horizon) = (
            self.data_dir.clone(),
            self.meta
                .last_now
                .saturating_sub_ns(self.history_retention_ns),
        );
        self.write_part(format!("part-{id:04}.snap"), move || {
            for file in &files {
                if let Err(error) = file.sync_data() {
                    // Not fatal here: the part is written anyway, and a
                    // restart that finds less history carries on from it.
                    tracing::error!(%error, partition = id, "cannot fsync history");
                }
            }
            match crate::history::compact(&data_dir, id, horizon) {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(
                    partition = id,
                    deleted,
                    "history segments past retention deleted"
                ),
                Err(error) => tracing::warn!(%error, partition = id, "history compaction failed"),
            }
            // Sized up front: growing a megabyte buffer byte by byte is most
            // of the encoding time. Levels take ~64 bytes plus their history.
            let buffer = Vec::with_capacity(image.len() * 96 + 4096);
            postcard::to_extend(&image, buffer).expect("encoding into a Vec cannot fail")
        });
    }

    pub fn write_orders(self: &Arc<Self>, orders: &OrderBook) {
        let bytes = encode(orders);
        self.write_part("orders.snap".into(), move || bytes);
    }

    pub fn write_catalog(self: &Arc<Self>, catalog: &Catalog) {
        let bytes = encode(catalog);
        self.write_part("catalog.snap".into(), move || bytes);
    }

    pub fn write_dead_letters(self: &Arc<Self>, letters: &DeadLetters) {
        let bytes = encode(&letters.all());
        self.write_part("dead-letters.snap".into(), move || bytes);
    }

    /// Writes one part in the background; `bytes` runs on the writer thread.
    fn write_part(
        self: &Arc<Self>,
        name: String,
        bytes: impl FnOnce() -> Vec<u8> + Send + 'static,
    ) {
        let job = self.clone();
        WRITERS_IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new().name("checkpoint".into()).spawn(move || {
            let _in_flight = InFlight;
            lower_priority();
            let result = write_snapshot(&job.tmp.join(&name), &bytes()).map_err(anyhow::Error::from).and_then(|()| job.part_done());
            if let Err(error) = result {
                // The log still has everything; only restart time suffers.
                tracing::error!(%error, part = name, "checkpoint part failed; the next checkpoint will retry");
            }
        });
        if let Err(error) = spawned {
            WRITERS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(%error, "cannot start a checkpoint writer thread");
        }
    }

    /// Marks one part written; the last part renames the directory into
    /// place and deletes old checkpoints.
    fn part_done(&self) -> anyhow::Result<()> {
        if self.parts_left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return Ok(());
        }
        let meta = CheckpointMeta {
            partition_records: self.partition_records.lock().clone(),
            ..self.meta.clone()
        };
        write_snapshot(&self.tmp.join("meta.snap"), &encode(&meta))?;
        let root = checkpoints_dir(&self.data_dir);
        let whole = root.join(format!("{:020}", self.meta.next_record));
        fs::rename(&self.tmp, &whole)?;
        stockflow_log::sync_dir(&root)?;
        let old = whole_checkpoints(&root)?;
        let excess = old.len().saturating_sub(CHECKPOINTS_KEPT);
        for (_, path) in &old[..excess] {
            // Renamed first, so that a crash half-way through never leaves
            // a cut-down checkpoint under a whole one's name.
            let doomed = path.with_extension("old");
            fs::rename(path, &doomed)?;
            stockflow_log::remove_gently(&doomed)?;
        }
        tracing::info!(
            next_record = self.meta.next_record,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "checkpoint written"
        );
        metrics::counter!("stockflow_checkpoints_total").increment(1);
        Ok(())
    }
}
