//! The stock of one SKU at one location, and every rule that changes it.
//!
//! This is the contract's effect table in code. A level also keeps the short
//! history that a late physical COUNT needs: the onHand changes made by
//! events timestamped after the newest count, within a bounded window.
//!
//! A level also keeps its holds: the units each order (an event's
//! correlationId) has reserved here. `reserved` is the sum of the holds
//! plus the *free* reservations that no order holds (RESERVATION events
//! without a correlationId). Every rule about a hold is decided here, by
//! the level's single owner, in both modes: a RELEASE or FULFILLMENT that
//! names an order acts on that order's hold only; one that names none acts
//! on the free part only. So `reserved = Σ holds + free` with `free ≥ 0`
//! after every event, whatever order events arrive in.

use serde::{Deserialize, Serialize};

use crate::event::EventType;
use crate::limits::{COUNT_HISTORY_ENTRIES_MAX, COUNT_HISTORY_WINDOW_NS, HOLDS_PER_LEVEL_MAX};
use crate::time::Timestamp;

/// What applying one event (or one part of it) did to a level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The level changed as the rules say.
    Applied,
    /// The onHand part was absorbed by a later-timestamped COUNT; the other
    /// parts (reserved, inTransit) were applied.
    Absorbed,
    /// A COUNT at or before the level's count time: no effect.
    StaleCount,
    /// Nothing changed, for this reason (the event still counts as applied:
    /// its eventId is consumed).
    Rejected(Rejection),
}

/// Why an accepted event changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// RESERVATION for more than onHand − reserved.
    InsufficientStock,
    /// COUNT older than the history kept for this level; applying it would
    /// be a guess.
    CountBeyondHistory,
    /// The result would take onHand or inTransit past
    /// ±[`LEVEL_QUANTITY_ABS_MAX`](crate::limits::LEVEL_QUANTITY_ABS_MAX).
    QuantityOverflow,
    /// RELEASE naming an order that holds nothing at this level (unknown,
    /// expired, released or fulfilled): nothing to give back, and another
    /// order's hold is never touched.
    NoHold,
    /// RESERVATION for an order that would be the level's
    /// [`HOLDS_PER_LEVEL_MAX`]+1-th holder.
    TooManyHolds,
}

impl Rejection {
    /// The stable reason string of the HTTP contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::InsufficientStock => "insufficient_stock",
            Rejection::CountBeyondHistory => "count_beyond_history",
            Rejection::QuantityOverflow => "quantity_overflow",
            Rejection::NoHold => "no_hold",
            Rejection::TooManyHolds => "too_many_holds",
        }
    }

    /// The rejection whose [`Rejection::as_str`] is `code`.
    pub fn from_code(code: &str) -> Option<Rejection> {
        [
            Rejection::InsufficientStock,
            Rejection::CountBeyondHistory,
            Rejection::QuantityOverflow,
            Rejection::NoHold,
            Rejection::TooManyHolds,
        ]
        .into_iter()
        .find(|r| r.as_str() == code)
    }

    /// The reason told to the sender of the event that met it: the stable
    /// code, then what it means for this event (`order` is its
    /// correlationId).
    pub fn describe(self, sku: &str, location: &str, order: Option<&str>) -> String {
        match (self, order) {
            (Rejection::NoHold, Some(order)) => {
                format!("no_hold: order {order} holds nothing at {sku}@{location}")
            }
            (Rejection::TooManyHolds, _) => format!(
                "too_many_holds: {sku}@{location} already has {HOLDS_PER_LEVEL_MAX} orders holding stock"
            ),
            (Rejection::QuantityOverflow, _) => format!(
                "quantity_overflow: {sku}@{location} would hold more than ±{} units",
                crate::limits::LEVEL_QUANTITY_ABS_MAX
            ),
            (other, _) => other.as_str().to_owned(),
        }
    }
}

/// `a + b` if it stays within ±[`LEVEL_QUANTITY_ABS_MAX`](crate::limits::LEVEL_QUANTITY_ABS_MAX).
fn bounded_sum(a: i64, b: i64) -> Option<i64> {
    let bound = crate::limits::LEVEL_QUANTITY_ABS_MAX;
    a.checked_add(b)
        .filter(|sum| (-bound..=bound).contains(sum))
}

/// Units one order holds at a level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub order_id: Box<str>,
    pub quantity: i64,
}

