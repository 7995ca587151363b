//! GET /v1/stream: Server-Sent Events of stock changes, alerts, order
//! decisions and item and location totals, filtered by sku, locationId and kinds, resumable with
//! Last-Event-ID (see `stockflow_service::stream`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;

use super::ApiError;
use stockflow_service::stream::{Filter, Hub, Kind, Message, Resume, Subscription};

#[derive(Deserialize, Clone)]
pub struct StreamQuery {
    sku: Option<String>,
    #[serde(rename = "locationId")]
    location_id: Option<String>,
    /// Comma-separated: stock, alerts, orders, items, locations (default
    /// stock, alerts, orders).
    kinds: Option<String>,
    /// For clients that cannot set the Last-Event-ID header.
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
}

pub const GAP: &str = r#"{"message":"the messages after your Last-Event-ID are no longer kept (or are from before a restart); reload state from the REST API"}"#;
pub const RESYNC: &str =
    r#"{"message":"this subscriber fell behind; reconnect with Last-Event-ID to resume"}"#;

/// What a subscriber missed, to send before live messages.
pub enum Missed {
    Message(Arc<Message>),
    Gap,
}

/// Parses the filters and subscribes, for SSE and WebSocket alike; `last`
/// is the Last-Event-ID header, which wins over the query's lastEventId.
pub fn subscribe(
    hub: &Arc<Hub>,
    query: StreamQuery,
    last: Option<String>,
) -> Result<(Subscription, Vec<Missed>), ApiError> {
    let kinds = match query.kinds.as_deref() {
        None => vec![Kind::Stock, Kind::Alerts, Kind::Orders],
        Some(text) => text
            .split(',')
            .map(|k| {
                Kind::from_wire(k.trim()).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "kinds: {k:?} is not one of stock, alerts, orders, items, locations"
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let filter = Filter {
        sku: query.sku,
        location_id: query.location_id,
        kinds,
    };
    let last = last.or(query.last_event_id);
    let Some((subscription, resume)) = hub.subscribe(filter.clone(), last.as_deref()) else {
        return Err(ApiError::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many stream subscribers; retry later",
        ));
    };
    let missed = match resume {
        // Every missed message moves the position; only wanted ones are sent.
        Resume::From(missed) => missed
            .into_iter()
            .filter(|m| filter.wants(m))
            .map(Missed::Message)
            .collect(),
        Resume::TooOld => vec![Missed::Gap],
    };
    Ok((subscription, missed))
}

struct Open {
    subscription: Subscription,
    closing: tokio::sync::watch::Receiver<bool>,
    backlog: VecDeque<Event>,
    last_seq: u64,
    epoch: u64,
    done: bool,
}

fn event(epoch: u64, m: &Message) -> Event {
    Event::default()
        .id(format!("{epoch}-{}", m.seq))
        .event(m.kind.as_str())
        .data(&*m.data())
}

#[utoipa::path(get, path = "/v1/stream",
    operation_id = "stream", tag = "stream",
    summary = "Live push (Server-Sent Events) of stock changes, alerts, order decisions and item and location totals",
    description = "Events are named stock, alerts, orders, items or locations; every one has an id `{epoch}-{seq}`. Reconnect with the Last-Event-ID header (or lastEventId) to receive exactly what was missed; ids and the last 100,000 messages survive restarts, kill -9 included. If that is no longer kept (older than that, or from a time when nobody listened and messages were not built) an event named gap says so. A subscriber whose buffer overflows receives what it held, then an event named resync, and the stream ends; reconnect with Last-Event-ID. Orders carry no sku, so they reach only subscribers without sku/locationId filters. Items and locations (asked for by name in kinds) are a SKU's totals over every location (`sku` and the totals' fields: onHand, reserved, available, inTransit, levels, atZero, belowThreshold) and a location's over every SKU (`locationId` and the same fields), as GET /v1/items/{sku} and GET /v1/locations/{locationId} count them: the newest per key, pushed every 250 ms for the keys that changed, never one per event; an items message matches a sku filter, a locations message a locationId filter. They are not rebuilt after a restart: resuming across one gets `gap`. In Kafka mode each instance pushes what the output topics carry (totals from the compacted item-totals and location-totals topics, written by the SKU's or the location's home partition each cycle): a stock message is the level as the stock-levels topic has it (the newest per level and processing cycle, with its version and the eventId and eventType that made it), and ids are the instance's own, so a resume on another instance (or after a restart) gets `gap`. The same messages come over a WebSocket at GET /v1/ws (same query parameters; each text frame is `{\"id\",\"event\",\"data\"}`); a browser may open it only from a page of this server (403 otherwise).",
    params(("sku" = Option<String>, Query), ("locationId" = Option<String>, Query), ("kinds" = Option<String>, Query, pattern = "^(stock|alerts|orders|items|locations)(,(stock|alerts|orders|items|locations))*$", description = "Comma-separated: stock, alerts, orders, items, locations (default stock, alerts, orders)."), ("Last-Event-ID" = Option<String>, Header, nullable = false), ("lastEventId" = Option<String>, Query)),
    responses(
        (status = 200, description = "An event stream", body = crate::shapes::StreamMessage, content_type = "text/event-stream"),
        crate::openapi::ReadRefusals,
    ))]
