//! Webhooks: every alert is POSTed as JSON to each configured URL (but
//! those a mute in force covers when it is its turn), signed
//! (`X-Stockflow-Signature: sha256=<hex HMAC-SHA256 of the body>`), with
//! retries and exponential backoff; after [`ATTEMPTS_MAX`] failures the
//! alert is kept as a dead letter (source `webhook:URL`) with the reason.
//!
//! Delivery is written once, against the backend seam; where the alerts
//! come from is the backend's ([`Backend::webhook_feed`]). The default
//! feed is the server's live stream ([`stockflow_service::stream::alert_feed`]): each URL has its own subscriber
//! (kinds=alerts), so a slow receiver only delays itself, and when its
//! buffer overflows it resumes from its last delivered message; delivery
//! is at least once while the server runs, and alerts raised while it is
//! down are not sent. Kafka mode reads the alerts topic in a consumer
//! group per URL instead: each alert is sent by one member, and its offset
//! is committed only once it is delivered or kept, so a restart resumes.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::backend::Backend;
use stockflow_service::config::Webhook;
use stockflow_service::receipt::RefusedBody;
use stockflow_service::stream::Delivery;

/// Tries per alert before it becomes a dead letter.
pub const ATTEMPTS_MAX: u32 = 5;
/// First retry delay; doubled each time.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// One request's time limit.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts one delivery task per webhook; they end when the server stops.
pub fn start<B: Backend>(backend: Arc<B>, hooks: Vec<Webhook>) -> anyhow::Result<()> {
    for hook in hooks {
        let feed = backend.webhook_feed(&hook.url)?;
        tokio::spawn(deliver(backend.clone(), hook, feed));
    }
    Ok(())
}

async fn deliver<B: Backend>(backend: Arc<B>, hook: Webhook, mut feed: mpsc::Receiver<Delivery>) {
    let client = match backend.config().trust.client().timeout(TIMEOUT).build() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(url = %hook.url, %error, "no HTTP client for the webhook: nothing is delivered to it");
            return;
        }
    };
    while let Some(delivery) = feed.recv().await {
        if muted(&*backend, &delivery.body) {
            metrics::counter!("stockflow_webhook_deliveries_total", "outcome" => "muted")
                .increment(1);
        } else {
            send(&client, &*backend, &hook, &delivery.body).await;
        }
        if let Some(done) = delivery.done {
            done();
        }
    }
}

/// Whether a mute in force now covers the alert (`POST
/// /v1/alerts/mutes`): a muted alert is kept and listed, not sent.
fn muted<B: Backend>(backend: &B, body: &str) -> bool {
    let Ok(alert) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let (Some(kind), Some(sku)) = (alert["kind"].as_str(), alert["sku"].as_str()) else {
        return false;
    };
    let location = alert["locationId"].as_str();
    let now = stockflow_service::clock::wall_clock();
    backend
        .catalog()
        .marks
        .mute_over(kind, sku, location, now)
        .is_some()
}

async fn send<B: Backend>(client: &reqwest::Client, backend: &B, hook: &Webhook, body: &str) {
    let mut delay = BACKOFF_FIRST;
    let mut why = String::new();
    for attempt in 1..=ATTEMPTS_MAX {
        let mut request = client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("x-stockflow-attempt", attempt.to_string())
            .body(body.to_owned());
        if let Some(secret) = &hook.secret {
            request = request.header("x-stockflow-signature", signature(secret, body.as_bytes()));
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                metrics::counter!("stockflow_webhook_deliveries_total", "outcome" => "delivered")
                    .increment(1);
                return;
            }
            Ok(response) => why = format!("answered {}", response.status()),
            Err(error) => why = error.to_string(),
        }
        metrics::counter!("stockflow_webhook_deliveries_total", "outcome" => "retried")
            .increment(1);
        if attempt < ATTEMPTS_MAX {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    metrics::counter!("stockflow_webhook_deliveries_total", "outcome" => "dead_lettered")
        .increment(1);
    tracing::warn!(
        url = hook.url,
        reason = why,
        "webhook gave up; alert kept as a dead letter"
    );
    let refused = RefusedBody {
        reason: format!(
            "webhook {} failed {ATTEMPTS_MAX} times; last: {why}",
            hook.url
        ),
        payload: body.as_bytes().to_vec(),
    };
    let source = format!("webhook:{}", hook.url);
    if let Err(error) = backend.keep_refused(refused, &source).await {
        tracing::error!(
            url = hook.url,
            error = error.message,
            "the undelivered alert could not be kept"
        );
    }
}
