//! The order book on a simulated clock: all-or-nothing, partial,
//! idempotency, transitions, sourcing, and holds that expire exactly.

use std::collections::BTreeMap;

use stockflow_core::orders::{
    Answer, LineRequest, Mode, OrderBook, OrderCommand, OrderEvent, Sourcing, Status, StockView,
};
use stockflow_core::{EventType, Timestamp};

const SECOND: i64 = 1_000_000_000;

/// Free stock per (sku, location), moved by the events the book emits.
#[derive(Default)]
struct Stock(BTreeMap<(String, String), i64>);

impl Stock {
    fn with(levels: &[(&str, &str, i64)]) -> Stock {
        Stock(
            levels
                .iter()
                .map(|(s, l, q)| ((s.to_string(), l.to_string()), *q))
                .collect(),
        )
    }

    fn apply(&mut self, events: &[OrderEvent]) {
        for e in events {
            let free = self
                .0
                .entry((e.sku.clone(), e.location_id.clone()))
                .or_insert(0);
            match e.event_type {
                EventType::Reservation | EventType::Fulfillment => {
                    *free -= if e.event_type == EventType::Reservation {
                        e.quantity
                    } else {
                        0
                    }
                }
                EventType::Release => *free += e.quantity,
                other => panic!("orders do not emit {other:?}"),
            }
        }
    }
}

impl StockView for Stock {
    fn free(&self, sku: &str, location: &str) -> i64 {
        self.0
            .get(&(sku.to_owned(), location.to_owned()))
            .copied()
            .unwrap_or(0)
    }
    fn locations(&self, sku: &str) -> Vec<String> {
        self.0
            .keys()
            .filter(|(s, _)| s == sku)
            .map(|(_, l)| l.clone())
            .collect()
    }
}

fn line(sku: &str, location: Option<&str>, quantity: i64) -> LineRequest {
    LineRequest {
        sku: sku.into(),
        location_id: location.map(Into::into),
        quantity,
    }
}

fn place(id: &str, lines: Vec<LineRequest>, mode: Mode, hold_s: i64) -> OrderCommand {
    OrderCommand::Place {
        by: "web".into(),
        order_id: id.into(),
        fingerprint: lines.len() as u64,
        lines,
        mode,
        hold_ns: hold_s * SECOND,
        sourcing: Sourcing::MostAvailable,
    }
}

/// Runs commands at `t` seconds and applies their events to `stock`.
fn run(book: &mut OrderBook, stock: &mut Stock, t: i64, commands: &[OrderCommand]) -> Vec<Answer> {
    let (events, answers) = book.decide(commands, Timestamp(t * SECOND), stock);
    stock.apply(&events);
    answers
}

fn status(answer: &Answer) -> Status {
    match answer {
        Answer::Done(order) => order.status,
        other => panic!("expected an order, got {other:?}"),
    }
}

#[test]
fn all_or_nothing_reserves_every_line_or_none() {
    let mut stock = Stock::with(&[("A", "S1", 5), ("B", "S2", 1)]);
    let mut book = OrderBook::default();
    let answers = run(
        &mut book,
        &mut stock,
        0,
        &[
            place(
                "o1",
                vec![line("A", Some("S1"), 2), line("B", Some("S2"), 2)],
                Mode::AllOrNothing,
                60,
            ),
            place(
                "o2",
                vec![line("A", Some("S1"), 2), line("B", Some("S2"), 2)],
                Mode::Partial,
                60,
            ),
        ],
    );
    assert_eq!(status(&answers[0]), Status::Rejected);
    assert_eq!(stock.free("A", "S1"), 3, "o1 took nothing, o2 took 2");
    assert_eq!(status(&answers[1]), Status::PartiallyReserved);
    let Answer::Done(o2) = &answers[1] else {
        unreachable!()
    };
    assert_eq!(o2.lines[1].reserved(), 1);
    assert!(o2.lines[1]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("insufficient_stock"));
}

#[test]
fn a_retry_is_the_same_answer_and_a_different_body_conflicts() {
    let mut stock = Stock::with(&[("A", "S1", 5)]);
    let mut book = OrderBook::default();
    let first = run(
        &mut book,
        &mut stock,
        0,
        &[place(
            "o1",
            vec![line("A", Some("S1"), 2)],
            Mode::AllOrNothing,
            60,
        )],
    );
    let again = run(
        &mut book,
        &mut stock,
        1,
        &[place(
            "o1",
            vec![line("A", Some("S1"), 2)],
            Mode::AllOrNothing,
            60,
        )],
    );
    assert_eq!(first, again);
    assert_eq!(stock.free("A", "S1"), 3, "nothing more reserved");
    let other = run(
        &mut book,
        &mut stock,
        1,
        &[place(
            "o1",
            vec![line("A", Some("S1"), 1), line("A", Some("S1"), 1)],
            Mode::AllOrNothing,
            60,
        )],
    );
    assert!(matches!(other[0], Answer::Conflict(..)));
}

