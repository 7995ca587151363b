//! The shell's limits and settings, each with its reason. The engine's own
//! limits live in `stockflow_core::limits`.

use std::path::PathBuf;

use stockflow_core::EngineConfig;

use crate::sources::Sources;

/// Everything a running engine needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub engine: EngineConfig,
    /// Largest request body (HTTP 413 above it). 16 MiB holds ~80k events.
    pub body_bytes_max: usize,
    /// Most events in one request; bounds the work a single request can ask.
    pub request_events_max: usize,
    /// Requests waiting for the sequencer before new ones get 503. Each is
    /// at most `body_bytes_max`, so this bounds queued memory.
    pub ingest_queue_max: usize,
    /// Ingest requests being read or parsed at once before new ones get 429.
    pub ingest_in_flight_max: usize,
    /// ... and at most this many bytes of their bodies (429 above): 512
    /// requests of the largest body would otherwise hold 8 GiB. 16 bodies
    /// of the largest size keep both cores parsing.
    pub ingest_bytes_in_flight_max: usize,
    /// Open HTTP connections; one more is closed at once (and logged).
    /// Below the usual 1,024 file descriptors a process gets, so that the
    /// log, the history files and Kafka's sockets still have theirs.
    pub connections_max: usize,
    /// Open HTTP connections from one client address; one more from it is
    /// closed at once (and logged), so one host cannot take every place.
    pub connections_per_address_max: usize,
    /// A request's head, and then its body, must each arrive within this
    /// (an idle keep-alive connection is closed after it too): a slow
    /// client cannot hold an ingest slot or a connection for long.
    pub read_timeout: std::time::Duration,
    /// Most events in one group commit (one log record, one fsync).
    pub group_events_max: usize,
    /// Most bytes (events' text, dead letters' payloads) gathered into one
    /// group commit before it closes: a refused body counts no events but
    /// up to three times its size once its invalid bytes are made text, so
    /// counting events alone let 70 such bodies exceed the log's 1 GiB
    /// record limit. A single submission (at most ~3 × the body limit) is
    /// always taken whole.
    pub group_bytes_max: usize,
    /// Writes are refused (507) while the data directory's filesystem has
    /// less free space than this: what is left is for checkpoints, history
    /// and a restart, so a full disk never stops the process or a start.
    pub disk_free_min_bytes: u64,
    /// A log segment is closed past this size.
    pub segment_bytes_max: u64,
    /// A checkpoint is taken after this many events (and at shutdown);
    /// restart replays at most this many events from the log.
    pub checkpoint_events: u64,
    /// Dead letters kept in memory for the API (all stay in the log).
    pub dead_letters_in_memory_max: usize,
    /// ... and at most this many bytes of them (payloads included).
    pub dead_letters_in_memory_bytes_max: usize,
    /// Threads applying events to partitions.
    pub apply_threads: usize,
    /// Source formats accepted at /v1/sources/{format}/events.
    pub sources: Sources,
    /// How long per-level history (and so `asOf`) reaches back, by server
    /// time; older history segments are deleted at checkpoints.
    pub history_retention_ns: i64,
    /// Hold of an order that does not say `holdSeconds`.
    pub order_hold_seconds: u64,
    /// Where lines without a location are reserved.
    pub sourcing: stockflow_core::orders::Sourcing,
    /// A price change lowering the price by at least this many percent is
    /// a PRICE_DROP alert.
    pub price_drop_percent: u8,
    /// Alert receivers.
    pub webhooks: Vec<Webhook>,
    /// Products (and initial stock) loaded at startup.
    pub catalog_file: Option<PathBuf>,
    /// Where a catalog file's `inventory` quantities are counted.
    pub catalog_location: String,
    /// Whether POST /v1/simulator/* may generate traffic (demo only by
    /// default: a production server must not invent sales).
    pub simulator: bool,
    /// The tokens callers must present (`serve --auth-file`); `None`:
    /// every caller is `anonymous`, with every role.
    pub auth: Option<std::sync::Arc<crate::auth::Tokens>>,
    /// Whether GET /metrics is open to anyone even with an auth file.
    pub metrics_open: bool,
    /// Kafka mode: what the instances present to each other.
    pub cluster_secret: Option<std::sync::Arc<crate::auth::ClusterSecret>>,
    /// The listener's certificate (`serve --tls-cert`); `None`: plain HTTP.
    pub tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    /// The roots outgoing https calls trust besides the system's.
    pub trust: crate::tls::Trust,
    /// Web origins (`https://shop.example`) whose pages may call the API
    /// (`serve --cors-origin`); none: only this server's own pages.
    pub cors_origins: Vec<String>,
    /// RabbitMQ queues to consume (`serve --amqp`).
    pub amqp: Option<Amqp>,
    /// The state of the links to other systems (shared by every clone).
    pub links: crate::links::Links,
    /// The PostgreSQL database the sink writes to (`serve
    /// --sink-postgres`); holds a password, so never logged.
    pub sink_postgres: Option<Secret>,
    /// Connections the sink writes with, each to its share of the
    /// partitions (`serve --sink-postgres-connections`).
    pub sink_postgres_connections: usize,
    /// The state of the sinks (shared by every clone).
    pub sinks: crate::sinks::Sinks,
    /// The Parquet lake the history is written to (`serve --lake`).
    pub lake: Option<Lake>,
}

