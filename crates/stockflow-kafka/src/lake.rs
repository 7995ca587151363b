//! The Parquet lake in Kafka mode (`serve --kafka … --lake`): the lake
//! writer of the embedded mode ([`stockflow_service::lake`]) fed from
//! partition p of the history topic for each partition this instance
//! owns, read read_committed (so it needs `--kafka-transactions`, like
//! the PostgreSQL sink: see [`super::sink`]).
//!
//! Offsets are the topic's × 4,096 plus an entry's place in its record,
//! the same on every instance, so instances share one lake: a partition
//! that moves goes on from the newest file its last owner published, and
//! a file published twice at once is kept once (create-only).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use stockflow_service::history::{Entry, Scan};
use stockflow_service::lake::{self, Source, Writer};

use super::shared::Shared;
use super::sink::ENTRY_SLOTS;
use super::KafkaSettings;

/// History entries held in memory at most, all partitions together
/// (about their bytes): past it the topic waits in librdkafka's queue.
const BUFFER_BYTES_MAX: usize = 64 << 20;

/// Starts the lake, if the config has one.
pub fn start(
    settings: &KafkaSettings,
    config: &stockflow_service::config::Config,
    shared: Arc<Shared>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if config.lake.is_none() {
        return Ok(None);
    }
    let consumer: BaseConsumer = settings
        .client(&[
            ("enable.auto.commit", "false"),
            ("group.id", &format!("{}-lake", settings.group)),
            ("isolation.level", "read_committed"),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "50"),
        ])
        .create()?;
    let source = TopicSource {
        consumer,
        topic: settings.topics.history.clone(),
        shared,
        reading: BTreeMap::new(),
        buffered: 0,
    };
    lake::start(
        config,
        settings.partitions,
        Writer {
            owner: super::sink::cluster_id(settings),
            shared: true,
        },
        Box::new(source),
    )
}

/// The history topic of the owned partitions.
struct TopicSource {
    consumer: BaseConsumer,
    topic: String,
    shared: Arc<Shared>,
    reading: BTreeMap<u16, Reading>,
    /// Bytes of entries held, all partitions.
    buffered: usize,
}

/// An owned partition: the entries read and not yet in files, and where
/// reading stands (the offset after the last record read).
#[derive(Default)]
struct Reading {
    entries: VecDeque<(u64, Entry)>,
    read_to: u64,
    bytes: usize,
    /// Assigned at the lake's position.
    placed: bool,
}

/// About what an entry takes, for the memory bound and file sizes.
fn size_of(e: &Entry) -> usize {
    96 + e.event_id.len() + e.sku.len() + e.location.len() + e.by.len()
}

impl TopicSource {
    /// Takes what has arrived, without waiting, up to the memory bound.
    fn pump(&mut self) {
        while self.buffered < BUFFER_BYTES_MAX {
            let Some(polled) = self.consumer.poll(Duration::ZERO) else {
                break;
            };
            let m = match polled {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(%error, "lake: reading the history topic");
                    break;
                }
            };
            let Ok(p) = u16::try_from(m.partition()) else {
                continue;
            };
            let Some(r) = self.reading.get_mut(&p).filter(|r| r.placed) else {
                continue;
            };
            let offset = m.offset() as u64;
            if offset < r.read_to / ENTRY_SLOTS {
                continue;
            }
            match super::history::entries_of(m.payload().unwrap_or_default()) {
                Some(entries) => {
                    for (i, e) in entries.into_iter().enumerate() {
                        let size = size_of(&e);
                        r.bytes += size;
                        self.buffered += size;
                        r.entries.push_back((offset * ENTRY_SLOTS + i as u64, e));
                    }
                }
                None => tracing::error!(
                    partition = p,
                    offset,
                    "a history record this build cannot read; not in the lake"
                ),
            }
            r.read_to = (offset + 1) * ENTRY_SLOTS;
        }
    }

    fn drop_front(&mut self, p: u16, before: u64) {
        if let Some(r) = self.reading.get_mut(&p) {
            while r.entries.front().is_some_and(|(at, _)| *at < before) {
                let (_, e) = r.entries.pop_front().expect("a front entry");
                let size = size_of(&e);
                r.bytes -= size;
                self.buffered -= size;
            }
        }
    }
}

impl Source for TopicSource {
    fn gained(&mut self) -> Vec<u16> {
        let owned: Vec<u16> = self.shared.owned_partitions();
        let lost: Vec<u16> = self
            .reading
            .keys()
            .filter(|p| !owned.contains(p))
            .copied()
            .collect();
        if !lost.is_empty() {
            let mut list = TopicPartitionList::new();
            for p in lost {
                if let Some(r) = self.reading.remove(&p) {
                    self.buffered -= r.bytes;
                    if r.placed {
                        list.add_partition(&self.topic, i32::from(p));
                    }
                }
            }
            if list.count() > 0 {
                if let Err(error) = self.consumer.incremental_unassign(&list) {
                    tracing::warn!(%error, "lake: cannot let partitions go");
                }
            }
        }
        let gained: Vec<u16> = owned
            .into_iter()
            .filter(|p| !self.reading.contains_key(p))
            .collect();
        for p in &gained {
            self.reading.insert(*p, Reading::default());
        }
        gained
    }

    fn start_at(&mut self, p: u16, position: u64) {
        let Some(r) = self.reading.get_mut(&p) else {
            return;
        };
        self.buffered -= r.bytes;
        let was_placed = r.placed;
        *r = Reading {
            read_to: position,
            placed: true,
            ..Reading::default()
        };
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, i32::from(p));
        if was_placed {
            let _ = self.consumer.incremental_unassign(&list);
        }
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(
            &self.topic,
            i32::from(p),
            Offset::Offset((position / ENTRY_SLOTS) as i64),
        )
        .expect("a valid offset");
        if let Err(error) = self.consumer.incremental_assign(&list) {
            tracing::warn!(%error, partition = p, "lake: cannot read the history topic");
            if let Some(r) = self.reading.get_mut(&p) {
                r.placed = false;
            }
        }
    }

    fn ends(&mut self, positions: &[u64]) -> anyhow::Result<Vec<u64>> {
        self.pump();
        // Records without entries (a quiet cycle's) move nothing: a
        // partition with nothing held is where the lake stands.
        Ok((0..positions.len())
            .map(|p| match self.reading.get(&(p as u16)) {
                Some(r) if !r.entries.is_empty() => r.read_to,
                _ => positions[p],
            })
            .collect())
    }

    fn scan(&mut self, p: u16, from: u64, bytes_max: usize) -> anyhow::Result<Scan> {
        let empty = Scan {
            entries: Vec::new(),
            next: from,
            deleted: None,
        };
        self.drop_front(p, from);
        let Some(r) = self.reading.get_mut(&p) else {
            return Ok(empty);
        };
        if r.entries.is_empty() {
            if from > r.read_to {
                // Another instance's file reached further: read on from
                // its end.
                self.start_at(p, from);
            }
            return Ok(empty);
        }
        let (mut entries, mut bytes) = (Vec::new(), 0);
        while let Some((at, e)) = r.entries.pop_front() {
            let size = size_of(&e);
            bytes += size;
            r.bytes -= size;
            self.buffered -= size;
            entries.push((at, e));
            if bytes >= bytes_max {
                break;
            }
        }
        let next = r.entries.front().map_or(r.read_to, |(at, _)| *at);
        Ok(Scan {
            entries,
            next,
            deleted: None,
        })
    }

    fn per_record(&self) -> Option<u64> {
        Some(ENTRY_SLOTS)
    }
}
