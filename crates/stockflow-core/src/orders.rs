//! Orders: holds on stock that the engine takes, releases, fulfils and
//! expires, deciding every reservation against the state at one log
//! position, so no two orders can both get the last unit.
//!
//! The order step runs once per log record that carries order commands,
//! events naming orders, or a due hold, after the record's events
//! ([`step_due`]): [`OrderBook::observe`], then [`OrderBook::decide`]. It reads
//! availability through a [`StockView`], and returns the events that carry
//! its decisions out (RESERVATION, RELEASE, FULFILLMENT with correlationId =
//! orderId), which the partitions then apply like any event. Deciding uses
//! onHand − reserved − safetyStock, less what this step already promised,
//! and counts the holders this step adds to a level against its limit, so
//! it is never looser than the RESERVATION rule: every generated
//! reservation applies.
//!
//! An all_or_nothing order reserves every line or none: the check for all
//! lines happens in one step before any event is generated, so there is no
//! half-reserved order to compensate, before or after a crash.
//!
//! Holds themselves live at the levels ([`crate::level`]): a level's owner
//! decides every RESERVATION, RELEASE and FULFILLMENT that names an order,
//! in the order the events arrived, in both modes. An order's events sent
//! by another system (correlationId = orderId) therefore never pass
//! through a book: they apply at their level like any event, and the book
//! *observes* what they did ([`HoldChange`], [`Order::observe`]), so the
//! order's lines and status follow its holds and its hold still expires.
//! The book's own decisions go out as events with the same correlationId,
//! so the level's hold and the book's allocations move together.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::event::EventType;
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    AllOrNothing,
    Partial,
}

/// Where units of a line without a location come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sourcing {
    /// Locations with the most available first; a line may be split.
    MostAvailable,
    /// These locations in this order; a line may be split.
    Priority(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRequest {
    pub sku: String,
    pub location_id: Option<String>,
    pub quantity: i64,
}

/// What the log carries for orders. Settings that shape a decision
/// (sourcing, hold) travel in the command, so replay decides the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderCommand {
    Place {
        order_id: String,
        lines: Vec<LineRequest>,
        mode: Mode,
        hold_ns: i64,
        sourcing: Sourcing,
        /// Hash of the request, to tell a retry from a different order.
        fingerprint: u64,
        /// The token name that sent it (see [`OrderCommand::by`]).
        by: String,
    },
    /// Fulfils the given lines (all when `None`).
    Fulfil {
        order_id: String,
        lines: Option<Vec<usize>>,
        by: String,
    },
    Cancel {
        order_id: String,
        by: String,
    },
    Extend {
        order_id: String,
        hold_ns: i64,
        by: String,
    },
}

impl OrderCommand {
    pub fn order_id(&self) -> &str {
        match self {
            OrderCommand::Place { order_id, .. }
            | OrderCommand::Fulfil { order_id, .. }
            | OrderCommand::Cancel { order_id, .. }
            | OrderCommand::Extend { order_id, .. } => order_id,
        }
    }

    /// Who sent the command: recorded on the order's transition and on
    /// the events that carry its decision out.
    pub fn by(&self) -> &str {
        match self {
            OrderCommand::Place { by, .. }
            | OrderCommand::Fulfil { by, .. }
            | OrderCommand::Cancel { by, .. }
            | OrderCommand::Extend { by, .. } => by,
        }
    }

