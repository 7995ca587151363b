//! Dead letters: list with filters, replay with a corrected payload,
//! discard. Replays and discards are log records like everything else, so
//! a resolved letter stays resolved after a restart.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use stockflow_core::{parse_body, BodyError, Parsed};

use super::asks::CatalogItem;
use super::asks::LetterFilter as Filter;
use super::asks::Page;
use super::backend::Backend;
use super::ingest::read_body;
use super::query::limit;
use super::ApiError;
use stockflow_service::dead_letter::DeadLetter;

pub fn letter_json(l: &DeadLetter) -> Value {
    let mut letter = json!({
        "id": l.id,
        "receivedAt": l.received_at.to_rfc3339(),
        "source": l.source,
        "index": l.index,
        "eventId": l.event_id,
        "reason": l.reason,
    });
    let fields = letter.as_object_mut().expect("an object");
    fields.extend(payload_fields(&l.payload));
    letter
}

/// A dead letter's payload in JSON (both modes): `payload` as text, and,
/// when the bytes are not UTF-8, `payloadBase64` with them exactly and
/// `payload` only a preview of their first 4 KiB (U+FFFD for each invalid
/// byte: a whole body of them would triple in size).
pub fn payload_fields(payload: &[u8]) -> serde_json::Map<String, Value> {
    use base64::Engine as _;
    const PREVIEW_BYTES: usize = 4096;
    let mut fields = serde_json::Map::new();
    match std::str::from_utf8(payload) {
        Ok(text) => {
            fields.insert("payload".into(), Value::from(text));
        }
        Err(_) => {
            let preview = &payload[..payload.len().min(PREVIEW_BYTES)];
            let lossy = String::from_utf8_lossy(preview);
            fields.insert("payload".into(), Value::from(lossy.as_ref()));
            let exact = base64::engine::general_purpose::STANDARD.encode(payload);
            fields.insert("payloadBase64".into(), Value::from(exact));
            fields.insert("payloadBytes".into(), Value::from(payload.len()));
        }
    }
    fields
}

/// Payload bytes a page of dead letters carries at most (one letter is
/// always listed): a page of large refused bodies must not take hundreds
/// of megabytes to answer.
pub const PAGE_PAYLOAD_BYTES_MAX: usize = 8 << 20;

/// A page's `after`, a dead-letter id (both modes).
pub fn after_id<T: std::str::FromStr>(page: &Page) -> Result<Option<T>, ApiError> {
    page.after
        .as_deref()
        .map(|text| {
            text.parse::<T>()
                .map_err(|_| ApiError::bad_request("after must be a dead-letter id"))
        })
        .transpose()
}

/// Whether a letter from `letter` is one `?source=wanted` asks for: the
/// same source or a prefix of it (`webhook:`, `http:/v1/`), or the name of
/// its format.
pub fn source_matches(letter: &str, wanted: &str) -> bool {
    letter.starts_with(wanted) || format_of(letter) == Some(wanted)
}

/// The source format a letter's payload is in, by where it came from:
/// `source:{format}` (POST /v1/sources/{format}/events), `import:{format}`,
/// `amqp:{format}:{queue}` (a RabbitMQ queue's message),
/// or `http:/v1/sources/{format}/events` (what Kafka mode said before both
/// modes said `source:`; such letters stay in its DLQ topic).
pub fn format_of(source: &str) -> Option<&str> {
    // The format's parameters, if any, follow a `?`.
    let source = source.split_once('?').map_or(source, |(source, _)| source);
    source
        .strip_prefix("source:")
        .or_else(|| source.strip_prefix("import:"))
        .or_else(|| {
            source
                .strip_prefix("amqp:")
                .and_then(|rest| rest.split_once(':'))
                .map(|(format, _)| format)
        })
        .or_else(|| {
            source
                .strip_prefix("http:/v1/sources/")
                .and_then(|f| f.strip_suffix("/events"))
        })
}

/// The answer for a letter that is not (or no longer) there.
pub(crate) fn gone(id: u64) -> ApiError {
    ApiError::not_found(format!(
        "no dead letter {id} (resolved, discarded, or past what is kept)"
    ))
}

/// GET /v1/dead-letters?source=&reason=&limit=&after=: oldest first.
#[utoipa::path(get, path = "/v1/dead-letters",
    operation_id = "listDeadLetters", tag = "dead letters",
    summary = "Rejected events and refused bodies, oldest first",
    description = "In Kafka mode the letters are read from the DLQ topic: `id` is the record's offset, `source` the route or topic it came from, with `sourcePartition` and `sourceOffset` for topic input; replaying (through the letter's route, or its raw topic's format) and discarding append a resolution marker to the DLQ topic (headers `resolves` and `resolution`), after which no instance lists the letter.",
    params(("limit" = Option<i64>, Query, minimum = 1, maximum = 1000), ("after" = Option<String>, Query, pattern = "^[0-9]{1,19}$", description = "The nextAfter of the previous page."), ("source" = Option<String>, Query, description = "Exact source (http:/v1/events, source:store-item, import:csv, http:/v1/products…) or a format name."), ("reason" = Option<String>, Query, description = "Case-insensitive substring of the reason.")),
    responses(
        (status = 200, description = "A page", body = crate::shapes::DeadLetterPage),
        crate::openapi::ReadRefusals,
    ))]
pub async fn list<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(filter): Query<Filter>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(&filter.page)?;
    let after: Option<u64> = after_id(&filter.page)?;
    let (letters, next) = backend.dead_letters(&filter, after, limit).await?;
    Ok(Json(json!({
        "deadLetters": letters,
        "nextAfter": next.map(|n| n.to_string()),
    })))
}

