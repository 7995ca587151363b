//! The PostgreSQL sink in Kafka mode (`serve --kafka … --sink-postgres`):
//! the same tables as the embedded mode's ([`stockflow_service::sink_tables`]),
//! fed from the topics instead of the history files.
//!
//! Each instance sinks the partitions it owns: partition p of the history
//! topic (rows and levels), of the orders topic (each order's newest
//! state) and of the alerts topic (level alerts; a PRICE_DROP is a
//! product's notice and is not sunk, as in the embedded mode). Where each
//! partition stands lives in the database, moved in the same transaction
//! as its rows: the history topic's next offset in
//! `stockflow_sink_positions`, the orders' and alerts' in
//! `stockflow_sink_meta` (`kafka_feeds:p`). A transaction commits only if
//! it finds the positions it read from (the position row is locked), so
//! when a partition moves between instances, and for a while both read
//! it, one of them commits each stretch and the other reads the
//! positions again: nothing skipped, nothing twice.
//!
//! A row's `history_offset` is the record's topic offset × 4,096 plus the
//! entry's index in it (a record holds at most 3,000), the same on every
//! instance.
//!
//! It needs broker transactions (`--kafka-transactions`): read
//! read_committed, the history topic then holds each cycle once. Without
//! them an owner that dies between a cycle's history record and its
//! changelog record leaves an orphan that its successor writes again (the
//! materialiser cuts such orphans from its files; rows in a database
//! cannot be unsent to its readers), so the start refuses.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use stockflow_service::config::Config;
use stockflow_service::sink_tables::{self as tables, said, Messages, Rows};
use stockflow_service::sinks::{Sinks, State};
use tokio_postgres::{Client, NoTls};

use super::shared::Shared;
use super::KafkaSettings;

const KIND: &str = "postgres";
/// Most history entries in one transaction.
const ENTRIES_MAX: usize = 50_000;
/// Most order and alert messages in one transaction.
const MESSAGES_MAX: usize = 20_000;
/// How long a batch waits for more records once it has some.
const GATHER: Duration = Duration::from_millis(100);
/// How often ownership is compared with what is sunk.
const SYNC_EVERY: Duration = Duration::from_millis(50);
/// How often the lag is measured (a broker round trip per partition).
const BEHIND_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest a batch's transaction may take before the connection counts
/// as lost.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(120);
/// A row's `history_offset`: record offset × this + index in the record.
pub(crate) const ENTRY_SLOTS: u64 = 4_096;
const _: () = assert!(super::history::ENTRIES_PER_RECORD as u64 <= ENTRY_SLOTS);