    /// When a hold this command sets would expire, for the shell's timers.
    pub fn hold_until(&self, now: Timestamp) -> Option<Timestamp> {
        match self {
            OrderCommand::Place { hold_ns, .. } | OrderCommand::Extend { hold_ns, .. } => {
                Some(now.saturating_add_ns(*hold_ns))
            }
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Placed, lines still out for reservation (Kafka mode's saga only).
    Pending,
    Reserved,
    PartiallyReserved,
    Rejected,
    Fulfilled,
    Cancelled,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Reserved => "reserved",
            Status::PartiallyReserved => "partially_reserved",
            Status::Rejected => "rejected",
            Status::Fulfilled => "fulfilled",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }

    /// Every status (pending first; each later one is where a decision
    /// may leave an order).
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::Reserved,
        Status::PartiallyReserved,
        Status::Rejected,
        Status::Fulfilled,
        Status::Cancelled,
        Status::Expired,
    ];

    pub fn from_wire(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Holding stock right now.
    pub fn is_live(self) -> bool {
        matches!(self, Status::Reserved | Status::PartiallyReserved)
    }
}

/// Units of a line held at one location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub location_id: String,
    pub quantity: i64,
    pub fulfilled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub location_id: Option<String>,
    pub requested: i64,
    pub allocations: Vec<Allocation>,
    pub reason: Option<String>,
}

impl Line {
    pub fn reserved(&self) -> i64 {
        self.allocations.iter().map(|a| a.quantity).sum()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub fingerprint: u64,
    pub mode: Mode,
    pub status: Status,
    pub lines: Vec<Line>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    /// What changed the order, by whom, oldest first: its first
    /// transition and the newest (at most [`ORDER_TRANSITIONS_MAX`]).
    ///
    /// [`ORDER_TRANSITIONS_MAX`]: crate::limits::ORDER_TRANSITIONS_MAX
    pub transitions: Vec<Transition>,
}

/// What moved an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Place,
    Fulfil,
    Cancel,
    Extend,
    /// Its hold fell due.
    Expire,
    /// An event naming the order (correlationId) moved its hold.
    ReservationEvent,
    ReleaseEvent,
    FulfillmentEvent,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Place => "place",
            Action::Fulfil => "fulfil",
            Action::Cancel => "cancel",
            Action::Extend => "extend",
            Action::Expire => "expire",
            Action::ReservationEvent => "reservation_event",
            Action::ReleaseEvent => "release_event",
            Action::FulfillmentEvent => "fulfillment_event",
        }
    }
}

/// One change of an order: what, when, by whom, and the status it left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub action: Action,
    pub status: Status,
    pub at: Timestamp,
    /// The token name (or [`crate::ANONYMOUS`], [`crate::SERVER`]).
    pub by: String,
}

/// A decision's effect on one level, carried out as a canonical event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderEvent {
    pub event_id: String,
    pub event_type: EventType,
    pub sku: String,
    pub location_id: String,
    pub quantity: i64,
    pub order_id: String,
    /// Who made the decision (the command's sender, or [`crate::SERVER`]).
    pub by: String,
}

/// The answer to one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The order as it now is (also for a repeated, identical command).
    Done(Order),
    /// Not allowed in the order's current state (or a different body for
    /// an existing orderId): the order as it is, and why.
    Conflict(Order, String),
    NotFound(String),
}

/// Read access to stock while deciding.
pub trait StockView {
    /// onHand − reserved − safetyStock at (sku, location), not clamped (it
    /// may be negative); 0 for a level never seen.
    fn free(&self, sku: &str, location: &str) -> i64;
    /// Every location with a level of `sku`.
    fn locations(&self, sku: &str) -> Vec<String>;
    /// Orders holding units at (sku, location).
    fn holders(&self, _sku: &str, _location: &str) -> usize {
        0
    }
}

/// What one order step has promised so far, per level: units (reserved
/// less released) and new holders, on top of the stock it reads.
#[derive(Debug, Default)]
struct Promised {
    units: HashMap<(String, String), i64>,
    holders: HashMap<(String, String), usize>,
}

/// Every order, and the holds' expiry times.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OrderBook {
    pub orders: BTreeMap<String, Order>,
    expiries: BTreeSet<(Timestamp, String)>,
}