/// POST /v1/dead-letters/{id}/replay: the body is the corrected payload in
/// the letter's original form (empty: replay the stored payload as is). It
/// goes through the letter's original source (its route, format or raw
/// topic); the letter is resolved if nothing is refused again. A payload
/// still refused is not applied at all: 422 with every reason, and the
/// letter stays as it was (a replay never makes a new letter).
#[utoipa::path(post, path = "/v1/dead-letters/{id}/replay",
    operation_id = "replayDeadLetter", tag = "dead letters",
    summary = "Replay a dead letter with a corrected payload",
    description = "The body is the corrected payload in the letter's original form (empty body: the stored payload as is). It goes through the letter's original source (canonical events, a source format, products or locations); the letter is resolved in the same log record. A payload that is still refused, in whole or in part, is not applied: 422 `still_invalid` naming every reason, and the letter stays as it was (no new letter).",
    params(("id" = u64, Path, minimum = 0)),
    request_body(content((serde_json::Value = "application/json"), (serde_json::Value = "application/x-ndjson"), (serde_json::Value = "text/csv")), description = "The corrected payload, in the form the letter's source takes."),
    responses(
        (status = 200, description = "Outcome", body = crate::shapes::ReplayOutcome),
        (status = 404, description = "No such dead letter.", body = crate::error::ErrorBody),
        (status = 409, description = "Letters from this source cannot be replayed.", body = crate::error::ErrorBody),
        (status = 422, description = "The payload is still refused (every reason in the message); nothing applied, the letter stays.", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn replay<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(id): Path<u64>,
    super::auth::By(by): super::auth::By,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let letter = backend.dead_letter(id).await?.ok_or_else(|| gone(id))?;
    let config = backend.config();
    let (bytes, framing) = read_body(&headers, body, config.body_bytes_max).await?;
    let payload: &[u8] = if bytes.is_empty() {
        &letter.payload
    } else {
        &bytes
    };
    let events_max = config.request_events_max;
    let body_error = |e: BodyError| ApiError::bad_request(format!("corrected payload: {e}"));
    let canonical = matches!(
        letter.source.as_str(),
        "http:/v1/events" | "import:canonical"
    ) || letter.format.as_deref() == Some(stockflow_service::sources::CANONICAL);
    let (parsed, changes) = match letter.source.as_str() {
        _ if canonical => (
            parse_body(payload, framing, events_max).map_err(body_error)?,
            Vec::new(),
        ),
        "http:/v1/products" | "http:/v1/locations" => {
            let mut value: Value = serde_json::from_slice(payload)
                .map_err(|e| ApiError::bad_request(format!("corrected payload: {e}")))?;
            let change = if letter.source.ends_with("products") {
                super::catalog::product_change(&mut value, None, &by)
            } else {
                super::catalog::location_change(&mut value, None, &by)
            };
            let change = change.map_err(|reason| {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "still_invalid", reason)
            })?;
            let item = CatalogItem {
                change,
                json: value,
            };
            (Parsed::default(), vec![item])
        }
        source => {
            let format = letter
                .format
                .as_deref()
                .and_then(|f| config.sources.get(f))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "not_replayable",
                        format!("dead letters from {source:?} cannot be replayed; send a corrected event to /v1/events, then discard this letter"),
                    )
                })?;
            if format.input == stockflow_service::sources::Input::Csv && bytes.is_empty() {
                return Err(ApiError::bad_request(
                    "a CSV dead letter holds one row without its header: send the corrected row under a header line",
                ));
            }
            let parsed = stockflow_service::sources::translate(
                format,
                payload,
                framing,
                &super::ingest::params_of_source(source),
                events_max,
            )
            .map_err(body_error)?;
            (parsed, Vec::new())
        }
    };
    // All or nothing: a payload still refused would otherwise apply its
    // good part and leave a new letter beside this one, at every try.
    if !parsed.rejected.is_empty() {
        let reasons: Vec<String> = parsed
            .rejected
            .iter()
            .map(|r| match parsed.total() {
                1 => r.reason.clone(),
                _ => format!("event {}: {}", r.index, r.reason),
            })
            .collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "still_invalid",
            format!(
                "still refused, so nothing was applied and the letter is kept: {}",
                reasons.join("; ")
            ),
        ));
    }
    if parsed.batch.is_empty() && changes.is_empty() {
        return Err(ApiError::bad_request(
            "the corrected payload holds no event: send the corrected event, or discard the letter",
        ));
    }
    let mut parsed = parsed;
    parsed.batch.set_by(&by);
    let receipt = backend.replay(id, &letter, parsed, changes, &by).await?;
    let resolved = receipt.rejected == 0;
    if resolved {
        metrics::counter!("stockflow_dead_letters_replayed_total").increment(1);
    }
    Ok(Json(json!({
        "deadLetterId": id,
        "resolved": resolved,
        "receipt": receipt,
    })))
}

/// DELETE /v1/dead-letters/{id}: discard it (durably).
#[utoipa::path(delete, path = "/v1/dead-letters/{id}",
    operation_id = "discardDeadLetter", tag = "dead letters",
    summary = "Discard a dead letter (durable)",
    params(("id" = u64, Path, minimum = 0)),
    responses(
        (status = 204, description = "Discarded"),
        (status = 404, description = "No such dead letter.", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn discard<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(id): Path<u64>,
    super::auth::By(by): super::auth::By,
) -> Result<StatusCode, ApiError> {
    backend.dead_letter(id).await?.ok_or_else(|| gone(id))?;
    backend.discard(id, &by).await?;
    metrics::counter!("stockflow_dead_letters_discarded_total").increment(1);
    Ok(StatusCode::NO_CONTENT)
}
