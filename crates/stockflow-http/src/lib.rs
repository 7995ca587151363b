//! The one HTTP API of stockflow (described by [`openapi::document`], served at
//! /v1/openapi.json), over the backend seam ([`backend::Backend`]) that
//! both modes implement; with the accept loop, the web UI's files, webhook
//! delivery and `serve --catalog`, all written once against the seam.
//!
//! Handlers only translate: bytes to `Parsed` for the backend, its
//! answers to JSON. They never touch the disk and never wait on a lock that a
//! writer holds for more than one group's slice of a partition.

pub mod alerts;
pub mod amqp;
pub mod asks;
pub mod auth;
pub mod backend;
pub mod bootstrap;
pub(crate) mod catalog;
mod check;
pub(crate) mod dashboard;
pub mod dead_letters;
pub mod error;
pub mod guard;
pub mod history;
pub(crate) mod ingest;
pub mod openapi;
pub mod orders;
pub mod query;
pub mod serve;
pub mod session;
mod shapes;
pub mod simulator;
pub(crate) mod stream;
pub(crate) mod ui;
pub mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::{Json, Router};
use serde_json::json;

pub use error::ApiError;
pub use ingest::{read_body, source_mapping, Admission};
pub use query::{level_json, sources_json, LevelOut};

use backend::Backend;

/// A route's methods with the write guard, which runs only for a method
/// the route has: any other gets 405 first, whatever it carries.
fn guarded<B: Backend>(methods: MethodRouter<Arc<B>>) -> MethodRouter<Arc<B>> {
    methods.route_layer(middleware::from_fn(guard::writes_say_what_they_carry))
}

/// One public operation of the API: its method, its path as the OpenAPI
/// document spells it, and its handler. [`operations`] lists them all and
/// [`router`] routes exactly that list, so what is routed and what a test
/// holds against the document are one thing.
pub struct Operation<B> {
    pub method: Method,
    pub path: &'static str,
    /// False for the few routes the document describes in prose only
    /// (`/v1/ws`, in the stream's operation; the UI's files).
    pub documented: bool,
    handler: MethodRouter<Arc<B>>,
}

fn op<B>(method: Method, path: &'static str, handler: MethodRouter<Arc<B>>) -> Operation<B> {
    Operation {
        method,
        path,
        documented: true,
        handler,
    }
}

fn prose_only<B>(operation: Operation<B>) -> Operation<B> {
    Operation {
        documented: false,
        ..operation
    }
}

