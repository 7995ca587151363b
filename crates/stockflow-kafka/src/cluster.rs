//! Who owns which partition: each instance announces itself (id, HTTP
//! address, owned partitions with their positions) on the single-partition
//! compacted cluster topic every second and whenever its ownership
//! changes; every instance reads the whole topic. Queries use it to find a
//! key's owner; GET /v1/cluster shows it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::shared::{Shared, ACTIVE, RESTORING};
use super::KafkaSettings;

/// An instance that has not announced itself for this long is gone.
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(10);
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedPartition {
    pub partition: u16,
    /// `active` or `restoring`.
    pub status: String,
    /// Next canonical offset to apply.
    pub applied: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub instance_id: String,
    pub url: String,
    pub partitions: Vec<OwnedPartition>,
    /// Milliseconds since the epoch, by the member's clock.
    pub announced_at: i64,
}

/// The members as last announced, with when we heard each.
#[derive(Default)]
pub struct Cluster {
    members: RwLock<BTreeMap<String, (Member, Instant)>>,
    /// High watermark of each canonical partition, for lag.
    pub high: RwLock<Vec<i64>>,
}

impl Cluster {
    /// Members that announced themselves recently (by their own clock, so
    /// that a killed member's last record, read at our start, is not taken
    /// for a live one).
    pub fn live(&self) -> Vec<Member> {
        let now = chrono::Utc::now().timestamp_millis();
        self.members
            .read()
            .values()
            .filter(|(m, _)| now - m.announced_at < MEMBER_TIMEOUT.as_millis() as i64)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// The live member owning partition `p`, with its status there.
    pub fn owner(&self, p: u16) -> Option<(Member, String)> {
        self.live().into_iter().find_map(|m| {
            let status = m
                .partitions
                .iter()
                .find(|o| o.partition == p)?
                .status
                .clone();
            Some((m, status))
        })
    }
}

pub struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn announcement(instance_id: &str, url: &str, shared: &Shared) -> Member {
    Member {
        instance_id: instance_id.to_owned(),
        url: url.to_owned(),
        partitions: shared
            .owned()
            .into_iter()
            .map(|(partition, status, applied)| OwnedPartition {
                partition,
                status: match status {
                    ACTIVE => "active",
                    RESTORING => "restoring",
                    _ => "released",
                }
                .into(),
                applied,
            })
            .collect(),
        announced_at: chrono::Utc::now().timestamp_millis(),
    }
}

/// Starts announcing this instance and reading everyone's announcements.
pub fn start(
    settings: KafkaSettings,
    instance_id: String,
    url: String,
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
) -> anyhow::Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let producer: BaseProducer = settings.producer_config().create()?;
    let reader: BaseConsumer = settings
        .client(&[
            ("enable.auto.commit", "false"),
            ("group.id", "stockflow-cluster-reader"),
        ])
        .create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&settings.topics.cluster, 0, Offset::Beginning)?;
    reader.assign(&list)?;

    let announcer = {
        let (stop, settings, shared) = (stop.clone(), settings.clone(), shared.clone());
        std::thread::Builder::new()
            .name("kafka-announce".into())
            .spawn(move || {
                let mut last = Instant::now() - ANNOUNCE_EVERY;
                while !stop.load(Ordering::Acquire) {
                    let changed = shared.ownership_changed.swap(false, Ordering::AcqRel);
                    if changed || last.elapsed() >= ANNOUNCE_EVERY {
                        let member = announcement(&instance_id, &url, &shared);
                        let json = serde_json::to_string(&member).expect("serialisable");
                        let _ = producer.send(
                            BaseRecord::to(&settings.topics.cluster)
                                .key(&instance_id)
                                .payload(&json),
                        );
                        producer.poll(Duration::ZERO);
                        last = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                // Leaving: a tombstone, so nobody forwards to us.
                let _ = producer
                    .send(BaseRecord::<str, ()>::to(&settings.topics.cluster).key(&instance_id));
                let _ = producer.flush(Duration::from_secs(5));
            })?
    };
    let listener = {
        let (stop, settings) = (stop.clone(), settings.clone());
        std::thread::Builder::new()
            .name("kafka-cluster".into())
            .spawn(move || {
                let mut last_watermarks = Instant::now() - Duration::from_secs(10);
                while !stop.load(Ordering::Acquire) {
                    match reader.poll(Duration::from_millis(200)) {
                        Some(Ok(m)) => {
                            let Some(key) =
                                m.key().map(|k| String::from_utf8_lossy(k).into_owned())
                            else {
                                continue;
                            };
                            let mut members = cluster.members.write();
                            match m
                                .payload()
                                .and_then(|p| serde_json::from_slice::<Member>(p).ok())
                            {
                                Some(member) => {
                                    members.insert(key, (member, Instant::now()));
                                }
                                None => {
                                    members.remove(&key);
                                }
                            }
                        }
                        Some(Err(error)) => tracing::debug!(%error, "reading the cluster topic"),
                        None => {}
                    }
                    if last_watermarks.elapsed() > Duration::from_secs(2) {
                        let high: Vec<i64> = (0..settings.partitions)
                            .map(|p| {
                                reader
                                    .fetch_watermarks(
                                        &settings.topics.canonical,
                                        i32::from(p),
                                        Duration::from_secs(2),
                                    )
                                    .map_or(-1, |(_, high)| high)
                            })
                            .collect();
                        *cluster.high.write() = high;
                        last_watermarks = Instant::now();
                    }
                }
            })?
    };
    Ok(Running {
        stop,
        threads: vec![announcer, listener],
    })
}
