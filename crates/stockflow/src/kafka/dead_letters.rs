//! GET /v1/dead-letters in Kafka mode: read from the DLQ topic (one
//! partition), a dead letter's id being its offset. Read-only: to replay,
//! produce the corrected payload to a raw topic again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::Json;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use super::http::KafkaApp;
use super::KafkaSettings;
use crate::http::dead_letters::Filter;
use crate::http::query::limit;
use crate::http::ApiError;

/// Most DLQ records one request reads: a page that filters out the rest
/// ends there, with `nextAfter` to read on from.
const SCANNED_MAX: usize = 100_000;

/// GET /v1/dead-letters?source=&reason=&limit=&after=: oldest first;
/// `source` matches the route or topic a letter came from (a prefix),
/// `reason` a part of its reason, case-insensitively.
pub async fn list(
    State(app): State<Arc<KafkaApp>>,
    Query(filter): Query<Filter>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(&filter.page)?;
    let after: Option<i64> = crate::http::dead_letters::after_id(&filter.page)?;
    let settings = app.settings.clone();
    let scanned = tokio::task::spawn_blocking(move || scan(&settings, after, limit, &filter))
        .await
        .map_err(ApiError::stopping)?
        .map_err(|e| {
            ApiError::overloaded(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the DLQ topic ({e:#}); retry shortly"),
            )
        })?;
    let (letters, next) = scanned;
    Ok(Json(json!({
        "deadLetters": letters,
        "nextAfter": next.map(|n| n.to_string()),
    })))
}

/// Up to `limit` matching letters after offset `after`, and where the
/// next page starts (if anything may follow).
fn scan(
    settings: &KafkaSettings,
    after: Option<i64>,
    limit: usize,
    filter: &Filter,
) -> anyhow::Result<(Vec<Value>, Option<i64>)> {
    let topic = &settings.topics.dlq;
    let reader: BaseConsumer = settings
        .client(&[
            ("enable.auto.commit", "false"),
            ("group.id", &format!("{}-dead-letters", settings.group)),
            ("fetch.wait.max.ms", "50"),
        ])
        .create()?;
    let (low, high) = reader.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    let first = after.map_or(low, |a| a + 1).max(low);
    if first >= high {
        return Ok((Vec::new(), None));
    }
    let mut list = TopicPartitionList::new();
    // A little before: a fetch from inside the broker's last record batch
    // can return nothing (tansu); what is at or before `after` is skipped.
    list.add_partition_offset(topic, 0, Offset::Offset((first - 1_000).max(low)))?;
    reader.assign(&list)?;
    let reason = filter.reason.as_deref().map(str::to_lowercase);
    let (mut letters, mut scanned, mut last): (Vec<Value>, usize, i64) = (Vec::new(), 0, first - 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while last + 1 < high && scanned < SCANNED_MAX && Instant::now() < deadline {
        let Some(message) = reader.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = message?;
        if m.offset() < first {
            continue;
        }
        last = m.offset();
        scanned += 1;
        let headers: HashMap<&str, String> = m
            .headers()
            .map(|h| {
                h.iter()
                    .filter_map(|h| Some((h.key, String::from_utf8_lossy(h.value?).into_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let source = headers
            .get("source")
            .or_else(|| headers.get("source-topic"))
            .cloned()
            .unwrap_or_default();
        let why = headers.get("reason").cloned().unwrap_or_default();
        let wanted = filter
            .source
            .as_deref()
            .is_none_or(|s| source.starts_with(s))
            && reason
                .as_deref()
                .is_none_or(|r| why.to_lowercase().contains(r));
        if !wanted {
            continue;
        }
        if letters.len() == limit {
            // One more matches: the next page starts after this one's last.
            let next = letters.last().and_then(|l| l["id"].as_i64());
            return Ok((letters, next));
        }
        letters.push(json!({
            "id": m.offset(),
            "receivedAt": m.timestamp().to_millis().and_then(chrono::DateTime::from_timestamp_millis).map(|t| t.to_rfc3339()),
            "source": source,
            "sourcePartition": headers.get("source-partition"),
            "sourceOffset": headers.get("source-offset"),
            "reason": why,
            "payload": String::from_utf8_lossy(m.payload().unwrap_or_default()),
        }));
    }
    // Stopped before the end (the scan's cap or deadline): read on from here.
    let next = (last + 1 < high).then_some(last);
    Ok((letters, next))
}
