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

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use stockflow_service::history::{self, Entry};
use stockflow_service::sink_tables::{self as tables, said, Messages, Rows};
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
    let settings = tables::settings(&url.0)?;
    let data_dir_id = crate::recovery::data_dir_id(&config.data_dir)?;
    let target = tables::target_of(&settings);
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
        if let Err(e) = tables::prepare(client).await {
            return (false, e);
        }
        // Positions of another directory's files would mean nothing here.
        if let Err(e) = tables::claim(client, &self.data_dir_id, "data directory").await {
            return (false, e);
        }
        let mut positions = match tables::load_positions(client, self.partitions).await {
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
            messages.meta.extend(
                moved
                    .iter()
                    .map(|(p, n)| (format!("alert_seq:{p}"), n.to_string())),
            );
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
            let rows = Rows {
                entries: batch.entries,
                from: lane
                    .partitions
                    .iter()
                    .map(|p| (*p, positions[*p as usize]))
                    .collect(),
                next: lane
                    .partitions
                    .iter()
                    .map(|p| (*p, batch.next[*p as usize]))
                    .collect(),
            };
            let commit = tables::commit(client, &rows, &messages);
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
            let rows = rows.entries.len() + messages.orders.len() + messages.alerts.len();
            tracing::debug!(
                lane = lane.index,
                rows,
                ms = started.elapsed().as_millis() as u64,
                "sink batch committed"
            );
            self.sinks.committed(KIND, rows as u64);
            for (p, next) in moved {
                alerts_next[p as usize] = Some(next);
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
            let mut messages = Messages::default();
            for order in chunk {
                messages.order(order.clone());
            }
            let result: Result<(), tokio_postgres::Error> = async {
                let tx = client.transaction().await?;
                tables::write_messages(&tx, &messages).await?;
                tx.commit().await
            }
            .await;
            result.map_err(|e| format!("cannot copy the orders: {}", said(&e)))?;
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
        let mut position = None;
        for m in &taken {
            if m.kind == Kind::Orders {
                messages.order(m.data().to_string());
            }
            position = Some(format!("{epoch}-{}", m.seq));
        }
        if let Some(position) = position {
            messages.meta.push((STREAM_POSITION.to_owned(), position));
        }
        (messages, ended)
    }
}
