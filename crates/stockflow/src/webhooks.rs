//! Webhooks: every alert is POSTed as JSON to each configured URL, signed
//! (`X-Stockflow-Signature: sha256=<hex HMAC-SHA256 of the body>`), with
//! retries and exponential backoff; after [`ATTEMPTS_MAX`] failures the
//! alert is kept as a dead letter (source `webhook:URL`) with the reason.
//!
//! Each URL has its own subscriber on the live stream (kinds=alerts), so a
//! slow receiver only delays itself; when its buffer overflows it resumes
//! from its last delivered message. Delivery is at least once while the
//! server runs; alerts raised while it is down are not re-sent.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::pipeline::{Pipeline, RefusedBody};
use crate::stream::{Filter, Kind};

/// Tries per alert before it becomes a dead letter.
pub const ATTEMPTS_MAX: u32 = 5;
/// First retry delay; doubled each time.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// One request's time limit.
pub const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Webhook {
    pub url: String,
    /// Signs bodies when set.
    pub secret: Option<String>,
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts one delivery task per webhook; they end when the server stops.
pub fn start(pipeline: Arc<Pipeline>, hooks: Vec<Webhook>) {
    for hook in hooks {
        tokio::spawn(deliver(pipeline.clone(), hook));
    }
}

async fn deliver(pipeline: Arc<Pipeline>, hook: Webhook) {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("a TLS-less client builds");
    let hub = pipeline.shared.hub.clone();
    let mut closing = hub.closing();
    let mut last: Option<String> = None;
    loop {
        let filter = Filter {
            sku: None,
            location_id: None,
            kinds: vec![Kind::Alerts],
        };
        let Some((mut subscription, resume)) = hub.subscribe(filter, last.as_deref()) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut pending: Vec<_> = match resume {
            crate::stream::Resume::From(missed) => missed
                .into_iter()
                .filter(|m| m.kind == Kind::Alerts)
                .collect(),
            crate::stream::Resume::TooOld => {
                tracing::warn!(
                    url = hook.url,
                    "webhook fell too far behind; alerts in between were not sent"
                );
                Vec::new()
            }
        };
        loop {
            let message = if pending.is_empty() {
                tokio::select! {
                    received = subscription.receiver.recv() => match received {
                        Some(m) => m,
                        None => break, // overflowed: resubscribe from `last`
                    },
                    _ = closing.wait_for(|c| *c) => return,
                }
            } else {
                pending.remove(0)
            };
            last = Some(format!("{}-{}", hub.epoch, message.seq));
            send(&client, &pipeline, &hook, &message.data()).await;
        }
    }
}

async fn send(client: &reqwest::Client, pipeline: &Pipeline, hook: &Webhook, body: &str) {
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
    if let Ok(receipt) = pipeline.submit_refused(refused, &format!("webhook:{}", hook.url)) {
        let _ = receipt.await;
    }
}
