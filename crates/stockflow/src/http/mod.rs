//! The HTTP API (documented in `openapi.json`, served at /v1/openapi.json).
//!
//! Handlers only translate: bytes to `Parsed` for the pipeline, partition
//! reads to JSON. They never touch the disk and never wait on a lock that a
//! writer holds for more than one group's slice of a partition.

pub(crate) mod alerts;
pub mod backend;
pub(crate) mod catalog;
mod check;
pub(crate) mod dashboard;
pub(crate) mod dead_letters;
pub mod error;
pub(crate) mod guard;
pub(crate) mod history;
pub(crate) mod ingest;
pub mod orders;
pub(crate) mod query;
pub mod serve;
pub(crate) mod stream;
pub(crate) mod ui;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use alerts::{alert_json, AlertOut};
pub use error::ApiError;
pub use ingest::{read_body, source_mapping, Admission};
pub use orders::order_json;
pub use query::{level_json, sources_json, LevelOut};

use crate::config::Config;
use crate::pipeline::Pipeline;

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What every handler can reach.
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub config: Config,
    /// Ingest requests being read or parsed, and their bytes.
    pub admission: Admission,
    /// The in-process simulator (refuses unless switched on).
    pub simulator: Arc<crate::simulator::Simulator>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/events", post(ingest::post_events::<AppState>))
        .route(
            "/v1/sources/{format}/events",
            post(ingest::post_source_events::<AppState>),
        )
        .route("/v1/sources", get(query::sources))
        .route(
            "/v1/products",
            get(catalog::list_products).post(catalog::post_products),
        )
        .route(
            "/v1/products/{sku}",
            get(catalog::get_product).put(catalog::put_product),
        )
        .route(
            "/v1/locations",
            get(catalog::list_locations).post(catalog::post_locations),
        )
        .route(
            "/v1/locations/{location_id}",
            get(catalog::get_location).put(catalog::put_location),
        )
        .route("/v1/items/{sku}", get(catalog::item))
        .route("/v1/orders", post(orders::place).get(orders::list))
        .route("/v1/orders/{id}", get(orders::get))
        .route("/v1/orders/{id}/fulfil", post(orders::fulfil))
        .route("/v1/orders/{id}/cancel", post(orders::cancel))
        .route("/v1/orders/{id}/extend", post(orders::extend))
        .route(
            "/v1/regions/{region}/stock/{sku}",
            get(catalog::region_stock),
        )
        .route(
            "/v1/stock/{sku}/{location_id}",
            get(query::level::<AppState>),
        )
        .route("/v1/stock/{sku}", get(query::sku::<AppState>))
        .route(
            "/v1/stock/{sku}/{location_id}/history",
            get(history::history::<AppState>),
        )
        .route(
            "/v1/locations/{location_id}/stock",
            get(query::location::<AppState>),
        )
        .route("/v1/dead-letters", get(dead_letters::list))
        .route(
            "/v1/dead-letters/{id}",
            axum::routing::delete(dead_letters::discard),
        )
        .route("/v1/dead-letters/{id}/replay", post(dead_letters::replay))
        .route("/v1/check", get(check::check))
        .route("/v1/alerts", get(alerts::list::<AppState>))
        .route("/v1/stream", get(stream::stream))
        .route("/v1/ws", get(stream::websocket))
        .route("/v1/activity", get(dashboard::activity::<AppState>))
        .route("/v1/simulator", get(dashboard::status::<AppState>))
        .route("/v1/simulator/start", post(dashboard::start::<AppState>))
        .route("/v1/simulator/stop", post(dashboard::stop::<AppState>))
        .route("/v1/simulator/send", post(dashboard::send::<AppState>))
        .route(
            "/v1/simulator/scenario",
            post(dashboard::scenario::<AppState>),
        )
        .route("/v1/openapi.json", get(openapi))
        .route("/", get(ui::index))
        .route("/ui/{*path}", get(ui::asset))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/readyz",
            get(|| async { Json(json!({"status": "ready"})) }),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .layer(middleware::from_fn_with_state(
            state.config.read_timeout,
            serve::body_deadline,
        ))
        .layer(middleware::from_fn(guard::writes_say_what_they_carry))
        .layer(middleware::from_fn(error::errors_are_json))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// A JSON request body as `T`, or 400 saying what is wrong with it.
fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let shared = &state.pipeline.shared;
    metrics::gauge!("stockflow_levels").set(shared.levels() as f64);
    metrics::gauge!("stockflow_dedup_entries").set(
        shared
            .dedup_entries
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::handle().render(),
    )
}

/// Records latency per route and logs server errors.
async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    metrics::histogram!("stockflow_http_request_seconds", "route" => route.clone(), "method" => method.to_string())
        .record(started.elapsed().as_secs_f64());
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(%method, %route, %status, "request failed");
    }
    response
}
