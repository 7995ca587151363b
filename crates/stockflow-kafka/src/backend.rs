//! Kafka mode behind the [`Backend`] seam: what `KafkaApp` answers the
//! one HTTP layer, the gauges and readiness of this instance's partitions,
//! and the endpoints the members of a cluster ask each other.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use stockflow_core::{Parsed, Totals};

use super::http::{applied, dead_letter, ingest_parsed, KafkaApp};
use super::shared::RESTORING;
use super::{catalog, orders};
use stockflow_http::asks::Wait;
use stockflow_http::backend::{Backend, Read};
use stockflow_http::ApiError;
use stockflow_service::config::Config;
use stockflow_service::receipt::{Receipt, RefusedBody};

/// The endpoints the members of a cluster ask each other.
fn internal_routes() -> Router<Arc<KafkaApp>> {
    Router::new()
        .route("/v1/internal/rollups/{sku}", get(catalog::internal_rollup))
        .route("/v1/internal/orders/{id}", get(orders::internal))
        .route(
            "/v1/internal/holds/{sku}/{location}",
            get(orders::internal_holds),
        )
        .route("/v1/internal/applied", get(applied))
}

impl KafkaApp {
    /// The gauges of this instance's partitions: owned, restoring, lag.
    fn observe_partitions(&self) {
        let restoring: i64 = self
            .shared
            .restore_left
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .sum();
        metrics::gauge!("stockflow_kafka_restore_records_left").set(restoring as f64);
        let owned = self.shared.owned();
        metrics::gauge!("stockflow_kafka_partitions_owned").set(owned.len() as f64);
        metrics::gauge!("stockflow_kafka_partitions_restoring")
            .set(owned.iter().filter(|(_, s, _)| *s == RESTORING).count() as f64);
        let high = self.cluster.high.read().clone();
        for (p, _, applied) in &owned {
            if let Some(h) = high.get(*p as usize).filter(|h| **h >= 0) {
                metrics::gauge!("stockflow_kafka_lag", "partition" => p.to_string())
                    .set((h - applied).max(0) as f64);
            }
        }
    }

    /// Ready once no partition of this instance is restoring.
    fn readiness(&self) -> Result<(), ApiError> {
        let restoring = self
            .shared
            .owned()
            .iter()
            .filter(|(_, s, _)| *s == RESTORING)
            .count();
        if restoring > 0 {
            let mut error = ApiError::overloaded(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{restoring} partitions are restoring"),
            );
            error.code = "restoring".into();
            return Err(error);
        }
        Ok(())
    }
}

/// Kafka mode behind the seam: events are produced to their owners'
/// canonical partitions, refused bodies to the DLQ topic.
impl Backend for KafkaApp {
    fn config(&self) -> &Config {
        &self.config
    }

    fn admission(&self) -> &stockflow_http::Admission {
        &self.admission
    }

    async fn submit(&self, parsed: Parsed, source: &str, wait: Wait) -> Result<Receipt, ApiError> {
        ingest_parsed(self, wait == Wait::Applied, parsed, source).await
    }

    /// A consumer group per URL on the alerts topic: each alert sent by
    /// one member, resumed across restarts.
    fn webhook_feed(
        &self,
        url: &str,
    ) -> anyhow::Result<tokio::sync::mpsc::Receiver<stockflow_service::stream::Delivery>> {
        super::webhooks::feed(&self.settings, url, self.hub.closing())
    }

    async fn keep_refused(&self, refused: RefusedBody, source: &str) -> Result<(), ApiError> {
        dead_letter(self, source, &refused.payload, &refused.reason, None).await;
        Ok(())
    }

    async fn level(&self, sku: &str, location: &str, read: &Read) -> Result<Value, ApiError> {
        self.read_level(sku, location, read).await
    }

    async fn sku_levels(&self, sku: &str, read: &Read) -> Result<Value, ApiError> {
        self.read_sku(sku, read).await
    }

    async fn level_alerts(
        &self,
        filter: &stockflow_http::asks::AlertFilter,
        kind: Option<stockflow_core::alerts::AlertKind>,
        read: &Read,
    ) -> Result<stockflow_http::asks::Found, ApiError> {
        self.read_level_alerts(filter, kind, read).await
    }

