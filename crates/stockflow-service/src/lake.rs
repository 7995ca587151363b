//! The Parquet lake (`serve --lake DIR`): every entry of the history
//! files (one per applied or rejected event and level, with the level
//! after it) as rows of Parquet files an analyst reads with DuckDB,
//! Spark or pandas.
//!
//! Like the PostgreSQL sink, it reads the history files from its own
//! position per partition, never from memory: a lake that is behind holds
//! at most one file's rows. A file is written under a temporary name,
//! fsynced, then renamed into `DIR/day=YYYY-MM-DD/` (the UTC day the
//! engine applied its rows; `.../hour=HH/` below it with
//! `--lake-partition hour`), so a reader never sees half a file. Each
//! file's metadata holds the history range it covers; a restart takes its
//! positions from the files themselves, so a crash at any point goes on
//! from the last renamed file: nothing missing, nothing twice.
//!
//! A partition's new history becomes a file once it is
//! `--lake-flush-seconds` old, or sooner when it fills one.
//!
//! The lake can be an S3-compatible bucket (`--lake s3://bucket/prefix`,
//! credentials and endpoint from the usual `AWS_*` variables): a file is
//! one PUT, which S3 makes visible whole, so there is no temporary name.
//!
//! The history comes from a [`Source`]: the embedded mode's history
//! files ([`HistoryFiles`]), or in Kafka mode the history topic of the
//! partitions an instance owns. Kafka instances share one lake: a file
//! is published only where no file is (a bucket's create-only PUT, a
//! directory's hard link), and one found there, written by the last
//! owner of the partition, is where the lake goes on from.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::DateTime;
use object_store::path::Path as ObjectPath;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::metadata::{FooterTail, KeyValue, ParquetMetaDataReader};
use parquet::file::properties::{WriterProperties, WriterPropertiesPtr};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::TypePtr;
use stockflow_core::Timestamp;

use crate::history::{self, outcome_name, Entry};
use crate::sinks::{Sinks, State};

const KIND: &str = "lake";
/// History read into one file at most: about 200k rows.
const FILE_HISTORY_BYTES: usize = 32 << 20;
/// How often the history files' ends are looked at.
const POLL: Duration = Duration::from_millis(250);
/// How long a failed write (disk full, permissions) waits to try again.
const RETRY: Duration = Duration::from_secs(5);

/// How a shared lake's temporary file ends (its name also has a random
/// part: instances never write the same temporary), and the age after
/// which one is taken for a crashed writer's and removed.
const SHARED_TMP: &str = ".shared.tmp";
const SHARED_TMP_TORN: Duration = Duration::from_secs(600);

/// A file's metadata keys: whose history it holds, and which part.
const META_DATA_DIR: &str = "stockflow.dataDirId";
const META_PARTITION: &str = "stockflow.partition";
const META_FROM: &str = "stockflow.historyFrom";
const META_TO: &str = "stockflow.historyTo";

/// A column's values, from a row's partition, history offset and entry.
enum Column {
    Int(fn(u16, u64, &Entry) -> i64),
    /// Nanoseconds since the epoch, as a UTC timestamp.
    Time(fn(&Entry) -> i64),
    Text(fn(&Entry) -> &str),
}

/// The columns, named like the API's fields (`GET .../history`). Only
/// `part`, `partition` and `historyOffset` are the lake's own. Documented
/// in the README.
const COLUMNS: &[(&str, Column)] = &[
    ("eventId", Column::Text(|e| &e.event_id)),
    ("eventType", Column::Text(|e| e.event_type.as_str())),
    ("sku", Column::Text(|e| &e.sku)),
    ("locationId", Column::Text(|e| &e.location)),
    (
        "part",
        Column::Text(|e| if e.in_transit { "in_transit" } else { "level" }),
    ),
    ("quantity", Column::Int(|_, _, e| e.quantity)),
    ("outcome", Column::Text(|e| outcome_name(e.outcome))),
    ("timestamp", Column::Time(|e| e.event_time.0)),
    ("processedAt", Column::Time(|e| e.processed.0)),
    ("onHand", Column::Int(|_, _, e| e.after.on_hand)),
    ("reserved", Column::Int(|_, _, e| e.after.reserved)),
    ("inTransit", Column::Int(|_, _, e| e.after.in_transit)),
    (
        "onHandChange",
        Column::Int(|_, _, e| e.after.on_hand - e.before.on_hand),
    ),
    ("by", Column::Text(|e| &e.by)),
    ("partition", Column::Int(|p, _, _| i64::from(p))),
    ("historyOffset", Column::Int(|_, at, _| at as i64)),
];

fn schema() -> TypePtr {
    let mut text = String::from("message stockflow_history {\n");
    for (name, column) in COLUMNS {
        text.push_str(&match (column, *name) {
            (Column::Int(_), "partition") => format!("required int32 {name};\n"),
            (Column::Int(_), _) => format!("required int64 {name};\n"),
            (Column::Time(_), _) => format!("required int64 {name} (TIMESTAMP(NANOS,true));\n"),
            (Column::Text(_), _) => format!("required binary {name} (STRING);\n"),
        });
    }
    text.push('}');
    Arc::new(parquet::schema::parser::parse_message_type(&text).expect("the schema parses"))
}

