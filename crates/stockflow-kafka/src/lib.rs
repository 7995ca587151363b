//! Kafka mode: N instances share the work through a Kafka cluster, the way
//! Kafka Streams applications do. The engine core is the same as in the
//! embedded mode; Kafka replaces the local log.
//!
//! ```text
//! raw.{format} ─► normaliser ─► canonical (partition = route(sku, location))
//!                    └─► dlq          │
//!                                     ▼
//!        repartition ◄──────── processor (owner of partition p) ──► stock-levels, alerts
//!        (in-transit of              │
//!         transfers, by target)      └─► changelog p (positions + admitted events)
//! ```
//!
//! Canonical partition p is engine partition p: every producer routes with
//! [`stockflow_core::route`], so the processor that owns p owns exactly the
//! levels the embedded engine would keep in partition p. A TRANSFER_OUT's
//! in-transit effect at a destination owned by another partition goes
//! through the repartition topic to that partition's owner.
//!
//! Exactly once without broker transactions: each processed batch becomes
//! one changelog record in changelog partition p holding the input
//! positions it ends at and the admitted events. State is a fold of the
//! changelog; a restoring owner folds it (from its local snapshot when it
//! has one) and resumes exactly after the last position it holds, skipping
//! input it already applied. Outputs are idempotent (latest level wins;
//! transit events are deduplicated by eventId at the target).

pub mod backend;
pub mod catalog;
pub mod check;
pub mod cluster;
pub mod dead_letters;
pub mod history;
pub mod http;
pub mod lake;
pub mod live;
pub mod normaliser;
pub mod orders;
pub mod processor;
pub mod shared;
pub mod sink;
pub mod topics;
pub mod webhooks;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;

/// Topic names (configurable; these are the defaults).
#[derive(Clone, Debug)]
pub struct Topics {
    pub canonical: String,
    pub repartition: String,
    pub changelog: String,
    /// Where each changelog partition's latest snapshot starts.
    pub changelog_index: String,
    pub stock_levels: String,
    /// A SKU's totals over every location, latest per SKU (its home
    /// partition writes them).
    pub item_totals: String,
    /// A location's totals over every SKU, latest per location.
    pub location_totals: String,
    pub alerts: String,
    /// Orders as their home decides them, latest per orderId.
    pub orders: String,
    /// Products and locations (key `product:{sku}` / `location:{id}`,
    /// value the API's JSON), read whole by every instance.
    pub catalog: String,
    pub dlq: String,
    pub cluster: String,
    /// Every change to every level, per canonical partition: what level
    /// history is rebuilt from (see [`history`]).
    pub history: String,
    /// Raw topics are this prefix plus a source format's name.
    pub raw_prefix: String,
    /// Other raw topics, with the source format of their messages
    /// (`serve --raw-topic TOPIC=FORMAT`): producers keep their names.
    pub raw_topics: Vec<(String, String)>,
}

/// The prefix of the default topic names (`inventory.events.canonical`, …).
pub const TOPIC_PREFIX_DEFAULT: &str = "inventory";

impl Topics {
    /// Every topic named `{prefix}.…`: several deployments (or versions)
    /// can share a cluster under different prefixes.
    pub fn named(prefix: &str) -> Topics {
        let name = |rest: &str| format!("{prefix}.{rest}");
        Topics {
            canonical: name("events.canonical"),
            repartition: name("repartition"),
            changelog: name("changelog"),
            changelog_index: name("changelog-index"),
            stock_levels: name("stock-levels"),
            item_totals: name("item-totals"),
            location_totals: name("location-totals"),
            alerts: name("alerts"),
            orders: name("orders"),
            catalog: name("catalog"),
            dlq: name("dlq"),
            cluster: name("cluster"),
            history: name("history"),
            raw_prefix: name("events.raw."),
            raw_topics: Vec::new(),
        }
    }

    /// The source format of a raw topic's messages: a `--raw-topic`'s,
    /// or the name after the raw prefix.
    pub fn format_of_raw<'a>(&'a self, topic: &'a str) -> Option<&'a str> {
        self.raw_topics
            .iter()
            .find(|(name, _)| name == topic)
            .map(|(_, format)| format.as_str())
            .or_else(|| topic.strip_prefix(self.raw_prefix.as_str()))
    }

