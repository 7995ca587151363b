//! The effect table of the contract, one rule at a time.

use stockflow_core::{Outcome, Rejection};

use crate::{engine, ev, level, run};

#[test]
fn receipt_return_adjustment_sale_move_on_hand_and_sales_may_go_negative() {
    let mut e = engine();
    run(
        &mut e,
        &[[
            ev("1", "RECEIPT", "A", "S", 10, 1),
            ev("2", "SALE", "A", "S", 4, 2),
            ev("3", "RETURN", "A", "S", 1, 3),
            ev("4", "ADJUSTMENT", "A", "S", -2, 4),
            ev("5", "SALE", "A", "S", 20, 5),
        ]
        .join("\n")],
    );
    assert_eq!(level(&e, "A", "S"), (-15, 0, 0, 0));
    assert_eq!(e.get("A", "S").unwrap().level.version, 5);
}

#[test]
fn a_duplicate_event_id_has_no_effect_whatever_its_content() {
    let mut e = engine();
    let reports = run(
        &mut e,
        &[
            [
                ev("1", "RECEIPT", "A", "S", 10, 1),
                ev("1", "RECEIPT", "A", "S", 99, 1),
            ]
            .join("\n"),
            ev("1", "SALE", "B", "T", 3, 2),
        ],
    );
    assert_eq!(level(&e, "A", "S"), (10, 0, 10, 0));
    assert!(
        e.get("B", "T").is_none(),
        "a duplicate must not even create a level"
    );
    assert_eq!(reports[0].duplicates, vec![1]);
    assert_eq!(reports[1].duplicates, vec![0]);
}

#[test]
fn transfer_out_puts_stock_in_transit_at_the_destination_and_transfer_in_lands_it() {
    let mut e = engine();
    let out = r#"{"eventId":"t1","eventType":"TRANSFER_OUT","sku":"A","locationId":"DC","toLocationId":"S","quantity":4}"#;
    run(
        &mut e,
        &[ev("r", "RECEIPT", "A", "DC", 10, 1), out.to_string()],
    );
    assert_eq!(level(&e, "A", "DC"), (6, 0, 6, 0));
    assert_eq!(level(&e, "A", "S"), (0, 0, 0, 4));
    run(&mut e, &[ev("t2", "TRANSFER_IN", "A", "S", 3, 5)]);
    assert_eq!(level(&e, "A", "S"), (3, 0, 3, 1));
    // More arrives than was in transit: in transit stops at zero, never below.
    run(&mut e, &[ev("t3", "TRANSFER_IN", "A", "S", 5, 6)]);
    assert_eq!(level(&e, "A", "S"), (8, 0, 8, 0));
}

#[test]
fn transfers_reach_destinations_in_every_partition() {
    let mut e = engine();
    let outs: Vec<String> = (0..50)
        .map(|i| {
            format!(
                r#"{{"eventId":"t{i}","eventType":"TRANSFER_OUT","sku":"A","locationId":"DC","toLocationId":"S{i}","quantity":1}}"#
            )
        })
        .collect();
    run(&mut e, &[outs.join("\n")]);
    assert_eq!(level(&e, "A", "DC").0, -50);
    for i in 0..50 {
        assert_eq!(level(&e, "A", &format!("S{i}")).3, 1);
    }
}

#[test]
fn reservations_never_exceed_what_is_free_and_release_and_fulfilment_undo_them() {
    let mut e = engine();
    let reports = run(
        &mut e,
        &[[
            ev("r", "RECEIPT", "A", "S", 5, 1),
            ev("h1", "RESERVATION", "A", "S", 3, 2),
            ev("h2", "RESERVATION", "A", "S", 3, 3),
            ev("h3", "RESERVATION", "A", "S", 2, 4),
        ]
        .join("\n")],
    );
    assert_eq!(
        reports[0].exceptions,
        vec![(2, Outcome::Rejected(Rejection::InsufficientStock))]
    );
    assert_eq!(level(&e, "A", "S"), (5, 5, 0, 0));
    run(
        &mut e,
        &[
            ev("f", "FULFILLMENT", "A", "S", 3, 5),
            ev("x", "RELEASE", "A", "S", 10, 6),
        ],
    );
    assert_eq!(level(&e, "A", "S"), (2, 0, 2, 0));
}

#[test]
fn a_reservation_on_an_unknown_level_is_rejected_not_an_error() {
    let mut e = engine();
    let reports = run(&mut e, &[ev("h", "RESERVATION", "A", "S", 1, 1)]);
    assert_eq!(
        reports[0].exceptions,
        vec![(0, Outcome::Rejected(Rejection::InsufficientStock))]
    );
    assert_eq!(level(&e, "A", "S"), (0, 0, 0, 0));
}

#[test]
fn available_is_never_negative() {
    let mut e = engine();
    run(
        &mut e,
        &[
            ev("r", "RECEIPT", "A", "S", 5, 1),
            ev("h", "RESERVATION", "A", "S", 5, 2),
            ev("s", "SALE", "A", "S", 3, 3),
        ],
    );
    assert_eq!(level(&e, "A", "S"), (2, 5, 0, 0));
}