impl OrderBook {
    /// The earliest hold expiry, for timers.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.expiries.first().map(|(t, _)| *t)
    }

    /// Orders whose hold falls due by `now`: [`OrderBook::decide`] at `now`
    /// expires those still holding (an extended hold is no longer due).
    pub fn due_by(&self, now: Timestamp) -> Vec<String> {
        self.expiries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .filter(|(at, id)| {
                self.orders
                    .get(id)
                    .is_some_and(|o| o.status.is_live() && o.expires_at == Some(*at))
            })
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Units held per level and order by live orders (unfulfilled
    /// allocations).
    pub fn held_by_order(&self) -> BTreeMap<(String, String), BTreeMap<String, i64>> {
        let mut held: BTreeMap<(String, String), BTreeMap<String, i64>> = BTreeMap::new();
        for order in self.orders.values().filter(|o| o.status.is_live()) {
            for line in &order.lines {
                for a in line.allocations.iter().filter(|a| !a.fulfilled) {
                    *held
                        .entry((line.sku.clone(), a.location_id.clone()))
                        .or_default()
                        .entry(order.order_id.clone())
                        .or_insert(0) += a.quantity;
                }
            }
        }
        held
    }

    /// Expires due holds, then runs `commands` in order at `now`. Returns
    /// the events to apply and one answer per command.
    pub fn decide(
        &mut self,
        commands: &[OrderCommand],
        now: Timestamp,
        stock: &dyn StockView,
    ) -> (Vec<OrderEvent>, Vec<Answer>) {
        let mut events = Vec::new();
        let mut pending = Promised::default();
        while let Some((at, id)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            if let Some(order) = self.orders.get_mut(&id) {
                if order.status.is_live() && order.expires_at == Some(at) {
                    release(order, "expire", crate::SERVER, &mut events, &mut pending);
                    order.status = Status::Expired;
                    order.expires_at = None;
                    order.updated_at = now;
                    order.record(Action::Expire, now, crate::SERVER);
                }
            }
        }
        let answers = commands
            .iter()
            .map(|c| self.command(c, now, stock, &mut events, &mut pending))
            .collect();
        (events, answers)
    }

    fn command(
        &mut self,
        command: &OrderCommand,
        now: Timestamp,
        stock: &dyn StockView,
        events: &mut Vec<OrderEvent>,
        pending: &mut Promised,
    ) -> Answer {
        let id = command.order_id();
        let Some(order) = self.orders.get_mut(id) else {
            let OrderCommand::Place {
                order_id,
                lines,
                mode,
                hold_ns,
                sourcing,
                fingerprint,
                by,
            } = command
            else {
                return Answer::NotFound(format!("no order {id:?}"));
            };
            let order = place(
                order_id,
                lines,
                *mode,
                *hold_ns,
                sourcing,
                *fingerprint,
                by,
                now,
                stock,
                events,
                pending,
            );
            if let Some(at) = order.expires_at {
                self.expiries.insert((at, order.order_id.clone()));
            }
            self.orders.insert(order.order_id.clone(), order.clone());
            return Answer::Done(order);
        };
        let act = match command {
            OrderCommand::Place { fingerprint, .. } => {
                return if order.fingerprint == *fingerprint {
                    Answer::Done(order.clone())
                } else {
                    Answer::Conflict(
                        order.clone(),
                        format!("order {id:?} exists with a different body; use a new orderId"),
                    )
                };
            }
            OrderCommand::Fulfil { lines, .. } => Act::Fulfil(lines.as_deref()),
            OrderCommand::Cancel { .. } => Act::Cancel,
            OrderCommand::Extend { .. } => Act::Extend,
        };
        match judge(order, act) {
            Err(why) => return Answer::Conflict(order.clone(), why),
            Ok(false) => return Answer::Done(order.clone()),
            Ok(true) => {}
        }
        let expiry = order.expires_at.take();
        if let Some(at) = expiry {
            self.expiries.remove(&(at, order.order_id.clone()));
        }
        let events_before = events.len();
        match command {
            OrderCommand::Fulfil { lines, .. } => {
                for (n, line) in order.lines.iter_mut().enumerate() {
                    if lines.as_ref().is_some_and(|only| !only.contains(&n)) {
                        continue;
                    }
                    for (k, a) in line
                        .allocations
                        .iter_mut()
                        .enumerate()
                        .filter(|(_, a)| !a.fulfilled)
                    {
                        a.fulfilled = true;
                        events.push(OrderEvent {
                            event_id: format!("order:{}:fulfil:{n}:{k}", order.order_id),
                            event_type: EventType::Fulfillment,
                            sku: line.sku.clone(),
                            location_id: a.location_id.clone(),
                            quantity: a.quantity,
                            order_id: order.order_id.clone(),
                            by: command.by().to_owned(),
                        });
                    }
                }
                // Lines left unfulfilled keep the hold they had.
                if order.status_from_holds() {
                    order.expires_at = expiry;
                }
            }
            OrderCommand::Cancel { by, .. } => {
                release(order, "cancel", by, events, pending);
                order.status = Status::Cancelled;
            }
            OrderCommand::Extend { hold_ns, .. } => {
                order.expires_at = Some(now.saturating_add_ns(*hold_ns));
            }
            OrderCommand::Place { .. } => unreachable!("answered above"),
        }
        let action = match act {
            // A fulfil of lines that hold nothing (fulfilled already, or
            // refused) changes nothing, as in Kafka mode's saga.
            Act::Fulfil(_) if events.len() == events_before => None,
            Act::Fulfil(_) => Some(Action::Fulfil),
            Act::Cancel => Some(Action::Cancel),
            Act::Extend => Some(Action::Extend),
        };
        if let Some(action) = action {
            order.record(action, now, command.by());
            order.updated_at = now;
        }
        let answer = Answer::Done(order.clone());
        self.schedule(id);
        answer
    }

    /// Keeps `expiries` in step with an order's hold: a live order with an
    /// `expires_at` is listed at it, any other is not.
    fn schedule(&mut self, id: &str) {
        let Some(order) = self.orders.get_mut(id) else {
            return;
        };
        if !order.status.is_live() {
            order.expires_at = None;
        }
        if let Some(at) = order.expires_at {
            self.expiries.insert((at, id.to_owned()));
        }
    }

    /// Takes in what the events of a log record did to the holds of the
    /// orders they name (in the order the events were received), before
    /// the record's order step: an order is created by its first
    /// RESERVATION, gains a line per RESERVATION (held, or refused with the
    /// reason), and gives up or fulfils the units its RELEASE and
    /// FULFILLMENT events took from its holds. Its status then follows its
    /// holds, and a hold that grew is held for `hold_ns` more (never less
    /// than it already had).
    pub fn observe(&mut self, changes: &[HoldChange], now: Timestamp, hold_ns: i64) {
        for change in changes {
            let created = !self.orders.contains_key(&change.order_id);
            debug_assert!(
                !created || change.event_type == EventType::Reservation,
                "a level held units for an order the book never saw: {change:?}"
            );
            let order = self
                .orders
                .entry(change.order_id.clone())
                .or_insert_with(|| Order::made_by_event(&change.order_id, now));
            if let Some(at) = order.expires_at {
                self.expiries.remove(&(at, change.order_id.clone()));
            }
            order.observe(change, now, hold_ns);
            self.schedule(&change.order_id);
        }
    }
}

/// What one event naming an order did to that order's hold at its level,
/// as the level decided it (see [`hold_changes`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldChange {
    pub order_id: String,
    /// The event's id (unique at its level).
    pub event_id: String,
    pub event_type: EventType,
    pub sku: String,
    pub location_id: String,
    /// What the event asked for.
    pub quantity: i64,
    /// Units the order's hold grew by (RESERVATION) or gave up (RELEASE,
    /// FULFILLMENT): never more than the quantity, nor than it held.
    pub moved: i64,
    /// Why a RESERVATION was refused (`None` if it was granted).
    pub refused: Option<String>,
    /// The hold a RESERVATION asked for (`holdSeconds`), if it did.
    #[serde(default)]
    pub hold_ns: Option<i64>,
    /// Who sent the event.
    #[serde(default)]
    pub by: String,
}