/// Where a lake's history comes from, in the source's offsets (the
/// rows' `historyOffset`, the files' `historyFrom` and `historyTo`).
pub trait Source: Send + 'static {
    /// Per partition, where its history ends now; a partition this
    /// server does not write ends where the lake stands (`positions`).
    fn ends(&mut self, positions: &[u64]) -> anyhow::Result<Vec<u64>>;
    /// The entries of `p` from `from` on, about `bytes_max` at most.
    fn scan(&mut self, p: u16, from: u64, bytes_max: usize) -> anyhow::Result<history::Scan>;
    /// Partitions this server began to write since the last call: their
    /// positions are read from the lake again and given to `start_at`.
    fn gained(&mut self) -> Vec<u16> {
        Vec::new()
    }
    /// Where the lake stands for `p`: the source reads on from there.
    fn start_at(&mut self, _p: u16, _position: u64) {}
    /// Refuses a lake that holds more of `p` than the source has.
    fn check(&self, _p: u16, _position: u64) -> anyhow::Result<()> {
        Ok(())
    }
    /// Offsets per record, when the source counts records (a topic's
    /// offsets × slots), not bytes: how far behind shows in records.
    fn per_record(&self) -> Option<u64> {
        None
    }
}

/// The embedded mode's history files, in the data directory.
pub struct HistoryFiles(pub PathBuf);

impl Source for HistoryFiles {
    fn ends(&mut self, positions: &[u64]) -> anyhow::Result<Vec<u64>> {
        Ok((0..positions.len())
            .map(|p| history::end_of(&self.0, p as u16))
            .collect::<std::io::Result<Vec<u64>>>()?)
    }

    fn scan(&mut self, p: u16, from: u64, bytes_max: usize) -> anyhow::Result<history::Scan> {
        Ok(history::scan(&self.0, p, from, bytes_max)?)
    }

    fn check(&self, p: u16, position: u64) -> anyhow::Result<()> {
        let end = history::end_of(&self.0, p)?;
        anyhow::ensure!(
            position <= end,
            "the lake holds history of partition {p} up to {position}, past the end of this data directory's history files ({end}): they were lost or replaced; give the server a new lake",
        );
        Ok(())
    }
}

/// Whose lake it is (`owner`: the data directory's id, or a Kafka
/// cluster's) and whether servers share it (Kafka instances).
pub struct Writer {
    pub owner: String,
    pub shared: bool,
}

/// Checks the lake and starts writing it, if the config has one.
/// Refuses a lake of another owner, or (a directory, at start) one ahead
/// of the source: its positions mean nothing here. A bucket is checked
/// by the writer, not at start: a store across the network that is away
/// must not keep the server from taking events. Runs until aborted.
pub fn start(
    config: &crate::config::Config,
    partitions: u16,
    writer: Writer,
    source: Box<dyn Source>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(settings) = &config.lake else {
        return Ok(None);
    };
    let (store, lock) = Store::open(&settings.dir, writer.shared)?;
    let mut lake = Lake {
        store,
        source,
        owner: writer.owner,
        shared: writer.shared,
        flush: settings.flush,
        hourly: settings.hourly,
        since: vec![None; partitions as usize],
        started: true,
        resumed: false,
        positions: vec![0; partitions as usize],
        gaining: Vec::new(),
        schema: schema(),
        properties: Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_created_by(format!("stockflow {}", env!("CARGO_PKG_VERSION")))
                .build(),
        ),
        sinks: config.sinks.clone(),
        _lock: lock,
    };
    if let Store::Dir(_) = lake.store {
        lake.resume()?;
    }
    config.sinks.add(KIND, &lake.store.to_string());
    tracing::info!(lake = %lake.store, "writing history to the Parquet lake");
    Ok(Some(tokio::spawn(lake.run())))
}

/// Where the lake is: a directory, or a bucket's prefix.
enum Store {
    Dir(PathBuf),
    Bucket(Bucket),
}

/// An S3-compatible bucket, through `object_store` (async) from the
/// lake's blocking thread.
struct Bucket {
    store: Arc<dyn object_store::ObjectStore>,
    prefix: ObjectPath,
    url: String,
    runtime: tokio::runtime::Handle,
}

/// A file of the lake (an object with its size).
enum Place {
    Local(PathBuf),
    Object(ObjectPath, u64),
}

impl Place {
    fn name(&self) -> &str {
        match self {
            Place::Local(path) => path.file_name().and_then(|n| n.to_str()).unwrap_or(""),
            Place::Object(path, _) => path.filename().unwrap_or(""),
        }
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Dir(dir) => write!(f, "{}", dir.display()),
            Store::Bucket(bucket) => f.write_str(&bucket.url),
        }
    }
}

