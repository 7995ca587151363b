//! One partition of the state: the levels whose (sku, locationId) hash to
//! it, with the indexes queries need. A partition has exactly one writer.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::alerts::{Alert, AlertKind, Alerts, Burst, Severity, TimerRules, Transition};
use crate::catalog::{Catalog, CatalogChange, Policy};
use crate::event::{Batch, EventType};
use crate::level::{Level, Numbers, Outcome, Rejection};
use crate::time::Timestamp;

/// The partition that owns (sku, locationId), stable across versions and
/// machines (it is persisted implicitly by where levels live).
pub fn route(sku: &str, location_id: &str, partitions: u16) -> u16 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(
        location_id.as_bytes(),
        xxhash_rust::xxh3::xxh3_64(sku.as_bytes()),
    );
    (h % u64::from(partitions)) as u16
}

/// An interned name (sku or locationId) within one partition.
type Sym = u32;

/// A level with the names that key it, as queries return it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelView {
    pub sku: Arc<str>,
    pub location_id: Arc<str>,
    pub level: Level,
}

/// The stored form of a partition: its levels with their names. Indexes are
/// rebuilt on load, so they can never disagree with the levels.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub levels: Vec<(String, String, Level)>,
    /// Per level (same order): the shell's history cursor, see
    /// [`Partition::history_head`].
    pub history_heads: Vec<u64>,
    /// The shell's history end for this partition at the snapshot.
    pub history_end: u64,
    pub alerts: Alerts,
    pub timers: TimerState,
}

/// What the time-driven alerts must remember across a restart; the rest
/// (which levels are due when) is rebuilt from the levels.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TimerState {
    /// `now` of the last [`Partition::tick`].
    pub last_tick: Timestamp,
    /// Levels with refused reservations in their current window.
    pub bursts: Vec<(u32, Burst)>,
}

/// A point-in-time copy of a partition that serialises as a
/// [`PartitionSnapshot`]; see [`Partition::snapshot`]. It holds symbols, not
/// names, so taking it is a copy of the level structs (plus their short
/// COUNT histories) and reference-count bumps: several times cheaper than
/// encoding, which then happens off the owner's thread.
#[derive(Clone, Debug)]
pub struct PartitionImage {
    names: Vec<Arc<str>>,
    levels: Vec<(Sym, Sym, Level)>,
    history_heads: Vec<u64>,
    history_end: u64,
    alerts: Alerts,
    timers: TimerState,
}

impl PartitionImage {
    /// Levels in the image; sizes the encoding buffer.
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }
}

impl Serialize for PartitionImage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Levels<'a>(&'a PartitionImage);
        impl Serialize for Levels<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let image = self.0;
                serializer.collect_seq(image.levels.iter().map(|(sku, location, level)| {
                    (
                        &*image.names[*sku as usize],
                        &*image.names[*location as usize],
                        level,
                    )
                }))
            }
        }
        let mut snapshot = serializer.serialize_struct("PartitionSnapshot", 5)?;
        snapshot.serialize_field("levels", &Levels(self))?;
        snapshot.serialize_field("history_heads", &self.history_heads)?;
        snapshot.serialize_field("history_end", &self.history_end)?;
        snapshot.serialize_field("alerts", &self.alerts)?;
        snapshot.serialize_field("timers", &self.timers)?;
        snapshot.end()
    }
}

/// What one event (or the in-transit part of a TRANSFER_OUT) did to one
/// level: the raw material of the level's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The level, as [`Partition::history_head`] knows it.
    pub slot: u32,
    /// Position of the event in its batch.
    pub position: u32,
    /// The in-transit part of a TRANSFER_OUT, at its destination.
    pub in_transit: bool,
    pub outcome: Outcome,
    pub before: Numbers,
    pub after: Numbers,
}

/// An event of a batch that changed nothing, with why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    /// Position of the event in its batch.
    pub position: u32,
    pub outcome: Outcome,
    /// The level as the event found it (and left it: a refused event
    /// changes nothing), so a refusal can say what there was.
    pub level: Numbers,
}

