//! Orders across partitions, for the Kafka mode: a saga coordinated by
//! the order's home partition.
//!
//! The embedded mode decides an order in one step against every partition
//! at one log position ([`crate::orders`]). In Kafka mode no instance sees
//! every partition, so an order is a conversation through the repartition
//! topic:
//!
//! ```text
//! HTTP ─Place─► home(orderId) ─RESERVATION per line─► line owners
//!                   ▲                                     │
//!                   └──────────── LineResult ◄────────────┘
//! decided: all reserved → reserved (hold starts);
//!          all_or_nothing with a refused line → RELEASE the others, rejected
//! ```
//!
//! Each line is decided by the single owner of its level (a RESERVATION
//! that applies or is refused), so no two orders get the last unit. The
//! home partition keeps a [`SagaBook`]: a pure state machine of the
//! messages it receives ([`ToHome`]) and the time, so replaying the same
//! messages rebuilds it. Every message it handles is idempotent (a repeat
//! changes nothing), and every effect it asks for is a canonical event
//! with an eventId derived from the order and line ([`LineAction`]), which
//! the line owner deduplicates: a crash that repeats a step repeats
//! nothing.
//!
//! A line is reserved whole at one location or refused: Kafka mode does
//! not split a line over locations nor reserve part of one. A line with
//! several candidate locations (sourced by a priority list, or by the
//! most available) tries them in turn, one RESERVATION at a time, until
//! one grants it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::event::EventType;
use crate::orders::{Act, Action, Allocation, Line, Mode, Order, Status};
use crate::time::Timestamp;

/// The partition that coordinates an order: a pure function of its id.
pub fn order_home(order_id: &str, partitions: u16) -> u16 {
    crate::route(order_id, "", partitions)
}

/// One line of a placed order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaceLine {
    pub sku: String,
    /// As asked: `None` for a line the shell sourced.
    pub location_id: Option<String>,
    pub quantity: i64,
    /// Where to reserve it, tried in this order (never empty).
    pub candidates: Vec<String>,
}

/// A message to an order's home partition. Externally tagged
/// (`{"place":{…}}`, `"tick"`): changelog records hold these in postcard,
/// which cannot read an internally tagged enum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ToHome {
    Place {
        order_id: String,
        lines: Vec<PlaceLine>,
        mode: Mode,
        hold_ns: i64,
        fingerprint: u64,
        /// Who sent the command (a token name).
        #[serde(default)]
        by: String,
    },
    /// A line owner's decision on a line's RESERVATION at its
    /// `attempt`-th candidate location.
    LineResult {
        order_id: String,
        line: u32,
        #[serde(default)]
        attempt: u32,
        reserved: bool,
        reason: Option<String>,
    },
    /// Fulfils the given lines (all when `None`).
    Fulfil {
        order_id: String,
        lines: Option<Vec<usize>>,
        #[serde(default)]
        by: String,
    },
    Cancel {
        order_id: String,
        #[serde(default)]
        by: String,
    },
    /// The hold ends at `until` (absolute, so a repeat is harmless).
    Extend {
        order_id: String,
        until: Timestamp,
        #[serde(default)]
        by: String,
    },
    /// Time passes (holds may fall due); carries no order.
    Tick,
    /// What an event naming the order did to its hold at a level, from the
    /// level's owner (see [`crate::orders::hold_changes`]): the home keeps
    /// the order's lines and status in step with its holds, creates the
    /// order on its first RESERVATION (held for `hold_ns`), and expires it.
    Held {
        change: crate::orders::HoldChange,
        hold_ns: i64,
    },
}

impl ToHome {
    pub fn order_id(&self) -> Option<&str> {
        match self {
            ToHome::Place { order_id, .. }
            | ToHome::LineResult { order_id, .. }
            | ToHome::Fulfil { order_id, .. }
            | ToHome::Cancel { order_id, .. }
            | ToHome::Extend { order_id, .. } => Some(order_id),
            ToHome::Held { change, .. } => Some(&change.order_id),
            ToHome::Tick => None,
        }
    }
}

/// An effect on one level that the home asks of the level's owner, as a
/// canonical event with correlationId = orderId.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineAction {
    pub order_id: String,
    pub line: u32,
    /// Which candidate location of the line a RESERVATION tries (0 else).
    pub attempt: u32,
    pub event_type: EventType,
    pub sku: String,
    pub location_id: String,
    pub quantity: i64,
    /// Who the order's decision is made for: the command's sender, or
    /// [`crate::SERVER`] for an expiry.
    pub by: String,
}

