//! Orders on a real server: no overselling under concurrent checkouts,
//! idempotency, transitions, and holds that expire on time across restarts.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{event, get, post, send_event, start};

async fn call(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let response = client
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("server reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn level(url: &str, sku: &str, location: &str) -> (i64, i64) {
    let (_, l) = get(url, &format!("/v1/stock/{sku}/{location}")).await;
    (
        l["onHand"].as_i64().unwrap(),
        l["reserved"].as_i64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_buy_the_last_fifty_units_and_exactly_fifty_are_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let client = reqwest::Client::new();
    for round in 0..20 {
        // One line at one level, and a 3-line all_or_nothing order over
        // three SKUs that live in different partitions.
        let skus = [
            format!("LAST-{round}"),
            format!("X-{round}"),
            format!("Y-{round}"),
            format!("Z-{round}"),
        ];
        let stock: Vec<String> = skus
            .iter()
            .map(|s| event(&format!("stock-{s}"), "RECEIPT", s, "S1", 50))
            .collect();
        post(&url, "application/x-ndjson", stock.join("\n")).await;
        let tasks: Vec<_> = (0..200)
            .map(|c| {
                let (client, url, skus) =
                    (client.clone(), format!("{url}/v1/orders"), skus.clone());
                tokio::spawn(async move {
                    let lines = if c % 2 == 0 {
                        json!([{"sku": skus[0], "locationId": "S1", "quantity": 1}])
                    } else {
                        json!([{"sku": skus[1], "locationId": "S1", "quantity": 1},
                               {"sku": skus[2], "locationId": "S1", "quantity": 1},
                               {"sku": skus[3], "locationId": "S1", "quantity": 1}])
                    };
                    call(
                        &client,
                        &url,
                        json!({"orderId": format!("r{round}-c{c}"), "lines": lines}),
                    )
                    .await
                })
            })
            .collect();
        let (mut single, mut multi) = (0, 0);
        for (c, task) in tasks.into_iter().enumerate() {
            let (status, answer) = task.await.unwrap();
            assert_eq!(status, 200, "every client gets a definite answer: {answer}");
            match answer["status"].as_str().unwrap() {
                "reserved" if c % 2 == 0 => single += 1,
                "reserved" => multi += 1,
                "rejected" => {}
                other => panic!("all_or_nothing orders are reserved or rejected, not {other}"),
            }
        }
        assert_eq!((single, multi), (50, 50), "round {round}");
        for sku in &skus {
            assert_eq!(
                level(&url, sku, "S1").await,
                (50, 50),
                "{sku} round {round}"
            );
        }
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_idempotent_and_move_through_their_states() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let client = reqwest::Client::new();
    post(
        &url,
        "application/x-ndjson",
        [
            event("a", "RECEIPT", "A", "S1", 5),
            event("b", "RECEIPT", "A", "S2", 9),
        ]
        .join("\n"),
    )
    .await;

    let order =
        json!({"orderId": "o-1", "lines": [{"sku": "A", "quantity": 12}], "holdSeconds": 600});
    let (status, placed) = call(&client, &format!("{url}/v1/orders"), order.clone()).await;
    assert_eq!(status, 200, "{placed}");
    assert_eq!(placed["status"], "reserved");
    assert_eq!(
        placed["lines"][0]["allocations"],
        json!([
        {"locationId": "S2", "quantity": 9, "fulfilled": false},
        {"locationId": "S1", "quantity": 3, "fulfilled": false}]),
        "sourced from the most available first"
    );
    assert!(placed["expiresAt"].is_string());
    let (_, again) = call(&client, &format!("{url}/v1/orders"), order).await;
    assert_eq!(again, placed, "the same request, the same answer");
    assert_eq!(level(&url, "A", "S2").await, (9, 9));
    let (status, conflict) = call(
        &client,
        &format!("{url}/v1/orders"),
        json!({"orderId": "o-1", "lines": [{"sku": "A", "quantity": 1}]}),
    )
    .await;
    assert_eq!(
        (status, conflict["order"]["status"].clone()),
        (409, json!("reserved"))
    );

    let (_, fulfilled) = call(&client, &format!("{url}/v1/orders/o-1/fulfil"), json!({})).await;
    assert_eq!(fulfilled["status"], "fulfilled");
    assert_eq!(level(&url, "A", "S2").await, (0, 0));
    assert_eq!(level(&url, "A", "S1").await, (2, 0));
    let (status, refused) = call(&client, &format!("{url}/v1/orders/o-1/cancel"), json!({})).await;
    assert_eq!(
        (status, refused["order"]["status"].clone()),
        (409, json!("fulfilled"))
    );

    let (_, partial) = call(
        &client,
        &format!("{url}/v1/orders"),
        json!({"orderId": "o-2", "mode": "partial",
        "lines": [{"sku": "A", "locationId": "S1", "quantity": 5}]}),
    )
    .await;
    assert_eq!(
        (
            partial["status"].clone(),
            partial["lines"][0]["reserved"].clone()
        ),
        (json!("partially_reserved"), json!(2))
    );
    let (_, cancelled) = call(&client, &format!("{url}/v1/orders/o-2/cancel"), json!({})).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(level(&url, "A", "S1").await, (2, 0));
    let (_, listed) = get(&url, "/v1/orders?status=cancelled").await;
    assert_eq!(listed["orders"][0]["orderId"], "o-2");
    let (status, _) = get(&url, "/v1/orders/nope").await;
    assert_eq!(status, 404);
    let (status, bad) = call(
        &client,
        &format!("{url}/v1/orders"),
        json!({"orderId": "o-3", "lines": [{"sku": "A", "quantity": 0}]}),
    )
    .await;
    assert_eq!(
        (status, bad["message"].clone()),
        (400, json!("lines[0].quantity: must be 1 to 1000000000"))
    );
    server.stop().await.unwrap();
}

/// Polls until the order's status is `want`, returning how long it took.
async fn wait_for(url: &str, id: &str, want: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (_, order) = get(url, &format!("/v1/orders/{id}")).await;
        if order["status"] == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "order {id} still {} after {limit:?}",
            order["status"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_expire_on_time_with_no_other_traffic_and_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let client = reqwest::Client::new();
    send_event(&url, "a", "RECEIPT", "H", "S1", 10).await;
    let (_, short) = call(&client, &format!("{url}/v1/orders"), json!({"orderId": "short", "lines": [{"sku": "H", "locationId": "S1", "quantity": 2}], "holdSeconds": 1})).await;
    assert_eq!(short["status"], "reserved");
    let (_, long) = call(&client, &format!("{url}/v1/orders"), json!({"orderId": "long", "lines": [{"sku": "H", "locationId": "S1", "quantity": 3}], "holdSeconds": 3})).await;
    let expires: chrono::DateTime<chrono::Utc> =
        long["expiresAt"].as_str().unwrap().parse().unwrap();
    let waited = wait_for(&url, "short", "expired", Duration::from_secs(3)).await;
    assert!(
        waited <= Duration::from_millis(2000),
        "expired at most 1 s late: {waited:?}"
    );
    assert_eq!(level(&url, "H", "S1").await, (10, 3));
    let (_, history) = get(&url, "/v1/stock/H/S1/history?limit=1").await;
    assert_eq!(history["events"][0]["eventType"], "RELEASE");
    server.stop().await.unwrap();

    // The long hold expires while the server is down; the restarted one
    // releases it at once, and the order book came back from disk.
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let (_, long_now) = get(&url, "/v1/orders/long").await;
    assert!(long_now["status"] == "reserved" || long_now["status"] == "expired");
    wait_for(&url, "long", "expired", Duration::from_secs(5)).await;
    assert!(chrono::Utc::now() >= expires);
    assert_eq!(level(&url, "H", "S1").await, (10, 0));
    server.stop().await.unwrap();

    // A full replay of the log decides the same.
    std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    assert_eq!(level(&url, "H", "S1").await, (10, 0));
    let (_, short_again) = get(&url, "/v1/orders/short").await;
    assert_eq!(short_again["status"], "expired");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_list_sources_lines_without_a_location() {
    let dir = tempfile::tempdir().unwrap();
    let priority = stockflow_core::orders::Sourcing::Priority(vec!["WH".into(), "S1".into()]);
    let server = start(dir.path(), |c| c.sourcing = priority).await;
    let url = server.url();
    let stock = [
        event("a", "RECEIPT", "P", "S1", 50),
        event("b", "RECEIPT", "P", "WH", 3),
        event("c", "RECEIPT", "P", "S9", 99),
    ];
    post(&url, "application/x-ndjson", stock.join("\n")).await;
    let (_, order) = call(
        &reqwest::Client::new(),
        &format!("{url}/v1/orders"),
        json!({"orderId": "p-1", "lines": [{"sku": "P", "quantity": 5}]}),
    )
    .await;
    assert_eq!(
        order["lines"][0]["allocations"],
        json!([
        {"locationId": "WH", "quantity": 3, "fulfilled": false},
        {"locationId": "S1", "quantity": 2, "fulfilled": false}]),
        "the list's order, never S9"
    );
    server.stop().await.unwrap();
}

/// A canonical event for order `order`: RESERVATION, RELEASE or FULFILLMENT
/// with the orderId as its correlationId.
fn order_event(id: &str, kind: &str, order: &str, quantity: i64) -> Value {
    json!({"eventId": id, "eventType": kind, "sku": "OE", "locationId": "S1", "quantity": quantity, "correlationId": order})
}

async fn status_of(url: &str, order: &str) -> String {
    let (_, o) = get(url, &format!("/v1/orders/{order}")).await;
    o["status"].as_str().unwrap_or("missing").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_arrive_as_events_with_their_order_id_as_correlation_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    send_event(&url, "oe-r", "RECEIPT", "OE", "S1", 10).await;
    let reservations = json!([
        order_event("oe-e1", "RESERVATION", "oe-1", 3),
        order_event("oe-e2", "RESERVATION", "oe-1", 20),
        order_event("oe-e3", "RESERVATION", "oe-2", 2),
    ]);
    let (status, receipt) = post(&url, "application/json", reservations.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(receipt["accepted"], 3, "{receipt}");
    assert_eq!(
        receipt["errors"],
        json!([{"index": 1, "eventId": "oe-e2", "reason": "insufficient_stock"}])
    );
    let (_, order) = get(&url, "/v1/orders/oe-1").await;
    assert_eq!(order["status"], "partially_reserved", "{order}");
    assert_eq!(order["lines"].as_array().unwrap().len(), 2);
    assert!(
        order["expiresAt"].is_string(),
        "an order made by events has a hold: {order}"
    );
    assert_eq!(status_of(&url, "oe-2").await, "reserved");
    assert_eq!(level(&url, "OE", "S1").await, (10, 5));

    // A redelivered event is a duplicate, here as anywhere.
    let (_, again) = post(
        &url,
        "application/json",
        order_event("oe-e1", "RESERVATION", "oe-1", 3).to_string(),
    )
    .await;
    assert_eq!(again["duplicates"], 1);
    assert_eq!(level(&url, "OE", "S1").await, (10, 5));

    let (_, receipt) = post(
        &url,
        "application/json",
        order_event("oe-f", "FULFILLMENT", "oe-1", 3).to_string(),
    )
    .await;
    assert_eq!(receipt["errors"], json!([]));
    assert_eq!(status_of(&url, "oe-1").await, "fulfilled");
    let (_, receipt) = post(
        &url,
        "application/json",
        order_event("oe-x", "RELEASE", "oe-2", 2).to_string(),
    )
    .await;
    assert_eq!(receipt["errors"], json!([]));
    assert_eq!(status_of(&url, "oe-2").await, "cancelled");
    assert_eq!(level(&url, "OE", "S1").await, (7, 0));

    // A release for an order that holds nothing here is refused with a
    // reason and changes nothing; a fulfilment is a fact: the goods left,
    // whatever the order held.
    let refused = json!([
        order_event("oe-x2", "RELEASE", "oe-2", 1),
        order_event("oe-x3", "FULFILLMENT", "oe-1", 1),
    ]);
    let (_, receipt) = post(&url, "application/json", refused.to_string()).await;
    assert_eq!(
        receipt["errors"],
        json!([{"index": 0, "eventId": "oe-x2", "reason": "no_hold: order oe-2 holds nothing at OE@S1"}]),
        "{receipt}"
    );
    assert_eq!(level(&url, "OE", "S1").await, (6, 0));
    assert_eq!(status_of(&url, "oe-1").await, "fulfilled");
    // An order accepted elsewhere (not held here) is fulfilled all the
    // same: the units leave the shelf, and no order is made of it.
    let (_, receipt) = post(
        &url,
        "application/json",
        order_event("oe-n", "FULFILLMENT", "web-77", 2).to_string(),
    )
    .await;
    assert_eq!(receipt["errors"], json!([]));
    assert_eq!(level(&url, "OE", "S1").await, (4, 0));
    assert_eq!(status_of(&url, "web-77").await, "missing");
    let (_, check) = get(&url, "/v1/check").await;
    assert_eq!(check["ok"], true, "{check}");
    let (_, before) = get(&url, "/v1/orders?limit=10").await;
    server.stop().await.unwrap();

    // A full replay decides the same, and still knows the events' ids.
    std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let (_, after) = get(&url, "/v1/orders?limit=10").await;
    assert_eq!(after, before);
    assert_eq!(level(&url, "OE", "S1").await, (4, 0));
    let (_, again) = post(
        &url,
        "application/json",
        order_event("oe-e3", "RESERVATION", "oe-2", 2).to_string(),
    )
    .await;
    assert_eq!(again["duplicates"], 1, "{again}");
    server.stop().await.unwrap();
}