#[derive(Debug)]
pub struct Partition {
    /// Name ↔ symbol. Names live as long as the partition: levels are never
    /// deleted, so neither are their names.
    symbols: FxHashMap<Arc<str>, Sym>,
    names: Vec<Arc<str>>,
    /// (sku, location) → index into `levels`.
    index: FxHashMap<(Sym, Sym), u32>,
    levels: Vec<(Sym, Sym, Level)>,
    /// sku → its levels here, for per-SKU queries.
    by_sku: FxHashMap<Sym, Vec<u32>>,
    /// location → its levels here, sorted by sku when read, for
    /// paginated queries.
    by_location: FxHashMap<Sym, LocationLevels>,
    /// Roll-ups, kept incrementally as levels change (see [`Totals`]):
    /// per sku (indexed by symbol), per location, and per (sku, group)
    /// where a group is `region:…`, `channel:…` or `type:…`.
    sku_totals: Vec<Totals>,
    location_totals: FxHashMap<Sym, Totals>,
    group_totals: FxHashMap<Sym, Vec<(Sym, Totals)>>,
    /// Products whose policy differs from the default, from the catalog.
    policies: FxHashMap<Sym, Policy>,
    /// Locations whose low-stock threshold overrides their products'.
    location_thresholds: FxHashMap<Sym, i64>,
    /// Groups of each location the catalog describes; others are in
    /// `type:unknown` only.
    location_groups: FxHashMap<Sym, Vec<Sym>>,
    /// The symbol of [`UNKNOWN_TYPE_GROUP`].
    unknown_type: Sym,
    /// Per slot: an opaque cursor the shell keeps for the level's history
    /// (0 = none). The core stores and snapshots it, nothing more.
    history_heads: Vec<u64>,
    /// The shell's history end for this partition (opaque, snapshotted).
    pub history_end: u64,
    pub alerts: Alerts,
    /// Scratch for alert transitions (no allocation per change).
    transitions: Vec<(AlertKind, Transition, Severity)>,
    timers: Timers,
}

/// The time-driven alerts of a partition: STALE levels and the end of
/// RESERVATION_REJECTED bursts. A heap of due times, at most one entry per
/// level and kind, checked lazily: an entry that comes due re-reads the
/// level and is pushed again if the level moved on meanwhile. So a change
/// costs a flag test, not a heap operation.
#[derive(Debug, Default)]
struct Timers {
    rules: TimerRules,
    due: std::collections::BinaryHeap<std::cmp::Reverse<(Timestamp, u32, TimerKind)>>,
    /// Per slot: [`STALE_QUEUED`], [`STALE_RAISED`].
    flags: Vec<u8>,
    bursts: FxHashMap<u32, Burst>,
    last_tick: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Stale,
    BurstEnd,
}

const STALE_QUEUED: u8 = 1;
const STALE_RAISED: u8 = 2;

/// A location's levels in a partition, in sku order when read. A new
/// level is only appended: a bulk load creates levels by the million and
/// never pages a location meanwhile, and an ordered insert per new level
/// (string compares down a tree) was a fifth of the appliers' time. The
/// first read after sorts the new ones in (deterministic: skus are
/// unique at a location).
#[derive(Debug, Default)]
struct LocationLevels {
    /// (slots in sku order as of the last read, slots created since).
    /// Written under `&mut` without locking; a read locks to sort.
    slots: std::sync::Mutex<(Vec<u32>, Vec<u32>)>,
}

impl LocationLevels {
    fn push(&mut self, slot: u32) {
        let slots = self
            .slots
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.1.push(slot);
    }

    /// Every slot, in sku order (`name` gives a slot's sku): what is
    /// done to them in turn (alerts numbered as they are raised) must
    /// not depend on which reads came before.
    fn all<'a>(&self, name: impl Fn(u32) -> &'a Arc<str>) -> Vec<u32> {
        self.sorted(name).0.clone()
    }

    /// The slots in sku order (`name` gives a slot's sku): the new ones
    /// sorted and merged in first.
    fn sorted<'a>(
        &self,
        name: impl Fn(u32) -> &'a Arc<str>,
    ) -> std::sync::MutexGuard<'_, (Vec<u32>, Vec<u32>)> {
        let mut slots = self.lock();
        if !slots.1.is_empty() {
            let (sorted, fresh) = &mut *slots;
            fresh.sort_unstable_by(|a, b| name(*a).cmp(name(*b)));
            let mut merged = Vec::with_capacity(sorted.len() + fresh.len());
            let (mut i, mut j) = (0, 0);
            while i < sorted.len() && j < fresh.len() {
                if name(sorted[i]) <= name(fresh[j]) {
                    merged.push(sorted[i]);
                    i += 1;
                } else {
                    merged.push(fresh[j]);
                    j += 1;
                }
            }
            merged.extend_from_slice(&sorted[i..]);
            merged.extend_from_slice(&fresh[j..]);
            *sorted = merged;
            fresh.clear();
        }
        slots
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<u32>, Vec<u32>)> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for Partition {
    fn default() -> Partition {
        let mut partition = Partition {
            symbols: FxHashMap::default(),
            names: Vec::new(),
            index: FxHashMap::default(),
            levels: Vec::new(),
            by_sku: FxHashMap::default(),
            by_location: FxHashMap::default(),
            sku_totals: Vec::new(),
            location_totals: FxHashMap::default(),
            group_totals: FxHashMap::default(),
            policies: FxHashMap::default(),
            location_groups: FxHashMap::default(),
            location_thresholds: FxHashMap::default(),
            unknown_type: 0,
            history_heads: Vec::new(),
            history_end: 0,
            alerts: Alerts::default(),
            transitions: Vec::new(),
            timers: Timers::default(),
        };
        partition.unknown_type = partition.intern(UNKNOWN_TYPE_GROUP);
        partition
    }
}