impl LineAction {
    /// `{orderId}/{line}/{reserve|release|fulfil}` (a reservation at a
    /// later candidate: `{orderId}/{line}.{attempt}/reserve`): one per line,
    /// kind and attempt, so the level's owner applies each at most once.
    pub fn event_id(&self) -> String {
        let kind = match self.event_type {
            EventType::Reservation => "reserve",
            EventType::Release => "release",
            _ => "fulfil",
        };
        match self.attempt {
            0 => format!("{}/{}/{kind}", self.order_id, self.line),
            n => format!("{}/{}.{n}/{kind}", self.order_id, self.line),
        }
    }
}

/// Which line (and attempt) of which order a RESERVATION with this
/// eventId and correlationId reserves, if it is a saga's: the line owner
/// answers those.
pub fn reservation_line(event_id: &str, correlation_id: Option<&str>) -> Option<(u32, u32)> {
    let order_id = correlation_id?;
    let rest = event_id.strip_prefix(order_id)?.strip_prefix('/')?;
    let line = rest.strip_suffix("/reserve")?;
    match line.split_once('.') {
        None => Some((line.parse().ok()?, 0)),
        Some((line, attempt)) => Some((line.parse().ok()?, attempt.parse().ok()?)),
    }
}

/// Whether an event with this eventId and correlationId is a saga's
/// fulfilment of a line (`{orderId}/{line}/fulfil`).
pub fn is_line_fulfilment(event_id: &str, correlation_id: Option<&str>) -> bool {
    correlation_id
        .and_then(|order| event_id.strip_prefix(order)?.strip_prefix('/'))
        .and_then(|rest| rest.strip_suffix("/fulfil"))
        .is_some_and(|line| line.parse::<u32>().is_ok())
}

/// The line owner's side of a fulfilment: the home decided it on what it
/// knew, which may be a cycle old (an event naming the order may have
/// fulfilled or released the units at this level meanwhile). So before
/// the owner applies a transit batch, each saga FULFILLMENT is narrowed to
/// what its order still holds at its level (less what earlier ones in the
/// batch took): units leave the shelf once, as in the embedded mode, where
/// the book never asks for more than the level holds.
pub fn settle_fulfilments(batch: &mut crate::Batch, partition: &crate::Partition) {
    let mut taken: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for i in 0..batch.len() {
        let event = batch.get(i);
        if event.event_type != EventType::Fulfillment
            || !is_line_fulfilment(event.event_id, event.correlation_id)
        {
            continue;
        }
        let order = event.correlation_id.unwrap_or_default();
        let held = partition
            .level(event.sku, event.location_id)
            .map_or(0, |l| l.hold_of(order));
        let key = (
            event.sku.to_owned(),
            event.location_id.to_owned(),
            order.to_owned(),
        );
        let used = taken.entry(key).or_insert(0);
        let quantity = event.quantity.min((held - *used).max(0));
        *used += quantity;
        batch.set_quantity(i, quantity);
    }
}

/// Whether `command` (Fulfil, Cancel or Extend) acts on `order`, by the
/// one rule of both modes ([`crate::orders::judge`]); any other message
/// `Ok(false)`.
pub fn judge(order: &Order, command: &ToHome) -> Result<bool, String> {
    let act = match command {
        ToHome::Fulfil { lines, .. } => Act::Fulfil(lines.as_deref()),
        ToHome::Cancel { .. } => Act::Cancel,
        ToHome::Extend { .. } => Act::Extend,
        _ => return Ok(false),
    };
    crate::orders::judge(order, act)
}

/// An order and where its saga stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaOrder {
    /// Status `Pending` while lines are out; then as in the embedded mode.
    pub order: Order,
    pub hold_ns: i64,
    /// Per line: the owner's answer is in.
    pub answered: Vec<bool>,
    /// Per line: the candidate locations, and which one is being tried.
    #[serde(default)]
    pub candidates: Vec<Vec<String>>,
    #[serde(default)]
    pub tries: Vec<u32>,
    /// Bumped by every command message about this order, handled or not,
    /// so a waiting request can tell its command was seen.
    pub version: u64,
    /// The events naming this order that its home has taken in
    /// ([`crate::orders::HoldChange::identity`]), so a repeated `Held`
    /// changes nothing.
    pub held: BTreeSet<String>,
}

/// What one step asks of others.
#[derive(Debug, Default)]
pub struct StepOut {
    pub actions: Vec<LineAction>,
    /// Orders that changed, in the order they did (may repeat).
    pub changed: Vec<String>,
}

/// The orders homed in one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaBook {
    pub orders: BTreeMap<String, SagaOrder>,
    expiries: BTreeSet<(Timestamp, String)>,
}