    /// Refuses a `--raw-topic` that names no format `sources` has, one
    /// given twice, or one of stockflow's own topics (it would be read
    /// twice, or be written by stockflow).
    pub fn check_raw_topics(
        &self,
        sources: &stockflow_service::sources::Sources,
    ) -> anyhow::Result<()> {
        let own = [
            &self.canonical,
            &self.repartition,
            &self.changelog,
            &self.changelog_index,
            &self.stock_levels,
            &self.item_totals,
            &self.location_totals,
            &self.alerts,
            &self.orders,
            &self.catalog,
            &self.dlq,
            &self.cluster,
            &self.history,
        ];
        for (i, (topic, format)) in self.raw_topics.iter().enumerate() {
            let known = format == normaliser::CANONICAL || sources.names().any(|n| n == format);
            anyhow::ensure!(
                known,
                "--raw-topic {topic}={format}: no source format is named {format:?}; GET /v1/sources lists them (and `canonical`)"
            );
            anyhow::ensure!(
                !own.contains(&topic)
                    && !topic.starts_with(&self.raw_prefix)
                    && !topic.starts_with("__"),
                "--raw-topic {topic}: a topic of stockflow's own (prefix {:?}); map a topic your producers write",
                self.raw_prefix
            );
            anyhow::ensure!(
                !self.raw_topics[..i].iter().any(|(t, _)| t == topic),
                "--raw-topic {topic} is given twice: a topic has one format"
            );
        }
        Ok(())
    }
}

/// `--raw-topic TOPIC=FORMAT`: a Kafka topic name and a format name.
pub fn parse_raw_topic(text: &str) -> Result<(String, String), String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    match text.split_once('=') {
        Some((topic, format))
            if !topic.is_empty()
                && topic.len() <= 249
                && topic != "."
                && topic != ".."
                && topic.chars().all(legal)
                && !format.is_empty() =>
        {
            Ok((topic.to_owned(), format.to_owned()))
        }
        _ => Err(format!(
            "{text:?}: expected TOPIC=FORMAT, e.g. raw.store=store-item (a topic is 1 to 249 of a-z, A-Z, 0-9, '.', '_' and '-')"
        )),
    }
}

impl Default for Topics {
    fn default() -> Topics {
        Topics::named(TOPIC_PREFIX_DEFAULT)
    }
}

/// A topic prefix as `--topic-prefix` takes it: Kafka's topic characters,
/// short enough that the longest name stays under Kafka's 249.
pub fn parse_topic_prefix(text: &str) -> Result<String, String> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if text.is_empty() || text.len() > 150 || !text.chars().all(legal) {
        return Err(format!(
            "{text:?}: a topic prefix is 1 to 150 of a-z, A-Z, 0-9, '.', '_' and '-'"
        ));
    }
    Ok(text.to_owned())
}

/// librdkafka properties (NAME, VALUE), in order: a later one wins. Its
/// Debug form hides the values of secrets (`sasl.password`,
/// `ssl.key.password`, …), so settings can be logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(String, String)>);

impl std::ops::Deref for Properties {
    type Target = Vec<(String, String)>;
    fn deref(&self) -> &Vec<(String, String)> {
        &self.0
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut Vec<(String, String)> {
        &mut self.0
    }
}

impl From<Vec<(String, String)>> for Properties {
    fn from(properties: Vec<(String, String)>) -> Properties {
        Properties(properties)
    }
}

/// Whether a property's value is a secret (librdkafka's names).
fn secret_property(name: &str) -> bool {
    [
        "password",
        "secret",
        "key.pem",
        "jaas",
        "oauthbearer.config",
    ]
    .iter()
    .any(|s| name.contains(s))
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if secret_property(k) {
                    "…"
                } else {
                    v.as_str()
                };
                format!("{k}={shown}")
            }))
            .finish()
    }
}

impl Properties {
    /// Reads a properties file: one `NAME=VALUE` per line (white space
    /// around each trimmed), `#` comments and blank lines skipped; for
    /// secrets that must not be in a command line (`ps` shows those).
    pub fn read_file(path: &std::path::Path) -> anyhow::Result<Properties> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the Kafka properties file {}", path.display()))?;
        let mut properties = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                anyhow::bail!(
                    "{}:{}: not NAME=VALUE (a librdkafka property, e.g. sasl.password=…)",
                    path.display(),
                    n + 1
                );
            };
            properties.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(Properties(properties))
    }
}

/// How to reach the cluster and what to call things there.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    pub bootstrap: String,
    pub group: String,
    /// librdkafka properties passed through (SASL, TLS, timeouts …).
    pub extra: Properties,
    pub topics: Topics,
    /// Partitions of the canonical, repartition and changelog topics: the
    /// engine's partition count in Kafka mode. Fixed once topics exist.
    pub partitions: u16,
    /// How often a processor ends a batch: commit interval.
    pub commit_interval: Duration,
    /// Read-process-write transactions (a full Apache Kafka or Redpanda
    /// cluster): a cycle's outputs, changelog records and group offsets
    /// commit as one. Without them (tansu has no EndTxn) the changelog
    /// records carry the positions and outputs are flushed first.
    pub transactions: bool,
    /// A partition's state is written into its changelog after this many
    /// applied records, and the records it covers are tombstoned: a new
    /// owner folds at most about this many records after the snapshot.
    pub changelog_snapshot_every: u64,
    /// The hold an order gets when an event reserves for it (the server's
    /// `--order-hold-seconds`), sent to the order's home with what the
    /// event did.
    pub order_hold_ns: i64,
    /// A price cut of at least this many percent is a PRICE_DROP alert
    /// (the server's `--price-drop-percent`).
    pub price_drop_percent: u8,
    /// Consumer groups are joined no sooner than this: after an unclean
    /// stop, once the dead process's memberships have timed out (see
    /// [`KafkaSettings::wait_to_join`]).
    pub join_not_before: Option<std::time::Instant>,
}

