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
//!
//! Here the layout and `recover`; `checkpoint` (writing, keeping and
//! loading checkpoints); `replay` (the records after one).

mod checkpoint;
mod replay;

pub use checkpoint::{
    drop_newest_checkpoint, wait_for_checkpoint_writers, CheckpointJob, CheckpointMeta,
};
use checkpoint::{load_checkpoint, newest_checkpoint, whole_checkpoints, write_snapshot_json};
use replay::{apply_orders_with_history, backlog_entry, Pending, Replay, REPLAY_CHUNK_EVENTS};

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
    PartitionSnapshot, Step, Timestamp,
};
use stockflow_log::{read_records, read_snapshot, write_snapshot, LogWriter};

use crate::dead_letters::DeadLetters;
use crate::record::CommitGroup;
use stockflow_service::config::Config;
use stockflow_service::dead_letter::DeadLetter;
use stockflow_service::history::HistoryWriter;
use stockflow_service::stream::Draft;

/// 2: log records and checkpoints carry the catalog.
/// 3: each partition's checkpoint part has its own log position.
/// 4: holds live at their level.
/// 5: who made each change (`by`) in log records, checkpoints, history.
/// 6: history entries name their level (for sinks reading them in order).
/// 7: the catalog carries alert acknowledgements and mutes.
const FORMAT: u32 = 7;

#[derive(Debug, Serialize, Deserialize)]
struct DataDirMeta {
    format: u32,
    partitions: u16,
    /// Names this data directory where its data is copied (the sink's
    /// database), so that a copy is never taken for another's. Random,
    /// made with the directory (or by the first start that lacks one).
    #[serde(default)]
    id: Option<String>,
}

/// The id of the data directory `dir` (see [`DataDirMeta::id`]), once a
/// start has recovered it.
pub fn data_dir_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("stockflow.json");
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let meta: DataDirMeta =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display()))?;
    meta.id
        .ok_or_else(|| anyhow::anyhow!("{} has no id yet", path.display()))
}

fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
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
    pub stream: Option<stockflow_service::stream::Restored>,
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
    let journal = stockflow_service::stream::Loaded::read(dir, partitions);
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
            replay.flush(&mut engine.partitions, &mut history, from, None)?;
        }
        // A barrier's steps stay open through its order step (every
        // partition is past the checkpoint here: checked above).
        let (mut steps, prices) = match barrier {
            true => {
                let mut steps = engine.begin_steps(group.now);
                let prices = engine.step_catalog(&mut steps, &group.catalog);
                (steps, prices)
            }
            // Not a barrier: no catalog change.
            false => (Vec::new(), Vec::new()),
        };
        if let Some(next) = replay.regen.as_ref().filter(|_| !prices.is_empty()) {
            // As the pipeline: a SKU's home partition publishes its price
            // drops, before the record's events.
            for (id, next) in next.iter().enumerate() {
                if number >= *next {
                    let drafts = backlog_entry(&mut replay.backlog[id], number);
                    let home = |sku: &str| sku_home(sku, partitions) as usize == id;
                    let percent = config.price_drop_percent;
                    stockflow_service::stream::price_drop_drafts(&prices, percent, home, drafts);
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
            open: barrier,
            observe: order_events,
        });
        let observed = match barrier {
            true => replay
                .flush(&mut engine.partitions, &mut history, from, Some(&mut steps))
                .inspect_err(|_| steps.drain(..).for_each(Step::abandon))?,
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
                let drafts = stockflow_service::stream::order_drafts(
                    &engine.orders,
                    &expiring,
                    &observed,
                    &answers,
                );
                order_backlog.push((stockflow_service::stream::ORDER_STEP, number, drafts));
            }
            let effects =
                StepEffects::new(&group.orders, &decided, &answers, group.now, partitions);
            let changes = apply_orders_with_history(
                &mut engine.partitions,
                &mut history,
                &mut steps,
                &effects,
                number,
            )
            .inspect_err(|_| steps.drain(..).for_each(Step::abandon))?;
            for (id, changes) in changes.iter().enumerate() {
                if rebuild(id) {
                    let drafts = backlog_entry(&mut replay.backlog[id], number);
                    let partition = &engine.partitions[id];
                    stockflow_service::stream::drafts_of(
                        id as u16,
                        partition,
                        &effects.batch,
                        changes,
                        true,
                        None,
                        drafts,
                    );
                }
            }
        }
        if barrier {
            let partitions = engine.partitions.iter_mut().enumerate();
            for ((id, partition), step) in partitions.zip(steps) {
                step.end(partition);
                if rebuild(id) {
                    let drafts = backlog_entry(&mut replay.backlog[id], number);
                    stockflow_service::stream::alert_drafts(
                        id as u16,
                        partition,
                        alerts_before[id],
                        drafts,
                    );
                }
            }
        }
        if replay.events >= REPLAY_CHUNK_EVENTS {
            replay.flush(&mut engine.partitions, &mut history, from, None)?;
        }
        for letter in group.dead_letters {
            meta.next_dead_letter_id = meta.next_dead_letter_id.max(letter.id + 1);
            dead_letters.insert(letter);
        }
        for (id, _) in group.discarded {
            dead_letters.remove(id);
        }
        meta.last_now = meta.last_now.max(group.now);
        meta.next_record = number + 1;
    }
    replay.flush(
        &mut engine.partitions,
        &mut history,
        &meta.partition_records,
        None,
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
        stockflow_service::stream::Restored {
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
            let partitions = meta.partitions;
            if meta.id.is_none() {
                let meta = DataDirMeta {
                    id: Some(new_id()),
                    ..meta
                };
                write_snapshot_json(&path, &meta)?;
            }
            Ok(partitions)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let meta = DataDirMeta {
                format: FORMAT,
                partitions: requested,
                id: Some(new_id()),
            };
            write_snapshot_json(&path, &meta)?;
            Ok(requested)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Checkpoint parts being written, so that shutdown can wait for them.
static WRITERS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
