//! GET /v1/check in Kafka mode: the engine's invariants on the live state
//! of the whole cluster, as the embedded mode checks them on one server.
//!
//! - Every live order's holds are backed: reserved ≥ Σ holds at each level
//!   (with `strict`, equal). Holds are kept at the orders' homes, levels at
//!   their owners: each member reports the holds of its homes and the
//!   levels it owns with anything reserved.
//! - The homes and the levels agree on every level's holds: what the live
//!   orders hold there by their homes' books is what the level's owner
//!   says orders hold there (a home learns of an event's effect a cycle
//!   later: while events flow a difference can be momentary).
//! - Every SKU's roll-up (kept at its home from its levels' reports) sums
//!   to its levels: each member reports, per SKU, the sum of the levels it
//!   owns and the roll-ups it keeps. Roll-ups follow their levels a cycle
//!   later, so while events flow a mismatch can be momentary: ask again.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::http::{gather, restoring, KafkaApp};
use super::shared::ACTIVE;
use stockflow_http::backend::Read;
use stockflow_http::ApiError;

/// Problems listed in the answer; the counts cover all of them.
const SHOWN_MAX: usize = 20;

type Sums = [i64; 3];

fn add(into: &mut Sums, n: &stockflow_core::Numbers) {
    into[0] += n.on_hand;
    into[1] += n.reserved;
    into[2] += n.in_transit;
}

/// This member's part: its owned partitions' levels and books.
fn local(app: &KafkaApp) -> Result<Value, ApiError> {
    let (mut levels, mut live_orders) = (0u64, 0u64);
    let mut reserved: Vec<(String, String, i64)> = Vec::new();
    let mut level_holds: Vec<(String, String, i64)> = Vec::new();
    let mut holds: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut sku_sums: BTreeMap<String, Sums> = BTreeMap::new();
    let mut rollup_sums: BTreeMap<String, Sums> = BTreeMap::new();
    for (p, status, _) in app.shared.owned() {
        if status != ACTIVE {
            return Err(restoring(p));
        }
        let p = p as usize;
        let partition = app.shared.partitions[p].read();
        for view in partition.iter() {
            levels += 1;
            if view.level.reserved != 0 {
                reserved.push((
                    view.sku.to_string(),
                    view.location_id.to_string(),
                    view.level.reserved,
                ));
            }
            let held: i64 = view.level.holds().iter().map(|h| h.quantity).sum();
            if held != 0 {
                level_holds.push((view.sku.to_string(), view.location_id.to_string(), held));
            }
            add(
                sku_sums.entry(view.sku.to_string()).or_default(),
                &view.level.numbers(),
            );
        }
        drop(partition);
        let book = app.shared.books[p].read();
        live_orders += book
            .orders
            .values()
            .filter(|o| o.order.status.is_live())
            .count() as u64;
        for (key, held) in book.held() {
            *holds.entry(key).or_default() += held;
        }
        drop(book);
        let rollups = app.shared.rollups[p].read();
        for sku in rollups.skus() {
            let sums = rollup_sums.entry(sku.to_owned()).or_default();
            for (_, numbers) in rollups.levels(sku) {
                add(sums, &numbers);
            }
        }
    }
    Ok(json!({
        "levels": levels,
        "liveOrders": live_orders,
        "reserved": reserved,
        "levelHolds": level_holds,
        "holds": holds.into_iter().map(|((s, l), h)| (s, l, h)).collect::<Vec<_>>(),
        "skuSums": sku_sums,
        "rollupSums": rollup_sums,
    }))
}

/// GET /v1/check?strict=: gathered from every member.
pub(super) async fn check(app: &KafkaApp, strict: bool, read: &Read) -> Result<Value, ApiError> {
    let mine = tokio::task::block_in_place(|| local(app))?;
    if read.local_only {
        return Ok(json!({ "parts": [mine] }));
    }
    let mut parts = vec![mine];
    parts.extend(gather(app, "/v1/check", "parts").await?);
    Ok(verdict(&parts, strict))
}

