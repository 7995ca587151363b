//! The reference model of orders' holds, written from the README's event
//! table and nothing else: per level onHand, the free reservations and
//! each order's hold; per order its hold's expiry. Plain maps and a
//! sequential fold, so it can be read against the contract line by line.
//!
//! It is shared by the core's property test and the server's tests
//! (embedded over HTTP, and Kafka mode), which include this file; so it
//! depends on nothing but `std` and `stockflow_core::orders::Mode`.

#![allow(dead_code)] // each including test uses its own part

use std::collections::{BTreeMap, BTreeSet};

use stockflow_core::orders::Mode;

pub const SECOND: i64 = 1_000_000_000;
/// 2024-01-01T10:00:00Z: event timestamps are seconds after it.
pub const EVENT_EPOCH_NS: i64 = 1_704_103_200 * SECOND;

/// (onHand, reserved, inTransit, each order's hold) by (sku, location):
/// what the tests compare the engine or a server with.
pub type Books = BTreeMap<(String, String), (i64, i64, i64, BTreeMap<String, i64>)>;

/// The name of SKU number `i`.
pub fn sku(i: usize) -> String {
    format!("P{i}")
}

/// The name of location number `i`.
pub fn location(i: usize) -> String {
    format!("L{i}")
}

/// One canonical event; `order` is its correlationId (`o{n}`).
#[derive(Clone, Debug)]
pub struct Ev {
    pub id: u32,
    pub kind: &'static str,
    pub sku: usize,
    pub location: usize,
    pub quantity: i64,
    /// Event time: seconds after 10:00 (within a day).
    pub second: i64,
    pub order: Option<u8>,
    /// TRANSFER_OUT only: the destination's location number.
    pub to: Option<usize>,
    /// RESERVATION naming an order only: its `holdSeconds`.
    pub hold_s: Option<i64>,
}

