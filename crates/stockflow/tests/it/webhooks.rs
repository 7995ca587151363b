//! Webhooks against local HTTP receivers: signed bodies, retries with
//! backoff, and a dead letter when a receiver keeps failing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post as route_post;
use parking_lot::Mutex;
use serde_json::Value;
use stockflow_http::webhooks::signature;
use stockflow_service::config::Webhook;

use crate::{get, send_event, start};

#[derive(Default)]
pub struct Receiver {
    pub attempts: AtomicUsize,
    /// (body, signature header) of accepted deliveries.
    pub accepted: Mutex<Vec<(String, String)>>,
}

/// A receiver on a free port that fails the first `fail_first` attempts
/// (all of them with usize::MAX).
pub async fn receiver(fail_first: usize) -> (String, Arc<Receiver>) {
    let state = Arc::new(Receiver::default());
    let shared = state.clone();
    let app = axum::Router::new().route(
        "/hook",
        route_post(move |headers: HeaderMap, body: String| {
            let state = shared.clone();
            async move {
                let n = state.attempts.fetch_add(1, Ordering::SeqCst);
                if n < fail_first {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let signed = headers
                    .get("x-stockflow-signature")
                    .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
                state.accepted.lock().push((body, signed));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_posted_signed_retried_and_dead_lettered() {
    let (flaky_url, flaky) = receiver(2).await;
    let (down_url, down) = receiver(usize::MAX).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = vec![
        Webhook {
            url: flaky_url.clone(),
            secret: Some("s3cret".into()),
        },
        Webhook {
            url: down_url.clone(),
            secret: None,
        },
    ];
    let server = start(dir.path(), |c| c.webhooks = hooks).await;
    let url = server.url();
    // A fresh level at 3 < 10: one LOW_STOCK and one OUT_OF_STOCK-free raise.
    send_event(&url, "w1", "RECEIPT", "W", "S1", 3).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    while flaky.accepted.lock().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the flaky receiver never got the alert"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (body, signed) = flaky.accepted.lock()[0].clone();
    assert_eq!(
        flaky.attempts.load(Ordering::SeqCst),
        3,
        "two failures, then delivered"
    );
    assert_eq!(
        signed,
        signature("s3cret", body.as_bytes()),
        "the body is signed"
    );
    let alert: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (alert["kind"].as_str(), alert["sku"].as_str()),
        (Some("LOW_STOCK"), Some("W"))
    );

    // The receiver that never answers 2xx: 5 attempts, then a dead letter.
    loop {
        let (_, letters) = get(&url, "/v1/dead-letters?source=webhook:".to_owned().as_str()).await;
        let found = letters["deadLetters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["source"] == format!("webhook:{down_url}"))
            .cloned();
        if let Some(letter) = found {
            assert!(
                letter["reason"]
                    .as_str()
                    .unwrap()
                    .contains("failed 5 times"),
                "{letter}"
            );
            assert_eq!(
                serde_json::from_str::<Value>(letter["payload"].as_str().unwrap()).unwrap()["kind"],
                "LOW_STOCK"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter for the failing receiver"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(down.attempts.load(Ordering::SeqCst), 5);
    server.stop().await.unwrap();
}

/// PUT /v1/products/{sku} with `price`.
async fn price(url: &str, sku: &str, price: f64) {
    let response = reqwest::Client::new()
        .put(format!("{url}/v1/products/{sku}"))
        .json(&serde_json::json!({"name": "Price test", "price": price}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// A PRICE_DROP is an alert like the others: streamed as it happens,
/// posted to webhooks, listed, and still there for a stream resumed after
/// a restart, with the same JSON everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_drop_is_streamed_posted_listed_and_kept_across_a_restart() {
    use crate::stream::Reader;
    let (hook_url, hook) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = vec![Webhook {
        url: hook_url,
        secret: None,
    }];
    let server = start(dir.path(), |c| c.webhooks = hooks.clone()).await;
    let url = server.url();
    let mut live = Reader::open(&format!("{url}/v1/stream?kinds=alerts"), None).await;
    let mut by_sku = Reader::open(&format!("{url}/v1/stream?kinds=alerts&sku=PD2"), None).await;
    // 10 → 8 is a 20% cut (≥ the default 10%); 8 → 7.9 is 1.25%; a rise
    // is none; PD2's first price is no change, its cut is 50%.
    price(&url, "PD1", 10.0).await;
    price(&url, "PD1", 8.0).await;
    price(&url, "PD1", 7.9).await;
    price(&url, "PD1", 12.0).await;
    price(&url, "PD2", 4.0).await;
    price(&url, "PD2", 2.0).await;

    let (_, listed) = get(&url, "/v1/alerts?kind=PRICE_DROP").await;
    let listed = listed["alerts"].as_array().unwrap().clone();
    let summary: Vec<(&str, f64, f64)> = listed
        .iter()
        .map(|a| {
            let sku = a["sku"].as_str().unwrap();
            (
                sku,
                a["previousPrice"].as_f64().unwrap(),
                a["dropPercent"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("PD2", 4.0, 50.0), ("PD1", 10.0, 20.0)],
        "{listed:?}"
    );

    // The stream carried the same two, oldest first, and nothing else.
    let (first_id, name, first) = live.next().await;
    assert_eq!(name, "alerts");
    assert_eq!(first, listed[1], "the streamed alert is the listed one");
    let (_, _, second) = live.next().await;
    assert_eq!(second, listed[0]);
    let (_, _, only) = by_sku.next().await;
    assert_eq!(only, listed[0], "a SKU filter sees its own drop only");
    let (_, located) = get(&url, "/v1/alerts?kind=PRICE_DROP&locationId=S1").await;
    assert_eq!(
        located["alerts"],
        serde_json::json!([]),
        "a drop is no location's"
    );

    // The webhook got both, as streamed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while hook.accepted.lock().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the webhook did not get both drops"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let posted: Vec<Value> = hook
        .accepted
        .lock()
        .iter()
        .map(|(body, _)| serde_json::from_str(body).unwrap())
        .collect();
    assert_eq!(posted, [listed[1].clone(), listed[0].clone()]);

    // After a restart, a client that had seen the first resumes with the
    // second; the list is unchanged.
    server.stop().await.unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let mut resumed = Reader::open(&format!("{url}/v1/stream?kinds=alerts"), Some(&first_id)).await;
    let (_, _, again) = resumed.next().await;
    assert_eq!(again, listed[0]);
    let (_, relisted) = get(&url, "/v1/alerts?kind=PRICE_DROP").await;
    assert_eq!(relisted["alerts"], Value::Array(listed));
    server.stop().await.unwrap();
}

/// A mute in force keeps its alerts from the webhooks (they are still
/// listed); once it ends, the next alerts go out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muted_alerts_are_not_posted() {
    let (hook_url, hook) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = vec![Webhook {
        url: hook_url,
        secret: None,
    }];
    let server = start(dir.path(), |c| c.webhooks = hooks).await;
    let url = server.url();
    let client = reqwest::Client::new();
    let muted = client
        .post(format!("{url}/v1/alerts/mutes"))
        .json(&serde_json::json!({"sku": "HUSH", "minutes": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(muted.status(), 201);
    let mute: Value = muted.json().await.unwrap();
    // Low at both SKUs; only LOUD's alert is posted.
    send_event(&url, "h1", "RECEIPT", "HUSH", "S1", 3).await;
    send_event(&url, "h2", "RECEIPT", "LOUD", "S1", 3).await;
    let skus = || -> Vec<String> {
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while skus().is_empty() {
        assert!(Instant::now() < deadline, "nothing posted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // HUSH's alert came first; had it been sent, it would be here by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(skus(), ["LOUD"]);
    let (_, listed) = get(&url, "/v1/alerts?sku=HUSH&muted=true").await;
    assert_eq!(
        listed["alerts"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    // Unmuted: HUSH's next alert (out of stock) is posted.
    let ended = client
        .delete(format!(
            "{url}/v1/alerts/mutes/{}",
            mute["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    send_event(&url, "h3", "SALE", "HUSH", "S1", 3).await;
    while !skus().contains(&"HUSH".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "HUSH never posted after the mute ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.unwrap();
}
