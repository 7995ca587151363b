//! The live stream: stock changes, alerts and order decisions, pushed to
//! subscribers (SSE at /v1/stream).
//!
//! Appliers publish after each group; every message gets an id
//! `{epoch}-{seq}`, increasing in delivery order. The newest messages stay
//! in a bounded ring so that a client reconnecting with Last-Event-ID gets
//! exactly what it missed, or is told that the gap is too old.
//!
//! The ring survives restarts, crashes included, through the journal
//! (`DATA_DIR/stream/*.seg`, the log's CRC framing). Each applier writes a
//! partition's messages for a log record as one entry *before* any
//! subscriber can see them, and after each group a mark: "these partitions
//! have published everything up to record N". A restart reads the journal
//! back (same epoch, same ids) and the log replay builds again the messages
//! of records past the marks, so a client that saw message X gets exactly
//! the messages after X, the rebuilt ones included. The journal is written,
//! not fsynced: a killed process loses none of it, a power cut may (the
//! resume then reports a gap, as for any lost ring).
//!
//! Delivery is indexed: a subscriber filtering on a SKU is only offered
//! that SKU's messages, so publishing costs O(matching subscribers), not
//! O(messages × subscribers). Each subscriber has a bounded buffer; one that
//! falls behind is marked, gets `resync` once it has drained what it had,
//! and is dropped: it never slows the engine. Messages are only built while
//! someone listens or recently listened (the resume window).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;

