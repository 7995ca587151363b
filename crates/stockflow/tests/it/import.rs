//! `stockflow import`, the real binary: into a data directory and into a
//! running server, with re-import changing nothing.

use std::process::Command;

use serde_json::json;

use crate::{get, start};

/// Runs `stockflow import`; its output, once it exits with `code` (0: all
/// taken, 3: messages refused).
fn import_exits(code: i32, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .arg("import")
        .args(args)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(code),
        "import: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn import(args: &[&str]) -> String {
    import_exits(0, args)
}

/// The summary line a script reads: the last line, key=value.
fn summary_of(stdout: &str) -> std::collections::BTreeMap<String, String> {
    let last = stdout.lines().last().unwrap_or_default();
    let fields = last
        .strip_prefix("summary: ")
        .unwrap_or_else(|| panic!("the last line is the summary: {stdout}"));
    fields
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Every row refused is a failure a script must see: exit code 3, the
/// summary saying so; a URL without a scheme, or no target, is a usage
/// error (2) that says what to write.
#[test]
fn refused_rows_and_usage_errors_have_their_exit_codes() {
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("snapshot.csv");
    std::fs::write(
        &file,
        "sku,locationId,quantity,asOf\nA,S1,lots,2026-01-01\nB,S1,,2026-01-01\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let (path, data_dir) = (file.to_str().unwrap(), data.path().to_str().unwrap());
    let out = import_exits(
        3,
        &[path, "--format", "erp-snapshot", "--data-dir", data_dir],
    );
    let summary = summary_of(&out);
    assert_eq!(
        (
            summary["messages"].as_str(),
            summary["accepted"].as_str(),
            summary["rejected"].as_str()
        ),
        ("2", "0", "2"),
        "{out}"
    );

    let usage = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
            .arg("import")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let said = usage(&[path, "--format", "erp-snapshot", "--url", "127.0.0.1:8080"]);
    assert!(
        said.contains("did you mean http://127.0.0.1:8080"),
        "{said}"
    );
    let said = usage(&[path, "--format", "erp-snapshot"]);
    assert!(
        said.contains("--url") && said.contains("--data-dir"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_imports_into_a_data_dir_in_batches_and_again_changes_nothing() {
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("pos.ndjson");
    // 12,001 messages: more than two batches, and one bad message.
    let mut lines: Vec<String> = (0..12_000)
        .map(|i| {
            format!(
                r#"{{"id":{i},"storeName":"Store_{}","sku":"Item_{}","type":"RESTOCK","quantity":2,"timestamp":"2020-10-13T16:48:35"}}"#,
                i % 3,
                i % 7
            )
        })
        .collect();
    lines.insert(6_000, r#"{"id":"x","storeName":"Store_0","sku":"Item_0","type":"RESTOCK","quantity":-2,"timestamp":"2020-10-13T16:48:35"}"#.into());
    std::fs::write(&file, lines.join("\n")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let path = file.to_str().unwrap();

    let first = import_exits(3, &[path, "--format", "store-item", "--data-dir", data_dir]);
    assert!(
        first.contains("12001 messages")
            && first.contains("accepted 12000, duplicates 0, rejected 1"),
        "{first}"
    );
    assert!(
        first.contains("message 6000: quantity: "),
        "the bad message is named by its place in the file: {first}"
    );
    assert_eq!(summary_of(&first)["accepted"], "12000", "{first}");
    let again = import_exits(3, &[path, "--format", "store-item", "--data-dir", data_dir]);
    assert!(
        again.contains("accepted 0, duplicates 12000, rejected 1"),
        "{again}"
    );
    assert_eq!(summary_of(&again)["duplicates"], "12000", "{again}");

    let server = start(data.path(), |_| {}).await;
    let (_, item) = get(&server.url(), "/v1/stock/Item_0").await;
    // ids 0, 7, 14, ... < 12000: 1715 messages of 2 units.
    assert_eq!(item["totals"]["onHand"], json!(1715 * 2));
    let (_, letters) = get(&server.url(), "/v1/dead-letters").await;
    assert_eq!(letters["deadLetters"][0]["source"], "import:store-item");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_arrays_and_csv_files_import_into_a_running_server() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), |_| {}).await;
    let url = server.url();
    let examples = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../stockflow-service/sources/examples"
    );
    let out = import(&[
        &format!("{examples}/store-item-controlled.json"),
        "--format",
        "store-item",
        "--url",
        &url,
    ]);
    assert!(
        out.contains("accepted 9, duplicates 0, rejected 0"),
        "{out}"
    );
    let out = import(&[
        &format!("{examples}/erp-snapshot.csv"),
        "--format",
        "erp-snapshot",
        "--url",
        &url,
    ]);
    assert!(
        out.contains("accepted 3, duplicates 0, rejected 0"),
        "{out}"
    );
    let (_, item) = get(&url, "/v1/stock/Item_1").await;
    assert_eq!(item["totals"]["onHand"], json!(50));
    let (_, level) = get(&url, "/v1/stock/SKU-00001/WH-EAST").await;
    assert_eq!(level["onHand"], json!(1200));
    server.stop().await.unwrap();
}

/// `simulate --rate 0` sends nothing (no server is even reached), and its
/// summary counts what it sent.
#[test]
fn simulate_at_rate_zero_sends_nothing() {
    let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .args(["simulate", "--rate", "0", "--duration", "1"])
        .args(["--url", &format!("http://127.0.0.1:{}", crate::free_port())])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("sent 0 events: accepted 0, duplicates 0, rejected 0"),
        "{stdout}"
    );
}
