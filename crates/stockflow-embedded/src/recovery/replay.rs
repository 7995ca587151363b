//! Replaying the log past the checkpoint: records gathered in chunks and
//! applied by partition on worker threads, exactly as the pipeline did,
//! with their history and the stream messages the journal lacks.

use super::*;

/// The drafts rebuilt for `record` of one partition, appended to.
pub(super) fn backlog_entry(entries: &mut Vec<(u64, Vec<Draft>)>, record: u64) -> &mut Vec<Draft> {
    if entries.last().is_none_or(|(last, _)| *last != record) {
        entries.push((record, Vec::new()));
    }
    &mut entries.last_mut().expect("just pushed").1
}

/// Events gathered before the replay threads take them: enough to keep
/// both cores busy for tens of milliseconds, few enough to stay small.
pub(super) const REPLAY_CHUNK_EVENTS: usize = 100_000;

/// Records gathered for [`replay_pending`], and the stream messages the
/// replay builds again.
pub(super) struct Replay {
    pub(super) pending: Vec<Pending>,
    /// Events in `pending`.
    pub(super) events: usize,
    /// Per partition, the first record whose stream messages are rebuilt
    /// (`None`: no journal, none are).
    pub(super) regen: Option<Vec<u64>>,
    /// Per partition, (record, messages) rebuilt.
    pub(super) backlog: Vec<Vec<(u64, Vec<Draft>)>>,
}

impl Replay {
    /// Replays everything gathered; returns what events naming orders did
    /// to their holds, in the order the pipeline received them. `open`:
    /// the steps of the last record, if it is a barrier (see [`Pending`]).
    pub(super) fn flush(
        &mut self,
        partitions: &mut [Partition],
        history: &mut [HistoryWriter],
        from: &[u64],
        open: Option<&mut [Step]>,
    ) -> anyhow::Result<Vec<HoldChange>> {
        let regen = self.regen.as_deref();
        let observed = replay_pending(
            partitions,
            history,
            &mut self.pending,
            from,
            regen,
            &mut self.backlog,
            open,
        )?;
        self.events = 0;
        Ok(observed)
    }
}

/// A log record's admitted, routed batches, waiting to be replayed.
pub(super) struct Pending {
    pub(super) number: u64,
    pub(super) now: Timestamp,
    pub(super) batches: Vec<stockflow_core::Batch>,
    /// A barrier: its caller began its steps (and applied its catalog
    /// changes) and ends them after the order step; replay applies only
    /// its batches, with the steps handed to [`Replay::flush`]. Always the
    /// last record gathered.
    pub(super) open: bool,
    /// Some batch has events naming orders, whose hold changes the order
    /// step takes in.
    pub(super) observe: bool,
}

/// Replays `pending` records, each one step per partition (but an open
/// one's, which `open` holds), on one thread per core, each owning a
/// contiguous share of the partitions and their history writers. Each
/// partition sees the records in log order, which is all the order there
/// is: within a record no partition reads another.
pub(super) fn replay_pending(
    partitions: &mut [Partition],
    history: &mut [HistoryWriter],
    pending: &mut Vec<Pending>,
    from: &[u64],
    regen: Option<&[u64]>,
    backlog: &mut [Vec<(u64, Vec<Draft>)>],
    open: Option<&mut [Step]>,
) -> anyhow::Result<Vec<HoldChange>> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    debug_assert!(
        pending.iter().rev().skip(1).all(|record| !record.open)
            && pending.last().is_some_and(|last| last.open) == open.is_some(),
        "only the last record gathered is open, and it comes with its steps"
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = partitions
        .len()
        .div_ceil(threads.clamp(1, partitions.len().max(1)));
    let records = &*pending;
    let mut open = open.map(|steps| steps.chunks_mut(share));
    let observed = std::thread::scope(|scope| {
        let workers: Vec<_> = partitions
            .chunks_mut(share)
            .zip(history.chunks_mut(share))
            .zip(backlog.chunks_mut(share))
            .enumerate()
            .map(|(worker, ((partitions, history), backlog))| {
                let mut open = open.as_mut().and_then(Iterator::next);
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
                            let mut own =
                                (!record.open).then(|| Step::begin(id as u16, record.now));
                            let step = match own.as_mut() {
                                Some(step) => step,
                                None => &mut open.as_deref_mut().expect("open steps")[offset],
                            };
                            for (n, batch) in record.batches.iter().enumerate() {
                                exceptions.clear();
                                changes.clear();
                                step.batch(partition, batch, &mut exceptions, &mut changes);
                                if record.observe {
                                    let held = hold_changes(batch, &changes);
                                    observed.extend(held.map(|(at, c)| (record.number, n, at, c)));
                                }
                                let written = history.record(
                                    partition,
                                    batch,
                                    &changes,
                                    record.now,
                                    record.number,
                                );
                                if let Err(error) = written {
                                    if let Some(step) = own {
                                        step.abandon();
                                    }
                                    return Err(error).context("cannot write history");
                                }
                                if rebuild {
                                    let drafts = backlog_entry(backlog, record.number);
                                    let p = &*partition;
                                    stockflow_service::stream::drafts_of(
                                        id as u16, p, batch, &changes, true, None, drafts,
                                    );
                                }
                            }
                            if let Some(step) = own {
                                step.end(partition);
                            }
                            if rebuild {
                                let drafts = backlog_entry(backlog, record.number);
                                let p = &*partition;
                                stockflow_service::stream::alert_drafts(
                                    id as u16,
                                    p,
                                    alerts_before,
                                    drafts,
                                );
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

/// Applies the order step's decisions (`effects`) of log record `record`
/// to every partition through its step, and writes what they did to
/// their history, as the appliers do.
pub(super) fn apply_orders_with_history(
    partitions: &mut [Partition],
    history: &mut [HistoryWriter],
    steps: &mut [Step],
    effects: &StepEffects,
    record: u64,
) -> anyhow::Result<Vec<Vec<stockflow_core::Change>>> {
    let mut exceptions = Vec::new();
    let mut all = Vec::with_capacity(partitions.len());
    for ((partition, history), step) in partitions.iter_mut().zip(history).zip(steps) {
        let mut changes = Vec::new();
        step.orders(partition, effects, &mut exceptions, &mut changes);
        history
            .record(partition, &effects.batch, &changes, step.now(), record)
            .context("cannot write history")?;
        all.push(changes);
    }
    debug_assert!(
        exceptions.is_empty(),
        "every decision applies: {exceptions:?}"
    );
    Ok(all)
}
