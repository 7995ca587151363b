//! The PostgreSQL sink against the PostgreSQL running on the machine
//! (127.0.0.1:5432, trust auth), read back with `psql`: a mixed stream
//! (plain and order events, API orders, redeliveries, invalid events)
//! with the server killed (-9) mid-ingest, the sink's connections killed
//! from the server side, and the database refusing connections for a
//! while; the tables must end equal to the API (levels, orders, alerts),
//! each event once.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::crash::serve;
use crate::holds::{mixed_stream, send_command, server_levels, server_orders, Shape, Step};
use crate::{free_port, get, post};

/// `sql` run by psql on `database`: its rows, fields split on `|`.
pub fn psql(database: &str, sql: &str) -> Vec<Vec<String>> {
    let output = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", database])
        .args(["-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

/// A database of the test's own, dropped however the test ends.
pub struct Database(pub String);

impl Database {
    pub fn create() -> Database {
        let name = format!("stockflow_sink_{}", rand::random::<u32>());
        psql("postgres", &format!("CREATE DATABASE {name}"));
        Database(name)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.0)
    }

    /// Ends every connection to the database from the server side; how
    /// many there were.
    pub fn terminate(&self) -> usize {
        let killed = psql(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
                self.0
            ),
        );
        killed.len()
    }

    /// Whether the database takes new connections (`false`: as if it
    /// were down, for the sink).
    pub fn allow(&self, allow: bool) {
        psql(
            "postgres",
            &format!("ALTER DATABASE {} ALLOW_CONNECTIONS {allow}", self.0),
        );
    }

    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        psql(&self.0, sql)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0))
            .output();
    }
}

/// The sink's status, once `done` holds for it (within two minutes).
pub async fn wait_sink(url: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, answer) = get(url, "/v1/sinks").await;
        let sink = answer["sinks"][0].clone();
        if done(&sink) {
            return sink;
        }
        assert!(Instant::now() < deadline, "{what}: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub const SHAPE: Shape = Shape {
    events: 40_000,
    skus: 16,
    locations: 6,
    orders: 24,
    commands: 0.05,
    batch_max: 1000,
};