#[test]
fn a_count_sets_on_hand_and_keeps_changes_timestamped_after_it() {
    let mut e = engine();
    // Events at 10:05 and 10:20 arrive before a count taken at 10:10.
    run(
        &mut e,
        &[
            ev("r", "RECEIPT", "A", "S", 100, 5),
            ev("s", "SALE", "A", "S", 7, 20),
            ev("c", "COUNT", "A", "S", 50, 10),
        ],
    );
    // 50 counted at 10:10, then the 10:20 sale of 7.
    assert_eq!(level(&e, "A", "S").0, 43);
    assert_eq!(
        e.get("A", "S")
            .unwrap()
            .level
            .count_time()
            .unwrap()
            .to_rfc3339(),
        "2024-01-01T10:10:00Z"
    );
}

#[test]
fn an_event_older_than_the_count_is_absorbed_but_its_other_parts_apply() {
    let mut e = engine();
    let reports = run(
        &mut e,
        &[[
            ev("r", "RECEIPT", "A", "S", 10, 1),
            ev("h", "RESERVATION", "A", "S", 4, 2),
            ev("c", "COUNT", "A", "S", 20, 30),
            ev("late-sale", "SALE", "A", "S", 5, 10),
            ev("late-f", "FULFILLMENT", "A", "S", 3, 10),
            ev("at-count", "RECEIPT", "A", "S", 9, 30),
        ]
        .join("\n")],
    );
    // onHand is the count; the fulfilment still released its reservation.
    assert_eq!(level(&e, "A", "S"), (20, 1, 19, 0));
    assert!(reports[0].exceptions.is_empty());
}

#[test]
fn a_count_not_newer_than_the_last_count_is_stale() {
    let mut e = engine();
    run(
        &mut e,
        &[
            ev("c1", "COUNT", "A", "S", 20, 30),
            ev("c2", "COUNT", "A", "S", 99, 30),
            ev("c3", "COUNT", "A", "S", 77, 29),
        ],
    );
    assert_eq!(level(&e, "A", "S").0, 20);
    run(
        &mut e,
        &[
            ev("s", "SALE", "A", "S", 2, 40),
            ev("c4", "COUNT", "A", "S", 10, 35),
        ],
    );
    assert_eq!(
        level(&e, "A", "S").0,
        8,
        "count at :35 then the sale at :40"
    );
}

#[test]
fn a_count_older_than_the_kept_history_is_rejected_rather_than_guessed() {
    let mut e = engine();
    let old = "2024-01-01T00:00:00Z";
    let next_day = "2024-01-02T06:00:00Z";
    let body = format!(
        concat!(
            r#"{{"eventId":"a","eventType":"RECEIPT","sku":"A","locationId":"S","quantity":5,"timestamp":"{}"}}"#,
            "\n",
            r#"{{"eventId":"b","eventType":"RECEIPT","sku":"A","locationId":"S","quantity":1,"timestamp":"{}"}}"#,
            "\n",
            r#"{{"eventId":"c","eventType":"COUNT","sku":"A","locationId":"S","quantity":0,"timestamp":"2023-12-31T23:00:00Z"}}"#
        ),
        old, next_day
    );
    let reports = run(&mut e, &[body]);
    assert_eq!(
        reports[0].exceptions,
        vec![(2, Outcome::Rejected(Rejection::CountBeyondHistory))]
    );
    assert_eq!(level(&e, "A", "S").0, 6);
}

/// A refusal keeps the level as the refused event found it, not as the
/// rest of its batch left it: an order line refused for lack of stock
/// says how much there was then.
#[test]
fn a_refused_event_carries_the_level_it_was_refused_at() {
    use stockflow_core::{admit, parse_body, BodyFormat, Numbers, Timestamp};
    let mut e = engine();
    let body = [
        ev("r", "RECEIPT", "A", "S", 8, 1),
        ev("h1", "RESERVATION", "A", "S", 10, 2),
        ev("h2", "RESERVATION", "A", "S", 6, 3),
        ev("r2", "RECEIPT", "A", "S", 20, 4),
    ]
    .join("\n");
    let now = Timestamp::parse_rfc3339("2024-01-02T00:00:00Z").unwrap();
    let mut parsed = parse_body(body.as_bytes(), BodyFormat::Ndjson, 100).unwrap();
    admit(&mut e.dedup, &mut parsed.batch, now);
    parsed.batch.compute_routes(e.config.partitions);
    let (mut exceptions, mut changes) = (Vec::new(), Vec::new());
    let mut steps = e.begin_steps(now);
    for (step, partition) in steps.iter_mut().zip(&mut e.partitions) {
        step.batch(partition, &parsed.batch, &mut exceptions, &mut changes);
    }
    e.end_steps(steps);
    assert_eq!(exceptions.len(), 1, "{exceptions:?}");
    assert_eq!(
        exceptions[0].outcome,
        Outcome::Rejected(Rejection::InsufficientStock)
    );
    assert_eq!(
        exceptions[0].level,
        Numbers {
            on_hand: 8,
            reserved: 0,
            in_transit: 0
        },
        "as h1 found it, not as r2 left it"
    );
    assert_eq!(level(&e, "A", "S"), (28, 6, 22, 0));
}