impl Ev {
    /// The canonical JSON, with `prefix` before the eventId's number.
    pub fn json_with(&self, prefix: &str) -> String {
        let order = self
            .order
            .map(|o| format!(r#","correlationId":"o{o}""#))
            .unwrap_or_default();
        let to = self
            .to
            .map(|l| format!(r#","toLocationId":"{}""#, location(l)))
            .unwrap_or_default();
        let hold = self
            .hold_s
            .map(|s| format!(r#","holdSeconds":{s}"#))
            .unwrap_or_default();
        let (h, m, sec) = (
            10 + self.second / 3600,
            self.second / 60 % 60,
            self.second % 60,
        );
        format!(
            r#"{{"eventId":"{prefix}{}","eventType":"{}","sku":"{}","locationId":"{}","quantity":{},"timestamp":"2024-01-01T{h:02}:{m:02}:{sec:02}Z"{order}{to}{hold}}}"#,
            self.id,
            self.kind,
            sku(self.sku),
            location(self.location),
            self.quantity,
        )
    }

    /// Whether the contract accepts it (an invalid event changes nothing
    /// and does not use up its eventId).
    pub fn valid(&self) -> bool {
        match self.kind {
            "ADJUSTMENT" => self.quantity != 0,
            "COUNT" => self.quantity >= 0,
            _ => self.quantity > 0,
        }
    }

    pub fn json(&self) -> String {
        self.json_with("e")
    }

    pub fn time(&self) -> i64 {
        EVENT_EPOCH_NS + self.second * SECOND
    }
}

/// A command on an order through the API.
#[derive(Clone, Debug)]
pub enum Command {
    /// Lines of (sku, location, quantity), the mode, the hold in seconds.
    Place(u8, Vec<(usize, usize, i64)>, Mode, i64),
    Fulfil(u8),
    Cancel(u8),
    /// The hold from now, in seconds.
    Extend(u8, i64),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Level {
    pub on_hand: i64,
    pub in_transit: i64,
    /// Reserved units no order holds.
    pub free: i64,
    pub holds: BTreeMap<String, i64>,
    count_time: Option<i64>,
    /// onHand changes applied since the count: (event time, delta), those
    /// within a day of the newest event time seen here.
    applied: Vec<(i64, i64)>,
    newest: Option<i64>,
    /// The newest event time forgotten from `applied`: a COUNT before it
    /// cannot be answered exactly.
    floor: Option<i64>,
}

/// How far back a level remembers its onHand changes for a late COUNT.
const COUNT_WINDOW_NS: i64 = 24 * 3600 * SECOND;

impl Level {
    pub fn reserved(&self) -> i64 {
        self.free + self.holds.values().sum::<i64>()
    }

    fn change_on_hand(&mut self, delta: i64, t: i64) {
        if self.count_time.is_none_or(|c| t > c) {
            // (else absorbed by a later count)
            self.on_hand += delta;
            self.applied.push((t, delta));
        }
        self.saw(t);
    }

    /// An event time seen here: what falls out of the window is forgotten.
    fn saw(&mut self, t: i64) {
        let newest = self.newest.map_or(t, |n| n.max(t));
        self.newest = Some(newest);
        let horizon = newest - COUNT_WINDOW_NS;
        if let Some(gone) = self
            .applied
            .iter()
            .filter(|(at, _)| *at < horizon)
            .map(|(at, _)| *at)
            .max()
        {
            self.floor = Some(self.floor.map_or(gone, |f| f.max(gone)));
        }
        self.applied.retain(|(at, _)| *at >= horizon);
    }

    pub fn hold(&self, order: &str) -> i64 {
        self.holds.get(order).copied().unwrap_or(0)
    }

    fn take_hold(&mut self, order: &str, units: i64) {
        let left = self.hold(order) - units;
        assert!(left >= 0, "the model took more than {order} held");
        match left {
            0 => self.holds.remove(order),
            _ => self.holds.insert(order.to_owned(), left),
        };
    }
}

pub struct Model {
    /// The hold of an order an event creates.
    pub event_hold_ns: i64,
    seen: BTreeSet<u32>,
    pub levels: BTreeMap<(usize, usize), Level>,
    /// Orders that exist (placed, or named by a RESERVATION).
    pub orders: BTreeSet<String>,
    /// Hold expiry of live orders.
    pub expires: BTreeMap<String, i64>,
    /// Events refused (not applied), with the reason's code.
    pub refused: Vec<(u32, &'static str)>,
}

impl Model {
    pub fn new(event_hold_ns: i64) -> Model {
        Model {
            event_hold_ns,
            seen: BTreeSet::new(),
            levels: BTreeMap::new(),
            orders: BTreeSet::new(),
            expires: BTreeMap::new(),
            refused: Vec::new(),
        }
    }

    /// Holds anything anywhere.
    pub fn live(&self, order: &str) -> bool {
        self.levels.values().any(|l| l.hold(order) > 0)
    }

    /// One event, received at server time `now`. Returns false for a
    /// duplicate or an invalid event.
    pub fn event(&mut self, e: &Ev, now: i64) -> bool {
        if !e.valid() || !self.seen.insert(e.id) {
            return false;
        }
        let order = e.order.map(|o| format!("o{o}"));
        let was_live = order.as_deref().is_some_and(|o| self.live(o));
        let l = self.levels.entry((e.sku, e.location)).or_default();
        let (q, t) = (e.quantity, e.time());
        match (e.kind, order) {
            ("RECEIPT", _) => l.change_on_hand(q, t),
            ("SALE", _) => l.change_on_hand(-q, t),
            ("ADJUSTMENT", _) => l.change_on_hand(q, t),
            ("TRANSFER_IN", _) => {
                l.in_transit -= q.min(l.in_transit);
                l.change_on_hand(q, t);
            }
            ("TRANSFER_OUT", _) => {
                l.change_on_hand(-q, t);
                if let Some(to) = e.to {
                    self.levels.entry((e.sku, to)).or_default().in_transit += q;
                }
            }
            ("COUNT", _) if l.count_time.is_some_and(|c| c >= t) => {}
            ("COUNT", _) if l.floor.is_some_and(|f| f > t) => {
                self.refused.push((e.id, "count_beyond_history"));
            }
            ("COUNT", _) => {
                let later: i64 = l
                    .applied
                    .iter()
                    .filter(|(at, _)| *at > t)
                    .map(|(_, d)| d)
                    .sum();
                l.on_hand = q + later;
                l.applied.retain(|(at, _)| *at > t);
                l.count_time = Some(t);
                l.saw(t);
            }
            ("RESERVATION", order) if q > l.on_hand - l.reserved() => {
                self.refused.push((e.id, "insufficient_stock"));
                if let Some(order) = order {
                    self.orders.insert(order);
                }
            }
            ("RESERVATION", None) => l.free += q,
            ("RESERVATION", Some(order)) => {
                *l.holds.entry(order.clone()).or_insert(0) += q;
                let until = now + e.hold_s.map_or(self.event_hold_ns, |s| s * SECOND);
                let kept = self.expires.get(&order).copied().filter(|_| was_live);
                self.expires
                    .insert(order.clone(), kept.map_or(until, |k| k.max(until)));
                self.orders.insert(order);
            }
            ("RELEASE", None) => l.free -= q.min(l.free),
            ("RELEASE", Some(order)) => match q.min(l.hold(&order)) {
                0 => self.refused.push((e.id, "no_hold")),
                r => l.take_hold(&order, r),
            },
            ("FULFILLMENT", None) => {
                l.free -= q.min(l.free);
                l.change_on_hand(-q, t);
            }
            ("FULFILLMENT", Some(order)) => {
                let f = q.min(l.hold(&order));
                l.take_hold(&order, f);
                l.change_on_hand(-q, t);
            }
            (other, _) => unreachable!("{other}"),
        }
        true
    }

    /// Gives back every unit `order` holds.
    fn release_all(&mut self, order: &str) {
        for l in self.levels.values_mut() {
            l.holds.remove(order);
        }
        self.expires.remove(order);
    }

    /// Releases the holds due by `now`.
    pub fn expire(&mut self, now: i64) {
        let due: Vec<String> = self
            .expires
            .iter()
            .filter(|(o, at)| **at <= now && self.live(o))
            .map(|(o, _)| o.clone())
            .collect();
        for order in due {
            self.release_all(&order);
        }
    }

    /// One API command at server time `now` (after the events before it
    /// and the holds due).
    pub fn command(&mut self, command: &Command, now: i64) {
        match command {
            Command::Place(o, lines, mode, hold_s) => {
                let order = format!("o{o}");
                if !self.orders.insert(order.clone()) {
                    return; // the first order under an id stands
                }
                let mut promised: BTreeMap<(usize, usize), i64> = BTreeMap::new();
                let mut takes = Vec::new();
                for (s, l, q) in lines {
                    // A line refused for lack of stock names its level.
                    let level = self.levels.entry((*s, *l)).or_default();
                    let used = promised.get(&(*s, *l)).copied().unwrap_or(0);
                    let free = (level.on_hand - level.reserved() - used).max(0);
                    let take = (*q).min(free);
                    *promised.entry((*s, *l)).or_insert(0) += take;
                    takes.push(((*s, *l), take, take == *q));
                }
                if *mode == Mode::AllOrNothing && !takes.iter().all(|(_, _, whole)| *whole) {
                    return;
                }
                for (key, take, _) in &takes {
                    if *take > 0 {
                        let l = self.levels.entry(*key).or_default();
                        *l.holds.entry(order.clone()).or_insert(0) += take;
                    }
                }
                if self.live(&order) {
                    self.expires.insert(order, now + hold_s * SECOND);
                }
            }
            Command::Fulfil(o) => {
                // The order step stamps its events with server time, after
                // every event time here.
                let order = format!("o{o}");
                for l in self.levels.values_mut() {
                    let h = l.hold(&order);
                    if h > 0 {
                        l.take_hold(&order, h);
                        l.change_on_hand(-h, now);
                    }
                }
                self.expires.remove(&order);
            }
            Command::Cancel(o) => self.release_all(&format!("o{o}")),
            Command::Extend(o, s) => {
                let order = format!("o{o}");
                if self.live(&order) {
                    self.expires.insert(order, now + s * SECOND);
                }
            }
        }
    }

    /// (onHand, reserved, holds) by (sku, location) names.
    pub fn levels_by_name(&self) -> Books {
        self.levels
            .iter()
            .map(|((s, l), m)| {
                (
                    (sku(*s), location(*l)),
                    (m.on_hand, m.reserved(), m.in_transit, m.holds.clone()),
                )
            })
            .collect()
    }
}
