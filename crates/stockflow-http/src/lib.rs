//! The one HTTP API of stockflow (documented in `openapi.json`, served at
//! /v1/openapi.json), over the backend seam ([`backend::Backend`]) that
//! both modes implement; with the accept loop, the web UI's files, webhook
//! delivery and `serve --catalog`, all written once against the seam.
//!
//! Handlers only translate: bytes to `Parsed` for the backend, its
//! answers to JSON. They never touch the disk and never wait on a lock that a
//! writer holds for more than one group's slice of a partition.

pub mod alerts;
pub mod asks;
pub mod backend;
pub mod bootstrap;
pub(crate) mod catalog;
mod check;
pub(crate) mod dashboard;
pub mod dead_letters;
pub mod error;
pub(crate) mod guard;
pub mod history;
pub(crate) mod ingest;
pub mod orders;
pub mod query;
pub mod serve;
pub mod simulator;
pub(crate) mod stream;
pub(crate) mod ui;
pub mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::json;

pub use error::ApiError;
pub use ingest::{read_body, source_mapping, Admission};
pub use query::{level_json, sources_json, LevelOut};

use backend::Backend;

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// A route's methods with the write guard, which runs only for a method
/// the route has: any other gets 405 first, whatever it carries.
fn guarded<B: Backend>(methods: MethodRouter<Arc<B>>) -> MethodRouter<Arc<B>> {
    methods.route_layer(middleware::from_fn(guard::writes_say_what_they_carry))
}

/// The one HTTP API, over either backend: every public route is here,
/// once; a backend adds only the endpoints its own mode needs
/// ([`Backend::own_routes`]).
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    let read_timeout = backend.config().read_timeout;
    Router::new()
        .route("/v1/events", guarded(post(ingest::post_events::<B>)))
        .route(
            "/v1/sources/{format}/events",
            guarded(post(ingest::post_source_events::<B>)),
        )
        .route("/v1/sources", guarded(get(query::sources::<B>)))
        .route(
            "/v1/products",
            guarded(get(catalog::list_products::<B>).post(catalog::post_products::<B>)),
        )
        .route(
            "/v1/products/{sku}",
            guarded(get(catalog::get_product::<B>).put(catalog::put_product::<B>)),
        )
        .route(
            "/v1/locations",
            guarded(get(catalog::list_locations::<B>).post(catalog::post_locations::<B>)),
        )
        .route(
            "/v1/locations/{location_id}",
            guarded(get(catalog::get_location::<B>).put(catalog::put_location::<B>)),
        )
        .route("/v1/items/{sku}", guarded(get(catalog::item::<B>)))
        .route(
            "/v1/regions/{region}/stock/{sku}",
            guarded(get(catalog::region_stock::<B>)),
        )
        .route(
            "/v1/orders",
            guarded(post(orders::place::<B>).get(orders::list::<B>)),
        )
        .route("/v1/orders/{id}", guarded(get(orders::get::<B>)))
        .route("/v1/orders/{id}/fulfil", guarded(post(orders::fulfil::<B>)))
        .route("/v1/orders/{id}/cancel", guarded(post(orders::cancel::<B>)))
        .route("/v1/orders/{id}/extend", guarded(post(orders::extend::<B>)))
        .route(
            "/v1/stock/{sku}/{location_id}",
            guarded(get(query::level::<B>)),
        )
        .route("/v1/stock/{sku}", guarded(get(query::sku::<B>)))
        .route(
            "/v1/stock/{sku}/{location_id}/history",
            guarded(get(history::history::<B>)),
        )
        .route(
            "/v1/locations/{location_id}/stock",
            guarded(get(query::location::<B>)),
        )
        .route("/v1/dead-letters", guarded(get(dead_letters::list::<B>)))
        .route(
            "/v1/dead-letters/{id}",
            guarded(axum::routing::delete(dead_letters::discard::<B>)),
        )
        .route(
            "/v1/dead-letters/{id}/replay",
            guarded(post(dead_letters::replay::<B>)),
        )
        .route("/v1/check", guarded(get(check::check::<B>)))
        .route("/v1/cluster", guarded(get(cluster::<B>)))
        .route("/v1/alerts", guarded(get(alerts::list::<B>)))
        .route("/v1/stream", guarded(get(stream::stream::<B>)))
        .route("/v1/ws", guarded(get(stream::websocket::<B>)))
        .route("/v1/activity", guarded(get(dashboard::activity::<B>)))
        .route("/v1/simulator", guarded(get(dashboard::status::<B>)))
        .route("/v1/simulator/start", guarded(post(dashboard::start::<B>)))
        .route("/v1/simulator/stop", guarded(post(dashboard::stop::<B>)))
        .route("/v1/simulator/send", guarded(post(dashboard::send::<B>)))
        .route(
            "/v1/simulator/scenario",
            guarded(post(dashboard::scenario::<B>)),
        )
        .route("/v1/openapi.json", guarded(get(openapi)))
        .route("/", guarded(get(ui::index)))
        .route("/ui/{*path}", guarded(get(ui::asset)))
        .route(
            "/healthz",
            guarded(get(|| async { Json(json!({"status": "ok"})) })),
        )
        .route("/readyz", guarded(get(ready::<B>)))
        .route("/metrics", guarded(get(metrics::<B>)))
        .merge(B::own_routes())
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .layer(middleware::from_fn_with_state(
            read_timeout,
            serve::body_deadline,
        ))
        .layer(middleware::from_fn(error::errors_are_json))
        .layer(middleware::from_fn(track))
        .with_state(backend)
}

/// A whole number in a JSON body, written `2` or `2.0`: JSON does not
/// tell them apart, so neither does the API. A fraction is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Whole(pub i64);

impl<'de> serde::Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Whole, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        stockflow_core::parse::whole_number(&n)
            .map(Whole)
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a whole number")))
    }
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
        stockflow_service::metrics::handle().render(),
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