/// One SKU at one location.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Level {
    pub on_hand: i64,
    pub reserved: i64,
    pub in_transit: i64,
    /// Number of events that changed this level.
    pub version: u64,
    /// Server time of the last change.
    pub updated_at: Timestamp,
    /// Timestamp of the newest applied COUNT.
    count_time: Option<Timestamp>,
    /// Newest event timestamp seen here; the history window ends at it.
    newest_event: Option<Timestamp>,
    /// Newest timestamp among history entries dropped by the window or the
    /// entry cap; a COUNT before it cannot be answered exactly.
    history_floor: Option<Timestamp>,
    /// (event timestamp, onHand change) for events after `count_time`,
    /// sorted by timestamp, one entry per distinct timestamp.
    history: Vec<(Timestamp, i64)>,
    /// The orders holding units here, sorted by order id, each > 0. Their
    /// sum never exceeds `reserved`.
    holds: Vec<Hold>,
}

/// The quantities of a level, without its history: what roll-ups sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Numbers {
    pub on_hand: i64,
    pub reserved: i64,
    pub in_transit: i64,
}

impl Level {
    pub fn available(&self) -> i64 {
        (self.on_hand - self.reserved).max(0)
    }

    pub fn numbers(&self) -> Numbers {
        Numbers {
            on_hand: self.on_hand,
            reserved: self.reserved,
            in_transit: self.in_transit,
        }
    }

    pub fn count_time(&self) -> Option<Timestamp> {
        self.count_time
    }

    /// The orders holding units here, sorted by order id.
    pub fn holds(&self) -> &[Hold] {
        &self.holds
    }

    /// Units `order` holds here.
    pub fn hold_of(&self, order: &str) -> i64 {
        match self.find_hold(order) {
            Ok(i) => self.holds[i].quantity,
            Err(_) => 0,
        }
    }

    /// Reserved units that no order holds.
    pub fn free_reserved(&self) -> i64 {
        self.reserved - self.holds.iter().map(|h| h.quantity).sum::<i64>()
    }

    fn find_hold(&self, order: &str) -> Result<usize, usize> {
        self.holds.binary_search_by(|h| (*h.order_id).cmp(order))
    }

    /// Applies the part of an event that lands on its own level. `order`
    /// is the event's correlationId: RESERVATION, RELEASE and FULFILLMENT
    /// with one act on that order's hold (see the module's text); other
    /// types ignore it.
    pub fn apply(
        &mut self,
        event_type: EventType,
        q: i64,
        at: Timestamp,
        now: Timestamp,
        order: Option<&str>,
    ) -> Outcome {
        let outcome = match event_type {
            EventType::Receipt | EventType::Return | EventType::Adjustment => {
                self.change_on_hand(q, at)
            }
            EventType::Sale | EventType::TransferOut => self.change_on_hand(-q, at),
            EventType::TransferIn => {
                let arrived = q.min(self.in_transit);
                let outcome = self.change_on_hand(q, at);
                if !matches!(outcome, Outcome::Rejected(_)) {
                    self.in_transit -= arrived;
                }
                outcome
            }
            EventType::Reservation => self.reserve(q, order),
            EventType::Release => {
                let released = self.releasable(q, order);
                if released == 0 && order.is_some() {
                    Outcome::Rejected(Rejection::NoHold)
                } else {
                    self.unreserve(released, order);
                    Outcome::Applied
                }
            }
            EventType::Fulfillment => {
                // The goods left whatever was held: onHand always moves; the
                // order's hold (or the free part) shrinks by what it covers.
                let released = self.releasable(q, order);
                let outcome = self.change_on_hand(-q, at);
                if !matches!(outcome, Outcome::Rejected(_)) {
                    self.unreserve(released, order);
                }
                outcome
            }
            EventType::Count => self.count(q, at),
        };
        self.touch(outcome, now);
        outcome
    }

    /// Applies the in-transit part of a TRANSFER_OUT at its destination.
    pub fn apply_in_transit(&mut self, q: i64, now: Timestamp) -> Outcome {
        let outcome = match bounded_sum(self.in_transit, q) {
            Some(in_transit) => {
                self.in_transit = in_transit;
                Outcome::Applied
            }
            None => Outcome::Rejected(Rejection::QuantityOverflow),
        };
        self.touch(outcome, now);
        outcome
    }

    fn touch(&mut self, outcome: Outcome, now: Timestamp) {
        if matches!(outcome, Outcome::Applied | Outcome::Absorbed) {
            self.version += 1;
            self.updated_at = now;
        }
    }

