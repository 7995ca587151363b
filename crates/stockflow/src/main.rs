//! The `stockflow` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use stockflow::bench::{self, BenchOptions};
use stockflow::server::Server;
use stockflow::simulate;
use stockflow_service::config::Config;

/// Real-time inventory engine: ingest stock events, keep exact per
/// SKU-location state (exactly once, durable), answer queries.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STOCKFLOW_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LakePartition {
    /// A folder per UTC day.
    Day,
    /// A folder per UTC hour, below its day's.
    Hour,
}

#[derive(Clone, Copy, ValueEnum)]
enum Scenario {
    /// Realistic POS/WMS/e-commerce mix at the given rate.
    Random,
    /// A fixed small scenario whose results are checked (see README).
    Controlled,
}

#[derive(Clone, Copy, ValueEnum)]
enum BenchMode {
    /// The write path without HTTP: parse, dedup, log, fsync, apply.
    Engine,
    /// Ingest over HTTP, event→queryable latency, and level and roll-up
    /// reads.
    Http,
    /// Orders with other traffic flowing.
    Orders,
    /// Live stream delivery to 1,000 subscribers.
    Stream,
    /// `import --data-dir` of a canonical NDJSON file into an empty data
    /// directory, file to final state.
    Import,
    /// One instance through a Kafka broker (needs --kafka), then a restore
    /// from the changelog; compared with the embedded engine path.
    /// `--kafka mock` runs librdkafka's in-process mock cluster, which has
    /// transactions (add --kafka-transactions).
    Kafka,
    /// Orders through a Kafka broker (needs --kafka): 3-line sagas across
    /// partitions, one at a time and from 50 clients at once.
    KafkaOrders,
    /// Every embedded mode (not kafka).
    All,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at startup
enum Command {
    /// Run the server on a data directory.
    Serve {
        /// Where the log and checkpoints live (created if missing).
        #[arg(long, default_value = "./stockflow-data", env = "STOCKFLOW_DATA_DIR")]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "STOCKFLOW_LISTEN")]
        listen: SocketAddr,
        /// State partitions; fixed when the data directory is created.
        /// Embedded mode only (Kafka mode: --kafka-partitions).
        #[arg(long, conflicts_with = "kafka", default_value_t = stockflow_core::limits::PARTITIONS_DEFAULT, value_parser = clap::value_parser!(u16).range(1..=stockflow_core::limits::PARTITIONS_MAX as i64))]
        partitions: u16,
        /// Largest accepted request body in bytes (413 above).
        #[arg(long, default_value_t = 16 << 20)]
        body_limit_bytes: usize,
        /// Open HTTP connections at most; one more is closed at once.
        #[arg(long, default_value_t = 768, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        connections_max: u64,
        /// Open HTTP connections from one client address at most; one more
        /// from it is closed at once. Behind a proxy (every client has its
        /// address) set it to --connections-max.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        connections_per_address_max: u64,
        /// A request's head, then its body, must each arrive within this
        /// many seconds (408 for a late body); an idle connection is closed
        /// after it too.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
        read_timeout_seconds: u64,
        /// Bytes of ingest bodies being read or parsed at once, at most
        /// (429 above); bounds the memory bodies take.
        #[arg(long, default_value_t = 256 << 20)]
        ingest_bytes_in_flight_max: usize,
        /// Refuse writes (507, Retry-After) while the data directory's disk
        /// has less free space than this; they resume by themselves.
        /// Embedded mode only: in Kafka mode the brokers keep the events.
        #[arg(long, conflicts_with = "kafka", default_value_t = 512 << 20)]
        disk_free_min_bytes: u64,
        /// Take a checkpoint after this many events (restart replays at most this many).
        /// Embedded mode only (Kafka mode: --changelog-snapshot-every).
        #[arg(long, conflicts_with = "kafka", default_value_t = 2_000_000)]
        checkpoint_events: u64,
        /// How long eventIds are remembered for deduplication, in hours.
        #[arg(long, default_value_t = 7 * 24)]
        dedup_retention_hours: u32,
        /// A directory of mapping files (*.json) adding source formats to
        /// the built-ins; see GET /v1/sources for the built-ins' mappings.
        #[arg(long, env = "STOCKFLOW_SOURCES")]
        sources: Option<PathBuf>,
        /// How far back per-level history and `asOf` answers reach, in days.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
        history_retention_days: u32,
        /// Where order lines without a location are reserved:
        /// `most-available`, or `priority:LOC1,LOC2,…` (those locations, in
        /// that order). Lines may be split over locations either way.
        #[arg(long, default_value = "most-available", value_parser = parse_sourcing)]
        sourcing: stockflow_core::orders::Sourcing,
        /// How long an order holds its units when it does not say
        /// (`holdSeconds`), and the hold of an order that an event
        /// (RESERVATION with a correlationId) creates or adds to.
        #[arg(long, default_value_t = 15 * 60, value_parser = clap::value_parser!(u64).range(1..=stockflow_core::limits::HOLD_SECONDS_MAX))]
        order_hold_seconds: u64,
        /// A price cut of at least this many percent is a PRICE_DROP alert.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(1..=99))]
        price_drop_percent: u8,
        /// A level with no change for this long raises a STALE alert (0: never).
        #[arg(long, default_value_t = 3600)]
        stale_after_seconds: u32,
        /// This many reservations refused for lack of stock within
        /// --reservation-burst-seconds raise RESERVATION_REJECTED (0: never).
        #[arg(long, default_value_t = 5)]
        reservation_burst: u32,
        /// The window of a refusal burst, and the quiet time that clears it.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
        reservation_burst_seconds: u32,
        /// POST every alert to this URL (repeatable), with retries. In
        /// Kafka mode each alert is sent by one member of the group.
        #[arg(long = "webhook")]
        webhooks: Vec<String>,
        /// Sign webhook bodies: X-Stockflow-Signature = sha256=HMAC-SHA256(secret, body).
        #[arg(long, env = "STOCKFLOW_WEBHOOK_SECRET")]
        webhook_secret: Option<String>,
        /// Products to load at startup: a JSON array or NDJSON, in
        /// stockflow's shape or KartShoppe's ({productId, …, inventory}).
        /// Starting again with the same file changes nothing.
        #[arg(long, env = "STOCKFLOW_CATALOG")]
        catalog: Option<PathBuf>,
        /// Where the catalog file's `inventory` is counted.
        #[arg(long, default_value = "ONLINE")]
        catalog_location: String,
        /// Let the dashboard's simulator page (POST /v1/simulator/*) send
        /// random and scenario traffic into this server. Off by default:
        /// a production server must not invent sales.
        #[arg(long)]
        simulator: bool,
        /// Tokens callers must present (JSON Lines of name, roles and the
        /// SHA-256 of the secret, as `stockflow token create` writes them);
        /// reloaded on SIGHUP. Needed on a --listen address other machines
        /// can reach, unless --insecure-no-auth.
        #[arg(long, env = "STOCKFLOW_AUTH_FILE", help_heading = "Access")]
        auth_file: Option<PathBuf>,
        /// Listen where other machines can reach without an auth file:
        /// anyone who reaches the port may read and write.
        #[arg(long, conflicts_with = "auth_file", help_heading = "Access")]
        insecure_no_auth: bool,
        /// Let anyone scrape GET /metrics even with an auth file (otherwise
        /// it needs a token with the `metrics` role).
        #[arg(long, help_heading = "Access")]
        metrics_without_auth: bool,
        /// Let pages of this web origin (`https://shop.example.com`) call
        /// the API from a browser; repeat for more. None: only this
        /// server's own pages.
        #[arg(long = "cors-origin", value_parser = stockflow_http::guard::parse_origin, help_heading = "Access")]
        cors_origins: Vec<String>,
        /// Serve HTTPS (HTTP/1.1 and HTTP/2) with this PEM certificate
        /// chain; reread with --tls-key on SIGHUP.
        #[arg(
            long,
            env = "STOCKFLOW_TLS_CERT",
            requires = "tls_key",
            help_heading = "TLS"
        )]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(
            long,
            env = "STOCKFLOW_TLS_KEY",
            requires = "tls_cert",
            help_heading = "TLS"
        )]
        tls_key: Option<PathBuf>,
        /// PEM certificates that outgoing https calls (webhooks, other
        /// instances) trust besides the system's roots: a private CA.
        #[arg(long, env = "STOCKFLOW_TLS_CA_FILE", help_heading = "TLS")]
        tls_ca_file: Option<PathBuf>,
        /// Let clients sign in with a certificate this PEM CA signed: the
        /// common name of its subject is the name of the auth file's token
        /// whose roles they get (clients without one still use tokens).
        #[arg(long, env = "STOCKFLOW_TLS_CLIENT_CA", requires_all = ["tls_cert", "auth_file"], help_heading = "TLS")]
        tls_client_ca: Option<PathBuf>,
        #[command(flatten, next_help_heading = "RabbitMQ ingest")]
        amqp: AmqpArgs,
        /// Keep PostgreSQL tables of the levels, their history, the orders
        /// and the alerts in this database
        /// (postgres://user:password@host:5432/database; the tables are
        /// created if missing, the database must exist): each batch one
        /// transaction with the sink's position, so they catch up exactly
        /// after a crash of either side. Status: GET /v1/sinks. In Kafka
        /// mode (needs --kafka-transactions) each instance sinks the
        /// partitions it owns.
        #[arg(
            long,
            env = "STOCKFLOW_SINK_POSTGRES",
            hide_env_values = true,
            help_heading = "Sinks"
        )]
        sink_postgres: Option<String>,
        /// Connections the PostgreSQL sink writes with, each to its share
        /// of the partitions: PostgreSQL runs each connection on one core,
        /// so give it the cores the database has to spare (more take them
        /// from ingest when the database shares this host). Kafka mode:
        /// one per instance.
        #[arg(
            long,
            env = "STOCKFLOW_SINK_POSTGRES_CONNECTIONS",
            default_value_t = 1,
            value_parser = clap::value_parser!(u16).range(1..=16),
            help_heading = "Sinks"
        )]
        sink_postgres_connections: u16,
        /// Write every history entry (applied or rejected event, with the
        /// level after it) as Parquet files in this directory, one
        /// folder per UTC day (`day=YYYY-MM-DD`); files appear whole
        /// (written, then renamed) and a restart goes on where the last
        /// file ended. Or an S3-compatible bucket, s3://bucket/prefix
        /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION;
        /// AWS_ENDPOINT for one that is not AWS, and AWS_ALLOW_HTTP=true
        /// if that is http://).
        /// Status: GET /v1/sinks. In Kafka mode (needs
        /// --kafka-transactions) every instance writes the partitions it
        /// owns into the same lake.
        #[arg(
            long,
            env = "STOCKFLOW_LAKE",
            value_name = "DIR|S3_URL",
            help_heading = "Sinks"
        )]
        lake: Option<PathBuf>,
        /// The longest an event waits for its lake file: history is
        /// written to a file once it is this old (or fills a file).
        #[arg(
            long,
            env = "STOCKFLOW_LAKE_FLUSH_SECONDS",
            default_value_t = 60,
            value_parser = clap::value_parser!(u64).range(1..=86_400),
            requires = "lake",
            help_heading = "Sinks"
        )]
        lake_flush_seconds: u64,
        /// The lake's folders: one per UTC day (`day=YYYY-MM-DD`), or also
        /// one per hour below it (`day=YYYY-MM-DD/hour=HH`) for a lake
        /// that takes millions of events an hour. Fixed for a lake: a
        /// server refuses one laid out the other way.
        #[arg(
            long,
            env = "STOCKFLOW_LAKE_PARTITION",
            value_enum,
            default_value_t = LakePartition::Day,
            help_heading = "Sinks"
        )]
        lake_partition: LakePartition,
        #[command(flatten, next_help_heading = "Kafka mode (with --kafka)")]
        kafka: KafkaArgs,
    },
    /// Manage the tokens of an auth file (`serve --auth-file`).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Manage the Kafka topics of Kafka mode.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Import a file in any source format, with progress and a summary.
    ///
    /// Into a running server (--url) or into a data directory no server is
    /// using (--data-dir). Re-importing a file changes nothing: eventIds
    /// are kept or derived deterministically.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["url", "data_dir"])))]
    Import {
        /// NDJSON, a JSON array, or CSV with a header row.
        file: PathBuf,
        /// The file's format: canonical (the API's events), or a source
        /// format: store-item, inventory-event, order-line, order-placed,
        /// order-cancelled, csv, erp-snapshot, or one of --sources (GET
        /// /v1/sources describes each).
        #[arg(long)]
        format: String,
        /// Send to this server (http://host:port).
        #[arg(long, value_parser = parse_url)]
        url: Option<String>,
        /// Write into this data directory (the server must be stopped).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Format parameters, e.g. --param locationId=STORE-7 for order-line.
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// A directory of extra mapping files, as for `serve --sources`.
        #[arg(long, env = "STOCKFLOW_SOURCES")]
        sources: Option<PathBuf>,
    },
    /// Start a server with a demo catalog and live simulated traffic.
    Demo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Keep the demo's data here (default: a temporary directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Simulated events per second (0: start with no traffic).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..=stockflow_http::simulator::RATE_MAX as i64))]
        rate: u32,
    },
    /// Send simulated traffic to a running server.
    Simulate {
        /// The server to send to.
        #[arg(long, default_value = "http://127.0.0.1:8080", value_parser = parse_url)]
        url: String,
        /// Events per second (0: none).
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Which traffic to send.
        #[arg(long, value_enum, default_value_t = Scenario::Random)]
        scenario: Scenario,
        /// Seed for the random scenario (eventIds include it).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Move a damaged part of the log aside (kept under
    /// <data-dir>/damaged/) so that the server can start, and list exactly
    /// the eventIds lost. Run it, with the server stopped, when a start
    /// refuses a damaged log.
    Repair {
        /// The data directory whose log to repair (its server stopped).
        #[arg(long, default_value = "./stockflow-data", env = "STOCKFLOW_DATA_DIR")]
        data_dir: PathBuf,
        /// Only report what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Verify a running server's invariants: every live order's holds are
    /// backed by reservations, and every roll-up equals its levels. Exits 1
    /// on any violation.
    Check {
        /// The server to check.
        #[arg(long, default_value = "http://127.0.0.1:8080", value_parser = parse_url)]
        url: String,
        /// Also require reserved = Σ holds exactly (every reservation was
        /// made through an order).
        #[arg(long)]
        strict: bool,
        /// Print the server's whole report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the HTTP API's OpenAPI document (what a server serves at
    /// /v1/openapi.json), to generate a client without running one: as a
    /// server with --auth-file serves it, with the role each operation
    /// needs.
    Openapi {
        /// As a server without an auth file serves it: every operation open.
        #[arg(long)]
        without_auth: bool,
    },
    /// Measure throughput and latency on a temporary data directory.
    Bench {
        /// What to measure.
        #[arg(long, value_enum, default_value_t = BenchMode::All)]
        mode: BenchMode,
        /// Events to send.
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        /// Distinct SKU-location levels.
        #[arg(long, default_value_t = 200_000)]
        levels: usize,
        /// Concurrent HTTP clients.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Seconds of the paced event→queryable run at 100k events/s (20 s
        /// holds one checkpoint interval at the default 2M events).
        #[arg(long, default_value_t = 20)]
        paced_seconds: u64,
        #[command(
            flatten,
            next_help_heading = "Kafka modes (--mode kafka, kafka-orders)"
        )]
        kafka: KafkaArgs,
    },
}