impl KafkaSettings {
    pub fn new(bootstrap: impl Into<String>) -> KafkaSettings {
        KafkaSettings {
            bootstrap: bootstrap.into(),
            group: "stockflow".into(),
            extra: Properties::default(),
            topics: Topics::default(),
            partitions: 12,
            commit_interval: Duration::from_millis(100),
            transactions: false,
            changelog_snapshot_every: 500_000,
            order_hold_ns: 15 * 60 * 1_000_000_000,
            price_drop_percent: 10,
            join_not_before: None,
        }
    }

    /// A client configuration with the bootstrap servers and the
    /// pass-through properties (which win over stockflow's defaults).
    pub fn client(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in self.extra.iter() {
            config.set(k, v);
        }
        config
    }

    /// The group session timeout the consumers use: librdkafka's default
    /// unless passed through.
    pub fn session_timeout(&self) -> Duration {
        let ms = self
            .extra
            .iter()
            .rev()
            .find(|(k, _)| k == "session.timeout.ms")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(45_000);
        Duration::from_millis(ms)
    }

    /// Waits, before a consumer subscribes, until [`join_not_before`]
    /// (false if it is `stopped` meanwhile). A process that was killed stays
    /// in its groups until its session times out; a new member that joins
    /// meanwhile gets the dead one as the group's leader, and tansu 0.6.0
    /// then leaves it with no partitions at all (the group never
    /// rebalances again once the dead leader expires). Joining after the
    /// timeout finds the group without it.
    ///
    /// [`join_not_before`]: KafkaSettings::join_not_before
    fn wait_to_join(&self, stopped: impl Fn() -> bool) -> bool {
        while let Some(left) = self
            .join_not_before
            .and_then(|at| at.checked_duration_since(std::time::Instant::now()))
        {
            if stopped() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        !stopped()
    }

    /// Subscribes `consumer` to `topics` once [`wait_to_join`] allows
    /// (false, not subscribed, if it is `stopped` meanwhile). A consumer
    /// that cannot subscribe (a topic name the client refuses) stops the
    /// process: an instance must not run with a reader missing.
    ///
    /// [`wait_to_join`]: KafkaSettings::wait_to_join
    pub fn join<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<C>,
        topics: &[&str],
        stopped: impl Fn() -> bool,
    ) -> bool {
        use rdkafka::consumer::Consumer;
        if !self.wait_to_join(stopped) {
            return false;
        }
        if let Err(error) = consumer.subscribe(topics) {
            tracing::error!(%error, ?topics, "cannot subscribe; stopping");
            std::process::abort();
        }
        true
    }

    /// The idempotent producer every stockflow writer uses: ordered per
    /// partition, no duplicates from retries.
    pub fn producer_config(&self) -> ClientConfig {
        self.client(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "30000"),
        ])
    }
}

use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Message};

/// Delivery reports: the changelog's last offset per partition, and the
/// first failure (which stops the processor: carrying on could apply
/// effects whose record never reached the changelog).
#[derive(Default)]
pub struct Deliveries {
    changelog_topic: String,
    pub(crate) changelog_last: parking_lot::Mutex<std::collections::HashMap<i32, i64>>,
    /// Where the last changelog snapshot written to each partition starts.
    pub(crate) snapshot_first: parking_lot::Mutex<std::collections::HashMap<i32, i64>>,
    failed: parking_lot::Mutex<Option<String>>,
}

impl Deliveries {
    /// Also remembers the last offset delivered to each partition of `topic`.
    pub fn watching(topic: &str) -> Deliveries {
        Deliveries {
            changelog_topic: topic.to_owned(),
            ..Deliveries::default()
        }
    }

    /// The first delivery failure since the last call.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().take()
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) if message.topic() == self.changelog_topic => {
                let mut last = self.changelog_last.lock();
                let entry = last.entry(message.partition()).or_insert(-1);
                *entry = (*entry).max(message.offset());
                if message.key() == Some(wire::SNAPSHOT_FIRST_KEY.as_bytes()) {
                    self.snapshot_first
                        .lock()
                        .insert(message.partition(), message.offset());
                }
            }
            Ok(_) => {}
            Err((error, message)) => {
                let mut failed = self.failed.lock();
                if failed.is_none() {
                    *failed = Some(format!(
                        "delivery to {} [{}] failed: {error}",
                        message.topic(),
                        message.partition()
                    ));
                }
            }
        }
    }
}

