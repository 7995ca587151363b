//! Dead letters in Kafka mode, kept in the DLQ topic (one partition), a
//! letter's id being its offset. Listing reads the topic; replaying (the
//! stored or a corrected payload, through the letter's original route or
//! raw topic's format) and discarding append a *resolution marker* to the
//! same topic (headers `resolves` = the letter's id, `resolution` and
//! `by`, the token name that resolved it), so
//! a resolved letter stays resolved for every instance and across
//! restarts. Each instance follows the markers on a thread of its own
//! ([`Resolved`](super::shared::Resolved)) and leaves resolved letters out of its lists.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use stockflow_core::Parsed;

use super::http::KafkaApp;
use super::shared::Resolved;
use super::KafkaSettings;
use stockflow_http::asks::CatalogItem;
use stockflow_http::asks::{Letter, LetterFilter as Filter};
use stockflow_http::ApiError;
use stockflow_service::receipt::Receipt;

/// Where a dead letter came from, as its DLQ record's headers say.
pub enum Origin<'a> {
    /// A record of a topic that could not be used.
    Record {
        topic: &'a str,
        partition: i32,
        offset: i64,
    },
    /// A request (`source`: its route), and the item's place in the body
    /// with its eventId, if one was read.
    Request {
        source: &'a str,
        item: Option<(u32, Option<&'a str>)>,
    },
}

/// The headers of a dead letter's DLQ record: why, and where it came
/// from. Every writer of a letter uses it; [`Letter`]'s reading is its
/// other half.
pub fn letter_headers(reason: &str, origin: Origin<'_>) -> OwnedHeaders {
    let headers = OwnedHeaders::new().insert(Header {
        key: "reason",
        value: Some(reason),
    });
    let with = |headers: OwnedHeaders, key: &str, value: &str| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    };
    match origin {
        Origin::Record {
            topic,
            partition,
            offset,
        } => {
            let headers = with(headers, "source-topic", topic);
            let headers = with(headers, "source-partition", &partition.to_string());
            with(headers, "source-offset", &offset.to_string())
        }
        Origin::Request { source, item } => {
            let mut headers = with(headers, "source", source);
            if let Some((index, event_id)) = item {
                headers = with(headers, "index", &index.to_string());
                if let Some(event_id) = event_id {
                    headers = with(headers, "event-id", event_id);
                }
            }
            headers
        }
    }
}

/// Header of a resolution marker: the id of the letter it resolves.
const RESOLVES: &str = "resolves";
/// Header of a resolution marker: `replayed` or `discarded`.
const RESOLUTION: &str = "resolution";
/// Header of a resolution marker: who resolved the letter (a token name).
const BY: &str = "by";
/// Longest wait for this instance to read back a marker it wrote.
const READ_BACK_MAX: Duration = Duration::from_secs(10);

/// The thread that follows the DLQ topic's resolution markers.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A reader of the DLQ topic, placed by its user (never commits).
fn reader(settings: &KafkaSettings) -> anyhow::Result<BaseConsumer> {
    Ok(settings
        .client(&[
            ("enable.auto.commit", "false"),
            ("group.id", &format!("{}-dead-letters", settings.group)),
            ("fetch.wait.max.ms", "50"),
        ])
        .create()?)
}

/// Reads the DLQ topic from its beginning and on, collecting markers.
pub fn follow(settings: &KafkaSettings, resolved: Arc<Resolved>) -> anyhow::Result<Follower> {
    let reader = reader(settings)?;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(&settings.topics.dlq, 0, Offset::Beginning)?;
    reader.assign(&list)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("kafka-dlq-markers".into())
        .spawn(move || {
            while !stopping.load(Ordering::Acquire) {
                let Some(message) = reader.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let m = match message {
                    Ok(m) => m,
                    Err(error) => {
                        tracing::warn!(%error, "reading the DLQ topic's markers");
                        continue;
                    }
                };
                if let Some(id) = marker_of(&m) {
                    resolved.ids.write().insert(id);
                }
                resolved.read_to.store(m.offset() + 1, Ordering::Release);
            }
        })?;
    Ok(Follower {
        stop,
        thread: Some(thread),
    })
}