/// `import` took the file but refused some of its messages (kept as dead
/// letters): exit code 3, so a script can tell it from a failure (1).
#[derive(Debug)]
struct PartlyRefused(u64);

impl std::fmt::Display for PartlyRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} messages refused: their reasons are above and in /v1/dead-letters",
            self.0
        )
    }
}

impl std::error::Error for PartlyRefused {}

/// Exit codes: 0 done, 1 failed (the error says why), 2 the command line
/// was wrong (clap's), 3 `import` refused messages.
fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // lapin reports each failed RabbitMQ connection at ERROR from its IO
    // loop, every retry; `amqp` says it once per attempt at WARN with the
    // reason, so lapin's own are only for RUST_LOG to ask for.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,lapin=off".into());
    // Colour only for a person at a terminal, never into a file or pipe.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(|| Unfailing(std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli.command)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is::<PartlyRefused>() => {
            eprintln!("{e}");
            std::process::ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A server's standard output and error may be files on the disk that
/// fills up: a line that cannot be written is lost, the server goes on
/// (`println!` and tracing's own fallback `eprintln!` would panic).
struct Unfailing<W>(W);

impl<W: std::io::Write> std::io::Write for Unfailing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// A line on standard output that is lost, not fatal, if it cannot be written.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(Unfailing(std::io::stdout()), "{line}");
}

