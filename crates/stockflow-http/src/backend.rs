//! The seam between the HTTP layer and the inventory that keeps the
//! state: the embedded engine (`embedded::Embedded`) or Kafka mode
//! (`kafka::http::KafkaApp`), the two implementations. A handler written
//! against [`Backend`] is written once and serves both modes; what a mode
//! cannot do, it refuses per request with an [`ApiError`].

use std::future::Future;

use stockflow_core::Parsed;

use super::asks::{Quantities, Wait};
use super::{Admission, ApiError};
use stockflow_service::config::Config;
use stockflow_service::receipt::{Receipt, RefusedBody};

/// Marks a request one instance sent another, so it is never sent on.
pub const FORWARDED: &str = "x-stockflow-forwarded";

/// How a read is asked: as of when, whether a restoring partition's
/// state will do, and (for a backend that forwards reads to the owner of
/// the data) where the request came from and what it said.
#[derive(Clone, Debug, Default)]
pub struct Read {
    /// A past time: the state as processing had left it then.
    pub as_of: Option<stockflow_core::Timestamp>,
    /// `?stale=true`: what a restoring partition has so far will do.
    pub stale: bool,
    /// Sent on by another instance: never sent on again.
    pub forwarded: bool,
    /// The request's path and query, to ask the owner the same.
    pub path_and_query: String,
    /// `scope=local`: only what this instance holds (what the members of
    /// a cluster ask each other when they gather an answer).
    pub local_only: bool,
}

impl Read {
    /// A read with `?scope=` and where it came from, but no time.
    pub fn scoped(headers: &axum::http::HeaderMap, scope: Option<&str>) -> Read {
        Read {
            forwarded: headers.contains_key(FORWARDED),
            local_only: scope == Some("local"),
            ..Read::default()
        }
    }
}

