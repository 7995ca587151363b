//! The Parquet lake, read back with DuckDB (the Python package): a mixed
//! stream (plain and order events, API orders, redeliveries, invalid
//! events) with the server killed (-9) while it ingests and writes the
//! lake; the lake must end with each level's history once, adding up to
//! the API's levels, in whole files whose positions chain without a gap.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::crash::serve;
use crate::holds::{mixed_stream, server_levels};
use crate::sink::{send, wait_sink, SHAPE};
use crate::{free_port, get};

/// What DuckDB reads in the lake: per level, its rows; per file, its
/// metadata; per day folder, the span of its rows' processedAt.
const READ_LAKE: &str = r#"
import duckdb, json, sys
files = sys.argv[1] + "/*/*.parquet"
con = duckdb.connect()
lake = f"read_parquet('{files}', hive_partitioning = true)"
levels = con.sql(f"""
    SELECT sku, locationId, count(*), count(DISTINCT (eventId, part)),
           sum(onHandChange)::BIGINT, arg_max(onHand, historyOffset)
    FROM {lake} GROUP BY sku, locationId""").fetchall()
meta = con.sql(f"""
    SELECT file_name, key::VARCHAR, value::VARCHAR
    FROM parquet_kv_metadata('{files}')""").fetchall()
days = con.sql(f"""
    SELECT day::VARCHAR, min(epoch_ns(processedAt)), max(epoch_ns(processedAt))
    FROM {lake} GROUP BY day""").fetchall()
print(json.dumps({"levels": levels, "meta": meta, "days": days}))
"#;