impl SagaBook {
    /// The earliest hold that may fall due, for the shell's timer.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.expiries.first().map(|(t, _)| *t)
    }

    /// Handles one message at `now`.
    pub fn apply(&mut self, message: &ToHome, now: Timestamp, out: &mut StepOut) {
        match message {
            ToHome::Tick => {}
            ToHome::Held { change, hold_ns } => {
                let id = &change.order_id;
                if !self.orders.contains_key(id) && change.event_type != EventType::Reservation {
                    return; // nothing was held for it (the level says so)
                }
                let saga = self.orders.entry(id.clone()).or_insert_with(|| SagaOrder {
                    order: Order::made_by_event(id, now),
                    hold_ns: *hold_ns,
                    answered: Vec::new(),
                    candidates: Vec::new(),
                    tries: Vec::new(),
                    version: 0,
                    held: BTreeSet::new(),
                });
                // Without broker transactions a crash (or a second owner)
                // sends a cycle's messages again: each event counts once.
                if !saga.held.insert(change.identity()) {
                    return;
                }
                // Not a version bump: that tells a waiting command it was
                // seen, and this is no command.
                saga.order.observe(change, now, *hold_ns);
                if !saga.order.status.is_live() && saga.order.status != Status::Pending {
                    saga.order.expires_at = None;
                }
                // An earlier expiry left listed finds it no longer equal.
                if let Some(at) = saga.order.expires_at {
                    self.expiries.insert((at, id.clone()));
                }
                out.changed.push(id.clone());
            }
            ToHome::Place {
                order_id,
                lines,
                mode,
                hold_ns,
                fingerprint,
                by,
            } => {
                if let Some(saga) = self.orders.get_mut(order_id) {
                    // A retry, or a different order under the same id:
                    // the first one stands (the request is told 409).
                    saga.version += 1;
                    out.changed.push(order_id.clone());
                    return;
                }
                for (n, line) in lines.iter().enumerate() {
                    out.actions.push(LineAction {
                        order_id: order_id.clone(),
                        line: n as u32,
                        attempt: 0,
                        event_type: EventType::Reservation,
                        sku: line.sku.clone(),
                        location_id: line.candidates.first().cloned().unwrap_or_default(),
                        quantity: line.quantity,
                        by: by.clone(),
                    });
                }
                let mut order = Order {
                    order_id: order_id.clone(),
                    fingerprint: *fingerprint,
                    mode: *mode,
                    status: Status::Pending,
                    lines: lines
                        .iter()
                        .map(|l| Line {
                            sku: l.sku.clone(),
                            location_id: l.location_id.clone(),
                            requested: l.quantity,
                            allocations: Vec::new(),
                            reason: None,
                        })
                        .collect(),
                    created_at: now,
                    updated_at: now,
                    expires_at: None,
                    transitions: Vec::new(),
                };
                // Its status is set when every line is answered (`decide`).
                order.record(Action::Place, now, by);
                self.orders.insert(
                    order_id.clone(),
                    SagaOrder {
                        order,
                        hold_ns: *hold_ns,
                        answered: vec![false; lines.len()],
                        candidates: lines.iter().map(|l| l.candidates.clone()).collect(),
                        tries: vec![0; lines.len()],
                        version: 1,
                        held: BTreeSet::new(),
                    },
                );
                out.changed.push(order_id.clone());
            }
            ToHome::LineResult {
                order_id,
                line,
                attempt,
                reserved,
                reason,
            } => {
                let Some(saga) = self.orders.get_mut(order_id) else {
                    return;
                };
                saga.version += 1;
                out.changed.push(order_id.clone());
                let n = *line as usize;
                if n >= saga.answered.len() || saga.answered[n] {
                    return;
                }
                // An answer about an earlier candidate, repeated: done with.
                if saga.tries.get(n).copied().unwrap_or(0) != *attempt {
                    return;
                }
                let candidates = saga.candidates.get(n).map_or(&[][..], Vec::as_slice);
                let at = candidates.get(*attempt as usize).cloned();
                if !*reserved && (*attempt as usize + 1) < candidates.len() {
                    // Refused here: the next candidate location.
                    let next = *attempt + 1;
                    saga.tries[n] = next;
                    let l = &saga.order.lines[n];
                    out.actions.push(LineAction {
                        order_id: order_id.clone(),
                        line: *line,
                        attempt: next,
                        event_type: EventType::Reservation,
                        sku: l.sku.clone(),
                        location_id: candidates[next as usize].clone(),
                        quantity: l.requested,
                        by: placer(&saga.order),
                    });
                    return;
                }
                saga.answered[n] = true;
                let l = &mut saga.order.lines[n];
                if *reserved {
                    l.allocations.push(Allocation {
                        location_id: at.or_else(|| l.location_id.clone()).unwrap_or_default(),
                        quantity: l.requested,
                        fulfilled: false,
                    });
                } else {
                    l.reason = Some(reason.clone().unwrap_or_else(|| "refused".into()));
                }
                saga.order.updated_at = now;
                if saga.answered.iter().all(|a| *a) {
                    decide(saga, now, out);
                    if let Some(at) = saga.order.expires_at {
                        self.expiries.insert((at, order_id.clone()));
                    }
                }
            }
            ToHome::Fulfil {
                order_id,
                lines,
                by,
            } => {
                let Some(saga) = self.orders.get_mut(order_id) else {
                    return;
                };
                saga.version += 1;
                out.changed.push(order_id.clone());
                if judge(&saga.order, message) != Ok(true) {
                    return;
                }
                let asked = out.actions.len();
                for (n, line) in saga.order.lines.iter_mut().enumerate() {
                    if lines.as_ref().is_some_and(|only| !only.contains(&n)) {
                        continue;
                    }
                    for a in line.allocations.iter_mut().filter(|a| !a.fulfilled) {
                        a.fulfilled = true;
                        out.actions.push(LineAction {
                            order_id: order_id.clone(),
                            line: n as u32,
                            attempt: 0,
                            event_type: EventType::Fulfillment,
                            sku: line.sku.clone(),
                            location_id: a.location_id.clone(),
                            quantity: a.quantity,
                            by: by.clone(),
                        });
                    }
                }
                let all = saga
                    .order
                    .lines
                    .iter()
                    .all(|l| l.allocations.iter().all(|a| a.fulfilled));
                if all {
                    // Its expiry, still listed, finds it no longer live.
                    saga.order.status = Status::Fulfilled;
                    saga.order.expires_at = None;
                }
                // A repeated message (a crash sends a cycle's again)
                // fulfils nothing more and is no transition.
                if out.actions.len() > asked {
                    saga.order.updated_at = now;
                    saga.order.record(Action::Fulfil, now, by);
                }
            }
            ToHome::Cancel { order_id, by } => {
                let Some(saga) = self.orders.get_mut(order_id) else {
                    return;
                };
                saga.version += 1;
                out.changed.push(order_id.clone());
                if judge(&saga.order, message) == Ok(true) {
                    release(saga, Status::Cancelled, now, by, out);
                    saga.order.expires_at = None;
                    saga.order.record(Action::Cancel, now, by);
                }
            }
            ToHome::Extend {
                order_id,
                until,
                by,
            } => {
                let Some(saga) = self.orders.get_mut(order_id) else {
                    return;
                };
                saga.version += 1;
                out.changed.push(order_id.clone());
                let repeated = saga.order.expires_at == Some(*until);
                if judge(&saga.order, message) == Ok(true) && !repeated {
                    saga.order.expires_at = Some(*until);
                    saga.order.updated_at = now;
                    saga.order.record(Action::Extend, now, by);
                    self.expiries.insert((*until, order_id.clone()));
                }
            }
        }
    }

    /// Releases the holds due by `now`; run after every step's messages.
    pub fn expire(&mut self, now: Timestamp, out: &mut StepOut) {
        while let Some((at, id)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            let Some(saga) = self.orders.get_mut(&id) else {
                continue;
            };
            // An extended hold left its old expiry behind.
            if saga.order.status.is_live() && saga.order.expires_at == Some(at) {
                saga.version += 1;
                release(saga, Status::Expired, now, crate::SERVER, out);
                saga.order.record(Action::Expire, now, crate::SERVER);
                out.changed.push(id);
            }
        }
    }

    /// Units held per level by live orders (unfulfilled allocations).
    pub fn held(&self) -> BTreeMap<(String, String), i64> {
        let mut held = BTreeMap::new();
        for saga in self.orders.values().filter(|s| s.order.status.is_live()) {
            for line in &saga.order.lines {
                for a in line.allocations.iter().filter(|a| !a.fulfilled) {
                    *held
                        .entry((line.sku.clone(), a.location_id.clone()))
                        .or_insert(0) += a.quantity;
                }
            }
        }
        held
    }
}