/// Sums over a set of levels. `available` honours each product's safety
/// stock; `at_zero` and `below_threshold` count levels whose available is
/// 0, or below the product's low-stock threshold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub in_transit: i64,
    pub levels: i64,
    pub at_zero: i64,
    pub below_threshold: i64,
}

impl Totals {
    /// One level's part in every roll-up it belongs to.
    pub fn of(level: &Numbers, policy: Policy) -> Totals {
        let available = policy.available(level);
        Totals {
            on_hand: level.on_hand,
            reserved: level.reserved,
            available,
            in_transit: level.in_transit,
            levels: 1,
            at_zero: i64::from(available == 0),
            below_threshold: i64::from(available < policy.low_stock_threshold),
        }
    }

    pub fn add(&mut self, other: &Totals) {
        self.on_hand += other.on_hand;
        self.reserved += other.reserved;
        self.available += other.available;
        self.in_transit += other.in_transit;
        self.levels += other.levels;
        self.at_zero += other.at_zero;
        self.below_threshold += other.below_threshold;
    }

    fn minus(mut self, other: &Totals) -> Totals {
        self.on_hand -= other.on_hand;
        self.reserved -= other.reserved;
        self.available -= other.available;
        self.in_transit -= other.in_transit;
        self.levels -= other.levels;
        self.at_zero -= other.at_zero;
        self.below_threshold -= other.below_threshold;
        self
    }

    fn is_zero(&self) -> bool {
        *self == Totals::default()
    }
}

/// The group every location is in until the catalog says what it is.
const UNKNOWN_TYPE_GROUP: &str = "type:unknown";

impl Partition {
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Applies, in order, the parts of `batch` that land in partition `id`
    /// (see [`Batch::compute_routes`]), pushing every event that changed
    /// nothing to `exceptions` and what each part did to `changes`.
    pub(crate) fn apply_batch(
        &mut self,
        id: u16,
        batch: &Batch,
        now: Timestamp,
        exceptions: &mut Vec<Exception>,
        changes: &mut Vec<Change>,
    ) {
        let routes = batch.routes();
        debug_assert_eq!(
            routes.len(),
            batch.len(),
            "routes must be computed before applying"
        );
        for (position, route) in routes.iter().enumerate() {
            if route.source != id && route.destination != Some(id) {
                continue;
            }
            let (sku, location, to_location) = batch.key(position);
            let event = batch.rec(position);
            let at = event
                .timestamp
                .expect("the sequencer stamps every event before it is applied");
            if route.source == id {
                let slot = self.slot(sku, location);
                let before = self.levels[slot as usize].2.numbers();
                let order = batch.order_of(position);
                let outcome = self.levels[slot as usize].2.apply(
                    event.event_type,
                    event.quantity,
                    at,
                    now,
                    order,
                );
                self.account(slot, &before);
                self.record(changes, slot, position, false, outcome, before, batch, now);
                if matches!(outcome, Outcome::Rejected(_)) {
                    exceptions.push(Exception {
                        position: position as u32,
                        outcome,
                        level: before,
                    });
                }
            }
            if let (Some(to), true) = (to_location, route.destination == Some(id)) {
                debug_assert_eq!(event.event_type, EventType::TransferOut);
                let slot = self.slot(sku, to);
                let before = self.levels[slot as usize].2.numbers();
                let outcome = self.levels[slot as usize]
                    .2
                    .apply_in_transit(event.quantity, now);
                self.account(slot, &before);
                self.record(changes, slot, position, true, outcome, before, batch, now);
                if matches!(outcome, Outcome::Rejected(_)) {
                    exceptions.push(Exception {
                        position: position as u32,
                        outcome,
                        level: before,
                    });
                }
            }
        }
    }

    /// The slot of a level, created empty (and counted in the roll-ups) if
    /// never seen.
    fn slot(&mut self, sku: &str, location: &str) -> u32 {
        let sku_sym = self.intern(sku);
        let location_sym = self.intern(location);
        let next = self.levels.len() as u32;
        let slot = *self.index.entry((sku_sym, location_sym)).or_insert(next);
        if slot == next {
            self.levels.push((sku_sym, location_sym, Level::default()));
            self.history_heads.push(0);
            self.timers.flags.push(0);
            self.by_sku.entry(sku_sym).or_default().push(slot);
            self.by_location.entry(location_sym).or_default().push(slot);
            let created = Totals::of(&Numbers::default(), self.policy(sku_sym, location_sym));
            self.add_to_rollups(sku_sym, location_sym, &created);
        }
        slot
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        changes: &mut Vec<Change>,
        slot: u32,
        position: usize,
        in_transit: bool,
        outcome: Outcome,
        before: Numbers,
        batch: &Batch,
        now: Timestamp,
    ) {
        let after = self.levels[slot as usize].2.numbers();
        changes.push(Change {
            slot,
            position: position as u32,
            in_transit,
            outcome,
            before,
            after,
        });
        let policy = self.policy_of(slot);
        self.transitions.clear();
        // Its first change: even one that leaves it at zero (a RELEASE on a
        // new level) shows a level that is out of stock, as a restart
        // derives it. A level never changed (version 0) has no state.
        let fresh = before == Numbers::default() && self.levels[slot as usize].2.version == 1;
        crate::alerts::transitions(&before, &after, policy, fresh, &mut self.transitions);
        for i in 0..self.transitions.len() {
            let (kind, transition, severity) = self.transitions[i];
            let event_id = batch.event_id(position).into();
            self.push_alert(slot, kind, transition, severity, now, event_id);
        }
        self.timers_after_change(slot, outcome, batch, position, now);
    }

