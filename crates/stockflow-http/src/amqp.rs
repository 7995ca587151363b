//! RabbitMQ ingest (`serve --amqp URL --amqp-queue FORMAT=QUEUE`): each
//! queue's messages, read in their source format, go through the backend
//! seam like a POST to `/v1/sources/{format}/events`, in both modes.
//!
//! A message is acknowledged only once what it carried is durable: its
//! events committed (the embedded log, or the Kafka broker), its
//! refusals kept as dead letters. A crash before the acknowledgement
//! has the broker deliver it again, and the events' ids (given, or
//! derived by the format's mapping) make the second delivery a
//! duplicate: exactly once in effect. A message that cannot be read at
//! all is kept whole as a dead letter and acknowledged: never delivered
//! forever, never lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use stockflow_core::{parse_body, Parsed};
use stockflow_service::config::{Amqp, AmqpQueue};
use stockflow_service::links::{Links, State};
use stockflow_service::receipt::RefusedBody;
use stockflow_service::sources::{translate, Mapping, CANONICAL};

use super::asks::Wait;
use super::backend::Backend;
use super::ApiError;

const KIND: &str = "amqp";
/// First wait before reconnecting, doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// First wait before offering a batch again that the backend could not
/// take (overloaded, shutting down, Kafka unreachable), doubled up to
/// [`RETRY_MAX`]: the messages stay unacknowledged meanwhile.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest wait for the broker to answer while a link is set up (a
/// connection accepted by a proxy whose broker is gone answers nothing).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the dead letters of a queue's messages say they come from:
/// `amqp:{format}:{queue}`, so that a replay reads them in their format.
pub fn source_of_queue(spec: &AmqpQueue) -> String {
    format!("amqp:{}:{}", spec.format, spec.queue)
}

/// Checks the settings: a URL lapin reads, without TLS; known formats;
/// each queue once. Called before anything else starts, so that a
/// mistake is said at once.
pub fn check(config: &stockflow_service::config::Config) -> anyhow::Result<()> {
    let Some(amqp) = &config.amqp else {
        return Ok(());
    };
    peer_of(&amqp.url)?;
    let mut seen = std::collections::BTreeSet::new();
    for spec in &amqp.queues {
        reader_of(config, &spec.format)?;
        if !seen.insert(spec.queue.as_str()) {
            anyhow::bail!(
                "--amqp-queue: queue {:?} is given twice; a queue's messages are in one format",
                spec.queue
            );
        }
    }
    Ok(())
}

/// Starts one consumer per queue (see [`check`]); their state is in the
/// config's links.
pub fn start<B: Backend>(backend: Arc<B>) -> anyhow::Result<()> {
    check(backend.config())?;
    let Some(amqp) = backend.config().amqp.clone() else {
        return Ok(());
    };
    let peer = peer_of(&amqp.url)?;
    let mut readers = Vec::new();
    for spec in &amqp.queues {
        readers.push((spec.clone(), reader_of(backend.config(), &spec.format)?));
    }
    for (spec, reader) in readers {
        let links = backend.config().links.clone();
        links.add(KIND, &spec.queue, &spec.format, &peer);
        tracing::info!(queue = spec.queue, format = spec.format, %peer, "consuming a RabbitMQ queue");
        let consumer = Consumer {
            backend: backend.clone(),
            amqp: amqp.clone(),
            source: source_of_queue(&spec),
            spec,
            reader,
            links,
        };
        tokio::spawn(consumer.run());
    }
    Ok(())
}

/// The broker as logs and `/v1/links` show it (`amqp://host:port/vhost`),
/// never with the user or password.
fn peer_of(url: &str) -> anyhow::Result<String> {
    let uri: lapin::uri::AMQPUri = url.parse().map_err(|e: String| {
        anyhow::anyhow!(
            "--amqp is not an AMQP URL ({e}); expected amqp://user:password@host:5672/vhost"
        )
    })?;
    if uri.scheme != lapin::uri::AMQPScheme::AMQP {
        anyhow::bail!(
            "--amqp: amqps:// is not supported; use amqp:// (with TLS put in front of the broker's port by a local proxy)"
        );
    }
    let vhost = uri.vhost.replace('%', "%25").replace('/', "%2f");
    Ok(format!(
        "amqp://{}:{}/{vhost}",
        uri.authority.host, uri.authority.port
    ))
}

/// How a queue's messages become events.
#[derive(Clone)]
enum Reader {
    Canonical,
    Source(Box<Mapping>),
}

fn reader_of(config: &stockflow_service::config::Config, format: &str) -> anyhow::Result<Reader> {
    if format == CANONICAL {
        return Ok(Reader::Canonical);
    }
    super::ingest::source_mapping(&config.sources, format)
        .map(|mapping| Reader::Source(Box::new(mapping)))
        .map_err(|e| anyhow::anyhow!("--amqp-queue {format}=…: {}", e.message))
}

struct Consumer<B> {
    backend: Arc<B>,
    amqp: Amqp,
    spec: AmqpQueue,
    source: String,
    reader: Reader,
    links: Links,
}