/// Waits until everything `producer` was given is acknowledged (or failed:
/// see its delivery reports), or `timeout` passes.
///
/// Hand-written because rust-rdkafka's `BaseProducer::flush` waits in
/// whole 100 ms slices: between its checks it calls `poll(100 ms)`, which
/// runs until its deadline even once every report is in. Each flush so
/// cost at least 100 ms however fast the broker answered; a processing
/// cycle has two (measured: 100.0–100.3 ms each, every cycle).
pub fn flush<C: ProducerContext>(
    producer: &rdkafka::producer::BaseProducer<C>,
    timeout: Duration,
) -> rdkafka::error::KafkaResult<()> {
    use rdkafka::producer::Producer;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // Messages queued, in flight, or acknowledged with the report not
        // yet served.
        if producer.in_flight_count() == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(rdkafka::error::KafkaError::Flush(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        producer.poll(Duration::from_millis(1));
    }
}

/// Queues `record`, waiting (serving delivery reports) while librdkafka's
/// queue is full; any other refusal is returned.
pub fn send<C, K, P>(
    producer: &rdkafka::producer::BaseProducer<C>,
    mut record: rdkafka::producer::BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> rdkafka::error::KafkaResult<()>
where
    C: ProducerContext,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                producer.poll(Duration::from_millis(1));
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// The key of a level's messages: `{sku}:{locationId}`.
pub fn level_key(sku: &str, location: &str) -> String {
    format!("{sku}:{location}")
}

/// A running Kafka-mode instance: processor, normaliser, membership and
/// the HTTP API.
pub struct KafkaServer {
    pub addr: std::net::SocketAddr,
    /// `https` with a certificate, else `http`.
    pub scheme: &'static str,
    pub instance_id: String,
    hub: Arc<stockflow_service::stream::Hub>,
    live: live::Feeder,
    markers: dead_letters::Follower,
    processor: processor::Running,
    normaliser: normaliser::Running,
    cluster: cluster::Running,
    sink: Option<sink::PostgresSink>,
    lake: Option<tokio::task::JoinHandle<()>>,
    running: RunningMark,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A file in the data directory that says an instance is running there:
/// its process id while it runs, removed by a clean stop. Found holding a
/// process id at start, it tells that the last run was killed or crashed,
/// and the new one waits out the group session before joining. A run
/// stopped during that wait leaves `until <unix ms>` instead: the dead
/// member it was waiting for is not gone before then either.
struct RunningMark {
    path: std::path::PathBuf,
    /// Wall-clock end of this run's wait, in ms since the epoch.
    wait_until_ms: Option<i64>,
}

impl RunningMark {
    /// Marks `dir` as in use; answers how long to wait before joining the
    /// groups (`session`: their session timeout).
    fn take(
        dir: &std::path::Path,
        session: Duration,
    ) -> anyhow::Result<(RunningMark, Option<Duration>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("running");
        let now_ms = stockflow_service::clock::wall_clock().0 / 1_000_000;
        let wait = match std::fs::read_to_string(&path) {
            Err(_) => None,
            Ok(text) => match text.trim().strip_prefix("until ") {
                Some(until) => until
                    .parse::<i64>()
                    .ok()
                    .filter(|until| *until > now_ms)
                    .map(|until| Duration::from_millis((until - now_ms) as u64)),
                None => Some(session + Duration::from_secs(1)),
            },
        };
        // A full disk must not keep an instance from starting: only the
        // next start's wait depends on this file.
        if let Err(error) = std::fs::write(&path, std::process::id().to_string()) {
            tracing::warn!(%error, path = %path.display(), "could not write the running mark; a start after a crash may not wait out the group session");
        }
        let wait_until_ms = wait.map(|w| now_ms + w.as_millis() as i64);
        Ok((
            RunningMark {
                path,
                wait_until_ms,
            },
            wait,
        ))
    }

    /// After a clean stop: the next start joins at once, unless this run
    /// was still waiting to join.
    fn clear(self) {
        let now_ms = stockflow_service::clock::wall_clock().0 / 1_000_000;
        let cleared = match self.wait_until_ms.filter(|until| *until > now_ms) {
            Some(until) => std::fs::write(&self.path, format!("until {until}")),
            None => std::fs::remove_file(&self.path),
        };
        if let Err(error) = cleared {
            tracing::warn!(%error, path = %self.path.display(), "could not update the running mark; the next start waits out the group session");
        }
    }
}

impl KafkaServer {
    /// Joins the group and listens. `advertise` is the URL other
    /// instances forward queries to (default: the listen address).
    pub async fn start(
        mut settings: KafkaSettings,
        config: stockflow_service::config::Config,
        listen: std::net::SocketAddr,
        advertise: Option<String>,
    ) -> anyhow::Result<KafkaServer> {
        use anyhow::Context;
        stockflow_http::amqp::check(&config)?;
        settings.topics.check_raw_topics(&config.sources)?;
        settings.order_hold_ns = config.order_hold_seconds as i64 * 1_000_000_000;
        settings.price_drop_percent = config.price_drop_percent;
        // Before anything connects: a refusal needs no broker.
        sink::check(&settings, &config)?;
        check_topics(&settings)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("cannot listen on {listen}; is another server running there?")
            })?;
        let addr = listener.local_addr()?;
        let (running, wait) =
            RunningMark::take(&config.data_dir.join("kafka"), settings.session_timeout())?;
        if let Some(wait) = wait {
            tracing::warn!(
                seconds = wait.as_secs_f64().ceil(),
                "the last run did not stop cleanly: its group memberships expire before this one joins"
            );
            settings.join_not_before = Some(std::time::Instant::now() + wait);
        }
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = advertise.unwrap_or_else(|| format!("{scheme}://{addr}"));
        let instance_id = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        stockflow_service::metrics::handle();
        let mut engine = config.engine;
        engine.partitions = settings.partitions;
        let shared = Arc::new(shared::Shared::new(settings.partitions));
        let cluster_state = Arc::new(cluster::Cluster::default());
        let processor = processor::start(
            settings.clone(),
            engine,
            &config.data_dir,
            shared.clone(),
            config.history_retention_ns,
        )?;
        let sink = sink::start(&settings, &config, shared.clone())?;
        let lake = lake::start(&settings, &config, shared.clone())?;
        let normaliser = normaliser::start(
            settings.clone(),
            config.sources.clone(),
            config.request_events_max,
        )?;
        let cluster = cluster::start(
            settings.clone(),
            instance_id.clone(),
            url.clone(),
            shared.clone(),
            cluster_state.clone(),
        )?;
        let producer: rdkafka::producer::FutureProducer = settings.producer_config().create()?;
        let hub = Arc::new(stockflow_service::stream::Hub::default());
        let live = live::start(&settings, hub.clone())?;
        let resolved = Arc::new(shared::Resolved::default());
        let markers = dead_letters::follow(&settings, resolved.clone())?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(cluster) = &config.cluster_secret {
            let mut bearer = reqwest::header::HeaderValue::from_str(&cluster.bearer())?;
            bearer.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, bearer);
        }
        // A server with TLS calls its peers over https only: the cluster
        // secret never crosses the network in clear to a peer that
        // announces an http:// URL.
        let client = config
            .trust
            .client()
            .https_only(config.tls.is_some())
            .default_headers(headers)
            .timeout(Duration::from_secs(35))
            .build()?;
        let simulator_on = config.simulator;
        let events_max = config.request_events_max;
        let app = Arc::new_cyclic(|app| http::KafkaApp {
            simulator: stockflow_http::simulator::Simulator::new(
                simulator_on,
                app.clone() as std::sync::Weak<dyn stockflow_http::simulator::Sink>,
                events_max,
            ),
            resolved,
            admission: stockflow_http::Admission::new(&config),
            hub: hub.clone(),
            settings,
            config,
            producer,
            shared,
            cluster: cluster_state,
            client,
            instance_id: instance_id.clone(),
            url,
        });
        stockflow_http::bootstrap::load(&*app).await?;
        stockflow_http::webhooks::start(app.clone(), app.config.webhooks.clone())?;
        stockflow_http::amqp::start(app.clone())?;
        let limits = stockflow_http::serve::ConnectionLimits::of(&app.config);
        let tls = app.config.tls.clone();
        let (stop, task) =
            stockflow_http::serve::spawn(listener, stockflow_http::router(app), limits, tls);
        tracing::info!(%addr, instance = %instance_id, "listening in Kafka mode");
        Ok(KafkaServer {
            addr,
            scheme,
            instance_id,
            hub,
            live,
            markers,
            processor,
            normaliser,
            cluster,
            sink,
            lake,
            running,
            stop,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Stops listening, then the threads: the processor flushes and
    /// snapshots what it owns and leaves the group.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        // Open streams end, so the graceful shutdown does not wait on them.
        self.hub.close();
        self.task.await??;
        let (processor, normaliser, cluster) = (self.processor, self.normaliser, self.cluster);
        let (live, markers, sink) = (self.live, self.markers, self.sink);
        if let Some(lake) = self.lake {
            lake.abort();
        }
        tokio::task::spawn_blocking(move || {
            live.stop();
            markers.stop();
            normaliser.stop();
            processor.stop();
            if let Some(sink) = sink {
                sink.stop();
            }
            cluster.stop();
        })
        .await?;
        self.running.clear();
        Ok(())
    }
}

/// Refuses to start against topics whose partition counts disagree with
/// `settings.partitions`: routing would put levels where no one looks.
fn check_topics(settings: &KafkaSettings) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = settings.client(&[]).create()?;
    // How many partitions a topic has (0: it does not exist).
    let partitions_of = |topic: &str| -> anyhow::Result<usize> {
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(15))
            .map_err(|e| anyhow::anyhow!("cannot reach Kafka at {}: {e}", settings.bootstrap))?;
        Ok(metadata
            .topics()
            .first()
            .map_or(0, |m| m.partitions().len()))
    };
    // Every topic an instance reads or writes (raw topics are the
    // normalisers', which wait for theirs): a missing one would stop the
    // processor at its first write there, e.g. after an upgrade that
    // added a topic.
    for spec in topics::specs(settings, std::iter::empty())
        .into_iter()
        .filter(|s| !s.name.starts_with(&settings.topics.raw_prefix))
    {
        let topic = &spec.name;
        let found = partitions_of(topic)?;
        anyhow::ensure!(
            found > 0,
            "topic {topic} does not exist: run `stockflow topics create --kafka {}` (it creates only what is missing)",
            settings.bootstrap
        );
        anyhow::ensure!(
            found == spec.partitions as usize,
            "topic {topic} has {found} partitions, stockflow expects {} (--kafka-partitions)",
            spec.partitions
        );
    }
    // A mapped raw topic is the producers': it must exist already (a
    // misspelt name would otherwise be waited for in silence).
    for (topic, _) in &settings.topics.raw_topics {
        anyhow::ensure!(
            partitions_of(topic)? > 0,
            "--raw-topic {topic}: no such topic; check its name (stockflow does not create it)"
        );
    }
    Ok(())
}

