//! Orders' holds against a reference model, over everything a user can
//! send at once: plain events, events naming orders (known, unknown,
//! expired, cancelled and fulfilled ones; partial releases; fulfilments
//! larger than the hold), duplicates, late events, counts, orders placed
//! through the API, holds that expire, and restarts.
//!
//! The model keeps, per level, onHand, the free reservations and each
//! order's hold, and per order its expiry; it is written from the rules in
//! the README's event table, not from the engine. After every log record
//! the engine must equal it, level by level and order by order, and the
//! invariant `reserved = Σ holds + free, free ≥ 0` must hold. At the end a
//! replay of the log into a fresh engine must rebuild the same state.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use stockflow_core::orders::{LineRequest, Mode, OrderBook, OrderCommand, Sourcing};
use stockflow_core::{
    parse_body, Batch, BodyFormat, Dedup, DedupSnapshot, Engine, EngineConfig, Outcome, Partition,
    PartitionSnapshot, Timestamp,
};

const SECOND: i64 = 1_000_000_000;
/// 2024-01-01T10:00:00Z: event timestamps are minutes after it.
const EVENT_EPOCH_NS: i64 = 1_704_103_200 * SECOND;
/// 2024-01-01T12:00:00Z: server time starts here, after every event time,
/// so the order step's own events (stamped with server time) are never
/// absorbed by a COUNT, and a COUNT before them adds them back.
const SERVER_EPOCH_NS: i64 = 1_704_110_400 * SECOND;
/// The hold of an order an event creates.
const EVENT_HOLD_NS: i64 = 60 * SECOND;

const SKUS: [&str; 2] = ["A", "B"];
const LOCATIONS: [&str; 2] = ["S1", "S2"];

#[derive(Clone, Debug)]
struct Ev {
    id: u16,
    kind: &'static str,
    sku: usize,
    location: usize,
    quantity: i64,
    /// Event time: seconds after 10:00.
    second: i64,
    order: Option<u8>,
}

