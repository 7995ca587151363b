//! The write path: sequencer → syncer → partition appliers.
//!
//! ```text
//! HTTP handlers ──(bounded)──► sequencer ──► syncer ──► applier 0..W ──► replies
//!   parse, validate            dedup, stamp   fdatasync    apply to owned
//!                              time, encode,  (one per     partitions;
//!                              append record  many groups) last one replies
//! ```
//! One group commit is one log record; a request is answered only after its
//! record is fsynced and applied, so a following GET sees it. Each partition
//! is written by exactly one applier, in log order, which is what makes the
//! threaded path equal to `Engine::apply` (and to replay).
//!
//! Every channel is bounded: a full ingest queue answers 503, full internal
//! queues push back on the stage before them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use stockflow_core::orders::{hold_changes, step_due, HoldChange, StepEffects, StockOf};
use stockflow_core::rollup::sku_home;
use stockflow_core::{
    admit, Batch, Catalog, CatalogChange, Dedup, Exception, OrderBook, OrderCommand, Outcome,
    Parsed, Partition, Rejected, Step, Timestamp,
};
use stockflow_log::{Appended, DurableMark, LogWriter, Mark};
use stockflow_service::clock::wall_clock;
use stockflow_service::receipt::{Receipt, ReceiptError, RefusedBody};
use tokio::sync::oneshot;

use crate::dead_letters::DeadLetters;
use crate::record::CommitGroupRef;
use crate::recovery::{CheckpointJob, CheckpointMeta, Recovered};
use stockflow_service::config::Config;
use stockflow_service::dead_letter::DeadLetter;
use stockflow_service::history::HistoryWriter;

/// What a submission is answered: its receipt once durable and applied,
/// or why it was refused without being applied.
pub type Reply = Result<Receipt, Overloaded>;

/// A submission's answer to come.
pub struct Pending(oneshot::Receiver<Reply>);

impl std::future::Future for Pending {
    type Output = Reply;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Reply> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(Overloaded::Stopping)))
    }
}

impl Pending {
    /// Waits for the answer outside an async context.
    pub fn blocking_recv(self) -> Reply {
        self.0.blocking_recv().unwrap_or(Err(Overloaded::Stopping))
    }
}

/// What a handler hands to the sequencer.
struct Submission {
    parsed: Parsed,
    catalog: Vec<CatalogChange>,
    /// A dead letter this submission resolves if none of it is rejected,
    /// or discards outright when nothing else is submitted.
    /// With who resolves it (a token name).
    resolves: Option<(u64, String)>,
    order: Option<OrderCommand>,
    refused: Option<RefusedBody>,
    source: String,
    reply: oneshot::Sender<Reply>,
}

impl Submission {
    /// What it adds to a group commit's record, about (see
    /// `Config::group_bytes_max`).
    fn bytes(&self) -> usize {
        let rejected: usize = self.parsed.rejected.iter().map(|r| r.raw.len()).sum();
        let refused = self.refused.as_ref().map_or(0, |r| r.payload.len());
        self.parsed.batch.bytes() + rejected + refused
    }
}

/// State readable by queries while the appliers write it.
pub struct Shared {
    pub partitions: Vec<RwLock<Partition>>,
    /// Orders and holds; written only by the order step (one applier at a
    /// time, between barriers).
    pub orders: RwLock<OrderBook>,
    /// The live stream's subscribers.
    pub hub: Arc<stockflow_service::stream::Hub>,
    /// Products and locations, updated in log order by the syncer.
    pub catalog: RwLock<Catalog>,
    pub dead_letters: RwLock<DeadLetters>,
    /// Log records applied so far (for readiness and benchmarks).
    pub applied_records: AtomicU64,
    pub dedup_entries: AtomicU64,
    /// Per partition: when its next time-driven alert may be due (ns;
    /// i64::MAX for none), so that the sequencer wakes up for it.
    pub next_timers: Vec<std::sync::atomic::AtomicI64>,
    /// Throughput, commit latency and source freshness for the dashboard.
    pub activity: stockflow_service::activity::Activity,
    /// A price cut of at least this many percent is a PRICE_DROP alert.
    pub price_drop_percent: u8,
    /// The SKUs and locations whose totals moved since the last totals
    /// cycle (noted only while someone listens to them).
    pub totals_dirty: Mutex<TotalsDirty>,
}

#[derive(Default)]
pub struct TotalsDirty {
    skus: std::collections::HashSet<Arc<str>>,
    locations: std::collections::HashSet<Arc<str>>,
}

impl Shared {
    /// The earliest time-driven alert due in any partition.
    fn next_timer(&self) -> Option<Timestamp> {
        let next = self
            .next_timers
            .iter()
            .map(|t| t.load(Ordering::Acquire))
            .min()?;
        (next != i64::MAX).then_some(Timestamp(next))
    }

    /// Tells the sequencer when partition `id`'s next timer is due.
    fn note_next_timer(&self, id: u16, partition: &Partition) {
        self.next_timers[id as usize].store(timer_ns(partition), Ordering::Release);
    }

    pub fn partition_count(&self) -> u16 {
        self.partitions.len() as u16
    }

    pub fn levels(&self) -> usize {
        self.partitions.iter().map(|p| p.read().len()).sum()
    }
}

/// Why the write path refused a submission before taking it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Overloaded {
    #[error("ingest queue is full; retry shortly")]
    QueueFull,
    #[error("the server is stopping; retry against a running instance")]
    Stopping,
    #[error("the data directory's disk has {free} bytes free, less than the {min} kept for checkpoints and restarts (--disk-free-min-bytes): writes are refused until space is freed, then resume by themselves; reads go on")]
    DiskFull { free: u64, min: u64 },
}

/// The free space of the data directory's filesystem, looked up at most
/// every [`DiskSpace::EVERY`] (one statvfs; writes ask on every request),
/// less what the sequencer let through since.
pub struct DiskSpace {
    dir: std::path::PathBuf,
    min: u64,
    /// (when looked up, free bytes then, bytes let through since)
    last: Mutex<(Option<Instant>, u64, u64)>,
}

