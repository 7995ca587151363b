//! Webhooks in Kafka mode: the alerts a URL is sent come from the alerts
//! topic, read by a consumer group of that URL's own (one per URL, the
//! same name on every instance), so each alert is sent by one member of
//! the cluster. An alert's offset is stored only once it is delivered or
//! kept as a dead letter, and committed from there, so an instance that
//! stops or crashes leaves the rest to the next owner of its partitions:
//! at least once, across restarts. A group new to a URL starts at the
//! topic's end as its first member found it (alerts from before the URL
//! was configured are not sent).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::{self, error::TrySendError};

use super::KafkaSettings;
use stockflow_service::stream::{Delivery, FEED_AHEAD_MAX};

/// The consumer group that delivers to `url`.
pub fn group_of(settings: &KafkaSettings, url: &str) -> String {
    let hash = xxhash_rust::xxh3::xxh3_64(url.as_bytes());
    format!("{}-webhook-{hash:016x}", settings.group)
}

/// Starts reading the alerts topic for `url`; the thread ends once the
/// server closes (`closing`) or the delivering task is gone.
pub fn feed(
    settings: &KafkaSettings,
    url: &str,
    closing: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<mpsc::Receiver<Delivery>> {
    let group = group_of(settings, url);
    let consumer: BaseConsumer = settings
        .client(&[
            ("group.id", &group),
            // As the processor's: a member that dies gives up only its
            // own partitions.
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "latest"),
        ])
        .create()
        .context("creating the webhook's consumer")?;
    pin_start(&consumer, &settings.topics.alerts);
    let (tx, rx) = mpsc::channel(FEED_AHEAD_MAX);
    let consumer = Arc::new(consumer);
    let (settings, topic) = (settings.clone(), settings.topics.alerts.clone());
    std::thread::Builder::new()
        .name("webhook-feed".into())
        .spawn(move || {
            if settings.join(&consumer, &[&topic], || *closing.borrow() || tx.is_closed()) {
                run(&consumer, &tx, &closing);
            }
        })?;
    Ok(rx)
}

/// Commits the topic's end as the group's position on each partition it
/// has none for, before it reads: the group starts where the first member
/// to start found the topic, and an alert raised while partitions move
/// between members later is not skipped (a member that gets a partition
/// with no position would start at the end as it then is). A commit that
/// fails (another member is already reading) is left to that member.
fn pin_start(consumer: &BaseConsumer, topic: &str) {
    let timeout = Duration::from_secs(10);
    let pinned = || -> Result<(), rdkafka::error::KafkaError> {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let count = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        let mut all = TopicPartitionList::new();
        for p in 0..count as i32 {
            all.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(all, timeout)?;
        let mut start = TopicPartitionList::new();
        for element in committed.elements() {
            if !matches!(element.offset(), Offset::Offset(_)) {
                let (_, end) = consumer.fetch_watermarks(topic, element.partition(), timeout)?;
                start.add_partition_offset(topic, element.partition(), Offset::Offset(end))?;
            }
        }
        if start.count() > 0 {
            consumer.commit(&start, CommitMode::Sync)?;
        }
        Ok(())
    };
    if let Err(error) = pinned() {
        tracing::debug!(%error, "a webhook's group start was not pinned here");
    }
}

fn run(
    consumer: &Arc<BaseConsumer>,
    tx: &mpsc::Sender<Delivery>,
    closing: &tokio::sync::watch::Receiver<bool>,
) {
    // What was read but not handed over yet: while it is there, the
    // assignment is paused (the consumer still polls, so it stays in the
    // group however slow the receiver is).
    let mut waiting: VecDeque<Delivery> = VecDeque::new();
    let mut paused = false;
    while !*closing.borrow() && !tx.is_closed() {
        while let Some(delivery) = waiting.pop_front() {
            match tx.try_send(delivery) {
                Ok(()) => {}
                Err(TrySendError::Full(delivery)) => {
                    waiting.push_front(delivery);
                    break;
                }
                Err(TrySendError::Closed(_)) => return,
            }
        }
        let full = !waiting.is_empty();
        if full || paused {
            if let Ok(assignment) = consumer.assignment() {
                let _ = match full {
                    true => consumer.pause(&assignment),
                    false => consumer.resume(&assignment),
                };
            }
            paused = full;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let body = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                let (topic, partition, offset) = (m.topic().to_owned(), m.partition(), m.offset());
                let consumer = consumer.clone();
                let done = move || {
                    // librdkafka stores offset + 1 (the next to read), which
                    // auto-commit then commits.
                    if let Err(error) = consumer.store_offset(&topic, partition, offset) {
                        tracing::warn!(%error, "storing a webhook's offset");
                    }
                };
                waiting.push_back(Delivery {
                    body,
                    done: Some(Box::new(done)),
                });
            }
            Some(Err(error)) => tracing::warn!(%error, "reading the alerts topic for a webhook"),
            None => {}
        }
    }
}
