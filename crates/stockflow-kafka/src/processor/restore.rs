//! Taking partitions and giving them up: a revoked partition is flushed
//! and snapshotted before it is released; an assigned one is restored
//! (local snapshot, then the changelog written since, folded record by
//! record exactly as the cycle that wrote it) before its first record.

use super::*;

/// A partition's state on local disk, so that a partition coming back to
/// this instance reads only the changelog written since.
#[derive(Serialize)]
pub(super) struct LocalSnapshotOut<'a> {
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
pub(super) struct LocalSnapshotIn {
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
pub(super) struct State {
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

impl Processor {
    pub(super) fn canonical_partitions(&self, list: &TopicPartitionList) -> Vec<u16> {
        list.elements()
            .iter()
            .filter(|e| e.topic() == self.settings.topics.canonical)
            .map(|e| e.partition() as u16)
            .collect()
    }

    pub(super) fn snapshot_path(&self, p: u16) -> PathBuf {
        self.data_dir.join(format!("partition-{p:05}.snap"))
    }

    /// Flushes what partitions `revoked` produced, snapshots and releases them.
    pub(super) fn revoke(&mut self, revoked: &[u16]) {
        if revoked.is_empty() {
            return;
        }
        if let Err(error) = crate::flush(&self.producer, Duration::from_secs(30)) {
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
    pub(super) fn assign(&mut self, assigned: &[u16]) {
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
    pub(super) fn reassign_repartition(&mut self) {
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
    pub(super) fn assign_repartition(&mut self, from: &HashMap<u16, i64>) {
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

    pub(super) fn fresh(&self) -> State {
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

    pub(super) fn load_snapshot(&self, p: u16) -> anyhow::Result<Option<State>> {
        let path = self.snapshot_path(p);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = stockflow_log::read_snapshot(&path)?;
        self.decode_snapshot(&bytes).map(Some)
    }

    /// A partition's state from an encoded snapshot (local, or assembled
    /// from the changelog's snapshot chunks).
    pub(super) fn decode_snapshot(&self, bytes: &[u8]) -> anyhow::Result<State> {
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
    pub(super) fn restore(
        &self,
        p: u16,
        hint: Option<&SnapshotIndex>,
    ) -> anyhow::Result<(Owned, u64)> {
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
            let mut gaps = crate::Contiguity::with_transactions(self.settings.transactions);
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
                match gaps.check(topic, i32::from(p), next, message.offset(), || Some(low)) {
                    crate::Next::Old => continue,
                    crate::Next::Take => {}
                    crate::Next::Seek(offset) => {
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
                        gaps = crate::Contiguity::with_transactions(self.settings.transactions);
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
    pub(super) fn fold(
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
        let mut step = Step::begin(p, record.now);
        step.batch(partition, &record.events, &mut exceptions, &mut changes);
        step.batch(partition, &record.transit, &mut exceptions, &mut changes);
        step.end(partition);
        let mut book = self.shared.books[p as usize].write();
        let mut asked = StepOut::default();
        for message in &record.orders {
            book.apply(message, record.now, &mut asked);
        }
        book.expire(record.now, &mut asked);
        let mut rollups = self.shared.rollups[p as usize].write();
        for payload in &record.rollups {
            for r in decode_reports(payload)? {
                super::sagas::apply_report(&mut rollups, p, n, &r);
            }
        }
        owned.positions = record.to;
        owned.now = record.now;
        Ok(true)
    }

    pub(super) fn write_snapshot(&self, p: u16, owned: &Owned) -> anyhow::Result<()> {
        let bytes = self.encode_snapshot(p, owned)?;
        stockflow_log::write_snapshot(&self.snapshot_path(p), &bytes)?;
        Ok(())
    }

    pub(super) fn encode_snapshot(&self, p: u16, owned: &Owned) -> anyhow::Result<Vec<u8>> {
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
}
