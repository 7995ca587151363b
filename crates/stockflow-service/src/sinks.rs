//! The state of the server's sinks (`serve --sink-postgres`, `--lake`), as
//! `GET /v1/sinks`, `/metrics` and the dashboard show them. One registry
//! per server, shared by the clones of its config; the sink tasks write
//! it, the HTTP layer reads it.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

pub use crate::links::State;

/// One sink, as the API shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sink {
    /// `postgres` or `lake`.
    pub kind: &'static str,
    /// Where it writes, without credentials (`postgres://host:5432/db`,
    /// the lake's directory).
    pub target: String,
    pub state: State,
    /// When `state` was entered (RFC 3339).
    pub since: String,
    /// Why it last failed, if it has.
    pub last_error: Option<String>,
    /// History bytes written by the server and not yet in the sink (0:
    /// caught up).
    pub behind_bytes: u64,
    /// Kafka mode: history-topic records of the partitions this instance
    /// owns not yet in the sink (0: caught up); `None` in embedded mode.
    pub behind_records: Option<u64>,
    /// Rows of history committed since the server started.
    pub rows: u64,
    /// When the last batch was committed (RFC 3339).
    pub last_commit_at: Option<String>,
    /// History the retention deleted before the sink had it (bytes):
    /// the sink fell further behind than `--history-retention-days`.
    pub skipped_bytes: u64,
}

/// Every sink of the server, by kind.
#[derive(Clone, Debug, Default)]
pub struct Sinks(Arc<Mutex<BTreeMap<&'static str, Sink>>>);

impl Sinks {
    pub fn add(&self, kind: &'static str, target: &str) {
        let sink = Sink {
            kind,
            target: target.to_owned(),
            state: State::Connecting,
            since: now(),
            last_error: None,
            behind_bytes: 0,
            behind_records: None,
            rows: 0,
            last_commit_at: None,
            skipped_bytes: 0,
        };
        self.0.lock().insert(kind, sink);
    }

    /// Moves a sink to `state`; a failure says why.
    pub fn set(&self, kind: &'static str, state: State, error: Option<String>) {
        if let Some(sink) = self.0.lock().get_mut(kind) {
            if sink.state != state {
                sink.state = state;
                sink.since = now();
            }
            if error.is_some() {
                sink.last_error = error;
            }
        }
        metrics::gauge!("stockflow_sink_connected", "sink" => kind)
            .set(f64::from(u8::from(state == State::Connected)));
    }

    /// How far behind the sink is, in history bytes.
    pub fn behind(&self, kind: &'static str, bytes: u64) {
        if let Some(sink) = self.0.lock().get_mut(kind) {
            sink.behind_bytes = bytes;
        }
        metrics::gauge!("stockflow_sink_behind_bytes", "sink" => kind).set(bytes as f64);
    }

    /// How far behind the sink is, in history-topic records (Kafka mode).
    pub fn behind_records(&self, kind: &'static str, records: u64) {
        if let Some(sink) = self.0.lock().get_mut(kind) {
            sink.behind_records = Some(records);
        }
        metrics::gauge!("stockflow_sink_behind_records", "sink" => kind).set(records as f64);
    }

    /// A batch of `rows` committed.
    pub fn committed(&self, kind: &'static str, rows: u64) {
        if let Some(sink) = self.0.lock().get_mut(kind) {
            sink.rows += rows;
            sink.last_commit_at = Some(now());
        }
        metrics::counter!("stockflow_sink_rows_total", "sink" => kind).increment(rows);
    }

    /// History deleted before the sink had it.
    pub fn skipped(&self, kind: &'static str, bytes: u64) {
        if let Some(sink) = self.0.lock().get_mut(kind) {
            sink.skipped_bytes += bytes;
        }
        metrics::counter!("stockflow_sink_skipped_bytes_total", "sink" => kind).increment(bytes);
    }

    pub fn all(&self) -> Vec<Sink> {
        self.0.lock().values().cloned().collect()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
