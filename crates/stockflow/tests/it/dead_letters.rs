//! Dead letters: filters, replay with a corrected payload, discard, and
//! all of it surviving a restart.

use serde_json::{json, Value};

use crate::{get, post, start};

async fn request(method: reqwest::Method, url: &str, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .request(method, url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("server reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn ids(page: &Value) -> Vec<u64> {
    page["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_filtered_replayed_and_discarded_durably() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let bad = [
        r#"{"eventId":"d1","eventType":"RECEIPT","sku":"A","locationId":"S1","quantity":"5"}"#,
        r#"{"eventId":"d2","eventType":"SALE","sku":"A","locationId":"S1","quantity":0}"#,
    ];
    post(&url, "application/x-ndjson", bad.join("\n")).await;
    let store_item = r#"{"id":7,"storeName":"Store_1","sku":"Item_1","type":"RESTOCKED","quantity":2,"timestamp":"2020-10-13T16:48:35"}"#;
    request(
        reqwest::Method::POST,
        &format!("{url}/v1/sources/store-item/events"),
        store_item,
    )
    .await;

    let (_, all) = get(&url, "/v1/dead-letters").await;
    assert_eq!(ids(&all), [0, 1, 2]);
    let (_, by_format) = get(&url, "/v1/dead-letters?source=store-item").await;
    assert_eq!(ids(&by_format), [2]);
    let (_, by_source) = get(
        &url,
        "/v1/dead-letters?source=http:/v1/events&reason=STRING",
    )
    .await;
    assert_eq!(ids(&by_source), [0], "reason matches case-insensitively");

    // A corrected canonical event: applied, and the letter is resolved.
    let fixed =
        r#"{"eventId":"d1","eventType":"RECEIPT","sku":"A","locationId":"S1","quantity":5}"#;
    let (status, replayed) = request(
        reqwest::Method::POST,
        &format!("{url}/v1/dead-letters/0/replay"),
        fixed,
    )
    .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["resolved"], true);
    assert_eq!(replayed["receipt"]["accepted"], 1);
    let (_, level) = get(&url, "/v1/stock/A/S1").await;
    assert_eq!(level["onHand"], 5);

    // Still wrong: refused with the reason, nothing applied, and the
    // letter stays as it was, alone (a replay never makes a new letter),
    // however often it is tried.
    let (_, before) = get(&url, "/v1/dead-letters").await;
    for _ in 0..2 {
        let (status, again) = request(
            reqwest::Method::POST,
            &format!("{url}/v1/dead-letters/1/replay"),
            bad[1],
        )
        .await;
        assert_eq!(
            (status, again["code"].as_str()),
            (422, Some("still_invalid")),
            "{again}"
        );
        let reason = before["deadLetters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == 1)
            .unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            again["message"].as_str().unwrap().contains(&reason),
            "{again}"
        );
    }
    let (_, after) = get(&url, "/v1/dead-letters").await;
    assert_eq!(ids(&after), ids(&before), "no letter made or lost");
    // A payload of nothing resolves nothing.
    let (status, empty) = request(
        reqwest::Method::POST,
        &format!("{url}/v1/dead-letters/1/replay"),
        "[]",
    )
    .await;
    assert_eq!(status, 400, "{empty}");
    // A source message is replayed through its format.
    let fixed_item = store_item.replace("RESTOCKED", "RESTOCK");
    let (_, item) = request(
        reqwest::Method::POST,
        &format!("{url}/v1/dead-letters/2/replay"),
        &fixed_item,
    )
    .await;
    assert_eq!(item["resolved"], true, "{item}");
    let (_, level) = get(&url, "/v1/stock/Item_1/Store_1").await;
    assert_eq!(level["onHand"], 2);

    let (status, _) = request(
        reqwest::Method::DELETE,
        &format!("{url}/v1/dead-letters/1"),
        "",
    )
    .await;
    assert_eq!(status, 204);
    let (status, missing) = request(
        reqwest::Method::DELETE,
        &format!("{url}/v1/dead-letters/1"),
        "",
    )
    .await;
    assert_eq!((status, missing["code"].clone()), (404, json!("not_found")));
    let (_, left) = get(&url, "/v1/dead-letters").await;
    assert_eq!(
        ids(&left),
        Vec::<u64>::new(),
        "resolved and discarded: none left"
    );
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("stockflow_dead_letters_resolved_total"),
        "{metrics}"
    );
    server.stop().await.unwrap();

    // Through the checkpoint and through a full log replay.
    for replay_everything in [false, true] {
        if replay_everything {
            std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
        }
        let server = start(dir.path(), |_| {}).await;
        let (_, left) = get(&server.url(), "/v1/dead-letters").await;
        assert_eq!(ids(&left), Vec::<u64>::new(), "replay={replay_everything}");
        server.stop().await.unwrap();
    }
}