fn parse_sourcing(text: &str) -> Result<stockflow_core::orders::Sourcing, String> {
    use stockflow_core::orders::Sourcing;
    match text.strip_prefix("priority:") {
        _ if text == "most-available" => Ok(Sourcing::MostAvailable),
        Some(list) if !list.is_empty() => Ok(Sourcing::Priority(
            list.split(',')
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect(),
        )),
        _ => Err(format!(
            "{text:?} is not most-available or priority:LOC1,LOC2"
        )),
    }
}

/// Kafka mode: with --kafka, the server joins a consumer group and uses
/// the cluster as its log instead of the data directory's.
#[derive(clap::Args, Debug)]
struct KafkaArgs {
    /// Run in Kafka mode against these bootstrap servers (host:port,…).
    #[arg(long, env = "STOCKFLOW_KAFKA")]
    kafka: Option<String>,
    /// The consumer group of the instances sharing the work.
    #[arg(long, default_value = "stockflow", requires = "kafka")]
    group: String,
    /// Topic names start with this (`{prefix}.events.canonical`, …).
    #[arg(long, default_value = stockflow_kafka::TOPIC_PREFIX_DEFAULT, value_parser = stockflow_kafka::parse_topic_prefix)]
    topic_prefix: String,
    /// The secret the instances present to each other (a file holding
    /// at least 32 characters, the same for every instance; e.g.
    /// `openssl rand -hex 32 > FILE`). Needed with --auth-file.
    #[arg(long, env = "STOCKFLOW_CLUSTER_SECRET_FILE", requires = "kafka")]
    cluster_secret_file: Option<PathBuf>,
    /// A librdkafka property passed through, e.g. security.protocol=SASL_SSL (repeatable).
    #[arg(long = "kafka-config", value_parser = parse_param, requires = "kafka")]
    kafka_config: Vec<(String, String)>,
    /// A file of librdkafka properties, one NAME=VALUE per line (# for
    /// comments): for secrets such as sasl.password, which a command line
    /// shows to every user of the machine. --kafka-config wins over it.
    #[arg(long, env = "STOCKFLOW_KAFKA_CONFIG_FILE", requires = "kafka")]
    kafka_config_file: Option<PathBuf>,
    /// Partitions of the canonical, repartition and changelog topics.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u16).range(1..=1024))]
    kafka_partitions: u16,
    /// Read an existing topic as a raw topic of a source format
    /// (TOPIC=FORMAT, e.g. raw.store=store-item), beside
    /// `{prefix}.events.raw.{format}`: producers keep their topic names
    /// (repeatable; not created by `topics create`).
    #[arg(long = "raw-topic", value_name = "TOPIC=FORMAT", value_parser = stockflow_kafka::parse_raw_topic, requires = "kafka")]
    raw_topic: Vec<(String, String)>,
    /// The URL other instances forward queries to (default: the listen address).
    #[arg(long, requires = "kafka")]
    advertise: Option<String>,
    /// Longest wait for a processing cycle's input, in ms (the commit interval).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    commit_interval_ms: u64,
    /// Commit each cycle's outputs, changelog records and offsets in one
    /// Kafka transaction (Apache Kafka, Redpanda). Leave off for brokers
    /// without transactions (tansu): exactly-once then rests on the
    /// positions in the changelog records.
    #[arg(long, requires = "kafka")]
    kafka_transactions: bool,
    /// Write each partition's state into its changelog after this many
    /// applied records (and tombstone what it covers): bounds the
    /// changelog and a new owner's restore.
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1..))]
    changelog_snapshot_every: u64,
}