pub fn read_lake(lake: &Path) -> Value {
    let output = Command::new("python3")
        .args(["-c", READ_LAKE])
        .arg(lake)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "DuckDB (pip install duckdb) read the lake: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

/// A day folder of the lake (the first).
fn a_day(lake: &Path) -> std::path::PathBuf {
    std::fs::read_dir(lake)
        .unwrap()
        .map(|d| d.unwrap().path())
        .find(|d| d.is_dir())
        .expect("a day folder")
}

/// Per partition, the history ranges of its files (from their
/// metadata), in order.
fn ranges(read: &Value) -> BTreeMap<u64, Vec<(u64, u64)>> {
    let mut files: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for kv in read["meta"].as_array().unwrap() {
        let (file, key, value) = (
            kv[0].as_str().unwrap(),
            kv[1].as_str().unwrap(),
            kv[2].as_str().unwrap(),
        );
        if let Ok(number) = value.parse() {
            files
                .entry(file.to_owned())
                .or_default()
                .insert(key.to_owned(), number);
        }
    }
    let mut chains: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for range in files.values() {
        chains
            .entry(range["stockflow.partition"])
            .or_default()
            .push((range["stockflow.historyFrom"], range["stockflow.historyTo"]));
    }
    for chain in chains.values_mut() {
        chain.sort_unstable();
    }
    chains
}

/// Where each partition's history files end (`DATA/history/PPPP/`, each
/// segment named by its first offset).
fn history_ends(data: &Path) -> BTreeMap<u64, u64> {
    let mut ends = BTreeMap::new();
    for partition in std::fs::read_dir(data.join("history")).unwrap() {
        let partition = partition.unwrap().path();
        let Ok(p) = partition
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .parse::<u64>()
        else {
            continue;
        };
        let mut end = 0;
        for segment in std::fs::read_dir(&partition).unwrap() {
            let segment = segment.unwrap().path();
            if let Some(start) = segment
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            {
                end = end.max(start + segment.metadata().unwrap().len());
            }
        }
        ends.insert(p, end);
    }
    ends
}

/// What `read` reads of the lake once every partition's files end where
/// its history (in `data`) does; fails after two minutes.
async fn caught_up(data: &Path, read: impl Fn() -> Value) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let lake = read();
        let ends: BTreeMap<u64, u64> = history_ends(data)
            .into_iter()
            .filter(|(_, end)| *end > 0)
            .collect();
        let chains: BTreeMap<u64, u64> = ranges(&lake)
            .iter()
            .map(|(p, c)| (*p, c.last().unwrap().1))
            .collect();
        if chains == ends {
            return lake;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lake {chains:?}, history {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Each partition's files chain: each begins where the one before it
/// ended, from the start of the history on, without a gap or an overlap.
pub fn assert_chains(read: &Value) {
    for (partition, chain) in &ranges(read) {
        let mut end = 0;
        for (from, to) in chain {
            assert_eq!(*from, end, "partition {partition}: a gap or an overlap");
            assert!(to > from);
            end = *to;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lake_read_by_duckdb_adds_up_to_the_api_across_a_kill() {
    let seed: u64 = rand::random();
    println!("seed={seed}");
    let steps = mixed_stream(seed, SHAPE);
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = tempfile::tempdir().unwrap();
    let lake = lake_dir.path().to_str().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let args = [
        "--lake",
        lake,
        "--lake-flush-seconds",
        "2",
        "--order-hold-seconds",
        "604800",
    ];
    let mut server = serve(dir.path(), port, &args).await;
    let half = steps.len() / 2;
    for step in &steps[..half / 2] {
        send(&url, step).await;
    }
    // The lake is being written while events go on arriving.
    wait_sink(&url, "first files", |s| s["rows"].as_u64() > Some(0)).await;
    for step in &steps[half / 2..half] {
        send(&url, step).await;
    }
    let in_flight = {
        let (url, step) = (url.clone(), steps[half].clone());
        tokio::spawn(async move { send(&url, &step).await })
    };
    tokio::time::sleep(Duration::from_millis(2)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = in_flight.await;
    // The kill came with files written and history not yet in any.
    let at_kill = ranges(&read_lake(lake_dir.path()));
    let ends = history_ends(dir.path());
    assert!(
        ends.iter()
            .any(|(p, end)| at_kill.get(p).map_or(0, |c| c.last().unwrap().1) < *end),
        "history not yet in the lake at the kill: lake {at_kill:?}, history {ends:?}"
    );

    // What a kill in the middle of a file leaves: a temporary that no
    // reader may take for data.
    let torn = a_day(lake_dir.path()).join(".p0000-99999999999999999999.parquet.tmp");
    std::fs::write(&torn, b"PAR1 torn").unwrap();
    let mut server = Some(serve(dir.path(), port, &args).await);
    assert!(!torn.exists(), "a half-written file is removed at start");
    for step in &steps[half - 5..] {
        send(&url, step).await;
    }
    let read = caught_up(dir.path(), || read_lake(lake_dir.path())).await;
    let (_, sinks) = get(&url, "/v1/sinks").await;
    assert_eq!(sinks["sinks"][0]["kind"], "lake", "{sinks}");
    // Per level: each event once, the onHand changes add up to the
    // API's onHand, the newest row is the API's level, and the count is
    // the API's history.
    let api = server_levels(&url, SHAPE).await;
    let levels = read["levels"].as_array().unwrap();
    assert_eq!(levels.len(), api.len(), "levels (seed={seed})");
    for level in levels {
        let (sku, location) = (level[0].as_str().unwrap(), level[1].as_str().unwrap());
        let n = |i: usize| level[i].as_i64().unwrap();
        let (on_hand, _, _, _) = api[&(sku.to_owned(), location.to_owned())];
        assert_eq!(n(2), n(3), "{sku}@{location}: an event twice (seed={seed})");
        assert_eq!(
            n(4),
            on_hand,
            "{sku}@{location}: onHandChange sum (seed={seed})"
        );
        assert_eq!(
            n(5),
            on_hand,
            "{sku}@{location}: newest onHand (seed={seed})"
        );
        let (status, history) = get(
            &url,
            &format!("/v1/stock/{sku}/{location}/history?limit=1000"),
        )
        .await;
        assert_eq!(status, 200, "{history}");
        assert!(history["nextBefore"].is_null(), "one page holds it");
        let entries = history["events"].as_array().unwrap().len() as i64;
        assert_eq!(n(2), entries, "{sku}@{location}: rows (seed={seed})");
    }
    assert!(ranges(&read).len() > 1, "several partitions wrote files");
    assert_chains(&read);
    // A day folder holds the rows the engine applied that UTC day.
    for day in read["days"].as_array().unwrap() {
        let date = |i: usize| {
            chrono::DateTime::from_timestamp_nanos(day[i].as_i64().unwrap())
                .format("%Y-%m-%d")
                .to_string()
        };
        assert_eq!(date(1), day[0].as_str().unwrap());
        assert_eq!(date(2), day[0].as_str().unwrap());
    }

    // Another server is refused the lake at start: while this one runs,
    // as it writes there; after, as the lake holds this one's history.
    for (running, said) in [(true, "another server"), (false, "another data directory")] {
        if !running {
            drop(server.take());
        }
        let other = tempfile::tempdir().unwrap();
        let mut config = stockflow_service::config::Config::new(other.path().to_owned());
        config.lake = Some(stockflow_service::config::Lake {
            dir: lake_dir.path().to_owned(),
            flush: Duration::from_secs(1),
            hourly: false,
        });
        let refused = stockflow::server::Server::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .err()
            .expect("the lake is refused");
        assert!(format!("{refused:#}").contains(said), "{refused:#}");
    }
}

/// moto's S3-compatible server (`pip install 'moto[server]'`) on a free
/// port, stopped when dropped.
struct S3Server(std::process::Child, u16);

impl S3Server {
    async fn start() -> S3Server {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server runs (pip install 'moto[server]': .ci/install)");
        let server = S3Server(child, port);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while reqwest::get(server.endpoint()).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "moto_server came up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.1)
    }

    /// Copies every object under `prefix` of `bucket` into `to`, by key.
    fn download(&self, bucket: &str, prefix: &str, to: &Path) {
        let script = r#"
import boto3, os, sys
endpoint, bucket, prefix, to = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                  aws_secret_access_key="test", region_name="us-east-1")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
    for o in page.get("Contents", []):
        path = os.path.join(to, o["Key"][len(prefix) + 1:])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, o["Key"], path)
"#;
        let output = Command::new("python3")
            .args(["-c", script, &self.endpoint(), bucket, prefix])
            .arg(to)
            .output()
            .expect("python3 runs");
        assert!(
            output.status.success(),
            "boto3 read the bucket: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lake_in_an_s3_bucket_by_hour_adds_up_to_the_api_across_a_kill() {
    let seed: u64 = rand::random();
    println!("seed={seed}");
    let steps = mixed_stream(seed, SHAPE);
    let s3 = S3Server::start().await;
    let created = reqwest::Client::new()
        .put(format!("{}/lake", s3.endpoint()))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "the bucket: {created:?}");
    let endpoint = s3.endpoint();
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let args = [
        "--lake",
        "s3://lake/history",
        "--lake-partition",
        "hour",
        "--lake-flush-seconds",
        "1",
        "--order-hold-seconds",
        "604800",
    ];
    let mut server = crate::crash::serve_env(dir.path(), port, &args, &env).await;
    let half = steps.len() / 2;
    for step in &steps[..half / 2] {
        send(&url, step).await;
    }
    wait_sink(&url, "first objects", |s| s["rows"].as_u64() > Some(0)).await;
    for step in &steps[half / 2..half] {
        send(&url, step).await;
    }
    let in_flight = {
        let (url, step) = (url.clone(), steps[half].clone());
        tokio::spawn(async move { send(&url, &step).await })
    };
    tokio::time::sleep(Duration::from_millis(2)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = in_flight.await;
    // The kill came with objects written and history not yet in any.
    let copy = tempfile::tempdir().unwrap();
    s3.download("lake", "history", copy.path());
    let at_kill = ranges(&read_lake_by_hour(copy.path()));
    let ends = history_ends(dir.path());
    assert!(
        ends.iter()
            .any(|(p, end)| at_kill.get(p).map_or(0, |c| c.last().unwrap().1) < *end),
        "history not yet in the lake at the kill: lake {at_kill:?}, history {ends:?}"
    );

    let _server = crate::crash::serve_env(dir.path(), port, &args, &env).await;
    for step in &steps[half - 5..] {
        send(&url, step).await;
    }
    let read = caught_up(dir.path(), || {
        let copy = tempfile::tempdir().unwrap();
        s3.download("lake", "history", copy.path());
        read_lake_by_hour(copy.path())
    })
    .await;
    assert_chains(&read);
    // Per level: each event once, adding up to the API's onHand.
    let api = server_levels(&url, SHAPE).await;
    let levels = read["levels"].as_array().unwrap();
    assert_eq!(levels.len(), api.len(), "levels (seed={seed})");
    for level in levels {
        let (sku, location) = (level[0].as_str().unwrap(), level[1].as_str().unwrap());
        let n = |i: usize| level[i].as_i64().unwrap();
        let (on_hand, _, _, _) = api[&(sku.to_owned(), location.to_owned())];
        assert_eq!(n(2), n(3), "{sku}@{location}: an event twice (seed={seed})");
        assert_eq!(
            n(4),
            on_hand,
            "{sku}@{location}: onHandChange sum (seed={seed})"
        );
    }
    // An hour folder holds the rows the engine applied that UTC hour.
    for hour in read["days"].as_array().unwrap() {
        let at = |i: usize| {
            chrono::DateTime::from_timestamp_nanos(hour[i].as_i64().unwrap())
                .format("%Y-%m-%d %H")
                .to_string()
        };
        assert_eq!(at(1), hour[0].as_str().unwrap());
        assert_eq!(at(2), hour[0].as_str().unwrap());
    }

    // Refused, with what to do, and ingest goes on: another data
    // directory's server on this prefix, and one that would lay it out by
    // day. (A bucket is checked by its writer, not at start: a store
    // across the network that is away must not stop the server.)
    let other = tempfile::tempdir().unwrap();
    let refusals = [
        ("hour", "another data directory"),
        ("day", "--lake-partition hour"),
    ];
    for (layout, said) in refusals {
        let mut args = args.map(str::to_owned);
        args[3] = layout.to_owned();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let _refused = crate::crash::serve_env(other.path(), port, &args, &env).await;
        let status = wait_sink(&url, said, |s| {
            s["lastError"].as_str().is_some_and(|e| e.contains(said))
        })
        .await;
        assert_eq!(status["state"], "disconnected", "{status}");
        // Events are taken (answered 200 once applied).
        let events = steps
            .iter()
            .find(|s| matches!(s, crate::holds::Step::Events(_)))
            .unwrap();
        send(&url, events).await;
    }
}

/// [`read_lake`] of a lake by hour: its files one folder deeper, and
/// the span of processedAt per hour (`YYYY-MM-DD HH`).
fn read_lake_by_hour(lake: &Path) -> Value {
    let script = READ_LAKE
        .replace("\"/*/*.parquet\"", "\"/*/*/*.parquet\"")
        .replace(
            "SELECT day::VARCHAR, min",
            "SELECT day::VARCHAR || ' ' || lpad(hour::VARCHAR, 2, '0'), min",
        )
        .replace("GROUP BY day\"", "GROUP BY day, hour\"");
    assert!(
        script.contains("/*/*/*.parquet")
            && script.contains("lpad(hour")
            && script.contains("day, hour"),
        "READ_LAKE changed: change this too"
    );
    let output = Command::new("python3")
        .args(["-c", &script])
        .arg(lake)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "DuckDB read the lake: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}