/// Messages kept for resuming.
pub const RING_MAX: usize = 100_000;
/// Messages buffered per subscriber before it is dropped with `resync`.
pub const SUBSCRIBER_BUFFER: usize = 8_192;
/// After a subscriber leaves, messages are still built this long so that
/// it can resume.
pub const RESUME_WINDOW_NS: i64 = 120 * 1_000_000_000;
/// Most subscribers at once (each holds a connection and a buffer).
pub const SUBSCRIBERS_MAX: usize = 10_000;
/// Journal segments roll at this size; the newest [`JOURNAL_SEGMENTS_KEPT`]
/// hold at least the ring (a stock message takes ~250 bytes). Small, so
/// that deleting one never makes the log's next fdatasync wait on a trim.
const JOURNAL_SEGMENT_BYTES: u64 = 4 << 20;
const JOURNAL_SEGMENTS_KEPT: usize = 10;
/// Old journal segments are looked for every this many entries.
const JOURNAL_TRIM_EVERY: u32 = 256;
/// The source of messages that are not a partition's: the order step.
pub const ORDER_STEP: u16 = u16::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stock,
    Alerts,
    Orders,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Stock => "stock",
            Kind::Alerts => "alerts",
            Kind::Orders => "orders",
        }
    }

    pub fn from_wire(text: &str) -> Option<Kind> {
        [Kind::Stock, Kind::Alerts, Kind::Orders]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// A message's content; stock changes stay numbers until delivered.
#[derive(Debug)]
pub enum Body {
    Stock {
        /// onHand, reserved, available, inTransit.
        numbers: [i64; 4],
        event_id: Box<str>,
        event_type: &'static str,
        outcome: &'static str,
    },
    Json(Value),
    /// Read back from the journal: only the rendered JSON is kept.
    Saved,
}

#[derive(Debug)]
pub struct Message {
    pub seq: u64,
    pub kind: Kind,
    /// For filtering; orders carry none.
    pub sku: Option<Arc<str>>,
    pub location_id: Option<Arc<str>>,
    pub body: Body,
    /// The JSON, rendered once by the first subscriber to send it.
    rendered: std::sync::OnceLock<Arc<str>>,
}

impl Message {
    /// The JSON sent to clients (rendered once, shared by every subscriber).
    pub fn data(&self) -> Arc<str> {
        self.rendered.get_or_init(|| self.render().into()).clone()
    }

    fn render(&self) -> String {
        match &self.body {
            Body::Json(value) => value.to_string(),
            Body::Saved => "null".into(), // always pre-rendered
            Body::Stock {
                numbers,
                event_id,
                event_type,
                outcome,
            } => stock_json(
                self.sku.as_deref(),
                self.location_id.as_deref(),
                *numbers,
                event_id,
                event_type,
                outcome,
            ),
        }
    }
}

/// A stock message's JSON; `numbers` are onHand, reserved, available and
/// inTransit.
fn stock_json(
    sku: Option<&str>,
    location_id: Option<&str>,
    numbers: [i64; 4],
    event_id: &str,
    event_type: &str,
    outcome: &str,
) -> String {
    let [on_hand, reserved, available, in_transit] = numbers;
    serde_json::json!({
        "sku": sku,
        "locationId": location_id,
        "onHand": on_hand,
        "reserved": reserved,
        "available": available,
        "inTransit": in_transit,
        "eventId": event_id,
        "eventType": event_type,
        "outcome": outcome,
    })
    .to_string()
}

/// What a publisher hands over (the hub numbers it).
pub struct Draft {
    pub kind: Kind,
    pub sku: Option<Arc<str>>,
    pub location_id: Option<Arc<str>>,
    pub body: Body,
}

/// What a subscriber wants.
#[derive(Clone, Debug)]
pub struct Filter {
    pub sku: Option<String>,
    pub location_id: Option<String>,
    pub kinds: Vec<Kind>,
}

impl Filter {
    pub fn wants(&self, m: &Message) -> bool {
        self.kinds.contains(&m.kind)
            && self
                .sku
                .as_deref()
                .is_none_or(|s| m.sku.as_deref() == Some(s))
            && self
                .location_id
                .as_deref()
                .is_none_or(|l| m.location_id.as_deref() == Some(l))
    }
}

struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<Arc<Message>>,
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
struct Inner {
    seq: u64,
    /// Per kind: messages of it after this seq were not all built (nobody
    /// was listening), so resuming from it or before is a gap for a client
    /// that wants that kind.
    unbuilt_after: [u64; 3],
    ring: VecDeque<Arc<Message>>,
    next_id: u64,
    subscribers: HashMap<u64, Subscriber>,
    /// sku → subscribers filtering on it; the rest are in `unindexed`.
    by_sku: HashMap<String, Vec<u64>>,
    unindexed: Vec<u64>,
    journal: Option<JournalWriter>,
}

pub struct Hub {
    /// Distinguishes this process's ids from a previous run's.
    pub epoch: u64,
    inner: Mutex<Inner>,
    /// Server time (ns) until which messages are built with no subscriber.
    keep_until: AtomicI64,
    /// Per kind: set when [`Hub::wanted`] said no since the last publish,
    /// so the gap is marked once, not per call.
    skipping: [AtomicBool; 3],
    /// Subscribers wanting each kind (stock, alerts, orders).
    listening: [std::sync::atomic::AtomicUsize; 3],
    /// Becomes true when the server stops, to end every open stream (a
    /// graceful shutdown waits for open responses).
    closed: tokio::sync::watch::Sender<bool>,
}

/// Where a resuming client stands.
pub enum Resume {
    /// Messages after its last one, all still kept.
    From(Vec<Arc<Message>>),
    /// Its last message is older than what is kept (or from another run).
    TooOld,
}

/// A subscription; leaving the hub when dropped.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    pub receiver: mpsc::Receiver<Arc<Message>>,
    /// Set when the buffer overflowed; the hub then drops the sender, so
    /// the receiver ends after what it buffered.
    pub lagged: Arc<AtomicBool>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.leave(self.id);
    }
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            epoch: crate::clock::wall_clock().0 as u64,
            inner: Mutex::new(Inner::default()),
            keep_until: AtomicI64::new(0),
            skipping: Default::default(),
            listening: Default::default(),
            closed: tokio::sync::watch::channel(false).0,
        }
    }
}

impl Hub {
    /// Whether publishers should build messages of `kind` now. When not,
    /// what they skip is a gap for anyone resuming from before it.
    pub fn wanted(&self, kind: Kind) -> bool {
        let wanted = self.listening[kind as usize].load(Ordering::Relaxed) > 0
            || self.keep_until.load(Ordering::Relaxed) > crate::clock::wall_clock().0;
        if !wanted && !self.skipping[kind as usize].swap(true, Ordering::Relaxed) {
            let mut inner = self.inner.lock();
            inner.unbuilt_after[kind as usize] = inner.seq;
        }
        wanted
    }