/// What to do with a record a consumer returned, given the offset the
/// reader expects next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The expected record.
    Take,
    /// Already read (a re-read after a seek or a rebalance): skip it.
    Old,
    /// Records were skipped: read again from this offset.
    Seek(i64),
}

/// Keeps every reader contiguous. A record beyond the expected offset
/// means the broker skipped some: tansu 0.6.0 answers a fetch that starts
/// inside a record batch with the batch after it (Apache Kafka returns the
/// batch holding the offset). The cure is to read again from further back
/// — one offset, then two, four … — until a fetch starts at or before the
/// batch's first record. Records are accepted as gone only when they lie
/// before the partition's first offset (deleted by retention); otherwise
/// the search starts over, and the partition stalls, visibly in the logs
/// and `stockflow_kafka_rereads_total`, rather than skip an effect.
#[derive(Debug, Default)]
pub struct Contiguity {
    /// Per partition: (expected offset, how far back the last seek went).
    searching: std::collections::HashMap<i32, (i64, i64)>,
    /// Offsets may jump: topics written in transactions hold commit
    /// markers and aborted records that a read_committed reader never
    /// sees, so a jump is no evidence of a skipped record. Only for full
    /// brokers (transactions mode), where fetches do not skip records.
    jumps_expected: bool,
}

