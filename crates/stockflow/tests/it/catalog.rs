//! Products, locations and roll-ups on a real server, through restarts.

use serde_json::{json, Value};

use crate::{event, get, post, send_event, start};

async fn send(method: reqwest::Method, url: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method, url)
        .json(&body)
        .send()
        .await
        .expect("server reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn put(url: &str, path: &str, body: Value) -> (u16, Value) {
    send(reqwest::Method::PUT, &format!("{url}{path}"), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_are_upserted_searched_and_keep_their_price_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let (status, product) = put(
        &url,
        "/v1/products/SKU-1",
        json!({"name": "Trail Shoe", "category": "Footwear", "price": 89.99, "brand": "Acme"}),
    )
    .await;
    assert_eq!(status, 200, "{product}");
    assert_eq!(product["price"], json!(89.99));
    assert_eq!(product["currency"], "USD");
    assert_eq!(
        product["attributes"]["brand"], "Acme",
        "unknown fields are kept as attributes"
    );
    put(
        &url,
        "/v1/products/SKU-1",
        json!({"name": "Trail Shoe", "category": "Footwear", "price": 69.5}),
    )
    .await;
    let (_, product) = get(&url, "/v1/products/SKU-1").await;
    let prices: Vec<&Value> = product["priceHistory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["price"])
        .collect();
    assert_eq!(
        prices,
        [&json!(89.99), &json!(69.5)],
        "a price change is kept in history"
    );

    let bulk = (2..=6)
        .map(|i| json!({"sku": format!("SKU-{i}"), "name": format!("Sock {i}"), "category": "Socks", "price": i}).to_string())
        .chain([json!({"sku": "SKU-X", "name": "Bad", "price": 1.234}).to_string()])
        .collect::<Vec<_>>()
        .join("\n");
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/products"))
        .header("content-type", "application/x-ndjson")
        .body(bulk)
        .send()
        .await
        .unwrap();
    let receipt: Value = response.json().await.unwrap();
    assert_eq!(
        (receipt["accepted"].clone(), receipt["rejected"].clone()),
        (json!(5), json!(1))
    );
    assert_eq!(
        receipt["errors"][0],
        json!({"index": 5, "reason": "price: 1.234 is not a non-negative amount with at most 2 decimals"})
    );
    let (_, letters) = get(&url, "/v1/dead-letters").await;
    assert_eq!(letters["deadLetters"][0]["source"], "http:/v1/products");

    let (_, page) = get(&url, "/v1/products?category=socks&limit=2").await;
    let skus: Vec<&str> = page["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["SKU-2", "SKU-3"]);
    let (_, page) = get(
        &url,
        &format!(
            "/v1/products?category=socks&limit=2&after={}",
            page["nextAfter"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(page["products"][0]["sku"], "SKU-4");
    let (_, found) = get(&url, "/v1/products?q=trail").await;
    assert_eq!(found["products"].as_array().unwrap().len(), 1);

    let (status, error) = put(&url, "/v1/products/SKU-9", json!({"category": "x"})).await;
    assert_eq!(
        (status, error["message"].clone()),
        (400, json!("name: required"))
    );
    server.stop().await.unwrap();
}

async fn item(url: &str, sku: &str) -> Value {
    let (status, item) = get(url, &format!("/v1/items/{sku}")).await;
    assert_eq!(status, 200, "{item}");
    item
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roll_ups_by_region_type_and_location_follow_events_catalog_changes_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let locations = json!([
        {"locationId": "S1", "name": "Downtown", "type": "store", "region": "West", "channel": "retail", "city": "Portland"},
        {"locationId": "S2", "type": "store", "region": "West", "channel": "retail"},
        {"locationId": "S3", "type": "store", "region": "East", "channel": "retail"},
        {"locationId": "W1", "type": "warehouse", "region": "East"},
        {"locationId": "W2", "type": "castle"}
    ]);
    let (_, receipt) = send(
        reqwest::Method::POST,
        &format!("{url}/v1/locations"),
        locations,
    )
    .await;
    assert_eq!(
        (receipt["accepted"].clone(), receipt["rejected"].clone()),
        (json!(4), json!(1))
    );
    put(
        &url,
        "/v1/products/P",
        json!({"name": "Parka", "lowStockThreshold": 5, "safetyStock": 2}),
    )
    .await;
    let events = [
        event("e1", "RECEIPT", "P", "S1", 10),
        event("e2", "RECEIPT", "P", "S2", 4),
        event("e3", "RECEIPT", "P", "S3", 7),
        event("e4", "RECEIPT", "P", "W1", 100),
        event("e5", "RECEIPT", "P", "POPUP-9", 3),
        event("e6", "RESERVATION", "P", "S1", 3),
        event("e7", "RECEIPT", "Q", "S1", 1),
    ];
    post(&url, "application/x-ndjson", events.join("\n")).await;

    let it = item(&url, "P").await;
    assert_eq!(it["totals"]["onHand"], 124);
    assert_eq!(it["totals"]["reserved"], 3);
    // available honours safety stock 2 per level: 5 + 2 + 5 + 98 + 1
    assert_eq!(it["totals"]["available"], 111);
    assert_eq!(it["byRegion"]["West"]["onHand"], 14);
    assert_eq!(it["byRegion"]["East"]["onHand"], 107);
    assert_eq!(it["byType"]["store"]["levels"], 3);
    assert_eq!(
        it["byType"]["unknown"]["onHand"], 3,
        "POPUP-9 is only known from events"
    );
    assert_eq!(it["byChannel"]["retail"]["onHand"], 21);
    // S2 (available 2) and POPUP-9 (available 1) are below the threshold of 5.
    assert_eq!(it["totals"]["belowThreshold"], 2);

    let (_, level) = get(&url, "/v1/stock/P/S1").await;
    assert_eq!(
        (level["available"].clone(), level["safetyStock"].clone()),
        (json!(5), json!(2))
    );
    let (_, s1) = get(&url, "/v1/locations/S1").await;
    assert_eq!(s1["name"], "Downtown");
    assert_eq!(s1["totals"]["levels"], 2, "two SKUs at S1");
    assert_eq!(s1["totals"]["belowThreshold"], 1, "Q has 1 < 10");
    let (_, popup) = get(&url, "/v1/locations/POPUP-9").await;
    assert_eq!(popup["type"], "unknown");
    let (_, listed) = get(&url, "/v1/locations?type=unknown").await;
    assert_eq!(listed["locations"][0]["locationId"], "POPUP-9");

    // S2 moves to the East: its stock moves with it.
    put(
        &url,
        "/v1/locations/S2",
        json!({"type": "store", "region": "East", "channel": "retail"}),
    )
    .await;
    let it = item(&url, "P").await;
    assert_eq!(
        (
            it["byRegion"]["West"]["onHand"].clone(),
            it["byRegion"]["East"]["onHand"].clone()
        ),
        (json!(10), json!(111))
    );
    let (_, east) = get(&url, "/v1/regions/East/stock/P").await;
    assert_eq!(east["totals"]["onHand"], 111);
    // The safety stock goes: available grows by 2 per level.
    put(
        &url,
        "/v1/products/P",
        json!({"name": "Parka", "lowStockThreshold": 5}),
    )
    .await;
    let before_restart = item(&url, "P").await;
    assert_eq!(before_restart["totals"]["available"], 121);
    server.stop().await.unwrap();

    // Through the shutdown checkpoint, then through a replay of the whole log.
    for replay_everything in [false, true] {
        if replay_everything {
            std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
        }
        let server = start(dir.path(), |_| {}).await;
        let after = item(&server.url(), "P").await;
        assert_eq!(
            after["totals"], before_restart["totals"],
            "replay={replay_everything}"
        );
        assert_eq!(after["byRegion"], before_restart["byRegion"]);
        assert_eq!(after["byType"], before_restart["byType"]);
        assert_eq!(
            after["product"]["priceHistory"],
            before_restart["product"]["priceHistory"]
        );
        server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kartshoppe_catalog_file_loads_products_and_initial_stock_once() {
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("products.json");
    let products: Vec<Value> = (1..=3)
        .map(|i| {
            json!({"productId": format!("PROD_{i:04}"), "name": format!("Gadget {i}"),
                   "description": "A useful gadget", "category": "Electronics", "brand": "TechPro",
                   "price": 19.99 + f64::from(i), "inventory": i * 10, "imageUrl": "/img/g.png"})
        })
        .collect();
    std::fs::write(&file, serde_json::to_string_pretty(&products).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let with_catalog = |c: &mut stockflow_service::config::Config| {
        c.catalog_file = Some(file.clone());
        c.catalog_location = "WEB".into();
    };
    let server = start(dir.path(), with_catalog).await;
    let url = server.url();
    let (_, product) = get(&url, "/v1/products/PROD_0002").await;
    assert_eq!(product["name"], "Gadget 2");
    assert_eq!(product["attributes"]["brand"], "TechPro");
    assert_eq!(product["stock"]["onHand"], 20);
    send_event(&url, "sold", "SALE", "PROD_0002", "WEB", 5).await;
    server.stop().await.unwrap();

    // Starting again with the same file neither recounts nor resets.
    let server = start(dir.path(), with_catalog).await;
    let (_, level) = get(&server.url(), "/v1/stock/PROD_0002/WEB").await;
    assert_eq!(level["onHand"], 15);
    let (_, product) = get(&server.url(), "/v1/products/PROD_0002").await;
    assert_eq!(product["priceHistory"].as_array().unwrap().len(), 1);
    server.stop().await.unwrap();
}