    /// Numbers, journals, keeps and delivers the messages that `source`
    /// (a partition, or [`ORDER_STEP`]) built for log record `record`, in
    /// order: all of them in one call.
    pub fn publish(&self, drafts: Vec<Draft>, source: u16, record: u64) {
        if drafts.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        self.skipping
            .iter()
            .for_each(|s| s.store(false, Ordering::Relaxed));
        let first_seq = inner.seq + 1;
        let messages: Vec<Arc<Message>> = drafts
            .into_iter()
            .map(|draft| {
                inner.seq += 1;
                Arc::new(Message {
                    seq: inner.seq,
                    kind: draft.kind,
                    sku: draft.sku,
                    location_id: draft.location_id,
                    body: draft.body,
                    rendered: std::sync::OnceLock::new(),
                })
            })
            .collect();
        // Journaled before anyone can see them: a client never holds an id
        // that a restart does not know.
        if let Some(journal) = &mut inner.journal {
            let entry = Entry::Messages {
                source,
                record,
                first_seq,
                messages: messages.iter().map(|m| SavedMessage::of(m)).collect(),
            };
            journal.append(&entry);
        }
        let mut gone = Vec::new();
        for message in messages {
            inner.ring.push_back(message.clone());
            if inner.ring.len() > RING_MAX {
                inner.ring.pop_front();
            }
            let indexed = message
                .sku
                .as_deref()
                .and_then(|s| inner.by_sku.get(s))
                .map_or(&[][..], Vec::as_slice);
            for id in indexed.iter().chain(&inner.unindexed) {
                let Some(sub) = inner.subscribers.get(id) else {
                    continue;
                };
                if !sub.filter.wants(&message) {
                    continue;
                }
                match sub.tx.try_send(message.clone()) {
                    Ok(()) => {}
                    // Dropping its sender lets it drain what it holds, then
                    // see the end and tell the client to resync.
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        sub.lagged.store(true, Ordering::Relaxed);
                        gone.push(*id);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => gone.push(*id),
                }
            }
        }
        gone.dedup();
        for id in gone {
            self.remove(inner, id);
        }
    }