impl Store {
    /// The lake `--lake` names, and for a directory the lock that keeps
    /// other servers out.
    fn open(lake: &Path, shared: bool) -> anyhow::Result<(Store, Option<File>)> {
        if let Some(url) = lake.to_str().filter(|l| l.starts_with("s3://")) {
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .build()
                .with_context(|| format!("cannot reach the lake {url}; set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, for an S3-compatible store, AWS_ENDPOINT (and AWS_ALLOW_HTTP=true for http://)"))?;
            let prefix = url
                .trim_start_matches("s3://")
                .split_once('/')
                .map_or("", |(_, prefix)| prefix);
            let bucket = Bucket {
                store: Arc::new(store),
                prefix: ObjectPath::from(prefix),
                url: url.trim_end_matches('/').to_owned(),
                runtime: tokio::runtime::Handle::current(),
            };
            return Ok((Store::Bucket(bucket), None));
        }
        let dir = lake.to_owned();
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the lake {}", dir.display()))?;
        if shared {
            return Ok((Store::Dir(dir), None));
        }
        // One writer per lake: two servers would both take it for theirs
        // while it is empty, then interleave.
        let lock = File::create(dir.join(".stockflow-lake.lock"))
            .with_context(|| format!("cannot write in the lake {}", dir.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => anyhow::bail!(
                "the lake {} is being written by another server; give each server a lake of its own",
                dir.display()
            ),
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        Ok((Store::Dir(dir), Some(lock)))
    }

    /// The lake's files that hold each partition's newest: in a
    /// directory, every file (and leftover temporary); in a bucket, the
    /// folders newest first until each partition has had one (listing a
    /// year of objects would slow every start). Refuses a lake laid out
    /// by the other `--lake-partition`.
    fn files(&self, hourly: bool, partitions: u16) -> anyhow::Result<Vec<Place>> {
        let bucket = match self {
            Store::Dir(dir) => {
                return Ok(files_of(dir, hourly)?
                    .into_iter()
                    .map(Place::Local)
                    .collect())
            }
            Store::Bucket(bucket) => bucket,
        };
        let other = |layout: &str, at: &ObjectPath| {
            anyhow::anyhow!(
                "the lake {self} is partitioned by {layout} ({at}); start with --lake-partition {layout}, or give the server a new lake"
            )
        };
        bucket.wait(async {
            let list = |prefix: ObjectPath| async move {
                let mut listed = bucket
                    .store
                    .list_with_delimiter(Some(&prefix))
                    .await
                    .with_context(|| {
                        format!(
                            "cannot list the lake {}: check that the bucket exists and that AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT give access to it",
                            bucket.url
                        )
                    })?;
                // Newest first: `day=YYYY-MM-DD` and `hour=HH` sort by time.
                listed.common_prefixes.sort_unstable_by(|a, b| b.cmp(a));
                anyhow::Ok(listed)
            };
            let mut files = Vec::new();
            let mut seen = vec![false; partitions as usize];
            let objects = |listed: Vec<object_store::ObjectMeta>,
                           files: &mut Vec<Place>,
                           seen: &mut Vec<bool>| {
                for object in listed {
                    if let Some((p, _)) = object.location.filename().and_then(named) {
                        if let Some(seen) = seen.get_mut(p as usize) {
                            *seen = true;
                        }
                    }
                    files.push(Place::Object(object.location, object.size));
                }
                seen.iter().all(|s| *s)
            };
            for day in list(bucket.prefix.clone()).await?.common_prefixes {
                let listed = list(day).await?;
                if let Some(hour) = listed.common_prefixes.first() {
                    if !hourly {
                        return Err(other("hour", hour));
                    }
                }
                if let Some(object) = listed.objects.first() {
                    if hourly && object.location.extension() == Some("parquet") {
                        return Err(other("day", &object.location));
                    }
                }
                let mut all = objects(listed.objects, &mut files, &mut seen);
                for hour in listed.common_prefixes {
                    if all {
                        break;
                    }
                    all = objects(list(hour).await?.objects, &mut files, &mut seen);
                }
                if all {
                    break;
                }
            }
            Ok(files)
        })
    }

    /// A lake file's key-value metadata (its footer; of an object, only
    /// the footer is read).
    fn metadata(&self, place: &Place) -> anyhow::Result<Vec<KeyValue>> {
        let metadata = match (self, place) {
            (_, Place::Local(path)) => SerializedFileReader::new(File::open(path)?)?
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .cloned(),
            (Store::Bucket(bucket), Place::Object(path, size)) => {
                let footer = bucket.wait(async {
                    let tail = bucket
                        .store
                        .get_range(path, size.saturating_sub(8)..*size)
                        .await?;
                    let tail = FooterTail::try_from(&tail[..])?;
                    let length = tail.metadata_length() as u64;
                    let start = size
                        .checked_sub(8 + length)
                        .context("a footer longer than its file")?;
                    anyhow::Ok(bucket.store.get_range(path, start..size - 8).await?)
                })?;
                ParquetMetaDataReader::decode_metadata(&footer)?
                    .file_metadata()
                    .key_value_metadata()
                    .cloned()
            }
            (Store::Dir(_), Place::Object(..)) => unreachable!("a directory lists paths"),
        };
        Ok(metadata.unwrap_or_default())
    }
}

impl Bucket {
    /// An object's URL, as a user would name it.
    fn show(&self, path: &ObjectPath) -> String {
        let bucket = self.url.trim_start_matches("s3://").split('/').next();
        format!("s3://{}/{path}", bucket.unwrap_or_default())
    }

    /// Runs `work` to its end on the runtime, from a thread of its own
    /// (the caller may be a runtime thread, at start, or a blocking one).
    fn wait<T: Send>(&self, work: impl std::future::Future<Output = T> + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| self.runtime.block_on(work))
                .join()
                .expect("a lake request does not panic")
        })
    }
}

