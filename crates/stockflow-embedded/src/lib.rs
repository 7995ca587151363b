//! The embedded mode: one process keeps the inventory with its own
//! pipeline (log, partitions, checkpoints) and answers the HTTP API
//! through the [`Backend`] seam. Nothing here speaks HTTP; nothing in
//! `http` reaches past the seam into the engine.

mod check;
pub mod dead_letters;
pub mod pipeline;
mod reads;
pub mod record;
pub mod recovery;
pub mod repair;
pub mod sink;
mod writes;

use std::sync::Arc;

use stockflow_core::Parsed;

use crate::pipeline::Pipeline;
use stockflow_http::asks::Wait;
use stockflow_http::backend::Backend;
use stockflow_http::{Admission, ApiError};
use stockflow_service::config::Config;
use stockflow_service::receipt::{Receipt, RefusedBody};

/// The embedded engine, as the HTTP layer reaches it.
pub struct Embedded {
    pub pipeline: Arc<Pipeline>,
    pub config: Config,
    /// Ingest requests being read or parsed, and their bytes.
    pub admission: Admission,
    /// The in-process simulator (refuses unless switched on).
    pub simulator: Arc<stockflow_http::simulator::Simulator>,
}

/// The embedded engine behind the seam: submissions go to the pipeline,
/// which answers once they are durable and applied.
impl Backend for Embedded {
    fn config(&self) -> &stockflow_service::config::Config {
        &self.config
    }

    fn admission(&self) -> &Admission {
        &self.admission
    }

    async fn submit(&self, parsed: Parsed, source: &str, _: Wait) -> Result<Receipt, ApiError> {
        Ok(self.pipeline.submit(parsed, source)?.await?)
    }

    async fn keep_refused(&self, refused: RefusedBody, source: &str) -> Result<(), ApiError> {
        self.pipeline.submit_refused(refused, source)?.await?;
        Ok(())
    }

    async fn level(
        &self,
        sku: &str,
        location: &str,
        read: &stockflow_http::backend::Read,
    ) -> Result<serde_json::Value, ApiError> {
        reads::level_here(self, sku, location, read)
    }

    async fn sku_levels(
        &self,
        sku: &str,
        read: &stockflow_http::backend::Read,
    ) -> Result<serde_json::Value, ApiError> {
        reads::sku_here(self, sku, read)
    }

    async fn location_levels(
        &self,
        location: &str,
        listing: &stockflow_http::asks::Listing,
        _: &stockflow_http::backend::Read,
    ) -> Result<serde_json::Value, ApiError> {
        reads::location_here(self, location, listing)
    }

    async fn level_alerts(
        &self,
        filter: &stockflow_http::asks::AlertFilter,
        kind: Option<stockflow_core::alerts::AlertKind>,
        _: &stockflow_http::backend::Read,
    ) -> Result<stockflow_http::asks::Found, ApiError> {
        Ok(reads::level_alerts_here(self, filter, kind))
    }