    /// Subscribes; with `last` (a Last-Event-ID), also what was missed.
    /// `None` when there are already [`SUBSCRIBERS_MAX`].
    pub fn subscribe(
        self: &Arc<Self>,
        filter: Filter,
        last: Option<&str>,
    ) -> Option<(Subscription, Resume)> {
        let mut inner = self.inner.lock();
        if inner.subscribers.len() >= SUBSCRIBERS_MAX {
            return None;
        }
        let resume = match last {
            None => Resume::From(Vec::new()),
            Some(id) => {
                let parsed = id
                    .split_once('-')
                    .and_then(|(e, s)| Some((e.parse::<u64>().ok()?, s.parse::<u64>().ok()?)));
                match parsed {
                    Some((epoch, seq)) if epoch == self.epoch => {
                        let oldest = inner.ring.front().map_or(inner.seq + 1, |m| m.seq);
                        let unbuilt = filter
                            .kinds
                            .iter()
                            .any(|k| seq <= inner.unbuilt_after[*k as usize]);
                        if seq + 1 < oldest || unbuilt {
                            Resume::TooOld
                        } else {
                            Resume::From(
                                inner.ring.iter().filter(|m| m.seq > seq).cloned().collect(),
                            )
                        }
                    }
                    _ => Resume::TooOld,
                }
            }
        };
        let (tx, receiver) = mpsc::channel(SUBSCRIBER_BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = inner.next_id;
        inner.next_id += 1;
        match &filter.sku {
            Some(sku) => inner.by_sku.entry(sku.clone()).or_default().push(id),
            None => inner.unindexed.push(id),
        }
        for kind in &filter.kinds {
            self.listening[*kind as usize].fetch_add(1, Ordering::Relaxed);
        }
        inner.subscribers.insert(
            id,
            Subscriber {
                filter,
                tx,
                lagged: lagged.clone(),
            },
        );
        Some((
            Subscription {
                hub: self.clone(),
                id,
                receiver,
                lagged,
            },
            resume,
        ))
    }

    fn leave(&self, id: u64) {
        let mut inner = self.inner.lock();
        self.remove(&mut inner, id);
        // Keep building messages for a while so that it can resume.
        self.keep_until.store(
            crate::clock::wall_clock()
                .0
                .saturating_add(RESUME_WINDOW_NS),
            Ordering::Relaxed,
        );
    }

    /// Journals that `partitions` (and the order step) have published
    /// everything up to log record `next` (exclusive). Only while messages
    /// are built: otherwise nothing is published, a restart finds the
    /// marks behind its checkpoint and reports a gap, which it is.
    pub fn mark(&self, next: u64, partitions: &[u16]) {
        let building = self.listening.iter().any(|n| n.load(Ordering::Relaxed) > 0)
            || self.keep_until.load(Ordering::Relaxed) > crate::clock::wall_clock().0;
        if building {
            self.write_mark(next, partitions);
        }
    }

    fn write_mark(&self, next: u64, partitions: &[u16]) {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        if let Some(journal) = &mut inner.journal {
            let entry = Entry::Through {
                epoch: self.epoch,
                seq: inner.seq,
                unbuilt_after: inner.unbuilt_after,
                next,
                partitions: partitions.to_vec(),
            };
            journal.append(&entry);
        }
    }

    /// The hub of a starting server: the journal's ring and ids when there
    /// is one, then the messages the replay built again (`restored`), then
    /// a mark at `next_record` for every partition. Messages are built for
    /// a resume window, so that clients of the last run can come back.
    pub fn start(
        data_dir: &Path,
        restored: Option<Restored>,
        partitions: u16,
        next_record: u64,
    ) -> Hub {
        let dir = journal_dir(data_dir);
        let (hub, backlog) = match restored {
            Some(restored) => {
                let Loaded {
                    epoch,
                    seq,
                    mut unbuilt_after,
                    ring,
                    writer,
                    ..
                } = restored.journal;
                for (kind, gap) in restored.gap.iter().enumerate() {
                    if *gap {
                        unbuilt_after[kind] = seq;
                    }
                }
                let hub = Hub {
                    epoch,
                    ..Hub::default()
                };
                {
                    let mut inner = hub.inner.lock();
                    inner.seq = seq;
                    inner.unbuilt_after = unbuilt_after;
                    inner.ring = ring;
                    inner.journal = Some(JournalWriter::new(writer, dir));
                }
                (hub, restored.backlog)
            }
            None => {
                let hub = Hub::default();
                match JournalWriter::create(&dir) {
                    Ok(writer) => hub.inner.lock().journal = Some(writer),
                    Err(error) => {
                        tracing::warn!(%error, "cannot start the stream journal; after a restart, stream clients will be told of a gap")
                    }
                }
                (hub, Vec::new())
            }
        };
        for (source, record, drafts) in backlog {
            hub.publish(drafts, source, record);
        }
        let all: Vec<u16> = (0..partitions).collect();
        hub.write_mark(next_record, &all);
        // Clients of the last run may come back: build messages for them
        // for a while. A run that built none had no clients to come back.
        if !hub.inner.lock().ring.is_empty() {
            hub.keep_until.store(
                crate::clock::wall_clock()
                    .0
                    .saturating_add(RESUME_WINDOW_NS),
                Ordering::Relaxed,
            );
        }
        hub
    }

    /// Ends every open stream; called when the server stops.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves when the server stops.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.subscribe()
    }
}

impl Hub {
    fn remove(&self, inner: &mut Inner, id: u64) {
        let Some(sub) = inner.subscribers.remove(&id) else {
            return;
        };
        for kind in &sub.filter.kinds {
            self.listening[*kind as usize].fetch_sub(1, Ordering::Relaxed);
        }
        match &sub.filter.sku {
            Some(sku) => {
                if let Some(ids) = inner.by_sku.get_mut(sku) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        inner.by_sku.remove(sku);
                    }
                }
            }
            None => inner.unindexed.retain(|i| *i != id),
        }
    }
}

