//! Orders' holds over HTTP, the way a user's systems mix them: a till's
//! plain events, an e-commerce system's reservations, releases and
//! fulfilments carrying its order ids (many naming orders that hold
//! nothing at that level), counts, late and redelivered events, and orders
//! placed through the API under the same ids; with restarts. Checked
//! against the reference model (`reference`), never against the engine.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use stockflow_core::orders::Mode;

use crate::reference::{location, sku, Books, Command, Ev, Model};
use crate::{get, post, start};

/// One step of a user's traffic.
#[derive(Clone, Debug)]
pub enum Step {
    /// Events in one request.
    Events(Vec<Ev>),
    Order(Command),
}

/// The shape of a [`mixed_stream`].
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub events: usize,
    pub skus: usize,
    pub locations: usize,
    pub orders: u8,
    /// Share of steps that are API commands.
    pub commands: f64,
    /// Largest request, in events.
    pub batch_max: usize,
}

/// A seeded stream of `shape.events` events (about 2% redeliveries, about
/// 35% naming one of the order ids, transfers, counts, a few invalid) with
/// API commands among them.
pub fn mixed_stream(seed: u64, shape: Shape) -> Vec<Step> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut sent: Vec<Ev> = Vec::new();
    let mut steps = Vec::new();
    while sent.len() < shape.events {
        if rng.random_bool(shape.commands) {
            steps.push(Step::Order(command(&mut rng, shape)));
            continue;
        }
        let size = rng
            .random_range(1..=shape.batch_max)
            .min(shape.events - sent.len());
        let mut batch = Vec::with_capacity(size);
        for _ in 0..size {
            let e = match sent.is_empty() || !rng.random_bool(0.02) {
                true => event(&mut rng, sent.len() as u32, shape),
                false => sent[rng.random_range(0..sent.len())].clone(),
            };
            sent.push(e.clone());
            batch.push(e);
        }
        steps.push(Step::Events(batch));
    }
    steps
}

fn event(rng: &mut SmallRng, id: u32, shape: Shape) -> Ev {
    let roll = rng.random_range(0..100);
    let (kind, correlated) = match roll {
        0..18 => ("RECEIPT", false),
        18..27 => ("SALE", false),
        27..30 => ("ADJUSTMENT", false),
        30..33 => ("COUNT", false),
        33..36 => ("TRANSFER_OUT", false),
        36..38 => ("TRANSFER_IN", false),
        38..45 => ("RESERVATION", false),
        45..50 => ("RELEASE", false),
        50..55 => ("FULFILLMENT", false),
        55..72 => ("RESERVATION", true),
        72..87 => ("RELEASE", true),
        _ => ("FULFILLMENT", true),
    };
    let quantity = match kind {
        _ if rng.random_bool(0.003) => 0, // invalid: refused, kept as a dead letter
        "RECEIPT" => rng.random_range(1..=30),
        "COUNT" => rng.random_range(0..=40),
        "ADJUSTMENT" if rng.random_bool(0.5) => -rng.random_range(1..=5),
        _ => rng.random_range(1..=8),
    };
    let location = rng.random_range(0..shape.locations);
    Ev {
        id,
        kind,
        sku: rng.random_range(0..shape.skus),
        location,
        quantity,
        // Within an hour, so counts meet late and early events.
        second: rng.random_range(0..3600),
        order: correlated.then(|| rng.random_range(0..shape.orders)),
        to: (kind == "TRANSFER_OUT").then(|| (location + 1) % shape.locations),
        hold_s: None,
    }
}

fn command(rng: &mut SmallRng, shape: Shape) -> Command {
    let order = rng.random_range(0..shape.orders);
    match rng.random_range(0..6) {
        0..3 => {
            let lines = (0..rng.random_range(1..=3))
                .map(|_| {
                    (
                        rng.random_range(0..shape.skus),
                        rng.random_range(0..shape.locations),
                        rng.random_range(1..=6),
                    )
                })
                .collect();
            let mode = match rng.random_bool(0.5) {
                true => Mode::AllOrNothing,
                false => Mode::Partial,
            };
            Command::Place(order, lines, mode, 100_000)
        }
        3 => Command::Fulfil(order),
        4 => Command::Cancel(order),
        _ => Command::Extend(order, 200_000),
    }
}