    /// Keeps the time-driven alerts of `slot` in step with a change: a
    /// STALE level is fresh again, a changed level is due to go stale, a
    /// refused reservation counts toward a burst.
    fn timers_after_change(
        &mut self,
        slot: u32,
        outcome: Outcome,
        batch: &Batch,
        position: usize,
        now: Timestamp,
    ) {
        let rules = self.timers.rules;
        if matches!(outcome, Outcome::Rejected(Rejection::InsufficientStock)) {
            self.count_refusal(slot, now, batch.event_id(position));
            return;
        }
        let level = &self.levels[slot as usize].2;
        if level.updated_at != now || rules.stale_after_ns <= 0 {
            return; // nothing changed here
        }
        let flags = self.timers.flags[slot as usize];
        if flags & STALE_RAISED != 0 {
            let event_id = batch.event_id(position).into();
            self.push_alert(
                slot,
                AlertKind::Stale,
                Transition::Cleared,
                Severity::Info,
                now,
                event_id,
            );
        }
        if flags & STALE_QUEUED == 0 {
            self.timers.due.push(std::cmp::Reverse((
                Timestamp(now.0.saturating_add(rules.stale_after_ns)),
                slot,
                TimerKind::Stale,
            )));
        }
        self.timers.flags[slot as usize] = STALE_QUEUED;
    }

    /// A reservation refused at `slot` for lack of stock: counts toward a
    /// RESERVATION_REJECTED burst.
    fn count_refusal(&mut self, slot: u32, now: Timestamp, event_id: &str) {
        let rules = self.timers.rules;
        if rules.burst_rejections == 0 {
            return;
        }
        let burst = self.timers.bursts.entry(slot).or_insert(Burst {
            window_start: now,
            last: now,
            count: 0,
            raised: false,
        });
        if now.0 - burst.window_start.0 > rules.burst_window_ns && !burst.raised {
            (burst.window_start, burst.count) = (now, 0);
        }
        let first = burst.count == 0;
        burst.count += 1;
        burst.last = now;
        let raise = burst.count >= rules.burst_rejections && !burst.raised;
        burst.raised |= raise;
        if first {
            let due = Timestamp(now.0.saturating_add(rules.burst_window_ns));
            self.timers
                .due
                .push(std::cmp::Reverse((due, slot, TimerKind::BurstEnd)));
        }
        if raise {
            let (kind, severity) = (AlertKind::ReservationRejected, Severity::Warning);
            self.push_alert(
                slot,
                kind,
                Transition::Raised,
                severity,
                now,
                event_id.into(),
            );
        }
    }

    /// An order line refused for lack of stock at (sku, location) by the
    /// order step, which decides without a partition event: counts toward
    /// a burst like a refused RESERVATION event.
    pub fn note_refusal(&mut self, sku: &str, location: &str, now: Timestamp, event_id: &str) {
        let slot = self.slot(sku, location);
        self.count_refusal(slot, now, event_id);
    }

    fn push_alert(
        &mut self,
        slot: u32,
        kind: AlertKind,
        transition: Transition,
        severity: Severity,
        now: Timestamp,
        event_id: Box<str>,
    ) {
        let policy = self.policy_of(slot);
        let n = self.levels[slot as usize].2.numbers();
        self.alerts.push(Alert {
            seq: 0,
            kind,
            transition,
            severity,
            slot,
            at: now,
            on_hand: n.on_hand,
            available: policy.available(&n),
            threshold: policy.low_stock_threshold,
            event_id,
        });
    }

    /// Sets the rules of the time-driven alerts (from the engine's
    /// configuration) and queues every level under them.
    pub fn set_timer_rules(&mut self, rules: TimerRules) {
        self.timers.rules = rules;
        self.requeue_timers();
    }

    /// When the next time-driven alert may be due (`None`: none queued).
    pub fn next_timer(&self) -> Option<Timestamp> {
        self.timers.due.peek().map(|e| e.0 .0)
    }