/// The messages of a batch's stock changes (when `stock`) and of the alerts
/// the partition raised since `alerts_since`: what an applier publishes, and
/// what a restart builds again for records the journal lacks.
pub fn drafts_of(
    id: u16,
    partition: &stockflow_core::Partition,
    batch: &stockflow_core::Batch,
    changes: &[stockflow_core::Change],
    stock: bool,
    alerts_since: Option<u64>,
    out: &mut Vec<Draft>,
) {
    if stock {
        out.extend(changes.iter().map(|c| stock_draft(partition, batch, c)));
    }
    if let Some(since) = alerts_since {
        let alerts = &partition.alerts;
        let new = (alerts.next_seq - since) as usize;
        let skip = alerts.recent.len().saturating_sub(new);
        out.extend(
            alerts
                .recent
                .iter()
                .skip(skip)
                .map(|a| alert_draft(id, partition, a)),
        );
    }
}

/// The messages of the alerts a partition raised since `since`.
pub fn alert_drafts(
    id: u16,
    partition: &stockflow_core::Partition,
    since: u64,
    out: &mut Vec<Draft>,
) {
    let none = stockflow_core::Batch::default();
    drafts_of(id, partition, &none, &[], false, Some(since), out);
}

/// The messages of an order step: the orders its events' hold changes
/// moved (once each), the orders its timers expired, then the answers to
/// its commands (every order whose state changed).
pub fn order_drafts(
    book: &stockflow_core::OrderBook,
    expiring: &[String],
    observed: &[stockflow_core::orders::HoldChange],
    answers: &[stockflow_core::orders::Answer],
) -> Vec<Draft> {
    let mut seen = std::collections::BTreeSet::new();
    let moved = observed
        .iter()
        .filter(|c| seen.insert(c.order_id.as_str()))
        .filter_map(|c| book.orders.get(&c.order_id));
    let expired = expiring.iter().filter_map(|id| book.orders.get(id));
    let expired = moved.chain(expired);
    let answered = answers.iter().filter_map(|a| match a {
        stockflow_core::orders::Answer::Done(order) => Some(order),
        _ => None,
    });
    expired
        .chain(answered)
        .map(|order| Draft {
            kind: Kind::Orders,
            sku: None,
            location_id: None,
            body: Body::Json(crate::json::order_json(order)),
        })
        .collect()
}

/// A stock message for one change of a partition's level.
pub fn stock_draft(
    partition: &stockflow_core::Partition,
    batch: &stockflow_core::Batch,
    change: &stockflow_core::Change,
) -> Draft {
    let (sku, location) = partition.names_of(change.slot);
    let policy = partition.policy_of(change.slot);
    let n = &change.after;
    Draft {
        kind: Kind::Stock,
        sku: Some(sku.clone()),
        location_id: Some(location.clone()),
        body: Body::Stock {
            numbers: [n.on_hand, n.reserved, policy.available(n), n.in_transit],
            event_id: batch.event_id(change.position as usize).into(),
            event_type: batch.rec(change.position as usize).event_type.as_str(),
            outcome: crate::history::outcome_name(change.outcome),
        },
    }
}

/// An alert message.
pub fn alert_draft(
    id: u16,
    partition: &stockflow_core::Partition,
    alert: &stockflow_core::alerts::Alert,
) -> Draft {
    let (sku, location) = partition.names_of(alert.slot);
    Draft {
        kind: Kind::Alerts,
        sku: Some(sku.clone()),
        location_id: Some(location.clone()),
        body: Body::Json(crate::json::alert_json(id, alert, sku, location)),
    }
}

/// The messages of the PRICE_DROP alerts among `changes` (cuts of at
/// least `percent`), which the applier of each SKU's home partition
/// publishes.
pub fn price_drop_drafts(
    changes: &[stockflow_core::PriceChange],
    percent: u8,
    home: impl Fn(&str) -> bool,
    out: &mut Vec<Draft>,
) {
    let drops = changes
        .iter()
        .filter(|c| c.is_drop(percent) && home(&c.sku));
    out.extend(drops.map(|change| Draft {
        kind: Kind::Alerts,
        sku: Some(change.sku.as_str().into()),
        location_id: None,
        body: Body::Json(crate::json::price_drop_json(change)),
    }));
}