/// Sends one API command; the server's answer must be one the contract
/// names for it.
pub async fn send_command(url: &str, command: &Command) {
    let (path, body) = match command {
        Command::Place(o, lines, mode, hold) => {
            let lines: Vec<Value> = lines
                .iter()
                .map(|(s, l, q)| json!({"sku": sku(*s), "locationId": location(*l), "quantity": q}))
                .collect();
            let mode = match mode {
                Mode::AllOrNothing => "all_or_nothing",
                Mode::Partial => "partial",
            };
            let body = json!({"orderId": format!("o{o}"), "mode": mode, "holdSeconds": hold, "lines": lines});
            ("/v1/orders".to_owned(), body)
        }
        Command::Fulfil(o) => (format!("/v1/orders/o{o}/fulfil"), json!({})),
        Command::Cancel(o) => (format!("/v1/orders/o{o}/cancel"), json!({})),
        Command::Extend(o, s) => (format!("/v1/orders/o{o}/extend"), json!({"holdSeconds": s})),
    };
    let (status, answer) = crate::post_json(url, &path, body).await;
    assert!(
        matches!(status, 200 | 201 | 404 | 409),
        "{command:?} answered {status}: {answer}"
    );
}

/// Every level of the stream's SKUs as the server shows them, with each
/// order's holds from its allocations.
pub async fn server_levels(url: &str, shape: Shape) -> Books {
    let mut levels = BTreeMap::new();
    for sku in (0..shape.skus).map(sku) {
        let (status, body) = get(url, &format!("/v1/stock/{sku}")).await;
        if status == 404 {
            continue;
        }
        assert_eq!(status, 200, "{body}");
        for l in body["locations"].as_array().expect("locations") {
            let key = (sku.clone(), l["locationId"].as_str().unwrap().to_owned());
            let n = |field: &str| l[field].as_i64().unwrap();
            let numbers = (n("onHand"), n("reserved"), n("inTransit"), BTreeMap::new());
            levels.insert(key, numbers);
        }
    }
    for o in 0..shape.orders {
        let (status, order) = get(url, &format!("/v1/orders/o{o}")).await;
        if status == 404 {
            continue;
        }
        for line in order["lines"].as_array().unwrap() {
            for a in line["allocations"].as_array().unwrap() {
                if a["fulfilled"] == true {
                    continue;
                }
                let key = (
                    line["sku"].as_str().unwrap().to_owned(),
                    a["locationId"].as_str().unwrap().to_owned(),
                );
                let holds = &mut levels.get_mut(&key).expect("a held level exists").3;
                *holds.entry(format!("o{o}")).or_insert(0) += a["quantity"].as_i64().unwrap();
            }
        }
    }
    levels
}