/// Handle to the sink's thread.
pub struct PostgresSink {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PostgresSink {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Refuses, before anything starts, a sink or lake Kafka mode cannot keep
/// exact.
pub fn check(settings: &KafkaSettings, config: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.transactions || config.lake.is_none(),
        "--lake in Kafka mode needs --kafka-transactions (a broker with transactions: Apache Kafka, Redpanda): without them a cycle whose owner died before its changelog record stands in the history topic beside its successor's, and the lake would hold its events twice"
    );
    let Some(url) = &config.sink_postgres else {
        return Ok(());
    };
    anyhow::ensure!(
        settings.transactions,
        "--sink-postgres in Kafka mode needs --kafka-transactions (a broker with transactions: Apache Kafka, Redpanda): without them a cycle whose owner died before its changelog record stands in the history topic beside its successor's, and the tables would hold its events twice"
    );
    anyhow::ensure!(
        config.sink_postgres_connections == 1,
        "--sink-postgres-connections: in Kafka mode each instance sinks the partitions it owns over one connection (more instances share the partitions out)"
    );
    tables::settings(&url.0)?;
    Ok(())
}

/// Starts the sink, if the config has one (see [`check`]).
pub fn start(
    settings: &KafkaSettings,
    config: &Config,
    shared: Arc<Shared>,
) -> anyhow::Result<Option<PostgresSink>> {
    let Some(url) = &config.sink_postgres else {
        return Ok(None);
    };
    let mut pg = tables::settings(&url.0)?;
    pg.application_name("stockflow-kafka-sink");
    let target = tables::target_of(&pg);
    config.sinks.add(KIND, &target);
    let consumer: BaseConsumer = settings
        .client(&[
            ("enable.auto.commit", "false"),
            ("group.id", &format!("{}-sink-postgres", settings.group)),
            ("isolation.level", "read_committed"),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "50"),
        ])
        .create()?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut sink = Sink {
        pg,
        id: cluster_id(settings),
        topics: [
            settings.topics.history.clone(),
            settings.topics.orders.clone(),
            settings.topics.alerts.clone(),
        ],
        consumer,
        shared,
        sinks: config.sinks.clone(),
        stop: stop.clone(),
        sunk: BTreeMap::new(),
        behind_at: Instant::now() - BEHIND_EVERY,
    };
    tracing::info!(%target, "sinking the owned partitions' history to PostgreSQL");
    let thread = std::thread::Builder::new()
        .name("kafka-sink-pg".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the sink");
            runtime.block_on(sink.run());
        })?;
    Ok(Some(PostgresSink {
        stop,
        thread: Some(thread),
    }))
}

/// Whose positions a database or lake holds in Kafka mode: the history
/// topic's (its offsets are what they count).
pub(crate) fn cluster_id(settings: &KafkaSettings) -> String {
    format!("kafka topic {}", settings.topics.history)
}

/// Where a partition's three feeds go on next (topic offsets).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Position {
    history: i64,
    orders: i64,
    alerts: i64,
}

impl Position {
    fn feeds_key(p: u16) -> String {
        format!("kafka_feeds:{p}")
    }

    fn feeds(&self) -> String {
        format!("{} {}", self.orders, self.alerts)
    }
}

struct Sink {
    pg: tokio_postgres::Config,
    id: String,
    /// history, orders, alerts.
    topics: [String; 3],
    consumer: BaseConsumer,
    shared: Arc<Shared>,
    sinks: Sinks,
    stop: Arc<AtomicBool>,
    /// The owned partitions being sunk, with the positions committed
    /// (`None`: the database had no feeds row for it yet).
    sunk: BTreeMap<u16, (Position, bool)>,
    behind_at: Instant,
}

