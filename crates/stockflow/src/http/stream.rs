//! GET /v1/stream: Server-Sent Events of stock changes, alerts and order
//! decisions, filtered by sku, locationId and kinds, resumable with
//! Last-Event-ID (see `crate::stream`).

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

use super::{ApiError, AppState};
use crate::stream::{Filter, Kind, Message, Resume, Subscription};

#[derive(Deserialize)]
pub struct StreamQuery {
    sku: Option<String>,
    #[serde(rename = "locationId")]
    location_id: Option<String>,
    /// Comma-separated: stock, alerts, orders (default all).
    kinds: Option<String>,
    /// For clients that cannot set the Last-Event-ID header.
    #[serde(rename = "lastEventId")]
    last_event_id: Option<String>,
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

pub async fn stream(
    State(state): State<Arc<AppState>>,
    Query(query): Query<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let kinds = match query.kinds.as_deref() {
        None => vec![Kind::Stock, Kind::Alerts, Kind::Orders],
        Some(text) => text
            .split(',')
            .map(|k| {
                Kind::from_wire(k.trim()).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "kinds: {k:?} is not one of stock, alerts, orders"
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
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id);
    let hub = &state.pipeline.shared.hub;
    let Some((subscription, resume)) = hub.subscribe(filter.clone(), last.as_deref()) else {
        return Err(ApiError::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many stream subscribers; retry later",
        ));
    };
    let epoch = hub.epoch;
    let mut backlog = VecDeque::new();
    let mut last_seq = 0;
    match resume {
        Resume::From(missed) => {
            for m in missed {
                last_seq = m.seq;
                if filter.wants(&m) {
                    backlog.push_back(event(epoch, &m));
                }
            }
        }
        Resume::TooOld => backlog.push_back(Event::default().event("gap").data(
            r#"{"message":"the messages after your Last-Event-ID are no longer kept (or are from before a restart); reload state from the REST API"}"#,
        )),
    }
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
                    let data = r#"{"message":"this subscriber fell behind; reconnect with Last-Event-ID to resume"}"#;
                    return Some((Ok(Event::default().event("resync").data(data)), open));
                }
                None => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