/// Every public operation, once. A backend adds only the endpoints its
/// own mode needs ([`Backend::own_routes`]), which are not public.
pub fn operations<B: Backend>() -> Vec<Operation<B>> {
    use Method as M;
    vec![
        op(M::POST, "/v1/events", post(ingest::post_events::<B>)),
        op(
            M::POST,
            "/v1/sources/{format}/events",
            post(ingest::post_source_events::<B>),
        ),
        op(M::GET, "/v1/sources", get(query::sources::<B>)),
        op(M::GET, "/v1/products", get(catalog::list_products::<B>)),
        op(M::POST, "/v1/products", post(catalog::post_products::<B>)),
        op(M::GET, "/v1/products/{sku}", get(catalog::get_product::<B>)),
        op(M::PUT, "/v1/products/{sku}", put(catalog::put_product::<B>)),
        op(M::GET, "/v1/locations", get(catalog::list_locations::<B>)),
        op(M::POST, "/v1/locations", post(catalog::post_locations::<B>)),
        op(
            M::GET,
            "/v1/locations/{locationId}",
            get(catalog::get_location::<B>),
        ),
        op(
            M::PUT,
            "/v1/locations/{locationId}",
            put(catalog::put_location::<B>),
        ),
        op(M::GET, "/v1/items/{sku}", get(catalog::item::<B>)),
        op(
            M::GET,
            "/v1/regions/{region}/stock/{sku}",
            get(catalog::region_stock::<B>),
        ),
        op(M::POST, "/v1/orders", post(orders::place::<B>)),
        op(M::GET, "/v1/orders", get(orders::list::<B>)),
        op(M::GET, "/v1/orders/{id}", get(orders::get::<B>)),
        op(M::POST, "/v1/orders/{id}/fulfil", post(orders::fulfil::<B>)),
        op(M::POST, "/v1/orders/{id}/cancel", post(orders::cancel::<B>)),
        op(M::POST, "/v1/orders/{id}/extend", post(orders::extend::<B>)),
        op(
            M::GET,
            "/v1/stock/{sku}/{locationId}",
            get(query::level::<B>),
        ),
        op(M::GET, "/v1/stock/{sku}", get(query::sku::<B>)),
        op(
            M::GET,
            "/v1/stock/{sku}/{locationId}/history",
            get(history::history::<B>),
        ),
        op(
            M::GET,
            "/v1/locations/{locationId}/stock",
            get(query::location::<B>),
        ),
        op(M::GET, "/v1/dead-letters", get(dead_letters::list::<B>)),
        op(
            M::DELETE,
            "/v1/dead-letters/{id}",
            delete(dead_letters::discard::<B>),
        ),
        op(
            M::POST,
            "/v1/dead-letters/{id}/replay",
            post(dead_letters::replay::<B>),
        ),
        op(M::GET, "/v1/check", get(check::check::<B>)),
        op(M::GET, "/v1/cluster", get(cluster::<B>)),
        op(M::GET, "/v1/alerts", get(alerts::list::<B>)),
        op(M::GET, "/v1/alerts/mutes", get(alerts::mutes::<B>)),
        op(M::POST, "/v1/alerts/mutes", post(alerts::mute::<B>)),
        op(
            M::DELETE,
            "/v1/alerts/mutes/{id}",
            delete(alerts::unmute::<B>),
        ),
        op(
            M::POST,
            "/v1/alerts/{id}/acknowledge",
            post(alerts::acknowledge::<B>),
        ),
        op(M::GET, "/v1/session", get(session::get::<B>)),
        op(
            M::POST,
            "/v1/session/stream",
            post(session::stream_cookie::<B>),
        ),
        op(
            M::DELETE,
            "/v1/session/stream",
            delete(session::end_stream_cookie::<B>),
        ),
        op(M::GET, "/v1/stream", get(stream::stream::<B>)),
        prose_only(op(M::GET, "/v1/ws", get(stream::websocket::<B>))),
        op(M::GET, "/v1/activity", get(dashboard::activity::<B>)),
        op(M::GET, "/v1/simulator", get(dashboard::status::<B>)),
        op(M::POST, "/v1/simulator/start", post(dashboard::start::<B>)),
        op(M::POST, "/v1/simulator/stop", post(dashboard::stop::<B>)),
        op(M::POST, "/v1/simulator/send", post(dashboard::send::<B>)),
        op(
            M::POST,
            "/v1/simulator/scenario",
            post(dashboard::scenario::<B>),
        ),
        op(M::GET, "/v1/openapi.json", get(openapi::<B>)),
        op(M::GET, "/", get(ui::index)),
        prose_only(op(M::GET, "/ui/{*path}", get(ui::asset))),
        op(M::GET, "/healthz", get(healthz)),
        op(M::GET, "/readyz", get(ready::<B>)),
        op(M::GET, "/v1/links", get(links::<B>)),
        op(M::GET, "/v1/sinks", get(sinks::<B>)),
        op(M::GET, "/metrics", get(metrics::<B>)),
    ]
}

/// The one HTTP API, over either backend: [`operations`], each path's
/// methods behind the write guard, and the backend's own routes.
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    let read_timeout = backend.config().read_timeout;
    let guard = auth::Guard {
        tokens: backend.config().auth.clone(),
        metrics_open: backend.config().metrics_open,
        cluster: backend.config().cluster_secret.clone(),
    };
    let mut paths: BTreeMap<&str, MethodRouter<Arc<B>>> = BTreeMap::new();
    for operation in operations::<B>() {
        let methods = paths.remove(operation.path).unwrap_or_default();
        paths.insert(operation.path, methods.merge(operation.handler));
    }
    paths
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, guarded(methods))
        })
        .merge(B::own_routes())
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .layer(middleware::from_fn_with_state(guard, auth::authorize))
        .layer(middleware::from_fn_with_state(
            read_timeout,
            serve::body_deadline,
        ))
        .layer(middleware::from_fn(error::errors_are_json))
        .layer(middleware::from_fn(track))
        .layer(tower::util::option_layer(guard::cors(
            &backend.config().cors_origins,
        )))
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

#[utoipa::path(get, path = "/v1/openapi.json",
    operation_id = "getOpenapi", tag = "operations", summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json")))]
async fn openapi<B: Backend>(State(backend): State<Arc<B>>) -> impl IntoResponse {
    let secured = backend.config().auth.is_some();
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document(secured),
    )
}

