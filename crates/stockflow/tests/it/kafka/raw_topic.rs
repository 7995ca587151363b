//! `--raw-topic TOPIC=FORMAT`: a topic the store systems already write,
//! under their own name and partition count, read in its source format
//! like `inventory.events.raw.{format}`, its poison kept as dead letters
//! that name the topic; and what cannot be mapped refused at start. With
//! it, the item and location totals in Kafka mode: topics and stream.

use super::*;

/// Each level's (sku, store) onHand.
type OnHand = BTreeMap<(String, String), i64>;

/// The store simulator's messages: a restock, then sales, per store and
/// SKU; what each level must end at.
fn store_messages() -> (Vec<(String, String)>, OnHand) {
    let mut lines = Vec::new();
    let mut want = BTreeMap::new();
    for round in 0..30 {
        for store in 0..3 {
            for sku in 0..5 {
                let (store_name, sku_name) = (format!("Shop-{store}"), format!("RAW-{sku}"));
                let (kind, quantity) = match round {
                    0 => ("RESTOCK", 500),
                    _ => ("SALE", 1 + (round + store + sku) % 4),
                };
                *want
                    .entry((sku_name.clone(), store_name.clone()))
                    .or_default() += if kind == "SALE" { -quantity } else { quantity };
                let body = serde_json::json!({"id": round * 100 + store * 10 + sku,
                    "storeName": store_name, "sku": sku_name, "type": kind,
                    "quantity": quantity, "price": 4.5,
                    "timestamp": format!("2026-12-01T09:00:{round:02}")});
                lines.push((sku_name, body.to_string()));
            }
        }
    }
    (lines, want)
}

/// The newest totals message of each key in an SSE text: `items:SKU`,
/// `locations:ID` → its data.
fn newest_totals(seen: &str) -> BTreeMap<String, Value> {
    let mut newest = BTreeMap::new();
    for block in seen.split("\n\n") {
        let field = |name: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let (Some(kind), Some(data)) = (field("event:"), field("data:")) else {
            continue;
        };
        let Ok(data) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        let key = match kind {
            "items" => &data["sku"],
            "locations" => &data["locationId"],
            _ => continue,
        };
        newest.insert(format!("{kind}:{}", key.as_str().unwrap()), data.clone());
    }
    newest
}

/// The roll-up fields of a totals record or a REST answer's `totals`.
fn totals_of(value: &Value) -> [Option<i64>; 5] {
    ["onHand", "reserved", "available", "inTransit", "levels"].map(|f| value[f].as_i64())
}