impl HoldChange {
    /// What tells this change from any other of its order: the event and
    /// its level (an eventId is unique at one level, not across levels).
    pub fn identity(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}",
            self.sku, self.location_id, self.event_id
        )
    }
}

/// The hold changes of the order events among a batch's applied `changes`
/// (see [`crate::Step::batch`]), in the changes' order, with
/// each event's position in the batch.
pub fn hold_changes<'a>(
    batch: &'a crate::event::Batch,
    changes: &'a [crate::partition::Change],
) -> impl Iterator<Item = (u32, HoldChange)> + 'a {
    changes
        .iter()
        .filter(|c| !c.in_transit)
        .filter_map(move |c| {
            let order_id = batch.order_of(c.position as usize)?;
            let event = batch.get(c.position as usize);
            let moved = (c.after.reserved - c.before.reserved).abs();
            // A RELEASE or FULFILLMENT that took nothing from the order's
            // holds changes nothing about the order.
            if moved == 0 && event.event_type != EventType::Reservation {
                return None;
            }
            let refused = match c.outcome {
                crate::level::Outcome::Rejected(why) => Some(why),
                _ => None,
            };
            Some((
                c.position,
                HoldChange {
                    order_id: order_id.to_owned(),
                    event_id: event.event_id.to_owned(),
                    event_type: event.event_type,
                    sku: event.sku.to_owned(),
                    location_id: event.location_id.to_owned(),
                    quantity: event.quantity,
                    moved,
                    refused: refused
                        .map(|why| why.describe(event.sku, event.location_id, Some(order_id))),
                    hold_ns: event.hold_seconds.map(|s| i64::from(s) * 1_000_000_000),
                    by: event.by.to_owned(),
                },
            ))
        })
}