#[test]
fn holds_expire_exactly_at_their_time_unless_extended_fulfilled_or_cancelled() {
    let mut stock = Stock::with(&[("A", "S1", 10)]);
    let mut book = OrderBook::default();
    run(
        &mut book,
        &mut stock,
        0,
        &[
            place(
                "expires",
                vec![line("A", Some("S1"), 1)],
                Mode::AllOrNothing,
                30,
            ),
            place(
                "extended",
                vec![line("A", Some("S1"), 2)],
                Mode::AllOrNothing,
                30,
            ),
            place(
                "fulfilled",
                vec![line("A", Some("S1"), 3)],
                Mode::AllOrNothing,
                30,
            ),
            place(
                "cancelled",
                vec![line("A", Some("S1"), 4)],
                Mode::AllOrNothing,
                30,
            ),
        ],
    );
    assert_eq!(stock.free("A", "S1"), 0);
    assert_eq!(book.next_expiry(), Some(Timestamp(30 * SECOND)));
    run(
        &mut book,
        &mut stock,
        10,
        &[
            OrderCommand::Extend {
                by: "ops".into(),
                order_id: "extended".into(),
                hold_ns: 60 * SECOND,
            },
            OrderCommand::Fulfil {
                by: "wms".into(),
                order_id: "fulfilled".into(),
                lines: None,
            },
            OrderCommand::Cancel {
                by: "ops".into(),
                order_id: "cancelled".into(),
            },
        ],
    );
    assert_eq!(stock.free("A", "S1"), 4, "the cancel released 4");
    // One nanosecond before: still held.
    book.decide(&[], Timestamp(30 * SECOND - 1), &stock);
    assert_eq!(book.orders["expires"].status, Status::Reserved);
    let (events, _) = book.decide(&[], Timestamp(30 * SECOND), &stock);
    stock.apply(&events);
    assert_eq!(book.orders["expires"].status, Status::Expired);
    assert_eq!(book.orders["extended"].status, Status::Reserved);
    assert_eq!(stock.free("A", "S1"), 5);
    // Who did what, in order, with the status each left.
    let trail = |id: &str| -> Vec<(&'static str, Status, String)> {
        book.orders[id]
            .transitions
            .iter()
            .map(|t| (t.action.as_str(), t.status, t.by.clone()))
            .collect()
    };
    assert_eq!(
        trail("expires"),
        [
            ("place", Status::Reserved, "web".into()),
            ("expire", Status::Expired, stockflow_core::SERVER.into())
        ]
    );
    assert_eq!(
        trail("extended"),
        [
            ("place", Status::Reserved, "web".into()),
            ("extend", Status::Reserved, "ops".into())
        ]
    );
    assert_eq!(
        trail("fulfilled")[1],
        ("fulfil", Status::Fulfilled, "wms".into())
    );
    assert_eq!(
        trail("cancelled")[1],
        ("cancel", Status::Cancelled, "ops".into())
    );
    let (events, _) = book.decide(&[], Timestamp(70 * SECOND), &stock);
    stock.apply(&events);
    assert_eq!(book.orders["extended"].status, Status::Expired);
    assert_eq!(
        book.orders["fulfilled"].status,
        Status::Fulfilled,
        "fulfilled orders never expire"
    );
    assert_eq!(book.next_expiry(), None);
    // Illegal transitions answer with the current state.
    let answers = run(
        &mut book,
        &mut stock,
        80,
        &[
            OrderCommand::Cancel {
                by: "ops".into(),
                order_id: "fulfilled".into(),
            },
            OrderCommand::Fulfil {
                by: "wms".into(),
                order_id: "expires".into(),
                lines: None,
            },
            OrderCommand::Cancel {
                by: "ops".into(),
                order_id: "cancelled".into(),
            },
            OrderCommand::Cancel {
                by: "ops".into(),
                order_id: "nope".into(),
            },
        ],
    );
    assert!(matches!(&answers[0], Answer::Conflict(o, _) if o.status == Status::Fulfilled));
    assert!(matches!(&answers[1], Answer::Conflict(o, _) if o.status == Status::Expired));
    assert_eq!(
        status(&answers[2]),
        Status::Cancelled,
        "a repeated cancel is idempotent"
    );
    assert!(matches!(answers[3], Answer::NotFound(_)));
}

#[test]
fn lines_without_a_location_are_sourced_and_split() {
    let mut stock = Stock::with(&[("A", "S1", 3), ("A", "S2", 5), ("A", "WH", 2)]);
    let mut book = OrderBook::default();
    let answers = run(
        &mut book,
        &mut stock,
        0,
        &[place(
            "o1",
            vec![line("A", None, 7)],
            Mode::AllOrNothing,
            60,
        )],
    );
    let Answer::Done(order) = &answers[0] else {
        panic!()
    };
    let where_: Vec<(&str, i64)> = order.lines[0]
        .allocations
        .iter()
        .map(|a| (a.location_id.as_str(), a.quantity))
        .collect();
    assert_eq!(where_, [("S2", 5), ("S1", 2)], "most available first");
    let priority = OrderCommand::Place {
        by: "web".into(),
        order_id: "o2".into(),
        lines: vec![line("A", None, 2)],
        mode: Mode::AllOrNothing,
        hold_ns: 60 * SECOND,
        sourcing: Sourcing::Priority(vec!["WH".into(), "S1".into()]),
        fingerprint: 1,
    };
    let answers = run(&mut book, &mut stock, 0, &[priority]);
    let Answer::Done(order) = &answers[0] else {
        panic!()
    };
    assert_eq!(order.lines[0].allocations[0].location_id, "WH");
}