impl Ev {
    fn json(&self) -> String {
        let order = self
            .order
            .map(|o| format!(r#","correlationId":"o{o}""#))
            .unwrap_or_default();
        format!(
            r#"{{"eventId":"e{}","eventType":"{}","sku":"{}","locationId":"{}","quantity":{},"timestamp":"2024-01-01T10:{:02}:{:02}Z"{order}}}"#,
            self.id,
            self.kind,
            SKUS[self.sku],
            LOCATIONS[self.location],
            self.quantity,
            self.second / 60,
            self.second % 60,
        )
    }

    fn time(&self) -> i64 {
        EVENT_EPOCH_NS + self.second * SECOND
    }
}

#[derive(Clone, Debug)]
enum Command {
    /// Lines of (sku, location, quantity).
    Place(u8, Vec<(usize, usize, i64)>, Mode, i64),
    Fulfil(u8),
    Cancel(u8),
    Extend(u8, i64),
}

impl Command {
    fn to_engine(&self) -> OrderCommand {
        match self {
            Command::Place(o, lines, mode, hold_s) => OrderCommand::Place {
                order_id: format!("o{o}"),
                lines: lines
                    .iter()
                    .map(|(s, l, q)| LineRequest {
                        sku: SKUS[*s].into(),
                        location_id: Some(LOCATIONS[*l].into()),
                        quantity: *q,
                    })
                    .collect(),
                mode: *mode,
                hold_ns: hold_s * SECOND,
                sourcing: Sourcing::MostAvailable,
                fingerprint: 1,
            },
            Command::Fulfil(o) => OrderCommand::Fulfil {
                order_id: format!("o{o}"),
                lines: None,
            },
            Command::Cancel(o) => OrderCommand::Cancel {
                order_id: format!("o{o}"),
            },
            Command::Extend(o, s) => OrderCommand::Extend {
                order_id: format!("o{o}"),
                hold_ns: s * SECOND,
            },
        }
    }
}

/// One log record: events in batches, commands, how far time moves first,
/// and whether the engine restarts from a snapshot after it.
#[derive(Clone, Debug)]
struct Record {
    advance_s: i64,
    batches: Vec<Vec<Ev>>,
    commands: Vec<Command>,
    restart: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct MLevel {
    on_hand: i64,
    /// Reserved units no order holds.
    free: i64,
    holds: BTreeMap<String, i64>,
    count_time: Option<i64>,
    /// onHand changes applied since the count: (event time, delta).
    applied: Vec<(i64, i64)>,
}

impl MLevel {
    fn reserved(&self) -> i64 {
        self.free + self.holds.values().sum::<i64>()
    }

    fn change_on_hand(&mut self, delta: i64, t: i64) {
        if self.count_time.is_some_and(|c| t <= c) {
            return;
        }
        self.on_hand += delta;
        self.applied.push((t, delta));
    }

    fn hold(&self, order: &str) -> i64 {
        self.holds.get(order).copied().unwrap_or(0)
    }

    fn take_hold(&mut self, order: &str, units: i64) {
        let left = self.hold(order) - units;
        assert!(left >= 0);
        match left {
            0 => self.holds.remove(order),
            _ => self.holds.insert(order.to_owned(), left),
        };
    }
}

#[derive(Default)]
struct Model {
    seen: BTreeSet<u16>,
    levels: BTreeMap<(usize, usize), MLevel>,
    /// Orders that exist (placed, or named by a RESERVATION).
    orders: BTreeSet<String>,
    /// Hold expiry of live orders.
    expires: BTreeMap<String, i64>,
    /// Event ids refused (not applied) so far, with the reason's code.
    refused: Vec<(u16, &'static str)>,
}

impl Model {
    fn live(&self, order: &str) -> bool {
        self.levels.values().any(|l| l.hold(order) > 0)
    }

    fn event(&mut self, e: &Ev, now: i64) {
        if !self.seen.insert(e.id) {
            return;
        }
        let order = e.order.map(|o| format!("o{o}"));
        let was_live = order.as_deref().is_some_and(|o| self.live(o));
        let l = self.levels.entry((e.sku, e.location)).or_default();
        let (q, t) = (e.quantity, e.time());
        match (e.kind, order) {
            ("RECEIPT", _) => l.change_on_hand(q, t),
            ("SALE", _) => l.change_on_hand(-q, t),
            ("ADJUSTMENT", _) => l.change_on_hand(q, t),
            ("COUNT", _) if l.count_time.is_some_and(|c| c >= t) => {}
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
                let until = now + EVENT_HOLD_NS;
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
    }

    /// Gives back every unit `order` holds.
    fn release_all(&mut self, order: &str) {
        for l in self.levels.values_mut() {
            l.holds.remove(order);
        }
        self.expires.remove(order);
    }

    fn expire(&mut self, now: i64) {
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

    fn command(&mut self, command: &Command, now: i64) {
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
                let all = takes.iter().all(|(_, _, whole)| *whole);
                if *mode == Mode::AllOrNothing && !all {
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
}

fn event(id: impl Strategy<Value = u16>) -> impl Strategy<Value = Ev> {
    let kinds = prop::sample::select(vec![
        "RECEIPT",
        "RECEIPT",
        "SALE",
        "ADJUSTMENT",
        "COUNT",
        "RESERVATION",
        "RESERVATION",
        "RELEASE",
        "FULFILLMENT",
    ]);
    (
        id,
        kinds,
        0..2usize,
        0..2usize,
        1..12i64,
        0..3600i64,
        prop::option::weighted(0.6, 0..6u8),
        any::<bool>(),
    )
        .prop_map(
            |(id, kind, sku, location, quantity, second, order, negative)| {
                let quantity = match kind {
                    "ADJUSTMENT" if negative => -quantity,
                    "COUNT" => quantity * 2,
                    _ => quantity,
                };
                // Only the three order types carry an order id that matters;
                // others carry it along, as a user's stream may.
                Ev {
                    id,
                    kind,
                    sku,
                    location,
                    quantity,
                    second,
                    order,
                }
            },
        )
}

fn command() -> impl Strategy<Value = Command> {
    let line = (0..2usize, 0..2usize, 1..8i64);
    let mode = prop::sample::select(vec![Mode::AllOrNothing, Mode::Partial]);
    prop_oneof![
        3 => (0..6u8, prop::collection::vec(line, 1..4), mode, 10..200i64)
            .prop_map(|(o, lines, mode, hold)| Command::Place(o, lines, mode, hold)),
        1 => (0..6u8).prop_map(Command::Fulfil),
        1 => (0..6u8).prop_map(Command::Cancel),
        1 => (0..6u8, 10..200i64).prop_map(|(o, s)| Command::Extend(o, s)),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        prop_oneof![3 => 0..5i64, 1 => 30..150i64],
        prop::collection::vec(prop::collection::vec(event(0..300u16), 0..6), 0..3),
        prop::collection::vec(command(), 0..3),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(advance_s, batches, commands, restart)| Record {
            advance_s,
            batches,
            commands,
            restart,
        })
}

type Levels = BTreeMap<(String, String), (i64, i64, BTreeMap<String, i64>)>;

fn engine_levels(engine: &Engine) -> Levels {
    engine
        .levels()
        .map(|v| {
            let holds = v
                .level
                .holds()
                .iter()
                .map(|h| (h.order_id.to_string(), h.quantity))
                .collect();
            (
                (v.sku.to_string(), v.location_id.to_string()),
                (v.level.on_hand, v.level.reserved, holds),
            )
        })
        .collect()
}

fn model_levels(model: &Model) -> Levels {
    model
        .levels
        .iter()
        .map(|((s, l), m)| {
            (
                (SKUS[*s].to_owned(), LOCATIONS[*l].to_owned()),
                (m.on_hand, m.reserved(), m.holds.clone()),
            )
        })
        .collect()
}

/// reserved = Σ holds + free with free ≥ 0 at every level, and the book's
/// allocations are exactly the levels' holds; an order is live iff it
/// holds something.
fn check_invariants(engine: &Engine, model: &Model) -> Result<(), TestCaseError> {
    for view in engine.levels() {
        let l = &view.level;
        let free = l.free_reserved();
        prop_assert!(free >= 0, "{}@{}: free {free}", view.sku, view.location_id);
        prop_assert!(l.holds().iter().all(|h| h.quantity > 0));
    }
    let mut from_book: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for order in engine.orders.orders.values() {
        let mut holds_any = false;
        for line in &order.lines {
            for a in line.allocations.iter().filter(|a| !a.fulfilled) {
                holds_any = true;
                let key = (
                    line.sku.clone(),
                    a.location_id.clone(),
                    order.order_id.clone(),
                );
                *from_book.entry(key).or_insert(0) += a.quantity;
            }
        }
        prop_assert_eq!(
            order.status.is_live(),
            holds_any,
            "order {} is {:?}",
            &order.order_id,
            order.status
        );
        prop_assert_eq!(order.status.is_live(), model.live(&order.order_id));
        prop_assert_eq!(
            order.expires_at.map(|t| t.0),
            model
                .expires
                .get(&order.order_id)
                .copied()
                .filter(|_| model.live(&order.order_id)),
            "expiry of {}",
            &order.order_id
        );
    }
    let from_levels: BTreeMap<(String, String, String), i64> = engine
        .levels()
        .flat_map(|v| {
            v.level
                .holds()
                .iter()
                .map(|h| {
                    (
                        (
                            v.sku.to_string(),
                            v.location_id.to_string(),
                            h.order_id.to_string(),
                        ),
                        h.quantity,
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    prop_assert_eq!(from_book, from_levels);
    let known: BTreeSet<String> = engine.orders.orders.keys().cloned().collect();
    prop_assert_eq!(&known, &model.orders);
    Ok(())
}

/// The engine as a checkpoint would bring it back: every part through its
/// stored form.
fn restart(engine: &Engine) -> Engine {
    let config = engine.config;
    let dedup = engine.dedup.snapshot().encode();
    let book: OrderBook =
        postcard::from_bytes(&postcard::to_stdvec(&engine.orders).unwrap()).unwrap();
    Engine {
        config,
        dedup: Dedup::restore(
            &DedupSnapshot::decode(&dedup).unwrap(),
            config.dedup_retention_ns,
            config.dedup_capacity,
        ),
        partitions: engine
            .partitions
            .iter()
            .map(|p| {
                let bytes = postcard::to_stdvec(&p.snapshot()).unwrap();
                Partition::restore(
                    postcard::from_bytes::<PartitionSnapshot>(&bytes).unwrap(),
                    &engine.catalog,
                    config.timers,
                )
            })
            .collect(),
        catalog: engine.catalog.clone(),
        orders: book,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn holds_follow_their_orders_whatever_the_stream(records in prop::collection::vec(record(), 1..40)) {
        let config = EngineConfig { partitions: 3, ..EngineConfig::default() };
        let mut engine = Engine::new(config);
        let mut model = Model::default();
        let mut now = SERVER_EPOCH_NS;
        let mut logged: Vec<(Vec<Batch>, Vec<OrderCommand>, Timestamp)> = Vec::new();
        let mut refused = Vec::new();
        for record in &records {
            now += record.advance_s * SECOND + 1;
            let mut batches: Vec<Batch> = record
                .batches
                .iter()
                .map(|events| {
                    let body: Vec<String> = events.iter().map(Ev::json).collect();
                    let parsed = parse_body(body.join("\n").as_bytes(), BodyFormat::Ndjson, 1000).unwrap();
                    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
                    parsed.batch
                })
                .collect();
            let commands: Vec<OrderCommand> = record.commands.iter().map(Command::to_engine).collect();
            let report = engine.apply_record(&mut batches, &commands, Timestamp(now), EVENT_HOLD_NS);
            for (events, batch) in record.batches.iter().zip(&report.batches) {
                for (index, outcome) in &batch.exceptions {
                    let Outcome::Rejected(why) = outcome else { unreachable!() };
                    refused.push((events[*index as usize].id, why.as_str()));
                }
            }
            logged.push((batches, commands, Timestamp(now)));
            for e in record.batches.iter().flatten() {
                model.event(e, now);
            }
            model.expire(now);
            for c in &record.commands {
                model.command(c, now);
            }
            prop_assert_eq!(engine_levels(&engine), model_levels(&model));
            prop_assert_eq!(&refused, &model.refused);
            check_invariants(&engine, &model)?;
            if record.restart {
                engine = restart(&engine);
            }
        }
        // The log replayed into a fresh engine is the same engine.
        let mut replayed = Engine::new(config);
        for (batches, commands, at) in &logged {
            let mut batches = batches.clone();
            let report = replayed.apply_record(&mut batches, commands, *at, EVENT_HOLD_NS);
            prop_assert!(report.batches.iter().all(|b| b.duplicates.is_empty()));
        }
        prop_assert_eq!(engine_levels(&replayed), engine_levels(&engine));
        prop_assert_eq!(&replayed.orders.orders, &engine.orders.orders);
    }
}
