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
//!
//! Here the hub; `messages`, what the appliers publish; `journal`;
//! `feed`, the alerts as a webhook's feed.

mod feed;
mod journal;
mod messages;

pub use feed::{alert_feed, Delivery, FEED_AHEAD_MAX};
use journal::{journal_dir, Entry, JournalWriter, SavedMessage};
pub use journal::{Loaded, Restored};
pub use messages::{
    alert_draft, alert_drafts, drafts_of, order_drafts, price_drop_drafts, stock_draft,
    totals_drafts, totals_json,
};

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

/// The source of messages that are not a partition's: the order step.
pub const ORDER_STEP: u16 = u16::MAX;

/// The source of the item and location totals (see [`totals_drafts`]),
/// published every [`TOTALS_CYCLE`] rather than per log record.
pub const TOTALS_STEP: u16 = u16::MAX - 1;

/// How often the totals of the SKUs and locations that changed are
/// pushed: the newest value per key per cycle, never one per event.
pub const TOTALS_CYCLE: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Stock,
    Alerts,
    Orders,
    /// A SKU's totals over every location.
    Items,
    /// A location's totals over every SKU.
    Locations,
}

/// Kinds there are (the hub's per-kind arrays).
const KINDS: usize = 5;

impl Kind {
    pub const ALL: [Kind; KINDS] = [
        Kind::Stock,
        Kind::Alerts,
        Kind::Orders,
        Kind::Items,
        Kind::Locations,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Stock => "stock",
            Kind::Alerts => "alerts",
            Kind::Orders => "orders",
            Kind::Items => "items",
            Kind::Locations => "locations",
        }
    }

    pub fn from_wire(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
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
    unbuilt_after: [u64; KINDS],
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
    skipping: [AtomicBool; KINDS],
    /// Subscribers wanting each kind (stock, alerts, orders, items,
    /// locations).
    listening: [std::sync::atomic::AtomicUsize; KINDS],
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
            let [stock, alerts, orders, ..] = inner.unbuilt_after;
            let entry = Entry::Through {
                epoch: self.epoch,
                seq: inner.seq,
                // Totals are not rebuilt by a restart: never journaled
                // as built (see `start`).
                unbuilt_after: [stock, alerts, orders],
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
                    unbuilt_after: journaled,
                    ring,
                    writer,
                    ..
                } = restored.journal;
                // Totals a restart does not build again: resuming across
                // it is a gap for their clients, who reload them.
                let mut unbuilt_after = [seq; KINDS];
                unbuilt_after[..journaled.len()].copy_from_slice(&journaled);
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
