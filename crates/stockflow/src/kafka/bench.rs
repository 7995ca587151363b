//! `stockflow bench --mode kafka --kafka BOOTSTRAP`: one processing
//! instance end to end through a real broker, then a second one restoring
//! everything from the changelog alone.
//!
//! Each run makes its own topics and group (`bench-XXXXXXXX.…`), so runs
//! never read each other's records. The events are the embedded bench's
//! workload, produced as canonical JSON to the canonical topic while the
//! processor applies them; the clock stops when every partition has
//! applied its last record (changelog written, levels published, group
//! offsets committed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord};
use stockflow_core::{parse_body, route, BodyFormat, EngineConfig, Timestamp};

use super::processor::{self, Shared, ACTIVE};
use super::wire::canonical_json;
use super::{level_key, topics, KafkaSettings};
use crate::bench::{bar, workload, BenchOptions};

/// What the run measured, for the caller to compare with the embedded mode.
pub struct Measured {
    pub events_per_s: f64,
}

/// librdkafka's in-process mock cluster, for `--kafka mock`.
pub type Mock = rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// Runs the bench against `settings.bootstrap`, or against `mock` (whose
/// topics are made through its own API).
pub async fn run(
    options: &BenchOptions,
    mut settings: KafkaSettings,
    mock: Option<&Mock>,
) -> anyhow::Result<Measured> {
    let tag = format!("bench-{:08x}", rand::random::<u32>());
    settings.group = tag.clone();
    let t = &mut settings.topics;
    for name in [
        &mut t.canonical,
        &mut t.repartition,
        &mut t.changelog,
        &mut t.changelog_index,
        &mut t.stock_levels,
        &mut t.alerts,
        &mut t.orders,
        &mut t.catalog,
        &mut t.dlq,
        &mut t.cluster,
        &mut t.raw_prefix,
    ] {
        *name = format!("{tag}.{name}");
    }
    match mock {
        Some(mock) => {
            for spec in topics::specs(&settings, std::iter::empty()) {
                mock.create_topic(&spec.name, spec.partitions, 1)?;
            }
        }
        None => {
            topics::create(&settings, 1, Vec::new()).await?;
        }
    }
    let n = settings.partitions;

    // Encoded before the clock starts: (partition, key, canonical JSON).
    let at = Timestamp(1_767_225_600_000_000_000);
    let mut records = Vec::with_capacity(options.events);
    for body in workload(options, options.http_batch) {
        let parsed = parse_body(body.as_bytes(), BodyFormat::Ndjson, usize::MAX)?;
        for event in parsed.batch.iter() {
            let p = route(event.sku, event.location_id, n);
            records.push((
                p,
                level_key(event.sku, event.location_id),
                canonical_json(&event, at),
            ));
        }
    }

    let engine = EngineConfig {
        partitions: n,
        ..EngineConfig::default()
    };
    let first_dir = tempfile::tempdir()?;
    let shared = Arc::new(Shared::new(n));
    let first = processor::start(settings.clone(), engine, first_dir.path(), shared.clone())?;
    wait_active(&shared, n, "the processor to own every partition").await?;

    // The mock cluster keeps only about 5 MB per partition: a backlog any
    // larger loses its oldest records. There the events go in bursts that
    // fit, each sent once the one before is applied; the clock runs
    // throughout, so the rate includes every burst's start-up.
    let burst = if mock.is_some() {
        MOCK_BURST
    } else {
        usize::MAX
    };
    let started = Instant::now();
    let producing = {
        let settings = settings.clone();
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
            let producer: BaseProducer = settings
                .client(&[
                    ("enable.idempotence", "true"),
                    ("acks", "all"),
                    ("linger.ms", "20"),
                    ("batch.num.messages", "10000"),
                    ("queue.buffering.max.messages", "1000000"),
                ])
                .create()?;
            let started = Instant::now();
            for (i, chunk) in records.chunks(burst).enumerate() {
                if i > 0 {
                    let ends = high_watermarks(&settings)?;
                    wait_applied(&shared, &ends);
                }
                for (p, key, json) in chunk {
                    let record = BaseRecord::to(&settings.topics.canonical)
                        .partition(i32::from(*p))
                        .key(key.as_str())
                        .payload(json.as_str());
                    super::send(&producer, record)?;
                }
                super::flush(&producer, Duration::from_secs(120))?;
            }
            Ok(started.elapsed())
        })
    };
    let progress = bar(options.events as u64, "kafka");
    // Done when every partition has applied up to its high watermark once
    // producing is over.
    let mut ends: Option<Vec<i64>> = None;
    loop {
        progress.set_position(shared.events_applied.load(Ordering::Relaxed));
        if ends.is_none() && producing.is_finished() {
            ends = Some(high_watermarks(&settings)?);
        }
        if let Some(ends) = &ends {
            let done =
                (0..n as usize).all(|p| shared.applied[p].load(Ordering::Acquire) >= ends[p]);
            if done {
                break;
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the processor applied {} of {} events in 30 minutes",
            shared.events_applied.load(Ordering::Relaxed),
            options.events
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    let produced_in = producing.await??;
    let levels: usize = (0..n as usize)
        .map(|p| shared.partitions[p].read().len())
        .sum();
    let events_per_s = options.events as f64 / elapsed.as_secs_f64();
    println!(
        "kafka: {} events over {levels} levels end to end through the {} in {:.2} s = {events_per_s:.0} events/s on one instance (producing alone: {:.0} events/s; commit interval {} ms, {})",
        options.events,
        if mock.is_some() { "mock cluster" } else { "broker" },
        elapsed.as_secs_f64(),
        options.events as f64 / produced_in.as_secs_f64(),
        settings.commit_interval.as_millis(),
        if settings.transactions { "a broker transaction per cycle" } else { "no broker transactions" },
    );
    tokio::task::spawn_blocking(move || first.stop()).await?;
    if mock.is_some() {
        println!("kafka: restore not measured on the mock cluster: it keeps only the last ~5 MB of each changelog partition");
        return Ok(Measured { events_per_s });
    }

    // A new owner with no local state: everything from the changelog.
    let second_dir = tempfile::tempdir()?;
    let restored = Arc::new(Shared::new(n));
    let restoring = Instant::now();
    let second = processor::start(
        settings.clone(),
        engine,
        second_dir.path(),
        restored.clone(),
    )?;
    wait_active(&restored, n, "the changelog restore").await?;
    let restore_s = restoring.elapsed().as_secs_f64();
    let restored_levels: usize = (0..n as usize)
        .map(|p| restored.partitions[p].read().len())
        .sum();
    anyhow::ensure!(
        restored_levels == levels,
        "the restore rebuilt {restored_levels} levels of {levels}"
    );
    println!(
        "kafka: restore of {restored_levels} levels from the changelog alone (no local snapshot) took {restore_s:.2} s, group join included"
    );
    tokio::task::spawn_blocking(move || second.stop()).await?;
    Ok(Measured { events_per_s })
}

/// Events per burst on the mock cluster: ~150 bytes each, 12 partitions,
/// well inside its ~5 MB per partition.
const MOCK_BURST: usize = 150_000;

/// The canonical topic's end, per partition.
fn high_watermarks(settings: &KafkaSettings) -> anyhow::Result<Vec<i64>> {
    use rdkafka::consumer::Consumer;
    let reader: rdkafka::consumer::BaseConsumer = settings.client(&[]).create()?;
    (0..settings.partitions)
        .map(|p| {
            let (_, high) = reader.fetch_watermarks(
                &settings.topics.canonical,
                i32::from(p),
                Duration::from_secs(30),
            )?;
            Ok(high)
        })
        .collect()
}

/// Blocks until every partition has applied up to `ends`.
fn wait_applied(shared: &Shared, ends: &[i64]) {
    while (0..ends.len()).any(|p| shared.applied[p].load(Ordering::Acquire) < ends[p]) {
        std::thread::sleep(Duration::from_millis(2));
    }
}

async fn wait_active(shared: &Shared, n: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while (0..n).any(|p| shared.status(p) != ACTIVE) {
        anyhow::ensure!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