    fn catalog(&self) -> parking_lot::RwLockReadGuard<'_, stockflow_core::Catalog> {
        self.shared.catalog.read()
    }

    async fn activity(
        &self,
        seconds: usize,
        stale: Duration,
        read: &Read,
    ) -> Result<Value, ApiError> {
        self.read_activity(seconds, stale, read).await
    }

    async fn location_levels(
        &self,
        location: &str,
        listing: &stockflow_http::asks::Listing,
        read: &Read,
    ) -> Result<Value, ApiError> {
        self.read_location(location, listing, read).await
    }

    async fn level_history(
        &self,
        sku: &str,
        location: &str,
        page: &stockflow_http::asks::HistoryPage,
        read: &Read,
    ) -> Result<Value, ApiError> {
        self.read_history(sku, location, page, read).await
    }

    async fn write_catalog(
        &self,
        items: Vec<stockflow_http::asks::CatalogItem>,
        rejected: Vec<stockflow_core::Rejected>,
        source: &str,
    ) -> Result<Receipt, ApiError> {
        catalog::write(self, items, rejected, source).await
    }

    async fn item_totals(&self, sku: &str) -> Result<stockflow_http::asks::Rollup, ApiError> {
        catalog::sku_rollup(self, sku).await
    }

    async fn location_totals(
        &self,
        location: &str,
        read: &Read,
    ) -> Result<Option<Totals>, ApiError> {
        catalog::location_totals(self, location, read).await
    }

    async fn locations_totals(&self, read: &Read) -> Result<BTreeMap<String, Totals>, ApiError> {
        catalog::locations_totals(self, read).await
    }

    async fn dead_letters(
        &self,
        filter: &stockflow_http::asks::LetterFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<u64>), ApiError> {
        super::dead_letters::list(self, filter, after, limit).await
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<stockflow_http::asks::Letter>, ApiError> {
        super::dead_letters::find(self, id).await
    }

    async fn replay(
        &self,
        id: u64,
        letter: &stockflow_http::asks::Letter,
        parsed: Parsed,
        changes: Vec<stockflow_http::asks::CatalogItem>,
        by: &str,
    ) -> Result<Receipt, ApiError> {
        super::dead_letters::replay(self, id, letter, parsed, changes, by).await
    }

    async fn discard(&self, id: u64, by: &str) -> Result<(), ApiError> {
        super::dead_letters::resolve(self, id, "discarded", by).await
    }

    fn simulator(&self) -> &Arc<stockflow_http::simulator::Simulator> {
        &self.simulator
    }

    fn hub(&self) -> &Arc<stockflow_service::stream::Hub> {
        &self.hub
    }

    fn ready(&self) -> Result<(), ApiError> {
        self.readiness()
    }

    fn observe(&self) {
        self.observe_partitions();
    }

    async fn check(&self, strict: bool, read: &Read) -> Result<Value, ApiError> {
        super::check::check(self, strict, read).await
    }

    fn cluster(&self) -> Result<Value, ApiError> {
        Ok(self.cluster_json())
    }

    fn own_routes() -> Router<Arc<Self>> {
        internal_routes()
    }

    async fn order_command(
        &self,
        command: stockflow_core::orders::OrderCommand,
    ) -> Result<stockflow_core::orders::Answer, ApiError> {
        orders::command(self, command).await
    }

    async fn order(
        &self,
        order_id: &str,
    ) -> Result<Option<stockflow_core::orders::Order>, ApiError> {
        orders::get(self, order_id).await
    }

    async fn orders(
        &self,
        status: Option<stockflow_core::orders::Status>,
        after: Option<&str>,
        limit: usize,
        read: &Read,
    ) -> Result<Vec<Value>, ApiError> {
        orders::list(self, status, after, limit, read).await
    }

    /// Through this instance's own API: the level's owner may be another.
    async fn quantities(
        &self,
        sku: &str,
        location: &str,
    ) -> Option<stockflow_http::asks::Quantities> {
        let url = format!("{}/v1/stock/{sku}/{location}", self.url);
        let level: Value = self.client.get(url).send().await.ok()?.json().await.ok()?;
        Some(stockflow_http::asks::Quantities {
            on_hand: level["onHand"].as_i64()?,
            reserved: level["reserved"].as_i64()?,
            in_transit: level["inTransit"].as_i64()?,
        })
    }
}

impl KafkaApp {
    fn cluster_json(&self) -> Value {
        let app = self;
        let members = app.cluster.live();
        let high = app.cluster.high.read().clone();
        let partitions: Vec<Value> = (0..app.settings.partitions)
            .map(|p| {
                let owner = members.iter().find_map(|m| {
                    m.partitions
                        .iter()
                        .find(|o| o.partition == p)
                        .map(|o| (m, o))
                });
                let high = high.get(p as usize).copied().filter(|h| *h >= 0);
                json!({
                    "partition": p,
                    "owner": owner.map(|(m, _)| m.instance_id.clone()),
                    "status": owner.map_or("unowned".to_owned(), |(_, o)| o.status.clone()),
                    "applied": owner.map(|(_, o)| o.applied),
                    "highWatermark": high,
                    "lag": owner.and_then(|(_, o)| high.map(|h| (h - o.applied).max(0))),
                })
            })
            .collect();
        json!({
            "instanceId": app.instance_id,
            "group": app.settings.group,
            "members": members,
            "partitions": partitions,
        })
    }
}
