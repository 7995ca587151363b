//! What the web dashboard relies on beyond the core API: the embedded
//! pages, recent activity, the in-process simulator, and a location's
//! levels filtered by stock status.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{get, post_json, send_event, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_are_served_from_the_binary_with_revalidation() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let client = reqwest::Client::new();
    let index = client.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    assert!(index.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(index.text().await.unwrap().contains(r#"src="/ui/app.js""#));
    let script = client.get(format!("{url}/ui/app.js")).send().await.unwrap();
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let etag = script.headers()["etag"].clone();
    let again = client
        .get(format!("{url}/ui/app.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let (status, missing) = get(&url, "/ui/nope.js").await;
    assert_eq!((status, missing["code"].as_str()), (404, Some("not_found")));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_is_off_unless_switched_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let (status, body) = post_json(&url, "/v1/simulator/send", json!({"count": 10})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "simulator_disabled");
    assert!(body["message"].as_str().unwrap().contains("--simulator"));
    let (status, _) = post_json(&url, "/v1/simulator/start", json!({"rate": 10})).await;
    assert_eq!(status, 403);
    let (_, status_body) = get(&url, "/v1/simulator").await;
    assert_eq!(
        (
            status_body["enabled"].as_bool(),
            status_body["sent"].as_u64()
        ),
        (Some(false), Some(0))
    );
    let (_, levels) = get(&url, "/v1/locations/STORE-001/stock").await;
    assert_eq!(levels["code"], "not_found", "nothing was generated");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_sends_batches_runs_the_scenario_and_streams_at_a_rate() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c.simulator = true).await;
    let url = server.url();

    let (status, sent) = post_json(&url, "/v1/simulator/send", json!({"count": 500})).await;
    assert_eq!(status, 200, "{sent}");
    let counted = ["accepted", "duplicates", "rejected"].map(|k| sent[k].as_u64().unwrap());
    assert_eq!(counted.iter().sum::<u64>(), 500, "{sent}");
    assert!(counted[0] >= 450, "mostly new events: {sent}");
    let (_, state) = get(&url, "/v1/simulator").await;
    assert_eq!(state["sent"], 500);
    let recent = state["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 200, "the last 200 messages are listed");
    assert!(recent[0]["event"]["eventId"]
        .as_str()
        .unwrap()
        .starts_with("sim-"));
    let (status, _) = post_json(&url, "/v1/simulator/send", json!({"count": 0})).await;
    assert_eq!(status, 400);

    // The controlled scenario: documented results, and re-running it
    // changes nothing.
    for run in 0..2 {
        let (status, outcome) = post_json(&url, "/v1/simulator/scenario", json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(outcome["passed"], true, "run {run}: {outcome}");
        assert_eq!(outcome["levels"].as_array().unwrap().len(), 4);
        let receipt = &outcome["receipt"];
        let expected_new = if run == 0 { 13 } else { 0 };
        assert_eq!(receipt["accepted"], expected_new, "run {run}: {receipt}");
        assert_eq!(receipt["rejected"], 1, "the 1.5 sale, each time");
    }
    let (_, b) = get(&url, "/v1/stock/CTRL-B/STORE-1").await;
    assert_eq!(b["onHand"], 35);

    // Continuous traffic at a rate, then stopped.
    let (status, _) = post_json(&url, "/v1/simulator/start", json!({"rate": 0})).await;
    assert_eq!(status, 400);
    let (status, running) = post_json(&url, "/v1/simulator/start", json!({"rate": 1000})).await;
    assert_eq!(status, 200);
    assert_eq!(
        (running["running"].as_bool(), running["rate"].as_u64()),
        (Some(true), Some(1000))
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, stopped) = post_json(&url, "/v1/simulator/stop", json!({})).await;
    assert_eq!(stopped["running"], false);
    let sent = stopped["sent"].as_u64().unwrap() - 515;
    assert!(
        (700..=1700).contains(&sent),
        "about 1,000 a second for 1.5 s: {sent}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, later) = get(&url, "/v1/simulator").await;
    assert_eq!(later["sent"], stopped["sent"], "nothing after stop");

    // The activity the overview charts counts the same events.
    let (_, activity) = get(&url, "/v1/activity?seconds=60").await;
    let seconds = activity["seconds"].as_array().unwrap();
    assert_eq!(seconds.len(), 60);
    let accepted: u64 = seconds
        .iter()
        .map(|s| s["accepted"].as_u64().unwrap())
        .sum();
    assert_eq!(
        accepted,
        later["accepted"].as_u64().unwrap(),
        "every event sent is counted once"
    );
    assert!(seconds.iter().any(|s| s["commitP99Ms"].as_f64().is_some()));
    let sources = activity["sources"].as_array().unwrap();
    for system in ["POS", "WMS", "ECOM", "ERP"] {
        assert!(
            sources.iter().any(|s| s["sourceSystem"] == system),
            "{system} heard"
        );
    }
    assert!(sources.iter().all(|s| s["stale"] == false));
    let (status, _) = get(&url, "/v1/activity?seconds=0").await;
    assert_eq!(status, 400);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locations_levels_filter_by_stock_status_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    for sku in ["A", "B", "C", "D", "E"] {
        reqwest::Client::new()
            .put(format!("{url}/v1/products/{sku}"))
            .json(&json!({"name": sku, "lowStockThreshold": 5}))
            .send()
            .await
            .unwrap();
    }
    // A low (3), B out (0), C fine (10), D negative (−2), E fine (5).
    for (sku, receipt, sale) in [
        ("A", 5, 2),
        ("B", 4, 4),
        ("C", 10, 0),
        ("D", 1, 3),
        ("E", 5, 0),
    ] {
        send_event(&url, &format!("r-{sku}"), "RECEIPT", sku, "S1", receipt).await;
        if sale > 0 {
            send_event(&url, &format!("s-{sku}"), "SALE", sku, "S1", sale).await;
        }
    }
    let skus = |page: &Value| -> Vec<String> {
        page["levels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["sku"].as_str().unwrap().to_owned())
            .collect()
    };
    for (status, want) in [
        ("low", vec!["A", "B", "D"]),
        ("out", vec!["B", "D"]),
        ("negative", vec!["D"]),
        ("ok", vec!["C", "E"]),
    ] {
        let (code, page) = get(&url, &format!("/v1/locations/S1/stock?status={status}")).await;
        assert_eq!(code, 200);
        assert_eq!(skus(&page), want, "status={status}");
    }
    let (_, all) = get(&url, "/v1/locations/S1/stock").await;
    assert_eq!(all["levels"][0]["lowStockThreshold"], 5);
    // One at a time: the cursor skips what the filter leaves out.
    let mut after = String::new();
    let mut seen = Vec::new();
    loop {
        let (_, page) = get(
            &url,
            &format!("/v1/locations/S1/stock?status=low&limit=1{after}"),
        )
        .await;
        seen.extend(skus(&page));
        match page["nextAfter"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["A", "B", "D"]);
    let (code, error) = get(&url, "/v1/locations/S1/stock?status=empty").await;
    assert_eq!(code, 400);
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("low, out, negative, ok"));
    let (code, none) = get(&url, "/v1/locations/S1/stock?status=negative&after=D").await;
    assert_eq!((code, skus(&none).len()), (200, 0));
    server.stop().await.unwrap();
}
