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

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseProducer, BaseRecord};
use stockflow_core::{parse_body, route, BodyFormat, EngineConfig, Timestamp};

use super::{bar, workload, BenchOptions};
use stockflow_kafka::processor;
use stockflow_kafka::shared::{Shared, ACTIVE};
use stockflow_kafka::wire::canonical_json;
use stockflow_kafka::{level_key, topics, KafkaSettings};

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
    prepare(&mut settings, mock).await?;
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
    let retention =
        stockflow_service::config::Config::new(std::path::PathBuf::new()).history_retention_ns;
    let first = processor::start(
        settings.clone(),
        engine,
        first_dir.path(),
        shared.clone(),
        retention,
    )?;
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
                    stockflow_kafka::send(&producer, record)?;
                }
                stockflow_kafka::flush(&producer, Duration::from_secs(120))?;
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
        retention,
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

/// Gives the run topics and a group of its own (`bench-XXXXXXXX.…`), and
/// creates the topics.
async fn prepare(settings: &mut KafkaSettings, mock: Option<&Mock>) -> anyhow::Result<()> {
    let tag = format!("bench-{:08x}", rand::random::<u32>());
    settings.group = tag.clone();
    settings.topics =
        stockflow_kafka::Topics::named(&format!("{tag}.{}", stockflow_kafka::TOPIC_PREFIX_DEFAULT));
    match mock {
        Some(mock) => {
            for spec in topics::specs(settings, std::iter::empty()) {
                mock.create_topic(&spec.name, spec.partitions, 1)?;
            }
        }
        None => {
            topics::create(settings, 1, Vec::new()).await?;
        }
    }
    Ok(())
}

/// `bench --mode kafka-orders`: one instance with its HTTP side, stock on
/// 300 SKUs at 3 locations, then 3-line orders (lines in different
/// partitions, so each is a saga) one at a time, then from 50 clients at
/// once.
pub async fn orders(mut settings: KafkaSettings, mock: Option<&Mock>) -> anyhow::Result<()> {
    prepare(&mut settings, mock).await?;
    let dir = tempfile::tempdir()?;
    let config = stockflow_service::config::Config::new(dir.path().to_owned());
    let server =
        stockflow_kafka::KafkaServer::start(settings, config, "127.0.0.1:0".parse()?, None).await?;
    let url = server.url();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let cluster: serde_json::Value = client
            .get(format!("{url}/v1/cluster"))
            .send()
            .await?
            .json()
            .await?;
        let active = cluster["partitions"]
            .as_array()
            .is_some_and(|ps| ps.iter().all(|p| p["status"] == "active"));
        if active {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the instance never owned every partition"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    const SKUS: usize = 300;
    let stock: Vec<serde_json::Value> = (0..SKUS)
        .flat_map(|i| (0..3).map(move |l| serde_json::json!({"eventId": format!("ko-{i}-{l}"), "eventType": "RECEIPT", "sku": format!("KO{i:04}"), "locationId": format!("L{l}"), "quantity": 100_000})))
        .collect();
    let r = client
        .post(format!("{url}/v1/events?wait=applied"))
        .json(&stock)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "stocking answered {}", r.status());
    let order = {
        let (client, url) = (client.clone(), url.clone());
        move |n: usize| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let mut rng = SmallRng::seed_from_u64(n as u64);
                let lines: Vec<serde_json::Value> = (0..3)
                .map(|_| serde_json::json!({"sku": format!("KO{:04}", rng.random_range(0..SKUS)), "locationId": format!("L{}", rng.random_range(0..3)), "quantity": 1}))
                .collect();
                let body = serde_json::json!({"orderId": format!("ko-{n}"), "lines": lines, "holdSeconds": 600});
                let sent = Instant::now();
                let answer: serde_json::Value = client
                    .post(format!("{url}/v1/orders"))
                    .json(&body)
                    .send()
                    .await?
                    .json()
                    .await?;
                anyhow::ensure!(
                    answer["status"] == "reserved",
                    "order not reserved: {answer}"
                );
                Ok::<_, anyhow::Error>(sent.elapsed())
            }
        }
    };
    let mut one = Histogram::<u64>::new(3)?;
    for n in 0..200 {
        one.record(order(n).await?.as_micros() as u64)?;
    }
    let mut many = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(1_000));
    for _ in 0..50 {
        let (order, next) = (order.clone(), next.clone());
        tasks.spawn(async move {
            let mut took = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= 2_000 {
                    return Ok::<_, anyhow::Error>(took);
                }
                took.push(order(n).await?);
            }
        });
    }
    while let Some(took) = tasks.join_next().await {
        for t in took?? {
            many.record(t.as_micros() as u64)?;
        }
    }
    let rate = 1_000.0 / started.elapsed().as_secs_f64();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "kafka orders: 3-line sagas across partitions, one at a time: p50 {:.0} ms, p99 {:.0} ms; 50 clients at once: p50 {:.0} ms, p99 {:.0} ms, {rate:.0} orders/s",
        ms(&one, 0.5), ms(&one, 0.99), ms(&many, 0.5), ms(&many, 0.99)
    );
    server.stop().await
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