impl KafkaArgs {
    fn settings(&self, bootstrap: &str) -> anyhow::Result<stockflow_kafka::KafkaSettings> {
        let mut settings = stockflow_kafka::KafkaSettings::new(bootstrap);
        settings.group = self.group.clone();
        settings.topics = stockflow_kafka::Topics::named(&self.topic_prefix);
        settings.topics.raw_topics = self.raw_topic.clone();
        settings.extra = kafka_properties(self.kafka_config_file.as_deref(), &self.kafka_config)?;
        settings.partitions = self.kafka_partitions;
        settings.commit_interval = Duration::from_millis(self.commit_interval_ms);
        settings.transactions = self.kafka_transactions;
        settings.changelog_snapshot_every = self.changelog_snapshot_every;
        Ok(settings)
    }
}

/// The librdkafka properties of `--kafka-config-file`, then of each
/// `--kafka-config` (a later one wins).
fn kafka_properties(
    file: Option<&std::path::Path>,
    given: &[(String, String)],
) -> anyhow::Result<stockflow_kafka::Properties> {
    let mut properties = match file {
        Some(file) => stockflow_kafka::Properties::read_file(file)?,
        None => stockflow_kafka::Properties::default(),
    };
    properties.extend(given.iter().cloned());
    Ok(properties)
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Add a token to the auth file (created with mode 0600 if missing)
    /// and print its secret on stdout, once: it is kept nowhere else. A
    /// running server takes it on SIGHUP.
    Create {
        /// Who holds it; recorded as the author of what it changes.
        #[arg(long)]
        name: String,
        /// read, ingest, orders, admin or metrics (repeatable).
        #[arg(long = "role", required = true, value_parser = parse_role)]
        roles: Vec<stockflow_service::auth::Role>,
        /// The auth file `serve --auth-file` reads (JSON Lines; remove a
        /// token by deleting its line, then SIGHUP the server).
        #[arg(long, env = "STOCKFLOW_AUTH_FILE")]
        auth_file: PathBuf,
    },
}

