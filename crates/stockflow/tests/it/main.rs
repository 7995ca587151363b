//! Integration tests of the stockflow server: one binary, several modules.

mod alerts;
pub mod amqp;
pub mod audit;
pub mod auth;
mod catalog;
mod contract;
mod crash;
mod damage;
mod dashboard;
mod dead_letters;
mod fuzz;
mod history;
mod holds;
pub mod hostile;
mod http;
mod import;
mod kafka;
mod lake;
mod orders;
mod parity;
/// The reference model of orders' holds, shared with the core's tests.
#[path = "../../../stockflow-core/tests/it/reference.rs"]
pub mod reference;
mod sink;
mod sources;
pub mod stream;
pub mod tls;
mod ui;
pub mod webhooks;

use std::path::Path;

use serde_json::Value;
use stockflow::server::Server;
use stockflow_service::config::Config;

/// Tests that load both cores for a long time share this: the Kafka tests
/// (a broker and several instances each) take it shared, the browser test
/// alone. A browser starved by three Kafka instances measures the
/// machine, not the page (its frame-time check failed that way).
pub fn heavy() -> std::sync::RwLockReadGuard<'static, ()> {
    HEAVY.read().unwrap_or_else(|e| e.into_inner())
}

/// The browser test's side of [`heavy`].
pub fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    HEAVY.write().unwrap_or_else(|e| e.into_inner())
}

static HEAVY: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A loopback port nothing listens on (bound, then released), for a
/// process the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every level of `engine` as (onHand, reserved, inTransit) by (sku,
/// location): the reference the crash and Kafka tests compare servers with.
pub fn levels_of(
    engine: &stockflow_core::Engine,
) -> std::collections::BTreeMap<(String, String), (i64, i64, i64)> {
    engine
        .levels()
        .map(|v| {
            (
                (v.sku.to_string(), v.location_id.to_string()),
                (v.level.on_hand, v.level.reserved, v.level.in_transit),
            )
        })
        .collect()
}

/// A server on a free port over `dir`, with `adjust` applied to the config.
pub async fn start(dir: &Path, adjust: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config::new(dir.to_owned());
    adjust(&mut config);
    Server::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("server starts")
}

pub async fn post(url: &str, content_type: &str, body: impl Into<String>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/events"))
        .header("content-type", content_type)
        .body(body.into())
        .send()
        .await
        .expect("server reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Posts one canonical event and insists that the server took the request
/// (200); for steps whose receipt the test does not inspect.
pub async fn send_event(
    url: &str,
    id: &str,
    kind: &str,
    sku: &str,
    location: &str,
    quantity: i64,
) -> Value {
    let body = event(id, kind, sku, location, quantity);
    let (status, receipt) = post(url, "application/json", body).await;
    assert_eq!(status, 200, "{kind} {id}: {receipt}");
    receipt
}

/// POSTs `body` as JSON to `path`: (status, JSON answer).
pub async fn post_json(url: &str, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .json(&body)
        .send()
        .await
        .expect("server reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn get(url: &str, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{url}{path}"))
        .await
        .expect("server reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub fn event(id: &str, kind: &str, sku: &str, location: &str, quantity: i64) -> String {
    format!(
        r#"{{"eventId":"{id}","eventType":"{kind}","sku":"{sku}","locationId":"{location}","quantity":{quantity}}}"#
    )
}