/// Disk bytes a group may take per byte of its submissions: the record in
/// the log, the history of its events, and their share of checkpoints.
const DISK_BYTES_PER_SUBMITTED_BYTE: u64 = 4;

impl DiskSpace {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(100);

    pub fn new(dir: &std::path::Path, min: u64) -> DiskSpace {
        DiskSpace {
            dir: dir.to_owned(),
            min,
            last: Mutex::new((None, u64::MAX, 0)),
        }
    }

    /// Free bytes for an unprivileged writer (as `df` shows them), less
    /// what was let through since the lookup.
    pub fn free(&self) -> u64 {
        let mut last = self.last.lock();
        if last.0.is_none_or(|at| at.elapsed() >= Self::EVERY) {
            // A failed lookup counts as plenty: the write itself will say.
            let free = rustix::fs::statvfs(&self.dir)
                .map_or(u64::MAX, |s| s.f_bavail.saturating_mul(s.f_frsize));
            *last = (Some(Instant::now()), free, 0);
            metrics::gauge!("stockflow_disk_free_bytes").set(free as f64);
        }
        last.1.saturating_sub(last.2)
    }

    /// Refuses a write while free space is under the minimum.
    pub fn check(&self) -> Result<(), Overloaded> {
        self.room_for(0)
    }

    /// Lets through writes of about `bytes`, or refuses them if they could
    /// take free space under the minimum. Requests are admitted one by one
    /// ([`DiskSpace::check`]) but written many at once: the sequencer asks
    /// again for each group, with its size, so that concurrent large
    /// bodies cannot overrun the minimum together.
    pub fn room_for(&self, bytes: u64) -> Result<(), Overloaded> {
        let free = self.free();
        if free < self.min.saturating_add(bytes) {
            return Err(Overloaded::DiskFull {
                free,
                min: self.min,
            });
        }
        self.last.lock().2 += bytes;
        Ok(())
    }
}