fn parse_role(text: &str) -> Result<stockflow_service::auth::Role, String> {
    stockflow_service::auth::Role::parse(text)
        .ok_or_else(|| format!("{text:?} is not read, ingest, orders, admin or metrics"))
}

#[derive(Subcommand, Debug)]
enum TopicsAction {
    /// Create every topic Kafka mode uses (existing ones are left alone).
    Create {
        /// Bootstrap servers.
        #[arg(long, env = "STOCKFLOW_KAFKA")]
        kafka: String,
        /// A librdkafka property passed through, e.g.
        /// security.protocol=SASL_SSL (repeatable).
        #[arg(long = "kafka-config", value_parser = parse_param)]
        kafka_config: Vec<(String, String)>,
        /// A file of librdkafka properties, one NAME=VALUE per line (as
        /// `serve --kafka-config-file`).
        #[arg(long, env = "STOCKFLOW_KAFKA_CONFIG_FILE")]
        kafka_config_file: Option<PathBuf>,
        /// Topic names start with this (`{prefix}.events.canonical`, …).
        #[arg(long, default_value = stockflow_kafka::TOPIC_PREFIX_DEFAULT, value_parser = stockflow_kafka::parse_topic_prefix)]
        topic_prefix: String,
        /// Partitions of the partitioned topics (what `serve --kafka`
        /// calls `--kafka-partitions`; fixed once created).
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u16).range(1..=1024))]
        partitions: u16,
        /// Copies of each partition the brokers keep (at most the number
        /// of brokers).
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
        /// A directory of extra source formats (a raw topic is made for each).
        #[arg(long, env = "STOCKFLOW_SOURCES")]
        sources: Option<PathBuf>,
    },
}

/// A server's URL: a scheme is required (`127.0.0.1:8080` would be taken
/// for a URL of scheme `127.0.0.1`).
fn parse_url(text: &str) -> Result<String, String> {
    if !text.contains("://") {
        return Err(format!(
            "{text} has no scheme: did you mean http://{text} ?"
        ));
    }
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text} is not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(text.to_owned()),
        other => Err(format!(
            "{text}: the scheme must be http or https, not {other}"
        )),
    }
}

/// `check`'s answer for a person: the verdict, what was looked at, and
/// each problem on its own line.
fn verdict(url: &str, strict: bool, report: &serde_json::Value) -> String {
    let n = |field: &str| report[field].as_u64().unwrap_or(0);
    let unheld = if strict {
        "levels reserve units no live order holds (refused with --strict)"
    } else {
        "levels reserve units no live order holds (allowed without --strict)"
    };
    let strict = if strict { " (strict)" } else { "" };
    let mut out = match report["ok"] == true {
        true => format!("{url}: the books hold together{strict}"),
        false => format!("{url}: the books do not hold together{strict}"),
    };
    let mut facts = vec![format!(
        "{} levels and {} live orders checked",
        n("levels"),
        n("liveOrders")
    )];
    for (field, what) in [
        (
            "holdViolations",
            "levels whose reserved units and orders' holds disagree",
        ),
        ("rollupMismatches", "roll-ups differ from their levels"),
        ("reservationsNotHeldByOrders", unheld),
    ] {
        if n(field) > 0 {
            facts.push(format!("{} {what}", n(field)));
        }
    }
    out.push_str(&format!("\n  {}", facts.join("; ")));
    for problem in report["problems"].as_array().into_iter().flatten() {
        out.push_str(&format!("\n  - {}", problem.as_str().unwrap_or_default()));
    }
    out
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

/// `serve --amqp`: the RabbitMQ queues to consume.
#[derive(clap::Args)]
struct AmqpArgs {
    /// Consume RabbitMQ queues at this broker
    /// (amqp://user:password@host:5672/vhost, `%2f` for the default vhost).
    /// Each message is acknowledged once its events are durable; one that
    /// cannot be read becomes a dead letter (source `amqp:FORMAT:QUEUE`)
    /// and is acknowledged too.
    #[arg(
        long,
        env = "STOCKFLOW_AMQP_URL",
        requires = "amqp_queues",
        hide_env_values = true
    )]
    amqp: Option<String>,
    /// FORMAT=QUEUE: consume QUEUE, its messages in FORMAT (a source
    /// format of GET /v1/sources, or `canonical`); repeat for more. A
    /// queue that does not exist is declared durable. A format's
    /// parameters (e.g. locationId) come from the message's headers.
    #[arg(long = "amqp-queue", value_parser = parse_amqp_queue, requires = "amqp")]
    amqp_queues: Vec<stockflow_service::config::AmqpQueue>,
    /// Unacknowledged messages per queue at most (bounds what is held in
    /// memory; a larger value makes larger commits).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    amqp_prefetch: u16,
}

impl AmqpArgs {
    fn settings(self) -> Option<stockflow_service::config::Amqp> {
        Some(stockflow_service::config::Amqp {
            url: self.amqp?,
            queues: self.amqp_queues,
            prefetch: self.amqp_prefetch,
        })
    }
}

