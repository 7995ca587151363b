//! The alerts of the hub as a feed a webhook delivers from, resumed from
//! the last one handed over when its subscriber falls behind.

use super::*;

/// Alerts a webhook feed hands over ahead of their delivery, at most.
pub const FEED_AHEAD_MAX: usize = 256;

/// One alert to deliver, and what to do once it is delivered or kept as
/// a dead letter (Kafka mode: mark its offset as done).
pub struct Delivery {
    pub body: String,
    pub done: Option<Box<dyn FnOnce() + Send>>,
}

/// The alerts of this server's live stream for a webhook to `url`,
/// resumed from the last one handed over when the subscriber falls behind
/// (the default `Backend::webhook_feed` of `stockflow-http`).
pub fn alert_feed(hub: Arc<Hub>, url: &str) -> mpsc::Receiver<Delivery> {
    let (tx, rx) = mpsc::channel(FEED_AHEAD_MAX);
    tokio::spawn(follow(hub, url.to_owned(), tx));
    rx
}

pub(super) async fn follow(hub: Arc<Hub>, url: String, tx: mpsc::Sender<Delivery>) {
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
            Resume::From(missed) => missed
                .into_iter()
                .filter(|m| m.kind == Kind::Alerts)
                .collect(),
            Resume::TooOld => {
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
