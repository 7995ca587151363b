//! The stock of one SKU at one location, and every rule that changes it.
//!
//! This is the contract's effect table in code. A level also keeps the short
//! history that a late physical COUNT needs: the onHand changes made by
//! events timestamped after the newest count, within a bounded window.

use serde::{Deserialize, Serialize};

use crate::event::EventType;
use crate::limits::{COUNT_HISTORY_ENTRIES_MAX, COUNT_HISTORY_WINDOW_NS};
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
    /// The result would not fit in an `i64`.
    QuantityOverflow,
}

impl Rejection {
    /// The stable reason string of the HTTP contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::InsufficientStock => "insufficient_stock",
            Rejection::CountBeyondHistory => "count_beyond_history",
            Rejection::QuantityOverflow => "quantity_overflow",
        }
    }
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

    /// Applies the part of an event that lands on its own level.
    pub fn apply(
        &mut self,
        event_type: EventType,
        q: i64,
        at: Timestamp,
        now: Timestamp,
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
            EventType::Reservation => self.reserve(q),
            EventType::Release => {
                self.reserved -= q.min(self.reserved);
                Outcome::Applied
            }
            EventType::Fulfillment => {
                let released = q.min(self.reserved);
                let outcome = self.change_on_hand(-q, at);
                if !matches!(outcome, Outcome::Rejected(_)) {
                    self.reserved -= released;
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
        let outcome = match self.in_transit.checked_add(q) {
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

    fn reserve(&mut self, q: i64) -> Outcome {
        // onHand − reserved cannot overflow: both are bounded far below
        // i64::MAX / 2 by QUANTITY_ABS_MAX and the overflow checks.
        if q <= self.on_hand.saturating_sub(self.reserved) {
            self.reserved += q;
            Outcome::Applied
        } else {
            Outcome::Rejected(Rejection::InsufficientStock)
        }
    }

    /// onHand += delta for an event timestamped `at`, unless a COUNT at or
    /// after `at` already absorbed it.
    fn change_on_hand(&mut self, delta: i64, at: Timestamp) -> Outcome {
        if self.count_time.is_some_and(|counted| at <= counted) {
            self.note_event_time(at);
            return Outcome::Absorbed;
        }
        let Some(on_hand) = self.on_hand.checked_add(delta) else {
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
        let Some(on_hand) = later.and_then(|later| later.checked_add(q)) else {
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
