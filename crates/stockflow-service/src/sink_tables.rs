//! The PostgreSQL sink's tables, written alike by both modes (the
//! embedded mode's history files and Kafka mode's history topic feed
//! them): the schema, who owns a database, and the one transaction a
//! batch is: rows, levels, orders, alerts and the positions the batch
//! read up to, or nothing.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use stockflow_core::{Outcome, Timestamp};
use tokio_postgres::Client;

use crate::history::{outcome_name, Entry};

/// The tables, created if missing. Documented in the README.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stock_levels (
    sku text NOT NULL,
    location_id text NOT NULL,
    on_hand bigint NOT NULL,
    reserved bigint NOT NULL,
    in_transit bigint NOT NULL,
    last_event_id text,
    updated_at timestamptz,
    PRIMARY KEY (sku, location_id)
);
CREATE TABLE IF NOT EXISTS level_history (
    partition smallint NOT NULL,
    history_offset bigint NOT NULL,
    event_id text NOT NULL,
    event_type text NOT NULL,
    sku text NOT NULL,
    location_id text NOT NULL,
    part text NOT NULL,
    quantity bigint NOT NULL,
    outcome text NOT NULL,
    event_time timestamptz NOT NULL,
    processed_at timestamptz NOT NULL,
    on_hand bigint NOT NULL,
    reserved bigint NOT NULL,
    in_transit bigint NOT NULL,
    sent_by text NOT NULL,
    PRIMARY KEY (partition, history_offset)
);
CREATE INDEX IF NOT EXISTS level_history_level ON level_history (sku, location_id);
CREATE TABLE IF NOT EXISTS orders (
    order_id text PRIMARY KEY,
    status text NOT NULL,
    mode text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    expires_at timestamptz,
    lines jsonb NOT NULL,
    transitions jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id text PRIMARY KEY,
    kind text NOT NULL,
    state text NOT NULL,
    severity text NOT NULL,
    sku text NOT NULL,
    location_id text,
    at timestamptz NOT NULL,
    on_hand bigint,
    available bigint,
    threshold bigint,
    event_id text,
    detail text NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_level ON alerts (sku, location_id);
CREATE TABLE IF NOT EXISTS stockflow_sink_positions (
    partition smallint PRIMARY KEY,
    history_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS stockflow_sink_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
";
/// The advisory lock held while the tables are created or migrated.
pub const SCHEMA_LOCK: i64 = 0x5354_4f43_4b46_4c57;

/// The connection settings of a `--sink-postgres` URL, with timeouts: a
/// database that stops answering (no reset, as in a network partition)
/// is noticed, not waited for.
pub fn settings(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    let mut settings: tokio_postgres::Config = url.parse().map_err(|e| {
        anyhow::anyhow!("--sink-postgres is not a PostgreSQL URL ({e}); expected postgres://user:password@host:5432/database")
    })?;
    if settings.get_connect_timeout().is_none() {
        settings.connect_timeout(Duration::from_secs(10));
    }
    settings
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .tcp_user_timeout(Duration::from_secs(60));
    Ok(settings)
}

/// The database as `/v1/sinks` shows it: never the user or password.
pub fn target_of(settings: &tokio_postgres::Config) -> String {
    let host = match settings.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = settings.get_ports().first().copied().unwrap_or(5432);
    let database = settings
        .get_dbname()
        .or(settings.get_user())
        .unwrap_or("postgres");
    format!("postgres://{host}:{port}/{database}")
}

/// Creates or migrates the tables (one session at a time: concurrent
/// `CREATE TABLE IF NOT EXISTS` can fail on PostgreSQL's catalog) and the
/// session's staging table for alerts.
pub async fn prepare(client: &Client) -> Result<(), String> {
    let schema = format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA}");
    if let Err(e) = client.batch_execute(&schema).await {
        return Err(format!("cannot create the tables: {}", said(&e)));
    }
    // Alerts come by binary COPY into the staging table, then once
    // into `alerts` (a resumed or copied-again alert is there already).
    let session =
        "CREATE TEMP TABLE IF NOT EXISTS stockflow_alerts_in (LIKE alerts) ON COMMIT DELETE ROWS";
    if let Err(e) = client.batch_execute(session).await {
        return Err(format!("cannot create the tables: {}", said(&e)));
    }
    Ok(())
}

/// Makes the database the sink of `id`, or says whose it is: positions
/// of another server's history would mean nothing here. `what` names
/// what the id is of, for the refusal.
pub async fn claim(client: &Client, id: &str, what: &str) -> Result<(), String> {
    let failed = |e: tokio_postgres::Error| format!("cannot read the sink's owner: {}", said(&e));
    client
        .execute(
            "INSERT INTO stockflow_sink_meta VALUES ('data_dir_id', $1) ON CONFLICT DO NOTHING",
            &[&id],
        )
        .await
        .map_err(failed)?;
    let row = client
        .query_one(
            "SELECT value FROM stockflow_sink_meta WHERE key = 'data_dir_id'",
            &[],
        )
        .await
        .map_err(failed)?;
    let owner: String = row.get(0);
    if owner != id {
        return Err(format!(
            "this database holds the sink of another {what} (id {owner}, this one is {id}); give each {what} a database of its own"
        ));
    }
    Ok(())
}

/// A `stockflow_sink_meta` value.
pub async fn meta(client: &Client, key: &str) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT value FROM stockflow_sink_meta WHERE key = $1",
            &[&key],
        )
        .await?
        .map(|row| row.get(0)))
}