/// What the HTTP layer asks of the inventory, whichever mode keeps it.
pub trait Backend: Send + Sync + 'static {
    /// The server's settings.
    fn config(&self) -> &Config;

    /// Admission of ingest requests (how many, and how many bytes, are
    /// read or parsed at once).
    fn admission(&self) -> &Admission;

    /// Hands parsed events to their owners, and keeps the refused ones as
    /// dead letters from `source`; the receipt says what became of each.
    fn submit(
        &self,
        parsed: Parsed,
        source: &str,
        wait: Wait,
    ) -> impl Future<Output = Result<Receipt, ApiError>> + Send;

    /// Keeps a body refused whole (it could not be read as events at
    /// all) as a dead letter from `source`, with its bytes as received.
    fn keep_refused(
        &self,
        refused: RefusedBody,
        source: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// A level as the API shows it (`GET /v1/stock/{sku}/{locationId}`).
    fn level(
        &self,
        sku: &str,
        location: &str,
        read: &Read,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;

    /// A SKU's levels at every location, with their totals
    /// (`GET /v1/stock/{sku}`).
    fn sku_levels(
        &self,
        sku: &str,
        read: &Read,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;

    /// A page of a location's levels (`GET /v1/locations/{id}/stock`).
    fn location_levels(
        &self,
        location: &str,
        listing: &super::asks::Listing,
        read: &Read,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;

    /// Every level alert matching `filter` (of kind `kind`); the HTTP
    /// layer adds price drops and pages them.
    fn level_alerts(
        &self,
        filter: &super::asks::AlertFilter,
        kind: Option<stockflow_core::alerts::AlertKind>,
        read: &Read,
    ) -> impl Future<Output = Result<super::asks::Found, ApiError>> + Send;

    /// The product and location catalog, read-locked.
    fn catalog(&self) -> parking_lot::RwLockReadGuard<'_, stockflow_core::Catalog>;

    /// Events and commit latency per second over the last `seconds`, and
    /// the sources heard from (quiet for `stale`: stale).
    fn activity(
        &self,
        seconds: usize,
        stale: std::time::Duration,
        read: &Read,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;

    /// A page of a level's history, newest first
    /// (`GET /v1/stock/{sku}/{locationId}/history`).
    fn level_history(
        &self,
        sku: &str,
        location: &str,
        page: &super::asks::HistoryPage,
        read: &Read,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;

    /// Writes checked catalog items, keeps the refused ones as dead
    /// letters from `source`, and answers once this instance's reads show
    /// the write.
    fn write_catalog(
        &self,
        items: Vec<super::asks::CatalogItem>,
        rejected: Vec<stockflow_core::Rejected>,
        source: &str,
    ) -> impl Future<Output = Result<Receipt, ApiError>> + Send;

    /// A SKU's totals over every location, and by location group.
    fn item_totals(
        &self,
        sku: &str,
    ) -> impl Future<Output = Result<super::asks::Rollup, ApiError>> + Send;

    /// The roll-up of a location's stock; `None` if no level is there.
    fn location_totals(
        &self,
        location: &str,
        read: &Read,
    ) -> impl Future<Output = Result<Option<stockflow_core::Totals>, ApiError>> + Send;

    /// The roll-up of every location with stock, by location id.
    fn locations_totals(
        &self,
        read: &Read,
    ) -> impl Future<
        Output = Result<std::collections::BTreeMap<String, stockflow_core::Totals>, ApiError>,
    > + Send;

    /// A page of unresolved dead letters after `after` matching `filter`,
    /// oldest first, and the id the next page starts after.
    fn dead_letters(
        &self,
        filter: &super::asks::LetterFilter,
        after: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<serde_json::Value>, Option<u64>), ApiError>> + Send;

    /// The unresolved dead letter `id`; `None`: no such letter.
    fn dead_letter(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Option<super::asks::Letter>, ApiError>> + Send;

    /// Applies a letter's corrected (or stored) events or catalog changes
    /// (each already recording who sends it) and, if nothing is refused
    /// again, resolves the letter, recording `by` as who resolved it.
    fn replay(
        &self,
        id: u64,
        letter: &super::asks::Letter,
        parsed: Parsed,
        changes: Vec<super::asks::CatalogItem>,
        by: &str,
    ) -> impl Future<Output = Result<Receipt, ApiError>> + Send;

    /// Resolves a letter without applying it, recording `by` as who did.
    fn discard(&self, id: u64, by: &str) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// Takes an order command to the owner that decides it and answers
    /// what became of the order (or that it is still being decided).
    fn order_command(
        &self,
        command: stockflow_core::orders::OrderCommand,
    ) -> impl Future<Output = Result<stockflow_core::orders::Answer, ApiError>> + Send;

    /// An order as its owner holds it; `None`: no such order.
    fn order(
        &self,
        order_id: &str,
    ) -> impl Future<Output = Result<Option<stockflow_core::orders::Order>, ApiError>> + Send;

    /// Orders after `after` by orderId (of `status`), as the API shows
    /// them: at most `limit + 1`, so the caller can tell there are more.
    fn orders(
        &self,
        status: Option<stockflow_core::orders::Status>,
        after: Option<&str>,
        limit: usize,
        read: &Read,
    ) -> impl Future<Output = Result<Vec<serde_json::Value>, ApiError>> + Send;

    /// The in-process traffic simulator of the dashboard.
    fn simulator(&self) -> &std::sync::Arc<crate::simulator::Simulator>;

    /// The live stream's hub (SSE and WebSocket subscribers).
    fn hub(&self) -> &std::sync::Arc<stockflow_service::stream::Hub>;

    /// The alerts a webhook to `url` is sent (webhooks):
    /// by default, this server's live stream.
    fn webhook_feed(
        &self,
        url: &str,
    ) -> anyhow::Result<tokio::sync::mpsc::Receiver<stockflow_service::stream::Delivery>> {
        Ok(stockflow_service::stream::alert_feed(
            self.hub().clone(),
            url,
        ))
    }

    /// Whether this server can answer reads now (`/readyz`).
    fn ready(&self) -> Result<(), ApiError>;

    /// Sets the gauges `/metrics` shows that are read, not counted.
    fn observe(&self);

    /// The invariants of the books (`GET /v1/check`); with
    /// `read.local_only`, this instance's part for the asker to judge.
    fn check(
        &self,
        strict: bool,
        read: &Read,
    ) -> impl Future<Output = Result<serde_json::Value, ApiError>> + Send;

    /// The members of the cluster and who owns which partition.
    fn cluster(&self) -> Result<serde_json::Value, ApiError>;

    /// Endpoints only this mode has (what the members of a cluster ask
    /// each other); never a second copy of a public one.
    fn own_routes() -> axum::Router<std::sync::Arc<Self>>
    where
        Self: Sized,
    {
        axum::Router::new()
    }

    /// A level's quantities as its owner has them now; `None` if there is
    /// no such level (or its owner cannot be asked right now).
    fn quantities(
        &self,
        sku: &str,
        location: &str,
    ) -> impl Future<Output = Option<Quantities>> + Send;
}

/// The simulator sends into whichever backend serves.
impl<B: Backend> super::simulator::Sink for B {
    fn submit(
        &self,
        parsed: Parsed,
        wait: Wait,
    ) -> super::simulator::BoxFuture<'_, Result<Receipt, ApiError>> {
        Box::pin(Backend::submit(self, parsed, "simulator", wait))
    }

    fn quantities<'a>(
        &'a self,
        sku: &'a str,
        location: &'a str,
    ) -> super::simulator::BoxFuture<'a, Option<Quantities>> {
        Box::pin(Backend::quantities(self, sku, location))
    }
}
