//! The state of the server's connections to other systems (each RabbitMQ
//! queue it consumes), as `/readyz`, `/metrics` and the dashboard show
//! them. One registry per server, shared by the clones of its
//! [`Config`](crate::config::Config); the tasks that keep the links write
//! it, the HTTP layer reads it.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

/// Where a link stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being (re)established; nothing flows yet.
    Connecting,
    /// Up: messages flow.
    Connected,
    /// Down; the task tries again after a backoff (see `lastError`).
    Disconnected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Disconnected => "disconnected",
        }
    }
}

/// One link, as the API shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    /// `amqp`.
    pub kind: &'static str,
    /// What it connects: the queue, for a RabbitMQ consumer.
    pub name: String,
    /// The source format its messages are read in.
    pub format: String,
    /// The broker, without credentials (`amqp://127.0.0.1:5672/%2f`).
    pub peer: String,
    pub state: State,
    /// When `state` was entered (RFC 3339).
    pub since: String,
    /// Why it last went down, if it has.
    pub last_error: Option<String>,
    /// Messages taken and acknowledged (after their events were durable).
    pub messages: u64,
    /// Of those, the ones kept whole as dead letters (unreadable).
    pub refused: u64,
}

/// Every link of the server, by `kind:name`.
#[derive(Clone, Debug, Default)]
pub struct Links(Arc<Mutex<BTreeMap<String, Link>>>);

impl Links {
    /// Adds (or replaces) a link, connecting.
    pub fn add(&self, kind: &'static str, name: &str, format: &str, peer: &str) {
        let link = Link {
            kind,
            name: name.to_owned(),
            format: format.to_owned(),
            peer: peer.to_owned(),
            state: State::Connecting,
            since: now(),
            last_error: None,
            messages: 0,
            refused: 0,
        };
        self.0.lock().insert(key(kind, name), link);
    }

    /// Moves a link to `state`; a disconnection says why.
    pub fn set(&self, kind: &'static str, name: &str, state: State, error: Option<String>) {
        if let Some(link) = self.0.lock().get_mut(&key(kind, name)) {
            if link.state != state {
                link.state = state;
                link.since = now();
            }
            if error.is_some() {
                link.last_error = error;
            }
        }
        metrics::gauge!("stockflow_link_connected", "kind" => kind, "name" => name.to_owned())
            .set(f64::from(u8::from(state == State::Connected)));
    }

    /// Counts messages taken over a link, `refused` of them kept whole
    /// as dead letters.
    pub fn count(&self, kind: &'static str, name: &str, messages: u64, refused: u64) {
        if let Some(link) = self.0.lock().get_mut(&key(kind, name)) {
            link.messages += messages;
            link.refused += refused;
        }
        metrics::counter!("stockflow_link_messages_total", "kind" => kind, "name" => name.to_owned())
            .increment(messages);
        metrics::counter!("stockflow_link_refused_total", "kind" => kind, "name" => name.to_owned())
            .increment(refused);
    }

    /// Every link, by kind and name.
    pub fn all(&self) -> Vec<Link> {
        self.0.lock().values().cloned().collect()
    }
}

fn key(kind: &str, name: &str) -> String {
    format!("{kind}:{name}")
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
