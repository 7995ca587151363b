//! RabbitMQ ingest against the broker running on the machine, fed by a
//! client no one here wrote (Python's pika): the IBM store simulator's
//! messages on one queue, canonical events on another, with poison among
//! them; the server is killed (-9) mid-stream and started again, and
//! every message must count exactly once.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::crash::serve;
use crate::{free_port, get};

/// GET `path` as text: (status, body).
pub async fn get_text(url: &str, path: &str) -> (u16, String) {
    let answer = reqwest::get(format!("{url}{path}"))
        .await
        .expect("server reachable");
    (answer.status().as_u16(), answer.text().await.unwrap())
}

pub const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Runs the pika client with `args`: its stdout.
pub fn client(args: &[&str], input: Option<&str>) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/amqp/client.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(BROKER)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the pika client failed ({args:?}; pika missing? .ci/install installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Messages ready in `queue` (not counting those delivered and not yet
/// acknowledged).
pub fn depth(queue: &str) -> u64 {
    let answer: Value = serde_json::from_str(&client(&["depth", queue], None)).unwrap();
    answer["messages"].as_u64().unwrap()
}

/// Deletes the test's queues however the test ends.
struct Queues(Vec<String>);

impl Drop for Queues {
    fn drop(&mut self) {
        for queue in &self.0 {
            let _ = std::panic::catch_unwind(|| client(&["delete", queue], None));
        }
    }
}

/// What the messages add up to, by (sku, location): onHand and the
/// number of distinct events.
type Model = BTreeMap<(String, String), (i64, usize)>;

/// The store simulator's messages: per level a restock of 2,000, then
/// 399 sales of 1 to 5 (never below zero, whatever the order of
/// redelivery): 16,000 messages.
fn store_messages(queue: &str, model: &mut Model) -> Vec<Value> {
    let mut messages = Vec::new();
    for round in 0..400 {
        for store in 0..4 {
            for sku in 0..10 {
                let (store_name, sku_name) = (format!("Store-{store}"), format!("AMQ-{sku}"));
                let (kind, quantity) = match round {
                    0 => ("RESTOCK", 2000),
                    _ => ("SALE", 1 + (round + store + sku) % 5),
                };
                let entry = model
                    .entry((sku_name.clone(), store_name.clone()))
                    .or_default();
                entry.0 += if kind == "SALE" { -quantity } else { quantity };
                entry.1 += 1;
                let body = json!({"id": round * 100 + store * 10 + sku, "storeName": store_name,
                    "sku": sku_name, "type": kind, "quantity": quantity, "price": 9.99,
                    "timestamp": format!("2026-12-01T10:{:02}:{:02}", round / 60, round % 60)});
                messages.push(json!({"queue": queue, "body": body.to_string()}));
            }
        }
    }
    messages
}

/// Canonical events, some sent twice (the same eventId: counted once).
fn canonical_messages(queue: &str, model: &mut Model) -> Vec<Value> {
    let mut messages = Vec::new();
    for n in 0..1200 {
        let (sku, location) = (format!("CAN-{}", n % 20), "DC-1".to_owned());
        let quantity = 1 + n % 7;
        let event = json!({"eventId": format!("can-{n}"), "eventType": "RECEIPT",
            "sku": sku, "locationId": location, "quantity": quantity});
        let entry = model.entry((sku, location)).or_default();
        entry.0 += quantity;
        entry.1 += 1;
        messages.push(json!({"queue": queue, "body": event.to_string()}));
        if n % 50 == 7 {
            messages.push(json!({"queue": queue, "body": event.to_string()}));
        }
    }
    messages
}

/// The messages of a run: the store simulator's on one queue (which
/// exists, full, before the server starts), canonical events on another
/// (which the server declares, published while it runs), with poison in
/// both.
pub struct Scenario {
    pub stores: String,
    pub canonical: String,
    model: Model,
    /// (queue, the source its letters name, the raw message).
    poison: Vec<(String, String, String)>,
    /// The store simulator's messages, published before the server
    /// starts: a backlog it works through, so a kill finds it busy.
    backlog: String,
    /// The canonical events, published while it runs.
    stream: String,
    pub total: u64,
    _queues: Queues,
}

impl Scenario {
    pub fn publish_new() -> Scenario {
        let tag: u32 = rand::random();
        let stores = format!("stockflow-test-{tag}.stores");
        let canonical = format!("stockflow-test-{tag}.canonical");
        let queues = Queues(vec![stores.clone(), canonical.clone()]);
        client(&["declare", &stores], None);
        let mut model = Model::new();
        let mut messages = store_messages(&stores, &mut model);
        let mut events = canonical_messages(&canonical, &mut model);
        // Poison: not JSON, an unknown type, a quantity that is no number.
        let bad_type = json!({"id": 1, "storeName": "Store-0", "sku": "AMQ-0", "type": "THEFT",
            "quantity": 1, "timestamp": "2026-12-01T10:00:00"});
        let bad_quantity = json!({"eventId": "can-bad", "eventType": "RECEIPT", "sku": "CAN-0",
            "locationId": "DC-1", "quantity": "five"});
        let poison = vec![
            (
                stores.clone(),
                "store-item",
                "this is not json {".to_owned(),
            ),
            (stores.clone(), "store-item", bad_type.to_string()),
            (canonical.clone(), "canonical", bad_quantity.to_string()),
        ];
        for (i, (queue, _, body)) in poison.iter().enumerate() {
            let list = if *queue == stores {
                &mut messages
            } else {
                &mut events
            };
            list.insert(150 + i * 300, json!({"queue": queue, "body": body}));
        }
        let lines = |list: &[Value]| list.iter().map(|m| format!("{m}\n")).collect();
        Scenario {
            total: (messages.len() + events.len()) as u64,
            backlog: lines(&messages),
            stream: lines(&events),
            poison: poison
                .into_iter()
                .map(|(queue, format, body)| {
                    let source = format!("amqp:{format}:{queue}");
                    (queue, source, body)
                })
                .collect(),
            stores,
            canonical,
            model,
            _queues: queues,
        }
    }

    /// The `serve` arguments that consume the two queues.
    pub fn args(&self) -> Vec<String> {
        [
            "--amqp",
            BROKER,
            "--amqp-queue",
            &format!("store-item={}", self.stores),
            "--amqp-queue",
            &format!("canonical={}", self.canonical),
            "--amqp-prefetch",
            "400",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// How many messages the backlog holds.
    pub fn backlog_len(&self) -> u64 {
        self.backlog.lines().count() as u64
    }

    /// Publishes the store simulator's messages (before the server starts).
    pub fn fill_backlog(&self) {
        let published = client(&["publish"], Some(&self.backlog));
        assert!(published.ends_with(&format!("published {}\n", self.backlog.lines().count())));
    }

    /// Publishes the canonical events from another thread, each confirmed
    /// by the broker; the thread answers how many.
    pub fn publish_stream(&self) -> std::thread::JoinHandle<usize> {
        let input = self.stream.clone();
        std::thread::spawn(move || {
            let published = client(&["publish"], Some(&input));
            assert!(published.ends_with(&format!("published {}\n", input.lines().count())));
            input.lines().count()
        })
    }

    /// Messages still in the queues (not counting those delivered and not
    /// yet acknowledged).
    pub fn left(&self) -> u64 {
        depth(&self.stores) + depth(&self.canonical)
    }

    /// Waits until the queues are empty and every level is the model's;
    /// then checks that each event counted once and each poison message
    /// is a dead letter of its queue, raw.
    pub async fn check_caught_up(&self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.left() > 0 || !levels_match(url, &self.model).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "not caught up: {} left, {:?}",
                self.left(),
                levels_match(url, &self.model).await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Exactly once: each level's history holds each of its events once.
        for ((sku, location), (_, count)) in &self.model {
            let (status, history) = get(
                url,
                &format!("/v1/stock/{sku}/{location}/history?limit=1000"),
            )
            .await;
            assert_eq!(status, 200, "{history}");
            let ids: Vec<&str> = history["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["outcome"] == "applied")
                .map(|e| e["eventId"].as_str().unwrap())
                .collect();
            let distinct: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
            assert_eq!(
                (ids.len(), distinct.len()),
                (*count, *count),
                "{sku}@{location}: {history}"
            );
        }
        for (_, source, body) in &self.poison {
            let (status, page) = get(url, &format!("/v1/dead-letters?source={source}")).await;
            assert_eq!(status, 200, "{page}");
            let letters = page["deadLetters"].as_array().unwrap();
            let letter = letters
                .iter()
                .find(|l| l["payload"].as_str() == Some(body))
                .unwrap_or_else(|| panic!("{body} is a letter of {source}: {page}"));
            assert!(!letter["reason"].as_str().unwrap().is_empty(), "{letter}");
        }
    }
}

/// The links' acknowledged messages, summed.
pub fn acknowledged(links: &[Value]) -> u64 {
    links.iter().map(|l| l["messages"].as_u64().unwrap()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_messages_count_exactly_once_across_a_kill_and_poison_is_kept() {
    let scenario = Scenario::publish_new();
    scenario.fill_backlog();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let args = scenario.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // First a server that cannot write (it keeps more free disk than
    // there is): it takes messages but acknowledges none, and a kill
    // leaves every one of them in the queue.
    let all_of_it = u64::MAX.to_string();
    let full = [&args[..], &["--disk-free-min-bytes", &all_of_it]].concat();
    let mut server = serve(dir.path(), port, &full).await;
    wait_links(&url, |links| {
        links.len() == 2 && links.iter().all(|l| l["state"] == "connected")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, metrics) = get_text(&url, "/metrics").await;
    assert!(
        metrics.contains("stockflow_link_connected{kind=\"amqp\""),
        "{metrics}"
    );
    let links = wait_links(&url, |_| true).await;
    assert_eq!(acknowledged(&links), 0, "{links:?}");
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(
        scenario.left(),
        scenario.backlog_len(),
        "nothing was acknowledged"
    );

    let mut server = serve(dir.path(), port, &args).await;
    let links = wait_links(&url, |links| {
        links.len() == 2 && links.iter().all(|l| l["state"] == "connected")
    })
    .await;
    assert!(
        links
            .iter()
            .all(|l| l["peer"] == "amqp://127.0.0.1:5672/%2f"),
        "the broker, without its credentials: {links:?}"
    );
    // /readyz, open to anyone, shows their state and nothing more.
    let (status, ready) = get(&url, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let states: Vec<(&str, &str)> = ready["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap(), l["state"].as_str().unwrap()))
        .collect();
    let mut names = [scenario.canonical.as_str(), scenario.stores.as_str()];
    names.sort();
    assert_eq!(states, names.map(|n| (n, "connected")), "{ready}");
    assert!(ready["links"][0].get("peer").is_none(), "{ready}");

    // Kill the server once it has acknowledged a part of the backlog,
    // while it works through the rest and the stream comes in; start it
    // again, and kill it again further on.
    let publisher = scenario.publish_stream();
    let total = scenario.total;
    for kill_at in [600, 4000] {
        let taken = wait_links(&url, |links| acknowledged(links) >= kill_at).await;
        server.kill().unwrap();
        server.wait().unwrap();
        let left = scenario.left();
        assert!(
            left > 0 && left < total,
            "the kill came mid-stream: {} acknowledged since the start, {left} of {total} left",
            acknowledged(&taken)
        );
        server = serve(dir.path(), port, &args).await;
    }
    publisher.join().unwrap();
    // It takes the rest (and what was delivered but not acknowledged,
    // again) and the queues drain.
    scenario.check_caught_up(&url).await;
    drop(server);
}

/// Levels that differ from the model: (sku, location, the API's onHand).
async fn levels_match(url: &str, model: &Model) -> Vec<(String, String, Value)> {
    let mut wrong = Vec::new();
    for ((sku, location), (on_hand, _)) in model {
        let (_, level) = get(url, &format!("/v1/stock/{sku}/{location}")).await;
        if level["onHand"] != json!(on_hand) {
            wrong.push((sku.clone(), location.clone(), level["onHand"].clone()));
        }
    }
    wrong
}

/// The server's links (`GET /v1/links`), once `done` holds for them
/// (within a minute).
pub async fn wait_links(url: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, ready) = get(url, "/v1/links").await;
        let links = ready["links"].as_array().cloned().unwrap_or_default();
        if done(&links) {
            return links;
        }
        assert!(Instant::now() < deadline, "links: {ready}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_keeps_its_messages_parameters_and_a_message_of_nothing_is_kept() {
    let tag: u32 = rand::random();
    let (lines, rows) = (
        format!("stockflow-test-{tag}.lines"),
        format!("stockflow-test-{tag}.rows"),
    );
    let _queues = Queues(vec![lines.clone(), rows.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let server = crate::start(dir.path(), |config| {
        config.amqp = Some(stockflow_service::config::Amqp {
            url: BROKER.to_owned(),
            queues: [("order-line", &lines), ("csv", &rows)]
                .map(|(format, queue)| stockflow_service::config::AmqpQueue {
                    format: format.to_owned(),
                    queue: queue.clone(),
                })
                .to_vec(),
            prefetch: 100,
        });
    })
    .await;
    let url = server.url();
    wait_links(&url, |links| {
        links.len() == 2 && links.iter().all(|l| l["state"] == "connected")
    })
    .await;
    let csv = "sku,locationId,eventType,quantity,timestamp,eventId\n";
    let messages = [
        // An order line for STORE-7 (its header), with a quantity that
        // is no number; and a good one, a number header.
        json!({"queue": lines, "headers": {"locationId": "STORE-7"},
            "body": json!({"orderId": "r1", "productId": "RP1", "quantity": "abc",
                "timestamp": "2026-12-01T10:00:00Z"}).to_string()}),
        json!({"queue": lines, "headers": {"locationId": 7},
            "body": json!({"orderId": "r2", "productId": "RP1", "quantity": 1,
                "timestamp": "2026-12-01T10:00:00Z"}).to_string()}),
        // CSV: rows with their header (two events), a row alone (nothing
        // to read: kept), the header alone (kept).
        json!({"queue": rows, "body": format!("{csv}CSV1,L1,RECEIPT,5,2026-12-01T10:00:00Z,c-1\nCSV1,L1,SALE,2,2026-12-01T10:01:00Z,c-2\n")}),
        json!({"queue": rows, "body": "CSV1,L1,RECEIPT,9,2026-12-01T10:02:00Z,c-3\n"}),
        json!({"queue": rows, "body": csv}),
    ];
    let input: String = messages.iter().map(|m| format!("{m}\n")).collect();
    client(&["publish"], Some(&input));
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let (_, page) = get(&url, "/v1/dead-letters").await;
        let letters = page["deadLetters"].as_array().cloned().unwrap_or_default();
        if letters.len() == 3 {
            break letters;
        }
        assert!(Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, level) = get(&url, "/v1/stock/CSV1/L1").await;
    assert_eq!(level["onHand"], 3, "{level}");
    let (_, level) = get(&url, "/v1/stock/RP1/7").await;
    assert_eq!(
        level["onHand"], -1,
        "a number header is a parameter: {level}"
    );
    let of = |needle: &str| {
        letters
            .iter()
            .find(|l| l["payload"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("{needle}: {letters:?}"))
            .clone()
    };
    for needle in ["c-3", "sku,locationId"] {
        let letter = of(needle);
        assert!(
            letter["reason"]
                .as_str()
                .unwrap()
                .contains("holds no events"),
            "{letter}"
        );
    }
    // The order line's letter says its parameters, and its replay reads
    // them: the fulfilment lands at STORE-7.
    let letter = of("abc");
    let source = letter["source"].as_str().unwrap();
    assert_eq!(
        source,
        format!("amqp:order-line:{lines}?locationId=STORE-7")
    );
    let corrected = json!({"orderId": "r1", "productId": "RP1", "quantity": 2,
        "timestamp": "2026-12-01T10:00:00Z"});
    let (status, replayed) = crate::post_json(
        &url,
        &format!("/v1/dead-letters/{}/replay", letter["id"]),
        corrected,
    )
    .await;
    assert_eq!(
        (status, &replayed["resolved"]),
        (200, &json!(true)),
        "{replayed}"
    );
    let (_, level) = get(&url, "/v1/stock/RP1/STORE-7").await;
    assert_eq!(level["onHand"], -2, "{level}");
    server.stop().await.unwrap();
}

#[test]
fn a_queue_given_twice_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["serve", "--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--amqp", BROKER])
        .args([
            "--amqp-queue",
            "canonical=twice",
            "--amqp-queue",
            "store-item=twice",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("\"twice\" is given twice"), "{said}");
    assert!(!said.contains("guest:guest"), "{said}");
}