/// The value of `key` in a file's key-value metadata.
fn value_of(meta: &[KeyValue], key: &str) -> Option<String> {
    meta.iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
}

/// A lake file's partition and first history offset, from its name
/// (`p0003-00000000000000123456.parquet`).
fn named(name: &str) -> Option<(u16, u64)> {
    let (p, from) = name
        .strip_suffix(".parquet")?
        .strip_prefix('p')?
        .split_once('-')?;
    Some((p.parse().ok()?, from.parse().ok()?))
}

/// Where the lake's files end, per partition: the `historyTo` of its
/// file that starts furthest (its name says which, so that only that
/// footer is read). Removes what a crash left half-written. Refuses a
/// lake laid out by the other `--lake-partition`: one layout per lake,
/// or its readers' hive partitions would not line up.
fn positions_of(
    store: &Store,
    owner: &str,
    partitions: u16,
    hourly: bool,
) -> anyhow::Result<Vec<u64>> {
    let mut newest: Vec<Option<(u64, Place)>> = (0..partitions).map(|_| None).collect();
    for place in store.files(hourly, partitions)? {
        let name = place.name().to_owned();
        if let Place::Local(path) = &place {
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A shared lake's temporary may be another instance's,
                // being written: only one no write takes so long is torn.
                let torn = !name.ends_with(SHARED_TMP)
                    || fs::metadata(path)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > SHARED_TMP_TORN));
                if torn {
                    fs::remove_file(path)
                        .with_context(|| format!("cannot remove {}", path.display()))?;
                }
                continue;
            }
        }
        let Some((p, from)) = named(&name) else {
            if name.ends_with(".parquet") {
                tracing::warn!(file = %name, "a Parquet file not named by stockflow is in the lake; ignored");
            }
            continue;
        };
        let slot = newest.get_mut(p as usize).with_context(|| {
            format!("{name} is of partition {p}; this data directory has {partitions}")
        })?;
        if slot.as_ref().is_none_or(|(held, _)| *held < from) {
            *slot = Some((from, place));
        }
    }
    let mut positions = vec![0u64; partitions as usize];
    for (p, newest) in newest.into_iter().enumerate() {
        let Some((_, place)) = newest else {
            continue;
        };
        let name = place.name();
        let meta = store.metadata(&place).with_context(|| {
            format!("cannot read the lake file {name}; move it out of the lake {store}")
        })?;
        let get = |key: &str| value_of(&meta, key);
        let found = get(META_DATA_DIR).with_context(|| format!("{name} has no {META_DATA_DIR}"))?;
        anyhow::ensure!(
            found == owner,
            "the lake {store} holds the history of another data directory or cluster (id {found}, this one is {owner}); give each a lake of its own",
        );
        let number = |key: &str| {
            get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .with_context(|| format!("{name} has no {key}"))
        };
        anyhow::ensure!(
            number(META_PARTITION)? == p as u64,
            "{name} holds another partition than its name says; move it out of the lake {store}",
        );
        positions[p] = number(META_TO)?;
    }
    Ok(positions)
}

/// Every file in the lake's day (and hour) folders.
fn files_of(dir: &Path, hourly: bool) -> anyhow::Result<Vec<PathBuf>> {
    let other = |layout: &str, path: &Path| {
        anyhow::anyhow!(
            "the lake {} is partitioned by {layout} ({}); start with --lake-partition {layout}, or give the server a new lake directory",
            dir.display(),
            path.display()
        )
    };
    let mut files = Vec::new();
    let days =
        fs::read_dir(dir).with_context(|| format!("cannot read the lake {}", dir.display()))?;
    for day in days {
        let day = day?.path();
        if !day.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&day)? {
            let path = entry?.path();
            if path.is_dir() {
                if !hourly {
                    return Err(other("hour", &path));
                }
                for file in fs::read_dir(&path)? {
                    files.push(file?.path());
                }
            } else {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if hourly && (name.ends_with(".parquet") || name.ends_with(".tmp")) {
                    return Err(other("day", &path));
                }
                files.push(path);
            }
        }
    }
    Ok(files)
}

