//! What only the dashboard needs: recent activity, and control of the
//! in-process simulator.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{json_body, ApiError};
use crate::simulator::SimulatorError;

/// Longest quiet time a request may call stale: a year.
pub(crate) const STALE_AFTER_SECONDS_MAX: u64 = 365 * 24 * 3600;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityQuery {
    seconds: Option<usize>,
    stale_after_seconds: Option<u64>,
    /// Kafka mode: `local` asks one member for its own part.
    pub scope: Option<String>,
}

impl ActivityQuery {
    /// The seconds of series asked for, and the quiet time that makes a
    /// source stale.
    pub fn window(&self) -> Result<(usize, Duration), ApiError> {
        let seconds = self.seconds.unwrap_or(300);
        if !(1..=stockflow_service::activity::SECONDS_KEPT).contains(&seconds) {
            return Err(ApiError::bad_request(format!(
                "seconds must be from 1 to {}",
                stockflow_service::activity::SECONDS_KEPT
            )));
        }
        let stale = self.stale_after_seconds.unwrap_or(300);
        if stale > STALE_AFTER_SECONDS_MAX {
            return Err(ApiError::bad_request(format!(
                "staleAfterSeconds must be at most {STALE_AFTER_SECONDS_MAX} (a year)"
            )));
        }
        Ok((seconds, Duration::from_secs(stale)))
    }
}

/// GET /v1/activity?seconds=&staleAfterSeconds=: events and commit latency
/// per second, and the last event heard from each source at each location.
#[utoipa::path(get, path = "/v1/activity",
    operation_id = "getActivity", tag = "operations",
    summary = "Events and commit latency per second, and source freshness",
    description = "What the dashboard's overview charts. In memory: after a restart it starts empty. Seconds with no commits are zeros. In Kafka mode it is merged from every member: counts are summed per second, latencies are the slowest member's, and a member's commit latency is its processing cycle's (input taken to offsets committed). `scope=local` (members asking each other) answers one member's part as `{\"parts\": [...]}`.",
    params(("seconds" = Option<i64>, Query, minimum = 1, maximum = 600), ("staleAfterSeconds" = Option<i64>, Query, minimum = 0, maximum = 31536000, description = "A source heard from longer ago than this is `stale`.")),
    responses(
        (status = 200, description = "Oldest second first; sources least recently heard first.", body = crate::shapes::Activity),
        crate::openapi::ReadRefusals,
    ))]
pub async fn activity<B: super::backend::Backend>(
    State(backend): State<Arc<B>>,
    Query(query): Query<ActivityQuery>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let (seconds, stale) = query.window()?;
    let read = super::backend::Read {
        local_only: query.scope.as_deref() == Some("local"),
        ..super::query::ReadQuery::default().read(&headers, &uri)?
    };
    backend.activity(seconds, stale, &read).await.map(Json)
}

impl From<SimulatorError> for ApiError {
    fn from(error: SimulatorError) -> ApiError {
        match error {
            SimulatorError::Disabled => ApiError::new(
                StatusCode::FORBIDDEN,
                "simulator_disabled",
                error.to_string(),
            ),
            SimulatorError::Invalid(message) => ApiError::bad_request(message),
            SimulatorError::Overloaded => ApiError::queue_full(()),
            SimulatorError::Stopping => ApiError::stopping(()),
        }
    }
}

/// GET /v1/simulator
#[utoipa::path(get, path = "/v1/simulator",
    operation_id = "getSimulator", tag = "simulator",
    summary = "The in-process simulator's state, totals and last messages",
    responses(
        (status = 200, description = "State", body = crate::shapes::Simulator),
    ))]
pub async fn status<S: super::backend::Backend>(State(state): State<Arc<S>>) -> Json<Value> {
    Json(state.simulator().status())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = SimulatorStart)]
pub struct Start {
    /// Events per second.
    #[serde(deserialize_with = "whole_u32")]
    #[schema(value_type = i64, minimum = 1, maximum = 100000)]
    rate: u32,
}

/// POST /v1/simulator/start {rate}
#[utoipa::path(post, path = "/v1/simulator/start",
    operation_id = "startSimulator", tag = "simulator",
    summary = "Start (or change the rate of) continuous random traffic",
    request_body(content = Start, content_type = "application/json"),
    responses(
        (status = 200, description = "Running", body = crate::shapes::Simulator),
        (status = 403, description = "The simulator is off on this server (code simulator_disabled).", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn start<S: super::backend::Backend>(
    State(state): State<Arc<S>>,
    super::auth::By(by): super::auth::By,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Start = json_body(&body)?;
    state.simulator().start(body.rate, &by)?;
    Ok(Json(state.simulator().status()))
}

/// POST /v1/simulator/stop
#[utoipa::path(post, path = "/v1/simulator/stop",
    operation_id = "stopSimulator", tag = "simulator",
    summary = "Stop continuous traffic after the batch in flight",
    request_body(content = serde_json::Value, content_type = "application/json", description = "Nothing is read from it; send `{}` (a write must carry Content-Type application/json, so a web page of another origin cannot send it)."),
    responses(
        (status = 200, description = "Stopped", body = crate::shapes::Simulator),
        (status = 403, description = "The simulator is off on this server (code simulator_disabled).", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn stop<S: super::backend::Backend>(
    State(state): State<Arc<S>>,
) -> Result<Json<Value>, ApiError> {
    state.simulator().stop().await?;
    Ok(Json(state.simulator().status()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = SimulatorSend)]
pub struct Send {
    #[serde(deserialize_with = "whole_u32")]
    #[schema(value_type = i64, minimum = 1, maximum = 100000)]
    count: u32,
}

/// A count in a control body (see [`super::Whole`]), from 0 to u32::MAX.
fn whole_u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let super::Whole(n) = super::Whole::deserialize(d)?;
    u32::try_from(n)
        .map_err(|_| serde::de::Error::custom(format!("{n} is not from 0 to {}", u32::MAX)))
}

/// POST /v1/simulator/send {count}
#[utoipa::path(post, path = "/v1/simulator/send",
    operation_id = "sendSimulated", tag = "simulator",
    summary = "Send N random events now",
    request_body(content = Send, content_type = "application/json"),
    responses(
        (status = 200, description = "What the engine made of them", body = crate::shapes::SendOutcome),
        (status = 403, description = "The simulator is off on this server (code simulator_disabled).", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn send<S: super::backend::Backend>(
    State(state): State<Arc<S>>,
    super::auth::By(by): super::auth::By,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: Send = json_body(&body)?;
    Ok(Json(state.simulator().send(body.count, &by).await?))
}

/// POST /v1/simulator/scenario
#[utoipa::path(post, path = "/v1/simulator/scenario",
    operation_id = "runScenario", tag = "simulator",
    summary = "Run the controlled scenario and compare each level with its documented result",
    description = "Fixed eventIds: running it again changes nothing.",
    request_body(content = serde_json::Value, content_type = "application/json", description = "Nothing is read from it; send `{}` (a write must carry Content-Type application/json, so a web page of another origin cannot send it)."),
    responses(
        (status = 200, description = "The receipt, and expected next to actual levels", body = crate::shapes::ScenarioOutcome),
        (status = 403, description = "The simulator is off on this server (code simulator_disabled).", body = crate::error::ErrorBody),
        crate::openapi::WriteRefusals,
    ))]
pub async fn scenario<S: super::backend::Backend>(
    State(state): State<Arc<S>>,
    super::auth::By(by): super::auth::By,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.simulator().scenario(&by).await?))
}
