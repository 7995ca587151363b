//! A location's levels page in sku order, whatever order they were
//! created in and however reads and new levels interleave (the index is
//! sorted when read, not when a level is created).

use proptest::prelude::*;
use stockflow_core::{parse_body, BodyFormat, Engine, EngineConfig, Timestamp};

/// Every sku at `L`, a page of `limit` at a time.
fn paged(engine: &Engine, limit: usize) -> Vec<String> {
    let partition = &engine.partitions[0];
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = partition.levels_of_location("L", after.as_deref(), limit, |_, _| true);
        seen.extend(page.iter().map(|v| v.sku.to_string()));
        if page.len() < limit {
            return seen;
        }
        after = seen.last().cloned();
    }
}

proptest! {
    #[test]
    fn pages_are_in_sku_order_across_creations_and_reads(
        rounds in proptest::collection::vec(
            (proptest::collection::vec(0u32..400, 1..40), 1usize..7), 1..8),
    ) {
        let mut engine = Engine::new(EngineConfig { partitions: 1, ..EngineConfig::default() });
        let mut want = std::collections::BTreeSet::new();
        for (n, (skus, limit)) in rounds.iter().enumerate() {
            let body: Vec<String> = skus.iter().enumerate().map(|(i, sku)| format!(
                r#"{{"eventId":"e{n}-{i}","eventType":"RECEIPT","sku":"S{sku}","locationId":"L","quantity":1}}"#
            )).collect();
            let mut parsed = parse_body(body.join("\n").as_bytes(), BodyFormat::Ndjson, 1000).unwrap();
            engine.apply(&mut parsed.batch, Timestamp(n as i64));
            want.extend(skus.iter().map(|sku| format!("S{sku}")));
            let want: Vec<String> = want.iter().cloned().collect();
            prop_assert_eq!(paged(&engine, *limit), want);
        }
        let mut at: Vec<String> = engine.partitions[0].skus_at_location("L").iter().map(|s| s.to_string()).collect();
        at.sort();
        prop_assert_eq!(at, want.into_iter().collect::<Vec<_>>());
    }
}

/// What a catalog change does to a location's levels (alerts numbered as
/// they are cleared) is the same whether or not the location was read
/// before: reads must never shape state.
#[test]
fn a_read_never_changes_what_a_catalog_change_does() {
    use stockflow_core::catalog::parse_location;
    let run = |read_first: bool| {
        let mut engine = Engine::new(EngineConfig {
            partitions: 1,
            ..EngineConfig::default()
        });
        // Created B first, then A: both low (3 < 10).
        let body = ["B", "A", "C"]
            .iter()
            .map(|sku| format!(r#"{{"eventId":"r-{sku}","eventType":"RECEIPT","sku":"{sku}","locationId":"L","quantity":3}}"#))
            .collect::<Vec<_>>()
            .join("\n");
        let mut parsed = parse_body(body.as_bytes(), BodyFormat::Ndjson, 10).unwrap();
        engine.apply(&mut parsed.batch, Timestamp(1));
        if read_first {
            paged(&engine, 2);
        }
        // A threshold of 1 at L clears every LOW_STOCK there, one by one.
        let location =
            parse_location(&serde_json::json!({"lowStockThreshold": 1}), Some("L")).unwrap();
        engine.apply_with_catalog(
            &[stockflow_core::CatalogChange::Location(location)],
            &mut stockflow_core::Batch::default(),
            Timestamp(2),
        );
        let partition = &engine.partitions[0];
        partition
            .alerts
            .recent
            .iter()
            .map(|a| {
                (
                    a.seq,
                    partition.names_of(a.slot).0.to_string(),
                    a.transition,
                )
            })
            .collect::<Vec<_>>()
    };
    let unread = run(false);
    assert_eq!(unread.len(), 6, "three raised, three cleared: {unread:?}");
    assert_eq!(run(true), unread);
}