/// Every line is answered: the order's outcome, and the releases an
/// all_or_nothing order with a refused line owes.
///
/// Only the placed lines decide: lines that events naming the order added
/// meanwhile (`Held`) are the levels' facts, kept as they are.
fn decide(saga: &mut SagaOrder, now: Timestamp, out: &mut StepOut) {
    let placed = saga.answered.len();
    let order = &mut saga.order;
    let lines = &order.lines[..placed];
    let complete = lines.iter().all(|l| l.reason.is_none());
    let any = lines.iter().any(|l| !l.allocations.is_empty());
    order.status = match (order.mode, complete, any) {
        (_, true, _) => Status::Reserved,
        (Mode::Partial, false, true) => Status::PartiallyReserved,
        _ => Status::Rejected,
    };
    order.updated_at = now;
    let by = placer(order);
    if order.status == Status::Rejected {
        for (n, line) in order.lines.iter_mut().enumerate().take(placed) {
            for a in line.allocations.iter().filter(|a| !a.fulfilled) {
                out.actions.push(LineAction {
                    order_id: order.order_id.clone(),
                    line: n as u32,
                    attempt: 0,
                    event_type: EventType::Release,
                    sku: line.sku.clone(),
                    location_id: a.location_id.clone(),
                    quantity: a.quantity,
                    by: by.clone(),
                });
            }
            line.allocations.retain(|a| a.fulfilled);
            line.reason.get_or_insert_with(|| {
                "not_reserved: another line of this all_or_nothing order could not be".into()
            });
        }
    }
    // Then as every order: its status follows all its holds (units its
    // events hold keep a rejected one live, with the hold they set).
    let rejected = order.status == Status::Rejected;
    let live = order.status_from_holds();
    // The placement's transition says what it decided, as the embedded
    // book's does.
    let status = order.status;
    if let Some(place) = order
        .transitions
        .iter_mut()
        .find(|t| t.action == Action::Place)
    {
        place.status = status;
    }
    if !live {
        order.expires_at = None;
    } else if !rejected {
        let until = now.saturating_add_ns(saga.hold_ns);
        order.expires_at = Some(order.expires_at.map_or(until, |at| at.max(until)));
    }
}

