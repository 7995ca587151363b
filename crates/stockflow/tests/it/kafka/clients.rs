//! What people and other programs meet: the start-up refusal without
//! topics, a Python client of the topics, the web UI, webhooks.

use super::*;

#[test]
fn an_instance_refuses_to_start_without_its_topics_and_says_what_to_run() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    let dir = scratch("kafka-no-topics");
    let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args([
            "serve",
            "--kafka",
            &broker.bootstrap,
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!output.status.success(), "started without its topics");
    let said = String::from_utf8_lossy(&output.stderr);
    // A broker that creates topics when asked about them makes them with
    // its default partition count: refused as well, saying why.
    assert!(
        said.contains("stockflow topics create") || said.contains("partitions, stockflow expects"),
        "{said}"
    );

    // Under another prefix (a second deployment, or a new version beside
    // an old one): its own topics, made and used by that name.
    let created = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["topics", "create", "--kafka", &broker.bootstrap])
        .args(["--topic-prefix", "shop2"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&created.stdout);
    assert!(created.status.success(), "{listed}");
    assert!(listed.contains("shop2.events.canonical"), "{listed}");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args([
            "serve",
            "--kafka",
            &broker.bootstrap,
            "--topic-prefix",
            "shop2",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.join("shop2"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_settled(&url, 1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let event = serde_json::json!({"eventId": "p1", "eventType": "RECEIPT", "sku": "P", "locationId": "L", "quantity": 3});
    let (status, receipt) = runtime.block_on(send_json(
        &reqwest::Client::new(),
        reqwest::Method::POST,
        &format!("{url}/v1/events?wait=applied"),
        &event,
    ));
    assert_eq!(status, 200, "{receipt}");
    let (_, level) = get_settled(&format!("{url}/v1/stock/P/L"));
    assert_eq!(level["onHand"], 3, "{level}");
    assert_eq!(broker.read_all("shop2.events.canonical").len(), 1);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_python_confluent_kafka_client_produces_raw_events_and_reads_stock_levels() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let dirs = scratch("kafka-python");
    let instance = Instance::start(&broker, "python", &dirs.join("i0"));
    wait_settled(&instance.url, 1);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/external_client.py");
    let output = Command::new("python3")
        .arg(&script)
        .args([&broker.bootstrap, "run1"])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the Python client failed (confluent-kafka missing? .ci/install installs it):\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    // What the Python consumer read from stock-levels is what the API says,
    // and what the events add up to (the redelivered sale counted once).
    for (key, want) in [("PY-1:S1", (35, 5, 30)), ("PY-2:S2", (4, 0, 4))] {
        let (sku, location) = key.split_once(':').unwrap();
        let (status, api) = get_settled(&format!("{}/v1/stock/{sku}/{location}", instance.url));
        assert_eq!(status, 200, "{api}");
        let read = &report["levels"][key];
        for level in [read, &api] {
            assert_eq!(
                (
                    level["onHand"].as_i64(),
                    level["reserved"].as_i64(),
                    level["available"].as_i64()
                ),
                (Some(want.0), Some(want.1), Some(want.2)),
                "{key}: {level}"
            );
        }
    }
    // The sale with a positive delta: in the DLQ, raw, with its reason.
    let dlq = report["dlq"].as_array().unwrap();
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert!(
        dlq[0]["reason"]
            .as_str()
            .unwrap()
            .contains("quantityDelta: a SALE must have a negative quantityDelta"),
        "{}",
        dlq[0]
    );
    assert!(
        dlq[0]["payload"]
            .as_str()
            .unwrap()
            .contains(r#""quantityDelta": 4"#),
        "{}",
        dlq[0]
    );
}

/// The web UI on a Kafka-mode instance, in a real browser: the Playwright
/// tests in `tests/e2e/kafka.test.mjs` seed a catalog and stock through
/// the API, then read the overview, an item and the storefront, and check
/// out. Screenshots land in target/tmp/ui-screenshots.
#[test]
fn the_web_ui_works_against_a_kafka_cluster() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let dirs = scratch("kafka-ui");
    let instance = Instance::start(&broker, "ui", &dirs.join("a"));
    wait_settled(&instance.url, 1);
    crate::ui::run_browser_tests("kafka.test.mjs", &instance.url);
}

/// `--webhook` in Kafka mode: every member is started with it, and each
/// alert of the cluster reaches the receiver once (the members share a
/// consumer group on the alerts topic), price drops included.
#[test]
fn each_alert_reaches_a_webhook_once_from_the_whole_cluster() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (hook_url, hook) = runtime.block_on(crate::webhooks::receiver(0));
    let dirs = scratch("kafka-webhooks");
    let args = ["--webhook", hook_url.as_str()];
    let instances: Vec<Instance> = (0..2)
        .map(|i| {
            let dir = dirs.join(format!("i{i}"));
            Instance::with_args(&broker, "hooks", &dir, "priority:WEB,BACKUP", &args)
        })
        .collect();
    wait_settled(&instances[0].url, 2);
    let (a, b) = (instances[0].url.clone(), instances[1].url.clone());
    let client = reqwest::Client::new();
    let low = |sku: String| serde_json::json!({"eventId": format!("low-{sku}"), "eventType": "RECEIPT", "sku": sku, "locationId": "S1", "quantity": 3});
    let posted_skus = || -> Vec<String> {
        hook.accepted
            .lock()
            .iter()
            .map(|(body, _)| {
                serde_json::from_str::<Value>(body).unwrap()["sku"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    // A group new to a URL starts at the topic's end once it has its
    // partitions: alerts until the first one arrives show it is reading.
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        let event = low(format!("WARM{n}"));
        runtime.block_on(send_json(
            &client,
            reqwest::Method::POST,
            &format!("{a}/v1/events?wait=applied"),
            &event,
        ));
        std::thread::sleep(Duration::from_millis(500));
        if !posted_skus().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the webhook never got an alert");
    }

    // 24 levels made low through both members, and a price cut: 25 alerts
    // spread over the partitions, so over both members' webhook readers.
    let skus: Vec<String> = (0..24).map(|n| format!("HOOK{n}")).collect();
    runtime.block_on(async {
        for (n, sku) in skus.iter().enumerate() {
            let via = if n % 2 == 0 { &a } else { &b };
            let (status, _) = send_json(
                &client,
                reqwest::Method::POST,
                &format!("{via}/v1/events?wait=applied"),
                &low(sku.clone()),
            )
            .await;
            assert_eq!(status, 200);
        }
        for price in [10.0, 5.0] {
            let product = serde_json::json!({"name": "Hooked", "price": price});
            let (status, _) = send_json(
                &client,
                reqwest::Method::PUT,
                &format!("{b}/v1/products/HOOKP"),
                &product,
            )
            .await;
            assert_eq!(status, 200);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let wanted = skus.len() + 1;
    let ours = || -> Vec<Value> {
        hook.accepted
            .lock()
            .iter()
            .map(|(body, _)| serde_json::from_str::<Value>(body).unwrap())
            .filter(|alert| alert["sku"].as_str().is_some_and(|s| s.starts_with("HOOK")))
            .collect()
    };
    while ours().len() < wanted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same alerts as the alerts topic holds.
    let mut told: Vec<Value> = broker
        .read_all("inventory.alerts")
        .into_iter()
        .filter_map(|(_, payload, _)| serde_json::from_slice::<Value>(&payload?).ok())
        .filter(|alert| alert["sku"].as_str().is_some_and(|s| s.starts_with("HOOK")))
        .collect();
    // Nothing more comes: each was sent once, by one member.
    std::thread::sleep(Duration::from_secs(3));
    let posted = ours();
    let names = |alerts: &[Value]| -> Vec<String> {
        alerts
            .iter()
            .map(|a| format!("{} {} {}", a["kind"], a["sku"], a["id"]))
            .collect()
    };
    assert_eq!(
        posted.len(),
        told.len(),
        "posted {:?}\ntold {:?}",
        names(&posted),
        names(&told)
    );
    let mut ids: Vec<&str> = posted.iter().map(|a| a["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((posted.len(), ids.len()), (wanted, wanted), "{posted:?}");
    let kinds: std::collections::BTreeMap<&str, usize> =
        posted.iter().fold(Default::default(), |mut kinds, a| {
            *kinds.entry(a["kind"].as_str().unwrap()).or_default() += 1;
            kinds
        });
    assert_eq!(
        kinds,
        [("LOW_STOCK", 24), ("PRICE_DROP", 1)].into_iter().collect(),
        "{posted:?}"
    );
    let mut posted = posted;
    let by_id = |x: &Value, y: &Value| x["id"].as_str().cmp(&y["id"].as_str());
    told.sort_by(by_id);
    posted.sort_by(by_id);
    assert_eq!(posted, told);

    // kill -9 a member: the other takes over its partitions, and its
    // webhook reader the rest of its alerts (at least once: one it sent
    // but had not committed may come again).
    let mut instances = instances;
    instances[1].kill();
    let more: Vec<String> = (0..12).map(|n| format!("HOOKK{n}")).collect();
    runtime.block_on(async {
        for sku in &more {
            let (status, _) = send_json(
                &client,
                reqwest::Method::POST,
                &format!("{a}/v1/events"),
                &low(sku.clone()),
            )
            .await;
            assert_eq!(status, 200);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let missing = || -> Vec<String> {
        let posted: std::collections::BTreeSet<String> = ours()
            .iter()
            .map(|a| a["sku"].as_str().unwrap().to_owned())
            .collect();
        more.iter()
            .filter(|s| !posted.contains(*s))
            .cloned()
            .collect()
    };
    while !missing().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let told: Vec<String> = broker
        .read_all("inventory.alerts")
        .into_iter()
        .filter_map(|(_, payload, _)| serde_json::from_slice::<Value>(&payload?).ok())
        .filter(|alert| {
            alert["sku"]
                .as_str()
                .is_some_and(|s| s.starts_with("HOOKK"))
        })
        .map(|alert| format!("{} {}", alert["sku"], alert["id"]))
        .collect();
    assert!(
        missing().is_empty(),
        "never posted after the kill: {:?}; the topic has {told:?}",
        missing()
    );
}
