//! The catalog in Kafka mode: every instance reads it, it shapes
//! roll-ups and alerts, `--catalog` loads it, price drops are alerts.

use super::*;

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
        let live = client
            .get(format!("{b}/v1/stream?sku=CAT1&kinds=stock,alerts"))
            .send()
            .await
            .unwrap();
        let watching = watch_stream(live, "the changes", |seen| {
            seen.contains(r#""locationId":"SOUTH-1""#)
                && seen.contains("event: alerts")
                && seen.contains(r#""kind":"LOW_STOCK""#)
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
            streams.push(watch_stream(live, "the price drop", |seen| {
                seen.contains(r#""kind":"PRICE_DROP""#)
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

    // A mute is a catalog record too: written on one instance, every
    // instance has it, and so will one that starts with nothing.
    let mute_id = runtime.block_on(async {
        let mute = serde_json::json!({"kind": "LOW_STOCK", "sku": "CAT1", "minutes": 120, "reason": "recount"});
        let (status, muted) = send_json(&client, Method::POST, &format!("{a}/v1/alerts/mutes"), &mute).await;
        assert_eq!(status, 201, "{muted}");
        muted["id"].as_str().unwrap().to_owned()
    });
    let mute_listed = |url: &str, why: &str| {
        let mutes = wait_for(&format!("{url}/v1/alerts/mutes"), why, |m| {
            m["mutes"].as_array().is_some_and(|m| !m.is_empty())
        });
        mutes["mutes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["id"].as_str().unwrap().to_owned(), m["reason"].clone()))
            .collect::<Vec<_>>()
    };
    let want = vec![(mute_id.clone(), serde_json::json!("recount"))];
    assert_eq!(mute_listed(&b, "the mute, on the other instance"), want);
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
    assert_eq!(
        mute_listed(&fresh, "the mute, on an instance that started after it"),
        want
    );
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
        // Acknowledged when written to the canonical topic, applied by the
        // owner a cycle later (a partition just handed over after the
        // killed member's session ended may still be catching up).
        wait_for(
            &format!("{url}/v1/stock/KS1/WEB"),
            "the catalog file's initial stock",
            |level| level["onHand"].as_i64() == Some(12),
        );
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
    // 12 − 5 once the partition is back; a count made again at the
    // restart (written before it answered) would follow within cycles.
    let ks1 = format!("{fresh}/v1/stock/KS1/WEB");
    wait_for(&ks1, "the level the sale left", |level| {
        level["onHand"].as_i64() == Some(7)
    });
    std::thread::sleep(Duration::from_secs(1));
    let (_, level) = get_settled(&ks1);
    assert_eq!(
        level["onHand"].as_i64(),
        Some(7),
        "not counted again: {level}"
    );
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
