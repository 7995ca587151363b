//! Alerts fire on transitions, not on every event, and are kept with the
//! state through restarts.

use serde_json::{json, Value};

use crate::{event, get, post, send_event, start};

fn kinds(page: &Value) -> Vec<(String, String, String)> {
    page["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
                a["severity"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn k(kind: &str, state: &str, severity: &str) -> (String, String, String) {
    (kind.into(), state.into(), severity.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_follow_transitions_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    reqwest::Client::new()
        .put(format!("{url}/v1/products/AL"))
        .json(&json!({"name": "Lamp", "lowStockThreshold": 5}))
        .send()
        .await
        .unwrap();
    let steps = [
        ("RECEIPT", 10), // fresh level, 10 available: nothing
        ("SALE", 6),     // 4 < 5: LOW_STOCK warning
        ("SALE", 2),     // 2 ≤ 2.5: LOW_STOCK critical
        ("SALE", 1),     // still critical: nothing
        ("SALE", 1),     // 0: OUT_OF_STOCK
        ("SALE", 1),     // onHand −1: NEGATIVE_ON_HAND
    ];
    for (n, (kind, q)) in steps.iter().enumerate() {
        send_event(&url, &format!("al-{n}"), kind, "AL", "S1", *q).await;
    }
    let (_, active) = get(&url, "/v1/alerts?active=true&sku=AL").await;
    let mut now_active = kinds(&active);
    now_active.sort();
    assert_eq!(
        now_active,
        [
            k("LOW_STOCK", "raised", "CRITICAL"),
            k("NEGATIVE_ON_HAND", "raised", "CRITICAL"),
            k("OUT_OF_STOCK", "raised", "CRITICAL")
        ]
    );
    send_event(&url, "al-back", "RECEIPT", "AL", "S1", 20).await;
    let (_, all) = get(&url, "/v1/alerts?sku=AL&locationId=S1").await;
    let newest_last_step: Vec<_> = kinds(&all).into_iter().take(4).collect();
    assert!(
        newest_last_step.contains(&k("BACK_IN_STOCK", "fired", "INFO")),
        "{all}"
    );
    assert!(newest_last_step.contains(&k("OUT_OF_STOCK", "cleared", "INFO")));
    assert!(newest_last_step.contains(&k("LOW_STOCK", "cleared", "INFO")));
    assert!(newest_last_step.contains(&k("NEGATIVE_ON_HAND", "cleared", "INFO")));
    assert_eq!(
        all["alerts"].as_array().unwrap().len(),
        4 + 4,
        "one alert per transition, none per event: {all}"
    );
    assert_eq!(all["alerts"][0]["eventId"], "al-back");
    let (_, none_active) = get(&url, "/v1/alerts?active=true&sku=AL").await;
    assert_eq!(none_active["alerts"], json!([]));
    let (_, low) = get(&url, "/v1/alerts?kind=LOW_STOCK&limit=1").await;
    let (_, next) = get(
        &url,
        &format!(
            "/v1/alerts?kind=LOW_STOCK&limit=1&after={}",
            low["nextAfter"].as_str().unwrap()
        ),
    )
    .await;
    assert_ne!(low["alerts"][0]["id"], next["alerts"][0]["id"]);
    server.stop().await.unwrap();

    for replay_everything in [false, true] {
        if replay_everything {
            std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
        }
        let server = start(dir.path(), |_| {}).await;
        let (_, again) = get(&server.url(), "/v1/alerts?sku=AL&locationId=S1").await;
        assert_eq!(again, all, "replay={replay_everything}");
        server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_alerts_are_rebuilt_from_the_levels_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let events = [
        event("r1", "RECEIPT", "ACT", "S1", 20),
        event("r2", "SALE", "ACT", "S1", 17),
        event("r3", "RECEIPT", "ACT", "S2", 2),
        event("r4", "SALE", "ACT", "S2", 4),
    ];
    post(&url, "application/x-ndjson", events.join("\n")).await;
    let (_, before) = get(&url, "/v1/alerts?active=true&sku=ACT").await;
    assert_eq!(before["alerts"].as_array().unwrap().len(), 4, "{before}");
    server.stop().await.unwrap();
    for replay_everything in [false, true] {
        if replay_everything {
            std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
        }
        let server = start(dir.path(), |_| {}).await;
        let (_, after) = get(&server.url(), "/v1/alerts?active=true&sku=ACT").await;
        assert_eq!(after, before, "replay={replay_everything}");
        server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_location_threshold_overrides_the_products() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let client = reqwest::Client::new();
    client
        .put(format!("{url}/v1/products/OV"))
        .json(&json!({"name": "Kettle", "lowStockThreshold": 10}))
        .send()
        .await
        .unwrap();
    // The small store alerts at 3; the warehouse keeps the product's 10.
    let response = client
        .put(format!("{url}/v1/locations/SMALL"))
        .json(&json!({"type": "store", "lowStockThreshold": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for location in ["SMALL", "WH"] {
        send_event(
            &url,
            &format!("ov-r-{location}"),
            "RECEIPT",
            "OV",
            location,
            12,
        )
        .await;
        send_event(&url, &format!("ov-s-{location}"), "SALE", "OV", location, 7).await;
    }
    let (_, active) = get(&url, "/v1/alerts?active=true&sku=OV").await;
    let at: Vec<&str> = active["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["locationId"].as_str().unwrap())
        .collect();
    assert_eq!(
        at,
        ["WH"],
        "5 left is low at WH (10) but not at SMALL (3): {active}"
    );
    let (_, location) = get(&url, "/v1/locations/SMALL").await;
    assert_eq!(location["lowStockThreshold"], 3);
    // Lowering SMALL further crosses its own line; the roll-ups agree.
    send_event(&url, "ov-s2", "SALE", "OV", "SMALL", 3).await;
    let (_, active) = get(&url, "/v1/alerts?active=true&sku=OV&locationId=SMALL").await;
    // 2 left: below 3, above half of it.
    assert_eq!(kinds(&active), [k("LOW_STOCK", "raised", "WARNING")]);
    let (_, check) = get(&url, "/v1/check").await;
    assert_eq!(check["ok"], true, "{check}");
    server.stop().await.unwrap();
}

/// Polls until the active alerts of `sku` are `want` (or fails after 5 s).
async fn wait_for_active(url: &str, sku: &str, want: &[(String, String, String)]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, active) = get(url, &format!("/v1/alerts?active=true&sku={sku}")).await;
        let mut got = kinds(&active);
        got.sort();
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "active alerts of {sku}: {active}, want {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_raise_stale_and_end_rejection_bursts_with_no_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let rules = stockflow_core::alerts::TimerRules {
        stale_after_ns: 1_000_000_000,
        burst_rejections: 3,
        burst_window_ns: 1_500_000_000,
    };
    let server = start(dir.path(), |c| c.engine.timers = rules).await;
    let url = server.url();
    send_event(&url, "st-r", "RECEIPT", "ST", "S1", 20).await;
    wait_for_active(&url, "ST", &[]).await;
    // No event for a second: STALE, raised by the timer alone.
    let quiet = std::time::Instant::now();
    wait_for_active(&url, "ST", &[k("STALE", "raised", "WARNING")]).await;
    assert!(
        quiet.elapsed() < std::time::Duration::from_millis(2_500),
        "STALE at most ~1 s late"
    );
    send_event(&url, "st-s", "SALE", "ST", "S1", 1).await;
    wait_for_active(&url, "ST", &[]).await;

    // Three refused reservations make a burst; two would not.
    for n in 0..3 {
        let (_, receipt) = post(
            &url,
            "application/json",
            event(&format!("st-x{n}"), "RESERVATION", "ST", "S1", 500),
        )
        .await;
        assert_eq!(receipt["errors"][0]["reason"], "insufficient_stock");
    }
    let (_, active) = get(
        &url,
        "/v1/alerts?active=true&sku=ST&kind=RESERVATION_REJECTED",
    )
    .await;
    assert_eq!(
        kinds(&active),
        [k("RESERVATION_REJECTED", "raised", "WARNING")],
        "{active}"
    );
    assert_eq!(active["alerts"][0]["eventId"], "st-x2");
    // Quiet for the window: the burst ends (and the level goes stale).
    wait_for_active(&url, "ST", &[k("STALE", "raised", "WARNING")]).await;
    let (_, all) = get(&url, "/v1/alerts?sku=ST").await;
    server.stop().await.unwrap();

    // The history and the active set survive a restart (and a full replay).
    for replay_everything in [false, true] {
        if replay_everything {
            std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
        }
        let server = start(dir.path(), |c| c.engine.timers = rules).await;
        let (_, again) = get(&server.url(), "/v1/alerts?sku=ST").await;
        assert_eq!(again["alerts"], all["alerts"], "replay={replay_everything}");
        wait_for_active(&server.url(), "ST", &[k("STALE", "raised", "WARNING")]).await;
        server.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_checkouts_make_one_rejection_burst_alert() {
    let dir = tempfile::tempdir().unwrap();
    let rules = stockflow_core::alerts::TimerRules {
        burst_rejections: 3,
        ..Default::default()
    };
    let server = start(dir.path(), |c| c.engine.timers = rules).await;
    let url = server.url();
    send_event(&url, "cb-r", "RECEIPT", "CB", "S1", 1).await;
    let client = reqwest::Client::new();
    for n in 0..6 {
        let order = json!({"orderId": format!("cb-{n}"), "lines": [{"sku": "CB", "locationId": "S1", "quantity": 2}]});
        let response = client
            .post(format!("{url}/v1/orders"))
            .json(&order)
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "rejected", "{body}");
    }
    // The same order again is its old answer, not a new refusal.
    let again =
        json!({"orderId": "cb-0", "lines": [{"sku": "CB", "locationId": "S1", "quantity": 2}]});
    client
        .post(format!("{url}/v1/orders"))
        .json(&again)
        .send()
        .await
        .unwrap();
    let (_, bursts) = get(&url, "/v1/alerts?sku=CB&kind=RESERVATION_REJECTED").await;
    assert_eq!(
        kinds(&bursts),
        [k("RESERVATION_REJECTED", "raised", "WARNING")],
        "one alert per burst: {bursts}"
    );
    assert_eq!(bursts["alerts"][0]["eventId"], "order:cb-2");
    let (_, all) = get(&url, "/v1/alerts?sku=CB").await;
    server.stop().await.unwrap();
    std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
    let server = start(dir.path(), |c| c.engine.timers = rules).await;
    let (_, again) = get(&server.url(), "/v1/alerts?sku=CB").await;
    assert_eq!(
        again["alerts"], all["alerts"],
        "replay decides the same refusals"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_and_mutes_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let events = [
        event("m1", "RECEIPT", "ACK", "S1", 10),
        event("m2", "SALE", "ACK", "S1", 8),
        event("m3", "RECEIPT", "MUTE", "S1", 3),
    ];
    post(&url, "application/x-ndjson", events.join("\n")).await;
    let (_, low) = get(&url, "/v1/alerts?active=true&sku=ACK").await;
    let id = low["alerts"][0]["id"].as_str().unwrap().to_owned();
    let client = reqwest::Client::new();
    let acknowledged = client
        .post(format!("{url}/v1/alerts/{id}/acknowledge"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(acknowledged.status(), 200);
    let muted = client
        .post(format!("{url}/v1/alerts/mutes"))
        .json(&json!({"sku": "MUTE", "minutes": 90}))
        .send()
        .await
        .unwrap();
    assert_eq!(muted.status(), 201);
    let (_, before) = get(&url, "/v1/alerts?active=true").await;
    let mut marked: Vec<(&str, &Value, &Value)> = before["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["sku"].as_str().unwrap(),
                &a["acknowledged"]["by"],
                &a["muted"]["by"],
            )
        })
        .collect();
    marked.sort_by_key(|m| m.0);
    assert_eq!(
        marked,
        [
            ("ACK", &json!("anonymous"), &Value::Null),
            ("MUTE", &Value::Null, &json!("anonymous"))
        ],
        "{before}"
    );
    let (_, mutes) = get(&url, "/v1/alerts/mutes").await;
    server.stop().await.unwrap();
    for replay_everything in [false, true] {
        if replay_everything {
            std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
        }
        let server = start(dir.path(), |_| {}).await;
        let (_, after) = get(&server.url(), "/v1/alerts?active=true").await;
        assert_eq!(after, before, "replay={replay_everything}");
        let (_, again) = get(&server.url(), "/v1/alerts/mutes").await;
        assert_eq!(again, mutes, "replay={replay_everything}");
        server.stop().await.unwrap();
    }
}
