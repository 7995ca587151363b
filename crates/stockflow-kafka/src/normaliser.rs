//! Raw topics to the canonical topic: each raw topic's suffix (or its
//! `--raw-topic`) names a source format; its messages are translated with that format's mapping,
//! exactly as `POST /v1/sources/{format}/events` would, and produced to the
//! canonical partition that owns their level. Refused input goes to the
//! DLQ with the raw payload and a `reason` header.
//!
//! At least once, on purpose: offsets are committed after the produced
//! events are acknowledged, so a crash re-translates a few messages. The
//! translations are the same (eventIds are kept or derived from the
//! message, the timestamp defaults to the raw record's), so the processors
//! drop them as duplicates.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use stockflow_core::{route, BodyFormat};

use super::wire::{canonical_json, from_millis};
use super::{Contiguity, Deliveries, KafkaSettings, Next, Probe};
use crate::dead_letters::{letter_headers, Origin};
use stockflow_service::sources::Sources;

/// The raw topic whose messages are canonical events already (validated
/// here like any other).
pub use stockflow_service::sources::CANONICAL;

/// Messages translated per cycle.
const CYCLE_MAX: usize = 5000;

pub struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where each raw partition's next record is, shared with the rebalance
/// callbacks (which run on the normaliser's thread, inside `poll`).
type Expected = Arc<Mutex<HashMap<(String, i32), i64>>>;

/// A [`Probe`] per raw topic, shared the same way.
type Probes = Arc<Mutex<HashMap<String, Probe>>>;

/// On a revocation: deliver and commit what was read before the partition
/// goes (or its new reader would produce the same events again after ours,
/// out of order); on an assignment: start from the committed offsets.
pub struct Rebalancing {
    producer: Arc<BaseProducer<Deliveries>>,
    expected: Expected,
    probes: Probes,
}

impl ClientContext for Rebalancing {}

impl ConsumerContext for Rebalancing {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            if super::flush(&self.producer, Duration::from_secs(60)).is_err()
                || self.producer.context().failure().is_some()
            {
                tracing::error!("normaliser could not deliver before a rebalance; stopping so a restart retries");
                std::process::abort();
            }
            commit(consumer, &self.expected);
            let mut expected = self.expected.lock();
            let mut probes = self.probes.lock();
            for e in list.elements() {
                expected.remove(&(e.topic().to_owned(), e.partition()));
                probes
                    .entry(e.topic().to_owned())
                    .or_default()
                    .forget(e.partition());
            }
            tracing::info!(partitions = %describe(list), "normaliser released raw partitions");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let committed = consumer.committed_offsets((*list).clone(), Duration::from_secs(10));
            let mut expected = self.expected.lock();
            let mut probes = self.probes.lock();
            for e in committed.iter().flat_map(|c| c.elements()) {
                if let Offset::Offset(o) = e.offset() {
                    expected.insert((e.topic().to_owned(), e.partition()), o);
                    probes
                        .entry(e.topic().to_owned())
                        .or_default()
                        .placed(e.partition(), o);
                }
            }
            tracing::info!(partitions = %describe(list), "normaliser took raw partitions");
        }
    }
}