/// The orders that exist on the server.
pub async fn server_orders(url: &str, shape: Shape) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    for o in 0..shape.orders {
        if get(url, &format!("/v1/orders/o{o}")).await.0 == 200 {
            found.insert(format!("o{o}"));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_18_a_release_for_an_order_that_holds_nothing_never_touches_another_orders_hold() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let body = [
        r#"{"eventId":"r1","eventType":"RECEIPT","sku":"A","locationId":"S1","quantity":10}"#,
        r#"{"eventId":"v1","eventType":"RESERVATION","sku":"A","locationId":"S1","quantity":3,"correlationId":"o-y"}"#,
        r#"{"eventId":"l1","eventType":"RELEASE","sku":"A","locationId":"S1","quantity":5,"correlationId":"o-z"}"#,
    ]
    .join("\n");
    let (status, receipt) = post(&url, "application/x-ndjson", body).await;
    assert_eq!(status, 200);
    assert_eq!(receipt["accepted"], 3, "{receipt}");
    assert_eq!(
        receipt["errors"],
        json!([{"index": 2, "eventId": "l1", "reason": "no_hold: order o-z holds nothing at A@S1"}])
    );
    let (_, check) = get(&url, "/v1/check").await;
    assert_eq!(check["ok"], true, "{check}");
    let (_, order) = get(&url, "/v1/orders/o-y").await;
    assert_eq!(order["status"], "reserved");
    assert_eq!(order["lines"][0]["reserved"], 3);
    let (_, level) = get(&url, "/v1/stock/A/S1").await;
    assert_eq!(
        (level["onHand"].as_i64(), level["reserved"].as_i64()),
        (Some(10), Some(3))
    );
    assert_eq!(
        get(&url, "/v1/orders/o-z").await.0,
        404,
        "a release creates no order"
    );
    // The refusal is in the level's history, as its outcome.
    let (_, history) = get(&url, "/v1/stock/A/S1/history").await;
    let newest = &history["events"][0];
    assert_eq!(
        (newest["eventId"].as_str(), newest["outcome"].as_str()),
        (Some("l1"), Some("no_hold")),
        "{history}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_events_keep_their_time_and_their_place_among_plain_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let body = [
        r#"{"eventId":"t1","eventType":"RECEIPT","sku":"T","locationId":"S1","quantity":10,"timestamp":"2024-05-01T09:00:00Z"}"#,
        // Reserved before the sale that empties the shelf, in one request.
        r#"{"eventId":"t2","eventType":"RESERVATION","sku":"T","locationId":"S1","quantity":4,"correlationId":"w-1","timestamp":"2024-05-01T09:05:00Z"}"#,
        r#"{"eventId":"t3","eventType":"SALE","sku":"T","locationId":"S1","quantity":6,"timestamp":"2024-05-01T09:06:00Z"}"#,
        // A fulfilment at 09:10, then a count as of 09:30: the count
        // absorbs it (the goods had left before the count).
        r#"{"eventId":"t4","eventType":"FULFILLMENT","sku":"T","locationId":"S1","quantity":4,"correlationId":"w-1","timestamp":"2024-05-01T09:10:00Z"}"#,
        r#"{"eventId":"t5","eventType":"COUNT","sku":"T","locationId":"S1","quantity":0,"timestamp":"2024-05-01T09:30:00Z"}"#,
    ]
    .join("\n");
    let (_, receipt) = post(&url, "application/x-ndjson", body).await;
    assert_eq!(receipt["errors"], json!([]), "{receipt}");
    let (_, level) = get(&url, "/v1/stock/T/S1").await;
    assert_eq!(
        (level["onHand"].as_i64(), level["reserved"].as_i64()),
        (Some(0), Some(0)),
        "{level}"
    );
    let (_, order) = get(&url, "/v1/orders/w-1").await;
    assert_eq!(order["status"], "fulfilled", "{order}");
    let (_, history) = get(&url, "/v1/stock/T/S1/history").await;
    let times: Vec<(&str, &str)> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["eventId"].as_str().unwrap(),
                e["timestamp"].as_str().unwrap_or("none"),
            )
        })
        .collect();
    assert!(times.contains(&("t4", "2024-05-01T09:10:00Z")), "{history}");
    assert!(times.contains(&("t2", "2024-05-01T09:05:00Z")), "{history}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fulfilment_for_an_order_that_holds_nothing_still_takes_the_goods_off_the_shelf() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let body = [
        r#"{"eventId":"f1","eventType":"RECEIPT","sku":"B","locationId":"S1","quantity":10}"#,
        r#"{"eventId":"f2","eventType":"RESERVATION","sku":"B","locationId":"S1","quantity":2}"#,
        r#"{"eventId":"f3","eventType":"FULFILLMENT","sku":"B","locationId":"S1","quantity":3,"correlationId":"web-9"}"#,
    ]
    .join("\n");
    let (_, receipt) = post(&url, "application/x-ndjson", body).await;
    assert_eq!(
        (receipt["accepted"].as_u64(), receipt["errors"].clone()),
        (Some(3), json!([])),
        "{receipt}"
    );
    let (_, level) = get(&url, "/v1/stock/B/S1").await;
    // onHand moved; the free reservation of 2 is not the order's to take.
    assert_eq!(
        (level["onHand"].as_i64(), level["reserved"].as_i64()),
        (Some(7), Some(2)),
        "{level}"
    );
    let (_, history) = get(&url, "/v1/stock/B/S1/history").await;
    assert_eq!(history["events"][0]["eventId"], "f3", "{history}");
    assert_eq!(history["events"][0]["outcome"], "applied", "{history}");
    // Every reservation made through an order, says the strict check: not so.
    let (_, check) = get(&url, "/v1/check").await;
    assert_eq!(check["ok"], true, "{check}");
    let (_, strict) = get(&url, "/v1/check?strict=true").await;
    assert_eq!(strict["ok"], false, "{strict}");
    assert_eq!(
        strict["problems"][0], "B@S1: reserved 2 but live orders hold 0",
        "{strict}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_thousand_mixed_events_and_orders_end_exactly_where_the_model_does() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed={seed} (replay with SEED={seed})");
    let shape = Shape {
        events: 30_000,
        skus: 3,
        locations: 4,
        orders: 40,
        commands: 0.08,
        batch_max: 150,
    };
    let steps = mixed_stream(seed, shape);
    let events: Vec<&Ev> = steps
        .iter()
        .flat_map(|s| match s {
            Step::Events(batch) => batch.iter().collect(),
            Step::Order(_) => Vec::new(),
        })
        .collect();
    let correlated = events.iter().filter(|e| e.order.is_some()).count();
    assert!(
        events.len() >= 30_000 && correlated * 4 >= events.len(),
        "{correlated} of {}",
        events.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let hold = |c: &mut stockflow_service::config::Config| c.order_hold_seconds = 100_000;
    let mut server = start(dir.path(), hold).await;
    let mut url = server.url();
    // No hold expires during the test: server time never reaches it.
    let mut model = Model::new(i64::MAX / 4);
    let now = 2_000_000_000 * crate::reference::SECOND; // after every event time
    for (n, step) in steps.iter().enumerate() {
        match step {
            Step::Events(batch) => {
                let body: Vec<String> = batch.iter().map(Ev::json).collect();
                let refused_before = model.refused.len();
                let fresh = batch.iter().filter(|e| model.event(e, now)).count();
                let (status, receipt) = post(&url, "application/x-ndjson", body.join("\n")).await;
                assert_eq!(status, 200, "{receipt}");
                assert_eq!(
                    receipt["accepted"].as_u64(),
                    Some(fresh as u64),
                    "seed={seed} {receipt}"
                );
                let invalid = batch.iter().filter(|e| !e.valid());
                let mut expected: Vec<String> = model.refused[refused_before..]
                    .iter()
                    .map(|(id, code)| format!("e{id}:{code}"))
                    .chain(invalid.map(|e| format!("e{}:quantity", e.id)))
                    .collect();
                let mut got: Vec<String> = receipt["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| {
                        let code = e["reason"].as_str().unwrap().split(':').next().unwrap();
                        format!("{}:{code}", e["eventId"].as_str().unwrap())
                    })
                    .collect();
                expected.sort();
                got.sort();
                assert_eq!(got, expected, "seed={seed} step {n}");
            }
            Step::Order(command) => {
                send_command(&url, command).await;
                model.command(command, now);
            }
        }
        if n == steps.len() / 2 {
            // A restart in the middle of the stream.
            server.stop().await.unwrap();
            server = start(dir.path(), hold).await;
            url = server.url();
        }
    }
    let (_, check) = get(&url, "/v1/check").await;
    assert_eq!(check["ok"], true, "seed={seed} {check}");
    assert_eq!(
        server_levels(&url, shape).await,
        model.levels_by_name(),
        "seed={seed}"
    );
    assert_eq!(server_orders(&url, shape).await, model.orders);
    server.stop().await.unwrap();

    // A full replay of the log (no checkpoint) rebuilds the same books.
    std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
    let server = start(dir.path(), hold).await;
    let url = server.url();
    assert_eq!(
        server_levels(&url, shape).await,
        model.levels_by_name(),
        "seed={seed} after replay"
    );
    let (_, check) = get(&url, "/v1/check").await;
    assert_eq!(check["ok"], true, "seed={seed} {check}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_made_by_an_event_expires_on_its_own_hold_and_gives_back_only_its_units() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    crate::send_event(&url, "x-r", "RECEIPT", "X", "S1", 10).await;
    let api = json!({"orderId": "o-api", "holdSeconds": 600, "lines": [{"sku": "X", "locationId": "S1", "quantity": 2}]});
    let placed = reqwest::Client::new()
        .post(format!("{url}/v1/orders"))
        .json(&api)
        .send()
        .await
        .unwrap();
    assert!(placed.status().is_success());
    let body = [
        r#"{"eventId":"x-1","eventType":"RESERVATION","sku":"X","locationId":"S1","quantity":3,"correlationId":"web-1","holdSeconds":1}"#,
        r#"{"eventId":"x-2","eventType":"RESERVATION","sku":"X","locationId":"S1","quantity":1}"#,
        // holdSeconds belongs to a RESERVATION for an order only.
        r#"{"eventId":"x-3","eventType":"SALE","sku":"X","locationId":"S1","quantity":1,"holdSeconds":5}"#,
        r#"{"eventId":"x-4","eventType":"RESERVATION","sku":"X","locationId":"S1","quantity":1,"correlationId":"web-2","holdSeconds":0}"#,
    ]
    .join("\n");
    let (_, receipt) = post(&url, "application/x-ndjson", body).await;
    assert_eq!(
        (receipt["accepted"].as_u64(), receipt["rejected"].as_u64()),
        (Some(2), Some(2)),
        "{receipt}"
    );
    let reasons: Vec<&str> = receipt["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons[0].starts_with("holdSeconds: only allowed on a RESERVATION with a correlationId"),
        "{receipt}"
    );
    assert!(
        reasons[1].starts_with("holdSeconds: must be a whole number from 1 to"),
        "{receipt}"
    );
    let (_, level) = get(&url, "/v1/stock/X/S1").await;
    assert_eq!(level["reserved"], 6, "{level}");
    let (_, order) = get(&url, "/v1/orders/web-1").await;
    assert_eq!(order["status"], "reserved", "{order}");
    // Expired within a second or so of its own hold, with no other traffic.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, order) = get(&url, "/v1/orders/web-1").await;
        if order["status"] == "expired" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never expired: {order}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Its 3 units went back; the API order's 2 and the free 1 stay.
    let (_, level) = get(&url, "/v1/stock/X/S1").await;
    assert_eq!(
        (level["onHand"].as_i64(), level["reserved"].as_i64()),
        (Some(10), Some(3)),
        "{level}"
    );
    let (_, api) = get(&url, "/v1/orders/o-api").await;
    assert_eq!(api["status"], "reserved", "{api}");
    let (_, check) = get(&url, "/v1/check").await;
    assert_eq!(check["ok"], true, "{check}");
    server.stop().await.unwrap();
}
