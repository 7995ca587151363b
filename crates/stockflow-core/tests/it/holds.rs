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

use super::reference::{location, sku, Books, Command, Ev, Model, SECOND};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use stockflow_core::orders::{Action, LineRequest, Mode, OrderBook, OrderCommand, Sourcing};
use stockflow_core::{
    parse_body, Batch, BodyFormat, Dedup, DedupSnapshot, Engine, EngineConfig, Outcome, Partition,
    PartitionSnapshot, Timestamp,
};

/// 2024-01-01T12:00:00Z: server time starts here, after every event time,
/// so the order step's own events (stamped with server time) are never
/// absorbed by a COUNT, and a COUNT before them adds them back.
const SERVER_EPOCH_NS: i64 = 1_704_110_400 * SECOND;
/// The hold of an order an event creates.
const EVENT_HOLD_NS: i64 = 60 * SECOND;

fn to_engine(command: &Command) -> OrderCommand {
    match command {
        Command::Place(o, lines, mode, hold_s) => OrderCommand::Place {
            order_id: format!("o{o}"),
            lines: lines
                .iter()
                .map(|(s, l, q)| LineRequest {
                    sku: sku(*s),
                    location_id: Some(location(*l)),
                    quantity: *q,
                })
                .collect(),
            mode: *mode,
            hold_ns: hold_s * SECOND,
            sourcing: Sourcing::MostAvailable,
            fingerprint: 1,
            by: "web".into(),
        },
        Command::Fulfil(o) => OrderCommand::Fulfil {
            order_id: format!("o{o}"),
            lines: None,
            by: "wms".into(),
        },
        Command::Cancel(o) => OrderCommand::Cancel {
            order_id: format!("o{o}"),
            by: "ops".into(),
        },
        Command::Extend(o, s) => OrderCommand::Extend {
            order_id: format!("o{o}"),
            hold_ns: s * SECOND,
            by: "ops".into(),
        },
    }
}

/// Who sends what in the stream: the events come from the tills, orders
/// are placed by the web shop, fulfilled by the warehouse, cancelled and
/// extended by an operator; the server expires holds itself.
fn sender_of(action: Action) -> &'static str {
    match action {
        Action::Place => "web",
        Action::Fulfil => "wms",
        Action::Cancel | Action::Extend => "ops",
        Action::Expire => stockflow_core::SERVER,
        Action::ReservationEvent | Action::ReleaseEvent | Action::FulfillmentEvent => "pos",
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

fn event(id: impl Strategy<Value = u32>) -> impl Strategy<Value = Ev> {
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
        "TRANSFER_OUT",
        "TRANSFER_IN",
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
        prop::option::weighted(0.3, 5..200i64),
    )
        .prop_map(
            |(id, kind, sku, location, quantity, second, order, negative, hold_s)| {
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
                    to: (kind == "TRANSFER_OUT").then_some(1 - location),
                    hold_s: hold_s.filter(|_| kind == "RESERVATION" && order.is_some()),
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
        prop::collection::vec(prop::collection::vec(event(0..300u32), 0..6), 0..3),
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

fn engine_levels(engine: &Engine) -> Books {
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
                (v.level.on_hand, v.level.reserved, v.level.in_transit, holds),
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
        // The audit: every change of the order is a transition by whoever
        // made it, the newest saying how the order now stands.
        let last = order.transitions.last();
        prop_assert!(
            last.is_some(),
            "order {} has no transitions",
            &order.order_id
        );
        prop_assert!(order.transitions.len() <= stockflow_core::limits::ORDER_TRANSITIONS_MAX);
        prop_assert_eq!(
            last.map(|t| (t.status, t.at)),
            Some((order.status, order.updated_at))
        );
        prop_assert!(order.transitions.windows(2).all(|w| w[0].at <= w[1].at));
        for t in &order.transitions {
            prop_assert_eq!(
                &t.by,
                sender_of(t.action),
                "{:?} of {}",
                t.action,
                &order.order_id
            );
        }
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
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn holds_follow_their_orders_whatever_the_stream(records in prop::collection::vec(record(), 1..40)) {
        let config = EngineConfig { partitions: 3, ..EngineConfig::default() };
        let mut engine = Engine::new(config);
        let mut model = Model::new(EVENT_HOLD_NS);
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
                    let mut parsed = parse_body(body.join("\n").as_bytes(), BodyFormat::Ndjson, 1000).unwrap();
                    assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
                    parsed.batch.set_by("pos");
                    parsed.batch
                })
                .collect();
            let commands: Vec<OrderCommand> = record.commands.iter().map(to_engine).collect();
            let report = engine.apply_record(&[], &mut batches, &commands, Timestamp(now), EVENT_HOLD_NS);
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
            prop_assert_eq!(engine_levels(&engine), model.levels_by_name());
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
            let report = replayed.apply_record(&[], &mut batches, commands, *at, EVENT_HOLD_NS);
            prop_assert!(report.batches.iter().all(|b| b.duplicates.is_empty()));
        }
        prop_assert_eq!(engine_levels(&replayed), engine_levels(&engine));
        prop_assert_eq!(&replayed.orders.orders, &engine.orders.orders);
    }
}

/// An order that ended (cancelled with some units fulfilled) keeps how it
/// ended when a later RESERVATION naming it is refused: that event moved
/// nothing.
#[test]
fn a_refused_reservation_does_not_rewrite_how_an_order_ended() {
    let mut engine = Engine::new(EngineConfig::default());
    let record = |engine: &mut Engine, lines: &[&str], commands: &[OrderCommand], t: i64| {
        let mut batch = parse_body(lines.join("\n").as_bytes(), BodyFormat::Ndjson, 10)
            .unwrap()
            .batch;
        engine.apply_record(
            &[],
            std::slice::from_mut(&mut batch),
            commands,
            Timestamp(SERVER_EPOCH_NS + t),
            EVENT_HOLD_NS,
        );
    };
    record(
        &mut engine,
        &[
            r#"{"eventId":"r1","eventType":"RECEIPT","sku":"A","locationId":"S1","quantity":10}"#,
            r#"{"eventId":"v1","eventType":"RESERVATION","sku":"A","locationId":"S1","quantity":4,"correlationId":"o-9"}"#,
            r#"{"eventId":"f1","eventType":"FULFILLMENT","sku":"A","locationId":"S1","quantity":1,"correlationId":"o-9"}"#,
        ],
        &[],
        1,
    );
    let cancel = OrderCommand::Cancel {
        order_id: "o-9".into(),
        by: "ops".into(),
    };
    record(&mut engine, &[], &[cancel], 2);
    assert_eq!(
        engine.orders.orders["o-9"].status,
        stockflow_core::orders::Status::Cancelled
    );
    record(
        &mut engine,
        &[
            r#"{"eventId":"v2","eventType":"RESERVATION","sku":"A","locationId":"S1","quantity":100,"correlationId":"o-9"}"#,
        ],
        &[],
        3,
    );
    let order = &engine.orders.orders["o-9"];
    assert_eq!(
        order.status,
        stockflow_core::orders::Status::Cancelled,
        "{order:?}"
    );
    assert_eq!(
        order.lines.len(),
        2,
        "the refused line is on the order, with its reason"
    );
}
