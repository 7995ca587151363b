//! GET /v1/check in the embedded mode: the engine's invariants, verified
//! on one consistent view of the live state.
//!
//! - Every live order's holds are backed: reserved ≥ Σ holds at each level,
//!   and with `strict` (all reservations made through orders) equal.
//! - The order book and the levels agree on every hold: what each order
//!   holds at a level by its allocations is what the level says it holds.
//! - Every roll-up equals the plain sum of its levels.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use stockflow_core::{Catalog, OrderBook, Partition, Totals};

use super::Embedded;

/// Problems listed in the answer; the counts cover all of them.
const SHOWN_MAX: usize = 20;

/// The embedded engine's verdict over one consistent view.
pub(crate) fn run(state: &Embedded, strict: bool) -> Value {
    let shared = &state.pipeline.shared;
    // One consistent view: every partition and the book at once.
    let book = shared.orders.read();
    let partitions: Vec<_> = shared.partitions.iter().map(|p| p.read()).collect();
    let catalog = shared.catalog.read();
    verdict(&book, &partitions, &catalog, strict)
}

/// The invariants of one consistent view of the book and the partitions.
fn verdict<P: std::ops::Deref<Target = Partition>>(
    book: &OrderBook,
    partitions: &[P],
    catalog: &Catalog,
    strict: bool,
) -> Value {
    let mut held = book.held_by_order();
    let mut problems: Vec<String> = Vec::new();
    let (mut levels, mut unheld, mut violations) = (0u64, 0u64, 0u64);
    let mut rollup_mismatches = 0u64;
    for partition in partitions {
        let mut by_sku: BTreeMap<String, Totals> = BTreeMap::new();
        let mut by_location: BTreeMap<String, Totals> = BTreeMap::new();
        for view in partition.iter() {
            levels += 1;
            let key = (view.sku.to_string(), view.location_id.to_string());
            let by_book = held.remove(&key).unwrap_or_default();
            let holds: i64 = by_book.values().sum();
            let reserved = view.level.reserved;
            // The same level is named the same way with and without
            // `strict`, which only decides whether units reserved beyond
            // the orders' holds fail the check.
            if reserved < holds {
                violations += 1;
            } else if reserved > holds {
                unheld += 1;
            }
            if (reserved < holds || (strict && reserved > holds)) && problems.len() < SHOWN_MAX {
                problems.push(format!(
                    "{}@{}: reserved {reserved} but live orders hold {holds}",
                    key.0, key.1
                ));
            }
            let at_level: BTreeMap<String, i64> = view
                .level
                .holds()
                .iter()
                .map(|h| (h.order_id.to_string(), h.quantity))
                .collect();
            if at_level != by_book {
                violations += 1;
                let orders: std::collections::BTreeSet<&String> =
                    at_level.keys().chain(by_book.keys()).collect();
                for order in orders {
                    let (a, b) = (at_level.get(order), by_book.get(order));
                    if a != b && problems.len() < SHOWN_MAX {
                        problems.push(format!(
                            "{}@{}: order {order} holds {} by its allocations but {} at the level",
                            key.0,
                            key.1,
                            b.copied().unwrap_or(0),
                            a.copied().unwrap_or(0),
                        ));
                    }
                }
            }
            let totals = Totals::of(
                &view.level.numbers(),
                catalog.policy(&view.sku, &view.location_id),
            );
            by_sku.entry(key.0).or_default().add(&totals);
            by_location.entry(key.1).or_default().add(&totals);
        }
        for (sku, expected) in &by_sku {
            if partition.sku_totals(sku).as_ref() != Some(expected) {
                rollup_mismatches += 1;
                if problems.len() < SHOWN_MAX {
                    problems.push(format!("roll-up of sku {sku} differs from its levels"));
                }
            }
        }
        for (location, expected) in &by_location {
            if partition.location_totals(location).as_ref() != Some(expected) {
                rollup_mismatches += 1;
                if problems.len() < SHOWN_MAX {
                    problems.push(format!(
                        "roll-up of location {location} differs from its levels"
                    ));
                }
            }
        }
    }
    // Holds on levels that do not exist at all.
    for ((sku, location), by_order) in held {
        let holds: i64 = by_order.values().sum();
        violations += 1;
        if problems.len() < SHOWN_MAX {
            problems.push(format!(
                "{sku}@{location}: no level, but live orders hold {holds}"
            ));
        }
    }
    json!({
        "ok": violations == 0 && rollup_mismatches == 0 && !(strict && unheld > 0),
        "levels": levels,
        "liveOrders": book.orders.values().filter(|o| o.status.is_live()).count(),
        "holdViolations": violations,
        "reservationsNotHeldByOrders": unheld,
        "rollupMismatches": rollup_mismatches,
        "problems": problems,
    })
}

#[cfg(test)]
mod tests {
    use stockflow_core::orders::Allocation;
    use stockflow_core::{parse_body, BodyFormat, Engine, EngineConfig, Timestamp};

    use serde_json::json;

    use super::*;

    fn verdict_of(engine: &Engine, strict: bool) -> Value {
        verdict(
            &engine.orders,
            &engine.partitions.iter().collect::<Vec<_>>(),
            &engine.catalog,
            strict,
        )
    }

    /// The check says no when the book and the levels disagree on an
    /// order's hold (the defect of issue 18: a level had given o-y's units
    /// back while its order still held them), whatever the sums say.
    #[test]
    fn the_check_names_an_order_whose_hold_its_level_does_not_keep() {
        let mut engine = Engine::new(EngineConfig::default());
        let body = [
            r#"{"eventId":"r1","eventType":"RECEIPT","sku":"A","locationId":"S1","quantity":10}"#,
            r#"{"eventId":"v1","eventType":"RESERVATION","sku":"A","locationId":"S1","quantity":3,"correlationId":"o-y"}"#,
            r#"{"eventId":"v2","eventType":"RESERVATION","sku":"A","locationId":"S1","quantity":2}"#,
        ]
        .join("\n");
        let mut batch = parse_body(body.as_bytes(), BodyFormat::Ndjson, 10)
            .unwrap()
            .batch;
        engine.apply_record(
            &[],
            std::slice::from_mut(&mut batch),
            &[],
            Timestamp(1),
            1_000_000,
        );
        let answer = verdict_of(&engine, false);
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(answer["reservationsNotHeldByOrders"], 1);
        // With strict, the same level under the same name, now failing.
        let strict = verdict_of(&engine, true);
        assert_eq!(strict["ok"], false, "{strict}");
        assert_eq!(strict["reservationsNotHeldByOrders"], 1);
        assert_eq!(strict["holdViolations"], 0);
        assert_eq!(
            strict["problems"],
            json!(["A@S1: reserved 5 but live orders hold 3"])
        );

        // The book says o-y holds 2 more there than the level keeps for it:
        // the sums still fit (5 reserved ≥ 5 held), the orders do not.
        let order = engine.orders.orders.get_mut("o-y").unwrap();
        order.lines[0].allocations.push(Allocation {
            location_id: "S1".into(),
            quantity: 2,
            fulfilled: false,
        });
        let answer = verdict_of(&engine, false);
        assert_eq!(answer["ok"], false, "{answer}");
        assert_eq!(answer["holdViolations"], 1);
        assert_eq!(
            answer["problems"],
            json!(["A@S1: order o-y holds 5 by its allocations but 3 at the level"])
        );
    }
}
