//! The live stream: stock changes, alerts and order decisions, pushed to
//! subscribers (SSE at /v1/stream).
//!
//! Appliers publish after each group; every message gets an id
//! `{epoch}-{seq}`, increasing in delivery order. The newest messages stay
//! in a bounded ring so that a client reconnecting with Last-Event-ID gets
//! exactly what it missed, or is told that the gap is too old. A graceful
//! stop saves the ring (`DATA_DIR/stream.snap`) and the next start resumes
//! the same ids from it; after a crash the ids start a new epoch, and a
//! client from before is told there is a gap.
//!
//! Delivery is indexed: a subscriber filtering on a SKU is only offered
//! that SKU's messages, so publishing costs O(matching subscribers), not
//! O(messages × subscribers). Each subscriber has a bounded buffer; one that
//! falls behind is marked, gets `resync` once it has drained what it had,
//! and is dropped: it never slows the engine. Messages are only built while
//! someone listens or recently listened (the resume window).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

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
        on_hand: i64,
        reserved: i64,
        available: i64,
        in_transit: i64,
        event_id: Box<str>,
        event_type: &'static str,
        outcome: &'static str,
    },
    Json(Value),
    /// Restored from a graceful stop's save: only the rendered JSON is kept.
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
                on_hand,
                reserved,
                available,
                in_transit,
                event_id,
                event_type,
                outcome,
            } => serde_json::json!({
                "sku": self.sku.as_deref(),
                "locationId": self.location_id.as_deref(),
                "onHand": on_hand,
                "reserved": reserved,
                "available": available,
                "inTransit": in_transit,
                "eventId": &**event_id,
                "eventType": event_type,
                "outcome": outcome,
            })
            .to_string(),
        }
    }
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
            epoch: crate::pipeline::wall_clock().0 as u64,
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
            || self.keep_until.load(Ordering::Relaxed) > crate::pipeline::wall_clock().0;
        if !wanted && !self.skipping[kind as usize].swap(true, Ordering::Relaxed) {
            let mut inner = self.inner.lock();
            inner.unbuilt_after[kind as usize] = inner.seq;
        }
        wanted
    }

    /// Numbers, keeps and delivers messages, in order.
    pub fn publish(&self, drafts: Vec<Draft>) {
        if drafts.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        self.skipping
            .iter()
            .for_each(|s| s.store(false, Ordering::Relaxed));
        let mut gone = Vec::new();
        for draft in drafts {
            inner.seq += 1;
            let message = Arc::new(Message {
                seq: inner.seq,
                kind: draft.kind,
                sku: draft.sku,
                location_id: draft.location_id,
                body: draft.body,
                rendered: std::sync::OnceLock::new(),
            });
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
            crate::pipeline::wall_clock()
                .0
                .saturating_add(RESUME_WINDOW_NS),
            Ordering::Relaxed,
        );
    }

    /// Saves the ring for the next start (after the write path stopped, so
    /// it holds every message of this run).
    pub fn save(&self, data_dir: &std::path::Path) -> anyhow::Result<()> {
        let inner = self.inner.lock();
        let saved = SavedRing {
            epoch: self.epoch,
            seq: inner.seq,
            unbuilt_after: inner.unbuilt_after,
            messages: inner
                .ring
                .iter()
                .map(|m| SavedMessage {
                    seq: m.seq,
                    kind: m.kind.as_str().to_owned(),
                    sku: m.sku.as_deref().map(str::to_owned),
                    location_id: m.location_id.as_deref().map(str::to_owned),
                    data: m.data().to_string(),
                })
                .collect(),
        };
        let bytes = postcard::to_stdvec(&saved)?;
        stockflow_log::write_snapshot(&saved_path(data_dir), &bytes)?;
        Ok(())
    }

    /// The hub a graceful stop saved, if there is one: the same epoch and
    /// ids, and messages built for a resume window so that clients of the
    /// last run can come back without a gap. The save is deleted (durably)
    /// first: after a later crash, this run's ids must not meet it again.
    pub fn resume(data_dir: &std::path::Path) -> Hub {
        let path = saved_path(data_dir);
        let saved = match stockflow_log::read_snapshot(&path) {
            Ok(bytes) => postcard::from_bytes::<SavedRing>(&bytes).ok(),
            Err(_) => None,
        };
        let removed = std::fs::remove_file(&path)
            .map_err(anyhow::Error::from)
            .and_then(|()| Ok(stockflow_log::sync_dir(data_dir)?));
        let (Some(saved), Ok(())) = (saved, removed) else {
            return Hub::default();
        };
        let hub = Hub {
            epoch: saved.epoch,
            ..Hub::default()
        };
        {
            let mut inner = hub.inner.lock();
            inner.seq = saved.seq;
            inner.unbuilt_after = saved.unbuilt_after;
            inner.ring = saved
                .messages
                .into_iter()
                .filter_map(|m| {
                    Some(Arc::new(Message {
                        seq: m.seq,
                        kind: Kind::from_wire(&m.kind)?,
                        sku: m.sku.map(Arc::from),
                        location_id: m.location_id.map(Arc::from),
                        body: Body::Saved,
                        rendered: std::sync::OnceLock::from(Arc::<str>::from(m.data)),
                    }))
                })
                .collect();
        }
        hub.keep_until.store(
            crate::pipeline::wall_clock()
                .0
                .saturating_add(RESUME_WINDOW_NS),
            Ordering::Relaxed,
        );
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
            on_hand: n.on_hand,
            reserved: n.reserved,
            available: policy.available(n),
            in_transit: n.in_transit,
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
        body: Body::Json(crate::http::alert_json(id, alert, sku, location)),
    }
}

fn saved_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("stream.snap")
}

/// The ring as a graceful stop leaves it (see [`Hub::save`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedRing {
    epoch: u64,
    seq: u64,
    unbuilt_after: [u64; 3],
    messages: Vec<SavedMessage>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedMessage {
    seq: u64,
    kind: String,
    sku: Option<String>,
    location_id: Option<String>,
    data: String,
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
        hub.publish(vec![draft(1)]);
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
        hub.publish(vec![draft(2)]);
        assert!(
            !hub.wanted(Kind::Orders),
            "nobody wants orders: their gap is marked"
        );
        let last = format!("{}-2", hub.epoch);
        hub.publish(vec![draft(3)]);
        let (_other, resume) = hub.subscribe(filter(), Some(&last)).unwrap();
        match resume {
            Resume::From(missed) => {
                assert_eq!(missed.iter().map(|m| m.seq).collect::<Vec<_>>(), [3])
            }
            Resume::TooOld => panic!("a stock client missed no stock message"),
        }
    }
}
