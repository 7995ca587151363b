//! Webhooks against local HTTP receivers: signed bodies, retries with
//! backoff, and a dead letter when a receiver keeps failing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post as route_post;
use parking_lot::Mutex;
use serde_json::Value;
use stockflow::webhooks::{signature, Webhook};

use crate::{get, send_event, start};

#[derive(Default)]
struct Receiver {
    attempts: AtomicUsize,
    /// (body, signature header) of accepted deliveries.
    accepted: Mutex<Vec<(String, String)>>,
}

/// A receiver on a free port that fails the first `fail_first` attempts
/// (all of them with usize::MAX).
async fn receiver(fail_first: usize) -> (String, Arc<Receiver>) {
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
