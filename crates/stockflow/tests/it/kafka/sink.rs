//! The PostgreSQL sink and the Parquet lake in Kafka mode, on librdkafka's
//! mock cluster (it has the transactions both need; tansu has none), the
//! PostgreSQL running on the machine and one lake directory for both
//! instances: two instances share the partitions, then one stops and the
//! other takes its partitions over, while the sink's connections are
//! killed from the server side. The tables must end equal to the API
//! (levels), with each event's history once; the lake, read by DuckDB,
//! must add up to the API's levels, each event once, its files chained
//! without a gap.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::holds::{mixed_stream, Shape};
use crate::sink::{send, Database};

const SHAPE: Shape = Shape {
    events: 6_000,
    skus: 8,
    locations: 5,
    orders: 16,
    commands: 0.05,
    batch_max: 200,
};

#[test]
fn kafka_instances_sink_their_partitions_to_postgres_and_the_lake_across_a_move() {
    let _heavy = crate::heavy();
    use rdkafka::mocking::MockCluster;
    use stockflow_kafka::{KafkaServer, KafkaSettings};

    let mock = MockCluster::new(1).unwrap();
    let mut settings = KafkaSettings::new(mock.bootstrap_servers());
    settings.group = "sink".into();
    settings.partitions = 4;
    settings.transactions = true;
    settings
        .extra
        .push(("session.timeout.ms".into(), "6000".into()));
    let sources = stockflow_service::sources::Sources::default();
    for spec in stockflow_kafka::topics::specs(&settings, sources.names()) {
        mock.create_topic(&spec.name, spec.partitions, 1).unwrap();
    }
    let db = Database::create();
    let seed: u64 = rand::random();
    println!("seed={seed}");
    // Plain and correlated events, unknown order ids, late events, counts,
    // transfers, redeliveries, invalid events, and API orders.
    let steps = mixed_stream(seed, SHAPE);
    let third = steps.len() / 3;
    let lake_dir = tempfile::tempdir().unwrap();
    let lake = lake_dir.path().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let start = |dir: PathBuf, settings: KafkaSettings| {
            let (url, lake) = (db.url(), lake.clone());
            async move {
                let mut config = stockflow_service::config::Config::new(dir);
                config.sink_postgres = Some(stockflow_service::config::Secret(url));
                config.lake = Some(stockflow_service::config::Lake {
                    dir: lake,
                    flush: Duration::from_secs(1),
                    hourly: false,
                });
                KafkaServer::start(settings, config, "127.0.0.1:0".parse().unwrap(), None).await
            }
        };

        // Without broker transactions the start refuses, saying why.
        let mut plain = settings.clone();
        plain.transactions = false;
        let dir = tempfile::tempdir().unwrap();
        let refused = start(dir.path().to_owned(), plain)
            .await
            .err()
            .expect("refused");
        assert!(
            format!("{refused:#}").contains("--kafka-transactions"),
            "{refused:#}"
        );

        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = start(a_dir.path().to_owned(), settings.clone())
            .await
            .unwrap();
        settled(&a.url(), 4).await;
        for step in &steps[..third] {
            send(&a.url(), step).await;
        }
        // A second instance: the group shares the partitions out.
        let b = start(b_dir.path().to_owned(), settings.clone())
            .await
            .unwrap();
        settled(&b.url(), 2).await;
        for (i, step) in steps[third..2 * third].iter().enumerate() {
            let url = if i % 2 == 0 { a.url() } else { b.url() };
            send(&url, step).await;
            if i == third / 2 {
                assert!(db.terminate() >= 2, "both instances' sinks were connected");
            }
        }
        applied(&a.url()).await;
        let a_sinks = caught_up(&a.url()).await;
        assert!(a_sinks["rows"].as_u64() > Some(0), "{a_sinks}");
        // The first instance wrote lake files of its partitions.
        let deadline = Instant::now() + Duration::from_secs(30);
        while lake_status(&a.url()).await["rows"].as_u64() == Some(0) {
            assert!(Instant::now() < deadline, "{}", lake_status(&a.url()).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let moving: Vec<u16> = owned(&a.url()).await;
        assert!(!moving.is_empty(), "the first instance kept partitions");
        let before = positions(&db);
        a.stop().await.unwrap();
        // The partitions the first instance sank go on at the second.
        settled(&b.url(), 4).await;
        for step in &steps[2 * third..] {
            send(&b.url(), step).await;
        }
        applied(&b.url()).await;
        let b_sinks = caught_up(&b.url()).await;
        assert!(b_sinks["rows"].as_u64() > Some(0), "{b_sinks}");
        let after = positions(&db);
        for p in &moving {
            assert!(
                after.get(p) > before.get(p),
                "partition {p} moved and its sink went on: {before:?} then {after:?}"
            );
        }

        assert_sunk(&b.url(), &db, &lake, seed).await;
        b.stop().await.unwrap();
    });
}

