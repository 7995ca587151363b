//! What both modes promise, asked of both: the same requests, sent to an
//! embedded server and to a Kafka-mode instance (on tansu), must get the
//! same answers. Each case also says what that answer is, so agreeing on
//! a wrong answer fails too.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::kafka::{wait_settled, Broker, Instance};

/// One request and what a client must get back.
struct Case {
    name: &'static str,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    /// The error's code, or the receipt's (accepted, duplicates, rejected).
    want: Want,
    /// A dead letter this request leaves: its source, and the payload kept.
    letter: Option<(&'static str, Vec<u8>)>,
}

enum Want {
    Code(&'static str),
    Receipt(u64, u64, u64),
}

fn event(id: &str, quantity: &str) -> String {
    format!(
        r#"{{"eventId":"{id}","eventType":"RECEIPT","sku":"PAR","locationId":"WEB","quantity":{quantity}}}"#
    )
}

fn cases() -> Vec<Case> {
    let csv = "sku,locationId,eventType,quantity,eventId\nPAR,WEB,RECEIPT,2,par-csv-1\nPAR,WEB,RECEIPT,1.5,par-csv-2\n";
    let too_many: String = (0..100_001)
        .map(|i| event(&format!("par-many-{i}"), "1") + "\n")
        .collect();
    let case = |name, path: &str, content_type, body: Vec<u8>, status, want| Case {
        name,
        path: path.to_owned(),
        content_type,
        body,
        status,
        want,
        letter: None,
    };
    let two = format!("[{},{}]", event("par-1", "3"), event("par-2", "4"));
    vec![
        case(
            "two valid events",
            "/v1/events?wait=applied",
            "application/json",
            two.clone().into_bytes(),
            200,
            Want::Receipt(2, 0, 0),
        ),
        case(
            "the same two again",
            "/v1/events?wait=applied",
            "application/json",
            two.into_bytes(),
            200,
            Want::Receipt(0, 2, 0),
        ),
        case(
            "one valid, one not",
            "/v1/events?wait=applied",
            "application/x-ndjson",
            format!("{}\n{}\n", event("par-3", "1"), event("par-4", "1.5")).into_bytes(),
            200,
            Want::Receipt(1, 0, 1),
        ),
        case(
            "a wait that is not `applied`",
            "/v1/events?wait=soon",
            "application/json",
            event("par-5", "1").into_bytes(),
            400,
            Want::Code("bad_request"),
        ),
        Case {
            letter: Some(("http:/v1/events", b"{\"eventId\": par-6".to_vec())),
            ..case(
                "a body that is not JSON",
                "/v1/events",
                "application/json",
                b"{\"eventId\": par-6".to_vec(),
                400,
                Want::Code("bad_request"),
            )
        },
        case(
            "a body that does not say what it carries",
            "/v1/events",
            "text/plain",
            event("par-7", "1").into_bytes(),
            415,
            Want::Code("unsupported_media_type"),
        ),
        case(
            "100,001 events",
            "/v1/events",
            "application/x-ndjson",
            too_many.into_bytes(),
            413,
            Want::Code("too_many_events"),
        ),
        Case {
            letter: Some(("source:csv", b"PAR,WEB,RECEIPT,1.5,par-csv-2".to_vec())),
            ..case(
                "a source format's rows, one bad",
                "/v1/sources/csv/events?wait=applied",
                "text/csv",
                csv.as_bytes().to_vec(),
                200,
                Want::Receipt(1, 0, 1),
            )
        },
        case(
            "a source format that does not exist",
            "/v1/sources/nope/events",
            "application/json",
            b"[]".to_vec(),
            404,
            Want::Code("not_found"),
        ),
    ]
}

/// Sends every case to `url`; the answers, in order.
async fn ask_all(url: &str) -> Vec<(u16, Value)> {
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for case in cases() {
        let response = client
            .post(format!("{url}{}", case.path))
            .header("content-type", case.content_type)
            .body(case.body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, case.status, "{url}: {}: {answer}", case.name);
        match case.want {
            Want::Code(code) => assert_eq!(answer["code"], code, "{url}: {}", case.name),
            Want::Receipt(accepted, duplicates, rejected) => assert_eq!(
                (
                    &answer["accepted"],
                    &answer["duplicates"],
                    &answer["rejected"]
                ),
                (&json!(accepted), &json!(duplicates), &json!(rejected)),
                "{url}: {}: {answer}",
                case.name
            ),
        }
        if let Some((source, payload)) = &case.letter {
            let payload = String::from_utf8(payload.clone()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (_, page) = crate::get(url, &format!("/v1/dead-letters?source={source}")).await;
                let kept = page["deadLetters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|l| l["source"] == *source && l["payload"].as_str() == Some(&payload));
                if kept {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{url}: {}: no letter from {source} holding {payload:?}: {page}",
                    case.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        answers.push((status, answer));
    }
    answers
}

/// Ingest, both ways in (canonical and a source format), every way it can
/// go wrong: one handler serves both modes, so both answer alike, word for
/// word, and keep the same dead letters under the same source.
#[test]
fn ingest_answers_alike_in_both_modes() {
    let names = cases().iter().map(|c| c.name.to_owned()).collect();
    alike_in_both_modes("parity", names, |url, _| async move { ask_all(&url).await });
}

/// Sends `ask` (given a server's URL and, for Kafka mode, the embedded
/// mode's answers) to a fresh embedded server, then to a fresh Kafka-mode
/// instance on tansu (consumer group `group`), and asserts that every
/// request, named by `names`, answered alike in both.
fn alike_in_both_modes<Fut>(
    group: &str,
    names: Vec<String>,
    ask: impl Fn(String, Option<Vec<(u16, Value)>>) -> Fut,
) where
    Fut: std::future::Future<Output = Vec<(u16, Value)>>,
{
    let _heavy = crate::heavy();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let embedded = runtime.block_on(async {
        let server = crate::start(&dir.path().join("embedded"), |_| {}).await;
        let answers = ask(server.url(), None).await;
        server.stop().await.unwrap();
        answers
    });

    let broker = Broker::start();
    broker.create_topics();
    let instance = Instance::start(&broker, group, &dir.path().join("kafka"));
    wait_settled(&instance.url, 1);
    let kafka = runtime.block_on(ask(instance.url.clone(), Some(embedded.clone())));

    assert_eq!((embedded.len(), kafka.len()), (names.len(), names.len()));
    let differ: Vec<String> = names
        .iter()
        .zip(embedded.iter().zip(&kafka))
        .filter(|(_, (embedded, kafka))| embedded != kafka)
        .map(|(name, (embedded, kafka))| {
            format!("{name}:\n  embedded {embedded:?}\n  kafka    {kafka:?}")
        })
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// `stockflow simulate --scenario controlled`, the CLI client, gets the
/// documented levels from both modes, and running it again changes
/// nothing (every event is a duplicate but the one refused).
#[test]
fn the_cli_controlled_scenario_gives_the_documented_levels_in_both_modes() {
    let names = vec!["first run".to_owned(), "second run".to_owned()];
    alike_in_both_modes("scenario", names, |url, _| async move {
        let mut answers = Vec::new();
        for (run, totals) in [
            (1, "accepted 13, duplicates 1, rejected 1"),
            (2, "accepted 0, duplicates 14, rejected 1"),
        ] {
            let to = url.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_stockflow"))
                    .args(["simulate", "--scenario", "controlled", "--url", &to])
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            let error = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "run {run} via {url}:\n{said}\n{error}"
            );
            assert!(said.contains(totals), "run {run} via {url}:\n{said}");
            assert!(said.contains("all levels as documented"), "{said}");
            let summary: Vec<&str> = said.lines().filter(|l| !l.contains("http")).collect();
            answers.push((out.status.code().unwrap_or(-1) as u16, json!(summary)));
        }
        answers
    });
}

/// Every `serve` flag works in both modes or is refused at start: the
/// embedded mode's own flags (its data directory's disk, checkpoints and
/// partitions; Kafka mode has its own), given with `--kafka`, stop the
/// start (exit code 2) naming both, before anything connects to a broker;
/// so do the sinks without broker transactions.
/// (`--catalog` and `--webhook` work in both: kafka.rs.)
#[test]
fn serve_flags_kafka_mode_cannot_honour_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--disk-free-min-bytes", "1"),
        ("--checkpoint-events", "10"),
        ("--partitions", "4"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_stockflow"))
            .args(["serve", "--kafka", "127.0.0.1:9", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path())
            .args([flag, value])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag}: {said}");
        assert!(
            said.contains(flag) && said.contains("--kafka"),
            "{flag}: {said}"
        );
    }
    // The sinks work in Kafka mode with broker transactions only: without
    // them the start refuses, saying so, before it reaches for a broker.
    for (flag, value) in [
        ("--lake", "lake"),
        ("--sink-postgres", "postgres://127.0.0.1/x"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_stockflow"))
            .args(["serve", "--kafka", "127.0.0.1:9", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path())
            .args([flag, value])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{flag}: {said}");
        assert!(
            said.contains(flag) && said.contains("needs --kafka-transactions"),
            "{flag}: {said}"
        );
        assert!(!said.contains("cannot reach Kafka"), "{flag}: {said}");
    }
}

/// Read requests, good and bad, and what each must answer (its status).
const READS: &[(&str, &str, u16)] = &[
    ("GET", "/v1/stock/PAR/WEB", 200),
    ("GET", "/v1/stock/PAR", 200),
    ("GET", "/v1/locations/WEB/stock", 200),
    ("GET", "/v1/locations/WEB/stock?status=low", 200),
    ("GET", "/v1/locations/WEB/stock?status=out", 200),
    ("GET", "/v1/locations/WEB/stock?status=sideways", 400),
    ("GET", "/v1/locations/WEB/stock?after=PAR", 200),
    ("GET", "/v1/locations/NOWHERE/stock", 404),
    ("GET", "/v1/stock/PAR/WEB/history?limit=2", 200),
    ("GET", "/v1/items/PAR", 200),
    ("GET", "/v1/stock/NONE/WEB", 404),
    ("GET", "/v1/stock/NONE", 404),
    ("GET", "/v1/stock/NONE/WEB/history", 404),
    ("GET", "/v1/stock/PAR/WEB?asOf=2001-01-01T00:00:00Z", 404),
    ("GET", "/v1/stock/PAR/WEB?asOf=yesterday", 400),
    ("GET", "/v1/stock/PAR?asOf=2001-01-01T00:00:00Z", 404),
    ("GET", "/v1/stock/PAR?asOf=2001-01-01T01:00:00%2B01:00", 404),
    ("GET", "/v1/stock/PAR?asOf=2099-01-01T00:00:00Z", 200),
    ("GET", "/v1/stock/PAR?asOf=", 400),
    ("GET", "/v1/stock/PAR/WEB/history?limit=0", 400),
    ("GET", "/v1/locations/WEB/stock?limit=100000", 400),
    ("GET", "/v1/alerts?kind=NOPE", 400),
    ("GET", "/v1/orders?limit=-1", 400),
    ("GET", "/v1/orders?status=lost", 400),
    ("GET", "/v1/orders/NONE", 404),
    ("GET", "/v1/products/NONE", 404),
    ("GET", "/v1/locations/NONE", 404),
    ("GET", "/v1/dead-letters?limit=many", 400),
    ("GET", "/v1/sources", 200),
    ("GET", "/v1/activity?seconds=0", 400),
    ("GET", "/v1/activity?seconds=many", 400),
    ("GET", "/v1/no-such-thing", 404),
    ("DELETE", "/v1/events", 405),
    ("POST", "/v1/orders", 415),
];

/// `answer` without what differs between two servers by nature: times,
/// ids they assign, and the `stale` flag of a Kafka read.
fn comparable(answer: &Value) -> Value {
    match answer {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| {
                    // Ids a server assigns (an alert's holds a time) differ too.
                    !k.ends_with("At") && !matches!(k.as_str(), "at" | "timestamp" | "stale" | "id")
                })
                .map(|(k, v)| match (k.as_str(), v.as_str()) {
                    // An alerts cursor starts with a time.
                    ("nextAfter", Some(cursor)) => match cursor.split_once('-') {
                        Some((at, key)) if at.parse::<i64>().is_ok() => {
                            (k.clone(), Value::from(key))
                        }
                        _ => (k.clone(), v.clone()),
                    },
                    _ => (k.clone(), comparable(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(comparable).collect()),
        other => other.clone(),
    }
}

async fn read_all(url: &str) -> Vec<(u16, Value)> {
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for (method, path, status) in READS {
        let response = client
            .request(method.parse().unwrap(), format!("{url}{path}"))
            .send()
            .await
            .unwrap();
        let got = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(got, *status, "{url}: {method} {path}: {answer}");
        if got >= 400 {
            assert!(
                answer["code"].is_string(),
                "{url}: {method} {path}: {answer}"
            );
        }
        answers.push((got, comparable(&answer)));
    }
    answers
}

/// Reads of the same state, good and bad, answer alike in both modes
/// (but for times), word for word.
#[test]
fn reads_answer_alike_in_both_modes() {
    let names = READS.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
    alike_in_both_modes("parity-reads", names, |url, _| async move {
        ask_all(&url).await;
        read_all(&url).await
    });
}

/// Catalog and order steps, in order, each with the status it must get.
fn writes() -> Vec<(&'static str, &'static str, Value, u16)> {
    vec![
        (
            "PUT",
            "/v1/products/PAR",
            json!({"name": "Parka", "price": 80.0, "lowStockThreshold": 5}),
            200,
        ),
        ("GET", "/v1/products/PAR", Value::Null, 200),
        (
            "PUT",
            "/v1/products/PAR",
            json!({"name": "Parka", "price": -1}),
            400,
        ),
        (
            "POST",
            "/v1/products",
            json!([{"sku": "PAR2", "name": "Parka 2"}, {"sku": "", "name": "x"}]),
            200,
        ),
        ("GET", "/v1/products?limit=10", Value::Null, 200),
        (
            "PUT",
            "/v1/locations/WEB",
            json!({"type": "online", "region": "north"}),
            200,
        ),
        ("PUT", "/v1/locations/BAD", json!({"type": "castle"}), 400),
        ("GET", "/v1/locations/WEB", Value::Null, 200),
        ("GET", "/v1/items/PAR", Value::Null, 200),
        ("GET", "/v1/regions/north/stock/PAR", Value::Null, 200),
        ("GET", "/v1/regions/south/stock/PAR", Value::Null, 200),
        (
            "POST",
            "/v1/orders",
            json!({"orderId": "par-o1", "lines": [{"sku": "PAR", "locationId": "WEB", "quantity": 2}]}),
            200,
        ),
        (
            "POST",
            "/v1/orders",
            json!({"orderId": "par-o1", "lines": [{"sku": "PAR", "locationId": "WEB", "quantity": 2}]}),
            200,
        ),
        (
            "POST",
            "/v1/orders",
            json!({"orderId": "par-o1", "lines": [{"sku": "PAR", "locationId": "WEB", "quantity": 3}]}),
            409,
        ),
        ("GET", "/v1/orders/par-o1", Value::Null, 200),
        ("GET", "/v1/stock/PAR/WEB", Value::Null, 200),
        (
            "POST",
            "/v1/orders",
            json!({"orderId": "par-o2", "lines": [{"sku": "PAR", "locationId": "WEB", "quantity": 500}]}),
            200,
        ),
        (
            "POST",
            "/v1/orders",
            json!({"orderId": "par-o3", "lines": []}),
            400,
        ),
        // The longest orderId is decided (in Kafka mode its lines' event
        // ids must fit an eventId); one character more is refused.
        (
            "POST",
            "/v1/orders",
            json!({"orderId": "o".repeat(100), "lines": [{"sku": "PAR", "locationId": "WEB", "quantity": 1}], "holdSeconds": 1}),
            200,
        ),
        (
            "POST",
            "/v1/orders",
            json!({"orderId": "o".repeat(101), "lines": [{"sku": "PAR", "locationId": "WEB", "quantity": 1}]}),
            400,
        ),
        ("POST", "/v1/orders/par-o1/fulfil", json!({}), 200),
        ("POST", "/v1/orders/par-o1/cancel", json!({}), 409),
        ("POST", "/v1/orders/none/cancel", json!({}), 404),
        ("GET", "/v1/orders?status=fulfilled", Value::Null, 200),
        ("GET", "/v1/stock/PAR/WEB", Value::Null, 200),
        ("GET", "/v1/alerts", Value::Null, 200),
        (
            "PUT",
            "/v1/products/PAR",
            json!({"name": "Parka", "price": 60.0, "lowStockThreshold": 9}),
            200,
        ),
        ("GET", "/v1/alerts?kind=PRICE_DROP", Value::Null, 200),
        // The refused catalog items are dead letters, resolved alike: the
        // location replayed as it was (still invalid), then corrected;
        // the product discarded.
        ("GET", "/v1/dead-letters?source=http:/v1/", Value::Null, 200),
        (
            "POST",
            "/v1/dead-letters/{letter:http:/v1/locations}/replay",
            Value::Null,
            422,
        ),
        (
            "POST",
            "/v1/dead-letters/{letter:http:/v1/locations}/replay",
            json!({"locationId": "BAD", "type": "store", "region": "south"}),
            200,
        ),
        ("GET", "/v1/locations/BAD", Value::Null, 200),
        (
            "DELETE",
            "/v1/dead-letters/{letter:http:/v1/products}",
            Value::Null,
            204,
        ),
        ("GET", "/v1/dead-letters?source=http:/v1/", Value::Null, 200),
        ("POST", "/v1/dead-letters/999999/replay", Value::Null, 404),
        ("GET", "/v1/alerts?kind=LOW_STOCK", Value::Null, 200),
        ("GET", "/v1/alerts?limit=1", Value::Null, 200),
        (
            "GET",
            "/v1/alerts?kind=LOW_STOCK&sku=PAR&locationId=WEB&active=true",
            Value::Null,
            200,
        ),
    ]
}

/// Sends the steps of [`writes`] to `url`. With `like` (another mode's
/// answers), a read is asked again for up to 10 s until it answers alike:
/// in Kafka mode an order's step reaches the levels it moves a moment
/// after the order's owner answered, so reads converge rather than agree
/// at once.
async fn write_all(url: &str, like: Option<&[(u16, Value)]>) -> Vec<(u16, Value)> {
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for (n, (method, path, body, status)) in writes().into_iter().enumerate() {
        let path = with_letter_id(url, path).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let answer = loop {
            let mut request = client.request(method.parse().unwrap(), format!("{url}{path}"));
            if !body.is_null() {
                request = request.json(&body);
            } else if method != "GET" {
                // An empty write says what it (does not) carry.
                request = request.header("content-type", "application/json");
            }
            let response = request.send().await.unwrap();
            let got = response.status().as_u16();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(got, status, "{url}: {method} {path}: {answer}");
            let answer = (got, comparable(&answer));
            let wanted = like.map(|like| &like[n]);
            if method != "GET" || wanted.is_none_or(|w| *w == answer) || Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        answers.push(answer);
    }
    answers
}

/// `path` with `{letter:SOURCE}` replaced by the id of the oldest
/// unresolved dead letter from SOURCE (ids differ between modes).
async fn with_letter_id(url: &str, path: &str) -> String {
    let Some((before, rest)) = path.split_once("{letter:") else {
        return path.to_owned();
    };
    let (source, after) = rest.split_once('}').expect("a closed placeholder");
    let (_, page) = crate::get(url, &format!("/v1/dead-letters?source={source}")).await;
    let id = &page["deadLetters"][0]["id"];
    assert!(id.is_u64(), "{url}: a dead letter from {source}: {page}");
    format!("{before}{id}{after}")
}

/// The catalog and orders, step by step, answer alike in both modes.
#[test]
fn catalog_and_orders_answer_alike_in_both_modes() {
    let names = writes()
        .iter()
        .map(|(m, p, _, _)| format!("{m} {p}"))
        .collect();
    alike_in_both_modes("parity-writes", names, |url, like| async move {
        ask_all(&url).await;
        write_all(&url, like.as_deref()).await
    });
}
