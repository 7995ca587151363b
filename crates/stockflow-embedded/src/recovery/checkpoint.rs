//! Checkpoints: written part by part in the background (whole or not at
//! all), the newest two kept, loaded in parallel on a start.

use super::*;

/// Whole checkpoints kept; older ones are deleted after a new one lands.
pub(super) const CHECKPOINTS_KEPT: usize = 2;

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

pub(super) fn write_snapshot_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)?;
    stockflow_log::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(())
}

/// Whole checkpoints under `root` as (record, path), oldest first. Their
/// names are the zero-padded record number; `*.tmp` ones are not whole.
pub(super) fn whole_checkpoints(root: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
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

pub(super) fn newest_checkpoint(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
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

pub(super) fn load_checkpoint(
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

pub(super) fn part_path(checkpoint: &Path, partition: u16) -> PathBuf {
    checkpoint.join(format!("part-{partition:04}.snap"))
}

pub(super) struct InFlight;

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
pub(super) fn lower_priority() {
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
            match stockflow_service::history::compact(&data_dir, id, horizon) {
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
    pub(super) fn write_part(
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
    pub(super) fn part_done(&self) -> anyhow::Result<()> {
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
