//! The embedded mode: one process keeps the inventory with its own
//! pipeline (log, partitions, checkpoints) and answers the HTTP API
//! through the [`Backend`] seam. Nothing here speaks HTTP; nothing in
//! `http` reaches past the seam into the engine.

mod check;
mod reads;
mod writes;

use std::sync::Arc;

use stockflow_core::Parsed;

use crate::config::Config;
use crate::http::asks::Wait;
use crate::http::backend::Backend;
use crate::http::{Admission, ApiError};
use crate::pipeline::Pipeline;
use crate::receipt::{Receipt, RefusedBody};

/// The embedded engine, as the HTTP layer reaches it.
pub struct Embedded {
    pub pipeline: Arc<Pipeline>,
    pub config: Config,
    /// Ingest requests being read or parsed, and their bytes.
    pub admission: Admission,
    /// The in-process simulator (refuses unless switched on).
    pub simulator: Arc<crate::http::simulator::Simulator>,
}

/// The embedded engine behind the seam: submissions go to the pipeline,
/// which answers once they are durable and applied.
impl Backend for Embedded {
    fn config(&self) -> &crate::config::Config {
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
        read: &crate::http::backend::Read,
    ) -> Result<serde_json::Value, ApiError> {
        reads::level_here(self, sku, location, read)
    }

    async fn sku_levels(
        &self,
        sku: &str,
        read: &crate::http::backend::Read,
    ) -> Result<serde_json::Value, ApiError> {
        reads::sku_here(self, sku, read)
    }

    async fn location_levels(
        &self,
        location: &str,
        listing: &crate::http::asks::Listing,
        _: &crate::http::backend::Read,
    ) -> Result<serde_json::Value, ApiError> {
        reads::location_here(self, location, listing)
    }

    async fn level_alerts(
        &self,
        filter: &crate::http::asks::AlertFilter,
        kind: Option<stockflow_core::alerts::AlertKind>,
        _: &crate::http::backend::Read,
    ) -> Result<crate::http::asks::Found, ApiError> {
        Ok(reads::level_alerts_here(self, filter, kind))
    }

    fn catalog(&self) -> parking_lot::RwLockReadGuard<'_, stockflow_core::Catalog> {
        self.pipeline.shared.catalog.read()
    }

    async fn activity(
        &self,
        seconds: usize,
        stale: std::time::Duration,
        _: &crate::http::backend::Read,
    ) -> Result<serde_json::Value, ApiError> {
        Ok(reads::activity_here(self, seconds, stale))
    }

    async fn level_history(
        &self,
        sku: &str,
        location: &str,
        page: &crate::http::asks::HistoryPage,
        _: &crate::http::backend::Read,
    ) -> Result<serde_json::Value, ApiError> {
        reads::history_here(self, sku, location, page)
    }

    async fn write_catalog(
        &self,
        items: Vec<crate::http::asks::CatalogItem>,
        rejected: Vec<stockflow_core::Rejected>,
        source: &str,
    ) -> Result<Receipt, ApiError> {
        writes::write_here(self, items, rejected, source).await
    }

    async fn item_totals(&self, sku: &str) -> Result<crate::http::asks::Rollup, ApiError> {
        Ok(reads::item_totals_here(self, sku))
    }

    async fn location_totals(
        &self,
        location: &str,
        _: &crate::http::backend::Read,
    ) -> Result<Option<stockflow_core::Totals>, ApiError> {
        Ok(reads::location_totals_here(self, location))
    }

    async fn locations_totals(
        &self,
        _: &crate::http::backend::Read,
    ) -> Result<std::collections::BTreeMap<String, stockflow_core::Totals>, ApiError> {
        Ok(reads::locations_totals_here(self))
    }

    async fn dead_letters(
        &self,
        filter: &crate::http::asks::LetterFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<serde_json::Value>, Option<u64>), ApiError> {
        Ok(writes::list_here(self, filter, after, limit))
    }

    async fn dead_letter(&self, id: u64) -> Result<Option<crate::http::asks::Letter>, ApiError> {
        Ok(writes::find_here(self, id))
    }

    async fn replay(
        &self,
        id: u64,
        letter: &crate::http::asks::Letter,
        parsed: Parsed,
        changes: Vec<crate::http::asks::CatalogItem>,
    ) -> Result<Receipt, ApiError> {
        writes::replay_here(self, id, letter, parsed, changes).await
    }

    async fn discard(&self, id: u64) -> Result<(), ApiError> {
        writes::discard_here(self, id).await
    }

    fn simulator(&self) -> &Arc<crate::http::simulator::Simulator> {
        &self.simulator
    }

    fn hub(&self) -> &Arc<crate::stream::Hub> {
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
        _: &crate::http::backend::Read,
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
        _: &crate::http::backend::Read,
    ) -> Result<Vec<serde_json::Value>, ApiError> {
        Ok(writes::orders_here(self, status, after, limit))
    }

    async fn quantities(&self, sku: &str, location: &str) -> Option<crate::http::asks::Quantities> {
        let shared = &self.pipeline.shared;
        let partition = stockflow_core::route(sku, location, shared.partition_count());
        let level = shared.partitions[partition as usize]
            .read()
            .get(sku, location)?
            .level;
        Some(crate::http::asks::Quantities {
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
        use crate::http::error::shed;
        use crate::pipeline::Overloaded;
        use axum::http::StatusCode;
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
