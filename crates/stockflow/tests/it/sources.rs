//! Source dialects on a real server: each built-in format with real-looking
//! messages, redelivery, rejections that name the source field, and a
//! user's own mapping file.

use serde_json::{json, Value};

use crate::{get, start};

const CONTROLLED: &str =
    include_str!("../../../stockflow-service/sources/examples/store-item-controlled.json");

/// POSTs `body` to `path` with `content_type`: (status, JSON answer).
pub(crate) async fn post_source(
    url: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("server reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn on_hand(url: &str, sku: &str, location: &str) -> Value {
    let (status, level) = get(url, &format!("/v1/stock/{sku}/{location}")).await;
    assert_eq!(status, 200, "{sku}@{location} exists");
    level["onHand"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_simulator_controlled_scenario_gives_the_documented_totals() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let path = "/v1/sources/store-item/events";
    let (status, receipt) = post_source(&url, path, "application/json", CONTROLLED).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(
        receipt,
        json!({"accepted": 9, "duplicates": 0, "rejected": 0, "errors": []})
    );

    let (_, store) = get(&url, "/v1/locations/Store_1/stock").await;
    let store_1: Vec<(String, i64)> = store["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["sku"].as_str().unwrap().to_owned(),
                l["onHand"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        store_1,
        [
            ("Item_1".into(), 10),
            ("Item_2".into(), 0),
            ("Item_3".into(), 10)
        ]
    );
    for (item, total) in [("Item_1", 50), ("Item_2", 0), ("Item_3", 10)] {
        let (_, stock) = get(&url, &format!("/v1/stock/{item}")).await;
        assert_eq!(stock["totals"]["onHand"], json!(total), "{item}");
    }

    // A store that sends local time: configured per request.
    let local = r#"{"id":99,"storeName":"Store_9","sku":"Item_9","type":"RESTOCK","quantity":1,"timestamp":"2020-10-13T16:48:35"}"#;
    post_source(
        &url,
        &format!("{path}?assumeOffset=%2B02:00"),
        "application/json",
        local,
    )
    .await;
    let (_, history) = get(&url, "/v1/stock/Item_9/Store_9/history").await;
    assert_eq!(history["events"][0]["timestamp"], "2020-10-13T14:48:35Z");
    let (_, history) = get(&url, "/v1/stock/Item_1/Store_1/history").await;
    assert_eq!(
        history["events"][0]["timestamp"], "2020-10-13T16:48:35.455027Z",
        "UTC unless configured"
    );

    // The simulator redelivers: the derived eventIds make it a no-op.
    let (_, again) = post_source(&url, path, "application/json", CONTROLLED).await;
    assert_eq!(
        (again["accepted"].clone(), again["duplicates"].clone()),
        (json!(0), json!(9))
    );
    assert_eq!(on_hand(&url, "Item_1", "Store_2").await, json!(20));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_name_the_source_field_and_keep_the_raw_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let body = [
        r#"{"id":1,"storeName":"Store_9","sku":"Item_1","type":"RESTOCK","quantity":4,"price":2.5,"timestamp":"2020-10-13T16:48:35"}"#,
        r#"{"id":2,"storeName":"Store_9","sku":"Item_1","type":"RESTOCKED","quantity":4,"timestamp":"2020-10-13T16:48:36"}"#,
        r#"{"id":3,"sku":"Item_1","type":"SALE","quantity":1,"timestamp":"2020-10-13T16:48:37"}"#,
        r#"{"id":4,"storeName":"Store_9","sku":"Item_1","type":"SALE","quantity":0,"timestamp":"2020-10-13T16:48:38"}"#,
        r#"{"id":5,"storeName":"Store_9","sku":"Item_1","type":"SALE","quantity":1,"timestamp":"13/10/2020"}"#,
    ]
    .join("\n");
    let (status, receipt) = post_source(
        &url,
        "/v1/sources/store-item/events",
        "application/x-ndjson",
        &body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(receipt["accepted"], 1);
    let reasons: Vec<(u64, String)> = receipt["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        reasons[0],
        (1, r#"type: "RESTOCKED" is not one of RESTOCK, SALE"#.into())
    );
    assert_eq!(
        reasons[1],
        (
            2,
            "storeName: required (the eventId is derived from it)".into()
        )
    );
    assert_eq!(reasons[2].0, 3);
    assert!(reasons[2].1.starts_with("quantity: "), "{}", reasons[2].1);
    assert_eq!(reasons[3].0, 4);
    assert!(reasons[3].1.starts_with("timestamp: "), "{}", reasons[3].1);
    assert_eq!(on_hand(&url, "Item_1", "Store_9").await, json!(4));

    let (_, letters) = get(&url, "/v1/dead-letters").await;
    let letters = letters["deadLetters"].as_array().unwrap();
    assert_eq!(letters.len(), 4);
    assert_eq!(letters[0]["source"], "source:store-item");
    assert_eq!(letters[0]["payload"], body.lines().nth(1).unwrap());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_events_map_one_to_one_and_a_contradicting_sign_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let event = |id: &str, kind: &str, delta: i64| {
        json!({"eventId": id, "eventType": kind, "sku": "SKU-1", "locationId": "warehouse-001",
               "quantityDelta": delta, "sourceSystem": "WMS", "timestamp": "2026-11-01T10:00:00Z",
               "correlationId": "po-7", "userId": "u1", "reason": "cycle"})
    };
    let body = json!([
        event("i1", "RECEIPT", 20),
        event("i2", "SALE", -3),
        event("i3", "SALE", 3),
        event("i4", "ADJUSTMENT", -2),
        event("i5", "ADJUSTMENT", 0),
        event("i6", "RESERVATION", -4),
        event("i7", "RELEASE", 1),
        event("i8", "COUNT", 5),
    ]);
    let (status, receipt) = post_source(
        &url,
        "/v1/sources/inventory-event/events",
        "application/json",
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(receipt["accepted"], 5, "{receipt}");
    let errors = receipt["errors"].as_array().unwrap();
    assert_eq!(
        errors[0],
        json!({"index": 2, "reason": "quantityDelta: a SALE must have a negative quantityDelta, got 3"})
    );
    assert_eq!(errors[1]["index"], 4);
    assert!(
        errors[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("quantityDelta: "),
        "the canonical reason is told in source terms: {}",
        errors[1]["reason"]
    );
    assert_eq!(errors[1]["eventId"], "i5");
    assert_eq!(errors[2]["index"], 7);
    assert!(errors[2]["reason"].as_str().unwrap().contains("COUNT"));
    let (_, level) = get(&url, "/v1/stock/SKU-1/warehouse-001").await;
    assert_eq!(
        (level["onHand"].clone(), level["reserved"].clone()),
        (json!(15), json!(3))
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_deduct_at_online_or_the_given_location_once_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let seed = [
        crate::event("s1", "RECEIPT", "P-1", "ONLINE", 10),
        crate::event("s2", "RECEIPT", "P-2", "ONLINE", 10),
        crate::event("s3", "RECEIPT", "P-1", "STORE-7", 10),
    ]
    .join("\n");
    crate::post(&url, "application/x-ndjson", seed).await;

    let lines = r#"{"orderId":"o-1","productId":"P-1","quantity":2,"timestamp":"2026-11-01T12:00:00"}
{"orderId":"o-1","productId":"P-2","quantity":1,"timestamp":"2026-11-01T12:00:00"}"#;
    let path = "/v1/sources/order-line/events";
    let (_, receipt) = post_source(&url, path, "application/x-ndjson", lines).await;
    assert_eq!(receipt["accepted"], 2);
    let (_, receipt) = post_source(&url, path, "application/x-ndjson", lines).await;
    assert_eq!(receipt["duplicates"], 2, "an order line counts once");
    let store_line = r#"{"orderId":"o-2","productId":"P-1","quantity":4}"#;
    post_source(
        &url,
        &format!("{path}?locationId=STORE-7"),
        "application/json",
        store_line,
    )
    .await;
    assert_eq!(on_hand(&url, "P-1", "ONLINE").await, json!(8));
    assert_eq!(on_hand(&url, "P-2", "ONLINE").await, json!(9));
    assert_eq!(on_hand(&url, "P-1", "STORE-7").await, json!(6));

    let order = json!({"id": "ord-9", "orderDate": "2026-11-01T13:00:00Z",
        "orderItems": [{"skuCode": "P-1", "quantity": 3, "price": 9.5}, {"skuCode": "P-2", "quantity": 5}]});
    let placed = "/v1/sources/order-placed/events";
    let (_, receipt) = post_source(&url, placed, "application/json", &order.to_string()).await;
    assert_eq!(receipt["accepted"], 2);
    let (_, receipt) = post_source(&url, placed, "application/json", &order.to_string()).await;
    assert_eq!(receipt["duplicates"], 2);
    assert_eq!(on_hand(&url, "P-1", "ONLINE").await, json!(5));
    assert_eq!(on_hand(&url, "P-2", "ONLINE").await, json!(4));
    let cancelled = "/v1/sources/order-cancelled/events";
    let (_, receipt) = post_source(&url, cancelled, "application/json", &order.to_string()).await;
    assert_eq!(receipt["accepted"], 2);
    assert_eq!(on_hand(&url, "P-1", "ONLINE").await, json!(8));
    assert_eq!(on_hand(&url, "P-2", "ONLINE").await, json!(9));

    let broken =
        json!({"id": "ord-10", "orderItems": [{"skuCode": "P-1", "quantity": 1}, {"quantity": 1}]});
    let (_, receipt) = post_source(&url, placed, "application/json", &broken.to_string()).await;
    assert_eq!(receipt["accepted"], 1);
    assert_eq!(
        receipt["errors"][0]["reason"],
        "orderItems[1].skuCode: required"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_files_and_erp_snapshots_become_events_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let bulk = include_str!("../../../stockflow-service/sources/examples/bulk.csv");
    let (status, receipt) = post_source(&url, "/v1/sources/csv/events", "text/csv", bulk).await;
    assert_eq!(
        (status, receipt["accepted"].clone()),
        (200, json!(3)),
        "{receipt}"
    );
    assert_eq!(on_hand(&url, "SKU-00001", "STORE-002").await, json!(23));

    let bad = "sku,locationId,eventType,quantity,eventId\nA,L,RECEIPT,1.5,x1\nA,L,SALE,,x2\n";
    let (_, receipt) = post_source(&url, "/v1/sources/csv/events", "text/csv", bad).await;
    assert_eq!(receipt["rejected"], 2);
    assert_eq!(
        receipt["errors"][0]["reason"],
        r#"quantity: "1.5" is not a whole number"#
    );
    assert_eq!(receipt["errors"][1]["index"], 1);
    let (_, letters) = get(&url, "/v1/dead-letters").await;
    assert_eq!(letters["deadLetters"][0]["payload"], "A,L,RECEIPT,1.5,x1");

    let snapshot = include_str!("../../../stockflow-service/sources/examples/erp-snapshot.csv");
    let path = "/v1/sources/erp-snapshot/events";
    let (_, receipt) = post_source(&url, path, "text/csv", snapshot).await;
    assert_eq!(receipt["accepted"], 3, "{receipt}");
    let (_, receipt) = post_source(&url, path, "text/csv", snapshot).await;
    assert_eq!(
        receipt["duplicates"], 3,
        "the same snapshot twice changes nothing"
    );
    assert_eq!(on_hand(&url, "SKU-00001", "STORE-001").await, json!(42));
    assert_eq!(on_hand(&url, "SKU-00001", "WH-EAST").await, json!(1200));
    assert_eq!(on_hand(&url, "SKU-00002", "STORE-001").await, json!(0));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_are_listed_and_a_users_mapping_file_adds_one() {
    let mappings = tempfile::tempdir().unwrap();
    std::fs::write(
        mappings.path().join("pos.json"),
        r#"{"format": "pos-v2", "fields": {
            "eventId": {"template": "pos:{till}:{seq}"},
            "eventType": {"path": "kind", "map": {"sold": "SALE", "refund": "RETURN"}},
            "sku": {"path": "line.ean"}, "locationId": {"path": "shop"},
            "quantity": {"path": "line.units"}, "timestamp": {"path": "at", "assumeOffset": "+01:00"}}}"#,
    )
    .unwrap();
    let sources = stockflow_service::sources::Sources::with_dir(mappings.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c.sources = sources).await;
    let url = server.url();

    let (_, listed) = get(&url, "/v1/sources").await;
    let names: Vec<&str> = listed["formats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["format"].as_str().unwrap())
        .collect();
    for expected in [
        "store-item",
        "inventory-event",
        "order-line",
        "order-placed",
        "order-cancelled",
        "csv",
        "erp-snapshot",
        "pos-v2",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let sale = r#"{"till":3,"seq":77,"kind":"refund","shop":"S-1","line":{"ean":"4006381333931","units":2},"at":"2026-11-01T10:00:00"}"#;
    let (_, receipt) =
        post_source(&url, "/v1/sources/pos-v2/events", "application/json", sale).await;
    assert_eq!(receipt["accepted"], 1, "{receipt}");
    let (_, level) = get(&url, "/v1/stock/4006381333931/S-1").await;
    assert_eq!(level["onHand"], 2);

    let (status, error) =
        post_source(&url, "/v1/sources/nope/events", "application/json", sale).await;
    assert_eq!(status, 404);
    assert!(error["message"].as_str().unwrap().contains("store-item"));
    server.stop().await.unwrap();

    std::fs::write(mappings.path().join("broken.json"), r#"{"format": "b", "fields": {"eventId": {"path": "id"}, "eventType": {"const": "SALE"}, "sku": {"path": "s"}, "locationId": {"path": "l"}, "quantity": {"pth": "q"}}}"#).unwrap();
    let error = stockflow_service::sources::Sources::with_dir(mappings.path()).unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("broken.json") && message.contains("pth"),
        "{message}"
    );
}
