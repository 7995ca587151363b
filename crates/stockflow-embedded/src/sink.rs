//! The PostgreSQL sink (`serve --sink-postgres URL`): every level change
//! the engine records in its history files, as rows of `level_history`,
//! and each level's newest numbers in `stock_levels`; each order's newest
//! state in `orders` and every alert transition in `alerts`.
//!
//! It reads the history files in the order they were written, from its
//! own position (per partition), never from memory: a sink that is
//! behind holds no more than one batch. Each batch is one transaction
//! that inserts the rows, upserts the levels and moves the position rows
//! (`stockflow_sink_positions`), so after a crash of either side the
//! tables go on from exactly where the last commit left them: nothing
//! missing, nothing twice. History files are rewritten identically by a
//! restart's replay, so a position stays valid across crashes.
//!
//! Orders come from the stream hub (a subscriber of its own,
//! in-process): the same transaction upserts them and stores the id of
//! the last message it holds, from which the next session resumes (the
//! hub's ids survive restarts). When the hub no longer has what follows
//! that id, the sink copies every order again (upserts: harmless twice)
//! and goes on live. Alerts, far more numerous in a bulk load (a level
//! can go low and back with every event), are read from each partition's
//! kept alerts by their sequence number, stored with the rows: a sink
//! that fell more than the kept 2,000 behind skips, and counts, the rest.
//!
//! The partitions are shared out among `--sink-postgres-connections`
//! lanes, each with its own connection, transactions and position rows:
//! PostgreSQL gives each connection one process, so one connection could
//! use one core at most. A level belongs to one partition, so lanes never
//! touch the same rows. The first lane also writes the orders.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use stockflow_core::{Outcome, Timestamp};
use stockflow_service::history::{self, outcome_name, Entry};
use stockflow_service::sinks::{Sinks, State};
use stockflow_service::stream::{Filter, Kind, Message, Resume, Subscription};
use tokio_postgres::{Client, NoTls};

use crate::pipeline::Shared;

const KIND: &str = "postgres";
/// History read for one transaction at most, over all partitions.
const BATCH_BYTES_MAX: usize = 16 << 20;
/// How long an idle sink waits before it looks for new history.
const IDLE: Duration = Duration::from_millis(100);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The tables, created if missing. Documented in the README.
const SCHEMA: &str = "
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
const SCHEMA_LOCK: i64 = 0x5354_4f43_4b46_4c57;
/// Longest a batch's transaction may take before the connection counts
/// as lost (a network that drops packets sends no reset).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Order and alert messages committed in one transaction at most.
const MESSAGES_MAX: usize = 20_000;
/// Orders or alerts per transaction when copying them all again.
const RESYNC_CHUNK: usize = 2_000;
/// The `stockflow_sink_meta` key of the last stream message committed.
const STREAM_POSITION: &str = "stream_position";

/// Checks the URL and starts the sink, if the config has one.
pub fn start(
    config: &stockflow_service::config::Config,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let partitions = shared.partition_count();
    let Some(url) = &config.sink_postgres else {
        return Ok(());
    };
    let mut settings: tokio_postgres::Config = url.0.parse().map_err(|e| {
        anyhow::anyhow!("--sink-postgres is not a PostgreSQL URL ({e}); expected postgres://user:password@host:5432/database")
    })?;
    // A database that stops answering (no reset, as in a partition) is
    // noticed, not waited for.
    if settings.get_connect_timeout().is_none() {
        settings.connect_timeout(Duration::from_secs(10));
    }
    settings
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .tcp_user_timeout(Duration::from_secs(60));
    let data_dir_id = crate::recovery::data_dir_id(&config.data_dir)?;
    let target = target_of(&settings);
    config.sinks.add(KIND, &target);
    let lanes = config
        .sink_postgres_connections
        .clamp(1, partitions.max(1) as usize);
    tracing::info!(%target, connections = lanes, "sinking history to PostgreSQL");
    let sink = Arc::new(Sink {
        settings,
        data_dir: config.data_dir.clone(),
        partitions,
        data_dir_id,
        sinks: config.sinks.clone(),
        positions: parking_lot::Mutex::new(vec![0; partitions as usize]),
        lanes: parking_lot::Mutex::new(vec![(State::Connecting, None); lanes]),
        shared,
    });
    for index in 0..lanes {
        let lane = Lane {
            index,
            partitions: (0..partitions)
                .filter(|p| *p as usize % lanes == index)
                .collect(),
        };
        tokio::spawn(Arc::clone(&sink).run(lane));
    }
    Ok(())
}

