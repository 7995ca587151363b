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

use backend::Backend;

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The one HTTP API, over either backend: every public route is here,
/// once; a backend adds only the endpoints its own mode needs
/// ([`Backend::own_routes`]).
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    let read_timeout = backend.config().read_timeout;
    Router::new()
        .route("/v1/events", post(ingest::post_events::<B>))
        .route(
            "/v1/sources/{format}/events",
            post(ingest::post_source_events::<B>),
        )
        .route("/v1/sources", get(query::sources::<B>))
        .route(
            "/v1/products",
            get(catalog::list_products::<B>).post(catalog::post_products::<B>),
        )
        .route(
            "/v1/products/{sku}",
            get(catalog::get_product::<B>).put(catalog::put_product::<B>),
        )
        .route(
            "/v1/locations",
            get(catalog::list_locations::<B>).post(catalog::post_locations::<B>),
        )
        .route(
            "/v1/locations/{location_id}",
            get(catalog::get_location::<B>).put(catalog::put_location::<B>),
        )
        .route("/v1/items/{sku}", get(catalog::item::<B>))
        .route(
            "/v1/regions/{region}/stock/{sku}",
            get(catalog::region_stock::<B>),
        )
        .route(
            "/v1/orders",
            post(orders::place::<B>).get(orders::list::<B>),
        )
        .route("/v1/orders/{id}", get(orders::get::<B>))
        .route("/v1/orders/{id}/fulfil", post(orders::fulfil::<B>))
        .route("/v1/orders/{id}/cancel", post(orders::cancel::<B>))
        .route("/v1/orders/{id}/extend", post(orders::extend::<B>))
        .route("/v1/stock/{sku}/{location_id}", get(query::level::<B>))
        .route("/v1/stock/{sku}", get(query::sku::<B>))
        .route(
            "/v1/stock/{sku}/{location_id}/history",
            get(history::history::<B>),
        )
        .route(
            "/v1/locations/{location_id}/stock",
            get(query::location::<B>),
        )
        .route("/v1/dead-letters", get(dead_letters::list::<B>))
        .route(
            "/v1/dead-letters/{id}",
            axum::routing::delete(dead_letters::discard::<B>),
        )
        .route(
            "/v1/dead-letters/{id}/replay",
            post(dead_letters::replay::<B>),
        )
        .route("/v1/check", get(check::check::<B>))
        .route("/v1/cluster", get(cluster::<B>))
        .route("/v1/alerts", get(alerts::list::<B>))
        .route("/v1/stream", get(stream::stream::<B>))
        .route("/v1/ws", get(stream::websocket::<B>))
        .route("/v1/activity", get(dashboard::activity::<B>))
        .route("/v1/simulator", get(dashboard::status::<B>))
        .route("/v1/simulator/start", post(dashboard::start::<B>))
        .route("/v1/simulator/stop", post(dashboard::stop::<B>))
        .route("/v1/simulator/send", post(dashboard::send::<B>))
        .route("/v1/simulator/scenario", post(dashboard::scenario::<B>))
        .route("/v1/openapi.json", get(openapi))
        .route("/", get(ui::index))
        .route("/ui/{*path}", get(ui::asset))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready::<B>))
        .route("/metrics", get(metrics::<B>))
        .merge(B::own_routes())
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .layer(middleware::from_fn_with_state(
            read_timeout,
            serve::body_deadline,
        ))
        .layer(middleware::from_fn(guard::writes_say_what_they_carry))
        .layer(middleware::from_fn(error::errors_are_json))
        .layer(middleware::from_fn(track))
        .with_state(backend)
}

/// A JSON request body as `T`, or 400 saying what is wrong with it.
fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn metrics<B: Backend>(State(backend): State<Arc<B>>) -> impl IntoResponse {
    backend.observe();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::handle().render(),
    )
}

async fn ready<B: Backend>(
    State(backend): State<Arc<B>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    backend.ready()?;
    Ok(Json(json!({"status": "ready"})))
}

/// GET /v1/cluster: the members and who owns which partition.
async fn cluster<B: Backend>(
    State(backend): State<Arc<B>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    backend.cluster().map(Json)
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
