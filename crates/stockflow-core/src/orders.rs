//! Orders: holds on stock that the engine takes, releases, fulfils and
//! expires, deciding every reservation against the state at one log
//! position, so no two orders can both get the last unit.
//!
//! [`OrderBook::decide`] runs once per log record that carries order
//! commands or a due hold, after the record's events. It reads
//! availability through a [`StockView`], and returns the events that carry
//! its decisions out (RESERVATION, RELEASE, FULFILLMENT with correlationId =
//! orderId), which the partitions then apply like any event. Deciding uses
//! onHand − reserved − safetyStock, less what this step already promised,
//! which is never looser than the RESERVATION rule, so every generated
//! reservation applies.
//!
//! An all_or_nothing order reserves every line or none: the check for all
//! lines happens in one step before any event is generated, so there is no
//! half-reserved order to compensate, before or after a crash.

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
    },
    /// Fulfils the given lines (all when `None`).
    Fulfil {
        order_id: String,
        lines: Option<Vec<usize>>,
    },
    Cancel {
        order_id: String,
    },
    Extend {
        order_id: String,
        hold_ns: i64,
    },
    /// A canonical RESERVATION, RELEASE or FULFILLMENT event whose
    /// correlationId names an order (how the Kafka mode carries orders):
    /// a reservation adds a line to the order (creating it, with a hold of
    /// `hold_ns`, if new); a release or fulfilment acts on the order's
    /// units held at that level, up to `quantity`.
    Event {
        order_id: String,
        event_id: String,
        event_type: EventType,
        sku: String,
        location_id: String,
        quantity: i64,
        hold_ns: i64,
    },
}

impl OrderCommand {
    pub fn order_id(&self) -> &str {
        match self {
            OrderCommand::Place { order_id, .. }
            | OrderCommand::Fulfil { order_id, .. }
            | OrderCommand::Cancel { order_id }
            | OrderCommand::Extend { order_id, .. }
            | OrderCommand::Event { order_id, .. } => order_id,
        }
    }

