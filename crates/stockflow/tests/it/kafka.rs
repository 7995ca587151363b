//! Kafka mode against a real Kafka-protocol broker (tansu, installed by
//! .ci/install), with real `stockflow serve --kafka` processes: three
//! instances, one SIGKILLed mid-stream and restarted, must end equal to
//! the reference model, and the stock-levels topic must say the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use stockflow_core::{parse_body, BodyFormat, Engine, EngineConfig, Timestamp};

use crate::free_port;
use crate::reference::{location, sku, Ev, Model};

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// (key, payload, headers) of one record read back.
pub type Record = (Option<String>, Option<Vec<u8>>, Vec<(String, String)>);

/// (key, JSON line) of each message to produce.
type Lines = Vec<(String, String)>;

/// A tansu broker on a free port, in memory; killed when dropped.
pub struct Broker {
    child: Child,
    pub bootstrap: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    pub fn start() -> Broker {
        // Never skip: without the broker the test fails, saying what to run.
        // `cargo install` puts it in ~/.cargo/bin, on PATH where cargo is.
        let installed = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
            .map(|home| home.join("bin/tansu"))
            .filter(|p| p.is_file());
        let tansu = on_path("tansu").or(installed).expect(
            "tansu is not on PATH: run .ci/install (cargo install tansu --locked --features dynostore)",
        );
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let broker = Broker {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .create()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.fetch_metadata(None, Duration::from_secs(1)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        broker
    }

    pub fn create_topics(&self) {
        let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
            .args(["topics", "create", "--kafka", &self.bootstrap])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn producer(&self) -> BaseProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap()
    }

    /// Every record of `topic` from the beginning, read until the topic is
    /// quiet for two seconds (tansu's high watermarks can lag what a fetch
    /// returns, so they cannot say where the end is).
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        use rdkafka::message::Headers;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..metadata.topics()[0].partitions().len() as i32 {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        let mut records = Vec::new();
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(2) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            quiet_since = Instant::now();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                h.value
                                    .map(|v| String::from_utf8_lossy(v).into_owned())
                                    .unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push((
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                m.payload().map(<[u8]>::to_vec),
                headers,
            ));
        }
        records
    }

    /// The last value of every key of `topic`.
    pub fn latest(&self, topic: &str) -> BTreeMap<String, Value> {
        self.read_all(topic)
            .into_iter()
            .filter_map(|(k, v, _)| Some((k?, serde_json::from_slice(&v?).unwrap())))
            .collect()
    }

    /// The `reason` headers of `topic`'s records, counted.
    pub fn reasons(&self, topic: &str) -> BTreeMap<String, usize> {
        let mut reasons = BTreeMap::new();
        for (_, _, headers) in self.read_all(topic) {
            let reason = headers
                .into_iter()
                .find(|(k, _)| k == "reason")
                .map(|(_, v)| v)
                .unwrap_or_default();
            *reasons.entry(reason).or_default() += 1;
        }
        reasons
    }
}

/// A `stockflow serve --kafka` process; SIGKILLed when dropped.
pub struct Instance {
    child: Option<Child>,
    pub url: String,
    port: u16,
    dir: PathBuf,
    bootstrap: String,
    group: String,
    /// `--sourcing` for lines without a location.
    sourcing: String,
    /// More `serve` arguments.
    extra: Vec<String>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Instance {
    /// Lines without a location try WEB, then BACKUP.
    pub fn start(broker: &Broker, group: &str, dir: &Path) -> Instance {
        Instance::sourcing(broker, group, dir, "priority:WEB,BACKUP")
    }

    pub fn sourcing(broker: &Broker, group: &str, dir: &Path, sourcing: &str) -> Instance {
        Instance::with_args(broker, group, dir, sourcing, &[])
    }

    /// An instance started with more `serve` arguments.
    pub fn with_args(
        broker: &Broker,
        group: &str,
        dir: &Path,
        sourcing: &str,
        extra: &[&str],
    ) -> Instance {
        let port = free_port();
        let mut instance = Instance {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir: dir.to_owned(),
            bootstrap: broker.bootstrap.clone(),
            group: group.to_owned(),
            sourcing: sourcing.to_owned(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        instance.spawn();
        instance
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_stockflow"))
            .args(["serve", "--kafka", &self.bootstrap, "--group", &self.group])
            // Small, so every test restores through changelog snapshots.
            .args(["--changelog-snapshot-every", "3000"])
            .args(["--sourcing", &self.sourcing])
            // No hold an event makes expires while a test runs.
            .args(["--order-hold-seconds", "604800"])
            // A killed member's partitions move after 10 s, not 45.
            .args(["--kafka-config", "session.timeout.ms=10000"])
            // The web UI test drives the dashboard's simulator.
            .arg("--simulator")
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.extra)
            .env("RUST_LOG", "warn,stockflow=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the stockflow binary runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while http::blocking_get(&format!("{}/healthz", self.url)).is_none() {
            assert!(
                Instant::now() < deadline,
                "instance did not come up; see {}",
                self.dir.with_extension("log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9: no flush, no snapshot, no goodbye. Its last announcement
    /// stays in the cluster view for a while: `wait_settled` waits until
    /// it is gone.
    pub fn kill(&mut self) {
        if let Some((200, cluster)) = http::blocking_get(&format!("{}/v1/cluster", self.url)) {
            if let Some(id) = cluster["instanceId"].as_str() {
                KILLED.lock().unwrap().insert(id.to_owned());
            }
        }
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    /// SIGTERM, and wait: the instance leaves the group at once, so its
    /// partitions move without waiting out the session timeout.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            child.wait().unwrap();
        }
    }
}

mod http {
    //! Blocking GETs with a short timeout, over the async client.
    pub fn blocking_text(url: &str) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { reqwest::get(url).await.unwrap().text().await.unwrap() })
    }

    pub fn blocking_get(url: &str) -> Option<(u16, serde_json::Value)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let response = reqwest::Client::new()
                .get(url)
                .timeout(std::time::Duration::from_secs(10))
                .send()
                .await
                .ok()?;
            let status = response.status().as_u16();
            Some((
                status,
                response.json().await.unwrap_or(serde_json::Value::Null),
            ))
        })
    }
}

/// GET `url`, retried while it answers 503 (a partition between owners:
/// clients are told to retry), for up to a minute.
fn get_settled(url: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http::blocking_get(url) {
            Some((503, _)) | None if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Some(answer) => return answer,
            None => panic!("{url} never answered"),
        }
    }
}