    /// Lets time pass to `now`: raises STALE for levels unchanged for the
    /// stale time and clears bursts quiet for a window. Run once per log
    /// record, after its events, live and in replay alike.
    pub(crate) fn tick(&mut self, now: Timestamp) {
        let rules = self.timers.rules;
        while let Some(&std::cmp::Reverse((due, slot, kind))) = self.timers.due.peek() {
            if due > now {
                break;
            }
            self.timers.due.pop();
            match kind {
                TimerKind::Stale => {
                    let really = Timestamp(
                        self.levels[slot as usize]
                            .2
                            .updated_at
                            .0
                            .saturating_add(rules.stale_after_ns),
                    );
                    // An entry queued before the level changed again comes back at
                    // its real time, so that alerts due at one tick come out in
                    // (due, slot) order, as after a restart.
                    if really != due {
                        self.timers
                            .due
                            .push(std::cmp::Reverse((really, slot, kind)));
                    } else {
                        self.timers.flags[slot as usize] = STALE_RAISED;
                        self.push_alert(
                            slot,
                            AlertKind::Stale,
                            Transition::Raised,
                            Severity::Warning,
                            now,
                            "".into(),
                        );
                    }
                }
                TimerKind::BurstEnd => {
                    let Some(burst) = self.timers.bursts.get(&slot).copied() else {
                        continue;
                    };
                    let really = Timestamp(burst.last.0.saturating_add(rules.burst_window_ns));
                    if really != due {
                        self.timers
                            .due
                            .push(std::cmp::Reverse((really, slot, kind)));
                        continue;
                    }
                    self.timers.bursts.remove(&slot);
                    if burst.raised {
                        self.push_alert(
                            slot,
                            AlertKind::ReservationRejected,
                            Transition::Cleared,
                            Severity::Info,
                            now,
                            "".into(),
                        );
                    }
                }
            }
        }
        self.timers.last_tick = now;
    }

    /// Rebuilds the due times and flags from the levels, the bursts and
    /// the last tick (after a restore or a change of rules).
    fn requeue_timers(&mut self) {
        let rules = self.timers.rules;
        let timers = &mut self.timers;
        timers.due.clear();
        timers.flags = vec![0; self.levels.len()];
        for (slot, (_, _, level)) in self.levels.iter().enumerate() {
            if level.version == 0 || rules.stale_after_ns <= 0 {
                continue;
            }
            let due = Timestamp(level.updated_at.0.saturating_add(rules.stale_after_ns));
            if due <= timers.last_tick {
                timers.flags[slot] = STALE_RAISED;
            } else {
                timers.flags[slot] = STALE_QUEUED;
                timers
                    .due
                    .push(std::cmp::Reverse((due, slot as u32, TimerKind::Stale)));
            }
        }
        for (slot, burst) in &timers.bursts {
            let due = Timestamp(burst.last.0.saturating_add(rules.burst_window_ns));
            timers
                .due
                .push(std::cmp::Reverse((due, *slot, TimerKind::BurstEnd)));
        }
    }

    /// The names of the level at `slot`.
    pub fn names_of(&self, slot: u32) -> (&Arc<str>, &Arc<str>) {
        let (sku, location, _) = &self.levels[slot as usize];
        (&self.names[*sku as usize], &self.names[*location as usize])
    }

    /// The policy of the product of the level at `slot`.
    pub fn policy_of(&self, slot: u32) -> Policy {
        let (sku, location, _) = &self.levels[slot as usize];
        self.policy(*sku, *location)
    }

    /// The shell's history cursor of the level at `slot` (0 = none).
    pub fn history_head(&self, slot: u32) -> u64 {
        self.history_heads[slot as usize]
    }

    pub fn set_history_head(&mut self, slot: u32, head: u64) {
        self.history_heads[slot as usize] = head;
    }

    /// The history cursor of a level by its names, for queries.
    pub fn history_head_of(&self, sku: &str, location: &str) -> Option<u64> {
        let key = (*self.symbols.get(sku)?, *self.symbols.get(location)?);
        self.index
            .get(&key)
            .map(|slot| self.history_heads[*slot as usize])
    }

    /// As [`Catalog::policy`], from this partition's copy of the rules.
    fn policy(&self, sku: Sym, location: Sym) -> Policy {
        let mut policy = self.policies.get(&sku).copied().unwrap_or_default();
        if let Some(threshold) = self.location_thresholds.get(&location) {
            policy.low_stock_threshold = *threshold;
        }
        policy
    }

    /// Moves the roll-ups by what changed at `slot` since `before`.
    fn account(&mut self, slot: u32, before: &Numbers) {
        let (sku, location, level) = &self.levels[slot as usize];
        let after = level.numbers();
        if after == *before {
            return;
        }
        let (sku, location) = (*sku, *location);
        let policy = self.policy(sku, location);
        let delta = Totals::of(&after, policy).minus(&Totals::of(before, policy));
        self.add_to_rollups(sku, location, &delta);
    }