/// The positions the database has (0 for a partition it has none of).
pub async fn load_positions(
    client: &Client,
    partitions: u16,
) -> Result<Vec<u64>, tokio_postgres::Error> {
    let mut positions = vec![0; partitions as usize];
    for row in client
        .query(
            "SELECT partition, history_offset FROM stockflow_sink_positions",
            &[],
        )
        .await?
    {
        let (p, offset): (i16, i64) = (row.get(0), row.get(1));
        if let Some(slot) = positions.get_mut(p as usize) {
            *slot = offset as u64;
        }
    }
    Ok(positions)
}

/// History rows for one transaction: `(partition, history_offset,
/// entry)`, in each partition's order, and where each partition of the
/// batch stands before (`from`) and after (`next`) it.
#[derive(Default)]
pub struct Rows {
    pub entries: Vec<(u16, u64, Entry)>,
    pub from: Vec<(u16, u64)>,
    pub next: Vec<(u16, u64)>,
}

/// Orders (their newest state) and alerts, as the API's JSON, for one
/// transaction; `meta` values it sets (where order and alert feeds go on
/// next), and `expect`: values it must find (`None`: absent), or the
/// transaction is not the next and is given up.
#[derive(Default)]
pub struct Messages {
    /// Use [`Messages::order`], which keeps each order's newest state.
    pub orders: Vec<String>,
    order_at: HashMap<String, usize>,
    pub alerts: Vec<String>,
    pub meta: Vec<(String, String)>,
    pub expect: Vec<(String, Option<String>)>,
}

impl Messages {
    /// An order's state; a newer one of the same order (messages come in
    /// order) replaces it.
    pub fn order(&mut self, json: String) {
        let id = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v["orderId"].as_str().map(str::to_owned))
            .unwrap_or_default();
        match self.order_at.get(&id) {
            Some(at) => self.orders[*at] = json,
            None => {
                self.order_at.insert(id, self.orders.len());
                self.orders.push(json);
            }
        }
    }

    /// Whether committing it would change nothing.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty() && self.alerts.is_empty() && self.meta.is_empty()
    }
}

/// A transaction that found a position other than the one it read from:
/// another session moved it (a lane restarted, a partition moved between
/// Kafka instances). Read the positions again.
#[derive(Debug, thiserror::Error)]
#[error("another writer moved the sink's position of partition {0}; reading the positions again")]
pub struct Moved(pub u16);

/// Upserts orders (their newest state) and inserts alerts (each
/// transition once), and sets the batch's meta values.
pub async fn write_messages(
    tx: &tokio_postgres::Transaction<'_>,
    messages: &Messages,
) -> Result<(), tokio_postgres::Error> {
    if !messages.orders.is_empty() {
        let json = format!("[{}]", messages.orders.join(","));
        tx.execute(
            "INSERT INTO orders
             SELECT o->>'orderId', o->>'status', o->>'mode', (o->>'createdAt')::timestamptz,
                    (o->>'updatedAt')::timestamptz, (o->>'expiresAt')::timestamptz,
                    o->'lines', o->'transitions'
             FROM jsonb_array_elements($1::text::jsonb) AS o
             ON CONFLICT (order_id) DO UPDATE SET status = EXCLUDED.status, mode = EXCLUDED.mode,
               created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
               expires_at = EXCLUDED.expires_at, lines = EXCLUDED.lines,
               transitions = EXCLUDED.transitions",
            &[&json],
        )
        .await?;
    }
    if !messages.alerts.is_empty() {
        copy_alerts(tx, &messages.alerts).await?;
    }
    if !messages.meta.is_empty() {
        let (keys, values): (Vec<&str>, Vec<&str>) = messages
            .meta
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .unzip();
        tx.execute(
            "INSERT INTO stockflow_sink_meta SELECT * FROM unnest($1::text[], $2::text[])
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&keys, &values],
        )
        .await?;
    }
    Ok(())
}