fn parse_amqp_queue(text: &str) -> Result<stockflow_service::config::AmqpQueue, String> {
    match text.split_once('=') {
        Some((format, queue)) if !format.is_empty() && !queue.is_empty() => {
            Ok(stockflow_service::config::AmqpQueue {
                format: format.to_owned(),
                queue: queue.to_owned(),
            })
        }
        _ => Err(format!(
            "{text:?} is not FORMAT=QUEUE (e.g. store-item=stores.raw)"
        )),
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            data_dir,
            listen,
            partitions,
            body_limit_bytes,
            connections_max,
            connections_per_address_max,
            read_timeout_seconds,
            disk_free_min_bytes,
            ingest_bytes_in_flight_max,
            checkpoint_events,
            dedup_retention_hours,
            sources,
            catalog,
            catalog_location,
            history_retention_days,
            webhooks,
            webhook_secret,
            price_drop_percent,
            sourcing,
            order_hold_seconds,
            stale_after_seconds,
            reservation_burst,
            reservation_burst_seconds,
            simulator,
            auth_file,
            insecure_no_auth,
            metrics_without_auth,
            cors_origins,
            tls_cert,
            tls_key,
            tls_ca_file,
            tls_client_ca,
            amqp,
            sink_postgres,
            sink_postgres_connections,
            lake,
            lake_flush_seconds,
            lake_partition,
            kafka,
        } => {
            let mut config = Config::new(data_dir);
            config.amqp = amqp.settings();
            config.sink_postgres = sink_postgres.map(stockflow_service::config::Secret);
            config.sink_postgres_connections = sink_postgres_connections.into();
            config.lake = lake.map(|dir| stockflow_service::config::Lake {
                dir,
                flush: std::time::Duration::from_secs(lake_flush_seconds),
                hourly: matches!(lake_partition, LakePartition::Hour),
            });
            config.metrics_open = metrics_without_auth;
            config.cors_origins = cors_origins;
            if let Some(file) = &kafka.cluster_secret_file {
                config.cluster_secret = Some(stockflow_service::auth::ClusterSecret::load(file)?);
            }
            config.auth = access(auth_file.as_deref(), listen, insecure_no_auth, &kafka)?;
            if let (Some(cert), Some(key)) = (&tls_cert, &tls_key) {
                config.tls = Some(stockflow_service::tls::ServerTls::with_client_ca(
                    cert,
                    key,
                    tls_client_ca.as_deref(),
                )?);
            } else if config.auth.is_some() && !listen.ip().is_loopback() {
                tracing::warn!(%listen, "tokens cross the network in clear text: give --tls-cert and --tls-key");
                if config.cluster_secret.is_some() {
                    tracing::warn!(%listen, "the cluster secret crosses the network in clear text to the other instances: give every instance --tls-cert and --tls-key");
                }
            }
            if let Some(file) = &tls_ca_file {
                config.trust = stockflow_service::tls::Trust::load(file)?;
            }
            reload_on_sighup(config.auth.clone(), config.tls.clone());
            config.simulator = simulator;
            config.history_retention_ns =
                i64::from(history_retention_days) * 24 * 3600 * 1_000_000_000;
            config.catalog_file = catalog;
            config.price_drop_percent = price_drop_percent;
            config.sourcing = sourcing;
            config.order_hold_seconds = order_hold_seconds;
            config.webhooks = webhooks
                .into_iter()
                .map(|url| stockflow_service::config::Webhook {
                    url,
                    secret: webhook_secret.clone(),
                })
                .collect();
            config.catalog_location = catalog_location;
            if let Some(dir) = sources {
                config.sources = stockflow_service::sources::Sources::with_dir(&dir)?;
            }
            config.engine.partitions = partitions;
            config.body_bytes_max = body_limit_bytes;
            config.connections_max = connections_max as usize;
            config.connections_per_address_max = connections_per_address_max as usize;
            config.read_timeout = Duration::from_secs(read_timeout_seconds);
            config.disk_free_min_bytes = disk_free_min_bytes;
            config.ingest_bytes_in_flight_max = ingest_bytes_in_flight_max;
            config.checkpoint_events = checkpoint_events.max(1);
            config.engine.dedup_retention_ns =
                i64::from(dedup_retention_hours) * 3600 * 1_000_000_000;
            config.engine.timers = stockflow_core::alerts::TimerRules {
                stale_after_ns: i64::from(stale_after_seconds) * 1_000_000_000,
                burst_rejections: reservation_burst,
                burst_window_ns: i64::from(reservation_burst_seconds) * 1_000_000_000,
            };
            if let Some(bootstrap) = &kafka.kafka {
                let settings = kafka.settings(bootstrap)?;
                let server = stockflow_kafka::KafkaServer::start(
                    settings,
                    config,
                    listen,
                    kafka.advertise.clone(),
                )
                .await?;
                say(format_args!(
                    "stockflow listening on {} in Kafka mode (group {}, instance {})",
                    server.url(),
                    kafka.group,
                    server.instance_id
                ));
                stockflow::shutdown_signal().await;
                return server.stop().await;
            }
            let server = Server::start(config, listen).await?;
            say(format_args!(
                "stockflow listening on {url} (dashboard: {url}/)",
                url = server.url()
            ));
            stockflow::shutdown_signal().await;
            server.stop().await
        }
        Command::Token {
            action:
                TokenAction::Create {
                    name,
                    roles,
                    auth_file,
                },
        } => {
            let secret = stockflow_service::auth::create(&auth_file, &name, &roles)?;
            say(format_args!("{secret}"));
            eprintln!(
                "token {name:?} added to {}; a running server takes it on SIGHUP",
                auth_file.display()
            );
            Ok(())
        }
        Command::Import {
            file,
            format,
            url,
            data_dir,
            params,
            sources,
        } => {
            let sources = match sources {
                Some(dir) => stockflow_service::sources::Sources::with_dir(&dir)?,
                None => stockflow_service::sources::Sources::default(),
            };
            let target = match (url, data_dir) {
                (Some(url), _) => stockflow::import::Target::Url(url),
                (None, Some(dir)) => stockflow::import::Target::DataDir(dir),
                (None, None) => bail!("say where to import: --url URL or --data-dir DIR"),
            };
            let params = params.into_iter().collect();
            let summary = stockflow::import::run(&file, &format, target, params, sources).await?;
            if summary.rejected > 0 {
                return Err(PartlyRefused(summary.rejected).into());
            }
            Ok(())
        }
        Command::Demo {
            listen,
            data_dir,
            rate,
        } => stockflow::demo::run(listen, data_dir, rate).await,
        Command::Topics {
            action:
                TopicsAction::Create {
                    kafka,
                    kafka_config,
                    kafka_config_file,
                    topic_prefix,
                    partitions,
                    replication_factor,
                    sources,
                },
        } => {
            let mut settings = stockflow_kafka::KafkaSettings::new(kafka);
            settings.topics = stockflow_kafka::Topics::named(&topic_prefix);
            settings.extra = kafka_properties(kafka_config_file.as_deref(), &kafka_config)?;
            settings.partitions = partitions;
            let sources = match sources {
                Some(dir) => stockflow_service::sources::Sources::with_dir(&dir)?,
                None => stockflow_service::sources::Sources::default(),
            };
            let formats = sources.names().map(str::to_owned).collect();
            let (created, existing) =
                stockflow_kafka::topics::create(&settings, replication_factor, formats).await?;
            for name in &created {
                println!("created  {name}");
            }
            for name in &existing {
                println!("exists   {name}");
            }
            Ok(())
        }
        Command::Simulate {
            url,
            rate,
            duration,
            scenario,
            seed,
        } => {
            let url = url.trim_end_matches('/').to_owned();
            match scenario {
                Scenario::Random => {
                    let seed = seed.unwrap_or_else(rand::random);
                    let totals =
                        simulate::random(&url, rate, Duration::from_secs(duration), seed, false)
                            .await?;
                    println!(
                        "seed {seed:x}: sent {} events: accepted {}, duplicates {}, rejected {}",
                        totals.sent, totals.accepted, totals.duplicates, totals.rejected
                    );
                    Ok(())
                }
                Scenario::Controlled => {
                    let (totals, mismatches) = simulate::controlled(&url).await?;
                    println!(
                        "accepted {}, duplicates {}, rejected {}",
                        totals.accepted, totals.duplicates, totals.rejected
                    );
                    if !mismatches.is_empty() {
                        bail!(
                            "controlled scenario differs from the documented results:\n{}",
                            mismatches.join("\n")
                        );
                    }
                    println!("all levels as documented");
                    Ok(())
                }
            }
        }
        Command::Repair { data_dir, dry_run } => {
            let repaired = stockflow_embedded::repair::repair(&data_dir, dry_run)?;
            print!("{}", repaired.report);
            Ok(())
        }
        Command::Check { url, strict, json } => {
            let url = url.trim_end_matches('/');
            let response = reqwest::get(format!("{url}/v1/check?strict={strict}"))
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot reach {url}: {e}; is `stockflow serve` running?")
                })?;
            let status = response.status();
            let report: serde_json::Value = response.json().await?;
            if !status.is_success() {
                bail!(
                    "{url} cannot be checked now ({status}): {}",
                    report["message"].as_str().unwrap_or("no reason given")
                );
            }
            match json {
                true => println!("{}", serde_json::to_string_pretty(&report)?),
                false => println!("{}", verdict(url, strict, &report)),
            }
            if report["ok"] != true {
                bail!("the books do not hold together (the problems are listed above)");
            }
            Ok(())
        }
        Command::Openapi { without_auth } => {
            say(format_args!(
                "{}",
                stockflow_http::openapi::document(!without_auth)
            ));
            Ok(())
        }
        Command::Bench {
            mode,
            events,
            levels,
            clients,
            paced_seconds,
            kafka,
        } => {
            let options = BenchOptions {
                events,
                levels,
                engine_batch: 10_000,
                http_batch: 1_000,
                clients,
                paced_seconds,
            };
            if matches!(mode, BenchMode::Engine | BenchMode::All) {
                tokio::task::spawn_blocking(move || bench::engine(&options)).await??;
            }
            if matches!(mode, BenchMode::Kafka | BenchMode::KafkaOrders) {
                let Some(bootstrap) = kafka.kafka.as_deref() else {
                    bail!("--mode kafka needs --kafka BOOTSTRAP (a broker it may create bench-* topics on), or --kafka mock");
                };
                let mock = (bootstrap == "mock")
                    .then(|| rdkafka::mocking::MockCluster::new(1))
                    .transpose()?;
                let bootstrap = mock
                    .as_ref()
                    .map_or(bootstrap.to_owned(), |m| m.bootstrap_servers());
                let settings = kafka.settings(&bootstrap)?;
                if matches!(mode, BenchMode::KafkaOrders) {
                    return stockflow::bench::kafka::orders(settings, mock.as_ref()).await;
                }
                let embedded =
                    tokio::task::spawn_blocking(move || bench::engine(&options)).await??;
                let measured =
                    stockflow::bench::kafka::run(&options, settings, mock.as_ref()).await?;
                println!(
                    "kafka: one instance runs at {:.2}x the embedded engine path ({:.0} vs {:.0} events/s)",
                    measured.events_per_s / embedded,
                    measured.events_per_s,
                    embedded
                );
            }
            if matches!(mode, BenchMode::Import | BenchMode::All) {
                bench::import(&options).await?;
            }
            if matches!(mode, BenchMode::Http | BenchMode::All) {
                bench::http(&options).await?;
            }
            if matches!(mode, BenchMode::Orders | BenchMode::All) {
                bench::orders(&options).await?;
            }
            if matches!(mode, BenchMode::Stream | BenchMode::All) {
                bench::stream(&options).await?;
            }
            Ok(())
        }
    }
}

