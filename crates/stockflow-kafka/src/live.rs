//! The live stream in Kafka mode. Every instance reads the output topics
//! (stock levels, alerts, orders, item and location totals: every
//! partition, from their end) and
//! pushes what arrives through its own hub to its SSE and WebSocket
//! subscribers, with the embedded mode's filters, buffers and resync.
//!
//! Differences from the embedded stream: a stock message is the level as
//! the stock-levels topic has it (the newest per level and processing
//! cycle, with its `version` and its change's eventId and eventType; no
//! outcome), and ids are this instance's, so
//! a client resumes with Last-Event-ID on the same instance while it runs;
//! anywhere else it is told of the gap and reloads from the REST API.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use super::KafkaSettings;
use stockflow_service::stream::{Body, Draft, Hub, Kind};

/// Most messages handed to the hub at once.
const BATCH_MAX: usize = 1_000;

/// Handle to the feeding thread.
pub struct Feeder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Feeder {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts reading the output topics into `hub`.
pub fn start(settings: &KafkaSettings, hub: Arc<Hub>) -> anyhow::Result<Feeder> {
    let reader: BaseConsumer = settings
        .client(&[
            ("enable.auto.commit", "false"),
            ("group.id", &format!("{}-live", settings.group)),
            // Pushed as soon as the broker has it.
            ("fetch.wait.max.ms", "10"),
        ])
        .create()?;
    let t = &settings.topics;
    let topics = [
        (t.stock_levels.clone(), Kind::Stock),
        (t.alerts.clone(), Kind::Alerts),
        (t.orders.clone(), Kind::Orders),
        (t.item_totals.clone(), Kind::Items),
        (t.location_totals.clone(), Kind::Locations),
    ];
    let mut list = TopicPartitionList::new();
    for (topic, _) in &topics {
        for p in 0..i32::from(settings.partitions) {
            list.add_partition_offset(topic, p, Offset::End)?;
        }
    }
    reader.assign(&list)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("kafka-live".into())
        .spawn(move || {
            while !stopping.load(Ordering::Acquire) {
                let mut drafts = Vec::new();
                let mut wait = Duration::from_millis(100);
                while drafts.len() < BATCH_MAX {
                    let Some(Ok(m)) = reader.poll(wait) else {
                        break;
                    };
                    wait = Duration::ZERO;
                    let Some(kind) = topics
                        .iter()
                        .find(|(topic, _)| topic == m.topic())
                        .map(|(_, kind)| *kind)
                    else {
                        continue;
                    };
                    if !hub.wanted(kind) {
                        continue;
                    }
                    if let Some(draft) = m
                        .payload()
                        .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                        .map(|value| draft(kind, value))
                    {
                        drafts.push(draft);
                    }
                }
                // Ids are this hub's own: no log record to name.
                hub.publish(drafts, 0, 0);
            }
        })?;
    Ok(Feeder {
        stop,
        thread: Some(thread),
    })
}

/// A hub message from an output record's JSON (levels and alerts carry
/// sku and locationId, item totals a sku, location totals a locationId;
/// orders carry neither, as in the embedded mode).
fn draft(kind: Kind, value: Value) -> Draft {
    let text = |field: &str| {
        (kind != Kind::Orders)
            .then(|| value[field].as_str().map(Arc::<str>::from))
            .flatten()
    };
    Draft {
        kind,
        sku: text("sku"),
        location_id: text("locationId"),
        body: Body::Json(value),
    }
}