    fn add_to_rollups(&mut self, sku: Sym, location: Sym, delta: &Totals) {
        self.sku_totals[sku as usize].add(delta);
        self.location_totals.entry(location).or_default().add(delta);
        let groups = match self.location_groups.get(&location) {
            Some(groups) => groups.as_slice(),
            None => std::slice::from_ref(&self.unknown_type),
        };
        let per_sku = self.group_totals.entry(sku).or_default();
        for group in groups {
            match per_sku.iter_mut().find(|(g, _)| g == group) {
                Some((_, totals)) => totals.add(delta),
                None => {
                    let mut totals = Totals::default();
                    totals.add(delta);
                    per_sku.push((*group, totals));
                }
            }
        }
    }

    /// Applies a catalog change: a product's policy, or a location's groups
    /// or threshold, changed, so the roll-ups of its levels move.
    pub fn apply_catalog(&mut self, change: &CatalogChange, now: Timestamp) {
        match change {
            CatalogChange::Product(product) => {
                let (sku, policy) = (self.intern(&product.sku), product.policy());
                if self.policies.get(&sku).copied().unwrap_or_default() == policy {
                    return;
                }
                let slots = self.by_sku.get(&sku).cloned().unwrap_or_default();
                self.regroup(&slots, now, |p| {
                    if policy == Policy::default() {
                        p.policies.remove(&sku);
                    } else {
                        p.policies.insert(sku, policy);
                    }
                });
            }
            CatalogChange::Location(location) => {
                let id = self.intern(&location.location_id);
                let groups: Vec<Sym> = location.groups().iter().map(|g| self.intern(g)).collect();
                let threshold = location.low_stock_threshold;
                let slots: Vec<u32> = self
                    .by_location
                    .get(&id)
                    .map(|levels| levels.all(|slot| self.sku_name(slot)))
                    .unwrap_or_default();
                self.regroup(&slots, now, |p| {
                    p.location_groups.insert(id, groups);
                    match threshold {
                        Some(t) => p.location_thresholds.insert(id, t),
                        None => p.location_thresholds.remove(&id),
                    };
                });
            }
            // What people say about alerts changes no level.
            CatalogChange::Acknowledge(_) | CatalogChange::Mute(_) => {}
        }
    }

    /// Takes `slots` out of every roll-up, lets `change` alter the rules
    /// (policies, groups, thresholds), and puts them back under the new
    /// rules; groups left empty are dropped. Stock alerts move with the
    /// rules: a level that is low under the old threshold and not under
    /// the new one has its LOW_STOCK cleared, and so on.
    fn regroup(&mut self, slots: &[u32], now: Timestamp, change: impl FnOnce(&mut Partition)) {
        let states_before: Vec<_> = slots
            .iter()
            .map(|&slot| {
                let n = self.levels[slot as usize].2.numbers();
                crate::alerts::active_states(&n, self.policy_of(slot))
            })
            .collect();
        for &slot in slots {
            let (sku, location, level) = &self.levels[slot as usize];
            let (sku, location) = (*sku, *location);
            let removed =
                Totals::default().minus(&Totals::of(&level.numbers(), self.policy(sku, location)));
            self.add_to_rollups(sku, location, &removed);
        }
        change(self);
        for &slot in slots {
            let (sku, location, level) = &self.levels[slot as usize];
            let (sku, location) = (*sku, *location);
            let added = Totals::of(&level.numbers(), self.policy(sku, location));
            self.add_to_rollups(sku, location, &added);
        }
        for &slot in slots {
            let sku = self.levels[slot as usize].0;
            if let Some(groups) = self.group_totals.get_mut(&sku) {
                groups.retain(|(_, t)| !t.is_zero());
            }
        }
        for (&slot, before) in slots.iter().zip(states_before) {
            if self.levels[slot as usize].2.version == 0 {
                continue; // never changed: no state, as after a restart
            }
            let n = self.levels[slot as usize].2.numbers();
            let after = crate::alerts::active_states(&n, self.policy_of(slot));
            for &(kind, severity) in &after {
                if !before.contains(&(kind, severity)) {
                    self.push_alert(slot, kind, Transition::Raised, severity, now, "".into());
                }
            }
            for &(kind, _) in &before {
                if !after.iter().any(|(k, _)| *k == kind) {
                    self.push_alert(
                        slot,
                        kind,
                        Transition::Cleared,
                        Severity::Info,
                        now,
                        "".into(),
                    );
                }
            }
        }
    }

    /// Rebuilds every roll-up from the levels.
    fn recompute_rollups(&mut self) {
        self.sku_totals = vec![Totals::default(); self.names.len()];
        self.location_totals.clear();
        self.group_totals.clear();
        for slot in 0..self.levels.len() {
            let (sku, location, level) = &self.levels[slot];
            let totals = Totals::of(&level.numbers(), self.policy(*sku, *location));
            let (sku, location) = (*sku, *location);
            self.add_to_rollups(sku, location, &totals);
        }
    }