pub async fn stream<B: super::backend::Backend>(
    State(backend): State<Arc<B>>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    sse(backend.hub(), query, &headers)
}

/// The SSE stream of `hub`'s messages (both modes).
pub fn sse(
    hub: &Arc<Hub>,
    query: StreamQuery,
    headers: &HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, ApiError> {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (subscription, missed) = subscribe(hub, query, last)?;
    let epoch = hub.epoch;
    let mut last_seq = 0;
    let backlog: VecDeque<Event> = missed
        .into_iter()
        .map(|item| match item {
            Missed::Message(m) => {
                last_seq = m.seq;
                event(epoch, &m)
            }
            Missed::Gap => Event::default().event("gap").data(GAP),
        })
        .collect();
    let open = Open {
        subscription,
        closing: hub.closing(),
        backlog,
        last_seq,
        epoch,
        done: false,
    };
    let events = futures_util::stream::unfold(open, |mut open| async move {
        if let Some(event) = open.backlog.pop_front() {
            return Some((Ok(event), open));
        }
        if open.done {
            return None;
        }
        loop {
            let received = tokio::select! {
                received = open.subscription.receiver.recv() => received,
                _ = open.closing.wait_for(|closed| *closed) => return None,
            };
            match received {
                Some(m) if m.seq <= open.last_seq => continue,
                Some(m) => {
                    open.last_seq = m.seq;
                    return Some((Ok(event(open.epoch, &m)), open));
                }
                // Ended by the hub: if it overflowed, it gets what it held
                // (delivered above), then resync.
                None if open.subscription.lagged.load(Ordering::Relaxed) => {
                    open.done = true;
                    return Some((Ok(Event::default().event("resync").data(RESYNC)), open));
                }
                None => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// GET /v1/ws: the same messages and filters as /v1/stream over a
/// WebSocket, one text frame each: `{"id","event","data"}`. Resume with
/// `?lastEventId=`; `gap` and `resync` work as on the SSE stream.
pub async fn websocket<B: super::backend::Backend>(
    State(backend): State<Arc<B>>,
    Query(query): Query<StreamQuery>,
    headers: axum::http::HeaderMap,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Result<axum::response::Response, ApiError> {
    ws(
        backend.hub(),
        query,
        &headers,
        &backend.config().cors_origins,
        backend.config().tls.is_some(),
        upgrade,
    )
}

/// The WebSocket of `hub`'s messages (both modes), for a client that is
/// not a page of another origin.
pub fn ws(
    hub: &Arc<Hub>,
    query: StreamQuery,
    headers: &axum::http::HeaderMap,
    allowed: &[String],
    tls: bool,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Result<axum::response::Response, ApiError> {
    super::guard::same_origin(headers, allowed, tls)?;
    let (subscription, missed) = subscribe(hub, query, None)?;
    let epoch = hub.epoch;
    let mut closing = hub.closing();
    Ok(upgrade.on_upgrade(move |mut socket| async move {
        use axum::extract::ws::Message as Frame;
        let frame = |id: Option<String>, name: &str, data: &str| {
            let id = id.map_or("null".to_owned(), |id| format!("\"{id}\""));
            Frame::Text(format!(r#"{{"id":{id},"event":"{name}","data":{data}}}"#).into())
        };
        let message = |m: &Message| {
            frame(
                Some(format!("{epoch}-{}", m.seq)),
                m.kind.as_str(),
                &m.data(),
            )
        };
        let mut subscription = subscription;
        let mut last_seq = 0;
        for item in missed {
            let sent = match item {
                Missed::Message(m) => {
                    last_seq = m.seq;
                    socket.send(message(&m)).await
                }
                Missed::Gap => socket.send(frame(None, "gap", GAP)).await,
            };
            if sent.is_err() {
                return;
            }
        }
        loop {
            let received = tokio::select! {
                received = subscription.receiver.recv() => received,
                incoming = socket.recv() => match incoming {
                    // The client closed, or went away.
                    None | Some(Err(_)) | Some(Ok(Frame::Close(_))) => return,
                    Some(Ok(_)) => continue,
                },
                // The guard wait_for returns is dropped inside, before awaiting.
                () = async { let _ = closing.wait_for(|closed| *closed).await; } => {
                    let _ = socket.send(Frame::Close(None)).await;
                    return;
                }
            };
            match received {
                Some(m) if m.seq <= last_seq => continue,
                Some(m) => {
                    last_seq = m.seq;
                    if socket.send(message(&m)).await.is_err() {
                        return;
                    }
                }
                None => {
                    if subscription.lagged.load(Ordering::Relaxed) {
                        let _ = socket.send(frame(None, "resync", RESYNC)).await;
                    }
                    let _ = socket.send(Frame::Close(None)).await;
                    return;
                }
            }
        }
    }))
}
