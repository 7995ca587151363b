//! POST /v1/events and POST /v1/sources/{format}/events.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use http_body_util::BodyExt;
use stockflow_core::{parse_body, BodyError, BodyFormat, Parsed};

use super::asks::Wait;
use super::backend::Backend;
use super::ApiError;
use stockflow_service::receipt::{Receipt, RefusedBody};

/// Bodies larger than this are parsed on the blocking pool so that a big
/// request does not stall the async workers serving queries.
const PARSE_INLINE_BYTES_MAX: usize = 256 << 10;

/// Reads and drops a body we refuse, up to `limit` bytes, without keeping
/// it. Answering before the client finished sending would close the
/// connection under it, and it would see a broken pipe instead of our 429.
async fn discard(mut body: Body, limit: usize) {
    let mut read = 0;
    while read <= limit {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// Admission of ingest requests, one for both modes: how many are read or
/// parsed at once, and how many bytes of their bodies (each counted before
/// it is read: its declared length, or the largest body when it declares
/// none). What is refused is answered 429 `in_flight_full`.
pub struct Admission {
    requests: tokio::sync::Semaphore,
    kib: tokio::sync::Semaphore,
    budget_kib: usize,
    body_bytes_max: usize,
}

/// An admitted request's share of the limits, given back when dropped.
pub struct Admitted<'a> {
    _request: tokio::sync::SemaphorePermit<'a>,
    _bytes: tokio::sync::SemaphorePermit<'a>,
}

impl Admission {
    pub fn new(config: &stockflow_service::config::Config) -> Admission {
        let budget_kib = config.ingest_bytes_in_flight_max.div_ceil(1024).max(1);
        Admission {
            requests: tokio::sync::Semaphore::new(config.ingest_in_flight_max),
            kib: tokio::sync::Semaphore::new(budget_kib),
            budget_kib,
            body_bytes_max: config.body_bytes_max,
        }
    }

    /// Admits a request, or reads and drops its body and refuses it.
    pub async fn admit(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Admitted<'_>, Body), ApiError> {
        let limit = self.body_bytes_max;
        let Ok(request) = self.requests.try_acquire() else {
            super::error::shed("in_flight_requests");
            discard(body, limit).await;
            return Err(ApiError::in_flight_full());
        };
        let kib = declared_length(headers)
            .unwrap_or(limit)
            .min(limit)
            .div_ceil(1024)
            .clamp(1, self.budget_kib);
        let Ok(bytes) = self
            .kib
            .try_acquire_many(u32::try_from(kib).unwrap_or(u32::MAX))
        else {
            super::error::shed("in_flight_bytes");
            discard(body, limit).await;
            return Err(ApiError::in_flight_full()
                .with_message("too many bytes of ingest bodies in flight; retry shortly"));
        };
        let admitted = Admitted {
            _request: request,
            _bytes: bytes,
        };
        Ok((admitted, body))
    }
}

/// `?wait=applied`, the one query parameter of POST /v1/events.
#[derive(serde::Deserialize, Default)]
pub struct IngestQuery {
    wait: Option<String>,
}

/// POST /v1/events: canonical events.
#[utoipa::path(post, path = "/v1/events",
    operation_id = "postEvents", tag = "events",
    summary = "Ingest events",
    description = "Answers only after the accepted events are durably committed and applied. A RESERVATION, RELEASE or FULFILLMENT with a correlationId acts for the order of that id, at its level only, applied in the order received with its own timestamp: a RESERVATION adds q to the order's hold there if q <= onHand - reserved (creating the order with the default hold if new; else rejected insufficient_stock like any reservation); a RELEASE gives back at most what that order holds there (rejected `no_hold: order X holds nothing at sku@location` if it holds nothing: unknown, expired, cancelled, released or fulfilled); a FULFILLMENT always takes q from onHand and gives back at most what the order holds there. Without a correlationId a RELEASE or FULFILLMENT acts only on the free reservations (reserved minus every order's hold), never on an order's. So reserved = sum of the orders' holds + free reservations, free >= 0, at every level. An accepted event was applied (its outcome is in the level's history); a rejection is listed in errors with its reason. In Kafka mode (`serve --kafka`) it answers once the broker has acknowledged the events, and `?wait=applied` waits until their owning instances have applied them, reporting duplicates and refusals as here; an outcome no longer known (the event was applied by an owner before a rebalance) is reported as `outcome_unknown: …`.",
    params(("wait" = Option<String>, Query, pattern = "^(applied)$", description = "`applied` answers after the owners applied the events, with each one's outcome (Kafka mode waits at most 30 s, then answers 504 not_applied_yet: the events are in the log and will be applied). The embedded mode always answers after applying; any other value is 400.")),
    request_body(content((crate::openapi::Batch = "application/json"), (serde_json::Value = "application/x-ndjson")), description = "One item or an array of them (or NDJSON: one JSON object per line). Each is checked on its own (see the schema Event): one refused is listed in the receipt's errors and kept as a dead letter, and the others are taken."),
    responses(
        (status = 200, description = "Receipt", body = stockflow_service::receipt::Receipt),
        (status = 429, description = "Too many ingest requests in flight; see Retry-After.", body = crate::error::ErrorBody),
        (status = 504, description = "Kafka mode, `?wait=applied`: not applied within the wait (the events are in the log).", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn post_events<B: Backend>(
    State(backend): State<Arc<B>>,
    Query(query): Query<IngestQuery>,
    by: super::auth::By,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Receipt>, ApiError> {
    let wait = Wait::from_query(query.wait.as_deref())?;
    let events_max = backend.config().request_events_max;
    ingest(
        &*backend,
        wait,
        &by,
        &headers,
        body,
        EVENTS_SOURCE,
        move |bytes, framing| parse_body(bytes, framing, events_max),
    )
    .await
}

/// Where dead letters refused by POST /v1/events come from.
pub const EVENTS_SOURCE: &str = "http:/v1/events";

/// Where dead letters refused by POST /v1/sources/{format}/events come
/// from (in both modes; before, Kafka mode said
/// `http:/v1/sources/{format}/events`, which is still understood), with
/// the format's parameters, if any, so that a replay reads the letter as
/// it was read: `source:order-line?locationId=STORE-7`.
pub fn source_of_format(format: &str, params: &BTreeMap<String, String>) -> String {
    with_params(format!("source:{format}"), params)
}

/// `source` with `?params` (URL-encoded) when there are any.
pub fn with_params(source: String, params: &BTreeMap<String, String>) -> String {
    if params.is_empty() {
        return source;
    }
    let query = serde_urlencoded::to_string(params).expect("strings encode");
    format!("{source}?{query}")
}

/// The format parameters a letter's source carries (see
/// [`source_of_format`]).
pub fn params_of_source(source: &str) -> BTreeMap<String, String> {
    source
        .split_once('?')
        .and_then(|(_, query)| serde_urlencoded::from_str(query).ok())
        .unwrap_or_default()
}

/// POST /v1/sources/{format}/events: a source system's own messages,
/// translated into canonical events, then ingested as POST /v1/events
/// (`?wait=applied` included; every other query parameter goes to the
/// mapping).
#[utoipa::path(post, path = "/v1/sources/{format}/events",
    operation_id = "postSourceEvents", tag = "events",
    summary = "Ingest a source system's own messages",
    description = "Translates each message of the named format (see GET /v1/sources) into canonical events, then behaves exactly like POST /v1/events. Error indexes are source message positions; reasons name the source field at fault; rejected messages are kept as dead letters with source \"source:{format}\" (in Kafka mode in the DLQ topic); `?wait=applied` works as on POST /v1/events. Built-in formats: store-item, inventory-event, order-line, order-placed, order-cancelled (JSON/NDJSON), csv and erp-snapshot (text/csv with a header row).",
    params(("format" = String, Path, description = "A source format name."), ("params" = Option<std::collections::HashMap<String, String>>, Query, style = Form, explode, description = "Format parameters named by the mapping, e.g. locationId for order-line and order-placed; assumeOffset (e.g. +02:00) for the zone of zone-less times in any format.")),
    request_body(content((crate::openapi::SourceBatch = "application/json"), (serde_json::Value = "application/x-ndjson"), (serde_json::Value = "text/csv")), description = "The source's own messages: JSON (one or an array), NDJSON (one per line), or CSV with a header line, as the format's mapping takes."),
    responses(
        (status = 200, description = "Receipt", body = stockflow_service::receipt::Receipt),
        (status = 404, description = "Unknown format; the message lists the known ones.", body = crate::error::ErrorBody),
        (status = 429, description = "Too many ingest requests in flight; see Retry-After.", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn post_source_events<B: Backend>(
    State(backend): State<Arc<B>>,
    Path(format): Path<String>,
    Query(mut params): Query<BTreeMap<String, String>>,
    by: super::auth::By,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Receipt>, ApiError> {
    let config = backend.config();
    let mapping = source_mapping(&config.sources, &format)?;
    body_fits_format(&headers, &format, mapping.input)?;
    let wait = Wait::from_query(params.remove("wait").as_deref())?;
    let events_max = config.request_events_max;
    let source = source_of_format(&format, &params);
    ingest(
        &*backend,
        wait,
        &by,
        &headers,
        body,
        &source,
        move |bytes, framing| {
            stockflow_service::sources::translate(&mapping, bytes, framing, &params, events_max)
        },
    )
    .await
}

/// A CSV format reads `text/csv` bodies only, a JSON format JSON or NDJSON
/// only: a body that says it is the other kind is refused (415) rather
/// than read as what it is not.
fn body_fits_format(
    headers: &HeaderMap,
    format: &str,
    input: stockflow_service::sources::Input,
) -> Result<(), ApiError> {
    let csv = super::guard::media_type(headers).as_deref() == Some("text/csv");
    let wanted = match input {
        stockflow_service::sources::Input::Csv if !csv => "text/csv",
        stockflow_service::sources::Input::Json if csv => {
            "application/json or application/x-ndjson"
        }
        _ => return Ok(()),
    };
    Err(ApiError::new(
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("format {format:?} reads {wanted} bodies; send it with that Content-Type"),
    ))
}

/// The mapping of a source format, or 404 naming the known ones.
pub fn source_mapping(
    sources: &stockflow_service::sources::Sources,
    format: &str,
) -> Result<stockflow_service::sources::Mapping, ApiError> {
    sources.get(format).cloned().ok_or_else(|| {
        let known: Vec<&str> = sources.names().collect();
        ApiError::not_found(format!(
            "no source format {format:?}; known formats: {}",
            known.join(", ")
        ))
    })
}

/// The length a request's `Content-Length` declares, if it has one.
fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// Reads a body of at most `limit` bytes (413 above) and says how it is
/// framed: NDJSON by its content type, else JSON.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<(axum::body::Bytes, BodyFormat), ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body exceeds {limit} bytes; split it into smaller batches"),
        )
    };
    if declared_length(headers).is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let bytes = to_bytes(body, limit).await.map_err(|error| {
        let inner = error.into_inner();
        if inner
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            too_large()
        } else if let Some(late) = super::serve::BodyTimeout::within(&*inner) {
            tracing::info!("refused a body: {late}");
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("{late}; send it at once, or in smaller batches"),
            )
        } else {
            ApiError::bad_request(format!("could not read the body: {inner}"))
        }
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    Ok((bytes, framing_of(content_type)))
}

/// How a JSON body of `content_type` is framed: NDJSON
/// (`application/x-ndjson`, `application/jsonl`, in any case), else JSON.
pub fn framing_of(content_type: Option<&str>) -> BodyFormat {
    let ndjson = content_type.is_some_and(|t| {
        let t = t.trim_start().to_ascii_lowercase();
        t.starts_with("application/x-ndjson") || t.starts_with("application/jsonl")
    });
    if ndjson {
        BodyFormat::Ndjson
    } else {
        BodyFormat::Json
    }
}

/// The one ingest path of both modes: admission, body limits, parsing
/// (off the async workers when big), the backend, and dead letters for
/// refused bodies.
async fn ingest<B: Backend>(
    backend: &B,
    wait: Wait,
    by: &super::auth::By,
    headers: &HeaderMap,
    body: Body,
    source: &str,
    parse: impl FnOnce(&[u8], BodyFormat) -> Result<Parsed, BodyError> + Send + 'static,
) -> Result<Json<Receipt>, ApiError> {
    let limit = backend.config().body_bytes_max;
    let (_admitted, body) = backend.admission().admit(headers, body).await?;
    let (bytes, format) = read_body(headers, body, limit).await?;
    let parsed = if bytes.len() > PARSE_INLINE_BYTES_MAX {
        let bytes = bytes.clone();
        tokio::task::spawn_blocking(move || parse(&bytes, format))
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "parser failed",
                )
            })?
    } else {
        parse(&bytes, format)
    };
    match parsed {
        Ok(mut parsed) => {
            parsed.batch.set_by(&by.0);
            Ok(Json(backend.submit(parsed, source, wait).await?))
        }
        Err(error @ BodyError::TooManyEvents { .. }) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            error.to_string(),
        )),
        Err(error) => {
            // A refused body is bad input too: keep it, then say why.
            // The body is this handler's alone by now: taken, not copied.
            let refused = RefusedBody {
                reason: error.to_string(),
                payload: Vec::from(bytes),
            };
            backend.keep_refused(refused, source).await?;
            Err(ApiError::bad_request(error.to_string()))
        }
    }
}