/// A command on an existing order, as [`judge`] sees it.
#[derive(Clone, Copy, Debug)]
pub enum Act<'a> {
    /// These lines (all when `None`).
    Fulfil(Option<&'a [usize]>),
    Cancel,
    Extend,
}

/// Whether `act` acts on `order`: `Ok(true)` if it changes it, `Ok(false)`
/// if it repeats what is done (answered with the order as it is), `Err`
/// with why it is not allowed. The one rule for both modes: the embedded
/// order step, Kafka mode's saga homes and its HTTP handlers all ask it.
pub fn judge(order: &Order, act: Act<'_>) -> Result<bool, String> {
    let not_now = |what: &str| {
        let hint = if order.status == Status::Pending {
            " (its lines are still being reserved; retry in a moment)"
        } else {
            ""
        };
        Err(format!(
            "cannot {what} an order that is {}{hint}",
            order.status.as_str()
        ))
    };
    match act {
        Act::Fulfil(lines) => {
            if order.status == Status::Fulfilled {
                return Ok(false);
            }
            if !order.status.is_live() {
                return not_now("fulfil");
            }
            if let Some(bad) = lines
                .iter()
                .copied()
                .flatten()
                .find(|l| **l >= order.lines.len())
            {
                return Err(format!("the order has no line {bad}"));
            }
            Ok(true)
        }
        Act::Cancel => match order.status {
            Status::Cancelled => Ok(false),
            s if s.is_live() => Ok(true),
            _ => not_now("cancel"),
        },
        Act::Extend if order.status.is_live() => Ok(true),
        Act::Extend => not_now("extend"),
    }
}

impl Order {
    /// An order that an event naming it creates, before it takes in what
    /// the event did ([`Order::observe`]): partial (each RESERVATION is a
    /// line of its own), holding nothing yet.
    pub fn made_by_event(order_id: &str, now: Timestamp) -> Order {
        Order {
            order_id: order_id.to_owned(),
            fingerprint: 0,
            mode: Mode::Partial,
            status: Status::Rejected,
            lines: Vec::new(),
            created_at: now,
            updated_at: now,
            expires_at: None,
            transitions: Vec::new(),
        }
    }

    /// Notes a transition that left the order in its current status.
    /// Past [`ORDER_TRANSITIONS_MAX`] the oldest but the first are
    /// forgotten.
    ///
    /// [`ORDER_TRANSITIONS_MAX`]: crate::limits::ORDER_TRANSITIONS_MAX
    pub fn record(&mut self, action: Action, at: Timestamp, by: &str) {
        if self.transitions.len() >= crate::limits::ORDER_TRANSITIONS_MAX {
            self.transitions.remove(1);
        }
        self.transitions.push(Transition {
            action,
            status: self.status,
            at,
            by: by.to_owned(),
        });
    }

    /// Units this order holds (unfulfilled allocations) at (sku, location).
    pub fn held_at(&self, sku: &str, location: &str) -> i64 {
        self.lines
            .iter()
            .filter(|l| l.sku == sku)
            .flat_map(|l| &l.allocations)
            .filter(|a| !a.fulfilled && a.location_id == location)
            .map(|a| a.quantity)
            .sum()
    }

    /// Sets the status from the holds: live while anything is held
    /// (partially reserved if a line is short); a live order that holds
    /// nothing any more is fulfilled if anything was fulfilled, else
    /// cancelled; an order that was not live keeps its status (an event
    /// that moved nothing does not rewrite how it ended). Returns whether
    /// it is live.
    pub fn status_from_holds(&mut self) -> bool {
        let allocations = || self.lines.iter().flat_map(|l| &l.allocations);
        let held = allocations().any(|a| !a.fulfilled);
        let any_fulfilled = allocations().any(|a| a.fulfilled);
        self.status = match (held, self.status) {
            // A saga still collecting its lines' answers decides then.
            (_, Status::Pending) => Status::Pending,
            (true, _) => match self.lines.iter().any(|l| l.reason.is_some()) {
                true => Status::PartiallyReserved,
                false => Status::Reserved,
            },
            (false, s) if s.is_live() && any_fulfilled => Status::Fulfilled,
            (false, s) if s.is_live() => Status::Cancelled,
            (false, s) => s,
        };
        self.status.is_live()
    }