#[utoipa::path(get, path = "/metrics",
    operation_id = "metrics", tag = "operations", summary = "Prometheus metrics",
    responses((status = 200, description = "Text exposition format", content_type = "text/plain")))]
async fn metrics<B: Backend>(State(backend): State<Arc<B>>) -> impl IntoResponse {
    backend.observe();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        stockflow_service::metrics::handle().render(),
    )
}

#[utoipa::path(get, path = "/healthz",
    operation_id = "healthz", tag = "operations", summary = "Liveness",
    responses((status = 200, description = "Up", content_type = "application/json")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz",
    operation_id = "readyz", tag = "operations", summary = "Readiness (recovery finished)",
    responses(
        (status = 200, description = "Ready; `links` lists the connections to other systems (each RabbitMQ queue consumed: `kind`, `name`, `state` connecting, connected or disconnected; details at GET /v1/links), shown without deciding readiness.", content_type = "application/json"),
        (status = 503, description = "Recovering, joining the cluster or shutting down; see Retry-After.", body = error::ErrorBody),
    ))]
async fn ready<B: Backend>(
    State(backend): State<Arc<B>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    backend.ready()?;
    // The links to other systems are shown, not judged: a RabbitMQ that is
    // down does not make the HTTP API less ready. Anyone may ask here:
    // only their state (GET /v1/links has the rest).
    let links: Vec<serde_json::Value> = backend
        .config()
        .links
        .all()
        .into_iter()
        .map(|l| json!({"kind": l.kind, "name": l.name, "state": l.state}))
        .collect();
    Ok(Json(json!({"status": "ready", "links": links})))
}

/// GET /v1/links: the connections to other systems, with their counts.
#[utoipa::path(get, path = "/v1/links",
    operation_id = "getLinks", tag = "operations",
    summary = "The links to other systems (RabbitMQ queues)",
    description = "Each RabbitMQ queue the server consumes (`serve --amqp-queue`): `kind` (amqp), `name` (the queue), `format`, `peer` (amqp://host:port/vhost, never with the credentials), `state` (connecting, connected, disconnected), `since`, `lastError`, `messages` (taken and acknowledged once durable) and `refused` (of those, kept whole as dead letters). Counts start at zero when the server starts; on a Kafka-mode cluster, each instance shows its own.",
    responses(
        (status = 200, description = "The links", body = shapes::Links),
        openapi::ReadRefusals,
    ))]
async fn links<B: Backend>(State(backend): State<Arc<B>>) -> Json<serde_json::Value> {
    Json(json!({"links": backend.config().links.all()}))
}

/// GET /v1/sinks: where the server copies its data, and how far behind.
#[utoipa::path(get, path = "/v1/sinks",
    operation_id = "getSinks", tag = "operations",
    summary = "The sinks (PostgreSQL) and their lag",
    description = "Each sink the server writes (`serve --sink-postgres`, `--lake`): `kind` (postgres, lake), `target` (postgres://host:port/database, never with the credentials; the lake's directory), `state` (connecting, connected, disconnected), `since`, `lastError` (the last failure, kept after recovery: `state` says whether it is still failing), `behindBytes` (history written and not yet committed to it, as of the sink's last look at the history files, every 100 ms for PostgreSQL when idle and every 250 ms for the lake: 0 when caught up; the lake holds history back up to `--lake-flush-seconds` on purpose), `rows` (committed since the server started), `lastCommitAt` and `skippedBytes` (history the retention deleted before the sink had it). In Kafka mode an instance shows its own sinks, of the partitions it owns, and how far behind as `behindRecords` (history-topic records).",
    responses(
        (status = 200, description = "The sinks", body = shapes::Sinks),
        openapi::ReadRefusals,
    ))]
async fn sinks<B: Backend>(State(backend): State<Arc<B>>) -> Json<serde_json::Value> {
    Json(json!({"sinks": backend.config().sinks.all()}))
}

/// GET /v1/cluster: the members and who owns which partition.
#[utoipa::path(get, path = "/v1/cluster",
    operation_id = "getCluster", tag = "operations",
    summary = "Kafka mode: members, partitions and lag",
    description = "The group as the instances announce it on the cluster topic: each member's id, URL and owned partitions, and per canonical partition its owner, status (`active` or `restoring`), applied offset, high watermark and lag. Kafka mode only.",
    responses(
        (status = 200, description = "Cluster view", body = shapes::Cluster),
        (status = 404, description = "The embedded mode runs alone: there is no cluster.", body = error::ErrorBody),
        openapi::ReadRefusals,
    ))]
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