    fn intern(&mut self, name: &str) -> Sym {
        if let Some(sym) = self.symbols.get(name) {
            return *sym;
        }
        let sym = self.names.len() as Sym;
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.symbols.insert(name, sym);
        self.sku_totals.push(Totals::default());
        sym
    }

    /// The level in `slot` (a slot of a change or an alert), with its names.
    pub fn view(&self, slot: u32) -> LevelView {
        let (sku, location, level) = &self.levels[slot as usize];
        LevelView {
            sku: self.names[*sku as usize].clone(),
            location_id: self.names[*location as usize].clone(),
            level: level.clone(),
        }
    }

    pub fn get(&self, sku: &str, location: &str) -> Option<LevelView> {
        let key = (*self.symbols.get(sku)?, *self.symbols.get(location)?);
        self.index.get(&key).map(|slot| self.view(*slot))
    }

    /// The policy of the level of (sku, location) here (the default for
    /// a level this partition does not have).
    pub fn policy_of_level(&self, sku: &str, location: &str) -> Policy {
        let key = self
            .symbols
            .get(sku)
            .and_then(|s| Some((*s, *self.symbols.get(location)?)));
        match key.and_then(|k| self.index.get(&k)) {
            Some(slot) => self.policy_of(*slot),
            None => Policy::default(),
        }
    }

    /// The quantities of a level, without copying it.
    pub fn numbers(&self, sku: &str, location: &str) -> Option<Numbers> {
        self.level(sku, location).map(Level::numbers)
    }

    /// A level, without copying it.
    pub fn level(&self, sku: &str, location: &str) -> Option<&Level> {
        let key = (*self.symbols.get(sku)?, *self.symbols.get(location)?);
        self.index
            .get(&key)
            .map(|slot| &self.levels[*slot as usize].2)
    }

    /// Locations with a level of `sku` here.
    pub fn locations_of_sku(&self, sku: &str) -> Vec<Arc<str>> {
        let Some(slots) = self.symbols.get(sku).and_then(|s| self.by_sku.get(s)) else {
            return Vec::new();
        };
        slots
            .iter()
            .map(|slot| self.names[self.levels[*slot as usize].1 as usize].clone())
            .collect()
    }

    /// Every level of `sku` in this partition.
    pub fn levels_of_sku(&self, sku: &str) -> Vec<LevelView> {
        let Some(slots) = self.symbols.get(sku).and_then(|s| self.by_sku.get(s)) else {
            return Vec::new();
        };
        slots.iter().map(|slot| self.view(*slot)).collect()
    }