/// Alerts a webhook feed hands over ahead of their delivery, at most.
pub const FEED_AHEAD_MAX: usize = 256;

/// One alert to deliver, and what to do once it is delivered or kept as
/// a dead letter (Kafka mode: mark its offset as done).
pub struct Delivery {
    pub body: String,
    pub done: Option<Box<dyn FnOnce() + Send>>,
}

/// The alerts of this server's live stream for a webhook to `url`,
/// resumed from the last one handed over when the subscriber falls behind
/// (the default [`Backend::webhook_feed`](crate::http::backend::Backend::webhook_feed)).
pub fn alert_feed(hub: Arc<Hub>, url: &str) -> mpsc::Receiver<Delivery> {
    let (tx, rx) = mpsc::channel(FEED_AHEAD_MAX);
    tokio::spawn(follow(hub, url.to_owned(), tx));
    rx
}

async fn follow(hub: Arc<Hub>, url: String, tx: mpsc::Sender<Delivery>) {
    let mut closing = hub.closing();
    let mut last: Option<String> = None;
    loop {
        let filter = Filter {
            sku: None,
            location_id: None,
            kinds: vec![Kind::Alerts],
        };
        let Some((mut subscription, resume)) = hub.subscribe(filter, last.as_deref()) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut pending: std::collections::VecDeque<_> = match resume {
            Resume::From(missed) => missed
                .into_iter()
                .filter(|m| m.kind == Kind::Alerts)
                .collect(),
            Resume::TooOld => {
                tracing::warn!(
                    url,
                    "webhook fell too far behind; alerts in between were not sent"
                );
                Default::default()
            }
        };
        loop {
            let message = match pending.pop_front() {
                Some(message) => message,
                None => tokio::select! {
                    received = subscription.receiver.recv() => match received {
                        Some(m) => m,
                        None => break, // overflowed: resubscribe from `last`
                    },
                    _ = closing.wait_for(|c| *c) => return,
                },
            };
            last = Some(format!("{}-{}", hub.epoch, message.seq));
            let delivery = Delivery {
                body: message.data().to_string(),
                done: None,
            };
            if tx.send(delivery).await.is_err() {
                return;
            }
        }
    }
}

fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("stream")
}

/// One journal record.
#[derive(serde::Serialize, serde::Deserialize)]
enum Entry<'a> {
    /// Everything `source` published for log record `record`, numbered
    /// from `first_seq`.
    Messages {
        source: u16,
        record: u64,
        first_seq: u64,
        #[serde(borrow)]
        messages: Vec<SavedMessage<'a>>,
    },
    /// `partitions` and the order step have published everything before
    /// log record `next`; the hub's numbering at that point.
    Through {
        epoch: u64,
        seq: u64,
        unbuilt_after: [u64; 3],
        next: u64,
        partitions: Vec<u16>,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedMessage<'a> {
    kind: u8,
    #[serde(borrow)]
    sku: Option<&'a str>,
    #[serde(borrow)]
    location_id: Option<&'a str>,
    #[serde(borrow)]
    body: SavedBody<'a>,
}

/// Stock changes are journaled as numbers, not JSON: the applier that
/// writes them should not pay for rendering (the first reader does, or a
/// restart).
#[derive(serde::Serialize, serde::Deserialize)]
enum SavedBody<'a> {
    Stock {
        numbers: [i64; 4],
        event_id: &'a str,
        event_type: &'a str,
        outcome: &'a str,
    },
    Json(#[serde(borrow)] std::borrow::Cow<'a, str>),
}