impl<B: Backend> Consumer<B> {
    /// Consumes until the process ends, reconnecting with backoff.
    async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            self.set(State::Connecting, None);
            let (was_connected, error) = self.session().await;
            tracing::warn!(queue = self.spec.queue, %error, "RabbitMQ link down; reconnecting");
            self.set(State::Disconnected, Some(error));
            if was_connected {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn set(&self, state: State, error: Option<String>) {
        self.links.set(KIND, &self.spec.queue, state, error);
    }

    /// One connection's life: (whether it got as far as consuming, why
    /// it ended).
    async fn session(&self) -> (bool, String) {
        let queue = self.spec.queue.as_str();
        let connect = Connection::connect(&self.amqp.url, ConnectionProperties::default());
        let connection = match within_setup(connect).await {
            Ok(connection) => connection,
            Err(e) => return (false, format!("cannot connect: {e}")),
        };
        let channel = match within_setup(self.channel(&connection)).await {
            Ok(channel) => channel,
            Err(e) => return (false, format!("cannot use queue {queue:?}: {e}")),
        };
        let consumer = channel.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let mut consumer = match within_setup(consumer).await {
            Ok(consumer) => consumer,
            Err(e) => return (false, format!("cannot consume queue {queue:?}: {e}")),
        };
        self.set(State::Connected, None);
        tracing::info!(queue, "RabbitMQ link up");
        let bytes_max = self.backend.config().body_bytes_max;
        loop {
            let mut batch = match consumer.next().await {
                Some(Ok(delivery)) => vec![delivery],
                Some(Err(e)) => return (true, e.to_string()),
                None => return (true, "the broker cancelled the consumer".into()),
            };
            // What else has arrived already joins it: one commit (one
            // fsync) for the lot, never a wait for more. At most half the
            // prefetch, so that the broker keeps sending while it commits.
            let mut bytes = batch[0].data.len();
            let most = usize::from(self.amqp.prefetch / 2).max(1);
            while batch.len() < most && bytes < bytes_max {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(delivery))) => {
                        bytes += delivery.data.len();
                        batch.push(delivery);
                    }
                    _ => break,
                }
            }
            let refused = match self.take(&batch).await {
                Ok(refused) => refused,
                Err(e) => return (true, e),
            };
            let last = batch.last().expect("a batch has a message").delivery_tag;
            if let Err(e) = channel
                .basic_ack(last, BasicAckOptions { multiple: true })
                .await
            {
                return (true, format!("cannot acknowledge: {e}"));
            }
            self.links
                .count(KIND, queue, batch.len() as u64, refused as u64);
        }
    }

    /// A channel with the prefetch set, on the queue: used as it is if it
    /// exists, else declared durable (a passive declare that fails closes
    /// its channel, so the declaring one is new).
    async fn channel(&self, connection: &Connection) -> Result<lapin::Channel, lapin::Error> {
        let queue = self.spec.queue.as_str();
        let open = || async {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(self.amqp.prefetch, BasicQosOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        };
        let channel = open().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        if channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .is_ok()
        {
            return Ok(channel);
        }
        let channel = open().await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.into(), durable, FieldTable::default())
            .await?;
        tracing::info!(queue, "declared the RabbitMQ queue (durable)");
        Ok(channel)
    }

    /// Hands a batch of messages to the backend and returns once what they
    /// carried is durable (offering it again while the backend cannot take
    /// it): how many were refused whole. `Err` only if a refusal could not
    /// be kept: the messages are then left for the broker to deliver again.
    async fn take(&self, batch: &[lapin::message::Delivery]) -> Result<usize, String> {
        let config = self.backend.config();
        let events_max = config.request_events_max;
        // Runs of messages with the same format parameters whose events
        // fit one submission, with the positions of those messages.
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut refused = Vec::new();
        for (index, delivery) in batch.iter().enumerate() {
            let params = params_of(delivery.properties.headers());
            let source = super::ingest::with_params(self.source.clone(), &params);
            match self.read(delivery, &params, config.body_bytes_max, events_max) {
                Ok(parsed) => {
                    let fits = chunks.last().is_some_and(|c| {
                        c.source == source && c.parsed.total() + parsed.total() <= events_max
                    });
                    if !fits {
                        chunks.push(Chunk {
                            parsed: Parsed::default(),
                            source,
                            messages: Vec::new(),
                        });
                    }
                    let chunk = chunks.last_mut().expect("pushed");
                    merge(&mut chunk.parsed, parsed);
                    chunk.messages.push(index);
                }
                Err(reason) => {
                    let body = refused_body(reason, delivery, config.body_bytes_max);
                    refused.push((source, body));
                }
            }
        }
        for chunk in chunks {
            let submitted = self
                .offer(|| {
                    let parsed = chunk.parsed.clone();
                    self.backend.submit(parsed, &chunk.source, Wait::Durable)
                })
                .await;
            if let Err(e) = submitted {
                // Refused for good, not for load: the messages are kept
                // whole with the reason rather than offered forever.
                tracing::warn!(
                    queue = self.spec.queue,
                    reason = e.message,
                    "RabbitMQ messages refused"
                );
                for index in chunk.messages {
                    let reason = format!("refused: {}", e.message);
                    let body = refused_body(reason, &batch[index], config.body_bytes_max);
                    refused.push((chunk.source.clone(), body));
                }
            }
        }
        for (source, body) in &refused {
            self.offer(|| self.backend.keep_refused(body.clone(), source))
                .await
                .map_err(|e| format!("cannot keep a refused message: {}", e.message))?;
        }
        Ok(refused.len())
    }

    /// `attempt` until it succeeds or fails for a reason other than load
    /// (429, 5xx: overloaded, shutting down, a broker unreachable).
    async fn offer<T, F>(&self, attempt: impl Fn() -> F) -> Result<T, ApiError>
    where
        F: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut wait = RETRY_MIN;
        loop {
            match attempt().await {
                Ok(done) => return Ok(done),
                Err(e) if e.status.as_u16() == 429 || e.status.is_server_error() => {
                    tracing::debug!(queue = self.spec.queue, reason = e.message, "retrying");
                    // Still connected; what holds the messages back is shown.
                    let waiting = format!("waiting to write (retrying): {}", e.message);
                    self.set(State::Connected, Some(waiting));
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One message's events (and its refused ones), or why it cannot be
    /// read at all.
    fn read(
        &self,
        delivery: &lapin::message::Delivery,
        params: &BTreeMap<String, String>,
        bytes_max: usize,
        events_max: usize,
    ) -> Result<Parsed, String> {
        let body = &delivery.data;
        if body.len() > bytes_max {
            return Err(format!(
                "message of {} bytes exceeds {bytes_max} bytes (kept truncated); send smaller messages",
                body.len()
            ));
        }
        let content_type = delivery.properties.content_type().as_ref();
        let framing = super::ingest::framing_of(content_type.map(|t| t.as_str()));
        let parsed = match &self.reader {
            Reader::Canonical => parse_body(body, framing, events_max),
            Reader::Source(mapping) => translate(mapping, body, framing, params, events_max),
        };
        match parsed {
            // A message is sent to say something: one that says nothing
            // (`[]`, a CSV header alone, or rows without their header
            // line, read as one) is kept, not dropped unseen.
            Ok(parsed) if parsed.total() == 0 => Err(
                "the message holds no events (a CSV message needs its header line, then its rows)"
                    .to_owned(),
            ),
            Ok(parsed) => Ok(parsed),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Messages submitted together.
struct Chunk {
    parsed: Parsed,
    /// The letters' source: the queue's, with the messages' parameters.
    source: String,
    /// Their positions in the batch.
    messages: Vec<usize>,
}

/// A format's parameters (e.g. `locationId` for `order-line`) from the
/// message's headers: strings, and whole numbers as their digits.
fn params_of(headers: &Option<FieldTable>) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    for (name, value) in headers.iter().flat_map(|h| h.inner()) {
        let text = match value {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_owned(),
            AMQPValue::ShortShortInt(n) => n.to_string(),
            AMQPValue::ShortShortUInt(n) => n.to_string(),
            AMQPValue::ShortInt(n) => n.to_string(),
            AMQPValue::ShortUInt(n) => n.to_string(),
            AMQPValue::LongInt(n) => n.to_string(),
            AMQPValue::LongUInt(n) => n.to_string(),
            AMQPValue::LongLongInt(n) => n.to_string(),
            _ => continue,
        };
        params.insert(name.as_str().to_owned(), text);
    }
    params
}

/// Appends `parsed` (one message's) to `into`. Indexes stay the
/// message's own (a row or line in it), as its letters say them.
fn merge(into: &mut Parsed, parsed: Parsed) {
    for event in parsed.batch.iter() {
        into.batch.push(&event);
    }
    into.rejected.extend(parsed.rejected);
}

/// `step`, or an error if the broker takes longer than [`SETUP_TIMEOUT`].
async fn within_setup<T>(
    step: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(SETUP_TIMEOUT, step).await {
        Ok(done) => done.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the broker did not answer within {} s",
            SETUP_TIMEOUT.as_secs()
        )),
    }
}

/// A message refused whole, kept with its bytes up to `bytes_max`.
fn refused_body(
    reason: String,
    delivery: &lapin::message::Delivery,
    bytes_max: usize,
) -> RefusedBody {
    let body = &delivery.data;
    RefusedBody {
        reason,
        payload: body[..body.len().min(bytes_max)].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_is_shown_without_its_credentials_and_amqps_is_refused() {
        let peer = peer_of("amqp://user:s3cret@broker.example:5673/retail").unwrap();
        assert_eq!(peer, "amqp://broker.example:5673/retail");
        let default_vhost = peer_of("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(default_vhost, "amqp://127.0.0.1:5672/%2f");
        let refused = peer_of("amqps://user:s3cret@broker.example/retail").unwrap_err();
        assert!(refused.to_string().contains("amqps"), "{refused}");
        assert!(!refused.to_string().contains("s3cret"), "{refused}");
        assert!(peer_of("http://nope").is_err());
    }
}
