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

pub async fn run(options: &BenchOptions, mut settings: KafkaSettings) -> anyhow::Result<Measured> {
    let tag = format!("bench-{:08x}", rand::random::<u32>());
    settings.group = tag.clone();
    let t = &mut settings.topics;
    for name in [
        &mut t.canonical,
        &mut t.repartition,
        &mut t.changelog,
        &mut t.stock_levels,
        &mut t.alerts,
        &mut t.dlq,
        &mut t.cluster,
        &mut t.raw_prefix,
    ] {
        *name = format!("{tag}.{name}");
    }
    topics::create(&settings, 1, Vec::new()).await?;
    let n = settings.partitions;

    // Encoded before the clock starts: (partition, key, canonical JSON).
    let at = Timestamp(1_767_225_600_000_000_000);
    let mut records = Vec::with_capacity(options.events);
    let mut per_partition = vec![0i64; n as usize];
    for body in workload(options, options.http_batch) {
        let parsed = parse_body(body.as_bytes(), BodyFormat::Ndjson, usize::MAX)?;
        for event in parsed.batch.iter() {
            let p = route(event.sku, event.location_id, n);
            per_partition[p as usize] += 1;
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

    let started = Instant::now();
    let producing = {
        let settings = settings.clone();
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
            for (p, key, json) in &records {
                let record = BaseRecord::to(&settings.topics.canonical)
                    .partition(i32::from(*p))
                    .key(key.as_str())
                    .payload(json.as_str());
                super::send(&producer, record)?;
            }
            super::flush(&producer, Duration::from_secs(120))?;
            Ok(started.elapsed())
        })
    };
    let progress = bar(options.events as u64, "kafka");
    loop {
        let applied: i64 = (0..n as usize)
            .map(|p| {
                shared.applied[p]
                    .load(Ordering::Acquire)
                    .min(per_partition[p])
            })
            .sum();
        progress.set_position(applied as u64);
        if applied >= options.events as i64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the processor applied {applied} of {} events in 30 minutes",
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
        "kafka: {} events over {levels} levels end to end through the broker in {:.2} s = {events_per_s:.0} events/s on one instance (producing alone: {:.0} events/s; commit interval {} ms, no broker transactions)",
        options.events,
        elapsed.as_secs_f64(),
        options.events as f64 / produced_in.as_secs_f64(),
        settings.commit_interval.as_millis(),
    );
    tokio::task::spawn_blocking(move || first.stop()).await?;

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

async fn wait_active(shared: &Shared, n: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while (0..n).any(|p| shared.status(p) != ACTIVE) {
        anyhow::ensure!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