impl SavedMessage<'_> {
    fn of(m: &Message) -> SavedMessage<'_> {
        let body = match &m.body {
            Body::Stock {
                numbers,
                event_id,
                event_type,
                outcome,
            } => SavedBody::Stock {
                numbers: *numbers,
                event_id,
                event_type,
                outcome,
            },
            Body::Json(_) | Body::Saved => SavedBody::Json(m.data().to_string().into()),
        };
        SavedMessage {
            kind: m.kind as u8,
            sku: m.sku.as_deref(),
            location_id: m.location_id.as_deref(),
            body,
        }
    }

    fn into_message(self, seq: u64) -> Option<Arc<Message>> {
        let kind = [Kind::Stock, Kind::Alerts, Kind::Orders]
            .get(self.kind as usize)
            .copied()?;
        let data = match self.body {
            SavedBody::Stock {
                numbers,
                event_id,
                event_type,
                outcome,
            } => stock_json(
                self.sku,
                self.location_id,
                numbers,
                event_id,
                event_type,
                outcome,
            ),
            SavedBody::Json(text) => text.into_owned(),
        };
        Some(Arc::new(Message {
            seq,
            kind,
            sku: self.sku.map(Arc::from),
            location_id: self.location_id.map(Arc::from),
            body: Body::Saved,
            rendered: std::sync::OnceLock::from(Arc::<str>::from(data)),
        }))
    }
}

struct JournalWriter {
    log: stockflow_log::LogWriter,
    dir: PathBuf,
    appends: u32,
    /// Set after a failed write: the journal stops (the stream does not),
    /// and the next start reports a gap rather than trust it.
    failed: bool,
}

impl JournalWriter {
    fn new(log: stockflow_log::LogWriter, dir: PathBuf) -> JournalWriter {
        JournalWriter {
            log,
            dir,
            appends: 0,
            failed: false,
        }
    }

    /// A new, empty journal (an old one is removed first).
    fn create(dir: &Path) -> anyhow::Result<JournalWriter> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let (log, _) = stockflow_log::LogWriter::open(dir, JOURNAL_SEGMENT_BYTES)?;
        Ok(JournalWriter::new(log, dir.to_owned()))
    }

    fn append(&mut self, entry: &Entry) {
        if self.failed {
            return;
        }
        let bytes = postcard::to_stdvec(entry).expect("encoding into a Vec cannot fail");
        if let Err(error) = self.log.append(&bytes) {
            tracing::error!(%error, "cannot write the stream journal; stream clients will be told of a gap after a restart");
            self.failed = true;
            // A journal with a hole must not be read back as whole.
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        self.appends += 1;
        if self.appends.is_multiple_of(JOURNAL_TRIM_EVERY) {
            if let Err(error) = trim(&self.dir) {
                tracing::warn!(%error, "cannot delete old stream journal segments");
            }
        }
    }
}

