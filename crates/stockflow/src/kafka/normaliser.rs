//! Raw topics to the canonical topic: each raw topic's suffix names a
//! source format; its messages are translated with that format's mapping,
//! exactly as `POST /v1/sources/{format}/events` would, and produced to the
//! canonical partition that owns their level. Refused input goes to the
//! DLQ with the raw payload and a `reason` header.
//!
//! At least once, on purpose: offsets are committed after the produced
//! events are acknowledged, so a crash re-translates a few messages. The
//! translations are the same (eventIds are kept or derived from the
//! message, the timestamp defaults to the raw record's), so the processors
//! drop them as duplicates.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use stockflow_core::{route, BodyFormat};

use super::wire::{canonical_json, from_millis};
use super::KafkaSettings;
use crate::sources::Sources;

/// The raw topic whose messages are canonical events already (validated
/// here like any other).
pub const CANONICAL: &str = "canonical";

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

pub fn start(
    settings: KafkaSettings,
    sources: Sources,
    events_max: usize,
) -> anyhow::Result<Running> {
    let consumer: BaseConsumer = settings
        .client(&[
            ("group.id", &format!("{}-normaliser", settings.group)),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("topic.metadata.refresh.interval.ms", "5000"),
        ])
        .create()?;
    // A regex subscription: new raw topics are picked up as they appear.
    let pattern = format!("^{}.+", regex_escape(&settings.topics.raw_prefix));
    consumer.subscribe(&[&pattern])?;
    let producer: BaseProducer = settings.producer_config().create()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("kafka-normaliser".into())
        .spawn(move || run(consumer, producer, settings, sources, events_max, stopping))?;
    Ok(Running {
        stop,
        thread: Some(thread),
    })
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = ".^$*+?()[]{}|\\".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

fn run(
    consumer: BaseConsumer,
    producer: BaseProducer,
    settings: KafkaSettings,
    sources: Sources,
    events_max: usize,
    stop: Arc<AtomicBool>,
) {
    let params = BTreeMap::new();
    while !stop.load(Ordering::Acquire) {
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
            let payload = message.payload().unwrap_or_default();
            let format = topic
                .strip_prefix(&settings.topics.raw_prefix)
                .unwrap_or(&topic);
            let received = from_millis(message.timestamp().to_millis().unwrap_or(0));
            let dead = |reason: &str| {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "reason",
                        value: Some(reason),
                    })
                    .insert(Header {
                        key: "source-topic",
                        value: Some(topic.as_str()),
                    })
                    .insert(Header {
                        key: "source-partition",
                        value: Some(&message.partition().to_string()),
                    })
                    .insert(Header {
                        key: "source-offset",
                        value: Some(&message.offset().to_string()),
                    });
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
                crate::sources::translate(mapping, payload, framing, &params, events_max)
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
            for event in parsed.batch.iter() {
                let json = canonical_json(&event, received);
                let key = super::level_key(event.sku, event.location_id);
                let partition = route(event.sku, event.location_id, settings.partitions);
                send(
                    &producer,
                    BaseRecord::to(&settings.topics.canonical)
                        .partition(i32::from(partition))
                        .key(&key)
                        .payload(&json)
                        .timestamp(received.0 / 1_000_000),
                );
            }
        }
        if seen == 0 {
            continue;
        }
        if let Err(error) = producer.flush(Duration::from_secs(60)) {
            // The consumer has moved past these messages: only a restart
            // from the committed offsets translates them again.
            tracing::error!(%error, "normaliser could not deliver; stopping so a restart retries them");
            std::process::abort();
        }
        // After the flush: a crash before this line re-translates.
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::warn!(%error, "committing normaliser offsets");
        }
    }
}

fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
    producer: &BaseProducer,
    mut record: BaseRecord<'_, K, P>,
) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((error, _)) => {
                tracing::error!(%error, "normaliser cannot produce");
                return;
            }
        }
    }
}