/// The tokens `serve` holds callers to, if any: an auth file's, or none
/// where that is safe or asked for.
fn access(
    auth_file: Option<&std::path::Path>,
    listen: SocketAddr,
    insecure_no_auth: bool,
    kafka: &KafkaArgs,
) -> anyhow::Result<Option<std::sync::Arc<stockflow_service::auth::Tokens>>> {
    let Some(path) = auth_file else {
        if !listen.ip().is_loopback() {
            if !insecure_no_auth {
                bail!(
                    "--listen {listen} can be reached from other machines: give --auth-file FILE \
                     (create tokens with `stockflow token create`), or --insecure-no-auth to let \
                     anyone who reaches it read and write"
                );
            }
            tracing::warn!(%listen, "no authentication: anyone who reaches this port may read and write");
        }
        return Ok(None);
    };
    if kafka.kafka.is_some() && kafka.cluster_secret_file.is_none() {
        bail!(
            "Kafka mode with --auth-file needs --cluster-secret-file FILE as well: the secret \
             the instances present to each other (make one with `openssl rand -hex 32 > FILE`, \
             then give every instance the same file)"
        );
    }
    let tokens = std::sync::Arc::new(stockflow_service::auth::Tokens::load(path)?);
    match tokens.len() {
        0 => {
            tracing::warn!(file = %path.display(), "the auth file holds no token: every request but /healthz and /readyz is refused")
        }
        count => tracing::info!(tokens = count, file = %path.display(), "auth file read"),
    }
    Ok(Some(tokens))
}