/// The cluster's invariants from every member's part.
fn verdict(parts: &[Value], strict: bool) -> Value {
    let (mut levels, mut live_orders) = (0u64, 0u64);
    let mut reserved: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut holds: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut level_holds: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut sku_sums: BTreeMap<String, Sums> = BTreeMap::new();
    let mut rollup_sums: BTreeMap<String, Sums> = BTreeMap::new();
    let triple = |v: &Value| -> Option<((String, String), i64)> {
        Some((
            (v[0].as_str()?.to_owned(), v[1].as_str()?.to_owned()),
            v[2].as_i64()?,
        ))
    };
    for part in parts {
        levels += part["levels"].as_u64().unwrap_or(0);
        live_orders += part["liveOrders"].as_u64().unwrap_or(0);
        for (into, key) in [
            (&mut reserved, "reserved"),
            (&mut holds, "holds"),
            (&mut level_holds, "levelHolds"),
        ] {
            for (level, n) in part[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(triple)
            {
                *into.entry(level).or_default() += n;
            }
        }
        for (into, key) in [(&mut sku_sums, "skuSums"), (&mut rollup_sums, "rollupSums")] {
            for (sku, sums) in part[key].as_object().into_iter().flatten() {
                let entry = into.entry(sku.clone()).or_default();
                for (i, v) in sums.as_array().into_iter().flatten().enumerate().take(3) {
                    entry[i] += v.as_i64().unwrap_or(0);
                }
            }
        }
    }
    let mut problems: Vec<String> = Vec::new();
    let mut note = |problem: String| {
        if problems.len() < SHOWN_MAX {
            problems.push(problem);
        }
    };
    let (mut violations, mut unheld, mut mismatches) = (0u64, 0u64, 0u64);
    for ((sku, location), held) in &holds {
        let at = reserved
            .get(&(sku.clone(), location.clone()))
            .copied()
            .unwrap_or(0);
        if at < *held {
            violations += 1;
            note(format!(
                "{sku}@{location}: reserved {at} but live orders hold {held}"
            ));
        }
    }
    // Named the same with and without `strict`, which only decides
    // whether units reserved beyond the holds fail the check.
    for ((sku, location), at) in &reserved {
        let held = holds
            .get(&(sku.clone(), location.clone()))
            .copied()
            .unwrap_or(0);
        if *at > held {
            unheld += 1;
            if strict {
                note(format!(
                    "{sku}@{location}: reserved {at} but live orders hold {held}"
                ));
            }
        }
    }
    let levels_held: std::collections::BTreeSet<&(String, String)> =
        holds.keys().chain(level_holds.keys()).collect();
    for key @ (sku, location) in levels_held {
        let by_homes = holds.get(key).copied().unwrap_or(0);
        let at_level = level_holds.get(key).copied().unwrap_or(0);
        if by_homes != at_level {
            violations += 1;
            note(format!(
                "{sku}@{location}: live orders hold {by_homes} by their homes but {at_level} at the level"
            ));
        }
    }
    let skus: std::collections::BTreeSet<&String> =
        sku_sums.keys().chain(rollup_sums.keys()).collect();
    for sku in skus {
        let of_levels = sku_sums.get(sku).copied().unwrap_or_default();
        let of_rollup = rollup_sums.get(sku).copied().unwrap_or_default();
        if of_levels != of_rollup {
            mismatches += 1;
            note(format!(
                "roll-up of sku {sku} (onHand, reserved, inTransit) {of_rollup:?} differs from its levels' {of_levels:?}"
            ));
        }
    }
    json!({
        "ok": violations == 0 && mismatches == 0 && !(strict && unheld > 0),
        "levels": levels,
        "liveOrders": live_orders,
        "holdViolations": violations,
        "reservationsNotHeldByOrders": unheld,
        "rollupMismatches": mismatches,
        "problems": problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(reserved: Value, holds: Value, skus: Value, rollups: Value) -> Value {
        // The level's owner says orders hold there what their homes say.
        let level_holds = holds.clone();
        json!({"levels": 2, "liveOrders": 1, "reserved": reserved, "holds": holds,
               "levelHolds": level_holds, "skuSums": skus, "rollupSums": rollups})
    }

    #[test]
    fn holds_and_roll_ups_are_judged_across_members() {
        // Member 1 owns A@S (5 reserved: 3 held by the order it homes, 2
        // free); member 2 homes no order there, and has A's roll-up.
        let one = part(
            json!([["A", "S", 5]]),
            json!([["A", "S", 3]]),
            json!({"A": [9, 5, 0]}),
            json!({}),
        );
        let two = part(json!([]), json!([]), json!({}), json!({"A": [9, 5, 0]}));
        let answer = verdict(&[one.clone(), two.clone()], false);
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(answer["levels"], 4);
        assert_eq!(answer["reservationsNotHeldByOrders"], 1);
        // ...the same level under the same name, now failing, when every
        // reservation must be an order's; and without member 2's roll-up,
        // a mismatch.
        let answer = verdict(std::slice::from_ref(&one), true);
        assert_eq!(answer["ok"], false);
        assert_eq!(answer["reservationsNotHeldByOrders"], 1, "{answer}");
        assert_eq!(answer["holdViolations"], 0, "{answer}");
        assert_eq!(
            answer["problems"][0],
            "A@S: reserved 5 but live orders hold 3"
        );
        assert_eq!(answer["rollupMismatches"], 1, "{answer}");
        // Holds beyond what is reserved are always a violation.
        let over = part(
            json!([["A", "S", 1]]),
            json!([["A", "S", 3]]),
            json!({}),
            json!({}),
        );
        let answer = verdict(&[over], false);
        assert_eq!(answer["holdViolations"], 1);
        assert_eq!(
            answer["problems"][0],
            "A@S: reserved 1 but live orders hold 3"
        );
        // A home that still counts units the level gave back (or the
        // reverse) disagrees with the level.
        let mut stale = part(
            json!([["A", "S", 5]]),
            json!([["A", "S", 3]]),
            json!({}),
            json!({}),
        );
        stale["levelHolds"] = json!([["A", "S", 1]]);
        let answer = verdict(&[stale], false);
        assert_eq!(answer["ok"], false);
        assert_eq!(
            answer["problems"][0],
            "A@S: live orders hold 3 by their homes but 1 at the level"
        );
    }
}