/// Handle to the running write path.
pub struct Pipeline {
    ingest: Mutex<Option<Sender<Submission>>>,
    disk: Arc<DiskSpace>,
    pub shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A request inside a group commit.
struct Request {
    batch: Batch,
    reply: Mutex<Option<(Receipt, oneshot::Sender<Reply>)>>,
}

/// One group commit travelling through the stages.
struct Group {
    now: Timestamp,
    catalog: Vec<CatalogChange>,
    discarded: Vec<(u64, String)>,
    /// Order commands and the request each came from.
    orders: Vec<(usize, OrderCommand)>,
    /// Runs the order step (commands, events naming orders, or a hold may
    /// be due): the appliers meet at a barrier after the events, one
    /// decides, all apply.
    serial: bool,
    /// Some batch has events naming orders (the order step observes them).
    order_events: bool,
    /// The hold of an order whose first hold an event of this record makes.
    event_hold_ns: i64,
    /// What the record's events did to orders' holds, found by the
    /// appliers: (request, position in its batch, change).
    hold_changes: Mutex<Vec<(usize, u32, HoldChange)>>,
    /// The order step's events, for the appliers to apply.
    order_step: Mutex<Option<Arc<StepEffects>>>,
    requests: Vec<Request>,
    dead_letters: Vec<DeadLetter>,
    file: Appended,
    appliers_left: AtomicUsize,
    /// (request, exception) found by the appliers.
    exceptions: Mutex<Vec<(usize, Exception)>>,
    /// The price changes of `catalog`, found by the syncer as it applies
    /// them (it alone knows the prices before).
    prices: std::sync::OnceLock<Vec<stockflow_core::PriceChange>>,
    formed: Instant,
    events: usize,
}

enum Stage {
    Group(Arc<Group>),
    Checkpoint(Arc<CheckpointJob>),
}

impl Pipeline {
    /// Starts the threads on recovered state.
    pub fn start(config: &Config, recovered: Recovered) -> std::io::Result<Pipeline> {
        let Recovered {
            engine,
            dead_letters,
            log,
            next_dead_letter_id,
            last_now,
            events_since_checkpoint,
            lock,
            history,
            checkpoint_spread: _,
            stream,
        } = recovered;
        let hub = stockflow_service::stream::Hub::start(
            &config.data_dir,
            stream,
            engine.partitions.len() as u16,
            log.next_record(),
        );
        let next_timers = engine
            .partitions
            .iter()
            .map(|p| std::sync::atomic::AtomicI64::new(timer_ns(p)))
            .collect();
        let shared = Arc::new(Shared {
            next_timers,
            activity: stockflow_service::activity::Activity::default(),
            price_drop_percent: config.price_drop_percent,
            partitions: engine.partitions.into_iter().map(RwLock::new).collect(),
            orders: RwLock::new(engine.orders),
            hub: Arc::new(hub),
            catalog: RwLock::new(engine.catalog),
            dead_letters: RwLock::new(dead_letters),
            applied_records: AtomicU64::new(log.next_record()),
            dedup_entries: AtomicU64::new(engine.dedup.len() as u64),
            totals_dirty: Mutex::default(),
        });
        // Detached: it ends at its first cycle after the pipeline is gone.
        let weak = Arc::downgrade(&shared);
        spawn("stream-totals", move || publish_totals(&weak))?;
        let appliers = config.apply_threads.clamp(1, shared.partitions.len());
        let (ingest_tx, ingest_rx) = bounded::<Submission>(config.ingest_queue_max);
        let (sync_tx, sync_rx) = bounded::<Stage>(64);
        let mut apply_txs = Vec::new();
        let mut threads = Vec::new();
        let mut owned: Vec<Vec<(u16, HistoryWriter)>> = (0..appliers).map(|_| Vec::new()).collect();
        for (id, writer) in history.into_iter().enumerate() {
            owned[id % appliers].push((id as u16, writer));
        }
        let barrier = Arc::new(std::sync::Barrier::new(appliers));
        for (worker, owned) in owned.into_iter().enumerate() {
            let (tx, rx) = bounded::<Stage>(64);
            apply_txs.push(tx);
            let (shared, barrier) = (shared.clone(), barrier.clone());
            threads.push(spawn(&format!("applier-{worker}"), move || {
                applier(worker, owned, &shared, &barrier, &rx)
            })?);
        }
        let syncer_shared = shared.clone();
        let mark = DurableMark::open(log.dir()).map_err(std::io::Error::other)?;
        threads.push(spawn("syncer", move || {
            syncer(&sync_rx, &apply_txs, &syncer_shared, &mark)
        })?);
        let holds = shared
            .orders
            .read()
            .orders
            .values()
            .filter_map(|o| o.expires_at)
            .map(std::cmp::Reverse)
            .collect();
        let disk = Arc::new(DiskSpace::new(&config.data_dir, config.disk_free_min_bytes));
        let sequencer = Sequencer {
            disk: disk.clone(),
            order_hold_ns: config.order_hold_seconds as i64 * 1_000_000_000,
            holds,
            dedup: engine.dedup,
            log,
            next_dead_letter_id,
            last_now,
            events_since_checkpoint,
            checkpoint_events: config.checkpoint_events,
            group_events_max: config.group_events_max,
            group_bytes_max: config.group_bytes_max,
            data_dir: config.data_dir.clone(),
            history_retention_ns: config.history_retention_ns,
            partitions: shared.partition_count(),
            // dedup + dead letters + catalog + orders + every partition
            checkpoint_parts: 4 + shared.partitions.len(),
            shared: shared.clone(),
            buf: Vec::new(),
            _lock: lock,
        };
        threads.push(spawn("sequencer", move || {
            sequencer.run(&ingest_rx, &sync_tx)
        })?);
        Ok(Pipeline {
            ingest: Mutex::new(Some(ingest_tx)),
            disk,
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// Queues parsed events; the receiver yields the receipt once they are
    /// durable and applied.
    pub fn submit(&self, parsed: Parsed, source: &str) -> Result<Pending, Overloaded> {
        self.shared
            .activity
            .heard(&parsed.batch, source, wall_clock());
        self.send(parsed, None, source, false)
    }

    /// Commits catalog changes (products, locations) through the log, and
    /// the refused ones as dead letters; the receipt counts the changes as
    /// accepted.
    pub fn submit_catalog(
        &self,
        changes: Vec<CatalogChange>,
        rejected: Vec<Rejected>,
        source: &str,
    ) -> Result<Pending, Overloaded> {
        let parsed = Parsed {
            batch: Batch::default(),
            rejected,
        };
        self.send_all(parsed, changes, None, source, false, None)
    }

    /// Ingests a corrected payload for dead letter `id`; the letter is
    /// resolved (removed) in the same log record if nothing in the payload
    /// is rejected again.
    pub fn submit_replay(
        &self,
        parsed: Parsed,
        changes: Vec<CatalogChange>,
        id: u64,
        source: &str,
        by: &str,
    ) -> Result<Pending, Overloaded> {
        self.send_all(
            parsed,
            changes,
            None,
            source,
            false,
            Some((id, by.to_owned())),
        )
    }

    /// Submits an order command; the receipt's `order` holds the answer.
    pub fn submit_order(&self, command: OrderCommand) -> Result<Pending, Overloaded> {
        let (reply, rx) = oneshot::channel();
        let submission = Submission {
            parsed: Parsed::default(),
            catalog: Vec::new(),
            resolves: None,
            order: Some(command),
            refused: None,
            source: "orders".into(),
            reply,
        };
        self.enqueue(submission, false)?;
        Ok(Pending(rx))
    }

    /// Discards dead letter `id` (durably), as `by` asked.
    pub fn discard_dead_letter(&self, id: u64, by: &str) -> Result<Pending, Overloaded> {
        self.send_all(
            Parsed::default(),
            Vec::new(),
            None,
            "discard",
            false,
            Some((id, by.to_owned())),
        )
    }

    /// Keeps a refused body as a dead letter; resolves once it is durable.
    pub fn submit_refused(
        &self,
        refused: RefusedBody,
        source: &str,
    ) -> Result<Pending, Overloaded> {
        self.send(Parsed::default(), Some(refused), source, false)
    }

    /// Like [`Pipeline::submit`] but waits for queue space (benchmarks, import).
    pub fn submit_blocking(&self, parsed: Parsed, source: &str) -> Result<Pending, Overloaded> {
        self.send(parsed, None, source, true)
    }

    fn send(
        &self,
        parsed: Parsed,
        refused: Option<RefusedBody>,
        source: &str,
        wait: bool,
    ) -> Result<Pending, Overloaded> {
        self.send_all(parsed, Vec::new(), refused, source, wait, None)
    }

    fn send_all(
        &self,
        parsed: Parsed,
        catalog: Vec<CatalogChange>,
        refused: Option<RefusedBody>,
        source: &str,
        wait: bool,
        resolves: Option<(u64, String)>,
    ) -> Result<Pending, Overloaded> {
        let (reply, rx) = oneshot::channel();
        let submission = Submission {
            resolves,
            order: None,
            catalog,
            parsed,
            refused,
            source: source.to_owned(),
            reply,
        };
        self.enqueue(submission, wait)?;
        Ok(Pending(rx))
    }

    /// Hands a submission to the sequencer: refused while the disk is
    /// short of space; waits for room in the queue if `wait`, else refuses
    /// when it is full.
    fn enqueue(&self, submission: Submission, wait: bool) -> Result<(), Overloaded> {
        self.disk.check()?;
        let sender = self.ingest.lock().clone().ok_or(Overloaded::Stopping)?;
        if wait {
            sender.send(submission).map_err(|_| Overloaded::Stopping)
        } else {
            sender.try_send(submission).map_err(|e| match e {
                TrySendError::Full(_) => Overloaded::QueueFull,
                TrySendError::Disconnected(_) => Overloaded::Stopping,
            })
        }
    }

    /// Stops accepting, drains every stage, writes a final checkpoint and
    /// joins the threads.
    pub fn shutdown(&self) {
        self.ingest.lock().take();
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        if threads.is_empty() {
            return; // stopped already
        }
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a pipeline thread panicked");
            }
        }
        crate::recovery::wait_for_checkpoint_writers(std::time::Duration::from_secs(120));
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
}

/// A partition's next timer as [`Shared::next_timers`] holds it.
fn timer_ns(partition: &Partition) -> i64 {
    partition.next_timer().map_or(i64::MAX, |t| t.0)
}

/// Longest the sequencer sleeps without looking at the time-driven alerts'
/// due times again.
const TIMER_RECHECK_NS: i64 = 1_000_000_000;

/// Owns dedup and the log writer: decides what a group commit holds.
struct Sequencer {
    /// Free space, asked again for each group before it is decided.
    disk: Arc<DiskSpace>,
    /// Every hold expiry a command set (a superset of the live ones), to
    /// mark the records that must run the order step and to wake up for
    /// them when no traffic comes.
    holds: std::collections::BinaryHeap<std::cmp::Reverse<Timestamp>>,
    /// The hold of an order created by a RESERVATION event.
    order_hold_ns: i64,
    dedup: Dedup,
    log: LogWriter,
    next_dead_letter_id: u64,
    /// `now` never goes backwards, even if the wall clock does.
    last_now: Timestamp,
    events_since_checkpoint: u64,
    checkpoint_events: u64,
    group_events_max: usize,
    group_bytes_max: usize,
    data_dir: std::path::PathBuf,
    history_retention_ns: i64,
    partitions: u16,
    checkpoint_parts: usize,
    shared: Arc<Shared>,
    buf: Vec<u8>,
    _lock: std::fs::File,
}

impl Sequencer {
    /// The next submission, or `None` when a hold falls due first (a tick:
    /// an empty record that runs the order step); `Err` when stopping.
    ///
    /// Time-driven alerts (STALE, the end of a burst) also need a record to
    /// happen in; their due times come from the appliers, which may lag a
    /// group behind, so the wait is re-checked at least every second.
    fn next_submission(&self, ingest: &Receiver<Submission>) -> Result<Option<Submission>, ()> {
        loop {
            let hold = self.holds.peek().map(|std::cmp::Reverse(due)| *due);
            // A timer due at or before the last record's time is handled
            // by that record, whatever the appliers have published yet.
            let timer = self.shared.next_timer().filter(|t| *t > self.last_now);
            let due = match (hold, timer) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let now = wall_clock();
            if due.is_some_and(|due| due <= now) {
                return Ok(None);
            }
            let wait_ns = due.map_or(TIMER_RECHECK_NS, |due| {
                (due.0 - now.0).min(TIMER_RECHECK_NS)
            });
            match ingest.recv_timeout(std::time::Duration::from_nanos(wait_ns as u64)) {
                Ok(submission) => return Ok(Some(submission)),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Err(()),
            }
        }
    }

    fn run(mut self, ingest: &Receiver<Submission>, next: &Sender<Stage>) {
        while let Ok(first) = self.next_submission(ingest) {
            let Some(first) = first else {
                let group = self.commit(Vec::new());
                if next.send(Stage::Group(group)).is_err() {
                    return;
                }
                continue;
            };
            let mut submissions = vec![first];
            let mut events = submissions[0].parsed.total() + submissions[0].catalog.len();
            let mut bytes = submissions[0].bytes();
            while events < self.group_events_max && bytes < self.group_bytes_max {
                let Ok(more) = ingest.try_recv() else { break };
                events += more.parsed.total() + more.catalog.len();
                bytes += more.bytes();
                submissions.push(more);
            }
            // Refused whole, before anything of them is decided.
            let needed = bytes as u64 * DISK_BYTES_PER_SUBMITTED_BYTE;
            if let Err(refused) = self.disk.room_for(needed) {
                for submission in submissions {
                    let _ = submission.reply.send(Err(refused.clone()));
                }
                continue;
            }
            let group = self.commit(submissions);
            let events = group.events as u64;
            if next.send(Stage::Group(group)).is_err() {
                return;
            }
            self.events_since_checkpoint += events;
            if self.events_since_checkpoint >= self.checkpoint_events {
                self.checkpoint(next);
            }
        }
        if self.events_since_checkpoint > 0 {
            self.checkpoint(next);
        }
    }

    /// Admits, encodes and appends one group; the record is not yet durable.
    fn commit(&mut self, submissions: Vec<Submission>) -> Arc<Group> {
        let formed = Instant::now();
        let now = wall_clock().max(self.last_now);
        self.last_now = now;
        let mut requests = Vec::with_capacity(submissions.len());
        let mut dead_letters = Vec::new();
        let mut catalog = Vec::new();
        let mut discarded = Vec::new();
        let mut orders = Vec::new();
        let mut order_events = false;
        let (mut accepted, mut duplicates_total, mut rejected_total) = (0u64, 0u64, 0u64);
        for Submission {
            parsed,
            catalog: changes,
            resolves,
            order,
            refused,
            source,
            reply,
        } in submissions
        {
            let Parsed {
                mut batch,
                rejected,
            } = parsed;
            if let Some(resolved) = resolves.filter(|_| rejected.is_empty() && refused.is_none()) {
                discarded.push(resolved);
            }
            let duplicates = admit(&mut self.dedup, &mut batch, now);
            let admitted = batch.len();
            if batch.has_order_events() {
                // A hold an event makes expires like an order's: mark the
                // record that must run the order step then.
                order_events = true;
                for hold_ns in event_holds(&batch, self.order_hold_ns) {
                    self.holds
                        .push(std::cmp::Reverse(now.saturating_add_ns(hold_ns)));
                }
            }
            batch.compute_routes(self.partitions);
            let mut receipt = Receipt {
                accepted: (admitted + changes.len()) as u64,
                duplicates: duplicates.len() as u64,
                rejected: rejected.len() as u64,
                errors: Vec::with_capacity(rejected.len()),
                order: None,
            };
            for r in rejected {
                receipt.errors.push(ReceiptError {
                    index: r.index,
                    event_id: r.event_id.clone(),
                    reason: r.reason.clone(),
                });
                dead_letters.push(self.dead_letter(
                    now,
                    &source,
                    Some(r.index),
                    r.event_id,
                    r.reason,
                    r.raw.into_bytes(),
                ));
            }
            if let Some(body) = refused {
                dead_letters.push(self.dead_letter(
                    now,
                    &source,
                    None,
                    None,
                    body.reason,
                    body.payload,
                ));
            }
            catalog.extend(changes);
            if let Some(command) = order {
                if let Some(at) = command.hold_until(now) {
                    self.holds.push(std::cmp::Reverse(at));
                }
                orders.push((requests.len(), command));
            }
            accepted += receipt.accepted;
            duplicates_total += receipt.duplicates;
            rejected_total += receipt.rejected;
            requests.push(Request {
                batch,
                reply: Mutex::new(Some((receipt, reply))),
            });
        }
        let mut serial = !orders.is_empty() || order_events;
        while self
            .holds
            .peek()
            .is_some_and(|std::cmp::Reverse(at)| *at <= now)
        {
            self.holds.pop();
            serial = true;
        }
        let commands: Vec<OrderCommand> = orders.iter().map(|(_, c)| c.clone()).collect();
        let record = CommitGroupRef {
            now,
            orders: &commands,
            event_hold_ns: self.order_hold_ns,
            catalog: &catalog,
            batches: requests.iter().map(|r| &r.batch).collect(),
            dead_letters: &dead_letters,
            discarded: &discarded,
        };
        self.buf = record.encode_into(std::mem::take(&mut self.buf));
        let file = match self.log.append(&self.buf) {
            Ok(file) => file,
            Err(error) => poison("log append failed", &error),
        };
        metrics::counter!("stockflow_events_accepted_total").increment(accepted);
        metrics::counter!("stockflow_events_duplicate_total").increment(duplicates_total);
        metrics::counter!("stockflow_events_rejected_total").increment(rejected_total);
        metrics::histogram!("stockflow_commit_batch_events").record(accepted as f64);
        metrics::histogram!("stockflow_commit_record_bytes").record(self.buf.len() as f64);
        self.shared
            .activity
            .counted(now, accepted, duplicates_total, rejected_total);
        self.shared
            .dedup_entries
            .store(self.dedup.len() as u64, Ordering::Relaxed);
        metrics::gauge!("stockflow_dedup_evicted_early").set(self.dedup.evicted_early() as f64);
        Arc::new(Group {
            now,
            catalog,
            discarded,
            orders,
            serial,
            order_events,
            event_hold_ns: self.order_hold_ns,
            hold_changes: Mutex::new(Vec::new()),
            order_step: Mutex::new(None),
            events: accepted as usize,
            requests,
            dead_letters,
            file,
            appliers_left: AtomicUsize::new(0),
            exceptions: Mutex::new(Vec::new()),
            prices: std::sync::OnceLock::new(),
            formed,
        })
    }

    fn dead_letter(
        &mut self,
        now: Timestamp,
        source: &str,
        index: Option<u32>,
        event_id: Option<String>,
        reason: String,
        payload: Vec<u8>,
    ) -> DeadLetter {
        let id = self.next_dead_letter_id;
        self.next_dead_letter_id += 1;
        DeadLetter {
            id,
            received_at: now,
            source: source.to_owned(),
            index,
            event_id,
            reason,
            payload,
        }
    }

    fn checkpoint(&mut self, next: &Sender<Stage>) {
        let meta = CheckpointMeta {
            next_record: self.log.next_record(),
            partition_records: vec![self.log.next_record(); self.partitions as usize],
            next_dead_letter_id: self.next_dead_letter_id,
            last_now: self.last_now,
            partitions: self.partitions,
        };
        match CheckpointJob::start(
            &self.data_dir,
            meta,
            &self.dedup,
            self.checkpoint_parts,
            self.history_retention_ns,
        ) {
            Ok(job) => {
                self.events_since_checkpoint = 0;
                let _ = next.send(Stage::Checkpoint(job));
            }
            // A failed checkpoint costs restart time, not data: the log has it all.
            Err(error) => {
                tracing::error!(%error, "checkpoint failed; will retry after more events")
            }
        }
    }
}

/// The distinct holds the RESERVATIONs naming orders in `batch` ask for
/// (`default_ns` for those that do not say), usually one.
fn event_holds(batch: &Batch, default_ns: i64) -> Vec<i64> {
    let mut holds = Vec::new();
    for i in 0..batch.len() {
        let rec = batch.rec(i);
        if rec.event_type != stockflow_core::EventType::Reservation || batch.order_of(i).is_none() {
            continue;
        }
        let hold = rec
            .hold_seconds
            .map_or(default_ns, |s| i64::from(s) * 1_000_000_000);
        if !holds.contains(&hold) {
            holds.push(hold);
        }
    }
    holds
}

/// A failed write or fsync leaves the file in an unknown state; carrying on
/// could acknowledge events that are not durable. Stop, and let recovery
/// rebuild from what is really on disk.
fn poison(what: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%error, "{what}; stopping so that recovery can rebuild from the disk");
    // Not eprintln!: it panics when stderr's disk is full, and a panic
    // here would unwind this stage instead of stopping the process.
    let _ = std::io::Write::write_fmt(
        &mut std::io::stderr(),
        format_args!("stockflow: fatal: {what}: {error}\n"),
    );
    std::process::abort();
}

/// Makes records durable, many per fdatasync, moves the durable mark past
/// them, then hands them on.
fn syncer(
    input: &Receiver<Stage>,
    appliers: &[Sender<Stage>],
    shared: &Shared,
    mark: &DurableMark,
) {
    syncer_loop(input, appliers, shared, mark);
    if let Err(error) = mark.sync() {
        tracing::warn!(%error, "cannot sync the log's durable mark at the stop");
    }
}

fn syncer_loop(
    input: &Receiver<Stage>,
    appliers: &[Sender<Stage>],
    shared: &Shared,
    mark: &DurableMark,
) {
    while let Ok(first) = input.recv() {
        let mut stages = vec![first];
        while let Ok(more) = input.try_recv() {
            stages.push(more);
            if stages.len() >= 256 {
                break;
            }
        }
        let mut synced: Vec<*const std::fs::File> = Vec::new();
        for stage in &stages {
            if let Stage::Group(group) = stage {
                let file = Arc::as_ptr(&group.file.file);
                if !synced.contains(&file) {
                    if let Err(error) = group.file.file.sync_data() {
                        poison("fdatasync of the log failed", &error);
                    }
                    synced.push(file);
                }
            }
        }
        let newest = stages.iter().rev().find_map(|stage| match stage {
            Stage::Group(group) => Some(Mark::after(&group.file)),
            Stage::Checkpoint(_) => None,
        });
        if let Some(newest) = newest {
            mark.write(newest);
        }
        for stage in stages {
            match &stage {
                Stage::Group(group) => {
                    if !group.catalog.is_empty() {
                        let mut catalog = shared.catalog.write();
                        let prices = group
                            .catalog
                            .iter()
                            .filter_map(|c| catalog.apply(c, group.now))
                            .collect();
                        let _ = group.prices.set(prices);
                    }
                    let mut letters = shared.dead_letters.write();
                    group
                        .dead_letters
                        .iter()
                        .for_each(|l| letters.insert(l.clone()));
                    for (id, by) in &group.discarded {
                        letters.remove(*id);
                        tracing::info!(dead_letter = id, by = %by, "dead letter resolved");
                    }
                    metrics::counter!("stockflow_dead_letters_resolved_total")
                        .increment(group.discarded.len() as u64);
                    metrics::gauge!("stockflow_dead_letters_stored").set(letters.len() as f64);
                    metrics::gauge!("stockflow_dead_letters_stored_bytes")
                        .set(letters.bytes() as f64);
                    metrics::counter!("stockflow_dead_letters_total")
                        .increment(group.dead_letters.len() as u64);
                    group.appliers_left.store(appliers.len(), Ordering::Release);
                }
                Stage::Checkpoint(job) => {
                    job.write_dead_letters(&shared.dead_letters.read());
                    job.write_catalog(&shared.catalog.read());
                }
            }
            for applier in appliers {
                let forwarded = match &stage {
                    Stage::Group(g) => Stage::Group(g.clone()),
                    Stage::Checkpoint(j) => Stage::Checkpoint(j.clone()),
                };
                if applier.send(forwarded).is_err() {
                    return;
                }
            }
        }
    }
}

/// Applies groups to the partitions this worker owns (p % workers == worker)
/// and writes their history. For a group that runs the order step, the
/// appliers meet after the group's events; one decides the orders against
/// every partition at that log position; then each applies the decisions
/// to its partitions.
///
/// A checkpoint's partition copies are spread out: one whenever the input
/// is idle, else one before each group, and all that are left before a
/// group with an order step or a catalog change (see [`CheckpointMeta`]).
/// Copying every partition at once held up the group behind it by tens of
/// milliseconds.
fn applier(
    worker: usize,
    mut owned: Vec<(u16, HistoryWriter)>,
    shared: &Shared,
    barrier: &std::sync::Barrier,
    input: &Receiver<Stage>,
) {
    let mut found = Vec::new();
    let mut changes = Vec::new();
    let mut pending = PendingCheckpoint::default();
    let ids: Vec<u16> = owned.iter().map(|(id, _)| *id).collect();
    // Per owned partition, the group's stream messages: published together
    // (one journal entry) once the group is done with the partition.
    let mut drafts: Vec<Vec<stockflow_service::stream::Draft>> =
        ids.iter().map(|_| Vec::new()).collect();
    let mut steps: Vec<Step> = Vec::with_capacity(ids.len());
    loop {
        while input.is_empty() && pending.copy_one(&mut owned, shared) {}
        let Ok(stage) = input.recv() else { break };
        match stage {
            Stage::Group(group) => {
                if group.serial || !group.catalog.is_empty() {
                    pending.copy_all(&mut owned, shared);
                } else {
                    pending.copy_one(&mut owned, shared);
                }
                let mut exceptions = Vec::new();
                // Each owned partition's share of the group: catalog,
                // batches, the order step's decisions, time (see `Step`).
                steps.extend(ids.iter().map(|id| Step::begin(*id, group.now)));
                for (((id, history), drafts), step) in
                    owned.iter_mut().zip(&mut drafts).zip(&mut steps)
                {
                    let mut partition = shared.partitions[*id as usize].write();
                    for change in &group.catalog {
                        step.catalog(&mut partition, change);
                        mark_catalog(shared, &partition, change);
                    }
                    if let Some(prices) = group.prices.get() {
                        if shared.hub.wanted(stockflow_service::stream::Kind::Alerts) {
                            let home = |sku: &str| sku_home(sku, shared.partition_count()) == *id;
                            let percent = shared.price_drop_percent;
                            stockflow_service::stream::price_drop_drafts(
                                prices, percent, home, drafts,
                            );
                        }
                    }
                    let alerts_before = partition.alerts.next_seq;
                    for (request, item) in group.requests.iter().enumerate() {
                        found.clear();
                        changes.clear();
                        step.batch(&mut partition, &item.batch, &mut found, &mut changes);
                        exceptions.extend(found.iter().map(|e| (request, *e)));
                        if group.serial {
                            let mut held = group.hold_changes.lock();
                            for change in hold_changes(&item.batch, &changes) {
                                held.push((request, change.0, change.1));
                            }
                        }
                        record_history(history, &mut partition, &item.batch, &changes, &group);
                        let batch = &item.batch;
                        build_drafts(shared, *id, &partition, batch, &changes, None, drafts);
                    }
                    let none = Batch::default();
                    let since = Some(alerts_before);
                    build_drafts(shared, *id, &partition, &none, &[], since, drafts);
                }
                if group.serial {
                    if barrier.wait().is_leader() {
                        decide_orders(&group, shared);
                    }
                    barrier.wait();
                    let effects = group.order_step.lock().clone();
                    if let Some(effects) = effects {
                        let batch = &effects.batch;
                        for (((id, history), drafts), step) in
                            owned.iter_mut().zip(&mut drafts).zip(&mut steps)
                        {
                            let mut partition = shared.partitions[*id as usize].write();
                            let alerts_before = partition.alerts.next_seq;
                            found.clear();
                            changes.clear();
                            step.orders(&mut partition, &effects, &mut found, &mut changes);
                            if let Some(e) = found.first() {
                                tracing::error!(
                                    ?e,
                                    "an order decision did not apply; this is a bug"
                                );
                            }
                            record_history(history, &mut partition, batch, &changes, &group);
                            let since = Some(alerts_before);
                            build_drafts(shared, *id, &partition, batch, &changes, since, drafts);
                        }
                    }
                }
                // Time passes after the group's events and order step, as
                // in replay.
                for (((id, _), drafts), step) in owned.iter().zip(&mut drafts).zip(steps.drain(..))
                {
                    let mut partition = shared.partitions[*id as usize].write();
                    let alerts_before = partition.alerts.next_seq;
                    step.end(&mut partition);
                    if partition.alerts.next_seq != alerts_before {
                        let none = Batch::default();
                        let since = Some(alerts_before);
                        build_drafts(shared, *id, &partition, &none, &[], since, drafts);
                    }
                    shared.note_next_timer(*id, &partition);
                    let group_drafts = std::mem::take(drafts);
                    shared.hub.publish(group_drafts, *id, group.file.record);
                }
                shared.hub.mark(group.file.record + 1, &ids);
                for (_, history) in &mut owned {
                    if let Err(error) = history.flush() {
                        poison("history write failed", &error);
                    }
                }
                pending.next_record = group.file.record + 1;
                if !exceptions.is_empty() {
                    group.exceptions.lock().extend(exceptions);
                }
                if group.appliers_left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    finish(&group, shared);
                }
            }
            Stage::Checkpoint(job) => {
                // A checkpoint still being spread is finished first: parts
                // of two checkpoints must not interleave.
                pending.copy_all(&mut owned, shared);
                if worker == 0 {
                    job.write_orders(&shared.orders.read());
                }
                pending.next_record = job.next_record();
                pending.left = (0..owned.len()).collect();
                pending.job = Some(job);
            }
        }
    }
    pending.copy_all(&mut owned, shared);
}

/// The partitions of one applier that a checkpoint still has to copy.
#[derive(Default)]
struct PendingCheckpoint {
    job: Option<Arc<CheckpointJob>>,
    /// Indexes into the applier's owned partitions.
    left: Vec<usize>,
    /// The log record the applier applies next: the position of a copy
    /// taken now.
    next_record: u64,
}

impl PendingCheckpoint {
    /// Copies one partition into the checkpoint; false if none is left.
    fn copy_one(&mut self, owned: &mut [(u16, HistoryWriter)], shared: &Shared) -> bool {
        let (Some(job), Some(index)) = (&self.job, self.left.pop()) else {
            return false;
        };
        let (id, history) = &mut owned[index];
        let (files, end) = match history.checkpoint() {
            Ok(done) => done,
            Err(error) => poison("history write failed", &error),
        };
        let mut partition = shared.partitions[*id as usize].write();
        partition.history_end = end;
        job.write_partition(*id, &partition, self.next_record, files);
        if self.left.is_empty() {
            self.job = None;
        }
        true
    }