impl Contiguity {
    /// For a cluster whose topics may hold transaction markers.
    pub fn with_transactions(transactions: bool) -> Contiguity {
        Contiguity {
            jumps_expected: transactions,
            ..Contiguity::default()
        }
    }

    /// What to do with record `offset` when `expected` is due; `log_start`
    /// is asked for the partition's first offset when the search has
    /// reached the start without finding the record.
    pub fn check(
        &mut self,
        topic: &str,
        partition: i32,
        expected: i64,
        offset: i64,
        log_start: impl FnOnce() -> Option<i64>,
    ) -> Next {
        if offset < expected {
            return Next::Old;
        }
        if offset == expected || self.jumps_expected {
            self.searching.remove(&partition);
            return Next::Take;
        }
        let step = match self.searching.get(&partition) {
            Some((e, step)) if *e == expected => {
                if expected - step <= 0 {
                    self.searching.remove(&partition);
                    if log_start().is_some_and(|start| expected < start) {
                        // Really gone (retention, compaction): go on.
                        tracing::warn!(
                            topic,
                            partition,
                            expected,
                            got = offset,
                            "records deleted by retention before they were read; going on"
                        );
                        return Next::Take;
                    }
                    tracing::warn!(
                        topic,
                        partition,
                        expected,
                        got = offset,
                        "records missing after a read from the start; searching again"
                    );
                    1
                } else {
                    step * 2
                }
            }
            _ => 1,
        };
        self.searching.insert(partition, (expected, step));
        metrics::counter!("stockflow_kafka_rereads_total").increment(1);
        Next::Seek((expected - step).max(0))
    }

    /// Forgets searches (the partition's reader was reassigned).
    pub fn reset(&mut self, partition: i32) {
        self.searching.remove(&partition);
    }
}

