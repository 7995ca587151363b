//! Stock alerts as transitions: a level's state (low, out of stock,
//! negative) is a function of its numbers and its product's policy, so an
//! alert is raised or cleared exactly when one change moves a level across
//! a line, never on every event.

use serde::{Deserialize, Serialize};

use crate::catalog::Policy;
use crate::level::Numbers;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlertKind {
    LowStock,
    OutOfStock,
    BackInStock,
    NegativeOnHand,
    /// No change to the level for [`TimerRules::stale_after_ns`].
    Stale,
    /// [`TimerRules::burst_rejections`] reservations refused for lack of
    /// stock within [`TimerRules::burst_window_ns`]: demand the level
    /// cannot serve. Cleared after a window with no refusal.
    ReservationRejected,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::LowStock => "LOW_STOCK",
            AlertKind::OutOfStock => "OUT_OF_STOCK",
            AlertKind::BackInStock => "BACK_IN_STOCK",
            AlertKind::NegativeOnHand => "NEGATIVE_ON_HAND",
            AlertKind::Stale => "STALE",
            AlertKind::ReservationRejected => "RESERVATION_REJECTED",
        }
    }

    pub fn from_wire(text: &str) -> Option<AlertKind> {
        [
            AlertKind::LowStock,
            AlertKind::OutOfStock,
            AlertKind::BackInStock,
            AlertKind::NegativeOnHand,
            AlertKind::Stale,
            AlertKind::ReservationRejected,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        }
    }
}

/// What happened to an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transition {
    /// Became true (or, for LOW_STOCK, changed severity).
    Raised,
    /// Stopped being true.
    Cleared,
    /// A one-off notice with no lasting state (BACK_IN_STOCK).
    Fired,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Raised => "raised",
            Transition::Cleared => "cleared",
            Transition::Fired => "fired",
        }
    }
}

/// The rules of the alerts that time raises. Part of the engine's
/// configuration: live processing and replay must use the same ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRules {
    /// A level with no change for this long is STALE (0: never).
    pub stale_after_ns: i64,
    /// Refused reservations that make a burst (0: no burst alerts).
    pub burst_rejections: u32,
    /// The window a burst's refusals fall in, and the quiet time that
    /// clears it.
    pub burst_window_ns: i64,
}

impl Default for TimerRules {
    fn default() -> TimerRules {
        TimerRules {
            stale_after_ns: crate::limits::STALE_AFTER_NS_DEFAULT,
            burst_rejections: crate::limits::BURST_REJECTIONS_DEFAULT,
            burst_window_ns: crate::limits::BURST_WINDOW_NS_DEFAULT,
        }
    }
}

/// Refused reservations at one level, within the current window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Burst {
    pub window_start: crate::time::Timestamp,
    pub last: crate::time::Timestamp,
    pub count: u32,
    /// A RESERVATION_REJECTED alert is raised for it.
    pub raised: bool,
}

/// One alert event, as kept with its partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Position among its partition's alerts (ids are `partition-seq`).
    pub seq: u64,
    pub kind: AlertKind,
    pub transition: Transition,
    pub severity: Severity,
    /// The level's slot in its partition (names via `Partition::names_of`;
    /// the key of active alerts).
    pub slot: u32,
    /// Server time of the record that caused it.
    pub at: crate::time::Timestamp,
    pub on_hand: i64,
    pub available: i64,
    pub threshold: i64,
    /// The event that caused it.
    pub event_id: Box<str>,
}

/// A partition's alerts: the recent ones (bounded) and the active ones.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Alerts {
    pub next_seq: u64,
    /// Shared with `active`: one allocation per alert.
    pub recent: std::collections::VecDeque<std::sync::Arc<Alert>>,
    /// (kind, level slot) → the alert that raised it. Not stored: it is
    /// the levels' state, rebuilt on restore ([`active_states`]), which
    /// keeps checkpoints small when many levels are low.
    #[serde(skip)]
    pub active: rustc_hash::FxHashMap<(AlertKind, u32), std::sync::Arc<Alert>>,
}

impl Alerts {
    pub fn push(&mut self, mut alert: Alert) {
        alert.seq = self.next_seq;
        self.next_seq += 1;
        let key = (alert.kind, alert.slot);
        let alert = std::sync::Arc::new(alert);
        match alert.transition {
            Transition::Raised => {
                self.active.insert(key, alert.clone());
            }
            Transition::Cleared => {
                self.active.remove(&key);
            }
            Transition::Fired => {}
        }
        self.recent.push_back(alert);
        if self.recent.len() > crate::limits::ALERTS_KEPT_PER_PARTITION {
            self.recent.pop_front();
        }
    }
}

/// LOW_STOCK's severity at `available`, if low: CRITICAL at or below half
/// the threshold.
fn low(available: i64, policy: Policy) -> Option<Severity> {
    (available < policy.low_stock_threshold).then(|| {
        if available * 2 <= policy.low_stock_threshold {
            Severity::Critical
        } else {
            Severity::Warning
        }
    })
}

/// The alerts a level in this state has active: what `transitions` has
/// raised and not cleared, as a function of the state alone.
pub fn active_states(n: &Numbers, policy: Policy) -> Vec<(AlertKind, Severity)> {
    let available = policy.available(n);
    let mut active = Vec::new();
    if let Some(severity) = low(available, policy) {
        active.push((AlertKind::LowStock, severity));
    }
    if available == 0 {
        active.push((AlertKind::OutOfStock, Severity::Critical));
    }
    if n.on_hand < 0 {
        active.push((AlertKind::NegativeOnHand, Severity::Critical));
    }
    active
}

/// The alert transitions of one change from `before` to `after`, pushed
/// to `out`. A `fresh` level (its first change) had no state before: only
/// what is wrong after it is raised, nothing is cleared or fired.
pub fn transitions(
    before: &Numbers,
    after: &Numbers,
    policy: Policy,
    fresh: bool,
    out: &mut Vec<(AlertKind, Transition, Severity)>,
) {
    if before == after && !fresh {
        return;
    }
    let (was, is) = (policy.available(before), policy.available(after));
    let was_low = if fresh { None } else { low(was, policy) };
    match (was_low, low(is, policy)) {
        (None, Some(s)) => out.push((AlertKind::LowStock, Transition::Raised, s)),
        (Some(a), Some(b)) if a != b => out.push((AlertKind::LowStock, Transition::Raised, b)),
        (Some(_), None) => out.push((AlertKind::LowStock, Transition::Cleared, Severity::Info)),
        _ => {}
    }
    match (was == 0 && !fresh, is == 0) {
        (false, true) => out.push((
            AlertKind::OutOfStock,
            Transition::Raised,
            Severity::Critical,
        )),
        (true, false) => {
            out.push((AlertKind::OutOfStock, Transition::Cleared, Severity::Info));
            out.push((AlertKind::BackInStock, Transition::Fired, Severity::Info));
        }
        _ => {}
    }
    match (before.on_hand < 0 && !fresh, after.on_hand < 0) {
        (false, true) => out.push((
            AlertKind::NegativeOnHand,
            Transition::Raised,
            Severity::Critical,
        )),
        (true, false) => out.push((
            AlertKind::NegativeOnHand,
            Transition::Cleared,
            Severity::Info,
        )),
        _ => {}
    }
}
