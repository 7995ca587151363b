//! `stockflow import`, the real binary: into a data directory and into a
//! running server, with re-import changing nothing.

use std::process::Command;

use serde_json::json;

use crate::{get, start};

fn import(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
        .arg("import")
        .args(args)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "import failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
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

    let first = import(&[path, "--format", "store-item", "--data-dir", data_dir]);
    assert!(
        first.contains("12001 messages")
            && first.contains("accepted 12000, duplicates 0, rejected 1"),
        "{first}"
    );
    assert!(
        first.contains("message 6000: quantity: "),
        "the bad message is named by its place in the file: {first}"
    );
    let again = import(&[path, "--format", "store-item", "--data-dir", data_dir]);
    assert!(
        again.contains("accepted 0, duplicates 12000, rejected 1"),
        "{again}"
    );

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