    fn reserve(&mut self, q: i64, order: Option<&str>) -> Outcome {
        // q ≤ onHand − reserved keeps reserved ≤ onHand, so the sum cannot
        // overflow once the difference is computed without overflowing.
        if q > self.on_hand.saturating_sub(self.reserved) {
            return Outcome::Rejected(Rejection::InsufficientStock);
        }
        if let Some(order) = order.filter(|_| q > 0) {
            match self.find_hold(order) {
                Ok(i) => self.holds[i].quantity += q,
                Err(_) if self.holds.len() >= HOLDS_PER_LEVEL_MAX => {
                    return Outcome::Rejected(Rejection::TooManyHolds)
                }
                Err(i) => self.holds.insert(
                    i,
                    Hold {
                        order_id: order.into(),
                        quantity: q,
                    },
                ),
            }
        }
        self.reserved += q;
        debug_assert!(self.free_reserved() >= 0);
        Outcome::Applied
    }

    /// What a RELEASE or FULFILLMENT of `q` gives back: up to what `order`
    /// holds here, or without an order up to the free reservations.
    fn releasable(&self, q: i64, order: Option<&str>) -> i64 {
        let pool = match order {
            Some(order) => self.hold_of(order),
            None => self.free_reserved(),
        };
        q.clamp(0, pool.max(0))
    }

    /// Gives back `units` (≤ [`Level::releasable`]) of `order`'s hold, or of
    /// the free reservations.
    fn unreserve(&mut self, units: i64, order: Option<&str>) {
        if units == 0 {
            return;
        }
        if let Some(order) = order {
            let i = self.find_hold(order).expect("releasable found the hold");
            self.holds[i].quantity -= units;
            if self.holds[i].quantity == 0 {
                self.holds.remove(i);
            }
        }
        self.reserved -= units;
        debug_assert!(self.free_reserved() >= 0 && self.reserved >= 0);
    }

    /// onHand += delta for an event timestamped `at`, unless a COUNT at or
    /// after `at` already absorbed it.
    fn change_on_hand(&mut self, delta: i64, at: Timestamp) -> Outcome {
        if self.count_time.is_some_and(|counted| at <= counted) {
            self.note_event_time(at);
            return Outcome::Absorbed;
        }
        let Some(on_hand) = bounded_sum(self.on_hand, delta) else {
            return Outcome::Rejected(Rejection::QuantityOverflow);
        };
        self.on_hand = on_hand;
        self.record(at, delta);
        Outcome::Applied
    }

    /// onHand := q + (changes already applied from events after `at`).
    fn count(&mut self, q: i64, at: Timestamp) -> Outcome {
        if self.count_time.is_some_and(|counted| counted >= at) {
            return Outcome::StaleCount;
        }
        if self.history_floor.is_some_and(|floor| floor > at) {
            return Outcome::Rejected(Rejection::CountBeyondHistory);
        }
        let first_later = self.history.partition_point(|(t, _)| *t <= at);
        let later = self.history[first_later..]
            .iter()
            .try_fold(0i64, |sum, (_, d)| sum.checked_add(*d));
        let Some(on_hand) = later.and_then(|later| bounded_sum(later, q)) else {
            return Outcome::Rejected(Rejection::QuantityOverflow);
        };
        self.on_hand = on_hand;
        self.count_time = Some(at);
        self.history.drain(..first_later);
        self.note_event_time(at);
        Outcome::Applied
    }

    fn record(&mut self, at: Timestamp, delta: i64) {
        let position = self.history.partition_point(|(t, _)| *t <= at);
        match position.checked_sub(1).map(|p| &mut self.history[p]) {
            // Same timestamp: merge. A sum that overflows keeps two entries.
            Some((t, d)) if *t == at && d.checked_add(delta).is_some() => *d += delta,
            _ => self.history.insert(position, (at, delta)),
        }
        self.note_event_time(at);
    }

    /// Moves the history window forward and enforces the entry cap.
    fn note_event_time(&mut self, at: Timestamp) {
        let newest = self.newest_event.map_or(at, |n| n.max(at));
        self.newest_event = Some(newest);
        let horizon = newest.saturating_sub_ns(COUNT_HISTORY_WINDOW_NS);
        let expired = self.history.partition_point(|(t, _)| *t < horizon);
        let over_cap = self.history.len().saturating_sub(COUNT_HISTORY_ENTRIES_MAX);
        let dropped = expired.max(over_cap);
        if dropped > 0 {
            let floor = self.history[dropped - 1].0;
            self.history_floor = Some(self.history_floor.map_or(floor, |f| f.max(floor)));
            self.history.drain(..dropped);
        }
        debug_assert!(self.history.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