fn trim(dir: &Path) -> anyhow::Result<()> {
    let segments = stockflow_log::segments(dir)?;
    let excess = segments.len().saturating_sub(JOURNAL_SEGMENTS_KEPT);
    for (_, path) in &segments[..excess] {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// The journal as read back at a start.
pub struct Loaded {
    epoch: u64,
    seq: u64,
    unbuilt_after: [u64; 3],
    ring: VecDeque<Arc<Message>>,
    /// Per partition: the first log record whose messages it has not
    /// published (journaled) yet.
    pub partition_next: Vec<u64>,
    /// The same for the order step.
    pub orders_next: u64,
    writer: stockflow_log::LogWriter,
}

/// What a restart hands to [`Hub::start`].
pub struct Restored {
    pub journal: Loaded,
    /// Messages the log replay built again, as (source, record, drafts), in
    /// log order per source.
    pub backlog: Vec<(u16, u64, Vec<Draft>)>,
    /// Per kind: messages that are neither journaled nor rebuilt (their
    /// records are inside the checkpoint), so resuming across is a gap.
    pub gap: [bool; 3],
}

impl Loaded {
    /// Reads the journal of `data_dir`, if it has a whole one for this
    /// partition count. A missing or unreadable journal is no error: the
    /// stream is derived data, and its clients are told of a gap.
    pub fn read(data_dir: &Path, partitions: u16) -> Option<Loaded> {
        let dir = journal_dir(data_dir);
        match Loaded::try_read(&dir, partitions) {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%error, "cannot read the stream journal; stream clients of the last run will be told of a gap");
                None
            }
        }
    }

    fn try_read(dir: &Path, partitions: u16) -> anyhow::Result<Option<Loaded>> {
        if !dir.exists() {
            return Ok(None);
        }
        // Opening cuts a torn tail (a write the kill interrupted).
        let (writer, _) = stockflow_log::LogWriter::open(dir, JOURNAL_SEGMENT_BYTES)?;
        let Some(&(oldest, _)) = stockflow_log::segments(dir)?.first() else {
            return Ok(None);
        };
        let mut loaded = Loaded {
            epoch: 0,
            seq: 0,
            unbuilt_after: [0; 3],
            ring: VecDeque::new(),
            partition_next: vec![0; partitions as usize],
            orders_next: 0,
            writer,
        };
        let mut marked = false;
        for item in stockflow_log::read_records(dir, oldest)? {
            let (_, payload) = item?;
            match postcard::from_bytes::<Entry>(&payload)? {
                Entry::Messages {
                    source,
                    record,
                    first_seq,
                    messages,
                } => {
                    let next = match source {
                        ORDER_STEP => &mut loaded.orders_next,
                        p => loaded
                            .partition_next
                            .get_mut(p as usize)
                            .ok_or_else(|| anyhow::anyhow!("partition {p} out of range"))?,
                    };
                    *next = (*next).max(record + 1);
                    for (seq, message) in (first_seq..).zip(messages) {
                        loaded.seq = loaded.seq.max(seq);
                        loaded.ring.extend(message.into_message(seq));
                        if loaded.ring.len() > RING_MAX {
                            loaded.ring.pop_front();
                        }
                    }
                }
                Entry::Through {
                    epoch,
                    seq,
                    unbuilt_after,
                    next,
                    partitions: marked_partitions,
                } => {
                    marked = true;
                    loaded.epoch = epoch;
                    loaded.seq = loaded.seq.max(seq);
                    loaded.unbuilt_after = unbuilt_after;
                    for p in marked_partitions {
                        let slot = loaded
                            .partition_next
                            .get_mut(p as usize)
                            .ok_or_else(|| anyhow::anyhow!("partition {p} out of range"))?;
                        *slot = (*slot).max(next);
                    }
                    loaded.orders_next = loaded.orders_next.max(next);
                }
            }
        }
        Ok(marked.then_some(loaded))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(n: i64) -> Draft {
        Draft {
            kind: Kind::Stock,
            sku: Some("A".into()),
            location_id: Some("S1".into()),
            body: Body::Json(serde_json::json!({ "n": n })),
        }
    }

    fn filter() -> Filter {
        Filter {
            sku: None,
            location_id: None,
            kinds: vec![Kind::Stock],
        }
    }

    #[test]
    fn messages_skipped_while_nobody_listened_are_a_gap_not_a_silent_hole() {
        let hub = Arc::new(Hub::default());
        let (sub, _) = hub.subscribe(filter(), None).unwrap();
        assert!(hub.wanted(Kind::Stock));
        hub.publish(vec![draft(1)], 0, 1);
        let last = format!("{}-1", hub.epoch);
        drop(sub);
        // The resume window ends; changes happen that nobody builds.
        hub.keep_until.store(0, Ordering::Relaxed);
        assert!(!hub.wanted(Kind::Stock));
        let (_sub, resume) = hub.subscribe(filter(), Some(&last)).unwrap();
        assert!(
            matches!(resume, Resume::TooOld),
            "seq 1 then unbuilt changes: a gap"
        );
        // Orders not being built is no gap for a stock-only client.
        assert!(hub.wanted(Kind::Stock));
        hub.publish(vec![draft(2)], 0, 2);
        assert!(
            !hub.wanted(Kind::Orders),
            "nobody wants orders: their gap is marked"
        );
        let last = format!("{}-2", hub.epoch);
        hub.publish(vec![draft(3)], 0, 3);
        let (_other, resume) = hub.subscribe(filter(), Some(&last)).unwrap();
        match resume {
            Resume::From(missed) => {
                assert_eq!(missed.iter().map(|m| m.seq).collect::<Vec<_>>(), [3])
            }
            Resume::TooOld => panic!("a stock client missed no stock message"),
        }
    }
}