    /// Takes in one [`HoldChange`] of this order at `now` (see
    /// [`OrderBook::observe`]); the caller keeps the expiry index.
    /// `hold_ns` is the hold when the event did not ask for one.
    pub fn observe(&mut self, change: &HoldChange, now: Timestamp, hold_ns: i64) {
        let hold_ns = change.hold_ns.unwrap_or(hold_ns);
        let HoldChange {
            event_type,
            sku,
            location_id,
            quantity,
            moved,
            ..
        } = change;
        match event_type {
            EventType::Reservation => {
                let granted = change.refused.is_none();
                self.lines.push(Line {
                    sku: sku.clone(),
                    location_id: Some(location_id.clone()),
                    requested: *quantity,
                    allocations: match granted && *moved > 0 {
                        true => vec![Allocation {
                            location_id: location_id.clone(),
                            quantity: *moved,
                            fulfilled: false,
                        }],
                        false => Vec::new(),
                    },
                    reason: change.refused.clone(),
                });
                if granted {
                    let until = now.saturating_add_ns(hold_ns);
                    let kept = self.expires_at.filter(|_| self.status.is_live());
                    self.expires_at = Some(kept.map_or(until, |at| at.max(until)));
                }
            }
            EventType::Release | EventType::Fulfillment => {
                // Kafka mode's home learns a cycle late and may have given
                // the units up already (an expiry crossing a RELEASE): the
                // level released them once, so the book takes what it has.
                let fulfil = *event_type == EventType::Fulfillment;
                let mut left = (*moved).min(self.held_at(sku, location_id));
                for line in self.lines.iter_mut().filter(|l| l.sku == *sku) {
                    let mut split = Vec::new();
                    for a in line.allocations.iter_mut() {
                        if left == 0 || a.fulfilled || a.location_id != *location_id {
                            continue;
                        }
                        let take = a.quantity.min(left);
                        left -= take;
                        a.quantity -= take;
                        if fulfil {
                            split.push(Allocation {
                                location_id: a.location_id.clone(),
                                quantity: take,
                                fulfilled: true,
                            });
                        }
                    }
                    line.allocations.retain(|a| a.quantity > 0);
                    line.allocations.extend(split);
                }
            }
            _ => return,
        }
        self.status_from_holds();
        self.updated_at = now;
        let action = match event_type {
            EventType::Reservation => Action::ReservationEvent,
            EventType::Release => Action::ReleaseEvent,
            _ => Action::FulfillmentEvent,
        };
        self.record(action, now, &change.by);
    }
}

/// Releases every unfulfilled allocation of `order`.
fn release(
    order: &mut Order,
    why: &str,
    by: &str,
    events: &mut Vec<OrderEvent>,
    pending: &mut Promised,
) {
    for (n, line) in order.lines.iter_mut().enumerate() {
        for (k, a) in line
            .allocations
            .iter()
            .enumerate()
            .filter(|(_, a)| !a.fulfilled)
        {
            *pending
                .units
                .entry((line.sku.clone(), a.location_id.clone()))
                .or_insert(0) -= a.quantity;
            events.push(OrderEvent {
                event_id: format!("order:{}:{why}:{n}:{k}", order.order_id),
                event_type: EventType::Release,
                sku: line.sku.clone(),
                location_id: a.location_id.clone(),
                quantity: a.quantity,
                order_id: order.order_id.clone(),
                by: by.to_owned(),
            });
        }
        line.allocations.retain(|a| a.fulfilled);
    }
}