/// A topic named by its producers, read as the store simulator's format;
/// the SKU and location totals it moves are published, coalesced, to the
/// compacted totals topics and pushed to stream clients.
#[test]
fn a_topic_of_any_name_is_read_in_the_format_it_is_mapped_to() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let topic = "shops.sales";
    let admin: rdkafka::admin::AdminClient<_> = broker.client().create().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let created = runtime
        .block_on(admin.create_topics(
            &[rdkafka::admin::NewTopic::new(
                topic,
                3,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        ))
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let mapping = format!("{topic}=store-item");
    let dirs = scratch("kafka-raw-topic");
    let instance = Instance::with_args(
        &broker,
        "raw-topic",
        &dirs.join("i0"),
        "priority:WEB,BACKUP",
        &["--raw-topic", &mapping],
    );
    wait_settled(&instance.url, 1);
    let (lines, want) = store_messages();
    let mut on_hand: BTreeMap<String, i64> = BTreeMap::new();
    for ((sku, store), n) in &want {
        *on_hand.entry(format!("items:{sku}")).or_default() += n;
        *on_hand.entry(format!("locations:{store}")).or_default() += n;
    }
    let _inside = runtime.enter();
    let live = runtime
        .block_on(reqwest::get(format!(
            "{}/v1/stream?kinds=items,locations",
            instance.url
        )))
        .unwrap();
    let wanted = on_hand.clone();
    let watching = watch_stream(live, "every SKU's and store's final totals", move |seen| {
        let newest = newest_totals(seen);
        wanted
            .iter()
            .all(|(key, n)| newest.get(key).and_then(|t| t["onHand"].as_i64()) == Some(*n))
    });
    let poison = r#"{"storeName": "Shop-0", "sku": "RAW-0", "type": "SHRUG", "quantity": 1}"#;
    let producer = broker.producer();
    produce(&producer, topic, &lines[..lines.len() / 2]);
    produce(&producer, topic, &[("p".into(), poison.into())]);
    produce(&producer, topic, &lines[lines.len() / 2..]);
    for ((sku, store), n) in &want {
        wait_for(
            &format!("{}/v1/stock/{sku}/{store}", instance.url),
            "the store's messages applied",
            |level| level["onHand"].as_i64() == Some(*n),
        );
    }
    // The stream's newest totals are the REST roll-ups, and it carried
    // fewer of them than events (each event moves two keys: one message
    // per event and key would be twice as many).
    let seen = runtime.block_on(watching).unwrap();
    let pushed = seen.matches("event: items").count() + seen.matches("event: locations").count();
    assert!(
        pushed < lines.len(),
        "{pushed} totals messages for {} events",
        lines.len()
    );
    let rest = |key: &str| {
        let (kind, id) = key.split_once(':').unwrap();
        let (status, answer) = get_settled(&format!("{}/v1/{kind}/{id}", instance.url));
        assert_eq!(status, 200, "{answer}");
        totals_of(&answer["totals"])
    };
    for (key, data) in newest_totals(&seen) {
        assert_eq!(totals_of(&data), rest(&key), "{key} on the stream");
    }
    // So are the newest records of the compacted topics, by key.
    for (kind, topic) in [
        ("items", "inventory.item-totals"),
        ("locations", "inventory.location-totals"),
    ] {
        let latest = broker.latest(topic);
        let keys: Vec<&String> = latest.keys().collect();
        let expected: Vec<String> = on_hand
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{kind}:")).map(str::to_owned))
            .collect();
        assert_eq!(keys, expected.iter().collect::<Vec<_>>(), "{topic}");
        for (id, record) in &latest {
            assert_eq!(
                totals_of(record),
                rest(&format!("{kind}:{id}")),
                "{topic} {id}"
            );
        }
    }
    // The poison is a dead letter naming the topic, found by the topic
    // and by its format.
    for source in [topic, "store-item"] {
        let page = wait_for(
            &format!("{}/v1/dead-letters?source={source}", instance.url),
            "the poison kept",
            |page| {
                page["deadLetters"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|l| l["payload"] == poison))
            },
        );
        let letter = page["deadLetters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["payload"] == poison)
            .unwrap();
        assert_eq!(letter["source"], topic, "{letter}");
    }
    // A product's safety stock moves its SKU's totals on the topic too:
    // 3 units held back at each of its 3 shops.
    let before = broker.latest("inventory.item-totals")["RAW-0"]["available"]
        .as_i64()
        .unwrap();
    let (status, product) = runtime.block_on(send_json(
        &reqwest::Client::new(),
        reqwest::Method::PUT,
        &format!("{}/v1/products/RAW-0", instance.url),
        &serde_json::json!({"name": "Raw", "safetyStock": 3}),
    ));
    assert_eq!(status, 200, "{product}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = broker.latest("inventory.item-totals")["RAW-0"]["available"].as_i64();
        if now == Some(before - 9) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RAW-0 available {now:?}, want {}",
            before - 9
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // A mapped topic that does not exist stops the start, named.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args([
            "serve",
            "--kafka",
            &broker.bootstrap,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(broker.kafka_args())
        .arg("--data-dir")
        .arg(dirs.join("i1"))
        .args(["--raw-topic", "shops.typo=store-item"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("shops.typo") && stderr.contains("no such topic"),
        "{stderr}"
    );
}

/// A mapping to no format, to one of stockflow's own topics, or a topic
/// given twice stops the start (exit 1) with what to do, before anything
/// connects to a broker.
#[test]
fn raw_topics_that_cannot_be_read_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (mappings, said) in [
        (&["shops.sales=shrug"][..], "no source format"),
        (&["inventory.dlq=canonical"][..], "stockflow's own"),
        (&["inventory.events.raw.x=canonical"][..], "stockflow's own"),
        (&["__consumer_offsets=canonical"][..], "stockflow's own"),
        (&["a=canonical", "a=store-item"][..], "given twice"),
        (&["no-format"][..], "TOPIC=FORMAT"),
    ] {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stockflow"));
        command
            .args(["serve", "--kafka", "127.0.0.1:9", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path());
        for mapping in mappings {
            command.args(["--raw-topic", mapping]);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            matches!(output.status.code(), Some(1 | 2)),
            "{mappings:?}: {stderr}"
        );
        assert!(stderr.contains(said), "{mappings:?}: {stderr}");
    }
}