/// The tables and the lake hold what the API at `url` answers: levels
/// row for row, each level's history once (as many rows as the API's
/// history), orders' newest states, the level alerts the API lists; the
/// lake, read by DuckDB, the same history, chained without a gap.
async fn assert_sunk(url: &str, db: &Database, lake: &std::path::Path, seed: u64) {
    // stock_levels is the API's levels, row for row (polled: the
    // last cycles may still be on their way to the sink).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (api, table) = loop {
        let api = levels(url).await;
        let table: BTreeMap<(String, String), (i64, i64, i64)> = db
            .query("SELECT sku, location_id, on_hand, reserved, in_transit FROM stock_levels")
            .into_iter()
            .map(|r| {
                let n = |i: usize| r[i].parse::<i64>().unwrap();
                ((r[0].clone(), r[1].clone()), (n(2), n(3), n(4)))
            })
            .collect();
        if table == api {
            break (api, table);
        }
        assert!(
            Instant::now() < deadline,
            "stock_levels {table:?} against the API's {api:?} (seed={seed})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(table.len() >= SHAPE.skus * 2, "levels were sunk: {table:?}");

    // level_history holds each event once: as many rows per level as
    // the API's history, no event twice, and every event sent.
    let rows = db.query(
        "SELECT sku, location_id, count(*), count(DISTINCT (event_id, part)) FROM level_history GROUP BY 1, 2",
    );
    assert_eq!(rows.len(), table.len());
    for row in rows {
        let (sku, location) = (&row[0], &row[1]);
        let (count, distinct): (usize, usize) = (row[2].parse().unwrap(), row[3].parse().unwrap());
        assert_eq!(
            count, distinct,
            "{sku}@{location}: an event twice (seed={seed})"
        );
        let history = history_of(url, sku, location).await;
        assert_eq!(count, history, "{sku}@{location} (seed={seed})");
    }
    // The lake: per level, as many rows as the API's history, each
    // event once, the onHand changes adding up to the level; files
    // chained per partition from 0 without a gap or an overlap.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read = crate::lake::read_lake(lake);
        let levels: BTreeMap<(String, String), (u64, u64, i64)> = read["levels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let key = (
                    l[0].as_str().unwrap().to_owned(),
                    l[1].as_str().unwrap().to_owned(),
                );
                (
                    key,
                    (
                        l[2].as_u64().unwrap(),
                        l[3].as_u64().unwrap(),
                        l[4].as_i64().unwrap(),
                    ),
                )
            })
            .collect();
        let mut wanted = BTreeMap::new();
        for row in db.query("SELECT sku, location_id, count(*) FROM level_history GROUP BY 1, 2") {
            let key = (row[0].clone(), row[1].clone());
            let count: u64 = row[2].parse().unwrap();
            wanted.insert(key.clone(), (count, count, api[&key].0));
        }
        if levels == wanted {
            crate::lake::assert_chains(&read);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lake {levels:?} against {wanted:?} (seed={seed})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // orders: each order's newest state, as the API answers it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut api_orders = BTreeMap::new();
        for id in crate::holds::server_orders(url, SHAPE).await {
            let (_, order) = crate::get(url, &format!("/v1/orders/{id}")).await;
            let transitions = order["transitions"].as_array().unwrap().len();
            api_orders.insert(
                id,
                (order["status"].as_str().unwrap().to_owned(), transitions),
            );
        }
        let orders: BTreeMap<String, (String, usize)> = db
            .query("SELECT order_id, status, jsonb_array_length(transitions) FROM orders")
            .into_iter()
            .map(|r| (r[0].clone(), (r[1].clone(), r[2].parse().unwrap())))
            .collect();
        if orders == api_orders && !orders.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orders {orders:?} against the API's {api_orders:?} (seed={seed})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // alerts: every level alert transition the API lists.
    let (_, page) = crate::get(url, "/v1/alerts?limit=1000").await;
    let alerts: BTreeMap<String, (String, String)> = db
        .query("SELECT alert_id, kind, state FROM alerts")
        .into_iter()
        .map(|r| (r[0].clone(), (r[1].clone(), r[2].clone())))
        .collect();
    let listed: Vec<&Value> = page["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] != "PRICE_DROP")
        .collect();
    assert!(!listed.is_empty(), "the stream raised alerts: {page}");
    for a in listed {
        let id = a["id"].as_str().unwrap();
        let want = (
            a["kind"].as_str().unwrap().to_owned(),
            a["state"].as_str().unwrap().to_owned(),
        );
        assert_eq!(alerts.get(id), Some(&want), "alert {id} (seed={seed})");
    }
}

/// Waits until what was sent to `url` is applied: a last event, with
/// `?wait=applied` (an instance answers it once its cycle is done).
async fn applied(url: &str) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/events?wait=applied"))
        .header("content-type", "application/json")
        .body(r#"{"eventId":"settle","eventType":"RECEIPT","sku":"P0","locationId":"L0","quantity":1}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
}

/// Every level of the stream's SKUs and locations, as the API answers.
async fn levels(url: &str) -> BTreeMap<(String, String), (i64, i64, i64)> {
    let mut levels = BTreeMap::new();
    for sku in (0..SHAPE.skus).map(crate::reference::sku) {
        for location in (0..SHAPE.locations).map(crate::reference::location) {
            let (status, level) = crate::get(url, &format!("/v1/stock/{sku}/{location}")).await;
            if status == 404 {
                continue;
            }
            assert_eq!(status, 200, "{level}");
            let n = |field: &str| level[field].as_i64().unwrap();
            levels.insert(
                (sku.clone(), location),
                (n("onHand"), n("reserved"), n("inTransit")),
            );
        }
    }
    levels
}

/// Waits until `url`'s instance owns `partitions` partitions, all active.
async fn settled(url: &str, partitions: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, c) = crate::get(url, "/v1/cluster").await;
        let mine = c["partitions"].as_array().map_or(0, |ps| {
            ps.iter()
                .filter(|p| p["status"] == "active" && p["owner"] == c["instanceId"])
                .count()
        });
        let all_active = c["partitions"]
            .as_array()
            .is_some_and(|ps| ps.iter().all(|p| p["status"] == "active"));
        if mine == partitions && all_active {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never owned {partitions}: {c}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The partitions `url`'s instance owns.
async fn owned(url: &str) -> Vec<u16> {
    let (_, c) = crate::get(url, "/v1/cluster").await;
    c["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["owner"] == c["instanceId"])
        .map(|p| p["partition"].as_u64().unwrap() as u16)
        .collect()
}

/// The PostgreSQL sink's status once it is connected and has all it
/// owns.
async fn caught_up(url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, answer) = crate::get(url, "/v1/sinks").await;
        let sink = answer["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["kind"] == "postgres")
            .cloned()
            .unwrap_or_default();
        if sink["state"] == "connected" && sink["behindRecords"] == 0 {
            return sink;
        }
        assert!(Instant::now() < deadline, "caught up: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lake's status.
async fn lake_status(url: &str) -> Value {
    let (_, answer) = crate::get(url, "/v1/sinks").await;
    answer["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "lake")
        .cloned()
        .unwrap_or_default()
}

/// The history offsets the sink's positions hold, by partition.
fn positions(db: &Database) -> BTreeMap<u16, i64> {
    db.query("SELECT partition, history_offset FROM stockflow_sink_positions")
        .into_iter()
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
        .collect()
}

/// How many history entries the API has for a level (polled: an
/// instance that just took a partition answers 503 while it rebuilds).
async fn history_of(url: &str, sku: &str, location: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, page) = crate::get(
            url,
            &format!("/v1/stock/{sku}/{location}/history?limit=1000"),
        )
        .await;
        if status == 200 {
            assert!(page["nextBefore"].is_null(), "one page holds it");
            return page["events"].as_array().unwrap().len();
        }
        assert!(Instant::now() < deadline, "{status}: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