#[allow(clippy::too_many_arguments)]
fn place(
    order_id: &str,
    requests: &[LineRequest],
    mode: Mode,
    hold_ns: i64,
    sourcing: &Sourcing,
    fingerprint: u64,
    by: &str,
    now: Timestamp,
    stock: &dyn StockView,
    events: &mut Vec<OrderEvent>,
    pending: &mut Promised,
) -> Order {
    // Plan every line against the stock as it is plus what this step has
    // already promised; nothing is generated until the plan is accepted.
    let mut promised: HashMap<(String, String), i64> = HashMap::new();
    let mut lines = Vec::with_capacity(requests.len());
    for request in requests {
        let candidates = match (&request.location_id, sourcing) {
            (Some(location), _) => vec![location.clone()],
            (None, Sourcing::Priority(list)) => list.clone(),
            (None, Sourcing::MostAvailable) => stock.locations(&request.sku),
        };
        let mut free: Vec<(String, i64)> = candidates
            .into_iter()
            .map(|location| {
                let key = (request.sku.clone(), location.clone());
                let used = pending.units.get(&key).copied().unwrap_or(0)
                    + promised.get(&key).copied().unwrap_or(0);
                let free = stock.free(&request.sku, &location) - used;
                // A level at its limit of holders takes no new order's
                // hold, counting the ones this step already made.
                let holders = stock.holders(&request.sku, &location)
                    + pending.holders.get(&key).copied().unwrap_or(0);
                let free = if holders >= crate::limits::HOLDS_PER_LEVEL_MAX {
                    0
                } else {
                    free
                };
                (location, free.max(0))
            })
            .collect();
        if request.location_id.is_none() && matches!(sourcing, Sourcing::MostAvailable) {
            free.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        }
        let mut left = request.quantity;
        let mut allocations = Vec::new();
        for (location, free) in free {
            if left == 0 {
                break;
            }
            let take = free.min(left);
            if take > 0 {
                allocations.push(Allocation {
                    location_id: location.clone(),
                    quantity: take,
                    fulfilled: false,
                });
                *promised.entry((request.sku.clone(), location)).or_insert(0) += take;
                left -= take;
            }
        }
        let reason = (left > 0).then(|| {
            format!(
                "insufficient_stock: {} of {} available",
                request.quantity - left,
                request.quantity
            )
        });
        lines.push(Line {
            sku: request.sku.clone(),
            location_id: request.location_id.clone(),
            requested: request.quantity,
            allocations,
            reason,
        });
    }
    let complete = lines.iter().all(|l| l.reason.is_none());
    let any = lines.iter().any(|l| !l.allocations.is_empty());
    let status = match (mode, complete, any) {
        (_, true, _) => Status::Reserved,
        (Mode::Partial, false, true) => Status::PartiallyReserved,
        _ => Status::Rejected,
    };
    if status == Status::Rejected {
        for line in &mut lines {
            line.allocations.clear();
            line.reason.get_or_insert_with(|| {
                "not_reserved: another line of this all_or_nothing order could not be".into()
            });
        }
    }
    for (n, line) in lines.iter().enumerate() {
        for (k, a) in line.allocations.iter().enumerate() {
            let key = (line.sku.clone(), a.location_id.clone());
            *pending.holders.entry(key.clone()).or_insert(0) += 1;
            *pending.units.entry(key).or_insert(0) += a.quantity;
            events.push(OrderEvent {
                event_id: format!("order:{order_id}:reserve:{n}:{k}"),
                event_type: EventType::Reservation,
                sku: line.sku.clone(),
                location_id: a.location_id.clone(),
                quantity: a.quantity,
                order_id: order_id.to_owned(),
                by: by.to_owned(),
            });
        }
    }
    let mut order = Order {
        order_id: order_id.to_owned(),
        fingerprint,
        mode,
        status,
        lines,
        created_at: now,
        updated_at: now,
        expires_at: status.is_live().then(|| now.saturating_add_ns(hold_ns)),
        transitions: Vec::new(),
    };
    order.record(Action::Place, now, by);
    order
}

/// [`StockView`] over partitions (plain, or behind lock guards) and the
/// catalog's safety stock.
pub struct StockOf<'a, P> {
    pub partitions: &'a [P],
    pub catalog: &'a crate::catalog::Catalog,
}

impl<P: std::ops::Deref<Target = crate::partition::Partition>> StockView for StockOf<'_, P> {
    fn free(&self, sku: &str, location: &str) -> i64 {
        let p = crate::partition::route(sku, location, self.partitions.len() as u16);
        match self.partitions[p as usize].level(sku, location) {
            Some(l) => l.on_hand - l.reserved - self.catalog.policy(sku, location).safety_stock,
            None => 0,
        }
    }

    fn holders(&self, sku: &str, location: &str) -> usize {
        let p = crate::partition::route(sku, location, self.partitions.len() as u16);
        self.partitions[p as usize]
            .level(sku, location)
            .map_or(0, |l| l.holds().len())
    }

    fn locations(&self, sku: &str) -> Vec<String> {
        let mut all: Vec<String> = self
            .partitions
            .iter()
            .flat_map(|p| p.locations_of_sku(sku))
            .map(|l| l.to_string())
            .collect();
        all.sort();
        all
    }
}

