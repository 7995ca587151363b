//! Webhooks: every alert is POSTed as JSON to each configured URL, signed
//! (`X-Stockflow-Signature: sha256=<hex HMAC-SHA256 of the body>`), with
//! retries and exponential backoff; after [`ATTEMPTS_MAX`] failures the
//! alert is kept as a dead letter (source `webhook:URL`) with the reason.
//!
//! Delivery is written once, against the backend seam; where the alerts
//! come from is the backend's ([`Backend::webhook_feed`]). The default
//! feed is the server's live stream: each URL has its own subscriber
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

use crate::http::backend::Backend;
use crate::pipeline::RefusedBody;
use crate::stream::{Filter, Hub, Kind};

/// Tries per alert before it becomes a dead letter.
pub const ATTEMPTS_MAX: u32 = 5;
/// First retry delay; doubled each time.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// One request's time limit.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Alerts a feed hands over ahead of their delivery, at most.
pub const FEED_AHEAD_MAX: usize = 256;

/// One alert to deliver, and what to do once it is delivered or kept as
/// a dead letter (Kafka mode: mark its offset as done).
pub struct Delivery {
    pub body: String,
    pub done: Option<Box<dyn FnOnce() + Send>>,
}

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
pub fn start<B: Backend>(backend: Arc<B>, hooks: Vec<Webhook>) -> anyhow::Result<()> {
    for hook in hooks {
        let feed = backend.webhook_feed(&hook.url)?;
        tokio::spawn(deliver(backend.clone(), hook, feed));
    }
    Ok(())
}

async fn deliver<B: Backend>(backend: Arc<B>, hook: Webhook, mut feed: mpsc::Receiver<Delivery>) {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("a TLS-less client builds");
    while let Some(delivery) = feed.recv().await {
        send(&client, &*backend, &hook, &delivery.body).await;
        if let Some(done) = delivery.done {
            done();
        }
    }
}

/// The default feed: this server's live stream of alerts, resumed from
/// the last one handed over when the subscriber falls behind.
pub fn hub_feed(hub: Arc<Hub>, url: &str) -> mpsc::Receiver<Delivery> {
    let (tx, rx) = mpsc::channel(FEED_AHEAD_MAX);
    tokio::spawn(follow(hub, url.to_owned(), tx));
    rx
}

async fn follow(hub: Arc<Hub>, url: String, tx: mpsc::Sender<Delivery>) {
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
        let mut pending: std::collections::VecDeque<_> = match resume {
            crate::stream::Resume::From(missed) => missed
                .into_iter()
                .filter(|m| m.kind == Kind::Alerts)
                .collect(),
            crate::stream::Resume::TooOld => {
                tracing::warn!(
                    url,
                    "webhook fell too far behind; alerts in between were not sent"
                );
                Default::default()
            }
        };
        loop {
            let message = match pending.pop_front() {
                Some(message) => message,
                None => tokio::select! {
                    received = subscription.receiver.recv() => match received {
                        Some(m) => m,
                        None => break, // overflowed: resubscribe from `last`
                    },
                    _ = closing.wait_for(|c| *c) => return,
                },
            };
            last = Some(format!("{}-{}", hub.epoch, message.seq));
            let delivery = Delivery {
                body: message.data().to_string(),
                done: None,
            };
            if tx.send(delivery).await.is_err() {
                return;
            }
        }
    }
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