pub fn start(
    settings: KafkaSettings,
    sources: Sources,
    events_max: usize,
) -> anyhow::Result<Running> {
    let producer: Arc<BaseProducer<Deliveries>> = Arc::new(
        settings
            .producer_config()
            .create_with_context(Deliveries::default())?,
    );
    let expected: Expected = Arc::default();
    let probes: Probes = Arc::default();
    let consumer: BaseConsumer<Rebalancing> = settings
        .client(&[
            ("group.id", &format!("{}-normaliser", settings.group)),
            // As the processors' group: a member leaving moves only its
            // partitions, and the others keep translating meanwhile.
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("topic.metadata.refresh.interval.ms", "5000"),
        ])
        .create_with_context(Rebalancing {
            producer: producer.clone(),
            expected: expected.clone(),
            probes: probes.clone(),
        })?;
    // The raw topic of every format this instance knows (`topics create`
    // makes them). Not a regex subscription: a topic no format can read
    // has no reader to give its messages a reason anyway.
    let raw: Vec<String> = std::iter::once(CANONICAL)
        .chain(sources.names())
        .map(|format| format!("{}{format}", settings.topics.raw_prefix))
        .chain(
            settings
                .topics
                .raw_topics
                .iter()
                .map(|(topic, _)| topic.clone()),
        )
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("kafka-normaliser".into())
        .spawn(move || {
            let raw: Vec<&str> = raw.iter().map(String::as_str).collect();
            if settings.join(&consumer, &raw, || stopping.load(Ordering::Acquire)) {
                run(
                    consumer, producer, expected, probes, settings, sources, events_max, stopping,
                )
            }
        })?;
    Ok(Running {
        stop,
        thread: Some(thread),
    })
}

/// `topic[partition, …]` per topic, for the logs.
fn describe(list: &TopicPartitionList) -> String {
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for e in list.elements() {
        by_topic
            .entry(e.topic().to_owned())
            .or_default()
            .push(e.partition());
    }
    let parts: Vec<String> = by_topic
        .into_iter()
        .map(|(topic, partitions)| format!("{topic}{partitions:?}"))
        .collect();
    parts.join(" ")
}