/// The decisions' events as a batch to apply, stamped `now`.
/// What one order step does to the partitions.
#[derive(Debug, Default)]
pub struct StepEffects {
    /// The decisions, as canonical events (see [`order_batch`]).
    pub batch: crate::event::Batch,
    /// Lines refused for lack of stock (see [`refusals`]), by partition.
    pub refusals: Vec<(u16, String, String, String)>,
}

impl StepEffects {
    pub fn new(
        commands: &[OrderCommand],
        events: &[OrderEvent],
        answers: &[Answer],
        now: Timestamp,
        partitions: u16,
    ) -> StepEffects {
        StepEffects {
            batch: order_batch(events, now, partitions),
            refusals: refusals(commands, answers, now)
                .into_iter()
                .map(|(sku, location, cause)| {
                    (
                        crate::partition::route(&sku, &location, partitions),
                        sku,
                        location,
                        cause,
                    )
                })
                .collect(),
        }
    }

    /// Applies the step to partition `id`: its share of the decisions,
    /// then its refusals (see [`crate::Step::orders`]).
    pub(crate) fn apply_to(
        &self,
        id: u16,
        partition: &mut crate::partition::Partition,
        now: Timestamp,
        exceptions: &mut Vec<crate::partition::Exception>,
        changes: &mut Vec<crate::partition::Change>,
    ) {
        partition.apply_batch(id, &self.batch, now, exceptions, changes);
        self.apply_refusals(id, partition, now);
    }

    /// The refusals part of [`StepEffects::apply_to`].
    pub(crate) fn apply_refusals(
        &self,
        id: u16,
        partition: &mut crate::partition::Partition,
        now: Timestamp,
    ) {
        for (_, sku, location, cause) in self.refusals.iter().filter(|r| r.0 == id) {
            partition.note_refusal(sku, location, now, cause);
        }
    }
}

pub fn order_batch(events: &[OrderEvent], now: Timestamp, partitions: u16) -> crate::event::Batch {
    let mut batch = crate::event::Batch::with_capacity(events.len(), events.len() * 64);
    for (index, e) in events.iter().enumerate() {
        batch.push(&crate::event::EventRef {
            event_id: &e.event_id,
            event_type: e.event_type,
            sku: &e.sku,
            location_id: &e.location_id,
            quantity: e.quantity,
            timestamp: Some(now),
            to_location_id: None,
            source_system: Some("orders"),
            correlation_id: Some(&e.order_id),
            hold_seconds: None,
            by: &e.by,
            index: index as u32,
        });
    }
    batch.compute_routes(partitions);
    batch
}

/// The order lines this step refused for lack of stock at a known level,
/// as (sku, location, what to name as the cause), for the partitions'
/// RESERVATION_REJECTED bursts. Only decisions made now count: the answer
/// to a repeated command is the old decision.
pub fn refusals(
    commands: &[OrderCommand],
    answers: &[Answer],
    now: Timestamp,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (command, answer) in commands.iter().zip(answers) {
        let Answer::Done(order) = answer else {
            continue;
        };
        if order.updated_at != now {
            continue;
        }
        let lines = match command {
            OrderCommand::Place { .. } if order.created_at == now => &order.lines[..],
            _ => continue,
        };
        let cause = format!("order:{}", order.order_id);
        for line in lines {
            let short = line
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("insufficient_stock"));
            if let (true, Some(location)) = (short, &line.location_id) {
                out.push((line.sku.clone(), location.clone(), cause.clone()));
            }
        }
    }
    out
}

/// Whether a record must run the order step: it carries commands, or a
/// hold is due. The pipeline and replay ask exactly this.
/// `order_events`: the record's batches hold events that name an order
/// ([`crate::Batch::has_order_events`]), which the step observes.
pub fn step_due(
    book: &OrderBook,
    commands: &[OrderCommand],
    order_events: bool,
    now: Timestamp,
) -> bool {
    order_events || !commands.is_empty() || book.next_expiry().is_some_and(|at| at <= now)
}
