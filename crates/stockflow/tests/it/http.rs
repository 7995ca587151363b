//! The HTTP contract, against a real server on a real socket.

use serde_json::json;

use crate::{event, get, post, send_event, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_form_is_ingested_and_visible_to_the_next_get() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let (status, receipt) = post(
        &url,
        "application/json",
        event("a", "RECEIPT", "SKU-1", "S1", 10),
    )
    .await;
    assert_eq!(
        (status, receipt),
        (
            200,
            json!({"accepted": 1, "duplicates": 0, "rejected": 0, "errors": []})
        )
    );
    let array = format!(
        "[{},{}]",
        event("b", "SALE", "SKU-1", "S1", 3),
        event("c", "RECEIPT", "SKU-1", "S2", 5)
    );
    assert_eq!(post(&url, "application/json", array).await.1["accepted"], 2);
    let lines = format!(
        "{}\n{}\n",
        event("d", "RETURN", "SKU-1", "S1", 1),
        event("e", "RECEIPT", "SKU-2", "S1", 4)
    );
    assert_eq!(
        post(&url, "application/x-ndjson", lines).await.1["accepted"],
        2
    );

    let (status, level) = get(&url, "/v1/stock/SKU-1/S1").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            level["sku"].clone(),
            level["locationId"].clone(),
            level["onHand"].clone(),
            level["available"].clone(),
            level["version"].clone()
        ),
        (json!("SKU-1"), json!("S1"), json!(8), json!(8), json!(3))
    );
    for field in ["reserved", "inTransit", "updatedAt"] {
        assert!(level.get(field).is_some(), "level has {field}");
    }
    let (_, sku) = get(&url, "/v1/stock/SKU-1").await;
    assert_eq!(
        sku["totals"],
        json!({"onHand": 13, "reserved": 0, "available": 13, "inTransit": 0})
    );
    let locations: Vec<&str> = sku["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["locationId"].as_str().unwrap())
        .collect();
    assert_eq!(locations, ["S1", "S2"]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_rejections_and_insufficient_stock_are_reported_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    send_event(&url, "r1", "RECEIPT", "A", "S", 2).await;
    let bad = r#"{"eventId":"bad-1","eventType":"SALE","sku":"A","locationId":"S","quantity":"5"}"#;
    let body = format!(
        "[{},{},{},{}]",
        event("r1", "RECEIPT", "A", "S", 2),
        bad,
        event("h1", "RESERVATION", "A", "S", 3),
        event("h2", "RESERVATION", "A", "S", 2)
    );
    let (status, receipt) = post(&url, "application/json", body).await;
    assert_eq!(status, 200);
    assert_eq!(
        receipt,
        json!({"accepted": 2, "duplicates": 1, "rejected": 1, "errors": [
            {"index": 1, "eventId": "bad-1", "reason": "quantity: must be a JSON integer, not a string"},
            {"index": 2, "eventId": "h1", "reason": "insufficient_stock"},
        ]})
    );
    let (_, level) = get(&url, "/v1/stock/A/S").await;
    assert_eq!(
        (
            level["onHand"].clone(),
            level["reserved"].clone(),
            level["available"].clone()
        ),
        (json!(2), json!(2), json!(0))
    );

    // The rejected event is kept verbatim; its eventId was not consumed.
    let (_, letters) = get(&url, "/v1/dead-letters").await;
    let letter = &letters["deadLetters"][0];
    assert_eq!(
        (letter["payload"].as_str().unwrap(), letter["index"].clone()),
        (bad, json!(1))
    );
    let fixed = r#"{"eventId":"bad-1","eventType":"SALE","sku":"A","locationId":"S","quantity":1}"#;
    assert_eq!(post(&url, "application/json", fixed).await.1["accepted"], 1);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_unparseable_bodies_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c.body_bytes_max = 2_000).await;
    let url = server.url();
    let big: Vec<String> = (0..40)
        .map(|i| event(&format!("e{i}"), "RECEIPT", "A", "S", 1))
        .collect();
    let (status, error) = post(&url, "application/json", format!("[{}]", big.join(","))).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let (status, error) = post(&url, "application/json", "{\"eventId\": oops").await;
    assert_eq!((status, error["code"].as_str()), (400, Some("bad_request")));
    assert!(error["message"]
        .as_str()
        .unwrap()
        .starts_with("body is not valid JSON"));
    let (_, letters) = get(&url, "/v1/dead-letters").await;
    assert_eq!(
        letters["deadLetters"][0]["payload"], "{\"eventId\": oops",
        "refused bodies are kept too"
    );
    assert_eq!(
        get(&url, "/v1/stock/A/S").await.0,
        404,
        "nothing was applied"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_things_are_404_with_code_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    for path in [
        "/v1/stock/nope/nowhere",
        "/v1/stock/nope",
        "/v1/locations/nowhere/stock",
        "/v1/nothing",
    ] {
        let (status, body) = get(&url, path).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(get(&url, "/v1/locations/x/stock?limit=0").await.0, 400);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_pages_through_every_sku_in_order_across_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let events: Vec<String> = (0..57)
        .map(|i| {
            event(
                &format!("e{i}"),
                "RECEIPT",
                &format!("SKU-{i:03}"),
                "STORE",
                i + 1,
            )
        })
        .collect();
    post(&url, "application/x-ndjson", events.join("\n")).await;
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (_, page) = get(&url, &format!("/v1/locations/STORE/stock?limit=10{after}")).await;
        seen.extend(
            page["levels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["sku"].as_str().unwrap().to_owned()),
        );
        match page["nextAfter"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..57).map(|i| format!("SKU-{i:03}")).collect();
    assert_eq!(seen, expected);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_dead_letters_and_dedup_survive_a_restart_via_checkpoint_and_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    // Checkpoint every 5 events, so the restart loads a checkpoint and replays a tail.
    let server = start(dir.path(), |c| c.checkpoint_events = 5).await;
    let url = server.url();
    for i in 0..12 {
        send_event(
            &url,
            &format!("e{i}"),
            "RECEIPT",
            "A",
            &format!("S{}", i % 3),
            1,
        )
        .await;
    }
    post(
        &url,
        "application/json",
        r#"{"eventId":"x","eventType":"NOPE","sku":"A","locationId":"S0","quantity":1}"#,
    )
    .await;
    let out = r#"{"eventId":"t","eventType":"TRANSFER_OUT","sku":"A","locationId":"S0","toLocationId":"S9","quantity":2}"#;
    post(&url, "application/json", out).await;
    let (_, before) = get(&url, "/v1/stock/A").await;
    server.stop().await.unwrap();
    assert!(dir.path().join("checkpoints").read_dir().unwrap().count() >= 1);

    let server = start(dir.path(), |c| c.checkpoint_events = 5).await;
    let url = server.url();
    assert_eq!(get(&url, "/v1/stock/A").await.1, before);
    assert_eq!(get(&url, "/v1/stock/A/S9").await.1["inTransit"], 2);
    let (_, receipt) = post(
        &url,
        "application/json",
        event("e3", "RECEIPT", "A", "S0", 1),
    )
    .await;
    assert_eq!(receipt["duplicates"], 1, "dedup survives the restart");
    assert_eq!(
        get(&url, "/v1/dead-letters").await.1["deadLetters"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_the_openapi_document_describe_the_running_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    send_event(&url, "m", "RECEIPT", "A", "S", 1).await;
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "stockflow_events_accepted_total",
        "stockflow_commit_latency_seconds_bucket",
        "stockflow_commit_batch_events_bucket",
        "stockflow_levels",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}:\n{metrics}");
    }
    let (status, doc) = get(&url, "/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for route in [
        "/v1/events",
        "/v1/stock/{sku}/{locationId}",
        "/v1/stock/{sku}",
        "/v1/stock/{sku}/{locationId}/history",
        "/v1/locations/{locationId}/stock",
        "/v1/dead-letters",
        "/v1/dead-letters/{id}",
        "/v1/dead-letters/{id}/replay",
        "/v1/sources",
        "/v1/sources/{format}/events",
        "/v1/products",
        "/v1/products/{sku}",
        "/v1/locations",
        "/v1/locations/{locationId}",
        "/v1/items/{sku}",
        "/v1/regions/{region}/stock/{sku}",
        "/v1/orders",
        "/v1/orders/{id}",
        "/v1/orders/{id}/fulfil",
        "/v1/orders/{id}/cancel",
        "/v1/orders/{id}/extend",
        "/v1/check",
        "/v1/alerts",
        "/v1/stream",
        "/v1/activity",
        "/v1/simulator",
        "/v1/simulator/start",
        "/v1/simulator/stop",
        "/v1/simulator/send",
        "/v1/simulator/scenario",
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.iter().any(|p| *p == route), "openapi lacks {route}");
    }
    // OpenAPI has no words for a WebSocket's frames: the stream's
    // operation describes /v1/ws.
    let stream = doc["paths"]["/v1/stream"]["get"]["description"]
        .as_str()
        .unwrap();
    assert!(stream.contains("GET /v1/ws"), "{stream}");
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(get(&url, probe).await.0, 200);
    }
    server.stop().await.unwrap();
}

/// The operations the router serves and those the served document lists
/// are the same set: a route added without its description, or a
/// description left behind by a removed route, fails here. (Schemathesis
/// then holds each described operation to what it answers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_exactly_the_operations_the_router_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let (status, doc) = get(&server.url(), "/v1/openapi.json").await;
    assert_eq!(status, 200);
    let mut described = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if [
                "get", "put", "post", "delete", "patch", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                described.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let operations = stockflow_http::operations::<stockflow_embedded::Embedded>();
    let routed: std::collections::BTreeSet<(String, String)> = operations
        .iter()
        .filter(|o| o.documented)
        .map(|o| (o.method.to_string(), o.path.to_owned()))
        .collect();
    let undescribed: Vec<_> = routed.difference(&described).collect();
    let unrouted: Vec<_> = described.difference(&routed).collect();
    assert!(
        undescribed.is_empty(),
        "routed but not in the document: {undescribed:?}"
    );
    assert!(
        unrouted.is_empty(),
        "in the document but not routed: {unrouted:?}"
    );
    assert!(routed.len() >= 40, "{routed:?}");
    // What the document leaves to prose is served all the same.
    for operation in operations.iter().filter(|o| !o.documented) {
        let path = operation.path.replace("{*path}", "app.js");
        let answer = reqwest::get(format!("{}{path}", server.url()))
            .await
            .unwrap();
        assert_ne!(answer.status(), 404, "{path}");
    }
    // Cluster-internal endpoints are never in the public document.
    assert!(described
        .iter()
        .all(|(_, path)| !path.contains("/internal")));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_retry_after_and_refused_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| {
        c.ingest_queue_max = 1;
        c.ingest_in_flight_max = 3;
    })
    .await;
    let url = server.url();
    let client = reqwest::Client::new();
    let per_request = 5_000;
    let requests = (0..48).map(|r| {
        let body: Vec<String> = (0..per_request)
            .map(|i| event(&format!("r{r}-{i}"), "RECEIPT", "SKU-O", "S1", 1))
            .collect();
        let request = client
            .post(format!("{url}/v1/events"))
            .header("content-type", "application/x-ndjson")
            .body(body.join("\n"));
        tokio::spawn(async move {
            request
                .send()
                .await
                .expect("an answer, not a closed connection")
        })
    });
    let mut answered = std::collections::BTreeMap::<u16, u64>::new();
    for task in requests.collect::<Vec<_>>() {
        let response = task.await.unwrap();
        let status = response.status().as_u16();
        if status != 200 {
            assert!(matches!(status, 429 | 503), "overload answers {status}");
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(retry >= 1, "Retry-After says when to come back");
            let error: serde_json::Value = response.json().await.unwrap();
            assert!(error["message"].as_str().unwrap().contains("retry"));
            let code = if status == 429 {
                "in_flight_full"
            } else {
                "queue_full"
            };
            assert_eq!(error["code"], code, "{error}");
        }
        *answered.entry(status).or_default() += 1;
    }
    let ok = answered.get(&200).copied().unwrap_or(0);
    assert!(ok > 0, "some requests got through: {answered:?}");
    assert!(
        ok < 48,
        "a tiny queue must refuse some of 48 at once: {answered:?}"
    );
    // Exactly the acknowledged requests count: refused ones changed nothing.
    let (_, level) = get(&url, "/v1/stock/SKU-O/S1").await;
    assert_eq!(level["onHand"], json!(ok * per_request), "{answered:?}");
    server.stop().await.unwrap();
}