struct Lake {
    store: Store,
    source: Box<dyn Source>,
    /// Whose lake it is (in each file's metadata).
    owner: String,
    /// Servers share it: files are published only where none is.
    shared: bool,
    flush: Duration,
    /// Files per UTC hour (else per day).
    hourly: bool,
    /// Per partition: the end of the history in its files.
    positions: Vec<u64>,
    /// Per partition: since when history past its position was seen.
    since: Vec<Option<Instant>>,
    /// Until the first look is done: what is there is written at once.
    started: bool,
    /// Whether `positions` are the lake's (a bucket's are read by the
    /// writer's first step, and again until that works).
    resumed: bool,
    /// Partitions the source began to write whose positions are still to
    /// be read from the lake.
    gaining: Vec<u16>,
    schema: TypePtr,
    properties: WriterPropertiesPtr,
    sinks: Sinks,
    /// Held while the server runs (see `start`).
    /// A directory's lock, held while the server runs.
    _lock: Option<File>,
}

/// What one look at the history files did.
struct Step {
    skipped: u64,
}

impl Lake {
    /// Writes files until the process ends; file IO off the runtime.
    async fn run(mut self) {
        loop {
            let (lake, step) = tokio::task::spawn_blocking(move || {
                let step = self.step(Instant::now());
                (self, step)
            })
            .await
            .expect("the lake writer does not panic");
            self = lake;
            match step {
                Ok(step) => {
                    self.sinks.set(KIND, State::Connected, None);
                    if step.skipped > 0 {
                        tracing::warn!(
                            bytes = step.skipped,
                            "history was deleted by the retention before the lake had it"
                        );
                        self.sinks.skipped(KIND, step.skipped);
                    }
                    tokio::time::sleep(POLL).await;
                }
                Err(error) => {
                    // Tried again from what the lake holds: a source may
                    // have handed over rows that no file took.
                    self.resumed = false;
                    tracing::warn!(error = %format!("{error:#}"), "cannot write the lake; trying again");
                    self.sinks
                        .set(KIND, State::Disconnected, Some(format!("{error:#}")));
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Writes the files that are due: a partition's history past its
    /// position, once it is `flush` old or fills a file. How far behind
    /// the lake is shows before and after each file.
    fn step(&mut self, now: Instant) -> anyhow::Result<Step> {
        if !self.resumed {
            self.resume()?;
        }
        self.gaining.extend(self.source.gained());
        if !self.gaining.is_empty() {
            let positions = positions_of(
                &self.store,
                &self.owner,
                self.positions.len() as u16,
                self.hourly,
            )?;
            for p in std::mem::take(&mut self.gaining) {
                self.positions[p as usize] = positions[p as usize];
                self.since[p as usize] = None;
                self.source.start_at(p, positions[p as usize]);
            }
        }
        let mut step = Step { skipped: 0 };
        let ends = self.source.ends(&self.positions)?;
        self.show_behind(&ends);
        for (p, &end) in ends.iter().enumerate() {
            let pending = end.saturating_sub(self.positions[p]);
            if pending == 0 {
                self.since[p] = None;
                continue;
            }
            let since = *self.since[p].get_or_insert(now);
            // Looked at every POLL: written by the deadline, not after it.
            // History from before the start is as old as the start: due.
            let due = self.started || now.duration_since(since) + POLL >= self.flush;
            if due || pending >= FILE_HISTORY_BYTES as u64 {
                self.write_partition(p as u16, end, &ends, &mut step)?;
                if self.positions[p] >= end {
                    self.since[p] = None;
                }
            }
        }
        self.started = false;
        Ok(step)
    }

    /// Reads where the lake's files end (refusing a lake ahead of the
    /// source) and has the source go on from there.
    fn resume(&mut self) -> anyhow::Result<()> {
        let partitions = self.positions.len() as u16;
        let positions = positions_of(&self.store, &self.owner, partitions, self.hourly)?;
        for (p, position) in positions.iter().enumerate() {
            self.source
                .check(p as u16, *position)
                .with_context(|| format!("the lake {}", self.store))?;
        }
        for (p, position) in positions.iter().enumerate() {
            self.source.start_at(p as u16, *position);
        }
        self.positions = positions;
        self.resumed = true;
        Ok(())
    }

    /// How much history is not yet in files: bytes, or a topic's records.
    fn show_behind(&self, ends: &[u64]) {
        let behind: u64 = ends
            .iter()
            .zip(&self.positions)
            .map(|(end, at)| end.saturating_sub(*at))
            .sum();
        match self.source.per_record() {
            Some(per) => self.sinks.behind_records(KIND, behind.div_ceil(per)),
            None => self.sinks.behind(KIND, behind),
        }
    }

    /// Writes partition `p`'s history up to `end` (as far as whole
    /// entries are there), a file per day and per [`FILE_HISTORY_BYTES`].
    fn write_partition(
        &mut self,
        p: u16,
        end: u64,
        ends: &[u64],
        step: &mut Step,
    ) -> anyhow::Result<()> {
        while self.positions[p as usize] < end {
            let from = self.positions[p as usize];
            let scan = self.source.scan(p, from, FILE_HISTORY_BYTES)?;
            if let Some((gone_from, gone_to)) = scan.deleted {
                step.skipped += gone_to - gone_from;
            }
            if scan.entries.is_empty() {
                if scan.next > from {
                    // All of it deleted by the retention: a file without
                    // rows keeps the skip (a restart goes on after it,
                    // and does not count it again).
                    let now = Timestamp(chrono::Utc::now().timestamp() * 1_000_000_000);
                    self.positions[p as usize] =
                        self.write_file(p, self.folder_of(now), from, &[], scan.next)?;
                    continue;
                }
                // Only an entry still being written: the next look.
                break;
            }
            // A file per UTC day (or hour) of the rows' processing, in
            // order.
            let mut start = 0;
            while start < scan.entries.len() {
                let folder = self.folder_of(scan.entries[start].1.processed);
                let len = scan.entries[start..]
                    .iter()
                    .take_while(|(_, e)| self.folder_of(e.processed) == folder)
                    .count();
                let rows = &scan.entries[start..start + len];
                let to = scan
                    .entries
                    .get(start + len)
                    .map_or(scan.next, |(at, _)| *at);
                // The first file starts where the lake stood, so that a
                // range the retention deleted is in its span.
                let first = if start == 0 { from } else { rows[0].0 };
                let reached = self.write_file(p, folder, first, rows, to)?;
                self.positions[p as usize] = reached;
                self.sinks.committed(KIND, len as u64);
                self.show_behind(ends);
                if reached != to {
                    // An earlier try's file was there (or, in a shared
                    // lake, the partition's last owner's): on from its
                    // end, read again if it ends before these rows did.
                    if reached < to {
                        self.source.start_at(p, reached);
                    }
                    break;
                }
                start += len;
            }
        }
        Ok(())
    }

    /// The folder (under the lake) of rows the engine applied at `t`:
    /// `day=YYYY-MM-DD`, or `day=YYYY-MM-DD/hour=HH`.
    fn folder_of(&self, t: Timestamp) -> PathBuf {
        let at = DateTime::from_timestamp_nanos(t.0);
        let day = PathBuf::from(format!("day={}", at.format("%Y-%m-%d")));
        match self.hourly {
            true => day.join(format!("hour={}", at.format("%H"))),
            false => day,
        }
    }

    /// One file of history `from`..`to` in `folder`: written under a
    /// temporary name, fsynced, renamed (or put whole in a bucket).
    /// Returns where the lake's history of `p` now ends: `to`, or the end
    /// of the object an earlier try of this server left at that name.
    fn write_file(
        &self,
        p: u16,
        folder: PathBuf,
        from: u64,
        rows: &[(u64, Entry)],
        to: u64,
    ) -> anyhow::Result<u64> {
        let name = format!("p{p:04}-{from:020}.parquet");
        let lake = match &self.store {
            Store::Dir(lake) => lake,
            Store::Bucket(bucket) => {
                // One PUT: S3 shows an object whole or not at all.
                let bytes = self.encode(Vec::new(), p, from, rows, to)?;
                let mut path = bucket.prefix.clone();
                for part in folder.iter().chain([std::ffi::OsStr::new(&name)]) {
                    path = path.child(part.to_str().expect("the lake names folders in ASCII"));
                }
                // Never over another's: a file there already is this one,
                // from a PUT whose answer was lost, or another server's.
                let create = object_store::PutOptions {
                    mode: object_store::PutMode::Create,
                    ..Default::default()
                };
                match bucket.wait(bucket.store.put_opts(&path, bytes.into(), create)) {
                    Ok(_) => return Ok(to),
                    Err(object_store::Error::AlreadyExists { .. }) => {}
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("cannot write {}", bucket.show(&path)))
                    }
                }
                let size = bucket
                    .wait(bucket.store.head(&path))
                    .with_context(|| format!("cannot read {}", bucket.show(&path)))?
                    .size;
                let there = self.store.metadata(&Place::Object(path.clone(), size))?;
                let value = |key: &str| value_of(&there, key);
                anyhow::ensure!(
                    value(META_DATA_DIR).as_deref() == Some(self.owner.as_str()),
                    "{} is there already, written by another server: give each server a lake of its own",
                    bucket.show(&path)
                );
                return value(META_TO)
                    .and_then(|to| to.parse().ok())
                    .with_context(|| format!("{} has no {META_TO}", bucket.show(&path)));
            }
        };
        let dir = lake.join(&folder);
        if !dir.exists() {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            // The new folders' names are durable in their parents.
            let mut parent = dir.parent();
            while let Some(folder) = parent {
                sync_dir(folder)?;
                if folder == lake {
                    break;
                }
                parent = folder.parent();
            }
        }
        let temporary = match self.shared {
            false => dir.join(format!(".{name}.tmp")),
            true => dir.join(format!(
                ".{name}.{:016x}{SHARED_TMP}",
                rand::random::<u64>()
            )),
        };
        let file = File::create(&temporary)
            .with_context(|| format!("cannot create {}", temporary.display()))?;
        let file = self.encode(file, p, from, rows, to)?;
        file.sync_all()?;
        drop(file);
        let path = dir.join(&name);
        if !self.shared {
            fs::rename(&temporary, &path)
                .with_context(|| format!("cannot rename {}", temporary.display()))?;
            sync_dir(&dir)?;
            return Ok(to);
        }
        // Shared: never over another's (a link is made only where no
        // file is); one there is the last owner's, and the lake goes on
        // from its end.
        let linked = fs::hard_link(&temporary, &path);
        let _ = fs::remove_file(&temporary);
        match linked {
            Ok(()) => {
                sync_dir(&dir)?;
                Ok(to)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let there = self.store.metadata(&Place::Local(path.clone()))?;
                let value = |key: &str| value_of(&there, key);
                anyhow::ensure!(
                    value(META_DATA_DIR).as_deref() == Some(self.owner.as_str()),
                    "{} is there already, written by another server: give each server a lake of its own",
                    path.display()
                );
                value(META_TO)
                    .and_then(|to| to.parse().ok())
                    .with_context(|| format!("{} has no {META_TO}", path.display()))
            }
            Err(e) => Err(e).with_context(|| format!("cannot publish {}", path.display())),
        }
    }

    /// History `from`..`to` of partition `p` as a Parquet file into `out`.
    fn encode<W: std::io::Write + Send>(
        &self,
        out: W,
        p: u16,
        from: u64,
        rows: &[(u64, Entry)],
        to: u64,
    ) -> anyhow::Result<W> {
        let mut writer =
            SerializedFileWriter::new(out, self.schema.clone(), self.properties.clone())?;
        // A file without rows (a skip) has no row group.
        if !rows.is_empty() {
            let mut group = writer.next_row_group()?;
            let mut columns = COLUMNS.iter();
            while let Some(mut out) = group.next_column()? {
                let (name, column) = columns.next().expect("a column per schema field");
                match column {
                    Column::Int(_) if *name == "partition" => {
                        let values: Vec<i32> = rows.iter().map(|_| i32::from(p)).collect();
                        out.typed::<Int32Type>().write_batch(&values, None, None)?;
                    }
                    Column::Int(value) => {
                        let values: Vec<i64> =
                            rows.iter().map(|(at, e)| value(p, *at, e)).collect();
                        out.typed::<Int64Type>().write_batch(&values, None, None)?;
                    }
                    Column::Time(value) => {
                        let values: Vec<i64> = rows.iter().map(|(_, e)| value(e)).collect();
                        out.typed::<Int64Type>().write_batch(&values, None, None)?;
                    }
                    Column::Text(value) => {
                        let values: Vec<ByteArray> = rows
                            .iter()
                            .map(|(_, e)| ByteArray::from(value(e)))
                            .collect();
                        out.typed::<ByteArrayType>()
                            .write_batch(&values, None, None)?;
                    }
                }
                out.close()?;
            }
            group.close()?;
        }
        for (key, value) in [
            (META_DATA_DIR, self.owner.clone()),
            (META_PARTITION, p.to_string()),
            (META_FROM, from.to_string()),
            (META_TO, to.to_string()),
        ] {
            writer.append_key_value_metadata(KeyValue::new(key.to_owned(), value));
        }
        Ok(writer.into_inner()?)
    }
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Fixed, HistoryWriter, Level};
    use stockflow_core::{EventType, Numbers, Outcome, Timestamp};

    const SECOND: i64 = 1_000_000_000;
    const DAY: i64 = 86_400 * SECOND;

    /// History of partition 0: one receipt a second from `start`, in
    /// small segments (so that the retention can delete some).
    fn history(data: &Path, start: i64, n: i64) {
        let mut writer = HistoryWriter::open_with(data, 0, 0, 1000).unwrap();
        for t in 0..n {
            let at = Timestamp(start + t * SECOND);
            let fixed = Fixed {
                prev: 0,
                processed: at,
                event_time: at,
                record: t as u64,
                event_type: EventType::Receipt,
                in_transit: false,
                outcome: Outcome::Applied,
                quantity: 1,
                before: Numbers {
                    on_hand: t,
                    ..Numbers::default()
                },
                after: Numbers {
                    on_hand: t + 1,
                    ..Numbers::default()
                },
            };
            let level = Level {
                sku: "A",
                location: "S1",
            };
            writer
                .append(&fixed, &format!("e{t}"), "pos", level)
                .unwrap();
        }
        writer.flush().unwrap();
    }

    fn lake(data: &Path, dir: &Path) -> Lake {
        lake_by(data, dir, false)
    }

    fn lake_by(data: &Path, dir: &Path, hourly: bool) -> Lake {
        fs::create_dir_all(dir).unwrap();
        Lake {
            store: Store::Dir(dir.to_owned()),
            source: Box::new(HistoryFiles(data.to_owned())),
            owner: "test".into(),
            shared: false,
            flush: Duration::from_secs(60),
            hourly,
            positions: positions_of(&Store::Dir(dir.to_owned()), "test", 1, hourly).unwrap(),
            since: vec![None],
            started: true,
            resumed: true,
            gaining: Vec::new(),
            schema: schema(),
            properties: Arc::new(WriterProperties::builder().build()),
            sinks: Sinks::default(),
            _lock: None,
        }
    }

    /// Every file's (folder, historyFrom, historyTo, rows).
    fn files(dir: &Path) -> Vec<(String, u64, u64, i64)> {
        let mut found = Vec::new();
        let mut folders = vec![dir.to_owned()];
        while let Some(folder) = folders.pop() {
            for entry in fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "parquet") {
                    continue;
                }
                let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
                let meta = reader.metadata().file_metadata();
                let get = |key: &str| {
                    let kv = meta.key_value_metadata().unwrap();
                    let value = kv.iter().find(|kv| kv.key == key).unwrap();
                    value.value.as_ref().unwrap().parse::<u64>().unwrap()
                };
                let folder = folder.strip_prefix(dir).unwrap().display().to_string();
                found.push((folder, get(META_FROM), get(META_TO), meta.num_rows()));
            }
        }
        found.sort_by_key(|f| f.1);
        found
    }

    #[test]
    fn a_day_boundary_splits_the_files_and_the_chain_has_no_gap() {
        let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // 100 entries, the last 40 the next UTC day.
        history(data.path(), DAY - 60 * SECOND, 100);
        let mut lake = lake(data.path(), dir.path());
        lake.step(Instant::now()).unwrap();
        let end = history::end_of(data.path(), 0).unwrap();
        let found = files(dir.path());
        let days: Vec<(&str, i64)> = found.iter().map(|f| (f.0.as_str(), f.3)).collect();
        assert_eq!(days, [("day=1970-01-01", 60), ("day=1970-01-02", 40)]);
        assert_eq!((found[0].1, found[0].2), (0, found[1].1));
        assert_eq!(found[1].2, end);
        // A restart goes on from the files: nothing to write again.
        assert_eq!(
            positions_of(&Store::Dir(dir.path().to_owned()), "test", 1, false).unwrap(),
            [end]
        );
    }

    #[test]
    fn an_hourly_lake_splits_at_the_hour_and_keeps_its_layout() {
        let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // 100 entries a second apart, the last 40 past 01:00 UTC.
        history(data.path(), 3_600 * SECOND - 60 * SECOND, 100);
        let mut lake = lake_by(data.path(), dir.path(), true);
        lake.step(Instant::now()).unwrap();
        let end = history::end_of(data.path(), 0).unwrap();
        let found = files(dir.path());
        let hours: Vec<(&str, i64)> = found.iter().map(|f| (f.0.as_str(), f.3)).collect();
        assert_eq!(
            hours,
            [
                ("day=1970-01-01/hour=00", 60),
                ("day=1970-01-01/hour=01", 40)
            ]
        );
        assert_eq!((found[0].1, found[0].2, found[1].2), (0, found[1].1, end));
        drop(lake);
        // Restarted by hour: on from the files. By day: refused, as the
        // two layouts in one lake would not read as one table.
        assert_eq!(
            positions_of(&Store::Dir(dir.path().to_owned()), "test", 1, true).unwrap(),
            [end]
        );
        let refused =
            positions_of(&Store::Dir(dir.path().to_owned()), "test", 1, false).unwrap_err();
        assert!(
            refused.to_string().contains("--lake-partition hour"),
            "{refused}"
        );
        // And a lake by day is refused to a server by hour.
        let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        history(data.path(), 0, 10);
        lake_by(data.path(), dir.path(), false)
            .step(Instant::now())
            .unwrap();
        let refused =
            positions_of(&Store::Dir(dir.path().to_owned()), "test", 1, true).unwrap_err();
        assert!(
            refused.to_string().contains("--lake-partition day"),
            "{refused}"
        );
    }

    #[test]
    fn history_the_retention_deleted_is_skipped_once_and_kept_in_the_chain() {
        let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        history(data.path(), 0, 100);
        // The lake has not read any of it when the retention deletes the
        // oldest segments: the first file spans them.
        let deleted = history::compact(data.path(), 0, Timestamp(50 * SECOND)).unwrap();
        assert!(deleted > 0);
        let mut lake = lake(data.path(), dir.path());
        let step = lake.step(Instant::now()).unwrap();
        assert!(step.skipped > 0);
        let found = files(dir.path());
        assert_eq!(found[0].1, 0, "the first file's span starts at 0");
        assert!(found[0].3 < 100, "only what is left is rows");
        let end = history::end_of(data.path(), 0).unwrap();
        assert_eq!(found.last().unwrap().2, end);
        // Restarted: nothing skipped again.
        drop(lake);
        let mut again = self::lake(data.path(), dir.path());
        assert_eq!(again.positions, [end]);
        assert_eq!(again.step(Instant::now()).unwrap().skipped, 0);
    }
}
