//! `stockflow topics create`: every topic Kafka mode uses, with its
//! partitions, cleanup policy and retention.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use super::KafkaSettings;

/// One topic to create and why it is shaped so.
pub struct Spec {
    pub name: String,
    pub partitions: i32,
    pub config: Vec<(&'static str, &'static str)>,
}

/// The topics of `settings`, raw ones for each of `formats`.
pub fn specs<'a>(settings: &KafkaSettings, formats: impl Iterator<Item = &'a str>) -> Vec<Spec> {
    let t = &settings.topics;
    let n = i32::from(settings.partitions);
    let compact = vec![("cleanup.policy", "compact")];
    // Inputs and derived streams: kept a week, like most event topics.
    let week = vec![("retention.ms", "604800000")];
    let mut specs = vec![
        // The log of record: partition = route(sku, location).
        Spec {
            name: t.canonical.clone(),
            partitions: n,
            config: week.clone(),
        },
        // In-transit effects by target partition: same count as canonical.
        Spec {
            name: t.repartition.clone(),
            partitions: n,
            config: week.clone(),
        },
        // State of partition p lives in changelog partition p; never expire.
        Spec {
            name: t.changelog.clone(),
            partitions: n,
            config: vec![("cleanup.policy", "compact"), ("retention.ms", "-1")],
        },
        // Latest snapshot offset per changelog partition: one partition,
        // so a restoring owner reads it all at once.
        Spec {
            name: t.changelog_index.clone(),
            partitions: 1,
            config: compact.clone(),
        },
        // Latest level per sku:location.
        Spec {
            name: t.stock_levels.clone(),
            partitions: n,
            config: compact.clone(),
        },
        // Latest totals per SKU and per location, from their homes.
        Spec {
            name: t.item_totals.clone(),
            partitions: n,
            config: compact.clone(),
        },
        Spec {
            name: t.location_totals.clone(),
            partitions: n,
            config: compact.clone(),
        },
        Spec {
            name: t.alerts.clone(),
            partitions: n,
            config: week.clone(),
        },
        // Every product and location; one partition, read whole by all.
        Spec {
            name: t.catalog.clone(),
            partitions: 1,
            config: compact.clone(),
        },
        // Latest state per orderId.
        Spec {
            name: t.orders.clone(),
            partitions: n,
            config: compact.clone(),
        },
        // Each level's history, for as long as the API serves it (the
        // default --history-retention, 30 days).
        Spec {
            name: t.history.clone(),
            partitions: n,
            config: vec![("retention.ms", "2592000000")],
        },
        Spec {
            name: t.dlq.clone(),
            partitions: 1,
            config: week.clone(),
        },
        // Members and what they own; one partition so every instance reads all.
        Spec {
            name: t.cluster.clone(),
            partitions: 1,
            config: compact,
        },
    ];
    for format in std::iter::once(super::normaliser::CANONICAL).chain(formats) {
        specs.push(Spec {
            name: format!("{}{format}", t.raw_prefix),
            partitions: n,
            config: week.clone(),
        });
    }
    specs
}

/// Creates the topics that do not exist yet; returns (created, existing).
pub async fn create(
    settings: &KafkaSettings,
    replication: i32,
    formats: Vec<String>,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let admin: AdminClient<DefaultClientContext> = settings.client(&[]).create()?;
    let specs = specs(settings, formats.iter().map(String::as_str));
    let topics: Vec<NewTopic> = specs
        .iter()
        .map(|s| {
            s.config.iter().fold(
                NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(replication)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let results = admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .map_err(|e| anyhow::anyhow!("cannot create topics at {}: {e}", settings.bootstrap))?;
    let (mut created, mut existing) = (Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(name),
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok((created, existing))
}
