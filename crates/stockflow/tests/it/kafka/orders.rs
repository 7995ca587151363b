//! Orders in Kafka mode: sagas across partitions that never oversell,
//! through rebalances and kills, holds that expire, sourcing.

use super::*;

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
    let told = runtime
        .block_on(within_minutes(5, claims))
        .expect("the claims finish in five minutes")
        .unwrap();
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

/// `work`, or `Err` if it takes longer than `minutes`: a race that never
/// ends fails the test with a name instead of holding up the suite.
async fn within_minutes<F: std::future::Future>(
    minutes: u64,
    work: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(60 * minutes), work).await
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
    let (answers, mut took): (Vec<Value>, Vec<Duration>) = runtime
        .block_on(within_minutes(5, storm))
        .expect("the storm's orders finish in five minutes")
        .unwrap()
        .into_iter()
        .unzip();
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
        // The answer comes once the levels have the units back, as in the
        // embedded mode: read at once, through another instance.
        let level_now = |url: String, sku: String| {
            let client = client.clone();
            async move {
                let level: serde_json::Value = client.get(format!("{url}/v1/stock/{sku}/WEB")).send().await.unwrap().json().await.unwrap();
                (level["onHand"].as_i64().unwrap(), level["reserved"].as_i64().unwrap())
            }
        };
        for sku in three {
            assert_eq!(level_now(urls[1].clone(), sku.to_string()).await, (UNITS, held - 1), "{sku} right after the cancel");
        }
        let (status, refused) = definite(&client, &urls, 0, &format!("/v1/orders/{a}/fulfil"), &serde_json::json!({})).await;
        assert_eq!(status, 409, "fulfilling a cancelled order: {refused}");
        // Fulfil ships the units: gone from the levels when it answers.
        if let Some(b) = b {
            let (status, order) = definite(&client, &urls, 1, &format!("/v1/orders/{b}/fulfil"), &serde_json::json!({})).await;
            assert_eq!((status, order_status(&order)), (200, "fulfilled"), "{order}");
            for sku in three {
                assert_eq!(level_now(urls[0].clone(), sku.to_string()).await, (UNITS - 1, held - 2), "{sku} right after the fulfil");
            }
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
    // And so they stay.
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