    fn copy_all(&mut self, owned: &mut [(u16, HistoryWriter)], shared: &Shared) {
        while self.copy_one(owned, shared) {}
    }
}

/// Builds the stream messages of a batch's stock changes, and of the
/// alerts raised since `alerts_since`, only for kinds anyone listens to.
fn build_drafts(
    shared: &Shared,
    id: u16,
    partition: &Partition,
    batch: &Batch,
    changes: &[stockflow_core::Change],
    alerts_since: Option<u64>,
    drafts: &mut Vec<stockflow_service::stream::Draft>,
) {
    use stockflow_service::stream::Kind;
    let stock = shared.hub.wanted(Kind::Stock);
    let alerts = alerts_since.is_some() && shared.hub.wanted(Kind::Alerts);
    stockflow_service::stream::drafts_of(
        id,
        partition,
        batch,
        changes,
        stock,
        alerts_since.filter(|_| alerts),
        drafts,
    );
    mark_totals(shared, partition, changes);
}

/// Whether anyone listens to item totals, to location totals.
fn totals_wanted(shared: &Shared) -> (bool, bool) {
    use stockflow_service::stream::Kind;
    (
        shared.hub.wanted(Kind::Items),
        shared.hub.wanted(Kind::Locations),
    )
}

/// Notes the SKUs and locations `changes` moved, for the next totals
/// cycle, while anyone listens to them.
fn mark_totals(shared: &Shared, partition: &Partition, changes: &[stockflow_core::Change]) {
    if changes.is_empty() {
        return;
    }
    let (items, locations) = totals_wanted(shared);
    if !items && !locations {
        return;
    }
    let mut dirty = shared.totals_dirty.lock();
    for change in changes {
        let (sku, location) = partition.names_of(change.slot);
        if items && !dirty.skus.contains(sku) {
            dirty.skus.insert(sku.clone());
        }
        if locations && !dirty.locations.contains(location) {
            dirty.locations.insert(location.clone());
        }
    }
}

/// Notes the totals a catalog change moves: a product's safety stock and
/// threshold change its available and low counts everywhere it is, a
/// location's threshold the low counts of every SKU there.
fn mark_catalog(shared: &Shared, partition: &Partition, change: &CatalogChange) {
    let (items, locations) = totals_wanted(shared);
    if !items && !locations {
        return;
    }
    let mut dirty = shared.totals_dirty.lock();
    match change {
        CatalogChange::Product(product) => {
            if items && partition.sku_totals(&product.sku).is_some() {
                dirty.skus.insert(product.sku.as_str().into());
            }
            if locations {
                dirty
                    .locations
                    .extend(partition.locations_of_sku(&product.sku));
            }
        }
        CatalogChange::Location(location) => {
            let id = location.location_id.as_str();
            if locations && partition.location_totals(id).is_some() {
                dirty.locations.insert(id.into());
            }
            if items {
                dirty.skus.extend(partition.skus_at_location(id));
            }
        }
        CatalogChange::Acknowledge(_) | CatalogChange::Mute(_) => {}
    }
}

/// Keys pushed per totals cycle at most: the rest wait for the next
/// cycles, so that a bulk import's cycle neither overflows a subscriber's
/// buffer nor floods the stream's resume ring.
const TOTALS_PER_CYCLE: usize = 2_048;

/// Every [`TOTALS_CYCLE`], pushes the totals of the SKUs and locations
/// that changed (at most [`TOTALS_PER_CYCLE`]): the newest value per key,
/// summed over the partitions (one at a time, so appliers wait for no
/// more than one). A sum read while a key moves is followed by the next
/// cycle's, as the move marked it again.
///
/// [`TOTALS_CYCLE`]: stockflow_service::stream::TOTALS_CYCLE
fn publish_totals(shared: &std::sync::Weak<Shared>) {
    use stockflow_core::Totals;
    use stockflow_service::stream::{totals_drafts, TOTALS_CYCLE, TOTALS_STEP};
    loop {
        std::thread::sleep(TOTALS_CYCLE);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let (mut items, mut locations) = {
            let mut dirty = shared.totals_dirty.lock();
            let take = |keys: &mut std::collections::HashSet<Arc<str>>, n: usize| {
                let picked: Vec<Arc<str>> = keys.iter().take(n).cloned().collect();
                for key in &picked {
                    keys.remove(key);
                }
                picked
                    .into_iter()
                    .map(|k| (k, None::<Totals>))
                    .collect::<Vec<_>>()
            };
            // Half the cycle is the locations' if they need it: a flood
            // of SKUs never holds a store's totals back.
            let locations = take(&mut dirty.locations, TOTALS_PER_CYCLE / 2);
            let items = take(&mut dirty.skus, TOTALS_PER_CYCLE - locations.len());
            (items, locations)
        };
        if items.is_empty() && locations.is_empty() {
            continue;
        }
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        locations.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for partition in &shared.partitions {
            let partition = partition.read();
            for (sku, sum) in &mut items {
                if let Some(t) = partition.sku_totals(sku) {
                    sum.get_or_insert_with(Totals::default).add(&t);
                }
            }
            for (location, sum) in &mut locations {
                if let Some(t) = partition.location_totals(location) {
                    sum.get_or_insert_with(Totals::default).add(&t);
                }
            }
        }
        let known = |(key, sum): (Arc<str>, Option<Totals>)| Some((key, sum?));
        let drafts = totals_drafts(
            items.into_iter().filter_map(known),
            locations.into_iter().filter_map(known),
        );
        shared.hub.publish(drafts, TOTALS_STEP, 0);
    }
}

fn record_history(
    history: &mut HistoryWriter,
    partition: &mut Partition,
    batch: &Batch,
    changes: &[stockflow_core::Change],
    group: &Group,
) {
    if let Err(error) = history.record(partition, batch, changes, group.now, group.file.record) {
        poison("history write failed", &error);
    }
}

/// The order step of a group: runs on one applier while the others wait,
/// with every partition at the same log position. It takes in what the
/// group's events did to orders' holds (in the order they were received),
/// then expires due holds and decides the commands.
fn decide_orders(group: &Group, shared: &Shared) {
    let commands: Vec<OrderCommand> = group.orders.iter().map(|(_, c)| c.clone()).collect();
    let mut observed = std::mem::take(&mut *group.hold_changes.lock());
    observed.sort_by_key(|(request, position, _)| (*request, *position));
    let observed: Vec<HoldChange> = observed.into_iter().map(|(_, _, c)| c).collect();
    let mut book = shared.orders.write();
    if !step_due(&book, &commands, group.order_events, group.now) {
        return;
    }
    book.observe(&observed, group.now, group.event_hold_ns);
    let partitions: Vec<_> = shared.partitions.iter().map(|p| p.read()).collect();
    let catalog = shared.catalog.read();
    let stock = StockOf {
        partitions: &partitions,
        catalog: &catalog,
    };
    let expiring = book.due_by(group.now);
    let (events, answers) = book.decide(&commands, group.now, &stock);
    drop(partitions);
    let step = StepEffects::new(
        &commands,
        &events,
        &answers,
        group.now,
        shared.partition_count(),
    );
    *group.order_step.lock() = Some(Arc::new(step));
    if shared.hub.wanted(stockflow_service::stream::Kind::Orders) {
        let drafts = stockflow_service::stream::order_drafts(&book, &expiring, &observed, &answers);
        shared.hub.publish(
            drafts,
            stockflow_service::stream::ORDER_STEP,
            group.file.record,
        );
    }
    for ((request, _), answer) in group.orders.iter().zip(answers) {
        if let Some((receipt, _)) = group.requests[*request].reply.lock().as_mut() {
            receipt.order = Some(answer);
        }
    }
}

/// Runs on the last applier to finish a group: answers its requests.
fn finish(group: &Group, shared: &Shared) {
    let mut exceptions = std::mem::take(&mut *group.exceptions.lock());
    exceptions.sort_by_key(|(request, e)| (*request, e.position));
    for (number, request) in group.requests.iter().enumerate() {
        let Some((mut receipt, reply)) = request.reply.lock().take() else {
            continue;
        };
        for (_, exception) in exceptions.iter().filter(|(r, _)| *r == number) {
            if let Outcome::Rejected(why) = exception.outcome {
                let position = exception.position as usize;
                let event = request.batch.get(position);
                let order = request.batch.order_of(position);
                receipt.errors.push(ReceiptError {
                    index: event.index,
                    event_id: Some(event.event_id.to_owned()),
                    reason: why.describe(event.sku, event.location_id, order),
                });
            }
        }
        receipt.errors.sort_by_key(|e| e.index);
        let _ = reply.send(Ok(receipt)); // the client may have gone; the events still count
    }
    shared
        .applied_records
        .fetch_max(group.file.record + 1, Ordering::Release);
    let latency = group.formed.elapsed();
    metrics::histogram!("stockflow_commit_latency_seconds").record(latency.as_secs_f64());
    shared.activity.committed(group.now, latency);
}