/// `serve --lake DIR --lake-flush-seconds N`.
#[derive(Clone, Debug)]
pub struct Lake {
    pub dir: PathBuf,
    /// The oldest history not yet in a file may be this old.
    pub flush: std::time::Duration,
    /// A folder per UTC hour below each day's (`--lake-partition hour`).
    pub hourly: bool,
}

/// A setting that holds a secret (a URL with a password): `Debug` never
/// shows it.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            engine: EngineConfig::default(),
            body_bytes_max: 16 << 20,
            request_events_max: 100_000,
            ingest_queue_max: 256,
            ingest_in_flight_max: 512,
            ingest_bytes_in_flight_max: 256 << 20,
            connections_max: 768,
            connections_per_address_max: 512,
            read_timeout: std::time::Duration::from_secs(10),
            group_events_max: 50_000,
            group_bytes_max: 64 << 20,
            disk_free_min_bytes: 512 << 20,
            segment_bytes_max: 256 << 20,
            checkpoint_events: 2_000_000,
            dead_letters_in_memory_max: 100_000,
            dead_letters_in_memory_bytes_max: 64 << 20,
            apply_threads: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(4),
            sources: Sources::default(),
            history_retention_ns: 30 * 24 * 3600 * 1_000_000_000,
            order_hold_seconds: 15 * 60,
            sourcing: stockflow_core::orders::Sourcing::MostAvailable,
            webhooks: Vec::new(),
            price_drop_percent: 10,
            catalog_file: None,
            catalog_location: "ONLINE".into(),
            simulator: false,
            auth: None,
            metrics_open: false,
            cluster_secret: None,
            tls: None,
            trust: crate::tls::Trust::default(),
            cors_origins: Vec::new(),
            amqp: None,
            links: crate::links::Links::default(),
            sink_postgres: None,
            sink_postgres_connections: 1,
            sinks: crate::sinks::Sinks::default(),
            lake: None,
        }
    }
}

/// Where alerts are POSTed (`serve --webhook`), and the secret that signs them.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub url: String,
    /// Signs bodies when set.
    pub secret: Option<String>,
}

/// RabbitMQ ingest (`serve --amqp`): the broker, the queues and how many
/// unacknowledged messages each may hold.
#[derive(Clone)]
pub struct Amqp {
    /// `amqp://user:password@host:port/vhost`: holds a secret, so it is
    /// never logged (`Debug` leaves it out).
    pub url: String,
    pub queues: Vec<AmqpQueue>,
    /// Unacknowledged messages per queue at most (AMQP prefetch): bounds
    /// what a consumer holds in memory.
    pub prefetch: u16,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp")
            .field("url", &"<redacted>")
            .field("queues", &self.queues)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

/// A queue and the source format its messages are in.
#[derive(Clone, Debug)]
pub struct AmqpQueue {
    pub format: String,
    pub queue: String,
}
