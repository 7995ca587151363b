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

pub mod cluster;
pub mod http;
pub mod normaliser;
pub mod processor;
pub mod topics;
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
    pub stock_levels: String,
    pub alerts: String,
    pub dlq: String,
    pub cluster: String,
    /// Raw topics are this prefix plus a source format's name.
    pub raw_prefix: String,
}

impl Default for Topics {
    fn default() -> Topics {
        Topics {
            canonical: "inventory.events.canonical".into(),
            repartition: "inventory.repartition".into(),
            changelog: "inventory.changelog".into(),
            stock_levels: "inventory.stock-levels".into(),
            alerts: "inventory.alerts".into(),
            dlq: "inventory.dlq".into(),
            cluster: "inventory.cluster".into(),
            raw_prefix: "inventory.events.raw.".into(),
        }
    }
}

/// How to reach the cluster and what to call things there.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    pub bootstrap: String,
    pub group: String,
    /// librdkafka properties passed through (SASL, TLS, timeouts …).
    pub extra: Vec<(String, String)>,
    pub topics: Topics,
    /// Partitions of the canonical, repartition and changelog topics: the
    /// engine's partition count in Kafka mode. Fixed once topics exist.
    pub partitions: u16,
    /// How often a processor ends a batch: commit interval.
    pub commit_interval: Duration,
}

impl KafkaSettings {
    pub fn new(bootstrap: impl Into<String>) -> KafkaSettings {
        KafkaSettings {
            bootstrap: bootstrap.into(),
            group: "stockflow".into(),
            extra: Vec::new(),
            topics: Topics::default(),
            partitions: 12,
            commit_interval: Duration::from_millis(100),
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
        for (k, v) in &self.extra {
            config.set(k, v);
        }
        config
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

/// The key of a level's messages: `{sku}:{locationId}`.
pub fn level_key(sku: &str, location: &str) -> String {
    format!("{sku}:{location}")
}

/// A running Kafka-mode instance: processor, normaliser, membership and
/// the HTTP API.
pub struct KafkaServer {
    pub addr: std::net::SocketAddr,
    pub instance_id: String,
    processor: processor::Running,
    normaliser: normaliser::Running,
    cluster: cluster::Running,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl KafkaServer {
    /// Joins the group and listens. `advertise` is the URL other
    /// instances forward queries to (default: the listen address).
    pub async fn start(
        settings: KafkaSettings,
        config: crate::config::Config,
        listen: std::net::SocketAddr,
        advertise: Option<String>,
    ) -> anyhow::Result<KafkaServer> {
        use anyhow::Context;
        check_topics(&settings)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| {
                format!("cannot listen on {listen}; is another server running there?")
            })?;
        let addr = listener.local_addr()?;
        let url = advertise.unwrap_or_else(|| format!("http://{addr}"));
        let instance_id = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        crate::metrics::handle();
        let mut engine = config.engine;
        engine.partitions = settings.partitions;
        let shared = Arc::new(processor::Shared::new(settings.partitions));
        let cluster_state = Arc::new(cluster::Cluster::default());
        let processor =
            processor::start(settings.clone(), engine, &config.data_dir, shared.clone())?;
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
        let app = Arc::new(http::KafkaApp {
            settings,
            config,
            producer,
            shared,
            cluster: cluster_state,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(35))
                .build()?,
            instance_id: instance_id.clone(),
            url,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = http::router(app);
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%addr, instance = %instance_id, "listening in Kafka mode");
        Ok(KafkaServer {
            addr,
            instance_id,
            processor,
            normaliser,
            cluster,
            stop,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening, then the threads: the processor flushes and
    /// snapshots what it owns and leaves the group.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        let (processor, normaliser, cluster) = (self.processor, self.normaliser, self.cluster);
        tokio::task::spawn_blocking(move || {
            normaliser.stop();
            processor.stop();
            cluster.stop();
        })
        .await?;
        Ok(())
    }
}

/// Refuses to start against topics whose partition counts disagree with
/// `settings.partitions`: routing would put levels where no one looks.
fn check_topics(settings: &KafkaSettings) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = settings.client(&[]).create()?;
    let t = &settings.topics;
    for topic in [&t.canonical, &t.repartition, &t.changelog, &t.cluster] {
        let metadata = client
            .fetch_metadata(Some(topic), Duration::from_secs(15))
            .map_err(|e| anyhow::anyhow!("cannot reach Kafka at {}: {e}", settings.bootstrap))?;
        let found = metadata
            .topics()
            .first()
            .map_or(0, |m| m.partitions().len());
        anyhow::ensure!(
            found > 0,
            "topic {topic} does not exist: run `stockflow topics create --kafka {}` first",
            settings.bootstrap
        );
        let want = if topic == &t.cluster {
            1
        } else {
            usize::from(settings.partitions)
        };
        anyhow::ensure!(
            found == want,
            "topic {topic} has {found} partitions, stockflow expects {want} (--kafka-partitions)"
        );
    }
    Ok(())
}