    /// When a hold this command sets would expire, for the shell's timers.
    pub fn hold_until(&self, now: Timestamp) -> Option<Timestamp> {
        match self {
            OrderCommand::Place { hold_ns, .. }
            | OrderCommand::Extend { hold_ns, .. }
            | OrderCommand::Event {
                event_type: EventType::Reservation,
                hold_ns,
                ..
            } => Some(now.saturating_add_ns(*hold_ns)),
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

    pub fn from_wire(text: &str) -> Option<Status> {
        [
            Status::Pending,
            Status::Reserved,
            Status::PartiallyReserved,
            Status::Rejected,
            Status::Fulfilled,
            Status::Cancelled,
            Status::Expired,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
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
    /// A RELEASE or FULFILLMENT naming an order this engine does not hold
    /// (one accepted elsewhere, like an e-commerce order line): applied to
    /// its level as a plain event.
    Plain,
}

/// Read access to stock while deciding.
pub trait StockView {
    /// onHand − reserved − safetyStock at (sku, location), not clamped (it
    /// may be negative); 0 for a level never seen.
    fn free(&self, sku: &str, location: &str) -> i64;
    /// Every location with a level of `sku`.
    fn locations(&self, sku: &str) -> Vec<String>;
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

    /// Units held per level by live orders (unfulfilled allocations).
    pub fn held(&self) -> BTreeMap<(String, String), i64> {
        let mut held = BTreeMap::new();
        for order in self.orders.values().filter(|o| o.status.is_live()) {
            for line in &order.lines {
                for a in line.allocations.iter().filter(|a| !a.fulfilled) {
                    *held
                        .entry((line.sku.clone(), a.location_id.clone()))
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
        let mut pending: HashMap<(String, String), i64> = HashMap::new();
        while let Some((at, id)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            if let Some(order) = self.orders.get_mut(&id) {
                if order.status.is_live() && order.expires_at == Some(at) {
                    release(order, "expire", &mut events, &mut pending);
                    order.status = Status::Expired;
                    order.expires_at = None;
                    order.updated_at = now;
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
        pending: &mut HashMap<(String, String), i64>,
    ) -> Answer {
        let id = command.order_id();
        if let OrderCommand::Event { .. } = command {
            return self.event(command, now, stock, events, pending);
        }
        if let OrderCommand::Place { fingerprint, .. } = command {
            if let Some(existing) = self.orders.get(id) {
                return if existing.fingerprint == *fingerprint {
                    Answer::Done(existing.clone())
                } else {
                    Answer::Conflict(
                        existing.clone(),
                        format!("order {id:?} exists with a different body; use a new orderId"),
                    )
                };
            }
        }
        let Some(order) = self.orders.get_mut(id) else {
            let OrderCommand::Place {
                order_id,
                lines,
                mode,
                hold_ns,
                sourcing,
                fingerprint,
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
        let conflict = |order: &Order, what: &str| {
            Answer::Conflict(
                order.clone(),
                format!("cannot {what} an order that is {}", order.status.as_str()),
            )
        };
        match command {
            OrderCommand::Place { .. } | OrderCommand::Event { .. } => {
                unreachable!("handled above")
            }
            OrderCommand::Fulfil { lines, .. } => {
                if order.status == Status::Fulfilled {
                    return Answer::Done(order.clone());
                }
                if !order.status.is_live() {
                    return conflict(order, "fulfil");
                }
                let wanted: Vec<usize> = match lines {
                    Some(lines) => lines.clone(),
                    None => (0..order.lines.len()).collect(),
                };
                if let Some(bad) = wanted.iter().find(|l| **l >= order.lines.len()) {
                    return Answer::Conflict(order.clone(), format!("the order has no line {bad}"));
                }
                for (n, line) in order.lines.iter_mut().enumerate() {
                    if !wanted.contains(&n) {
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
                        });
                    }
                }
                let all_done = order
                    .lines
                    .iter()
                    .all(|l| l.allocations.iter().all(|a| a.fulfilled));
                if all_done {
                    order.status = Status::Fulfilled;
                    if let Some(at) = order.expires_at.take() {
                        self.expiries.remove(&(at, order.order_id.clone()));
                    }
                }
                order.updated_at = now;
                Answer::Done(order.clone())
            }
            OrderCommand::Cancel { .. } => {
                if order.status == Status::Cancelled {
                    return Answer::Done(order.clone());
                }
                if !order.status.is_live() {
                    return conflict(order, "cancel");
                }
                release(order, "cancel", events, pending);
                order.status = Status::Cancelled;
                if let Some(at) = order.expires_at.take() {
                    self.expiries.remove(&(at, order.order_id.clone()));
                }
                order.updated_at = now;
                Answer::Done(order.clone())
            }
            OrderCommand::Extend { hold_ns, .. } => {
                if !order.status.is_live() {
                    return conflict(order, "extend");
                }
                if let Some(at) = order.expires_at.take() {
                    self.expiries.remove(&(at, order.order_id.clone()));
                }
                let at = now.saturating_add_ns(*hold_ns);
                order.expires_at = Some(at);
                self.expiries.insert((at, order.order_id.clone()));
                order.updated_at = now;
                Answer::Done(order.clone())
            }
        }
    }

    /// An order's event (see [`OrderCommand::Event`]). The answer is the
    /// order; a refused reservation shows as a last line with a reason.
    fn event(
        &mut self,
        command: &OrderCommand,
        now: Timestamp,
        stock: &dyn StockView,
        events: &mut Vec<OrderEvent>,
        pending: &mut HashMap<(String, String), i64>,
    ) -> Answer {
        let OrderCommand::Event {
            order_id,
            event_id,
            event_type,
            sku,
            location_id,
            quantity,
            hold_ns,
        } = command
        else {
            unreachable!("only events come here")
        };
        let key = (sku.clone(), location_id.clone());
        let event = |event_type, quantity| OrderEvent {
            event_id: event_id.clone(),
            event_type,
            sku: sku.clone(),
            location_id: location_id.clone(),
            quantity,
            order_id: order_id.clone(),
        };
        if *event_type == EventType::Reservation {
            let order = self
                .orders
                .entry(order_id.clone())
                .or_insert_with(|| Order {
                    order_id: order_id.clone(),
                    fingerprint: 0,
                    mode: Mode::Partial,
                    status: Status::Rejected,
                    lines: Vec::new(),
                    created_at: now,
                    updated_at: now,
                    expires_at: None,
                });
            if !order.lines.is_empty() && !order.status.is_live() {
                let why = format!(
                    "cannot reserve for an order that is {}",
                    order.status.as_str()
                );
                return Answer::Conflict(order.clone(), why);
            }
            let free = stock.free(sku, location_id) - pending.get(&key).copied().unwrap_or(0);
            let granted = *quantity <= free;
            order.lines.push(Line {
                sku: sku.clone(),
                location_id: Some(location_id.clone()),
                requested: *quantity,
                allocations: match granted {
                    true => vec![Allocation {
                        location_id: location_id.clone(),
                        quantity: *quantity,
                        fulfilled: false,
                    }],
                    false => Vec::new(),
                },
                reason: (!granted).then(|| {
                    format!(
                        "insufficient_stock: {} of {quantity} available",
                        free.max(0)
                    )
                }),
            });
            if granted {
                *pending.entry(key).or_insert(0) += quantity;
                events.push(event(EventType::Reservation, *quantity));
                let any_short = order.lines.iter().any(|l| l.reason.is_some());
                order.status = match any_short {
                    true => Status::PartiallyReserved,
                    false => Status::Reserved,
                };
                if let Some(at) = order.expires_at.take() {
                    self.expiries.remove(&(at, order_id.clone()));
                }
                let at = now.saturating_add_ns(*hold_ns);
                order.expires_at = Some(at);
                self.expiries.insert((at, order_id.clone()));
            } else if order.lines.iter().all(|l| l.allocations.is_empty()) {
                order.status = Status::Rejected;
            } else {
                order.status = Status::PartiallyReserved;
            }
            order.updated_at = now;
            return Answer::Done(order.clone());
        }
        let Some(order) = self.orders.get_mut(order_id) else {
            *pending.entry(key).or_insert(0) -= match event_type {
                EventType::Release => *quantity,
                _ => 0,
            };
            events.push(event(*event_type, *quantity));
            return Answer::Plain;
        };
        if !order.status.is_live() {
            let what = match event_type {
                EventType::Release => "release",
                _ => "fulfil",
            };
            let why = format!(
                "cannot {what} units of an order that is {}",
                order.status.as_str()
            );
            return Answer::Conflict(order.clone(), why);
        }
        let held_here: i64 = order
            .lines
            .iter()
            .filter(|l| l.sku == *sku)
            .flat_map(|l| &l.allocations)
            .filter(|a| !a.fulfilled && a.location_id == *location_id)
            .map(|a| a.quantity)
            .sum();
        if held_here < *quantity {
            let why =
                format!("the order holds {held_here} of {sku} at {location_id}, not {quantity}");
            return Answer::Conflict(order.clone(), why);
        }
        // `quantity` of the units held here, oldest line first.
        let mut left = *quantity;
        for line in order.lines.iter_mut().filter(|l| l.sku == *sku) {
            let mut split = Vec::new();
            for a in line.allocations.iter_mut() {
                if left == 0 || a.fulfilled || a.location_id != *location_id {
                    continue;
                }
                let take = a.quantity.min(left);
                left -= take;
                if *event_type == EventType::Fulfillment {
                    if take < a.quantity {
                        a.quantity -= take;
                        split.push(Allocation {
                            location_id: a.location_id.clone(),
                            quantity: take,
                            fulfilled: true,
                        });
                    } else {
                        a.fulfilled = true;
                    }
                } else {
                    a.quantity -= take;
                    *pending.entry(key.clone()).or_insert(0) -= take;
                }
            }
            line.allocations.retain(|a| a.quantity > 0);
            line.allocations.extend(split);
        }
        debug_assert_eq!(left, 0, "held_here covers the quantity");
        events.push(event(*event_type, *quantity));
        let held = order
            .lines
            .iter()
            .flat_map(|l| &l.allocations)
            .any(|a| !a.fulfilled);
        if !held {
            let any_fulfilled = order
                .lines
                .iter()
                .flat_map(|l| &l.allocations)
                .any(|a| a.fulfilled);
            order.status = match any_fulfilled {
                true => Status::Fulfilled,
                false => Status::Cancelled,
            };
            if let Some(at) = order.expires_at.take() {
                self.expiries.remove(&(at, order_id.clone()));
            }
        }
        order.updated_at = now;
        Answer::Done(order.clone())
    }
}

/// Releases every unfulfilled allocation of `order`.
fn release(
    order: &mut Order,
    why: &str,
    events: &mut Vec<OrderEvent>,
    pending: &mut HashMap<(String, String), i64>,
) {
    for (n, line) in order.lines.iter_mut().enumerate() {
        for (k, a) in line
            .allocations
            .iter()
            .enumerate()
            .filter(|(_, a)| !a.fulfilled)
        {
            *pending
                .entry((line.sku.clone(), a.location_id.clone()))
                .or_insert(0) -= a.quantity;
            events.push(OrderEvent {
                event_id: format!("order:{}:{why}:{n}:{k}", order.order_id),
                event_type: EventType::Release,
                sku: line.sku.clone(),
                location_id: a.location_id.clone(),
                quantity: a.quantity,
                order_id: order.order_id.clone(),
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
    now: Timestamp,
    stock: &dyn StockView,
    events: &mut Vec<OrderEvent>,
    pending: &mut HashMap<(String, String), i64>,
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
                let used = pending.get(&key).copied().unwrap_or(0)
                    + promised.get(&key).copied().unwrap_or(0);
                let free = stock.free(&request.sku, &location) - used;
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
            *pending
                .entry((line.sku.clone(), a.location_id.clone()))
                .or_insert(0) += a.quantity;
            events.push(OrderEvent {
                event_id: format!("order:{order_id}:reserve:{n}:{k}"),
                event_type: EventType::Reservation,
                sku: line.sku.clone(),
                location_id: a.location_id.clone(),
                quantity: a.quantity,
                order_id: order_id.to_owned(),
            });
        }
    }
    Order {
        order_id: order_id.to_owned(),
        fingerprint,
        mode,
        status,
        lines,
        created_at: now,
        updated_at: now,
        expires_at: status.is_live().then(|| now.saturating_add_ns(hold_ns)),
    }
}

/// [`StockView`] over partitions (plain, or behind lock guards) and the
/// catalog's safety stock.
pub struct StockOf<'a, P> {
    pub partitions: &'a [P],
    pub catalog: &'a crate::catalog::Catalog,
}

impl<P: std::ops::Deref<Target = crate::partition::Partition>> StockView for StockOf<'_, P> {
    fn free(&self, sku: &str, location: &str) -> i64 {
        let p = crate::engine::route(sku, location, self.partitions.len() as u16);
        match self.partitions[p as usize].numbers(sku, location) {
            Some(n) => n.on_hand - n.reserved - self.catalog.policy(sku, location).safety_stock,
            None => 0,
        }
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
                        crate::engine::route(&sku, &location, partitions),
                        sku,
                        location,
                        cause,
                    )
                })
                .collect(),
        }
    }

    /// Applies the step to partition `id`: its share of the decisions,
    /// then its refusals.
    pub fn apply_to(
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
    pub fn apply_refusals(
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
            index: index as u32,
        });
    }
    batch.compute_routes(partitions);
    batch
}

/// Takes out of an admitted `batch` the events that belong to an order:
/// RESERVATION, RELEASE and FULFILLMENT with a correlationId. They become
/// order commands (see [`OrderCommand::Event`]), run by the order step
/// instead of straight on the level, so that every hold has an order
/// behind it. Returns (request index, command) in batch order.
pub fn take_order_events(
    batch: &mut crate::event::Batch,
    hold_ns: i64,
) -> Vec<(u32, OrderCommand)> {
    let mut taken = Vec::new();
    let mut positions = Vec::new();
    for (position, event) in batch.iter().enumerate() {
        let order_type = matches!(
            event.event_type,
            EventType::Reservation | EventType::Release | EventType::Fulfillment
        );
        let Some(order_id) = event.correlation_id.filter(|_| order_type) else {
            continue;
        };
        positions.push(position);
        taken.push((
            event.index,
            OrderCommand::Event {
                order_id: order_id.to_owned(),
                event_id: event.event_id.to_owned(),
                event_type: event.event_type,
                sku: event.sku.to_owned(),
                location_id: event.location_id.to_owned(),
                quantity: event.quantity,
                hold_ns,
            },
        ));
    }
    if !positions.is_empty() {
        batch.retain_positions(|p| positions.binary_search(&p).is_err());
    }
    taken
}

/// Why an order's event had no effect, for its sender; `None` if it had
/// its effect. `answer` is the order step's answer to it.
pub fn event_refusal(event_type: EventType, answer: &Answer) -> Option<String> {
    match answer {
        Answer::Done(order) if event_type == EventType::Reservation => {
            let line = order.lines.last()?;
            line.allocations
                .is_empty()
                .then(|| "insufficient_stock".to_owned())
        }
        Answer::Done(_) => None,
        Answer::Conflict(_, why) => Some(format!("order_conflict: {why}")),
        Answer::NotFound(why) => Some(format!("order_not_found: {why}")),
        Answer::Plain => None,
    }
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
            OrderCommand::Event {
                event_type: EventType::Reservation,
                ..
            } => order.lines.last().map(std::slice::from_ref).unwrap_or(&[]),
            _ => continue,
        };
        let cause = match command {
            OrderCommand::Event { event_id, .. } => event_id.clone(),
            _ => format!("order:{}", order.order_id),
        };
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
pub fn step_due(book: &OrderBook, commands: &[OrderCommand], now: Timestamp) -> bool {
    !commands.is_empty() || book.next_expiry().is_some_and(|at| at <= now)
}