impl Sink {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    async fn run(&mut self) {
        let mut backoff = BACKOFF_MIN;
        while !self.stopped() {
            self.sinks.set(KIND, State::Connecting, None);
            let (was_connected, error) = self.session().await;
            self.release_all();
            if self.stopped() {
                break;
            }
            tracing::warn!(%error, "PostgreSQL sink down; reconnecting");
            self.sinks.set(KIND, State::Disconnected, Some(error));
            if was_connected {
                backoff = BACKOFF_MIN;
            }
            let until = Instant::now() + backoff;
            while Instant::now() < until && !self.stopped() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection's life: (whether it got as far as sinking, why it
    /// ended).
    async fn session(&mut self) -> (bool, String) {
        let (mut client, connection) = match self.pg.connect(NoTls).await {
            Ok(pair) => pair,
            Err(e) => return (false, format!("cannot connect: {}", said(&e))),
        };
        let driver = tokio::spawn(connection);
        let result = self.sink(&mut client).await;
        driver.abort();
        result
    }

    async fn sink(&mut self, client: &mut Client) -> (bool, String) {
        if let Err(e) = tables::prepare(client).await {
            return (false, e);
        }
        if let Err(e) = tables::claim(client, &self.id, "cluster").await {
            return (false, e);
        }
        self.sinks.set(KIND, State::Connected, None);
        tracing::info!("PostgreSQL sink connected");
        let mut synced = Instant::now() - SYNC_EVERY;
        loop {
            if self.stopped() {
                return (true, "stopping".into());
            }
            if synced.elapsed() >= SYNC_EVERY {
                if let Err(e) = self.follow_ownership(client).await {
                    return (true, format!("cannot read the positions: {}", said(&e)));
                }
                synced = Instant::now();
            }
            self.show_behind();
            let (rows, messages, next) = self.gather();
            if next.is_empty() {
                continue;
            }
            let entries = rows.entries.len();
            let committed =
                tokio::time::timeout(COMMIT_TIMEOUT, tables::commit(client, &rows, &messages))
                    .await;
            match committed {
                Ok(Ok(())) => {
                    for (p, position) in next {
                        self.sunk.insert(p, (position, true));
                    }
                    let n = entries + messages.orders.len() + messages.alerts.len();
                    self.sinks.committed(KIND, n as u64);
                }
                Ok(Err(e)) if e.downcast_ref::<tables::Moved>().is_some() => {
                    // Another instance sank these (a partition moving):
                    // on from what the database has now.
                    tracing::info!(error = %e, "PostgreSQL sink: positions moved elsewhere");
                    self.release_all();
                }
                Ok(Err(e)) => {
                    let why = match e.downcast_ref::<tokio_postgres::Error>() {
                        Some(e) => said(e),
                        None => format!("{e:#}"),
                    };
                    return (true, format!("cannot commit a batch: {why}"));
                }
                Err(_) => {
                    return (
                        true,
                        format!("a batch took over {} s to commit", COMMIT_TIMEOUT.as_secs()),
                    )
                }
            }
        }
    }

    /// Sinks what this instance owns: a partition gained is read from the
    /// positions the database has, one lost is let go.
    async fn follow_ownership(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let owned: Vec<u16> = self.shared.owned_partitions();
        let lost: Vec<u16> = self
            .sunk
            .keys()
            .filter(|p| !owned.contains(p))
            .copied()
            .collect();
        if !lost.is_empty() {
            let mut list = TopicPartitionList::new();
            for p in &lost {
                self.sunk.remove(p);
                for topic in &self.topics {
                    list.add_partition(topic, i32::from(*p));
                }
            }
            if let Err(error) = self.consumer.incremental_unassign(&list) {
                tracing::warn!(%error, "PostgreSQL sink: cannot let partitions go");
            }
        }
        let gained: Vec<u16> = owned
            .into_iter()
            .filter(|p| !self.sunk.contains_key(p))
            .collect();
        if gained.is_empty() {
            return Ok(());
        }
        let positions = tables::load_positions(client, self.shared.partitions.len() as u16).await?;
        let mut list = TopicPartitionList::new();
        for p in gained {
            let feeds = tables::meta(client, &Position::feeds_key(p)).await?;
            let (orders, alerts) = feeds
                .as_deref()
                .and_then(|f| f.split_once(' '))
                .and_then(|(o, a)| Some((o.parse().ok()?, a.parse().ok()?)))
                .unwrap_or((0, 0));
            let position = Position {
                history: positions[p as usize] as i64,
                orders,
                alerts,
            };
            for (topic, offset) in
                self.topics
                    .iter()
                    .zip([position.history, position.orders, position.alerts])
            {
                // An offset the retention passed is read from the oldest
                // kept (auto.offset.reset), and counted as skipped.
                list.add_partition_offset(topic, i32::from(p), Offset::Offset(offset))
                    .expect("a valid offset");
            }
            self.sunk.insert(p, (position, feeds.is_some()));
        }
        if let Err(error) = self.consumer.incremental_assign(&list) {
            tracing::warn!(%error, "PostgreSQL sink: cannot take partitions");
            self.sunk.clear();
        }
        Ok(())
    }

    /// Lets every partition go: the next look at ownership reads their
    /// positions from the database again.
    fn release_all(&mut self) {
        self.sunk.clear();
        let _ = self.consumer.unassign();
    }

    /// The next batch: what has arrived (waiting up to [`GATHER`] for the
    /// first record), and where each partition it touches goes on next.
    fn gather(&mut self) -> (Rows, Messages, Vec<(u16, Position)>) {
        let (mut rows, mut messages) = (Rows::default(), Messages::default());
        let mut next: BTreeMap<u16, Position> = BTreeMap::new();
        let deadline = Instant::now() + GATHER;
        while rows.entries.len() < ENTRIES_MAX
            && messages.orders.len() + messages.alerts.len() < MESSAGES_MAX
        {
            let wait = deadline.saturating_duration_since(Instant::now());
            let Some(polled) = self.consumer.poll(wait) else {
                break;
            };
            let m = match polled {
                Ok(m) => m,
                Err(error) => {
                    tracing::warn!(%error, "PostgreSQL sink: reading the topics");
                    break;
                }
            };
            let Ok(p) = u16::try_from(m.partition()) else {
                continue;
            };
            // A record of a partition let go since it was fetched.
            let Some((committed, _)) = self.sunk.get(&p) else {
                continue;
            };
            let position = next.entry(p).or_insert(*committed);
            let payload = m.payload().unwrap_or_default();
            let topic = m.topic();
            if topic == self.topics[0] {
                if m.offset() < position.history {
                    continue;
                }
                match super::history::entries_of(payload) {
                    Some(entries) => {
                        let base = m.offset() as u64 * ENTRY_SLOTS;
                        rows.entries.extend(
                            entries
                                .into_iter()
                                .enumerate()
                                .map(|(i, e)| (p, base + i as u64, e)),
                        );
                    }
                    None => tracing::error!(
                        partition = p,
                        offset = m.offset(),
                        "a history record this build cannot read; not sunk"
                    ),
                }
                position.history = m.offset() + 1;
            } else if topic == self.topics[1] {
                if m.offset() < position.orders {
                    continue;
                }
                if let Ok(json) = std::str::from_utf8(payload) {
                    messages.order(json.to_owned());
                }
                position.orders = m.offset() + 1;
            } else if topic == self.topics[2] {
                if m.offset() < position.alerts {
                    continue;
                }
                let notice = serde_json::from_slice::<serde_json::Value>(payload)
                    .is_ok_and(|a| a["kind"] == "PRICE_DROP");
                if !notice {
                    if let Ok(json) = std::str::from_utf8(payload) {
                        messages.alerts.push(json.to_owned());
                    }
                }
                position.alerts = m.offset() + 1;
            }
        }
        for (p, position) in &next {
            let (committed, had_feeds) = self.sunk[p];
            rows.from.push((*p, committed.history as u64));
            rows.next.push((*p, position.history as u64));
            let key = Position::feeds_key(*p);
            messages
                .expect
                .push((key.clone(), had_feeds.then(|| committed.feeds())));
            messages.meta.push((key, position.feeds()));
        }
        (rows, messages, next.into_iter().collect())
    }

    /// How many history records of the owned partitions are not yet
    /// sunk (measured once a second).
    fn show_behind(&mut self) {
        if self.behind_at.elapsed() < BEHIND_EVERY {
            return;
        }
        self.behind_at = Instant::now();
        // Everything read is committed when this runs, so where the reader
        // stands counts too: it is past the transactions' commit markers,
        // which take offsets but hold no record to sink.
        let read = self.consumer.position().unwrap_or_default();
        let mut behind = 0;
        for (p, (position, _)) in &self.sunk {
            let reader = read
                .find_partition(&self.topics[0], i32::from(*p))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(0);
            if let Ok((_, high)) = self.consumer.fetch_watermarks(
                &self.topics[0],
                i32::from(*p),
                Duration::from_secs(1),
            ) {
                behind += (high - position.history.max(reader)).max(0) as u64;
            }
        }
        self.sinks.behind_records(KIND, behind);
    }
}