    fn catalog(&self) -> parking_lot::RwLockReadGuard<'_, stockflow_core::Catalog> {
        self.pipeline.shared.catalog.read()
    }

    async fn activity(
        &self,
        seconds: usize,
        stale: std::time::Duration,
        _: &stockflow_http::backend::Read,
    ) -> Result<serde_json::Value, ApiError> {
        Ok(reads::activity_here(self, seconds, stale))
    }

    async fn level_history(
        &self,
        sku: &str,
        location: &str,
        page: &stockflow_http::asks::HistoryPage,
        _: &stockflow_http::backend::Read,
    ) -> Result<serde_json::Value, ApiError> {
        reads::history_here(self, sku, location, page)
    }

    async fn write_catalog(
        &self,
        items: Vec<stockflow_http::asks::CatalogItem>,
        rejected: Vec<stockflow_core::Rejected>,
        source: &str,
    ) -> Result<Receipt, ApiError> {
        writes::write_here(self, items, rejected, source).await
    }

    async fn item_totals(&self, sku: &str) -> Result<stockflow_http::asks::Rollup, ApiError> {
        Ok(reads::item_totals_here(self, sku))
    }

    async fn location_totals(
        &self,
        location: &str,
        _: &stockflow_http::backend::Read,
    ) -> Result<Option<stockflow_core::Totals>, ApiError> {
        Ok(reads::location_totals_here(self, location))
    }

    async fn locations_totals(
        &self,
        _: &stockflow_http::backend::Read,
    ) -> Result<std::collections::BTreeMap<String, stockflow_core::Totals>, ApiError> {
        Ok(reads::locations_totals_here(self))
    }

    async fn dead_letters(
        &self,
        filter: &stockflow_http::asks::LetterFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<serde_json::Value>, Option<u64>), ApiError> {
        Ok(writes::list_here(self, filter, after, limit))
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<stockflow_http::asks::Letter>, ApiError> {
        Ok(writes::find_here(self, id))
    }

    async fn replay(
        &self,
        id: u64,
        letter: &stockflow_http::asks::Letter,
        parsed: Parsed,
        changes: Vec<stockflow_http::asks::CatalogItem>,
        by: &str,
    ) -> Result<Receipt, ApiError> {
        writes::replay_here(self, id, letter, parsed, changes, by).await
    }

    async fn discard(&self, id: u64, by: &str) -> Result<(), ApiError> {
        writes::discard_here(self, id, by).await
    }

    fn simulator(&self) -> &Arc<stockflow_http::simulator::Simulator> {
        &self.simulator
    }

    fn hub(&self) -> &Arc<stockflow_service::stream::Hub> {
        &self.pipeline.shared.hub
    }

    /// The embedded engine answers once it has started: recovery is over
    /// before the server listens.
    fn ready(&self) -> Result<(), ApiError> {
        Ok(())
    }

    fn observe(&self) {
        let shared = &self.pipeline.shared;
        metrics::gauge!("stockflow_levels").set(shared.levels() as f64);
        metrics::gauge!("stockflow_dedup_entries").set(
            shared
                .dedup_entries
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
    }

    async fn check(
        &self,
        strict: bool,
        _: &stockflow_http::backend::Read,
    ) -> Result<serde_json::Value, ApiError> {
        Ok(tokio::task::block_in_place(|| check::run(self, strict)))
    }

    fn cluster(&self) -> Result<serde_json::Value, ApiError> {
        Err(ApiError::not_found(
            "this server runs the embedded engine alone: there is no cluster (see `serve --kafka`)",
        ))
    }

    async fn order_command(
        &self,
        command: stockflow_core::orders::OrderCommand,
    ) -> Result<stockflow_core::orders::Answer, ApiError> {
        writes::command_here(self, command).await
    }

    async fn order(
        &self,
        order_id: &str,
    ) -> Result<Option<stockflow_core::orders::Order>, ApiError> {
        Ok(self
            .pipeline
            .shared
            .orders
            .read()
            .orders
            .get(order_id)
            .cloned())
    }

    async fn orders(
        &self,
        status: Option<stockflow_core::orders::Status>,
        after: Option<&str>,
        limit: usize,
        _: &stockflow_http::backend::Read,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        Ok(writes::orders_here(self, status, after, limit))
    }

    async fn quantities(
        &self,
        sku: &str,
        location: &str,
    ) -> Option<stockflow_http::asks::Quantities> {
        let shared = &self.pipeline.shared;
        let partition = stockflow_core::route(sku, location, shared.partition_count());
        let level = shared.partitions[partition as usize]
            .read()
            .get(sku, location)?
            .level;
        Some(stockflow_http::asks::Quantities {
            on_hand: level.on_hand,
            reserved: level.reserved,
            in_transit: level.in_transit,
        })
    }
}

/// The pipeline refused a submission: the HTTP answer says why and when
/// to come back.
impl From<crate::pipeline::Overloaded> for ApiError {
    fn from(refused: crate::pipeline::Overloaded) -> ApiError {
        use crate::pipeline::Overloaded;
        use axum::http::StatusCode;
        use stockflow_http::error::shed;
        match &refused {
            Overloaded::QueueFull => shed("queue_full"),
            Overloaded::DiskFull { .. } => shed("disk_full"),
            Overloaded::Stopping => {}
        }
        match refused {
            Overloaded::QueueFull => ApiError::queue_full(()),
            Overloaded::Stopping => ApiError::stopping(()),
            Overloaded::DiskFull { .. } => ApiError {
                retry_after: Some(30),
                ..ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "disk_full",
                    refused.to_string(),
                )
            },
        }
    }
}