/// Sends a step of the stream; a body must be taken whole (200).
pub async fn send(url: &str, step: &Step) {
    match step {
        Step::Events(events) => {
            let body: Vec<String> = events.iter().map(|e| e.json_with("s")).collect();
            let (status, receipt) = post(url, "application/x-ndjson", body.join("\n")).await;
            assert_eq!(status, 200, "{receipt}");
        }
        Step::Order(command) => send_command(url, command).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tables_equal_the_api_across_kills_of_either_side() {
    let seed: u64 = rand::random();
    println!("seed={seed}");
    let steps = mixed_stream(seed, SHAPE);
    let db = Database::create();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let sink_url = db.url();
    // Five connections over the twelve partitions: shares of unequal
    // size.
    let args = [
        "--sink-postgres",
        &sink_url,
        "--sink-postgres-connections",
        "5",
        "--order-hold-seconds",
        "604800",
    ];
    let mut server = serve(dir.path(), port, &args).await;
    wait_sink(&url, "connected", |s| s["state"] == "connected").await;
    let third = steps.len() / 3;
    for (i, step) in steps[..third].iter().enumerate() {
        send(&url, step).await;
        if i == third / 2 {
            // PostgreSQL ends the sink's connection: it reconnects and
            // goes on where its last commit left it.
            assert!(db.terminate() >= 5, "the sink's five connections were up");
        }
    }
    // kill -9 while a body is in flight.
    let in_flight = {
        let (url, step) = (url.clone(), steps[third].clone());
        tokio::spawn(async move { send(&url, &step).await })
    };
    tokio::time::sleep(Duration::from_millis(2)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = in_flight.await;

    // Started again with the database refusing connections: ingest goes
    // on, and the sink says it is down and how far behind.
    db.allow(false);
    db.terminate();
    let server = serve(dir.path(), port, &args).await;
    for step in &steps[third - 5..2 * third] {
        send(&url, step).await;
    }
    let down = wait_sink(&url, "down and behind", |s| {
        s["state"] != "connected" && s["behindBytes"].as_u64() > Some(0)
    })
    .await;
    assert!(!down["lastError"].is_null(), "{down}");
    let (_, metrics) = crate::amqp::get_text(&url, "/metrics").await;
    let behind_metric = metrics
        .lines()
        .find(|l| l.starts_with("stockflow_sink_behind_bytes"))
        .unwrap_or_default();
    assert!(!behind_metric.ends_with(" 0"), "{behind_metric}");
    db.allow(true);
    for (i, step) in steps[2 * third..].iter().enumerate() {
        send(&url, step).await;
        if i == third / 2 {
            db.terminate();
        }
    }
    let caught_up = wait_sink(&url, "caught up", |s| {
        s["state"] == "connected" && s["behindBytes"] == 0
    })
    .await;
    assert!(caught_up["rows"].as_u64() > Some(0), "{caught_up}");

    // stock_levels is the API's levels, row for row.
    let api = server_levels(&url, SHAPE).await;
    let table: BTreeMap<(String, String), (i64, i64, i64)> = db
        .query("SELECT sku, location_id, on_hand, reserved, in_transit FROM stock_levels")
        .into_iter()
        .map(|r| {
            let n = |i: usize| r[i].parse::<i64>().unwrap();
            ((r[0].clone(), r[1].clone()), (n(2), n(3), n(4)))
        })
        .collect();
    let api: BTreeMap<(String, String), (i64, i64, i64)> = api
        .into_iter()
        .map(|(key, (on_hand, reserved, in_transit, _))| (key, (on_hand, reserved, in_transit)))
        .collect();
    assert_eq!(table, api, "stock_levels against the API (seed={seed})");

    // level_history holds each level's history once: the count, the
    // distinct events and the newest numbers the API's history has.
    let rows = db.query(
        "SELECT sku, location_id, count(*), count(DISTINCT (event_id, part)) FROM level_history GROUP BY 1, 2",
    );
    assert_eq!(rows.len(), table.len());
    for row in rows {
        let (sku, location) = (&row[0], &row[1]);
        let (count, distinct): (usize, usize) = (row[2].parse().unwrap(), row[3].parse().unwrap());
        assert_eq!(count, distinct, "{sku}@{location}: an event twice");
        let (status, history) = get(
            &url,
            &format!("/v1/stock/{sku}/{location}/history?limit=1000"),
        )
        .await;
        assert_eq!(status, 200, "{history}");
        let entries = history["events"].as_array().unwrap();
        assert!(history["nextBefore"].is_null(), "one page holds it");
        assert_eq!(count, entries.len(), "{sku}@{location} (seed={seed})");
    }
    // orders holds each order's newest state, as the API answers it.
    let mut api_orders = BTreeMap::new();
    for id in server_orders(&url, SHAPE).await {
        let (_, order) = get(&url, &format!("/v1/orders/{id}")).await;
        let transitions = order["transitions"].as_array().unwrap().len();
        api_orders.insert(
            id,
            (order["status"].as_str().unwrap().to_owned(), transitions),
        );
    }
    assert!(!api_orders.is_empty(), "the stream placed orders");
    // alerts holds every level alert transition the API lists (the API
    // keeps the newest 2,000 per partition; the table keeps them all).
    let mut api_alerts = BTreeMap::new();
    let mut after = String::new();
    loop {
        let (status, page) = get(&url, &format!("/v1/alerts?limit=1000{after}")).await;
        assert_eq!(status, 200, "{page}");
        for a in page["alerts"].as_array().unwrap() {
            if a["kind"] == "PRICE_DROP" {
                continue; // a product's notice, not a level's: not sunk
            }
            let id = a["id"].as_str().unwrap().to_owned();
            api_alerts.insert(
                id,
                (
                    a["kind"].as_str().unwrap().to_owned(),
                    a["state"].as_str().unwrap().to_owned(),
                ),
            );
        }
        match page["nextAfter"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert!(!api_alerts.is_empty(), "the stream raised alerts");
    // Polled: a timer may raise an alert after the sink caught up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let orders: BTreeMap<String, (String, usize)> = db
            .query("SELECT order_id, status, jsonb_array_length(transitions) FROM orders")
            .into_iter()
            .map(|r| (r[0].clone(), (r[1].clone(), r[2].parse().unwrap())))
            .collect();
        let alerts: BTreeMap<String, (String, String)> = db
            .query("SELECT alert_id, kind, state FROM alerts")
            .into_iter()
            .map(|r| (r[0].clone(), (r[1].clone(), r[2].clone())))
            .collect();
        let missing: Vec<_> = api_alerts
            .iter()
            .filter(|(id, a)| alerts.get(*id) != Some(a))
            .collect();
        if orders == api_orders && missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orders {orders:?} against the API's {api_orders:?}; alerts missing or different: {missing:?} (seed={seed})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Another data directory's server on the same database is refused:
    // the positions are this one's.
    let other = tempfile::tempdir().unwrap();
    let intruder = crate::start(other.path(), |config| {
        config.sink_postgres = Some(stockflow_service::config::Secret(sink_url.clone()));
    })
    .await;
    let refused = wait_sink(&intruder.url(), "refused", |s| {
        s["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("another data directory"))
    })
    .await;
    assert_ne!(refused["state"], "connected", "{refused}");
    intruder.stop().await.unwrap();
    drop(server);
}