    /// The SKUs with a level at `location` in this partition, in order.
    pub fn skus_at_location(&self, location: &str) -> Vec<Arc<str>> {
        self.symbols
            .get(location)
            .and_then(|s| self.by_location.get(s))
            .map(|levels| {
                levels
                    .all(|slot| self.sku_name(slot))
                    .into_iter()
                    .map(|slot| self.sku_name(slot).clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The sku of the level in `slot`.
    fn sku_name(&self, slot: u32) -> &Arc<str> {
        &self.names[self.levels[slot as usize].0 as usize]
    }

    /// Up to `limit` levels of `location` with sku > `after` that `keep`
    /// (given the level and its product's policy), by sku.
    pub fn levels_of_location(
        &self,
        location: &str,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&Level, Policy) -> bool,
    ) -> Vec<LevelView> {
        let Some(levels) = self
            .symbols
            .get(location)
            .and_then(|s| self.by_location.get(s))
        else {
            return Vec::new();
        };
        let slots = levels.sorted(|slot| self.sku_name(slot));
        let sorted = &slots.0;
        let start = after.map_or(0, |after| {
            sorted.partition_point(|slot| &**self.sku_name(*slot) <= after)
        });
        sorted[start..]
            .iter()
            .filter(|slot| keep(&self.levels[**slot as usize].2, self.policy_of(**slot)))
            .take(limit)
            .map(|slot| self.view(*slot))
            .collect()
    }

    /// Every level, in creation order.
    pub fn iter(&self) -> impl Iterator<Item = LevelView> + '_ {
        (0..self.levels.len() as u32).map(|slot| self.view(slot))
    }

    /// The partition as of now, in a form that encodes as its stored
    /// [`PartitionSnapshot`]. The owner pauses only for the copy; the
    /// encoding can run elsewhere.
    pub fn snapshot(&self) -> PartitionImage {
        PartitionImage {
            names: self.names.clone(),
            levels: self.levels.clone(),
            history_heads: self.history_heads.clone(),
            history_end: self.history_end,
            alerts: Alerts {
                next_seq: self.alerts.next_seq,
                recent: self.alerts.recent.clone(),
                active: Default::default(),
            },
            timers: self.timer_state(),
        }
    }

    fn timer_state(&self) -> TimerState {
        let mut bursts: Vec<(u32, Burst)> =
            self.timers.bursts.iter().map(|(s, b)| (*s, *b)).collect();
        bursts.sort_by_key(|(slot, _)| *slot);
        TimerState {
            last_tick: self.timers.last_tick,
            bursts,
        }
    }

    /// Rebuilds a partition from its stored levels and the catalog as of
    /// the same log position; roll-ups are derived, never stored.
    pub fn restore(snapshot: PartitionSnapshot, catalog: &Catalog, rules: TimerRules) -> Partition {
        let mut partition = Partition::default();
        for product in catalog.products.values() {
            let policy = product.policy();
            if policy != Policy::default() {
                let sku = partition.intern(&product.sku);
                partition.policies.insert(sku, policy);
            }
        }
        for location in catalog.locations.values() {
            let id = partition.intern(&location.location_id);
            let groups = location
                .groups()
                .iter()
                .map(|g| partition.intern(g))
                .collect();
            partition.location_groups.insert(id, groups);
            if let Some(threshold) = location.low_stock_threshold {
                partition.location_thresholds.insert(id, threshold);
            }
        }
        for (sku, location, level) in snapshot.levels {
            let slot = partition.slot(&sku, &location);
            partition.levels[slot as usize].2 = level;
        }
        for (slot, head) in snapshot.history_heads.into_iter().enumerate() {
            if let Some(h) = partition.history_heads.get_mut(slot) {
                *h = head;
            }
        }
        partition.history_end = snapshot.history_end;
        partition.alerts = snapshot.alerts;
        partition.timers.last_tick = snapshot.timers.last_tick;
        partition.timers.bursts = snapshot.timers.bursts.into_iter().collect();
        partition.set_timer_rules(rules);
        partition.rebuild_active_alerts();
        partition.recompute_rollups();
        partition
    }

    /// Active alerts from the levels' state, each with the newest kept
    /// alert that raised it (or, if that was dropped from the recent ones,
    /// a stand-in at the level's last change with no eventId). Levels never
    /// changed have none, as live.
    fn rebuild_active_alerts(&mut self) {
        let mut raised: FxHashMap<(AlertKind, u32), &Arc<Alert>> = FxHashMap::default();
        for alert in self
            .alerts
            .recent
            .iter()
            .filter(|a| a.transition == Transition::Raised)
        {
            raised.insert((alert.kind, alert.slot), alert);
        }
        let mut active = FxHashMap::default();
        for slot in 0..self.levels.len() as u32 {
            let level = &self.levels[slot as usize].2;
            let policy = self.policy_of(slot);
            let n = level.numbers();
            // A level never changed has no stock state, but refused
            // reservations may have made it a burst.
            let mut states = match level.version {
                0 => Vec::new(),
                _ => crate::alerts::active_states(&n, policy),
            };
            if self.timers.flags[slot as usize] & STALE_RAISED != 0 {
                states.push((AlertKind::Stale, Severity::Warning));
            }
            if self.timers.bursts.get(&slot).is_some_and(|b| b.raised) {
                states.push((AlertKind::ReservationRejected, Severity::Warning));
            }
            for (kind, severity) in states {
                let alert = match raised.get(&(kind, slot)) {
                    Some(alert) => Arc::clone(alert),
                    None => Arc::new(Alert {
                        seq: 0,
                        kind,
                        transition: Transition::Raised,
                        severity,
                        slot,
                        at: level.updated_at,
                        on_hand: n.on_hand,
                        available: policy.available(&n),
                        threshold: policy.low_stock_threshold,
                        event_id: "".into(),
                    }),
                };
                active.insert((kind, slot), alert);
            }
        }
        self.alerts.active = active;
    }

    /// Roll-up of `sku` over its levels here.
    pub fn sku_totals(&self, sku: &str) -> Option<Totals> {
        let sym = *self.symbols.get(sku)?;
        self.by_sku
            .contains_key(&sym)
            .then(|| self.sku_totals[sym as usize])
    }

    /// Roll-up of every level at `location` here.
    pub fn location_totals(&self, location: &str) -> Option<Totals> {
        self.location_totals
            .get(self.symbols.get(location)?)
            .copied()
    }

    /// Roll-ups of `sku` per group (`region:…`, `channel:…`, `type:…`).
    pub fn group_totals(&self, sku: &str) -> Vec<(Arc<str>, Totals)> {
        let Some(groups) = self.symbols.get(sku).and_then(|s| self.group_totals.get(s)) else {
            return Vec::new();
        };
        groups
            .iter()
            .map(|(group, totals)| (self.names[*group as usize].clone(), *totals))
            .collect()
    }

    /// Every location with a level here.
    pub fn locations(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.by_location
            .keys()
            .map(|sym| &self.names[*sym as usize])
    }
}