/// Who placed `order` (its first transition's sender).
fn placer(order: &Order) -> String {
    order
        .transitions
        .first()
        .map_or_else(|| crate::SERVER.to_owned(), |t| t.by.clone())
}

/// Gives back every unfulfilled unit of a live order.
fn release(saga: &mut SagaOrder, status: Status, now: Timestamp, by: &str, out: &mut StepOut) {
    let order = &mut saga.order;
    for (n, line) in order.lines.iter_mut().enumerate() {
        for a in line.allocations.iter().filter(|a| !a.fulfilled) {
            out.actions.push(LineAction {
                order_id: order.order_id.clone(),
                line: n as u32,
                attempt: 0,
                event_type: EventType::Release,
                sku: line.sku.clone(),
                location_id: a.location_id.clone(),
                quantity: a.quantity,
                by: by.to_owned(),
            });
        }
        line.allocations.retain(|a| a.fulfilled);
    }
    order.status = status;
    order.updated_at = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(id: &str, lines: &[(&str, &str, i64)], mode: Mode) -> ToHome {
        ToHome::Place {
            by: "web".into(),
            order_id: id.into(),
            lines: lines
                .iter()
                .map(|(s, l, q)| PlaceLine {
                    sku: (*s).into(),
                    location_id: Some((*l).into()),
                    quantity: *q,
                    candidates: vec![(*l).into()],
                })
                .collect(),
            mode,
            hold_ns: 10_000,
            fingerprint: 7,
        }
    }

    fn result(id: &str, line: u32, reserved: bool) -> ToHome {
        ToHome::LineResult {
            order_id: id.into(),
            line,
            attempt: 0,
            reserved,
            reason: (!reserved).then(|| "insufficient_stock".into()),
        }
    }

    fn kinds(out: &StepOut) -> Vec<(u32, EventType)> {
        out.actions.iter().map(|a| (a.line, a.event_type)).collect()
    }

    #[test]
    fn an_order_reserves_when_every_line_is_granted_and_its_hold_then_expires() {
        let mut book = SagaBook::default();
        let mut out = StepOut::default();
        book.apply(
            &place("o", &[("A", "S", 1), ("B", "T", 2)], Mode::AllOrNothing),
            Timestamp(0),
            &mut out,
        );
        assert_eq!(
            kinds(&out),
            [(0, EventType::Reservation), (1, EventType::Reservation)]
        );
        assert_eq!(out.actions[1].event_id(), "o/1/reserve");
        assert_eq!(book.orders["o"].order.status, Status::Pending);
        let mut out = StepOut::default();
        book.apply(&result("o", 0, true), Timestamp(5), &mut out);
        assert_eq!(book.orders["o"].order.status, Status::Pending);
        book.apply(&result("o", 1, true), Timestamp(6), &mut out);
        assert!(out.actions.is_empty());
        let order = &book.orders["o"].order;
        assert_eq!(order.status, Status::Reserved);
        assert_eq!(order.expires_at, Some(Timestamp(10_006)));
        assert_eq!(book.held().values().sum::<i64>(), 3);

        let mut out = StepOut::default();
        book.expire(Timestamp(10_005), &mut out);
        assert!(out.actions.is_empty(), "not due yet");
        book.expire(Timestamp(10_006), &mut out);
        assert_eq!(
            kinds(&out),
            [(0, EventType::Release), (1, EventType::Release)]
        );
        assert_eq!(book.orders["o"].order.status, Status::Expired);
        assert!(book.held().is_empty());
    }

    #[test]
    fn all_or_nothing_with_a_refused_line_releases_the_granted_ones() {
        let mut book = SagaBook::default();
        let mut out = StepOut::default();
        let lines = [("A", "S", 1), ("B", "T", 1), ("C", "U", 1)];
        book.apply(
            &place("o", &lines, Mode::AllOrNothing),
            Timestamp(0),
            &mut out,
        );
        let mut out = StepOut::default();
        for message in [
            result("o", 0, true),
            result("o", 1, false),
            result("o", 2, true),
        ] {
            book.apply(&message, Timestamp(1), &mut out);
        }
        assert_eq!(
            kinds(&out),
            [(0, EventType::Release), (2, EventType::Release)]
        );
        let order = &book.orders["o"].order;
        assert_eq!(order.status, Status::Rejected);
        assert!(order
            .lines
            .iter()
            .all(|l| l.allocations.is_empty() && l.reason.is_some()));
        assert_eq!(order.expires_at, None);
        assert!(book.held().is_empty());

        // The same order in partial mode keeps what it got.
        let mut book = SagaBook::default();
        let mut out = StepOut::default();
        book.apply(&place("p", &lines, Mode::Partial), Timestamp(0), &mut out);
        let mut out = StepOut::default();
        for message in [
            result("p", 0, true),
            result("p", 1, false),
            result("p", 2, true),
        ] {
            book.apply(&message, Timestamp(1), &mut out);
        }
        assert!(out.actions.is_empty());
        assert_eq!(book.orders["p"].order.status, Status::PartiallyReserved);
        assert_eq!(book.held().values().sum::<i64>(), 2);
    }

    #[test]
    fn repeated_messages_change_nothing_but_the_version() {
        let messages = [
            place("o", &[("A", "S", 1), ("B", "T", 1)], Mode::AllOrNothing),
            result("o", 0, true),
            result("o", 1, true),
            ToHome::Fulfil {
                by: "wms".into(),
                order_id: "o".into(),
                lines: Some(vec![0]),
            },
            ToHome::Extend {
                by: "ops".into(),
                order_id: "o".into(),
                until: Timestamp(50),
            },
            ToHome::Cancel {
                by: "ops".into(),
                order_id: "o".into(),
            },
        ];
        let mut once = SagaBook::default();
        let mut twice = SagaBook::default();
        let (mut a, mut b) = (StepOut::default(), StepOut::default());
        for (t, message) in messages.iter().enumerate() {
            once.apply(message, Timestamp(t as i64), &mut a);
            twice.apply(message, Timestamp(t as i64), &mut b);
            twice.apply(message, Timestamp(t as i64), &mut b);
        }
        let strip = |book: &SagaBook| {
            let mut book = book.clone();
            book.orders.values_mut().for_each(|s| s.version = 0);
            book
        };
        assert_eq!(strip(&once), strip(&twice));
        assert_eq!(a.actions, b.actions, "a repeat asks for nothing more");
        // Line 0 was fulfilled, line 1 released by the cancel.
        assert_eq!(
            kinds(&a)[2..],
            [(0, EventType::Fulfillment), (1, EventType::Release)]
        );
        assert_eq!(once.orders["o"].order.status, Status::Cancelled);
    }

    #[test]
    fn an_extended_hold_expires_at_its_new_time_only() {
        let mut book = SagaBook::default();
        let mut out = StepOut::default();
        book.apply(
            &place("o", &[("A", "S", 1)], Mode::AllOrNothing),
            Timestamp(0),
            &mut out,
        );
        book.apply(&result("o", 0, true), Timestamp(0), &mut out);
        let extend = ToHome::Extend {
            by: "ops".into(),
            order_id: "o".into(),
            until: Timestamp(20_000),
        };
        book.apply(&extend, Timestamp(1), &mut out);
        let mut out = StepOut::default();
        book.expire(Timestamp(15_000), &mut out);
        assert_eq!(book.orders["o"].order.status, Status::Reserved);
        book.expire(Timestamp(20_000), &mut out);
        assert_eq!(book.orders["o"].order.status, Status::Expired);
        assert_eq!(kinds(&out), [(0, EventType::Release)]);
    }

    #[test]
    fn messages_read_back_from_json_and_postcard() {
        let messages = vec![
            place("o", &[("A", "S", 1)], Mode::Partial),
            result("o", 0, false),
            ToHome::Fulfil {
                by: "wms".into(),
                order_id: "o".into(),
                lines: Some(vec![0]),
            },
            ToHome::Extend {
                by: "ops".into(),
                order_id: "o".into(),
                until: Timestamp(9),
            },
            ToHome::Tick,
        ];
        let json = serde_json::to_string(&messages).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<ToHome>>(&json).unwrap(),
            messages
        );
        let bytes = postcard::to_stdvec(&messages).unwrap();
        assert_eq!(
            postcard::from_bytes::<Vec<ToHome>>(&bytes).unwrap(),
            messages
        );
        assert!(
            json.contains(r#"{"lineResult":{"orderId":"o","line":0"#),
            "{json}"
        );
    }

    #[test]
    fn a_sourced_line_tries_its_candidates_in_turn_until_one_grants_it() {
        let mut book = SagaBook::default();
        let mut out = StepOut::default();
        let line = PlaceLine {
            sku: "A".into(),
            location_id: None,
            quantity: 2,
            candidates: vec!["S1".into(), "S2".into(), "S3".into()],
        };
        let place = ToHome::Place {
            by: "web".into(),
            order_id: "o".into(),
            lines: vec![line],
            mode: Mode::AllOrNothing,
            hold_ns: 10,
            fingerprint: 1,
        };
        book.apply(&place, Timestamp(0), &mut out);
        let refused = |attempt| ToHome::LineResult {
            order_id: "o".into(),
            line: 0,
            attempt,
            reserved: false,
            reason: Some("insufficient_stock".into()),
        };
        let mut out = StepOut::default();
        book.apply(&refused(0), Timestamp(1), &mut out);
        // A repeat of that answer asks for nothing more.
        book.apply(&refused(0), Timestamp(1), &mut out);
        assert_eq!(out.actions.len(), 1);
        assert_eq!(
            (
                out.actions[0].location_id.as_str(),
                out.actions[0].event_id()
            ),
            ("S2", "o/0.1/reserve".to_owned())
        );
        assert_eq!(book.orders["o"].order.status, Status::Pending);
        let granted = ToHome::LineResult {
            order_id: "o".into(),
            line: 0,
            attempt: 1,
            reserved: true,
            reason: None,
        };
        book.apply(&granted, Timestamp(2), &mut out);
        let order = &book.orders["o"].order;
        assert_eq!(order.status, Status::Reserved);
        assert_eq!(order.lines[0].allocations[0].location_id, "S2");
        assert_eq!(order.lines[0].location_id, None);
        // Refused everywhere: rejected after the last candidate.
        let mut book = SagaBook::default();
        book.apply(&place, Timestamp(0), &mut out);
        for attempt in 0..3 {
            book.apply(&refused(attempt), Timestamp(1), &mut out);
        }
        assert_eq!(book.orders["o"].order.status, Status::Rejected);
    }

    fn held(order: &str, event_id: &str, kind: EventType, moved: i64) -> ToHome {
        ToHome::Held {
            change: crate::orders::HoldChange {
                by: "pos".into(),
                order_id: order.into(),
                event_id: event_id.into(),
                event_type: kind,
                sku: "A".into(),
                location_id: "S".into(),
                quantity: moved,
                moved,
                refused: None,
                hold_ns: None,
            },
            hold_ns: 10_000,
        }
    }

    #[test]
    fn a_repeated_held_message_counts_once_and_is_no_command() {
        let mut book = SagaBook::default();
        let mut out = StepOut::default();
        let reserve = held("o", "e1", EventType::Reservation, 5);
        book.apply(&reserve, Timestamp(0), &mut out);
        // Sent again after a crash, and by a second owner.
        book.apply(&reserve, Timestamp(1), &mut out);
        book.apply(&reserve, Timestamp(2), &mut out);
        assert_eq!(book.held().values().sum::<i64>(), 5);
        let release = held("o", "e2", EventType::Release, 2);
        book.apply(&release, Timestamp(3), &mut out);
        book.apply(&release, Timestamp(3), &mut out);
        assert_eq!(book.held().values().sum::<i64>(), 3);
        assert_eq!(
            book.orders["o"].version, 0,
            "a waiting command is not woken by events"
        );
        assert!(out.actions.is_empty());
    }

    #[test]
    fn events_naming_a_pending_order_do_not_decide_its_placed_lines() {
        let mut book = SagaBook::default();
        let mut out = StepOut::default();
        book.apply(
            &place("o", &[("A", "T", 1)], Mode::AllOrNothing),
            Timestamp(0),
            &mut out,
        );
        // An event's reservation for the same order is refused meanwhile,
        // and another is granted with a hold of its own.
        let mut refused = held("o", "e1", EventType::Reservation, 0);
        if let ToHome::Held { change, .. } = &mut refused {
            change.refused = Some("insufficient_stock".into());
        }
        book.apply(&refused, Timestamp(1), &mut out);
        book.apply(
            &held("o", "e2", EventType::Reservation, 2),
            Timestamp(1),
            &mut out,
        );
        assert_eq!(book.orders["o"].order.status, Status::Pending);
        let mut out = StepOut::default();
        book.apply(&result("o", 0, true), Timestamp(2), &mut out);
        let order = &book.orders["o"].order;
        assert_eq!(order.status, Status::PartiallyReserved, "{order:?}");
        assert!(
            out.actions.is_empty(),
            "nothing released: {:?}",
            out.actions
        );
        assert_eq!(book.held().values().sum::<i64>(), 3);
        // Its placed line refused instead: the placed lines are rejected,
        // the event's units still hold it live.
        let mut book = SagaBook::default();
        book.apply(
            &place("p", &[("A", "T", 1)], Mode::AllOrNothing),
            Timestamp(0),
            &mut out,
        );
        book.apply(
            &held("p", "e3", EventType::Reservation, 2),
            Timestamp(1),
            &mut out,
        );
        let mut out = StepOut::default();
        book.apply(&result("p", 0, false), Timestamp(2), &mut out);
        assert!(out.actions.is_empty());
        assert!(book.orders["p"].order.status.is_live());
        assert_eq!(book.held().values().sum::<i64>(), 2);
    }

    #[test]
    fn a_line_fulfilment_takes_no_more_than_its_order_still_holds_at_the_level() {
        let mut engine = crate::Engine::new(crate::EngineConfig {
            partitions: 1,
            ..Default::default()
        });
        let body = [
            r#"{"eventId":"r","eventType":"RECEIPT","sku":"A","locationId":"S","quantity":10}"#,
            r#"{"eventId":"o/0/reserve","eventType":"RESERVATION","sku":"A","locationId":"S","quantity":4,"correlationId":"o"}"#,
            // An event fulfilled 3 of them before the home's fulfil arrived.
            r#"{"eventId":"web","eventType":"FULFILLMENT","sku":"A","locationId":"S","quantity":3,"correlationId":"o"}"#,
        ]
        .join("\n");
        let mut batch = crate::parse_body(body.as_bytes(), crate::BodyFormat::Ndjson, 10)
            .unwrap()
            .batch;
        engine.apply(&mut batch, Timestamp(1));
        let fulfil = r#"{"eventId":"o/0/fulfil","eventType":"FULFILLMENT","sku":"A","locationId":"S","quantity":4,"correlationId":"o"}"#;
        let mut line = crate::parse_body(fulfil.as_bytes(), crate::BodyFormat::Json, 1)
            .unwrap()
            .batch;
        settle_fulfilments(&mut line, &engine.partitions[0]);
        assert_eq!(line.get(0).quantity, 1);
        engine.apply(&mut line, Timestamp(2));
        let level = engine.get("A", "S").unwrap().level;
        assert_eq!(
            (level.on_hand, level.reserved),
            (6, 0),
            "4 units left the shelf, once"
        );
        assert!(is_line_fulfilment("o/0/fulfil", Some("o")));
        assert!(!is_line_fulfilment("web", Some("o")));
    }

    #[test]
    fn a_saga_reservation_names_its_line() {
        assert_eq!(reservation_line("o-1/2/reserve", Some("o-1")), Some((2, 0)));
        assert_eq!(reservation_line("a/b/0/reserve", Some("a/b")), Some((0, 0)));
        assert_eq!(
            reservation_line("o-1/2.3/reserve", Some("o-1")),
            Some((2, 3))
        );
        assert_eq!(reservation_line("o-1/2/release", Some("o-1")), None);
        assert_eq!(reservation_line("x/2/reserve", Some("o-1")), None);
        assert_eq!(reservation_line("o-1/2/reserve", None), None);
    }
}
