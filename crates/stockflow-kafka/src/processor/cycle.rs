//! One processing cycle of a partition: parse the canonical and
//! repartition records, admit and apply them with the core, answer what
//! `?wait=applied` asks, and queue the outputs (levels, alerts, in-transit
//! effects, roll-up reports) and the changelog record.

use super::*;

/// Why a restore stops at a changelog record it cannot read, and what to
/// do: a record in another format was written by another version of
/// stockflow (see `wire::CHANGELOG_FORMAT`).
pub(super) fn unreadable(
    topic: &str,
    p: u16,
    offset: i64,
    error: &dyn std::fmt::Display,
) -> anyhow::Error {
    anyhow::anyhow!(
        "changelog {topic} partition {p} offset {offset} cannot be read: {error}; it was written by another version of stockflow: run that version, or start this one on new topics (`stockflow topics create --topic-prefix NEW`, then `serve --topic-prefix NEW --group NEW`)"
    )
}

/// The line owner's answers to the saga RESERVATIONs of an applied
/// transit batch, each to its order's home: granted unless refused.
pub(super) fn line_results(
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
pub(super) fn contiguous<'a>(
    gaps: &mut crate::Contiguity,
    topic: &str,
    p: u16,
    mut next: i64,
    inputs: &'a [Input],
    seeks: &mut Vec<(u16, i64)>,
    log_start: impl Fn() -> Option<i64>,
) -> Vec<&'a Input> {
    let mut run = Vec::with_capacity(inputs.len());
    for input in inputs {
        match gaps.check(topic, i32::from(p), next, input.offset, &log_start) {
            crate::Next::Old => continue,
            crate::Next::Take => {}
            crate::Next::Seek(offset) => {
                seeks.push((p, offset));
                break;
            }
        }
        run.push(input);
        next = input.offset + 1;
    }
    run
}

impl Processor {
    /// Parses input records into a batch; refused ones go to the DLQ.
    /// Returns the batch and the largest record timestamp.
    /// Also returns the offset of each parsed line (events' `index`).
    pub(super) fn parse(
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
        batch.set_by_each(|index| lines[index as usize].by.as_deref().unwrap_or(""));
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

    /// Takes what the repartition consumer has now, up to `max` records,
    /// into `transit` by partition; how many it took.
    pub(super) fn take_transit(
        &mut self,
        transit: &mut HashMap<u16, Vec<Input>>,
        max: usize,
    ) -> usize {
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

    /// Queues the alerts partition `p` raised since `alerts_before`.
    pub(super) fn publish_alerts(&self, p: u16, partition: &Partition, alerts_before: u64) {
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

    /// Applies one cycle's input of partition `p`, queueing its changelog
    /// record and outputs.
    pub(super) fn process(&mut self, p: u16, canonical: &[Input], transit: &[Input]) {
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
            &self.settings.topics.canonical,
            p,
            from.canonical,
            canonical,
            &mut self.seek_back,
            log_start(&self.settings.topics.canonical),
        );
        let transit_in = contiguous(
            &mut self.transit_gaps,
            &self.settings.topics.repartition,
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
                    by: i.by.clone(),
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
        let (reports, moved) = self.level_reports(p, &transit_in);
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
        // This batch is one step of the partition: the canonical events,
        // then the transit batch, then time (see `Step`).
        let mut step = Step::begin(p, now);
        step.batch(&mut partition, &events, &mut exceptions, &mut changes);
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
            let wall = stockflow_service::clock::wall_clock();
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
        step.batch(
            &mut partition,
            &transit_batch,
            &mut exceptions,
            &mut changes,
        );
        step.end(&mut partition);
        replies.extend(line_results(p, n, &transit_batch, &exceptions, &partition));

        // In-transit effects owned elsewhere go to their owner.
        for (position, r) in events.routes().iter().enumerate() {
            if let Some(d) = r.destination.filter(|d| *d != p) {
                let event = events.get(position);
                let key = level_key(event.sku, event.to_location_id.unwrap_or_default());
                let payload = canonical_json(&event, now);
                let mut record = BaseRecord::to(&self.settings.topics.repartition)
                    .partition(i32::from(d))
                    .key(&key)
                    .payload(&payload);
                if let Some(headers) = by_headers(event.by) {
                    record = record.headers(headers);
                }
                self.send(record);
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
            let homes = [sku_home(&view.sku, n), location_home(&view.location_id, n)];
            let once = if homes[0] == homes[1] { 1 } else { 2 };
            for &home in &homes[..once] {
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
            }
            json.clear();
            let change = &changes[i];
            let batch = if i < transit_changes {
                &events
            } else {
                &transit_batch
            };
            let event = batch.get(change.position as usize);
            let level = stockflow_http::LevelOut::new(&view, partition.policy_of(slot))
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
        let mut history = crate::history::Records::new(from, to, writer);
        for (i, change) in changes.iter().enumerate() {
            let batch = if i < transit_changes {
                &events
            } else {
                &transit_batch
            };
            // Names only: a view would copy the level and its COUNT history.
            let (sku, location) = partition.names_of(change.slot);
            // The level's previous entry is the materialiser's to link.
            let fixed = stockflow_service::history::Fixed::of(change, batch, now, 0, 0);
            let at = change.position as usize;
            history.push(sku, location, &fixed, batch.event_id(at), batch.by(at));
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
        self.publish_totals(p, &moved);
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