/// Instances killed so far (by id): a dead member's last word can make a
/// cluster look settled until it ages out, while the group still gives
/// its partitions to it.
static KILLED: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Waits until some instance sees `members` live members, none of them
/// killed, owning all partitions, every one active.
pub fn wait_settled(url: &str, members: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some((200, c)) = http::blocking_get(&format!("{url}/v1/cluster")) {
            let active = c["partitions"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|p| p["status"] == "active"));
            let live = c["members"].as_array().cloned().unwrap_or_default();
            let killed = KILLED.lock().unwrap();
            let dead = live.iter().any(|m| {
                m["instanceId"]
                    .as_str()
                    .is_some_and(|id| killed.contains(id))
            });
            if active && !dead && live.len() == members {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle with {members} members"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const SKUS: usize = 30;
const LOCATIONS: usize = 8;

/// The scenario: ≥100k events over 240 levels, the stream a user's
/// systems send (see `holds::mixed_stream`): receipts, sales,
/// adjustments, late and early counts, transfers, plain reservations,
/// and over a third RESERVATION, RELEASE and FULFILLMENT naming one of 50
/// orders (whose homes are other partitions, so each crosses partitions
/// through the sagas), ~2% redelivered duplicates and ~0.3% invalid
/// events; then TRANSFER_INs for most transfers, sent after every
/// transfer's in-transit part has landed (across keys Kafka keeps no
/// order, so a TRANSFER_IN racing its own in-transit would be a different
/// test).
fn workload(seed: u64, events: usize) -> (Vec<Ev>, Vec<Ev>) {
    let shape = crate::holds::Shape {
        events,
        skus: SKUS,
        locations: LOCATIONS,
        orders: 50,
        commands: 0.0,
        batch_max: 1000,
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    let stream: Vec<Ev> = crate::holds::mixed_stream(seed, shape)
        .into_iter()
        .flat_map(|step| match step {
            crate::holds::Step::Events(events) => events,
            crate::holds::Step::Order(_) => unreachable!("no commands asked for"),
        })
        .filter(|e| e.kind != "TRANSFER_IN")
        .collect();
    let mut seen = std::collections::HashSet::new();
    let arrivals = stream
        .iter()
        .filter(|e| e.kind == "TRANSFER_OUT" && e.valid() && seen.insert(e.id))
        .filter(|_| rng.random_bool(0.8))
        .map(|e| Ev {
            id: e.id + 10_000_000,
            kind: "TRANSFER_IN",
            location: e.to.expect("a transfer names its destination"),
            to: None,
            hold_s: None,
            order: None,
            ..e.clone()
        })
        .collect();
    (stream, arrivals)
}

/// The messages to produce: (key, canonical JSON) with eventIds `k{seed}-N`.
fn lines(seed: u64, events: &[Ev]) -> Lines {
    events
        .iter()
        .map(|e| {
            let key = format!("{}:{}", sku(e.sku), location(e.location));
            (key, e.json_with(&format!("k{seed}-")))
        })
        .collect()
}

/// (onHand, reserved, inTransit) by (sku, location).
type Levels = BTreeMap<(String, String), (i64, i64, i64)>;

/// Levels by the reference model, from the same events in the same order;
/// and the model, for its orders' holds.
fn reference(phases: &[&[Ev]]) -> (Levels, Model) {
    // No hold expires: the instances hold for a week.
    let mut model = Model::new(i64::MAX / 4);
    for e in phases.iter().flat_map(|p| p.iter()) {
        model.event(e, 0);
    }
    let levels = model
        .levels_by_name()
        .into_iter()
        .map(|(key, (on_hand, reserved, in_transit, _))| (key, (on_hand, reserved, in_transit)))
        .collect();
    (levels, model)
}

/// Kinds of alert that only the levels decide (others depend on time).
const LEVEL_ALERT_KINDS: [&str; 3] = ["LOW_STOCK", "OUT_OF_STOCK", "NEGATIVE_ON_HAND"];

/// The active alerts of those kinds in the embedded engine's fold, as
/// (kind, sku, locationId, severity). (Alerts are transitions the engine
/// decides; the levels they follow are checked against the model.)
fn reference_alerts(phases: &[&[(String, String)]]) -> Vec<(String, String, String, String)> {
    let mut engine = Engine::new(EngineConfig::default());
    for phase in phases {
        for (_, line) in phase.iter() {
            let mut parsed = parse_body(line.as_bytes(), BodyFormat::Json, 1).unwrap();
            engine.apply(&mut parsed.batch, Timestamp(1));
        }
    }
    let mut active = Vec::new();
    for partition in &engine.partitions {
        for alert in partition.alerts.active.values() {
            let (sku, location) = partition.names_of(alert.slot);
            let kind = alert.kind.as_str();
            if LEVEL_ALERT_KINDS.contains(&kind) {
                let severity = alert.severity.as_str().to_owned();
                active.push((
                    kind.to_owned(),
                    sku.to_string(),
                    location.to_string(),
                    severity,
                ));
            }
        }
    }
    active.sort();
    active
}

/// The active level alerts `url` reports for the whole cluster, page by
/// page, in the same form.
fn active_alerts(url: &str) -> Vec<(String, String, String, String)> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut page_url = format!("{url}/v1/alerts?active=true&limit=1000");
        if let Some(after) = &after {
            page_url.push_str(&format!("&after={after}"));
        }
        let (status, page) = get_settled(&page_url);
        assert_eq!(status, 200, "{page}");
        for alert in page["alerts"].as_array().unwrap() {
            let text = |k: &str| alert[k].as_str().unwrap().to_owned();
            if LEVEL_ALERT_KINDS.contains(&alert["kind"].as_str().unwrap()) {
                all.push((
                    text("kind"),
                    text("sku"),
                    text("locationId"),
                    text("severity"),
                ));
            }
        }
        match page["nextAfter"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    all.sort();
    all
}

fn produce(producer: &BaseProducer, topic: &str, lines: &[(String, String)]) {
    for (key, line) in lines {
        let record = BaseRecord::to(topic)
            .key(key.as_str())
            .payload(line.as_str());
        stockflow::kafka::send(producer, record).unwrap();
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// Every level of the reference, read through `url` (which forwards to
/// the owner): the ones that differ.
fn differences(url: &str, want: &BTreeMap<(String, String), (i64, i64, i64)>) -> Vec<String> {
    let mut got = BTreeMap::new();
    for l in 0..LOCATIONS {
        let location = format!("L{l}");
        let mut after = String::new();
        loop {
            let Some((200, page)) = http::blocking_get(&format!(
                "{url}/v1/locations/{location}/stock?limit=1000{after}"
            )) else {
                return vec![format!("{location}: no answer yet")];
            };
            for level in page["levels"].as_array().unwrap() {
                let n = |f: &str| level[f].as_i64().unwrap();
                got.insert(
                    (level["sku"].as_str().unwrap().to_owned(), location.clone()),
                    (n("onHand"), n("reserved"), n("inTransit")),
                );
            }
            match page["nextAfter"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => break,
            }
        }
    }
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .map(|(k, v)| {
            let p = stockflow_core::route(&k.0, &k.1, 12);
            format!("{k:?} (partition {p}): want {v:?}, got {:?}", got.get(k))
        })
        .collect();
    let mut summary: Vec<String> = wrong.iter().take(10).cloned().collect();
    if wrong.len() > 10 {
        summary.push(format!("… {} levels differ in all", wrong.len()));
    }
    summary
}

/// Waits until `url` answers `want` (the reference of `sent`); on failure
/// says why, including how the canonical log of the first wrong level
/// differs from what was sent.
fn wait_equal(
    broker: &Broker,
    url: &str,
    want: &BTreeMap<(String, String), (i64, i64, i64)>,
    sent: &[(String, String)],
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let diff = differences(url, want);
        if diff.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            if std::env::var("KAFKA_HOLD").is_ok() {
                eprintln!("HOLDING: broker {} instance {url}", broker.bootstrap);
                std::thread::sleep(Duration::from_secs(1200));
            }
            let cluster = http::blocking_get(&format!("{url}/v1/cluster"));
            let first = diff[0].split(" (partition").next().unwrap_or_default();
            let explained = explain(broker, first, sent);
            panic!(
                "levels at {url} never matched the reference: {diff:#?}\n{explained}\ndead letters by reason: {:#?}\ncluster: {cluster:?}",
                broker.reasons("inventory.dlq")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// How the canonical topic's events of one level (`("sku", "location")` as
/// printed) differ from the valid events sent for it: missing, extra, or
/// in another order.
fn explain(broker: &Broker, level: &str, sent: &[(String, String)]) -> String {
    let key = level
        .trim_matches(|c| "()\" ".contains(c))
        .replace("\", \"", ":");
    let id_of = |line: &[u8]| -> Option<String> {
        let v: Value = serde_json::from_slice(line).ok()?;
        Some(v["eventId"].as_str()?.to_owned())
    };
    let mut seen = std::collections::HashSet::new();
    let expected: Vec<String> = sent
        .iter()
        .filter(|(k, l)| {
            // Invalid events (a quantity the type does not allow) are
            // dead letters, not on the level.
            let v: Value = serde_json::from_str(l).unwrap_or_default();
            let q = v["quantity"].as_i64().unwrap_or(0);
            let valid = match v["eventType"].as_str() {
                Some("ADJUSTMENT") => q != 0,
                Some("COUNT") => q >= 0,
                _ => q > 0,
            };
            *k == key && valid
        })
        .filter_map(|(_, l)| id_of(l.as_bytes()))
        .filter(|id| seen.insert(id.clone()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut repeats = 0;
    let logged: Vec<String> = broker
        .read_all("inventory.events.canonical")
        .into_iter()
        .filter(|(k, _, _)| k.as_deref() == Some(key.as_str()))
        .filter_map(|(_, v, _)| id_of(&v?))
        .filter(|id| {
            seen.insert(id.clone()) || {
                repeats += 1;
                false
            }
        })
        .collect();
    let first_difference = expected.iter().zip(&logged).position(|(a, b)| a != b);
    format!(
        "level {key}: {} events sent, {} first occurrences in the canonical topic ({repeats} repeats); first difference in order at {first_difference:?}: sent {:?}, logged {:?}",
        expected.len(),
        logged.len(),
        first_difference.map(|i| &expected[i..(i + 5).min(expected.len())]),
        first_difference.map(|i| &logged[i..(i + 5).min(logged.len())]),
    )
}

#[test]
fn three_instances_one_killed_mid_stream_end_equal_to_the_reference() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    // Kept under target/ so that a failure leaves the instances' logs.
    let dirs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kafka-scenario");
    let _ = std::fs::remove_dir_all(&dirs);
    std::fs::create_dir_all(&dirs).unwrap();
    let mut instances: Vec<Instance> = (0..3)
        .map(|i| Instance::start(&broker, "scenario", &dirs.join(format!("i{i}"))))
        .collect();
    wait_settled(&instances[0].url, 3);

    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed={seed}");
    let (stream, arrived) = workload(seed, 100_000);
    let correlated = stream.iter().filter(|e| e.order.is_some()).count();
    assert!(
        correlated * 4 >= stream.len(),
        "{correlated} events name orders"
    );
    let (events, arrivals) = (lines(seed, &stream), lines(seed, &arrived));
    let producer = broker.producer();
    let raw = "inventory.events.raw.canonical";
    let (first, rest) = events.split_at(40_000);
    produce(&producer, raw, first);
    // Mid-stream: one instance dies without a word, the others take over
    // its partitions from the changelog while events keep coming.
    std::thread::sleep(Duration::from_millis(500));
    let kill = std::env::var("KAFKA_NO_KILL").is_err();
    if kill {
        instances[1].kill();
    }
    let (second, third) = rest.split_at(30_000);
    produce(&producer, raw, second);
    if kill {
        instances[1].restart();
    }
    produce(&producer, raw, third);
    wait_settled(&instances[0].url, 3);
    let (want, _) = reference(&[&stream]);
    wait_equal(&broker, &instances[0].url, &want, &events);

    produce(&producer, raw, &arrivals);
    let (want, model) = reference(&[&stream, &arrived]);
    for instance in &instances {
        wait_equal(
            &broker,
            &instance.url,
            &want,
            &[events.clone(), arrivals.clone()].concat(),
        );
    }
    // Every level through every instance, one by one (forwarded to owners).
    for ((sku, location), (on_hand, reserved, in_transit)) in &want {
        for instance in &instances {
            let (status, level) =
                get_settled(&format!("{}/v1/stock/{sku}/{location}", instance.url));
            assert_eq!(status, 200, "{level}");
            assert_eq!(
                (
                    level["onHand"].as_i64(),
                    level["reserved"].as_i64(),
                    level["inTransit"].as_i64()
                ),
                (Some(*on_hand), Some(*reserved), Some(*in_transit)),
                "{sku} at {location} via {}",
                instance.url
            );
        }
    }
    // Each level's history, through any instance: every distinct valid
    // event on it exactly once, in the order its partition applied them
    // (the kill, the restores and the rebuilt histories included), the
    // newest entry at the level; and the levels as of now and before.
    let mut applied: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    let sent = stream
        .iter()
        .chain(&arrived)
        .zip(events.iter().chain(&arrivals));
    for (e, (key, line)) in sent {
        let event: Value = serde_json::from_str(line).unwrap();
        let id = event["eventId"].as_str().unwrap().to_owned();
        if e.valid() && seen.insert(id.clone()) {
            applied.entry(key.as_str()).or_default().push(id);
        }
    }
    let now = Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64,
    )
    .to_rfc3339();
    for (i, ((sku, location), (on_hand, reserved, in_transit))) in want.iter().enumerate() {
        let url = &instances[i % instances.len()].url;
        let entries = whole_history(url, sku, location);
        let newest = entries.first().map(|e| e["level"].clone());
        let mut ids: Vec<String> = entries
            .iter()
            .filter(|e| e["part"] != "in_transit")
            .map(|e| e["eventId"].as_str().unwrap().to_owned())
            .collect();
        ids.reverse();
        let key = format!("{sku}:{location}");
        let want_ids = applied.get(key.as_str()).cloned().unwrap_or_default();
        assert_eq!(ids, want_ids, "history of {key} via {url}");
        let newest = newest.unwrap();
        let numbers = |l: &Value| {
            (
                l["onHand"].as_i64(),
                l["reserved"].as_i64(),
                l["inTransit"].as_i64(),
            )
        };
        let want = (Some(*on_hand), Some(*reserved), Some(*in_transit));
        assert_eq!(numbers(&newest), want, "newest history entry of {key}");
        let (status, then) = get_settled(&format!("{url}/v1/stock/{sku}/{location}?asOf={now}"));
        assert_eq!(
            (status, numbers(&then)),
            (200, want),
            "{key} as of now: {then}"
        );
        let (status, then) = get_settled(&format!(
            "{url}/v1/stock/{sku}/{location}?asOf=2001-01-01T00:00:00Z"
        ));
        assert_eq!(status, 404, "{key} before it existed: {then}");
    }
    // A SKU as of now, gathered from every member: the reference's sums.
    let (status, k00) = get_settled(&format!("{}/v1/stock/P0?asOf={now}", instances[1].url));
    assert_eq!(status, 200, "{k00}");
    let on_hand: i64 = want
        .iter()
        .filter(|((sku, _), _)| sku == "P0")
        .map(|(_, (on_hand, _, _))| on_hand)
        .sum();
    assert_eq!(k00["totals"]["onHand"].as_i64(), Some(on_hand), "{k00}");

    // A SKU's roll-up is kept at the SKU's home partition from the
    // reports its levels' owners send through the repartition topic
    // (homes restored after the kill included): the reference's sums,
    // through every instance.
    let mut per_sku: BTreeMap<&str, [i64; 5]> = BTreeMap::new();
    for ((sku, _), (on_hand, reserved, in_transit)) in &want {
        let sums = per_sku.entry(sku.as_str()).or_default();
        let available = (on_hand - reserved).max(0);
        for (sum, one) in sums
            .iter_mut()
            .zip([*on_hand, *reserved, available, *in_transit, 1])
        {
            *sum += one;
        }
    }
    for (sku, sums) in &per_sku {
        for instance in &instances {
            let fields = ["onHand", "reserved", "available", "inTransit", "levels"];
            wait_for(
                &format!("{}/v1/items/{sku}", instance.url),
                &format!("the roll-up of {sku} to be {sums:?}"),
                |item| {
                    fields.iter().zip(sums).all(|(f, sum)| {
                        item["totals"][f].as_i64() == Some(*sum)
                            && item["byType"]["unknown"][f].as_i64() == Some(*sum)
                    })
                },
            );
        }
    }
    // The check gathered from every member, asked of every instance,
    // agrees: no order's hold is unbacked (the workload's plain
    // reservations are held by no order), the orders' homes and the
    // levels agree on every hold, and every SKU's roll-up sums its levels.
    for instance in &instances {
        let check = wait_for(
            &format!("{}/v1/check", instance.url),
            "the invariants to hold",
            |c| c["ok"] == true,
        );
        assert_eq!(check["levels"].as_u64(), Some(want.len() as u64), "{check}");
        assert!(
            check["reservationsNotHeldByOrders"].as_u64() > Some(0),
            "{check}"
        );
    }
    // Every order the events made, through any instance (its home
    // answers): it holds at each level what the model says, and only there.
    let held = model.levels_by_name();
    assert!(
        held.values().any(|l| !l.3.is_empty()),
        "orders hold units at the end"
    );
    for (n, order) in model.orders.iter().enumerate() {
        let url = &instances[n % instances.len()].url;
        let (status, answer) = get_settled(&format!("{url}/v1/orders/{order}"));
        assert_eq!(status, 200, "order {order}: {answer}");
        let mut holds: BTreeMap<(String, String), i64> = BTreeMap::new();
        for line in answer["lines"].as_array().unwrap() {
            for a in line["allocations"].as_array().unwrap() {
                if a["fulfilled"] != true {
                    let key = (
                        line["sku"].as_str().unwrap().to_owned(),
                        a["locationId"].as_str().unwrap().to_owned(),
                    );
                    *holds.entry(key).or_insert(0) += a["quantity"].as_i64().unwrap();
                }
            }
        }
        let want_holds: BTreeMap<(String, String), i64> = held
            .iter()
            .filter_map(|(key, l)| l.3.get(order).map(|h| (key.clone(), *h)))
            .collect();
        assert_eq!(holds, want_holds, "holds of {order} (seed={seed})");
    }

    // The compacted stock-levels topic's last word per key is the API's.
    let topic = broker.latest("inventory.stock-levels");
    for ((sku, location), (on_hand, reserved, in_transit)) in &want {
        let level = &topic[&format!("{sku}:{location}")];
        assert_eq!(
            (
                level["onHand"].as_i64(),
                level["reserved"].as_i64(),
                level["inTransit"].as_i64()
            ),
            (Some(*on_hand), Some(*reserved), Some(*in_transit)),
            "stock-levels topic for {sku}:{location}"
        );
        let id = level["eventId"].as_str().unwrap_or_default();
        assert!(
            id.starts_with('k') && level["eventType"].is_string(),
            "stock-levels topic for {sku}:{location} names its last event: {level}"
        );
    }
    // Alerts live with the partitions' state: every instance gathers the
    // active ones of the whole cluster, and they are the reference's.
    let want_alerts = reference_alerts(&[&events, &arrivals]);
    assert!(!want_alerts.is_empty(), "the scenario raises level alerts");
    for instance in &instances {
        assert_eq!(
            active_alerts(&instance.url),
            want_alerts,
            "active alerts via {}",
            instance.url
        );
    }
    // The invalid events are in the DLQ, each with its reason.
    let invalid = stream.iter().filter(|e| !e.valid()).count();
    assert!(invalid > 0);
    let dlq: usize = broker.reasons("inventory.dlq").values().sum();
    assert!(
        dlq >= invalid,
        "{dlq} dead letters for {invalid} invalid events"
    );
    // Owners wrote changelog snapshots (every 3,000 records here) on the
    // way, and tombstoned the records they cover, for compaction.
    let written: f64 = instances
        .iter()
        .map(|i| metric(&i.url, "stockflow_kafka_changelog_snapshots_total"))
        .sum();
    assert!(written > 0.0, "no changelog snapshot was written");
    let changelog = broker.read_all("inventory.changelog");
    let tombstones = changelog.iter().filter(|(_, v, _)| v.is_none()).count();
    assert!(tombstones > 0, "no changelog record was tombstoned");
}

/// A new owner with no local snapshot restores from the changelog. While
/// it does, a level answers 503 with Retry-After (code `restoring`), or,
/// with `?stale=true`, what is restored so far flagged `"stale": true`;
/// never 404. Once restored, the exact level without the flag.
#[test]
fn a_restoring_partition_answers_503_or_a_flagged_stale_level() {
    let _heavy = crate::heavy();
    const LEVELS_PER_SKU: usize = 10;
    const SKUS: usize = 12;
    const PER_LEVEL: usize = 2_000;
    let broker = Broker::start();
    broker.create_topics();
    let dirs = scratch("kafka-stale");
    let mut first = Instance::start(&broker, "stale", &dirs.join("a"));
    wait_settled(&first.url, 1);
    let lines: Vec<(String, String)> = (0..SKUS * LEVELS_PER_SKU * PER_LEVEL)
        .map(|n| {
            let (sku, location) = (format!("SS{}", n % SKUS), format!("L{}", (n / SKUS) % LEVELS_PER_SKU));
            let line = format!(
                r#"{{"eventId":"st-{n}","eventType":"RECEIPT","sku":"{sku}","locationId":"{location}","quantity":1}}"#
            );
            (format!("{sku}:{location}"), line)
        })
        .collect();
    produce(&broker.producer(), "inventory.events.raw.canonical", &lines);
    let total = (LEVELS_PER_SKU * PER_LEVEL) as i64;
    for sku in 0..SKUS {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, body) = get_settled(&format!("{}/v1/stock/SS{sku}", first.url));
            if body["totals"]["onHand"].as_i64() == Some(total) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "SS{sku} never reached {total}: {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    first.stop();

    // A new member with an empty data directory: everything from the
    // changelog.
    let second = Instance::start(&broker, "stale", &dirs.join("b"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    let (mut restoring, mut stale, mut partial) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    runtime.block_on(async {
        loop {
            let mut settled = 0;
            for sku in 0..SKUS {
                for stale_too in [false, true] {
                    let query = if stale_too { "?stale=true" } else { "" };
                    let url = format!("{}/v1/stock/SS{sku}/L0{query}", second.url);
                    let response = client.get(&url).send().await.unwrap();
                    let status = response.status().as_u16();
                    let retry_after = response.headers().contains_key("retry-after");
                    let body: Value = response.json().await.unwrap();
                    match status {
                        200 if body["stale"] == true => {
                            assert!(stale_too, "flagged stale without asking: {body}");
                            let on_hand = body["onHand"].as_i64().unwrap();
                            assert!(on_hand <= PER_LEVEL as i64, "{body}");
                            stale += 1;
                            partial += usize::from(on_hand < PER_LEVEL as i64);
                        }
                        200 => {
                            assert_eq!(
                                body["onHand"], PER_LEVEL as i64,
                                "an unflagged answer is exact: {body}"
                            );
                            settled += usize::from(!stale_too);
                        }
                        503 => {
                            assert!(retry_after, "503 without Retry-After: {body}");
                            restoring += usize::from(body["code"] == "restoring");
                        }
                        other => panic!("{url} answered {other}: {body}"),
                    }
                }
            }
            if settled == SKUS {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new owner never finished restoring"
            );
        }
    });
    println!("while restoring: {restoring} answers 503 restoring, {stale} stale answers ({partial} partial)");
    // The SKUs' roll-ups were restored with their home partitions (no
    // level changes since, so no owner reports them again).
    for sku in 0..SKUS {
        wait_for(
            &format!("{}/v1/items/SS{sku}", second.url),
            "a restored roll-up",
            |item| {
                item["totals"]["onHand"].as_i64() == Some(total)
                    && item["totals"]["levels"].as_i64() == Some(LEVELS_PER_SKU as i64)
            },
        );
    }
    // The first member wrote changelog snapshots (every 3,000 records
    // here; 20,000 per partition): the new one started from them.
    let adopted = metric(&second.url, "stockflow_kafka_restored_from_snapshot_total");
    assert!(
        adopted >= 12.0,
        "{adopted} restores from a changelog snapshot, for 12 partitions"
    );
    assert!(
        restoring > 0,
        "no query arrived while a partition was restoring"
    );
    assert!(
        stale > 0,
        "?stale=true never answered from a restoring partition"
    );

    // The first member comes back with its data directory: the
    // partitions it gets again resume their history from what it saved
    // when it stopped, and every level's history is whole (2,000 receipts,
    // each once, the newest at the level) whichever member answers.
    first.restart();
    wait_settled(&second.url, 2);
    // Settled may still mean the second member owns everything: wait
    // for the group to give the first some partitions back.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&first.url, "stockflow_kafka_partitions_owned") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the returning member got no partitions"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_settled(&second.url, 2);
    for sku in 0..SKUS {
        for url in [&first.url, &second.url] {
            let entries = whole_history(url, &format!("SS{sku}"), "L0");
            let mut ids = std::collections::HashSet::new();
            for entry in &entries {
                assert!(
                    ids.insert(entry["eventId"].as_str().unwrap().to_owned()),
                    "{entry} twice"
                );
            }
            let newest = entries.first().map(|e| e["level"]["onHand"].clone());
            assert_eq!(ids.len(), PER_LEVEL, "history of SS{sku}/L0 via {url}");
            assert_eq!(newest, Some(Value::from(PER_LEVEL)), "SS{sku}/L0 via {url}");
        }
    }
    let log = std::fs::read_to_string(dirs.join("a").with_extension("log")).unwrap();
    assert!(
        log.contains("resuming from what was materialised here"),
        "the returning member rebuilt its history from scratch"
    );
}

/// Every entry of a level's history through `url`, newest first, read a
/// page of 1,000 at a time.
fn whole_history(url: &str, sku: &str, location: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut before = String::new();
    loop {
        let (status, page) = get_settled(&format!(
            "{url}/v1/stock/{sku}/{location}/history?limit=1000{before}"
        ));
        assert_eq!(status, 200, "{page}");
        entries.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["nextBefore"].as_str() {
            Some(next) => before = format!("&before={next}"),
            None => return entries,
        }
    }
}

/// The sum of a Prometheus metric's samples at `url`/metrics.
fn metric(url: &str, name: &str) -> f64 {
    http::blocking_text(&format!("{url}/metrics"))
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A fresh directory under target/ for a test's instances (kept after a
/// failure for their logs).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What one client learned about its reservation.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Told {
    Granted,
    Refused,
    /// Retried after a lost answer and found a duplicate, or told
    /// `outcome_unknown`: the level is the judge.
    Unknown,
}

/// Sends one RESERVATION of one unit through `urls` (starting at `first`)
/// with `?wait=applied`, moving to the next instance on a lost answer, with
/// the same eventId (which makes the retry safe).
async fn reserve(
    client: &reqwest::Client,
    urls: &[String],
    first: usize,
    sku: &str,
    id: &str,
) -> Told {
    let body = format!(
        r#"{{"eventId":"{id}","eventType":"RESERVATION","sku":"{sku}","locationId":"WEB","quantity":1}}"#
    );
    let mut retried = false;
    for attempt in 0..200 {
        let url = &urls[(first + attempt) % urls.len()];
        let answer = client
            .post(format!("{url}/v1/events?wait=applied"))
            .header("content-type", "application/json")
            .body(body.clone())
            .timeout(Duration::from_secs(40))
            .send()
            .await;
        let receipt: Value = match answer {
            Ok(r) if r.status().is_success() => r.json().await.unwrap(),
            _ => {
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let reason = receipt["errors"][0]["reason"].as_str().unwrap_or("");
        return match (receipt["duplicates"].as_u64(), reason) {
            (Some(1), _) if retried => Told::Unknown,
            (Some(1), _) => panic!("{id} sent once was called a duplicate: {receipt}"),
            (_, "insufficient_stock") => Told::Refused,
            (_, r) if r.starts_with("outcome_unknown") => Told::Unknown,
            (_, "") => Told::Granted,
            (_, other) => panic!("{id}: unexpected reason {other}: {receipt}"),
        };
    }
    panic!("{id}: no instance answered");
}

/// Receives `units` of each of `skus` at WEB through `url`, applied.
async fn stock_web(client: &reqwest::Client, url: &str, skus: &[String], units: i64) {
    let receipts: Vec<String> = skus
        .iter()
        .map(|sku| format!(r#"{{"eventId":"stock-{sku}","eventType":"RECEIPT","sku":"{sku}","locationId":"WEB","quantity":{units}}}"#))
        .collect();
    let r = client
        .post(format!("{url}/v1/events?wait=applied"))
        .header("content-type", "application/json")
        .body(format!("[{}]", receipts.join(",")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

#[test]
fn rebalance_while_orders_race_for_the_last_units_never_oversells() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let dirs = scratch("kafka-race");
    let mut instances: Vec<Instance> = (0..2)
        .map(|i| Instance::start(&broker, "race", &dirs.join(format!("i{i}"))))
        .collect();
    wait_settled(&instances[0].url, 2);
    const UNITS: usize = 10;
    const SKUS: usize = 12;
    const CLAIMS: usize = 3 * UNITS;
    let skus: Vec<String> = (0..SKUS).map(|s| format!("LAST{s}")).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let urls: Vec<String> = instances.iter().map(|i| i.url.clone()).collect();
    runtime.block_on(stock_web(&client, &urls[0], &skus, UNITS as i64));

    // Three times as many claims as units, from many clients at once,
    // while a third instance joins and one of the first two is killed.
    let mut urls_all = urls.clone();
    let claims = {
        let client = client.clone();
        let skus = skus.clone();
        let urls = urls.clone();
        runtime.spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..CLAIMS {
                for (s, sku) in skus.iter().enumerate() {
                    let (client, urls, sku) = (client.clone(), urls.clone(), sku.clone());
                    tasks.spawn(async move {
                        // Spread out over ~6 s so the rebalances land mid-race.
                        tokio::time::sleep(Duration::from_millis((n * 200) as u64)).await;
                        let id = format!("claim-{sku}-{n}");
                        (s, reserve(&client, &urls, n + s, &sku, &id).await)
                    });
                }
            }
            let mut told = Vec::new();
            while let Some(result) = tasks.join_next().await {
                told.push(result.unwrap());
            }
            told
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    instances.push(Instance::start(&broker, "race", &dirs.join("i2")));
    urls_all.push(instances[2].url.clone());
    std::thread::sleep(Duration::from_secs(2));
    instances[1].kill();
    let told = runtime.block_on(claims).unwrap();
    instances[1].restart();
    wait_settled(&instances[0].url, 3);

    for (s, sku) in skus.iter().enumerate() {
        let of_sku = || {
            told.iter()
                .filter(move |(t, _)| *t == s)
                .map(|(_, told)| *told)
        };
        let granted = of_sku().filter(|t| *t == Told::Granted).count();
        let unknown = of_sku().filter(|t| *t == Told::Unknown).count();
        assert!(
            granted <= UNITS,
            "{sku}: {granted} clients were told they got one of {UNITS} units"
        );
        assert!(granted + unknown >= UNITS, "{sku}: only {granted} granted and {unknown} unknown of {UNITS} units claimed {CLAIMS} times");
        for url in &urls_all {
            let (status, level) = get_settled(&format!("{url}/v1/stock/{sku}/WEB"));
            assert_eq!(status, 200, "{level}");
            assert_eq!(
                (
                    level["onHand"].as_i64(),
                    level["reserved"].as_i64(),
                    level["available"].as_i64()
                ),
                (Some(UNITS as i64), Some(UNITS as i64), Some(0)),
                "{sku} via {url}: every unit reserved, none twice"
            );
        }
    }
    // No level any instance ever published was oversold.
    for (key, payload, _) in broker.read_all("inventory.stock-levels") {
        let level: Value = serde_json::from_slice(&payload.unwrap()).unwrap();
        let (on_hand, reserved) = (
            level["onHand"].as_i64().unwrap(),
            level["reserved"].as_i64().unwrap(),
        );
        assert!(
            reserved <= on_hand,
            "{key:?} was published oversold: {level}"
        );
    }
}

/// POSTs `body` to `path` on the instances in turn until one gives a
/// definite answer (2xx or 4xx): a lost answer or a 5xx is retried with
/// the same body, which order ids make safe.
async fn definite(
    client: &reqwest::Client,
    urls: &[String],
    first: usize,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    for attempt in 0..300 {
        let url = &urls[(first + attempt) % urls.len()];
        let answer = client
            .post(format!("{url}{path}"))
            .json(body)
            .timeout(Duration::from_secs(40))
            .send()
            .await;
        if let Ok(r) = answer {
            let status = r.status().as_u16();
            if status < 500 {
                return (status, r.json().await.unwrap_or(Value::Null));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path}: no instance gave a definite answer");
}

fn order_status(order: &Value) -> &str {
    order["status"].as_str().unwrap_or("?")
}

#[test]
fn orders_across_partitions_never_oversell_survive_a_kill_and_expire() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let dirs = scratch("kafka-orders");
    let mut instances: Vec<Instance> = (0..2)
        .map(|i| Instance::start(&broker, "orders", &dirs.join(format!("i{i}"))))
        .collect();
    wait_settled(&instances[0].url, 2);
    let urls: Vec<String> = instances.iter().map(|i| i.url.clone()).collect();
    // Three SKUs in three different partitions, so every order is a saga
    // across partitions; ten units each.
    let mut skus: Vec<String> = Vec::new();
    for n in 0.. {
        let sku = format!("SAGA{n}");
        let p = stockflow_core::route(&sku, "WEB", 12);
        if skus
            .iter()
            .all(|s| stockflow_core::route(s, "WEB", 12) != p)
        {
            skus.push(sku);
        }
        if skus.len() == 4 {
            break;
        }
    }
    const UNITS: i64 = 10;
    const ORDERS: usize = 60;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    runtime.block_on(stock_web(&client, &urls[0], &skus, UNITS));
    let three = &skus[..3];

    // Six times as many 3-line all_or_nothing orders as units, from many
    // clients at once, while one instance is killed and restarted.
    let storm = {
        let (client, urls, three) = (client.clone(), urls.clone(), three.to_vec());
        runtime.spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..ORDERS {
                let (client, urls, three) = (client.clone(), urls.clone(), three.clone());
                tasks.spawn(async move {
                    tokio::time::sleep(Duration::from_millis((n * 60) as u64)).await;
                    let lines: Vec<Value> = three
                        .iter()
                        .map(|sku| serde_json::json!({"sku": sku, "locationId": "WEB", "quantity": 1}))
                        .collect();
                    let body = serde_json::json!({"orderId": format!("storm-{n}"), "lines": lines, "holdSeconds": 600});
                    let sent = Instant::now();
                    let (status, order) = definite(&client, &urls, n, "/v1/orders", &body).await;
                    assert_eq!(status, 200, "storm-{n}: {order}");
                    (order, sent.elapsed())
                });
            }
            let mut answers = Vec::new();
            while let Some(answer) = tasks.join_next().await {
                answers.push(answer.unwrap());
            }
            answers
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    instances[1].kill();
    std::thread::sleep(Duration::from_millis(1000));
    instances[1].restart();
    let (answers, mut took): (Vec<Value>, Vec<Duration>) =
        runtime.block_on(storm).unwrap().into_iter().unzip();
    took.sort();
    eprintln!(
        "saga orders through a kill: p50 {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    wait_settled(&instances[0].url, 2);

    let mut reserved_orders = Vec::new();
    for order in &answers {
        let lines = order["lines"].as_array().unwrap();
        match order_status(order) {
            "reserved" => {
                assert!(
                    lines.iter().all(|l| l["reserved"] == 1),
                    "half reserved: {order}"
                );
                reserved_orders.push(order["orderId"].as_str().unwrap().to_owned());
            }
            "rejected" => assert!(
                lines.iter().all(|l| l["reserved"] == 0),
                "rejected but holding: {order}"
            ),
            other => panic!("{other}: {order}"),
        }
    }
    let held = reserved_orders.len() as i64;
    assert!(held <= UNITS, "{held} orders hold one of {UNITS} units");
    assert!(held > 0, "no order got through");
    // Once the rejected orders' releases land, every level holds exactly
    // the reserved orders' units, on every instance.
    for sku in three {
        for url in &urls {
            wait_level(url, sku, (UNITS, held));
        }
    }
    // Every instance lists the same reserved orders; the orders topic's
    // last word on each order is what the API says.
    for url in &urls {
        let (status, list) = get_settled(&format!("{url}/v1/orders?status=reserved&limit=1000"));
        assert_eq!(status, 200, "{list}");
        let mut listed: Vec<String> = list["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["orderId"].as_str().unwrap().to_owned())
            .collect();
        listed.sort();
        let mut want = reserved_orders.clone();
        want.sort();
        assert_eq!(listed, want, "via {url}");
    }
    let topic = broker.latest("inventory.orders");
    for order in &answers {
        let id = order["orderId"].as_str().unwrap();
        assert_eq!(
            topic.get(id).map(order_status),
            Some(order_status(order)),
            "{id} on the topic"
        );
    }

    runtime.block_on(async {
        let (a, b) = (&reserved_orders[0], reserved_orders.get(1).cloned());
        // Cancel gives the units back; a second cancel is the same answer.
        let (status, order) = definite(&client, &urls, 0, &format!("/v1/orders/{a}/cancel"), &serde_json::json!({})).await;
        assert_eq!((status, order_status(&order)), (200, "cancelled"), "{order}");
        let (status, again) = definite(&client, &urls, 1, &format!("/v1/orders/{a}/cancel"), &serde_json::json!({})).await;
        assert_eq!((status, order_status(&again)), (200, "cancelled"), "{again}");
        let (status, refused) = definite(&client, &urls, 0, &format!("/v1/orders/{a}/fulfil"), &serde_json::json!({})).await;
        assert_eq!(status, 409, "fulfilling a cancelled order: {refused}");
        // Fulfil ships the units.
        if let Some(b) = b {
            let (status, order) = definite(&client, &urls, 1, &format!("/v1/orders/{b}/fulfil"), &serde_json::json!({})).await;
            assert_eq!((status, order_status(&order)), (200, "fulfilled"), "{order}");
        }
        // A different body under a used orderId is a conflict.
        let other = serde_json::json!({"orderId": a, "lines": [{"sku": three[0], "locationId": "WEB", "quantity": 2}]});
        let (status, _) = definite(&client, &urls, 0, "/v1/orders", &other).await;
        assert_eq!(status, 409);
        // A line without a location is sourced by the priority list: WEB
        // has none of SOURCED, so it is reserved at BACKUP.
        let stock = serde_json::json!({"eventId": "sourced-stock", "eventType": "RECEIPT", "sku": "SOURCED", "locationId": "BACKUP", "quantity": 5});
        let r = client.post(format!("{}/v1/events?wait=applied", urls[0])).json(&stock).send().await.unwrap();
        assert!(r.status().is_success());
        let sourced = serde_json::json!({"orderId": "sourced", "lines": [{"sku": "SOURCED", "quantity": 2}]});
        let (status, order) = definite(&client, &urls, 1, "/v1/orders", &sourced).await;
        assert_eq!((status, order_status(&order)), (200, "reserved"), "{order}");
        assert_eq!(order["lines"][0]["allocations"][0]["locationId"], "BACKUP", "{order}");
    });
    wait_for(
        &format!("{}/v1/stock/SOURCED/BACKUP", urls[0]),
        "the sourced line held at BACKUP",
        |l| l["reserved"] == 2,
    );
    // The answer is the home's decision; the levels follow within a cycle.
    let fulfilled = i64::from(reserved_orders.len() > 1);
    for sku in three {
        wait_level(&urls[1], sku, (UNITS - fulfilled, held - 1 - fulfilled));
    }

    // Holds expire on time without any other traffic; an extended one
    // does not.
    let hold_sku = &skus[3];
    runtime.block_on(async {
        for (id, first) in [("short-hold", 0), ("extended-hold", 1)] {
            let body = serde_json::json!({"orderId": id, "lines": [{"sku": hold_sku, "locationId": "WEB", "quantity": 2}], "holdSeconds": 1});
            let (status, order) = definite(&client, &urls, first, "/v1/orders", &body).await;
            assert_eq!((status, order_status(&order)), (200, "reserved"), "{order}");
        }
        let (status, order) = definite(&client, &urls, 0, "/v1/orders/extended-hold/extend", &serde_json::json!({"holdSeconds": 60})).await;
        assert_eq!((status, order_status(&order)), (200, "reserved"), "{order}");
    });
    let (_, short) = get_settled(&format!("{}/v1/orders/short-hold", urls[0]));
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(short["expiresAt"].as_str().unwrap()).unwrap();
    let expired_seen = loop {
        let (_, order) = get_settled(&format!("{}/v1/orders/short-hold", urls[1]));
        if order_status(&order) == "expired" {
            break chrono::Utc::now();
        }
        assert!(
            chrono::Utc::now() < expires_at + chrono::Duration::seconds(10),
            "never expired: {order}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let late = expired_seen
        .signed_duration_since(expires_at)
        .num_milliseconds();
    eprintln!("hold expired {late} ms after it ended (polled every 50 ms)");
    assert!(late <= 1_000, "expired {late} ms after its hold ended");
    let (_, extended) = get_settled(&format!("{}/v1/orders/extended-hold", urls[0]));
    assert_eq!(order_status(&extended), "reserved", "{extended}");
    // Only the extended hold holds.
    wait_level(&urls[0], hold_sku, (UNITS, 2));

    // An order made by an event, with a short hold of its own: the level's
    // owner reserves, the order's home learns of it and expires it,
    // releasing exactly its own units. A RELEASE naming an order that
    // holds nothing there is refused, and no other order's hold moves.
    runtime.block_on(async {
        let events = serde_json::json!([
            {"eventId": "ev-hold", "eventType": "RESERVATION", "sku": hold_sku, "locationId": "WEB", "quantity": 3, "correlationId": "web-ev", "holdSeconds": 3},
            {"eventId": "ev-stray", "eventType": "RELEASE", "sku": hold_sku, "locationId": "WEB", "quantity": 5, "correlationId": "nobody"},
        ]);
        let url = format!("{}/v1/events?wait=applied", urls[1]);
        let (status, receipt) = send_json(&client, reqwest::Method::POST, &url, &events).await;
        assert_eq!(status, 200, "{receipt}");
        let reason = format!("no_hold: order nobody holds nothing at {hold_sku}@WEB");
        assert_eq!(
            receipt["errors"],
            serde_json::json!([{"index": 1, "eventId": "ev-stray", "reason": reason}]),
            "{receipt}"
        );
    });
    wait_level(&urls[0], hold_sku, (UNITS, 5));
    let held = wait_for(
        &format!("{}/v1/orders/web-ev", urls[0]),
        "the event's order at its home",
        |o| o["status"] == "reserved" || o["status"] == "expired",
    );
    assert_eq!(held["lines"][0]["requested"], 3, "{held}");
    wait_for(
        &format!("{}/v1/orders/web-ev", urls[1]),
        "the event's order to expire",
        |o| o["status"] == "expired",
    );
    wait_level(&urls[0], hold_sku, (UNITS, 2));
    let (_, extended) = get_settled(&format!("{}/v1/orders/extended-hold", urls[1]));
    assert_eq!(order_status(&extended), "reserved", "{extended}");

    // The cluster's invariants, gathered by either instance: every live
    // order's units are reserved where they are held, and every SKU's
    // roll-up sums its levels (a cycle behind them at most).
    for url in &urls {
        let check = wait_for(&format!("{url}/v1/check"), "the invariants to hold", |c| {
            c["ok"] == true
        });
        assert_eq!(check["holdViolations"], 0, "{check}");
        assert!(check["liveOrders"].as_u64() >= Some(1), "{check}");
    }
    // As in the embedded mode, a write must say what it carries, and a
    // WebSocket from a page of another origin is refused: another site
    // cannot write through a visitor's browser.
    runtime.block_on(async {
        let form = client
            .post(format!("{}/v1/orders", urls[0]))
            .header("content-type", "text/plain")
            .body(r#"{"orderId":"csrf","lines":[{"sku":"X","locationId":"WEB","quantity":1}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(form.status().as_u16(), 415);
        let bare = client
            .post(format!("{}/v1/orders/extended-hold/cancel", urls[1]))
            .send()
            .await
            .unwrap();
        assert_eq!(bare.status().as_u16(), 415);
        assert_eq!(
            crate::hostile::websocket_status(&urls[0], "https://evil.example").await,
            403
        );
        assert_eq!(
            crate::hostile::websocket_status(&urls[1], &urls[1]).await,
            101
        );
        // Errors the framework answers come as the API's JSON, too.
        for path in ["/v1/stock/%FF%FE/WEB", "/v1/orders?limit=many"] {
            let response = client.get(format!("{}{path}", urls[1])).send().await.unwrap();
            assert_eq!(response.status().as_u16(), 400, "{path}");
            let error: serde_json::Value = response.json().await.unwrap();
            assert!(error["code"].is_string(), "{path}: {error}");
        }
        // Bodies in flight are bounded in bytes as in the embedded mode:
        // 16 bodies of the largest size, still being sent, take the whole
        // 256 MiB budget, and another write is refused until they go.
        let mut slow = Vec::new();
        let host = urls[0].trim_start_matches("http://").to_owned();
        for _ in 0..16 {
            use tokio::io::AsyncWriteExt;
            let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
            let head = "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16777216\r\n\r\n[";
            stream.write_all(head.as_bytes()).await.unwrap();
            slow.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let event = serde_json::json!({"eventId": "budget-1", "eventType": "RECEIPT", "sku": "BUDGET", "locationId": "WEB", "quantity": 1});
        let url = format!("{}/v1/events", urls[0]);
        let (status, error) = send_json(&client, reqwest::Method::POST, &url, &event).await;
        assert_eq!((status, &error["code"]), (429, &serde_json::json!("in_flight_full")), "{error}");
        drop(slow);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, receipt) = send_json(&client, reqwest::Method::POST, &url, &event).await;
        assert_eq!(status, 200, "{receipt}");
        // A head that never finishes is cut off at the read timeout (10 s).
        let half = b"POST /v1/orders HTTP/1.1\r\nHost: x\r\n";
        let (after, _) =
            crate::hostile::closed_after(&urls[0], half, Duration::from_secs(20)).await;
        assert!(after >= Duration::from_secs(9), "closed after {after:?}");
    });
    let (_, extended) = get_settled(&format!("{}/v1/orders/extended-hold", urls[0]));
    assert_eq!(order_status(&extended), "reserved", "{extended}");

    // A reservation that no order made is reserved but held by nobody:
    // the strict check names its level.
    runtime.block_on(async {
        let plain = serde_json::json!({"eventId": "plain-hold", "eventType": "RESERVATION", "sku": hold_sku, "locationId": "WEB", "quantity": 1});
        let (status, _) = send_json(&client, reqwest::Method::POST, &format!("{}/v1/events?wait=applied", urls[0]), &plain).await;
        assert_eq!(status, 200);
    });
    let strict = wait_for(
        &format!("{}/v1/check?strict=true", urls[1]),
        "the strict check to see the plain reservation",
        |c| c["ok"] == false,
    );
    let named = format!("{hold_sku}@WEB: reserved 3 but live orders hold 2");
    assert!(
        strict["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == named.as_str()),
        "{strict}"
    );
}

/// Waits (up to 30 s) until `sku` at WEB has (onHand, reserved) = `want`
/// as `url` answers: saga effects land a cycle after their decision.
fn wait_level(url: &str, sku: &str, want: (i64, i64)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, level) = get_settled(&format!("{url}/v1/stock/{sku}/WEB"));
        assert_eq!(status, 200, "{level}");
        let got = (
            level["onHand"].as_i64().unwrap(),
            level["reserved"].as_i64().unwrap(),
        );
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sku} via {url}: (onHand, reserved) = {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `body` with `method` to `url`, answering (status, JSON).
async fn send_json(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: &Value,
) -> (u16, Value) {
    let r = client.request(method, url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits (up to 30 s) until GET `url` answers 200 with what `ok` accepts.
fn wait_for(url: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get_settled(url);
        if status == 200 && ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {url} answered {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn active_low_stock(url: &str, sku: &str) -> Vec<String> {
    let (_, alerts) = get_settled(&format!(
        "{url}/v1/alerts?kind=LOW_STOCK&active=true&sku={sku}"
    ));
    let mut at: Vec<String> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["locationId"].as_str().unwrap().to_owned())
        .collect();
    at.sort();
    at
}

#[test]
fn the_catalog_reaches_every_instance_and_shapes_roll_ups_and_alerts() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let dirs = scratch("kafka-catalog");
    let mut instances: Vec<Instance> = (0..2)
        .map(|i| Instance::start(&broker, "catalog", &dirs.join(format!("i{i}"))))
        .collect();
    wait_settled(&instances[0].url, 2);
    let (a, b) = (instances[0].url.clone(), instances[1].url.clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    use reqwest::Method;
    runtime.block_on(async {
        // Written on one instance, read back at once on that one.
        let (status, north) = send_json(&client, Method::PUT, &format!("{a}/v1/locations/NORTH-1"), &serde_json::json!({"name": "North one", "type": "store", "region": "north"})).await;
        assert_eq!((status, north["region"].as_str()), (200, Some("north")), "{north}");
        let bulk = serde_json::json!([
            {"locationId": "SOUTH-1", "type": "store", "region": "south"},
            {"locationId": "BAD-1", "type": "spaceship"},
        ]);
        let (status, receipt) = send_json(&client, Method::POST, &format!("{b}/v1/locations"), &bulk).await;
        assert_eq!(status, 200, "{receipt}");
        assert_eq!((receipt["accepted"].as_u64(), receipt["rejected"].as_u64()), (Some(1), Some(1)), "{receipt}");
        let (status, product) = send_json(&client, Method::PUT, &format!("{b}/v1/products/CAT1"), &serde_json::json!({"name": "Widget", "price": 10.0, "lowStockThreshold": 50})).await;
        assert_eq!((status, product["lowStockThreshold"].as_i64()), (200, Some(50)), "{product}");
        let (status, refused) = send_json(&client, Method::PUT, &format!("{a}/v1/products/CAT2"), &serde_json::json!({"name": "Gadget", "price": "cheap"})).await;
        assert_eq!(status, 400, "{refused}");
        // Live: a client streaming CAT1 from the other instance sees the
        // levels and the alert the receipts make.
        let mut live = client
            .get(format!("{b}/v1/stream?sku=CAT1&kinds=stock,alerts"))
            .send()
            .await
            .unwrap();
        assert_eq!(live.status(), 200);
        let watching = tokio::spawn(async move {
            let mut seen = String::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !(seen.contains(r#""locationId":"SOUTH-1""#) && seen.contains("event: alerts") && seen.contains(r#""kind":"LOW_STOCK""#)) {
                match tokio::time::timeout_at(deadline, live.chunk()).await {
                    Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                    _ => panic!("the stream did not carry the changes: {seen}"),
                }
            }
            seen
        });
        let receipts = serde_json::json!([
            {"eventId": "c1", "eventType": "RECEIPT", "sku": "CAT1", "locationId": "NORTH-1", "quantity": 30},
            {"eventId": "c2", "eventType": "RECEIPT", "sku": "CAT1", "locationId": "SOUTH-1", "quantity": 100},
        ]);
        let (status, receipt) = send_json(&client, Method::POST, &format!("{a}/v1/events?wait=applied"), &receipts).await;
        assert_eq!(status, 200, "{receipt}");
        let seen = watching.await.unwrap();
        assert!(seen.contains("event: stock") && seen.contains(r#""onHand":30"#), "{seen}");
        // Each stock message names the event that made it, as in the embedded mode.
        assert!(seen.contains(r#""eventId":"c1""#) && seen.contains(r#""eventType":"RECEIPT""#), "{seen}");
    });
    assert!(
        broker
            .reasons("inventory.dlq")
            .keys()
            .any(|r| r.contains("type")),
        "the refused location is a dead letter"
    );
    // Both refusals can be read back over the API, by source and reason,
    // a page at a time.
    let (_, refused) = get_settled(&format!("{b}/v1/dead-letters?source=http:/v1/locations"));
    let letters = refused["deadLetters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{refused}");
    assert!(
        letters[0]["payload"]
            .as_str()
            .unwrap()
            .contains("spaceship"),
        "{refused}"
    );
    let (_, refused) = get_settled(&format!("{a}/v1/dead-letters?reason=PRICE"));
    assert_eq!(
        refused["deadLetters"][0]["source"], "http:/v1/products",
        "{refused}"
    );
    let (_, first) = get_settled(&format!("{a}/v1/dead-letters?limit=1"));
    let after = first["nextAfter"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let (_, second) = get_settled(&format!("{a}/v1/dead-letters?limit=1&after={after}"));
    assert_ne!(
        first["deadLetters"][0]["id"], second["deadLetters"][0]["id"],
        "{second}"
    );
    assert_eq!(
        second["deadLetters"].as_array().map(Vec::len),
        Some(1),
        "{second}"
    );

    // Every instance has the whole catalog, and the roll-ups by region.
    for url in [&a, &b] {
        let product = wait_for(
            &format!("{url}/v1/products/CAT1"),
            "product with stock",
            |p| p["stock"]["onHand"] == 130,
        );
        assert_eq!(product["name"], "Widget");
        let (_, north) = get_settled(&format!("{url}/v1/regions/north/stock/CAT1"));
        assert_eq!(
            (
                north["totals"]["onHand"].as_i64(),
                north["regionLocations"].as_u64()
            ),
            (Some(30), Some(1)),
            "{north}"
        );
        let (_, item) = get_settled(&format!("{url}/v1/items/CAT1"));
        assert_eq!(
            (
                item["byRegion"]["north"]["onHand"].as_i64(),
                item["byRegion"]["south"]["onHand"].as_i64()
            ),
            (Some(30), Some(100)),
            "{item}"
        );
        let (_, location) = get_settled(&format!("{url}/v1/locations/SOUTH-1"));
        assert_eq!(
            (
                location["region"].as_str(),
                location["totals"]["onHand"].as_i64()
            ),
            (Some("south"), Some(100)),
            "{location}"
        );
        let (_, list) = get_settled(&format!("{url}/v1/locations?region=north"));
        let listed: Vec<(Option<&str>, Option<i64>)> = list["locations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["locationId"].as_str(), l["totals"]["onHand"].as_i64()))
            .collect();
        assert_eq!(listed, [(Some("NORTH-1"), Some(30))], "{list}");
        let (_, list) = get_settled(&format!("{url}/v1/locations"));
        assert_eq!(
            list["locations"].as_array().map(Vec::len),
            Some(2),
            "{list}"
        );
        // The product's threshold (50) makes 30 units low, 100 not.
        assert_eq!(active_low_stock(url, "CAT1"), ["NORTH-1"], "via {url}");
        // The overview's activity is every member's, merged.
        let (_, activity) = get_settled(&format!("{url}/v1/activity?seconds=600"));
        let mut heard: Vec<&str> = activity["sources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["locationId"].as_str())
            .collect();
        heard.sort();
        assert_eq!(heard, ["NORTH-1", "SOUTH-1"], "{activity}");
        let accepted: u64 = activity["seconds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["accepted"].as_u64().unwrap())
            .sum();
        assert_eq!(accepted, 2, "{activity}");
    }

    // A new threshold reaches the partitions already loaded; a price cut
    // is a PRICE_DROP on every instance: listed, streamed by each, and on
    // the alerts topic once (told by the owner of the SKU's home).
    let streams: Vec<_> = runtime.block_on(async {
        let mut streams = Vec::new();
        for url in [&a, &b] {
            let live = client
                .get(format!("{url}/v1/stream?sku=CAT1&kinds=alerts"))
                .send()
                .await
                .unwrap();
            assert_eq!(live.status(), 200);
            streams.push(tokio::spawn(async move {
                let mut live = live;
                let mut seen = String::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while !seen.contains(r#""kind":"PRICE_DROP""#) {
                    match tokio::time::timeout_at(deadline, live.chunk()).await {
                        Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                        _ => panic!("the stream did not carry the price drop: {seen}"),
                    }
                }
                seen
            }));
        }
        streams
    });
    runtime.block_on(async {
        let (status, _) = send_json(
            &client,
            Method::PUT,
            &format!("{a}/v1/products/CAT1"),
            &serde_json::json!({"name": "Widget", "price": 8.0, "lowStockThreshold": 20}),
        )
        .await;
        assert_eq!(status, 200);
    });
    for url in [&a, &b] {
        wait_for(
            &format!("{url}/v1/alerts?kind=LOW_STOCK&active=true&sku=CAT1"),
            "LOW_STOCK cleared by the new threshold",
            |v| v["alerts"].as_array().is_some_and(Vec::is_empty),
        );
        let (_, drops) = get_settled(&format!("{url}/v1/alerts?kind=PRICE_DROP&sku=CAT1"));
        let drops = drops["alerts"].as_array().unwrap();
        assert_eq!(drops.len(), 1, "via {url}: {drops:?}");
        assert_eq!(drops[0]["dropPercent"].as_f64(), Some(20.0));
    }
    let (_, listed) = get_settled(&format!("{a}/v1/alerts?kind=PRICE_DROP&sku=CAT1"));
    let listed = &listed["alerts"][0];
    for stream in streams {
        let seen = runtime.block_on(stream).unwrap();
        let data = seen
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| serde_json::from_str::<serde_json::Value>(d.trim()).unwrap())
            .find(|v| v["kind"] == "PRICE_DROP")
            .unwrap();
        assert_eq!(&data, listed, "streamed as listed");
    }
    let told: Vec<serde_json::Value> = broker
        .read_all("inventory.alerts")
        .into_iter()
        .filter_map(|(_, payload, _)| serde_json::from_slice(&payload?).ok())
        .filter(|v: &serde_json::Value| v["kind"] == "PRICE_DROP")
        .collect();
    assert_eq!(
        told,
        std::slice::from_ref(listed),
        "one record on the alerts topic"
    );

    // A member that starts with nothing reads the catalog before it
    // restores its partitions.
    instances[1].kill();
    // It starts with a catalog file (`serve --catalog`, as in the
    // embedded mode): KartShoppe's shape, with initial stock.
    let file = dirs.join("products.json");
    let products = serde_json::json!([
        {"productId": "KS1", "name": "Kettle", "brand": "Steam", "price": 30.0, "inventory": 12},
        {"productId": "KS2", "name": "Toaster", "price": 25.0},
    ]);
    std::fs::write(&file, products.to_string()).unwrap();
    let catalog_args = [
        "--catalog",
        file.to_str().unwrap(),
        "--catalog-location",
        "WEB",
    ];
    let fresh_dir = dirs.join("fresh");
    instances.push(Instance::with_args(
        &broker,
        "catalog",
        &fresh_dir,
        "priority:WEB,BACKUP",
        &catalog_args,
    ));
    instances[1].restart();
    wait_settled(&instances[0].url, 3);
    let fresh = instances[2].url.clone();
    let (_, north) = get_settled(&format!("{fresh}/v1/regions/north/stock/CAT1"));
    assert_eq!(north["totals"]["onHand"].as_i64(), Some(30), "{north}");
    let (_, product) = get_settled(&format!("{fresh}/v1/products/CAT1"));
    assert_eq!(product["lowStockThreshold"].as_i64(), Some(20), "{product}");
    for url in [&fresh, &a] {
        let (_, kettle) = get_settled(&format!("{url}/v1/products/KS1"));
        assert_eq!(
            (
                kettle["name"].as_str(),
                kettle["attributes"]["brand"].as_str()
            ),
            (Some("Kettle"), Some("Steam")),
            "{kettle}"
        );
        let (_, level) = get_settled(&format!("{url}/v1/stock/KS1/WEB"));
        assert_eq!(level["onHand"].as_i64(), Some(12), "{level}");
    }
    // Starting again with the same file neither recounts nor rewrites.
    runtime.block_on(async {
        let sale = serde_json::json!({"eventId": "ks-sale", "eventType": "SALE", "sku": "KS1", "locationId": "WEB", "quantity": 5});
        let (status, _) = send_json(&client, Method::POST, &format!("{fresh}/v1/events?wait=applied"), &sale).await;
        assert_eq!(status, 200);
    });
    instances[2].stop();
    instances[2].restart();
    wait_settled(&instances[0].url, 3);
    let (_, level) = get_settled(&format!("{fresh}/v1/stock/KS1/WEB"));
    assert_eq!(level["onHand"].as_i64(), Some(7), "{level}");
    let (_, kettle) = get_settled(&format!("{fresh}/v1/products/KS1"));
    assert_eq!(
        kettle["priceHistory"].as_array().map(Vec::len),
        Some(1),
        "{kettle}"
    );
    runtime.block_on(async {
        // 30 − 15 = 15: low under the catalog's threshold (20), not under the default (10).
        let sale = serde_json::json!({"eventId": "c3", "eventType": "SALE", "sku": "CAT1", "locationId": "NORTH-1", "quantity": 15});
        let (status, _) = send_json(&client, Method::POST, &format!("{fresh}/v1/events?wait=applied"), &sale).await;
        assert_eq!(status, 200);
    });
    for instance in &instances {
        assert_eq!(
            active_low_stock(&instance.url, "CAT1"),
            ["NORTH-1"],
            "via {}",
            instance.url
        );
    }

    // A source's own format (CSV here) over HTTP: translated, produced,
    // applied by the owners; a bad row named by its field and kept.
    let csv = "eventId,sku,locationId,eventType,quantity\ncsv-1,CAT1,SOUTH-1,SALE,100\ncsv-2,CAT1,SOUTH-1,SALE,1.5\n";
    let post_csv = || {
        runtime.block_on(async {
            let response = client
                .post(format!("{fresh}/v1/sources/csv/events?wait=applied"))
                .header("content-type", "text/csv")
                .body(csv)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        })
    };
    let (status, receipt) = post_csv();
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(
        (receipt["accepted"].as_u64(), receipt["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{receipt}"
    );
    assert_eq!(
        receipt["errors"][0]["reason"], r#"quantity: "1.5" is not a whole number"#,
        "{receipt}"
    );
    let (_, again) = post_csv();
    assert_eq!(again["duplicates"].as_u64(), Some(1), "{again}");
    let (_, letters) = get_settled(&format!("{a}/v1/dead-letters?source=source:csv"));
    // Named as the embedded mode names it.
    assert_eq!(
        letters["deadLetters"][0]["source"], "source:csv",
        "{letters}"
    );
    assert_eq!(
        letters["deadLetters"][0]["payload"], "csv-2,CAT1,SOUTH-1,SALE,1.5",
        "{letters}"
    );
    let (_, formats) = get_settled(&format!("{a}/v1/sources"));
    assert!(
        formats["formats"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["format"] == "csv"),
        "{formats}"
    );
    // Levels by how their stock stands, gathered from every member.
    let listed = |url: &str, location: &str, status: &str| -> Vec<String> {
        let (code, page) = get_settled(&format!(
            "{url}/v1/locations/{location}/stock?status={status}"
        ));
        assert_eq!(code, 200, "{page}");
        page["levels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["sku"].as_str().unwrap().to_owned())
            .collect()
    };
    for instance in &instances {
        let url = &instance.url;
        assert_eq!(listed(url, "SOUTH-1", "out"), ["CAT1"], "via {url}");
        assert!(listed(url, "SOUTH-1", "ok").is_empty(), "via {url}");
        assert_eq!(listed(url, "NORTH-1", "low"), ["CAT1"], "via {url}");
        assert!(listed(url, "NORTH-1", "out").is_empty(), "via {url}");
    }
    let (code, refused) = get_settled(&format!("{a}/v1/locations/SOUTH-1/stock?status=empty"));
    assert_eq!(code, 400, "{refused}");

    // Dead letters are resolved through the API: the bad CSV row replayed
    // corrected (through its own format), the bad location discarded;
    // neither is listed again, by any instance.
    let letter_id = |url: &str, source: &str| -> Option<i64> {
        let (_, page) = get_settled(&format!("{url}/v1/dead-letters?source={source}"));
        page["deadLetters"][0]["id"].as_i64()
    };
    let row = letter_id(&a, "source:csv").expect("the CSV letter");
    let location = letter_id(&a, "http:/v1/locations").expect("the location letter");
    let call = |method: reqwest::Method, url: String, body: &'static str| {
        runtime.block_on(async {
            let response = client
                .request(method, url)
                .header("content-type", "text/csv")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    let corrected = "eventId,sku,locationId,eventType,quantity\ncsv-2,CAT1,SOUTH-1,RECEIPT,2\n";
    let (status, replayed) = call(
        Method::POST,
        format!("{b}/v1/dead-letters/{row}/replay"),
        corrected,
    );
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(
        (
            replayed["resolved"].as_bool(),
            replayed["receipt"]["accepted"].as_u64()
        ),
        (Some(true), Some(1)),
        "{replayed}"
    );
    wait_for(
        &format!("{a}/v1/stock/CAT1/SOUTH-1"),
        "the replayed receipt",
        |l| l["onHand"] == 2,
    );
    // (The row was sent twice, so a second letter holds it.)
    let (_, page) = get_settled(&format!("{b}/v1/dead-letters?source=source:csv"));
    let ids: Vec<i64> = page["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["id"].as_i64())
        .collect();
    assert!(
        !ids.contains(&row) && ids.len() == 1,
        "resolved where replayed: {page}"
    );
    let (status, again) = call(
        Method::POST,
        format!("{a}/v1/dead-letters/{row}/replay"),
        "",
    );
    assert_eq!(
        status, 404,
        "a resolved letter is not replayed twice: {again}"
    );
    // Replayed as it was, the location is still invalid (as in the
    // embedded mode): refused, and the letter stays.
    let (status, refused) = call(
        Method::POST,
        format!("{a}/v1/dead-letters/{location}/replay"),
        "",
    );
    assert_eq!(
        (status, refused["code"].as_str()),
        (422, Some("still_invalid")),
        "{refused}"
    );
    let (status, _) = call(
        Method::DELETE,
        format!("{a}/v1/dead-letters/{location}"),
        "",
    );
    assert_eq!(status, 204);
    let (status, _) = call(
        Method::DELETE,
        format!("{a}/v1/dead-letters/{location}"),
        "",
    );
    assert_eq!(status, 404, "discarded once");
    for instance in &instances {
        wait_for(
            &format!("{}/v1/dead-letters?source=http:/v1/", instance.url),
            "the resolved letters to leave every instance's list",
            |page| {
                page["deadLetters"]
                    .as_array()
                    .is_some_and(|l| l.iter().all(|l| l["id"] != row && l["id"] != location))
            },
        );
    }
}

#[test]
fn an_instance_refuses_to_start_without_its_topics_and_says_what_to_run() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    let dir = scratch("kafka-no-topics");
    let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args([
            "serve",
            "--kafka",
            &broker.bootstrap,
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!output.status.success(), "started without its topics");
    let said = String::from_utf8_lossy(&output.stderr);
    // A broker that creates topics when asked about them makes them with
    // its default partition count: refused as well, saying why.
    assert!(
        said.contains("stockflow topics create") || said.contains("partitions, stockflow expects"),
        "{said}"
    );

    // Under another prefix (a second deployment, or a new version beside
    // an old one): its own topics, made and used by that name.
    let created = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["topics", "create", "--kafka", &broker.bootstrap])
        .args(["--topic-prefix", "shop2"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&created.stdout);
    assert!(created.status.success(), "{listed}");
    assert!(listed.contains("shop2.events.canonical"), "{listed}");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args([
            "serve",
            "--kafka",
            &broker.bootstrap,
            "--topic-prefix",
            "shop2",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.join("shop2"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_settled(&url, 1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let event = serde_json::json!({"eventId": "p1", "eventType": "RECEIPT", "sku": "P", "locationId": "L", "quantity": 3});
    let (status, receipt) = runtime.block_on(send_json(
        &reqwest::Client::new(),
        reqwest::Method::POST,
        &format!("{url}/v1/events?wait=applied"),
        &event,
    ));
    assert_eq!(status, 200, "{receipt}");
    let (_, level) = get_settled(&format!("{url}/v1/stock/P/L"));
    assert_eq!(level["onHand"], 3, "{level}");
    assert_eq!(broker.read_all("shop2.events.canonical").len(), 1);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_python_confluent_kafka_client_produces_raw_events_and_reads_stock_levels() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let dirs = scratch("kafka-python");
    let instance = Instance::start(&broker, "python", &dirs.join("i0"));
    wait_settled(&instance.url, 1);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/external_client.py");
    let output = Command::new("python3")
        .arg(&script)
        .args([&broker.bootstrap, "run1"])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the Python client failed (confluent-kafka missing? .ci/install installs it):\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    // What the Python consumer read from stock-levels is what the API says,
    // and what the events add up to (the redelivered sale counted once).
    for (key, want) in [("PY-1:S1", (35, 5, 30)), ("PY-2:S2", (4, 0, 4))] {
        let (sku, location) = key.split_once(':').unwrap();
        let (status, api) = get_settled(&format!("{}/v1/stock/{sku}/{location}", instance.url));
        assert_eq!(status, 200, "{api}");
        let read = &report["levels"][key];
        for level in [read, &api] {
            assert_eq!(
                (
                    level["onHand"].as_i64(),
                    level["reserved"].as_i64(),
                    level["available"].as_i64()
                ),
                (Some(want.0), Some(want.1), Some(want.2)),
                "{key}: {level}"
            );
        }
    }
    // The sale with a positive delta: in the DLQ, raw, with its reason.
    let dlq = report["dlq"].as_array().unwrap();
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert!(
        dlq[0]["reason"]
            .as_str()
            .unwrap()
            .contains("quantityDelta: a SALE must have a negative quantityDelta"),
        "{}",
        dlq[0]
    );
    assert!(
        dlq[0]["payload"]
            .as_str()
            .unwrap()
            .contains(r#""quantityDelta": 4"#),
        "{}",
        dlq[0]
    );
}

/// The transactional path (`--kafka-transactions`), on librdkafka's own
/// mock cluster: tansu has no transactions, and a full Apache Kafka is not
/// installable here. A cycle's outputs, changelog records and offsets
/// commit together; a new owner restores from a changelog full of commit
/// markers and resumes exactly after the last effect.
#[test]
fn with_transactions_cycles_commit_whole_and_a_new_owner_resumes_exactly() {
    let _heavy = crate::heavy();
    use rdkafka::mocking::MockCluster;
    use stockflow::kafka::{KafkaServer, KafkaSettings};

    let mock = MockCluster::new(1).unwrap();
    let mut settings = KafkaSettings::new(mock.bootstrap_servers());
    settings.group = "tx".into();
    settings.partitions = 4;
    settings.transactions = true;
    // The mock group waits a session timeout (less a second) for members
    // after one leaves: keep the restart below short.
    settings
        .extra
        .push(("session.timeout.ms".into(), "6000".into()));
    let sources = stockflow::sources::Sources::default();
    for spec in stockflow::kafka::topics::specs(&settings, sources.names()) {
        mock.create_topic(&spec.name, spec.partitions, 1).unwrap();
    }
    // Two levels in different partitions, so the transfer's in-transit
    // effect crosses the repartition topic (written in transactions too).
    let (from, to) = (0..100)
        .map(|n| format!("S{n}"))
        .find_map(|s| {
            let a = stockflow_core::route("TX", "S0", 4);
            (stockflow_core::route("TX", &s, 4) != a).then(|| ("S0".to_owned(), s))
        })
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let start = |dir: PathBuf| {
            let settings = settings.clone();
            async move {
                let config = stockflow::config::Config::new(dir);
                KafkaServer::start(settings, config, "127.0.0.1:0".parse().unwrap(), None)
                    .await
                    .unwrap()
            }
        };
        let level = |url: String, location: String| {
            let client = client.clone();
            async move {
                let r = client.get(format!("{url}/v1/stock/TX/{location}")).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let settled = |url: String| {
            let client = client.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let c: Value = client.get(format!("{url}/v1/cluster")).send().await.unwrap().json().await.unwrap();
                    if c["partitions"].as_array().is_some_and(|ps| ps.iter().all(|p| p["status"] == "active")) {
                        return;
                    }
                    assert!(Instant::now() < deadline, "the partitions never became active: {c}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let post = |url: String, body: String| {
            let client = client.clone();
            async move {
                let r = client
                    .post(format!("{url}/v1/events?wait=applied"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{:?}", r.text().await);
                r.json::<Value>().await.unwrap()
            }
        };

        let first_dir = tempfile::tempdir().unwrap();
        let first = start(first_dir.path().to_owned()).await;
        settled(first.url()).await;
        let receipt = post(
            first.url(),
            format!(
                r#"[{{"eventId":"t1","eventType":"RECEIPT","sku":"TX","locationId":"{from}","quantity":10}},
                    {{"eventId":"t2","eventType":"SALE","sku":"TX","locationId":"{from}","quantity":3}},
                    {{"eventId":"t3","eventType":"RESERVATION","sku":"TX","locationId":"{from}","quantity":20}},
                    {{"eventId":"t2","eventType":"SALE","sku":"TX","locationId":"{from}","quantity":3}},
                    {{"eventId":"t4","eventType":"TRANSFER_OUT","sku":"TX","locationId":"{from}","quantity":2,"toLocationId":"{to}"}}]"#
            ),
        )
        .await;
        assert_eq!((receipt["accepted"].as_u64(), receipt["duplicates"].as_u64()), (Some(4), Some(1)), "{receipt}");
        assert_eq!(receipt["errors"][0]["reason"], "insufficient_stock", "{receipt}");
        let (_, a) = level(first.url(), from.clone()).await;
        assert_eq!((a["onHand"].as_i64(), a["reserved"].as_i64()), (Some(5), Some(0)), "{a}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, b) = level(first.url(), to.clone()).await;
            if status == 200 && b["inTransit"] == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "the in-transit effect never reached {to}: {b}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first.stop().await.unwrap();

        // What committed transactions hold, read as read_committed readers
        // (librdkafka's default) do: the changelog record of the cycle, at
        // the position after the 5 records, and the level it published.
        // (The mock's TxnOffsetCommit accepts offsets without storing them,
        // so the group offsets cannot be checked here; stockflow does not
        // need them: positions live in the changelog.)
        let p = stockflow_core::route("TX", &from, 4) as i32;
        let last = |topic: String, partition: i32| {
            let bootstrap = mock.bootstrap_servers();
            async move {
                tokio::task::spawn_blocking(move || {
                    let consumer: BaseConsumer = ClientConfig::new()
                        .set("bootstrap.servers", &bootstrap)
                        .set("group.id", "tx-check")
                        .set("isolation.level", "read_committed")
                        .set("enable.partition.eof", "true")
                        .create()
                        .unwrap();
                    let mut list = TopicPartitionList::new();
                    list.add_partition_offset(&topic, partition, Offset::Beginning).unwrap();
                    consumer.assign(&list).unwrap();
                    let mut last = None;
                    loop {
                        match consumer.poll(Duration::from_secs(10)) {
                            Some(Ok(m)) => last = Some((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec))),
                            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return last,
                            other => panic!("reading {topic}: {other:?}"),
                        }
                    }
                })
                .await
                .unwrap()
            }
        };
        let (key, _) = last(settings.topics.changelog.clone(), p).await.expect("a committed changelog record");
        assert_eq!(String::from_utf8(key.unwrap()).unwrap(), "5:0", "the cycle's record ends after the 5 canonical records");
        let (_, published) = last(settings.topics.stock_levels.clone(), p).await.expect("a committed level");
        let published: Value = serde_json::from_slice(&published.unwrap()).unwrap();
        assert_eq!(published["onHand"].as_i64(), Some(5), "{published}");

        // A new owner with nothing local restores from the changelog alone
        // and resumes after the last effect: the next sale counts once and
        // nothing before it counts twice.
        let second_dir = tempfile::tempdir().unwrap();
        let second = start(second_dir.path().to_owned()).await;
        settled(second.url()).await;
        let (_, a) = level(second.url(), from.clone()).await;
        assert_eq!((a["onHand"].as_i64(), a["reserved"].as_i64()), (Some(5), Some(0)), "restored: {a}");
        let (_, b) = level(second.url(), to.clone()).await;
        assert_eq!(b["inTransit"].as_i64(), Some(2), "restored: {b}");
        let receipt = post(
            second.url(),
            format!(
                r#"[{{"eventId":"t5","eventType":"SALE","sku":"TX","locationId":"{from}","quantity":1}},
                    {{"eventId":"t1","eventType":"RECEIPT","sku":"TX","locationId":"{from}","quantity":10}}]"#
            ),
        )
        .await;
        assert_eq!((receipt["accepted"].as_u64(), receipt["duplicates"].as_u64()), (Some(1), Some(1)), "{receipt}");
        let (_, a) = level(second.url(), from.clone()).await;
        assert_eq!(a["onHand"].as_i64(), Some(4), "{a}");
        second.stop().await.unwrap();
    });
}

/// The web UI on a Kafka-mode instance, in a real browser: the Playwright
/// tests in `tests/e2e/kafka.test.mjs` seed a catalog and stock through
/// the API, then read the overview, an item and the storefront, and check
/// out. Screenshots land in target/tmp/ui-screenshots.
#[test]
fn the_web_ui_works_against_a_kafka_cluster() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let dirs = scratch("kafka-ui");
    let instance = Instance::start(&broker, "ui", &dirs.join("a"));
    wait_settled(&instance.url, 1);
    crate::ui::run_browser_tests("kafka.test.mjs", &instance.url);
}

/// With most-available sourcing (the default), a line without a location
/// goes where the SKU's roll-up says the most is available; a line no
/// location can fill is refused by the owner of the most.
#[test]
fn a_line_without_a_location_is_reserved_where_the_most_is_available() {
    use reqwest::Method;
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let dirs = scratch("kafka-most-available");
    let instances: Vec<Instance> = (0..2)
        .map(|i| {
            Instance::sourcing(
                &broker,
                "most",
                &dirs.join(format!("i{i}")),
                "most-available",
            )
        })
        .collect();
    wait_settled(&instances[0].url, 2);
    let (a, b) = (instances[0].url.clone(), instances[1].url.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    runtime.block_on(async {
        let stock: Vec<Value> = [("MA-A", 5), ("MA-B", 12), ("MA-C", 8)]
            .iter()
            .map(|(location, q)| serde_json::json!({"eventId": format!("ma-{location}"), "eventType": "RECEIPT", "sku": "MA1", "locationId": location, "quantity": q}))
            .collect();
        let (status, _) = send_json(&client, Method::POST, &format!("{a}/v1/events?wait=applied"), &Value::from(stock)).await;
        assert_eq!(status, 200);
    });
    // The roll-up at the SKU's home has every location.
    wait_for(&format!("{b}/v1/items/MA1"), "the roll-up of MA1", |item| {
        item["totals"]["onHand"] == 25 && item["totals"]["levels"] == 3
    });
    let place = |url: &str, id: &str, quantity: i64| {
        let body =
            serde_json::json!({"orderId": id, "lines": [{"sku": "MA1", "quantity": quantity}]});
        runtime.block_on(send_json(
            &client,
            Method::POST,
            &format!("{url}/v1/orders"),
            &body,
        ))
    };
    let (status, first) = place(&a, "ma-1", 10);
    assert_eq!(
        (status, first["status"].as_str()),
        (200, Some("reserved")),
        "{first}"
    );
    assert_eq!(
        first["lines"][0]["allocations"][0]["locationId"], "MA-B",
        "{first}"
    );
    // B has 2 left; the roll-up may not know yet, and then B refuses and
    // the next most available fills it.
    let (status, second) = place(&b, "ma-2", 6);
    assert_eq!(
        (status, second["status"].as_str()),
        (200, Some("reserved")),
        "{second}"
    );
    assert_eq!(
        second["lines"][0]["allocations"][0]["locationId"], "MA-C",
        "{second}"
    );
    for (location, reserved) in [("MA-B", 10), ("MA-C", 6)] {
        wait_for(
            &format!("{a}/v1/stock/MA1/{location}"),
            "the reservation",
            |level| level["reserved"] == reserved,
        );
    }
    // 5, 2 and 2 left: 9 fit nowhere, and the order says why.
    wait_for(
        &format!("{a}/v1/items/MA1"),
        "the roll-up after two orders",
        |item| item["totals"]["reserved"] == 16,
    );
    let (status, third) = place(&a, "ma-3", 9);
    assert_eq!(
        (status, third["status"].as_str()),
        (200, Some("rejected")),
        "{third}"
    );
    assert!(third.to_string().contains("insufficient_stock"), "{third}");
    // A SKU held nowhere cannot be sourced at all.
    let body =
        serde_json::json!({"orderId": "ma-5", "lines": [{"sku": "MA-NOWHERE", "quantity": 1}]});
    let (status, refused) = runtime.block_on(send_json(
        &client,
        Method::POST,
        &format!("{a}/v1/orders"),
        &body,
    ));
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("insufficient_stock")),
        "{refused}"
    );
}

/// Defect 8 in Kafka mode: the events are durable in the brokers, so a
/// full local disk (where an instance keeps snapshots and history) does not
/// refuse writes: they are taken and applied, and the instance logs its
/// local failures and keeps answering. (A restart on the full disk does
/// not settle yet: see the issue's note.)
#[test]
fn a_full_local_disk_neither_stops_an_instance_nor_its_writes() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let disk = crate::hostile::SmallDisk::mount(64 << 20);
    let instance = Instance::start(&broker, "full-disk", &disk.path().join("a"));
    wait_settled(&instance.url, 1);
    // Another program fills the disk to its last byte.
    let mut filler = std::fs::File::create(disk.path().join("filler")).unwrap();
    let chunk = vec![1u8; 1 << 20];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    let _ = std::io::Write::write_all(&mut filler, &[1u8; 4096]);
    assert!(disk.free() < 1 << 20, "{} bytes free", disk.free());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let send = |n: usize| {
        let events: Vec<Value> = (0..500)
            .map(|i| serde_json::json!({"eventId": format!("full-{n}-{i}"), "eventType": "RECEIPT", "sku": "FULL", "locationId": "WEB", "quantity": 1}))
            .collect();
        let url = format!("{}/v1/events?wait=applied", instance.url);
        runtime.block_on(send_json(
            &client,
            reqwest::Method::POST,
            &url,
            &Value::from(events),
        ))
    };
    for n in 0..4 {
        let (status, receipt) = send(n);
        assert_eq!(
            (status, &receipt["accepted"]),
            (200, &serde_json::json!(500)),
            "{receipt}"
        );
    }
    wait_level(&instance.url, "FULL", (2000, 0));
    assert_eq!(
        http::blocking_get(&format!("{}/healthz", instance.url)).map(|r| r.0),
        Some(200)
    );

    drop(filler);
}

/// `--webhook` in Kafka mode: every member is started with it, and each
/// alert of the cluster reaches the receiver once (the members share a
/// consumer group on the alerts topic), price drops included.
#[test]
fn each_alert_reaches_a_webhook_once_from_the_whole_cluster() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (hook_url, hook) = runtime.block_on(crate::webhooks::receiver(0));
    let dirs = scratch("kafka-webhooks");
    let args = ["--webhook", hook_url.as_str()];
    let instances: Vec<Instance> = (0..2)
        .map(|i| {
            let dir = dirs.join(format!("i{i}"));
            Instance::with_args(&broker, "hooks", &dir, "priority:WEB,BACKUP", &args)
        })
        .collect();
    wait_settled(&instances[0].url, 2);
    let (a, b) = (instances[0].url.clone(), instances[1].url.clone());
    let client = reqwest::Client::new();
    let low = |sku: String| serde_json::json!({"eventId": format!("low-{sku}"), "eventType": "RECEIPT", "sku": sku, "locationId": "S1", "quantity": 3});
    let posted_skus = || -> Vec<String> {
        hook.accepted
            .lock()
            .iter()
            .map(|(body, _)| {
                serde_json::from_str::<Value>(body).unwrap()["sku"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    // A group new to a URL starts at the topic's end once it has its
    // partitions: alerts until the first one arrives show it is reading.
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        let event = low(format!("WARM{n}"));
        runtime.block_on(send_json(
            &client,
            reqwest::Method::POST,
            &format!("{a}/v1/events?wait=applied"),
            &event,
        ));
        std::thread::sleep(Duration::from_millis(500));
        if !posted_skus().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the webhook never got an alert");
    }

    // 24 levels made low through both members, and a price cut: 25 alerts
    // spread over the partitions, so over both members' webhook readers.
    let skus: Vec<String> = (0..24).map(|n| format!("HOOK{n}")).collect();
    runtime.block_on(async {
        for (n, sku) in skus.iter().enumerate() {
            let via = if n % 2 == 0 { &a } else { &b };
            let (status, _) = send_json(
                &client,
                reqwest::Method::POST,
                &format!("{via}/v1/events?wait=applied"),
                &low(sku.clone()),
            )
            .await;
            assert_eq!(status, 200);
        }
        for price in [10.0, 5.0] {
            let product = serde_json::json!({"name": "Hooked", "price": price});
            let (status, _) = send_json(
                &client,
                reqwest::Method::PUT,
                &format!("{b}/v1/products/HOOKP"),
                &product,
            )
            .await;
            assert_eq!(status, 200);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let wanted = skus.len() + 1;
    let ours = || -> Vec<Value> {
        hook.accepted
            .lock()
            .iter()
            .map(|(body, _)| serde_json::from_str::<Value>(body).unwrap())
            .filter(|alert| alert["sku"].as_str().is_some_and(|s| s.starts_with("HOOK")))
            .collect()
    };
    while ours().len() < wanted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same alerts as the alerts topic holds.
    let mut told: Vec<Value> = broker
        .read_all("inventory.alerts")
        .into_iter()
        .filter_map(|(_, payload, _)| serde_json::from_slice::<Value>(&payload?).ok())
        .filter(|alert| alert["sku"].as_str().is_some_and(|s| s.starts_with("HOOK")))
        .collect();
    // Nothing more comes: each was sent once, by one member.
    std::thread::sleep(Duration::from_secs(3));
    let posted = ours();
    let names = |alerts: &[Value]| -> Vec<String> {
        alerts
            .iter()
            .map(|a| format!("{} {} {}", a["kind"], a["sku"], a["id"]))
            .collect()
    };
    assert_eq!(
        posted.len(),
        told.len(),
        "posted {:?}\ntold {:?}",
        names(&posted),
        names(&told)
    );
    let mut ids: Vec<&str> = posted.iter().map(|a| a["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((posted.len(), ids.len()), (wanted, wanted), "{posted:?}");
    let kinds: std::collections::BTreeMap<&str, usize> =
        posted.iter().fold(Default::default(), |mut kinds, a| {
            *kinds.entry(a["kind"].as_str().unwrap()).or_default() += 1;
            kinds
        });
    assert_eq!(
        kinds,
        [("LOW_STOCK", 24), ("PRICE_DROP", 1)].into_iter().collect(),
        "{posted:?}"
    );
    let mut posted = posted;
    let by_id = |x: &Value, y: &Value| x["id"].as_str().cmp(&y["id"].as_str());
    told.sort_by(by_id);
    posted.sort_by(by_id);
    assert_eq!(posted, told);

    // kill -9 a member: the other takes over its partitions, and its
    // webhook reader the rest of its alerts (at least once: one it sent
    // but had not committed may come again).
    let mut instances = instances;
    instances[1].kill();
    let more: Vec<String> = (0..12).map(|n| format!("HOOKK{n}")).collect();
    runtime.block_on(async {
        for sku in &more {
            let (status, _) = send_json(
                &client,
                reqwest::Method::POST,
                &format!("{a}/v1/events"),
                &low(sku.clone()),
            )
            .await;
            assert_eq!(status, 200);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let missing = || -> Vec<String> {
        let posted: std::collections::BTreeSet<String> = ours()
            .iter()
            .map(|a| a["sku"].as_str().unwrap().to_owned())
            .collect();
        more.iter()
            .filter(|s| !posted.contains(*s))
            .cloned()
            .collect()
    };
    while !missing().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let told: Vec<String> = broker
        .read_all("inventory.alerts")
        .into_iter()
        .filter_map(|(_, payload, _)| serde_json::from_slice::<Value>(&payload?).ok())
        .filter(|alert| {
            alert["sku"]
                .as_str()
                .is_some_and(|s| s.starts_with("HOOKK"))
        })
        .map(|alert| format!("{} {}", alert["sku"], alert["id"]))
        .collect();
    assert!(
        missing().is_empty(),
        "never posted after the kill: {:?}; the topic has {told:?}",
        missing()
    );
}