/// How long a reader positioned at an offset may hear nothing before it
/// looks further back.
pub const PROBE_AFTER: Duration = Duration::from_millis(1000);

/// Un-sticks readers positioned inside a record batch. tansu answers a
/// fetch that starts inside a batch with the batches that *start* after
/// the offset — and with nothing at all when that batch is the last one,
/// so a reader placed there by a commit, a seek or a snapshot would wait
/// forever although records follow. [`Contiguity`] handles the first case
/// (a jump it can see); this handles the second: after a reader is placed
/// at an offset, if no record at all arrives for [`PROBE_AFTER`], it is
/// placed further back (one offset, two, four …) until something arrives;
/// what arrives before the offset is skipped as already read. On a broker
/// without the bug a quiet partition costs a re-read of a few records.
#[derive(Debug, Default)]
pub struct Probe {
    /// Per (reader-local) partition: (offset placed at, since, next step).
    waiting: std::collections::HashMap<i32, (i64, std::time::Instant, i64)>,
    /// When each partition read here last had a record (or was placed).
    heard_at: std::collections::HashMap<i32, std::time::Instant>,
}

/// How long a partition may be quiet before its reader is checked again.
pub const IDLE_RECHECK: Duration = Duration::from_secs(5);

impl Probe {
    /// The reader of `partition` was placed at `offset`.
    pub fn placed(&mut self, partition: i32, offset: i64) {
        let now = std::time::Instant::now();
        self.waiting.insert(partition, (offset, now, 1));
        self.heard_at.insert(partition, now);
    }

    /// A record of `partition` arrived: its fetches work.
    pub fn heard(&mut self, partition: i32) {
        self.waiting.remove(&partition);
        self.heard_at.insert(partition, std::time::Instant::now());
    }

    /// The partition is no longer read here.
    pub fn forget(&mut self, partition: i32) {
        self.waiting.remove(&partition);
        self.heard_at.remove(&partition);
    }

    /// Treats partitions quiet for [`IDLE_RECHECK`] as placed again at
    /// `next(partition)`: a reader stuck in a way no record shows (tansu
    /// was seen to leave one translating nothing while records waited)
    /// is moved back like a newly placed one. On a really quiet partition
    /// this costs re-reading one batch every few seconds.
    pub fn recheck_idle(&mut self, next: impl Fn(i32) -> Option<i64>) {
        let now = std::time::Instant::now();
        for (partition, at) in self.heard_at.iter_mut() {
            if now.duration_since(*at) < IDLE_RECHECK || self.waiting.contains_key(partition) {
                continue;
            }
            if let Some(offset) = next(*partition) {
                self.waiting.insert(*partition, (offset, now, 1));
            }
            *at = now;
        }
    }