/// One connection's share of the partitions; the first lane also writes
/// the orders.
struct Lane {
    index: usize,
    partitions: Vec<u16>,
}

impl Lane {
    fn writes_orders(&self) -> bool {
        self.index == 0
    }
}

/// The database as `/v1/sinks` shows it: never the user or password.
fn target_of(settings: &tokio_postgres::Config) -> String {
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

struct Sink {
    settings: tokio_postgres::Config,
    data_dir: PathBuf,
    partitions: u16,
    /// Whose data the database holds (see `recovery::data_dir_id`).
    data_dir_id: String,
    sinks: Sinks,
    /// The positions of the last commit seen (0 before the database was
    /// first reached), for how far behind the sink is.
    positions: parking_lot::Mutex<Vec<u64>>,
    /// Each lane's connection state and last error; `/v1/sinks` shows
    /// the worst.
    lanes: parking_lot::Mutex<Vec<(State, Option<String>)>>,
    /// The hub orders and alerts come from, and what a resync copies.
    shared: Arc<Shared>,
}

impl Sink {
    /// Sinks until the process ends, reconnecting with backoff.
    async fn run(self: Arc<Self>, lane: Lane) {
        let mut backoff = BACKOFF_MIN;
        loop {
            self.set_state(&lane, State::Connecting, None);
            let (was_connected, error) = self.session(&lane).await;
            tracing::warn!(%error, lane = lane.index, "PostgreSQL sink down; reconnecting");
            self.set_state(&lane, State::Disconnected, Some(error));
            if was_connected {
                backoff = BACKOFF_MIN;
            }
            // Lag keeps counting while the database is away.
            let until = tokio::time::Instant::now() + backoff;
            loop {
                self.show_behind().await;
                let now = tokio::time::Instant::now();
                if now >= until {
                    break;
                }
                tokio::time::sleep((until - now).min(Duration::from_secs(1))).await;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Shows the worst state of any lane: down if one is down.
    fn set_state(&self, lane: &Lane, state: State, error: Option<String>) {
        let mut lanes = self.lanes.lock();
        lanes[lane.index] = (state, error);
        let worst = [State::Disconnected, State::Connecting]
            .into_iter()
            .find_map(|s| lanes.iter().find(|(l, _)| *l == s))
            .unwrap_or(&lanes[lane.index]);
        self.sinks.set(KIND, worst.0, worst.1.clone());
    }

    /// One connection's life: (whether it got as far as sinking, why it
    /// ended).
    async fn session(&self, lane: &Lane) -> (bool, String) {
        let (mut client, connection) = match self.settings.connect(NoTls).await {
            Ok(pair) => pair,
            Err(e) => return (false, format!("cannot connect: {}", said(&e))),
        };
        let driver = tokio::spawn(connection);
        let result = self.sink(lane, &mut client).await;
        driver.abort();
        result
    }

    async fn sink(&self, lane: &Lane, client: &mut Client) -> (bool, String) {
        // One lane at a time creates or migrates the tables: concurrent
        // `CREATE TABLE IF NOT EXISTS` can fail on PostgreSQL's catalog.
        let schema = format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA}");
        if let Err(e) = client.batch_execute(&schema).await {
            return (false, format!("cannot create the tables: {}", said(&e)));
        }
        // Alerts come by binary COPY into the staging table, then once
        // into `alerts` (a resumed or copied-again alert is there already).
        let session = "CREATE TEMP TABLE IF NOT EXISTS stockflow_alerts_in (LIKE alerts) ON COMMIT DELETE ROWS";
        if let Err(e) = client.batch_execute(session).await {
            return (false, format!("cannot create the tables: {}", said(&e)));
        }
        if let Err(e) = self.claim(client).await {
            return (false, e);
        }
        let mut positions = match load_positions(client, self.partitions).await {
            Ok(positions) => positions,
            Err(e) => return (false, format!("cannot read the positions: {}", said(&e))),
        };
        if let Err(e) = self.positions_within_files(lane, &positions).await {
            return (false, e);
        }
        self.show_positions(lane, &positions);
        self.show_behind().await;
        let mut alerts_next = match load_alert_positions(client, self.partitions).await {
            Ok(next) => next,
            Err(e) => return (false, format!("cannot read the positions: {}", said(&e))),
        };
        let mut stream = None;
        if lane.writes_orders() {
            match self.follow(client).await {
                Ok(following) => stream = Some(following),
                Err(e) => return (false, e),
            }
        }
        self.set_state(lane, State::Connected, None);
        tracing::info!(lane = lane.index, "PostgreSQL sink connected");
        // The next batch is read while the last one commits.
        let mut ahead = None;
        loop {
            let read = match ahead.take() {
                Some(read) => read,
                None => self.read(lane, &positions),
            };
            let batch = match read.await.expect("the reader does not panic") {
                Ok(batch) => batch,
                Err(e) => return (true, format!("cannot read the history files: {e}")),
            };
            let (mut messages, ended) = match &mut stream {
                Some(stream) => stream.drain(self.shared.hub.epoch),
                None => (Messages::default(), false),
            };
            let (alerts, moved, gone) =
                read_alerts(&self.shared, &lane.partitions, &alerts_next, MESSAGES_MAX);
            messages.alerts = alerts;
            messages.alerts_next = moved;
            if batch.next == positions && messages.is_empty() {
                if ended {
                    // It fell behind: on from the last message committed.
                    match self.follow(client).await {
                        Ok(again) => stream = Some(again),
                        Err(e) => return (true, e),
                    }
                    continue;
                }
                self.show_behind().await;
                tokio::time::sleep(IDLE).await;
                continue;
            }
            if batch.next != positions {
                ahead = Some(self.read(lane, &batch.next));
            }
            let started = std::time::Instant::now();
            let commit = commit(client, &lane.partitions, &positions, &batch, &messages);
            match tokio::time::timeout(COMMIT_TIMEOUT, commit).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let why = match e.downcast_ref::<tokio_postgres::Error>() {
                        Some(e) => said(e),
                        None => format!("{e:#}"),
                    };
                    return (true, format!("cannot commit a batch: {why}"));
                }
                Err(_) => {
                    return (
                        true,
                        format!("a batch took over {} s to commit", COMMIT_TIMEOUT.as_secs()),
                    )
                }
            }
            if batch.skipped > 0 {
                tracing::warn!(
                    bytes = batch.skipped,
                    "history was deleted by the retention before the sink had it"
                );
                self.sinks.skipped(KIND, batch.skipped);
            }
            let rows = batch.entries.len() + messages.orders.len() + messages.alerts.len();
            tracing::debug!(
                lane = lane.index,
                rows,
                ms = started.elapsed().as_millis() as u64,
                "sink batch committed"
            );
            self.sinks.committed(KIND, rows as u64);
            for (p, next) in &messages.alerts_next {
                alerts_next[*p as usize] = Some(*next);
            }
            if gone > 0 {
                tracing::warn!(
                    alerts = gone,
                    "alerts were gone (each partition keeps its newest 2,000) before the sink had them"
                );
                metrics::counter!("stockflow_sink_alerts_skipped_total").increment(gone);
            }
            if ended {
                match self.follow(client).await {
                    Ok(again) => stream = Some(again),
                    Err(e) => return (true, e),
                }
            }
            positions = batch.next;
            self.show_positions(lane, &positions);
            self.show_behind().await;
        }
    }

    /// Reads a lane's next batch on a blocking thread.
    fn read(&self, lane: &Lane, from: &[u64]) -> tokio::task::JoinHandle<std::io::Result<Batch>> {
        let (data_dir, partitions, lane_partitions, from) = (
            self.data_dir.clone(),
            self.partitions,
            lane.partitions.clone(),
            from.to_vec(),
        );
        tokio::task::spawn_blocking(move || {
            read_batch(&data_dir, partitions, &lane_partitions, &from)
        })
    }

    /// Records a lane's committed positions, for how far behind it is.
    fn show_positions(&self, lane: &Lane, positions: &[u64]) {
        let mut shown = self.positions.lock();
        for p in &lane.partitions {
            shown[*p as usize] = positions[*p as usize];
        }
    }

    /// Subscribes to the orders and alerts after the last message the
    /// database holds; copies them all again when the hub no longer has
    /// what follows it (or the database has none yet).
    async fn follow(&self, client: &mut Client) -> Result<Following, String> {
        let failed =
            |e: tokio_postgres::Error| format!("cannot follow orders and alerts: {}", said(&e));
        let last: Option<String> = client
            .query_opt(
                "SELECT value FROM stockflow_sink_meta WHERE key = $1",
                &[&STREAM_POSITION],
            )
            .await
            .map_err(failed)?
            .map(|row| row.get(0));
        let filter = Filter {
            sku: None,
            location_id: None,
            kinds: vec![Kind::Orders],
        };
        let Some((subscription, resume)) = self.shared.hub.subscribe(filter, last.as_deref())
        else {
            return Err(
                "the server has too many stream subscribers to follow orders and alerts".into(),
            );
        };
        let missed = match (last, resume) {
            (Some(_), Resume::From(missed)) => missed,
            _ => {
                self.resync(client).await?;
                Vec::new()
            }
        };
        Ok(Following {
            subscription,
            missed: missed
                .into_iter()
                .filter(|m| m.kind == Kind::Orders)
                .collect(),
        })
    }

    /// Copies every order, in chunks (upserts: rows already there are
    /// written again the same).
    async fn resync(&self, client: &mut Client) -> Result<(), String> {
        let orders: Vec<String> = self
            .shared
            .orders
            .read()
            .orders
            .values()
            .map(|o| stockflow_service::json::order_json(o).to_string())
            .collect();
        tracing::info!(orders = orders.len(), "copying every order to PostgreSQL");
        for chunk in orders.chunks(RESYNC_CHUNK) {
            let messages = Messages {
                orders: chunk.to_vec(),
                ..Messages::default()
            };
            let result: Result<(), tokio_postgres::Error> = async {
                let tx = client.transaction().await?;
                write_messages(&tx, &messages).await?;
                tx.commit().await
            }
            .await;
            result.map_err(|e| format!("cannot copy the orders: {}", said(&e)))?;
        }
        Ok(())
    }

    /// Makes the database this data directory's sink, or says whose it
    /// is: positions of another directory's files would mean nothing here.
    async fn claim(&self, client: &Client) -> Result<(), String> {
        let failed =
            |e: tokio_postgres::Error| format!("cannot read the sink's owner: {}", said(&e));
        client
            .execute(
                "INSERT INTO stockflow_sink_meta VALUES ('data_dir_id', $1) ON CONFLICT DO NOTHING",
                &[&self.data_dir_id],
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
        if owner != self.data_dir_id {
            return Err(format!(
                "this database holds the sink of another data directory (id {owner}, this one is {}); give each data directory a database of its own",
                self.data_dir_id
            ));
        }
        Ok(())
    }

    /// Refuses positions past the end of the history files (files lost or
    /// replaced under the same id): rows would be read from mid-entry.
    async fn positions_within_files(&self, lane: &Lane, positions: &[u64]) -> Result<(), String> {
        let (data_dir, positions, partitions) = (
            self.data_dir.clone(),
            positions.to_vec(),
            lane.partitions.clone(),
        );
        tokio::task::spawn_blocking(move || {
            for p in partitions {
                let position = positions[p as usize];
                let end = history::end_of(&data_dir, p).map_err(|e| e.to_string())?;
                if position > end {
                    return Err(format!("the sink's position of partition {p} ({position}) is past the end of its history files ({end}): they were lost or replaced; give the sink a new database"));
                }
            }
            Ok(())
        })
        .await
        .expect("the check does not panic")
    }

    /// Shows how many history bytes are not yet sunk: the files' ends
    /// past the last committed positions.
    async fn show_behind(&self) {
        let (data_dir, positions) = (self.data_dir.clone(), self.positions.lock().clone());
        let behind = tokio::task::spawn_blocking(move || {
            let mut behind = 0;
            for (p, position) in positions.iter().enumerate() {
                let end = history::end_of(&data_dir, p as u16)?;
                behind += end.saturating_sub(*position);
            }
            Ok::<_, std::io::Error>(behind)
        })
        .await
        .expect("the reader does not panic");
        if let Ok(behind) = behind {
            self.sinks.behind(KIND, behind);
        }
    }
}

/// The positions the database has (0 for a partition it has none of).
async fn load_positions(
    client: &Client,
    partitions: u16,
) -> Result<Vec<u64>, tokio_postgres::Error> {
    let mut positions = vec![0u64; partitions as usize];
    for row in client
        .query(
            "SELECT partition, history_offset FROM stockflow_sink_positions",
            &[],
        )
        .await?
    {
        let (p, offset): (i16, i64) = (row.get(0), row.get(1));
        if let Some(position) = positions.get_mut(p as usize) {
            *position = offset as u64;
        }
    }
    Ok(positions)
}

/// Where each partition's alerts go on (`None`: the database has none
/// of that partition's yet).
async fn load_alert_positions(
    client: &Client,
    partitions: u16,
) -> Result<Vec<Option<u64>>, tokio_postgres::Error> {
    let mut next = vec![None; partitions as usize];
    for row in client
        .query(
            "SELECT key, value FROM stockflow_sink_meta WHERE key LIKE 'alert_seq:%'",
            &[],
        )
        .await?
    {
        let (key, value): (String, String) = (row.get(0), row.get(1));
        let p = key.trim_start_matches("alert_seq:").parse::<usize>().ok();
        if let (Some(slot), Ok(n)) = (p.and_then(|p| next.get_mut(p)), value.parse::<u64>()) {
            *slot = Some(n);
        }
    }
    Ok(next)
}

/// History entries of every partition from `from` on, and where each
/// partition goes on next.
struct Batch {
    entries: Vec<(u16, u64, Entry)>,
    next: Vec<u64>,
    skipped: u64,
}

/// A lane's partitions' entries (each partition its share of
/// [`BATCH_BYTES_MAX`], so all lanes' batches together stay within it).
fn read_batch(
    data_dir: &std::path::Path,
    partitions: u16,
    lane: &[u16],
    from: &[u64],
) -> std::io::Result<Batch> {
    let mut batch = Batch {
        entries: Vec::new(),
        next: from.to_vec(),
        skipped: 0,
    };
    let share = (BATCH_BYTES_MAX / partitions.max(1) as usize).max(1);
    for &p in lane {
        let scan = history::scan(data_dir, p, from[p as usize], share)?;
        if let Some((gone_from, gone_to)) = scan.deleted {
            batch.skipped += gone_to - gone_from;
        }
        batch.next[p as usize] = scan.next;
        batch
            .entries
            .extend(scan.entries.into_iter().map(|(offset, e)| (p, offset, e)));
    }
    Ok(batch)
}

/// The alerts partitions raised from `next` on (`None`: from the oldest
/// kept), at most `max` in all, as the API's JSON; where each partition
/// goes on next; and how many were gone (a partition keeps its newest
/// 2,000) before they were read.
fn read_alerts(
    shared: &Shared,
    lane: &[u16],
    next: &[Option<u64>],
    max: usize,
) -> (Vec<String>, Vec<(u16, u64)>, u64) {
    let (mut out, mut moved, mut gone) = (Vec::new(), Vec::new(), 0);
    for &p in lane {
        if out.len() >= max {
            break;
        }
        let p = p as usize;
        let partition = shared.partitions[p].read();
        let recent = &partition.alerts.recent;
        let Some(oldest) = recent.front().map(|a| a.seq) else {
            continue;
        };
        let from = match next[p] {
            Some(n) if n < oldest => {
                gone += oldest - n;
                oldest
            }
            Some(n) => n,
            None => oldest,
        };
        let start = recent.partition_point(|a| a.seq < from);
        let mut last = None;
        for a in recent.iter().skip(start).take(max - out.len()) {
            let (sku, location) = partition.names_of(a.slot);
            let json = stockflow_service::json::alert_json(p as u16, a, sku, location);
            out.push(json.to_string());
            last = Some(a.seq);
        }
        match last {
            Some(last) => moved.push((p as u16, last + 1)),
            None if next[p] != Some(from) => moved.push((p as u16, from)),
            None => {}
        }
    }
    (out, moved, gone)
}

/// The orders a session follows: what it missed, then live.
struct Following {
    subscription: Subscription,
    missed: Vec<Arc<Message>>,
}

/// Orders and alerts for one transaction, as JSON: the id of the last
/// order message (`None`: a resync's, which moves no position), and
/// where the alerts of each partition they come from go on next.
#[derive(Default)]
struct Messages {
    orders: Vec<String>,
    alerts: Vec<String>,
    position: Option<String>,
    alerts_next: Vec<(u16, u64)>,
}

impl Messages {
    fn is_empty(&self) -> bool {
        self.position.is_none() && self.alerts_next.is_empty()
    }
}

impl Following {
    /// What has arrived (at most [`MESSAGES_MAX`]), and whether the hub
    /// ended the subscription (it fell behind: resume from the database).
    fn drain(&mut self, epoch: u64) -> (Messages, bool) {
        let mut messages = Messages::default();
        let mut ended = false;
        let mut taken = std::mem::take(&mut self.missed);
        while taken.len() < MESSAGES_MAX {
            match self.subscription.receiver.try_recv() {
                Ok(m) => taken.push(m),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    ended = true;
                    break;
                }
            }
        }
        // The newest state of an order wins (messages come in order).
        let mut orders: HashMap<String, usize> = HashMap::new();
        for m in &taken {
            let data = m.data().to_string();
            if m.kind == Kind::Orders {
                let id = serde_json::from_str::<serde_json::Value>(&data)
                    .ok()
                    .and_then(|v| v["orderId"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                match orders.get(&id) {
                    Some(at) => messages.orders[*at] = data,
                    None => {
                        orders.insert(id, messages.orders.len());
                        messages.orders.push(data);
                    }
                }
            }
            messages.position = Some(format!("{epoch}-{}", m.seq));
        }
        (messages, ended)
    }
}

/// Upserts orders (their newest state) and inserts alerts (each
/// transition once), and moves the stream position if the batch has one.
async fn write_messages(
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
    if !messages.alerts_next.is_empty() {
        let (partitions, next): (Vec<i16>, Vec<i64>) = messages
            .alerts_next
            .iter()
            .map(|(p, n)| (*p as i16, *n as i64))
            .unzip();
        tx.execute(
            "INSERT INTO stockflow_sink_meta SELECT 'alert_seq:' || p, n::text
             FROM unnest($1::int2[], $2::int8[]) AS t(p, n)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&partitions, &next],
        )
        .await?;
    }
    if let Some(position) = &messages.position {
        tx.execute(
            "INSERT INTO stockflow_sink_meta VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&STREAM_POSITION, position],
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
fn said(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {}", db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

fn time(t: Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(t.0)
}

/// One transaction: the positions are still `from` (no other writer
/// moved them), the rows, the levels' newest numbers, the new positions.
async fn commit(
    client: &mut Client,
    lane: &[u16],
    from: &[u64],
    batch: &Batch,
    messages: &Messages,
) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    let partitions: Vec<i16> = lane.iter().map(|p| *p as i16).collect();
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
        if from.get(p as usize).is_some_and(|f| *f as i64 != offset) {
            tx.rollback().await?;
            anyhow::bail!("another writer moved the sink's position of partition {p}; reading the positions again");
        }
    }
    let n = batch.entries.len();
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
    let next: Vec<i64> = lane
        .iter()
        .map(|p| batch.next[*p as usize] as i64)
        .collect();
    tx.execute(
        "UPDATE stockflow_sink_positions AS s SET history_offset = t.o, updated_at = now()
         FROM unnest($1::int2[], $2::int8[]) AS t(p, o) WHERE s.partition = t.p",
        &[&partitions, &next],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
