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
    /// to their holds, in the order the pipeline received them.
    pub(super) fn flush(
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
pub(super) struct Pending {
    pub(super) number: u64,
    pub(super) now: Timestamp,
    pub(super) batches: Vec<stockflow_core::Batch>,
    /// Run the partitions' timers after the batches.
    pub(super) tick: bool,
    /// Some batch has events naming orders, whose hold changes the order
    /// step takes in.
    pub(super) observe: bool,
}

/// Replays `pending` records, each followed by its timers (unless told
/// otherwise), on one thread
/// per core, each owning a contiguous share of the partitions and their
/// history writers. Each partition sees the records in log order, which is
/// all the order there is: within a record no partition reads another.
pub(super) fn replay_pending(
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
                                    stockflow_service::stream::drafts_of(
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

/// Applies an admitted, routed batch of log record `record` to every
/// partition whose checkpoint part does not already include it (`from`),
/// and writes what it did to their history, as the appliers do.
pub(super) fn apply_with_history(
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