    /// Where to place readers that have waited too long: (partition,
    /// offset), each further back than the last time.
    pub fn due(&mut self) -> Vec<(i32, i64)> {
        let now = std::time::Instant::now();
        let mut seeks = Vec::new();
        for (partition, (offset, since, step)) in self.waiting.iter_mut() {
            if now.duration_since(*since) < PROBE_AFTER || *offset <= 0 {
                continue;
            }
            seeks.push((*partition, (*offset - *step).max(0)));
            *since = now;
            *step = step.saturating_mul(2);
        }
        if !seeks.is_empty() {
            metrics::counter!("stockflow_kafka_probes_total").increment(seeks.len() as u64);
        }
        seeks
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_properties_file_is_read_line_by_line_and_its_secrets_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kafka.properties");
        std::fs::write(
            &path,
            "# the cluster's\nsecurity.protocol = SASL_SSL\n\nsasl.password=hunter2-very-secret\n",
        )
        .unwrap();
        let properties = super::Properties::read_file(&path).unwrap();
        assert_eq!(
            *properties,
            [
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
                ("sasl.password".to_owned(), "hunter2-very-secret".to_owned())
            ]
        );
        let mut settings = super::KafkaSettings::new("b:9092");
        settings.extra = properties;
        let shown = format!("{settings:?}");
        assert!(shown.contains("security.protocol=SASL_SSL"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        std::fs::write(&path, "ok=1\nno equals sign\n").unwrap();
        let error = super::Properties::read_file(&path).unwrap_err().to_string();
        assert!(error.contains(":2"), "{error}");
    }

    use super::*;

    #[test]
    fn a_start_after_a_kill_waits_out_the_session_and_a_stop_while_waiting_keeps_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let session = Duration::from_secs(45);
        // A first start, stopped cleanly: the next one joins at once.
        let (mark, wait) = RunningMark::take(dir.path(), session).unwrap();
        assert_eq!(wait, None);
        mark.clear();
        assert!(!dir.path().join("running").exists());
        let (_killed, wait) = RunningMark::take(dir.path(), session).unwrap();
        assert_eq!(wait, None);
        // That run was killed (its mark stays): the next waits the session out.
        let (waiting, wait) = RunningMark::take(dir.path(), session).unwrap();
        assert_eq!(wait, Some(session + Duration::from_secs(1)));
        // Stopped while it waits: the one after still waits, no longer.
        waiting.clear();
        let (mark, wait) = RunningMark::take(dir.path(), session).unwrap();
        let wait = wait.expect("the dead member has not expired yet");
        assert!(
            wait <= session + Duration::from_secs(1) && wait > session - Duration::from_secs(5),
            "{wait:?}"
        );
        drop(mark);
        // A wait that is over is no wait.
        std::fs::write(dir.path().join("running"), "until 1000").unwrap();
        let (mark, wait) = RunningMark::take(dir.path(), session).unwrap();
        assert_eq!(wait, None);
        mark.clear();
        assert!(!dir.path().join("running").exists());
    }

    #[test]
    fn a_skipped_record_is_searched_for_further_back_each_time() {
        let mut c = Contiguity::default();
        let start = || Some(0);
        assert_eq!(c.check("t", 0, 10, 10, start), Next::Take);
        assert_eq!(c.check("t", 0, 11, 9, start), Next::Old);
        assert_eq!(c.check("t", 0, 11, 13, start), Next::Seek(10));
        assert_eq!(c.check("t", 0, 11, 13, start), Next::Seek(9));
        assert_eq!(c.check("t", 0, 11, 13, start), Next::Seek(7));
        assert_eq!(c.check("t", 0, 11, 13, start), Next::Seek(3));
        assert_eq!(c.check("t", 0, 11, 13, start), Next::Seek(0));
        // Read from the start and still missing, but the log holds it:
        // search again rather than skip it.
        assert_eq!(c.check("t", 0, 11, 13, start), Next::Seek(10));
        // Found on the way back: the search ends.
        assert_eq!(c.check("t", 1, 5, 7, start), Next::Seek(4));
        assert_eq!(c.check("t", 1, 5, 5, start), Next::Take);
        assert_eq!(c.check("t", 1, 6, 8, start), Next::Seek(5));
    }

    #[test]
    fn records_deleted_by_retention_are_a_gap_to_go_past() {
        let mut c = Contiguity::default();
        let start = || Some(100);
        assert_eq!(c.check("t", 0, 2, 100, start), Next::Seek(1));
        assert_eq!(c.check("t", 0, 2, 100, start), Next::Seek(0));
        // Gone for good: read past (and logged).
        assert_eq!(c.check("t", 0, 2, 100, start), Next::Take);
        // An unknown start (the broker did not answer) is not a gap.
        assert_eq!(c.check("t", 1, 1, 5, || None), Next::Seek(0));
        assert_eq!(c.check("t", 1, 1, 5, || None), Next::Seek(0));
    }

    #[test]
    fn a_reader_that_hears_nothing_is_placed_further_back_each_time() {
        let mut probe = Probe::default();
        probe.placed(3, 100);
        probe.placed(4, 0);
        assert!(probe.due().is_empty(), "not before PROBE_AFTER");
        std::thread::sleep(PROBE_AFTER);
        assert_eq!(
            probe.due(),
            vec![(3, 99)],
            "a reader at 0 reads from the start already"
        );
        std::thread::sleep(PROBE_AFTER);
        assert_eq!(probe.due(), vec![(3, 98)]);
        std::thread::sleep(PROBE_AFTER);
        assert_eq!(probe.due(), vec![(3, 96)]);
        probe.heard(3);
        std::thread::sleep(PROBE_AFTER);
        assert!(probe.due().is_empty(), "records arrived: nothing to do");
    }

    #[test]
    fn a_quiet_partition_is_checked_again_from_where_its_reader_should_be() {
        let mut probe = Probe::default();
        probe.placed(1, 50);
        probe.heard(1);
        probe.recheck_idle(|_| Some(70));
        std::thread::sleep(PROBE_AFTER);
        assert!(probe.due().is_empty(), "heard recently: left alone");
        std::thread::sleep(IDLE_RECHECK);
        probe.recheck_idle(|p| (p == 1).then_some(70));
        assert!(
            probe.due().is_empty(),
            "placed again, given PROBE_AFTER to hear"
        );
        std::thread::sleep(PROBE_AFTER);
        assert_eq!(probe.due(), vec![(1, 69)]);
    }

    #[test]
    fn with_transactions_a_jump_is_a_marker_not_a_hole() {
        let mut c = Contiguity::with_transactions(true);
        assert_eq!(c.check("t", 0, 10, 12, || Some(0)), Next::Take);
        assert_eq!(c.check("t", 0, 13, 12, || Some(0)), Next::Old);
    }
}