/// The letter a resolution marker resolves; `None` for a letter.
fn marker_of<M: Message>(m: &M) -> Option<i64> {
    m.headers()?
        .iter()
        .find(|h| h.key == RESOLVES)
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

/// Most DLQ records one request reads: a page that filters out the rest
/// ends there, with `nextAfter` to read on from.
const SCANNED_MAX: usize = 100_000;

/// Unresolved letters after offset `after`, oldest first; `source`
/// matches as in the embedded mode (a source or a prefix of one, or a
/// format name, also a raw topic's), `reason` a part of its reason,
/// case-insensitively.
pub(super) async fn list(
    app: &KafkaApp,
    filter: &Filter,
    after: Option<u64>,
    limit: usize,
) -> Result<(Vec<Value>, Option<u64>), ApiError> {
    let after = after.map(|a| i64::try_from(a).unwrap_or(i64::MAX));
    let settings = app.settings.clone();
    let resolved = app.resolved.clone();
    let filter = filter.clone();
    let (letters, next) =
        tokio::task::spawn_blocking(move || scan(&settings, &resolved, after, limit, &filter))
            .await
            .map_err(ApiError::stopping)?
            .map_err(unreadable)?;
    let letters = letters.iter().map(Scanned::json).collect();
    Ok((letters, next.map(|n| n as u64)))
}

/// A letter as read from the DLQ topic, its payload's bytes as stored.
struct Scanned {
    id: i64,
    received_at: Option<String>,
    source: String,
    why: String,
    headers: HashMap<String, String>,
    payload: Vec<u8>,
}

impl Scanned {
    /// The letter in the API's JSON, as the embedded mode's.
    fn json(&self) -> Value {
        let mut letter = json!({
            "id": self.id,
            "receivedAt": self.received_at,
            "source": self.source,
            "index": self.headers.get("index").and_then(|i| i.parse::<u32>().ok()),
            "eventId": self.headers.get("event-id"),
            "reason": self.why,
        });
        if let Some(fields) = letter.as_object_mut() {
            // Where in a raw topic a translated record came from.
            for (header, field) in [
                ("source-partition", "sourcePartition"),
                ("source-offset", "sourceOffset"),
            ] {
                if let Some(value) = self.headers.get(header) {
                    fields.insert(field.into(), Value::from(value.as_str()));
                }
            }
            fields.extend(stockflow_http::dead_letters::payload_fields(&self.payload));
        }
        letter
    }
}

fn unreadable(e: anyhow::Error) -> ApiError {
    ApiError::overloaded(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot read the DLQ topic ({e:#}); retry shortly"),
    )
}

/// Up to `limit` matching letters after offset `after`, and where the
/// next page starts (if anything may follow).
fn scan(
    settings: &KafkaSettings,
    resolved: &Resolved,
    after: Option<i64>,
    limit: usize,
    filter: &Filter,
) -> anyhow::Result<(Vec<Scanned>, Option<i64>)> {
    let topic = &settings.topics.dlq;
    let reader = reader(settings)?;
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
    let (mut letters, mut scanned, mut last): (Vec<Scanned>, usize, i64) =
        (Vec::new(), 0, first - 1);
    let mut cut = stockflow_service::dead_letter::PageCut::new(
        limit,
        stockflow_http::dead_letters::PAGE_PAYLOAD_BYTES_MAX,
    );
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
        if marker_of(&m).is_some() || resolved.contains(m.offset()) {
            continue;
        }
        let headers: HashMap<String, String> = m
            .headers()
            .map(|h| {
                h.iter()
                    .filter_map(|h| {
                        Some((
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value?).into_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let source = headers
            .get("source")
            .or_else(|| headers.get("source-topic"))
            .cloned()
            .unwrap_or_default();
        let why = headers.get("reason").cloned().unwrap_or_default();
        let wanted = filter.source.as_deref().is_none_or(|s| {
            stockflow_http::dead_letters::source_matches(&source, s)
                    // A raw topic's letters, by the format of the topic.
                    || settings.topics.format_of_raw(&source) == Some(s)
        }) && reason
            .as_deref()
            .is_none_or(|r| why.to_lowercase().contains(r));
        if !wanted {
            continue;
        }
        if !cut.takes(m.payload().map_or(0, <[u8]>::len)) {
            // One more matches: the next page starts after this one's last.
            let next = letters.last().map(|l| l.id);
            return Ok((letters, next));
        }
        letters.push(Scanned {
            id: m.offset(),
            received_at: m
                .timestamp()
                .to_millis()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339()),
            source,
            why,
            headers,
            payload: m.payload().unwrap_or_default().to_vec(),
        });
    }
    // Stopped before the end (the scan's cap or deadline): read on from here.
    let next = (last + 1 < high).then_some(last);
    Ok((letters, next))
}

/// The unresolved letter `id`, with its payload's bytes as stored.
pub(super) async fn find(app: &KafkaApp, id: u64) -> Result<Option<Letter>, ApiError> {
    let Ok(id) = i64::try_from(id) else {
        return Ok(None);
    };
    if app.resolved.contains(id) {
        return Ok(None);
    }
    let settings = app.settings.clone();
    let resolved = app.resolved.clone();
    let filter = Filter::default();
    let (letters, _) =
        tokio::task::spawn_blocking(move || scan(&settings, &resolved, Some(id - 1), 1, &filter))
            .await
            .map_err(ApiError::stopping)?
            .map_err(unreadable)?;
    let Some(letter) = letters.into_iter().find(|l| l.id == id) else {
        return Ok(None);
    };
    let source = letter.source;
    let format = stockflow_http::dead_letters::format_of(&source)
        .or_else(|| app.settings.topics.format_of_raw(&source))
        .map(str::to_owned);
    Ok(Some(Letter {
        source,
        format,
        payload: letter.payload,
    }))
}

/// Appends the marker that resolves `id`, and waits until this instance
/// has read it back (so its next list leaves the letter out).
pub(super) async fn resolve(
    app: &KafkaApp,
    id: u64,
    resolution: &str,
    by: &str,
) -> Result<(), ApiError> {
    let id_text = id.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: RESOLVES,
            value: Some(&id_text),
        })
        .insert(Header {
            key: RESOLUTION,
            value: Some(resolution),
        })
        .insert(Header {
            key: BY,
            value: Some(by),
        });
    let record = FutureRecord::<(), [u8]>::to(&app.settings.topics.dlq)
        .payload(&[])
        .headers(headers);
    let offset = app
        .producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| {
            ApiError::overloaded(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Kafka did not take the resolution ({error}); send the request again"),
            )
        })?
        .offset;
    tracing::info!(dead_letter = id, %resolution, by = %by, "dead letter resolved");
    let deadline = Instant::now() + READ_BACK_MAX;
    while app.resolved.read_to.load(Ordering::Acquire) <= offset && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Produces a letter's corrected (or stored) events and waits until
/// they are applied, or writes its catalog changes; resolves the letter
/// if nothing is refused again (what is becomes a new dead letter).
pub(super) async fn replay(
    app: &KafkaApp,
    id: u64,
    letter: &Letter,
    parsed: Parsed,
    changes: Vec<CatalogItem>,
    by: &str,
) -> Result<Receipt, ApiError> {
    let receipt = if changes.is_empty() {
        super::http::ingest_parsed(app, true, parsed, &letter.source).await?
    } else {
        super::catalog::write(app, changes, Vec::new(), &letter.source).await?
    };
    if receipt.rejected == 0 {
        resolve(app, id, "replayed", by).await?;
    }
    Ok(receipt)
}