#[allow(clippy::too_many_arguments)]
fn run(
    consumer: BaseConsumer<Rebalancing>,
    producer: Arc<BaseProducer<Deliveries>>,
    expected: Expected,
    probes: Probes,
    settings: KafkaSettings,
    sources: Sources,
    events_max: usize,
    stop: Arc<AtomicBool>,
) {
    let params = BTreeMap::new();
    let mut contiguity: HashMap<String, Contiguity> = HashMap::new();
    while !stop.load(Ordering::Acquire) {
        // Readers placed inside a record batch that hear nothing: further back.
        {
            let expected = expected.lock();
            for (topic, probe) in probes.lock().iter_mut() {
                probe.recheck_idle(|p| expected.get(&(topic.clone(), p)).copied());
            }
        }
        let due: Vec<(String, i32, i64)> = probes
            .lock()
            .iter_mut()
            .flat_map(|(topic, probe)| {
                probe
                    .due()
                    .into_iter()
                    .map(move |(p, o)| (topic.clone(), p, o))
            })
            .collect();
        for (topic, partition, offset) in due {
            tracing::debug!(%topic, partition, offset, "no records since placed; reading from further back");
            if let Err(error) = consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                tracing::debug!(%error, "reading from further back");
            }
        }
        let mut seen = 0usize;
        let mut wait = Duration::from_millis(100);
        while seen < CYCLE_MAX {
            let message = match consumer.poll(wait) {
                Some(Ok(m)) => m,
                Some(Err(error)) => {
                    tracing::warn!(%error, "consuming raw topics");
                    break;
                }
                None => break,
            };
            wait = Duration::ZERO;
            seen += 1;
            let topic = message.topic().to_owned();
            let slot = (topic.clone(), message.partition());
            // Placing a reader creates its probe: none, nothing to tell.
            if let Some(probe) = probes.lock().get_mut(&topic) {
                probe.heard(message.partition());
            }
            let want = expected.lock().get(&slot).copied();
            if let Some(want) = want {
                let gaps = contiguity.entry(topic.clone()).or_default();
                let log_start = || {
                    consumer
                        .fetch_watermarks(&topic, message.partition(), Duration::from_secs(10))
                        .ok()
                        .map(|(low, _)| low)
                };
                match gaps.check(
                    &topic,
                    message.partition(),
                    want,
                    message.offset(),
                    log_start,
                ) {
                    Next::Old => continue,
                    Next::Take => {}
                    Next::Seek(offset) => {
                        if let Err(error) = consumer.seek(
                            &topic,
                            message.partition(),
                            Offset::Offset(offset),
                            Duration::from_secs(10),
                        ) {
                            tracing::warn!(%error, "reading again");
                        }
                        continue;
                    }
                }
            }
            expected.lock().insert(slot, message.offset() + 1);
            let payload = message.payload().unwrap_or_default();
            let format = settings.topics.format_of_raw(&topic).unwrap_or(&topic);
            let received = from_millis(message.timestamp().to_millis().unwrap_or(0));
            let dead = |reason: &str| {
                let origin = Origin::Record {
                    topic: &topic,
                    partition: message.partition(),
                    offset: message.offset(),
                };
                let headers = letter_headers(reason, origin);
                send(
                    &producer,
                    BaseRecord::<(), [u8]>::to(&settings.topics.dlq)
                        .payload(payload)
                        .headers(headers),
                );
                metrics::counter!("stockflow_events_rejected_total").increment(1);
            };
            let framing = if payload.trim_ascii_start().starts_with(b"[")
                || payload.trim_ascii_start().starts_with(b"{")
            {
                BodyFormat::Json
            } else {
                BodyFormat::Ndjson
            };
            let translated = if format == CANONICAL {
                stockflow_core::parse_body(payload, framing, events_max)
            } else {
                let Some(mapping) = sources.get(format) else {
                    let known: Vec<&str> = sources.names().collect();
                    dead(&format!(
                        "no source format {format:?}; known formats: {CANONICAL}, {}",
                        known.join(", ")
                    ));
                    continue;
                };
                stockflow_service::sources::translate(
                    mapping, payload, framing, &params, events_max,
                )
            };
            let parsed = match translated {
                Ok(parsed) => parsed,
                Err(error) => {
                    dead(&error.to_string());
                    continue;
                }
            };
            for rejected in &parsed.rejected {
                dead(&format!("message {}: {}", rejected.index, rejected.reason));
            }
            // Who sent the raw record, if it says (see `wire::BY_HEADER`).
            let by = super::wire::sender(message.headers()).unwrap_or("");
            for event in parsed.batch.iter() {
                let json = canonical_json(&event, received);
                let key = super::level_key(event.sku, event.location_id);
                let partition = route(event.sku, event.location_id, settings.partitions);
                let mut record = BaseRecord::to(&settings.topics.canonical)
                    .partition(i32::from(partition))
                    .key(&key)
                    .payload(&json)
                    .timestamp(received.0 / 1_000_000);
                if let Some(headers) = super::wire::by_headers(by) {
                    record = record.headers(headers);
                }
                send(&producer, record);
            }
        }
        if seen == 0 {
            continue;
        }
        if let Err(error) = super::flush(&producer, Duration::from_secs(60)) {
            // The consumer has moved past these messages: only a restart
            // from the committed offsets translates them again.
            tracing::error!(%error, "normaliser could not deliver; stopping so a restart retries them");
            std::process::abort();
        }
        if let Some(failure) = producer.context().failure() {
            tracing::error!(%failure, "normaliser could not deliver; stopping so a restart retries the messages");
            std::process::abort();
        }
        // After the flush: a crash before this line re-translates.
        commit(&consumer, &expected);
    }
}

/// Commits the offset after the last message translated, per partition.
/// Not the consumer's own position: after a re-read seek that is past
/// messages not translated yet, and committing it would lose them.
fn commit<C: ConsumerContext>(consumer: &BaseConsumer<C>, expected: &Expected) {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in expected.lock().iter() {
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    if list.count() == 0 {
        return;
    }
    if let Err(error) = consumer.commit(&list, CommitMode::Sync) {
        tracing::warn!(%error, "committing normaliser offsets");
    }
}

fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
    producer: &BaseProducer<Deliveries>,
    record: BaseRecord<'_, K, P>,
) {
    if let Err(error) = super::send(producer, record) {
        tracing::error!(%error, "normaliser cannot produce; stopping so a restart retries the messages");
        std::process::abort();
    }
}