/// SIGHUP rereads the auth file and the TLS certificate, those there
/// are; without either it must not stop the server (the signal's default
/// action), as a reload meant for another process would.
fn reload_on_sighup(
    tokens: Option<std::sync::Arc<stockflow_service::auth::Tokens>>,
    tls: Option<std::sync::Arc<stockflow_service::tls::ServerTls>>,
) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            if tokens.is_none() && tls.is_none() {
                tracing::info!("SIGHUP: no auth file or certificate to reload");
            }
            if let Some(tokens) = &tokens {
                match tokens.reload() {
                    Ok(count) => {
                        tracing::info!(tokens = count, file = %tokens.path().display(), "auth file reloaded")
                    }
                    Err(e) => {
                        tracing::warn!(
                            "auth file not reloaded, the tokens stay as they were: {e:#}"
                        )
                    }
                }
            }
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => {
                        tracing::info!(file = %tls.cert_path().display(), "TLS certificate reloaded")
                    }
                    Err(e) => tracing::warn!(
                        "TLS certificate not reloaded, new connections get the one in use: {e:#}"
                    ),
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `--help` explains every flag and argument of every command.
    #[test]
    fn every_flag_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "stockflow", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:?}");
    }

    /// `import --help` names every built-in format.
    #[test]
    fn import_help_lists_the_formats() {
        let mut cli = Cli::command();
        let import = cli.find_subcommand_mut("import").unwrap();
        let help = import.render_long_help().to_string();
        for format in stockflow_service::sources::Sources::default().names() {
            assert!(help.contains(format), "{format} in {help}");
        }
        assert!(help.contains("canonical"));
    }

    #[test]
    fn a_url_needs_its_scheme() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080").as_deref(),
            Ok("http://127.0.0.1:8080")
        );
        let said = parse_url("127.0.0.1:8080").unwrap_err();
        assert!(
            said.contains("did you mean http://127.0.0.1:8080"),
            "{said}"
        );
        assert!(parse_url("ftp://host")
            .unwrap_err()
            .contains("http or https"));
    }

    #[test]
    fn check_says_its_verdict_in_words() {
        let report = serde_json::json!({
            "ok": false, "levels": 12, "liveOrders": 3, "holdViolations": 1,
            "reservationsNotHeldByOrders": 0, "rollupMismatches": 0,
            "problems": ["A@S1: reserved 5 but live orders hold 3"],
        });
        let said = verdict("http://x", true, &report);
        assert!(
            said.starts_with("http://x: the books do not hold together (strict)"),
            "{said}"
        );
        assert!(
            said.contains("12 levels and 3 live orders checked"),
            "{said}"
        );
        assert!(said.contains("1 levels whose reserved units"), "{said}");
        assert!(
            said.contains("  - A@S1: reserved 5 but live orders hold 3"),
            "{said}"
        );
        let ok = serde_json::json!({"ok": true, "levels": 2, "liveOrders": 0, "problems": []});
        assert_eq!(
            verdict("http://x", false, &ok),
            "http://x: the books hold together\n  2 levels and 0 live orders checked"
        );
    }
}
