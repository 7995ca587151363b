//! The shapes of answers the handlers render as JSON values, as types the
//! document is generated from. Each is checked against real answers by
//! the contract test (Schemathesis validates every response it gets
//! against its schema, in both modes); a shape that a handler renders from
//! a typed value (a level, an order, a receipt, an error) is that type
//! instead, not one of these.
#![allow(dead_code)]

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkuStock {
    sku: Option<String>,
    totals: Option<LevelNumbers>,
    locations: Option<Vec<LevelAnswer>>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
/// A level's numbers (or their sums).
pub struct LevelNumbers {
    on_hand: Option<i64>,
    reserved: Option<i64>,
    available: Option<i64>,
    in_transit: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationStockPage {
    location_id: Option<String>,
    levels: Option<Vec<ListedLevel>>,
    next_after: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterPage {
    dead_letters: Option<Vec<DeadLetter>>,
    next_after: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    id: Option<i64>,
    #[schema(format = DateTime)]
    received_at: Option<String>,
    source: Option<String>,
    index: Option<i64>,
    event_id: Option<String>,
    reason: Option<String>,
    /// The raw event (or body) as received, when it is UTF-8; otherwise a preview of its first 4 KiB with U+FFFD for each invalid byte (the bytes themselves are in payloadBase64).
    payload: Option<String>,
    /// Only when the payload is not UTF-8: its bytes exactly, base64.
    payload_base64: Option<String>,
    /// Only when the payload is not UTF-8: its length in bytes.
    payload_bytes: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceFormats {
    formats: Option<Vec<SourceFormat>>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceFormat {
    format: Option<String>,
    description: Option<String>,
    input: Option<String>,
    endpoint: Option<String>,
    mapping: Option<std::collections::HashMap<String, serde_json::Value>>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductPage {
    products: Option<Vec<Product>>,
    next_after: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    sku: String,
    name: String,
    category: Option<String>,
    /// At most 2 decimals.
    price: Option<f64>,
    currency: Option<String>,
    /// Default 10.
    low_stock_threshold: Option<i64>,
    /// Held back from available where set.
    safety_stock: Option<i64>,
    /// Free-form; unknown top-level fields land here.
    attributes: Option<std::collections::HashMap<String, serde_json::Value>>,
    #[schema(format = DateTime)]
    updated_at: Option<String>,
    /// The token name that last wrote it (`anonymous` without one).
    updated_by: Option<String>,
    price_history: Option<Vec<PricePoint>>,
    stock: Option<Totals>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PricePoint {
    #[schema(format = DateTime)]
    at: Option<String>,
    price: Option<f64>,
}

/// Sums over a set of levels; available honours safety stock; atZero/belowThreshold count levels.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    on_hand: Option<i64>,
    reserved: Option<i64>,
    available: Option<i64>,
    in_transit: Option<i64>,
    levels: Option<i64>,
    at_zero: Option<i64>,
    below_threshold: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationPage {
    locations: Option<Vec<Location>>,
    next_after: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    location_id: String,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    region: Option<String>,
    channel: Option<String>,
    city: Option<String>,
    totals: Option<Totals>,
    /// Overrides the products' low-stock threshold for stock held here.
    low_stock_threshold: Option<i64>,
    /// The token name that last wrote it; null for a location only seen
    /// in events.
    updated_by: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemRollup {
    sku: Option<String>,
    product: Option<Product>,
    totals: Option<Totals>,
    by_region: Option<std::collections::HashMap<String, Totals>>,
    by_type: Option<std::collections::HashMap<String, Totals>>,
    by_channel: Option<std::collections::HashMap<String, Totals>>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionRollup {
    region: Option<String>,
    sku: Option<String>,
    totals: Option<Totals>,
    region_locations: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayOutcome {
    dead_letter_id: Option<i64>,
    resolved: Option<bool>,
    receipt: Option<stockflow_service::receipt::Receipt>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LevelHistory {
    sku: Option<String>,
    location_id: Option<String>,
    events: Option<Vec<HistoryEntry>>,
    next_before: Option<String>,
    older_compacted: Option<bool>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    event_id: Option<String>,
    event_type: Option<String>,
    quantity: Option<i64>,
    #[schema(format = DateTime)]
    timestamp: Option<String>,
    #[schema(format = DateTime)]
    processed_at: Option<String>,
    outcome: Option<String>,
    part: Option<String>,
    level: Option<LevelNumbers>,
    /// Who sent the event: the token's name, `anonymous` (no token: an
    /// unauthenticated server, a record produced to a topic without a
    /// `by` header, an import into a data directory) or `stockflow` (the
    /// server itself, e.g. releasing an expired hold).
    by: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPage {
    orders: Option<Vec<stockflow_service::json::OrderOut<'static>>>,
    next_after: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    ok: Option<bool>,
    levels: Option<i64>,
    live_orders: Option<i64>,
    hold_violations: Option<i64>,
    reservations_not_held_by_orders: Option<i64>,
    rollup_mismatches: Option<i64>,
    problems: Option<Vec<String>>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertPage {
    alerts: Option<Vec<Alert>>,
    next_after: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    id: Option<String>,
    kind: Option<String>,
    state: Option<String>,
    severity: Option<String>,
    sku: Option<String>,
    /// null for a PRICE_DROP, which is the product's everywhere.
    location_id: Option<String>,
    #[schema(format = DateTime)]
    at: Option<String>,
    on_hand: Option<i64>,
    available: Option<i64>,
    threshold: Option<i64>,
    event_id: Option<String>,
    /// Who acknowledged this alert, when, with what note; absent if no one.
    acknowledged: Option<Acknowledged>,
    /// The mute in force that covers it; absent if none.
    muted: Option<MutedBy>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Acknowledged {
    by: Option<String>,
    #[schema(format = DateTime)]
    at: Option<String>,
    note: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MutedBy {
    id: Option<String>,
    by: Option<String>,
    #[schema(format = DateTime)]
    until: Option<String>,
    reason: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcknowledgeRequest {
    #[schema(min_length = 1, max_length = 512)]
    note: Option<String>,
}

/// What to mute: the alerts of this kind, SKU and location (each left
/// out: any; all left out: every alert).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MuteRequest {
    #[schema(
        pattern = "^(LOW_STOCK|OUT_OF_STOCK|BACK_IN_STOCK|NEGATIVE_ON_HAND|STALE|RESERVATION_REJECTED|PRICE_DROP)$"
    )]
    kind: Option<String>,
    #[schema(value_type = Option<crate::openapi::Id>)]
    sku: Option<String>,
    #[schema(value_type = Option<crate::openapi::Id>)]
    location_id: Option<String>,
    /// How long, from 1 to 43,200 (30 days).
    #[schema(minimum = 1, maximum = 43200)]
    minutes: i64,
    #[schema(min_length = 1, max_length = 512)]
    reason: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MuteOut {
    id: Option<String>,
    kind: Option<String>,
    sku: Option<String>,
    location_id: Option<String>,
    minutes: Option<i64>,
    reason: Option<String>,
    /// The token name that muted.
    by: Option<String>,
    #[schema(format = DateTime)]
    at: Option<String>,
    #[schema(format = DateTime)]
    until: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MuteList {
    mutes: Option<Vec<MuteOut>>,
}

/// One server-sent event: `event` is stock, alerts, orders, gap or resync; `data` its JSON.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamMessage {
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    seconds: Option<Vec<ActivitySecond>>,
    sources: Option<Vec<SourceFreshness>>,
    /// Events from (source, location) pairs beyond the 10,000 tracked.
    sources_untracked: Option<i64>,
    stale_after_seconds: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivitySecond {
    #[schema(format = DateTime)]
    at: Option<String>,
    accepted: Option<i64>,
    duplicates: Option<i64>,
    rejected: Option<i64>,
    commits: Option<i64>,
    commit_p50_ms: Option<f64>,
    commit_p99_ms: Option<f64>,
    commit_max_ms: Option<f64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceFreshness {
    /// The events' sourceSystem, or the channel they came through when they name none.
    source_system: Option<String>,
    location_id: Option<String>,
    #[schema(format = DateTime)]
    last_received_at: Option<String>,
    /// The newest event timestamp the source gave.
    #[schema(format = DateTime)]
    last_event_at: Option<String>,
    events: Option<i64>,
    seconds_since_last: Option<i64>,
    stale: Option<bool>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SendOutcome {
    sent: Option<i64>,
    accepted: Option<i64>,
    duplicates: Option<i64>,
    rejected: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioOutcome {
    receipt: Option<stockflow_service::receipt::Receipt>,
    passed: Option<bool>,
    levels: Option<Vec<ScenarioLevel>>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioLevel {
    sku: Option<String>,
    location_id: Option<String>,
    expected: Option<std::collections::HashMap<String, serde_json::Value>>,
    actual: Option<std::collections::HashMap<String, serde_json::Value>>,
    ok: Option<bool>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    group: String,
    instance_id: String,
    members: Vec<ClusterMember>,
    partitions: Vec<ClusterPartition>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMember {
    instance_id: Option<String>,
    url: Option<String>,
    /// ms since the epoch
    announced_at: Option<i64>,
    partitions: Option<Vec<MemberPartition>>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberPartition {
    partition: Option<i64>,
    status: Option<String>,
    applied: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPartition {
    partition: Option<i64>,
    owner: Option<String>,
    status: Option<String>,
    /// next canonical offset the owner will apply
    applied: Option<i64>,
    high_watermark: Option<i64>,
    lag: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Simulator {
    /// false unless the server runs with --simulator (or is `stockflow demo`).
    enabled: Option<bool>,
    running: Option<bool>,
    /// Events per second while running.
    rate: Option<i64>,
    sent: Option<i64>,
    accepted: Option<i64>,
    duplicates: Option<i64>,
    rejected: Option<i64>,
    /// The last messages sent, newest first.
    recent: Option<Vec<SimulatorMessage>>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimulatorMessage {
    /// The canonical event as sent.
    event: Option<std::collections::HashMap<String, serde_json::Value>>,
    /// `applied or duplicate`, or the reason it was refused.
    outcome: Option<String>,
}

/// A level as a read answers it: now, or (with `asOf`) as processing had
/// left it then.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum LevelAnswer {
    Now(crate::query::LevelOut<'static>),
    AsOf(LevelAsOf),
}

/// A level as processing had left it at `asOf` (`history::as_of_json`).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LevelAsOf {
    sku: String,
    location_id: String,
    on_hand: i64,
    reserved: i64,
    available: i64,
    in_transit: i64,
    #[schema(format = DateTime)]
    as_of: String,
    /// The last event applied before asOf; null when the events before
    /// asOf are past the history retention (see explanation).
    last_event_id: Option<String>,
    last_event_type: Option<String>,
    #[schema(format = DateTime)]
    last_processed_at: Option<String>,
    explanation: Option<String>,
}

/// A level as a location's listing shows it: with its low-stock
/// threshold (`query::listed_level_json`).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListedLevel {
    #[serde(flatten)]
    level: crate::query::LevelOut<'static>,
    low_stock_threshold: i64,
}

/// A canonical event, as POST /v1/events takes it (parsed by
/// `stockflow_core::parse`, which names the field at fault when it
/// refuses one).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Globally unique; an eventId already applied has no effect again.
    #[schema(value_type = crate::openapi::Id)]
    event_id: String,
    #[schema(value_type = stockflow_service::json::EventTypeName)]
    event_type: String,
    #[schema(value_type = crate::openapi::Id)]
    sku: String,
    #[schema(value_type = crate::openapi::Id)]
    location_id: String,
    /// Above 0, except ADJUSTMENT (signed, not 0) and COUNT (0 or more,
    /// absolute); at most 1e9 either way.
    quantity: i64,
    /// When it happened at the source; server time if absent.
    #[schema(format = DateTime)]
    timestamp: Option<String>,
    /// TRANSFER_OUT only: puts the quantity in transit there.
    #[schema(value_type = Option<crate::openapi::Id>)]
    to_location_id: Option<String>,
    #[schema(max_length = 128)]
    source_system: Option<String>,
    /// On RESERVATION, RELEASE and FULFILLMENT: the order whose hold at
    /// this level the event moves (see POST /v1/events). Carried along on
    /// other types.
    #[schema(value_type = Option<crate::openapi::Id>)]
    correlation_id: Option<String>,
    /// RESERVATION with a correlationId only: how long the order holds
    /// what it reserves (the server's --order-hold-seconds when absent).
    /// Refused on any other event.
    #[schema(minimum = 1, maximum = 604800)]
    hold_seconds: Option<i64>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Links {
    links: Vec<Link>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    /// `amqp`.
    kind: String,
    /// The queue.
    name: String,
    /// The source format its messages are read in.
    format: String,
    /// `amqp://host:port/vhost`, never with the credentials.
    peer: String,
    #[schema(pattern = "^(connecting|connected|disconnected)$")]
    state: String,
    #[schema(format = DateTime)]
    since: String,
    last_error: Option<String>,
    messages: u64,
    refused: u64,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Sinks {
    sinks: Vec<Sink>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sink {
    #[schema(pattern = "^(postgres|lake)$")]
    kind: String,
    /// `postgres://host:port/database`, never with the credentials; the
    /// lake's directory.
    target: String,
    #[schema(pattern = "^(connecting|connected|disconnected)$")]
    state: String,
    #[schema(format = DateTime)]
    since: String,
    last_error: Option<String>,
    /// History bytes written and not yet committed to the sink.
    behind_bytes: u64,
    /// Kafka mode: history-topic records of the partitions this instance
    /// owns not yet committed to the sink; absent in embedded mode.
    behind_records: Option<u64>,
    rows: u64,
    #[schema(format = DateTime)]
    last_commit_at: Option<String>,
    skipped_bytes: u64,
}