/// Alerts (the stream's JSON) into `alerts`, each once: by binary COPY
/// into the session's staging table (typed columns; the whole alert as
/// text in `detail`, which costs PostgreSQL no parsing), then inserted;
/// the staging rows go at commit.
async fn copy_alerts(
    tx: &tokio_postgres::Transaction<'_>,
    alerts: &[String],
) -> Result<(), tokio_postgres::Error> {
    use tokio_postgres::types::{ToSql, Type};
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Alert {
        id: String,
        kind: String,
        state: String,
        severity: String,
        sku: String,
        location_id: Option<String>,
        at: String,
        on_hand: Option<i64>,
        available: Option<i64>,
        threshold: Option<i64>,
        event_id: Option<String>,
    }
    let copy = tx
        .copy_in("COPY stockflow_alerts_in FROM STDIN BINARY")
        .await?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
    ];
    let writer = tokio_postgres::binary_copy::BinaryCopyInWriter::new(copy, &types);
    let mut writer = std::pin::pin!(writer);
    for text in alerts {
        // Written by this process from its own types: a parse failure
        // would be a bug, and the alert is still kept whole in `detail`.
        let parsed = serde_json::from_str::<Alert>(text).ok().and_then(|a| {
            let at = DateTime::parse_from_rfc3339(&a.at)
                .ok()?
                .with_timezone(&Utc);
            Some((a, at))
        });
        let Some((a, at)) = parsed else {
            tracing::error!(alert = %text, "an alert the sink cannot read; this is a bug");
            continue;
        };
        let row: [&(dyn ToSql + Sync); 12] = [
            &a.id,
            &a.kind,
            &a.state,
            &a.severity,
            &a.sku,
            &a.location_id,
            &at,
            &a.on_hand,
            &a.available,
            &a.threshold,
            &a.event_id,
            text,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    tx.execute(
        "INSERT INTO alerts SELECT * FROM stockflow_alerts_in ON CONFLICT (alert_id) DO NOTHING",
        &[],
    )
    .await?;
    Ok(())
}

/// What PostgreSQL said: tokio-postgres shows a server's refusal as "db
/// error", with the server's message only in its source.
pub fn said(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {}", db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

pub fn time(t: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(t.0)
}

/// One transaction: the positions are still `from` (no other writer
/// moved them), the rows, the levels' newest numbers, the new positions.
pub async fn commit(client: &mut Client, batch: &Rows, messages: &Messages) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    let partitions: Vec<i16> = batch.from.iter().map(|(p, _)| *p as i16).collect();
    // Lock the position rows; another writer having moved one means this
    // batch is not the next: give up and start again from what is there.
    tx.execute(
        "INSERT INTO stockflow_sink_positions SELECT p, 0, now() FROM unnest($1::int2[]) AS t(p) ON CONFLICT DO NOTHING",
        &[&partitions],
    )
    .await?;
    let rows = tx
        .query(
            "SELECT partition, history_offset FROM stockflow_sink_positions WHERE partition = ANY($1) ORDER BY partition FOR UPDATE",
            &[&partitions],
        )
        .await?;
    for row in rows {
        let (p, offset): (i16, i64) = (row.get(0), row.get(1));
        let from = batch.from.iter().find(|(q, _)| *q as i16 == p);
        if from.is_some_and(|(_, f)| *f as i64 != offset) {
            tx.rollback().await?;
            return Err(Moved(p as u16).into());
        }
    }
    for (key, expected) in &messages.expect {
        let found: Option<String> = tx
            .query_opt(
                "SELECT value FROM stockflow_sink_meta WHERE key = $1",
                &[key],
            )
            .await?
            .map(|row| row.get(0));
        if found != *expected {
            tx.rollback().await?;
            let p = key
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            return Err(Moved(p).into());
        }
    }
    let n = batch.entries.len();
    if n == 0 {
        write_messages(&tx, messages).await?;
        return finish(tx, &batch.next).await;
    }
    let mut partition = Vec::with_capacity(n);
    let mut offset = Vec::with_capacity(n);
    let mut event_id = Vec::with_capacity(n);
    let mut event_type = Vec::with_capacity(n);
    let mut sku = Vec::with_capacity(n);
    let mut location = Vec::with_capacity(n);
    let mut part = Vec::with_capacity(n);
    let mut quantity = Vec::with_capacity(n);
    let mut outcome = Vec::with_capacity(n);
    let mut event_time = Vec::with_capacity(n);
    let mut processed = Vec::with_capacity(n);
    let (mut on_hand, mut reserved, mut in_transit) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut by = Vec::with_capacity(n);
    // The newest entry of each level in the batch (entries of a level
    // are in one partition, in order).
    // ... and its newest that changed it as the API's `updatedAt` counts
    // (applied or absorbed).
    let mut newest: HashMap<(&str, &str), (usize, Option<usize>)> = HashMap::new();
    for (i, (p, at, e)) in batch.entries.iter().enumerate() {
        partition.push(*p as i16);
        offset.push(*at as i64);
        event_id.push(e.event_id.as_str());
        event_type.push(e.event_type.as_str());
        sku.push(e.sku.as_str());
        location.push(e.location.as_str());
        part.push(if e.in_transit { "in_transit" } else { "level" });
        quantity.push(e.quantity);
        outcome.push(outcome_name(e.outcome));
        event_time.push(time(e.event_time));
        processed.push(time(e.processed));
        on_hand.push(e.after.on_hand);
        reserved.push(e.after.reserved);
        in_transit.push(e.after.in_transit);
        by.push(e.by.as_str());
        let changed = matches!(e.outcome, Outcome::Applied | Outcome::Absorbed);
        let level = newest
            .entry((e.sku.as_str(), e.location.as_str()))
            .or_insert((i, None));
        level.0 = i;
        if changed {
            level.1 = Some(i);
        }
    }
    // The rows by binary COPY: the fastest way in, several times an
    // INSERT's rate.
    let copy = tx
        .copy_in(
            "COPY level_history (partition, history_offset, event_id, event_type, sku, location_id, part, quantity, outcome, event_time, processed_at, on_hand, reserved, in_transit, sent_by) FROM STDIN BINARY",
        )
        .await?;
    use tokio_postgres::types::Type;
    let types = [
        Type::INT2,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::TIMESTAMPTZ,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
    ];
    let writer = tokio_postgres::binary_copy::BinaryCopyInWriter::new(copy, &types);
    let mut writer = std::pin::pin!(writer);
    for i in 0..n {
        writer
            .as_mut()
            .write(&[
                &partition[i],
                &offset[i],
                &event_id[i],
                &event_type[i],
                &sku[i],
                &location[i],
                &part[i],
                &quantity[i],
                &outcome[i],
                &event_time[i],
                &processed[i],
                &on_hand[i],
                &reserved[i],
                &in_transit[i],
                &by[i],
            ])
            .await?;
    }
    writer.finish().await?;
    let mut newest: Vec<(usize, Option<usize>)> = newest.into_values().collect();
    newest.sort_unstable();
    let levels: Vec<usize> = newest.iter().map(|(i, _)| *i).collect();
    let changed_id: Vec<Option<&str>> =
        newest.iter().map(|(_, c)| c.map(|c| event_id[c])).collect();
    let changed_at: Vec<Option<DateTime<Utc>>> = newest
        .iter()
        .map(|(_, c)| c.map(|c| processed[c]))
        .collect();
    let pick = |values: &[i64]| levels.iter().map(|i| values[*i]).collect::<Vec<i64>>();
    fn pick_text<'a>(levels: &[usize], values: &[&'a str]) -> Vec<&'a str> {
        levels.iter().map(|i| values[*i]).collect()
    }
    tx.execute(
        "INSERT INTO stock_levels SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::text[], $7::timestamptz[])
         ON CONFLICT (sku, location_id) DO UPDATE SET on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved,
           in_transit = EXCLUDED.in_transit,
           last_event_id = COALESCE(EXCLUDED.last_event_id, stock_levels.last_event_id),
           updated_at = COALESCE(EXCLUDED.updated_at, stock_levels.updated_at)",
        &[&pick_text(&levels, &sku), &pick_text(&levels, &location), &pick(&on_hand), &pick(&reserved), &pick(&in_transit), &changed_id, &changed_at],
    )
    .await?;
    write_messages(&tx, messages).await?;
    finish(tx, &batch.next).await
}

/// Moves the positions and commits.
async fn finish(tx: tokio_postgres::Transaction<'_>, next: &[(u16, u64)]) -> anyhow::Result<()> {
    let (partitions, next): (Vec<i16>, Vec<i64>) =
        next.iter().map(|(p, n)| (*p as i16, *n as i64)).unzip();
    tx.execute(
        "UPDATE stockflow_sink_positions AS s SET history_offset = t.o, updated_at = now()
         FROM unnest($1::int2[], $2::int8[]) AS t(p, o) WHERE s.partition = t.p",
        &[&partitions, &next],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
