//! The engine against a reference model that is the contract, written as
//! plainly as possible: state is a fold of events over ordered maps, with
//! the whole history kept. Random sequences include duplicates, invalid
//! events, shuffled timestamps, transfers and counts.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use stockflow_core::alerts::{AlertKind, TimerRules, Transition};
use stockflow_core::catalog::parse_product;
use stockflow_core::{
    event_id_hash, parse_body, Batch, BodyFormat, Catalog, CatalogChange, Dedup, DedupSnapshot,
    Engine, EngineConfig, Location, LocationType, Outcome, Partition, PartitionSnapshot, Rejection,
    Timestamp, Totals,
};

#[derive(Clone, Debug)]
struct Ev {
    id: u8,
    kind: &'static str,
    sku: &'static str,
    location: &'static str,
    to: Option<&'static str>,
    quantity: i64,
    minute: i64,
}

impl Ev {
    fn json(&self) -> String {
        let to = self
            .to
            .map(|t| format!(r#","toLocationId":"{t}""#))
            .unwrap_or_default();
        format!(
            r#"{{"eventId":"e{}","eventType":"{}","sku":"{}","locationId":"{}","quantity":{},"timestamp":"2024-01-01T10:{:02}:00Z"{to}}}"#,
            self.id, self.kind, self.sku, self.location, self.quantity, self.minute
        )
    }

    fn valid(&self) -> bool {
        match self.kind {
            "ADJUSTMENT" => self.quantity != 0,
            "COUNT" => self.quantity >= 0,
            _ => self.quantity > 0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ModelLevel {
    on_hand: i64,
    reserved: i64,
    in_transit: i64,
    count_time: Option<i64>,
    /// Every onHand change applied: (event minute, delta).
    applied: Vec<(i64, i64)>,
}

impl ModelLevel {
    fn change_on_hand(&mut self, delta: i64, t: i64) {
        if self.count_time.is_some_and(|c| t <= c) {
            return;
        }
        self.on_hand += delta;
        self.applied.push((t, delta));
    }
}

#[derive(Default)]
struct Model {
    seen: HashSet<u8>,
    levels: BTreeMap<(String, String), ModelLevel>,
    insufficient: Vec<u8>,
    rejected_invalid: usize,
}

impl Model {
    fn apply(&mut self, e: &Ev) {
        if !e.valid() {
            self.rejected_invalid += 1;
            return;
        }
        if !self.seen.insert(e.id) {
            return;
        }
        let q = e.quantity;
        let l = self
            .levels
            .entry((e.sku.into(), e.location.into()))
            .or_default();
        match e.kind {
            "RECEIPT" | "RETURN" | "ADJUSTMENT" => l.change_on_hand(q, e.minute),
            "SALE" => l.change_on_hand(-q, e.minute),
            "TRANSFER_IN" => {
                l.in_transit -= q.min(l.in_transit);
                l.change_on_hand(q, e.minute);
            }
            "RESERVATION" if q <= l.on_hand - l.reserved => l.reserved += q,
            "RESERVATION" => self.insufficient.push(e.id),
            "RELEASE" => l.reserved -= q.min(l.reserved),
            "FULFILLMENT" => {
                l.reserved -= q.min(l.reserved);
                l.change_on_hand(-q, e.minute);
            }
            "COUNT" if l.count_time.is_some_and(|c| c >= e.minute) => {}
            "COUNT" => {
                l.on_hand = q + l
                    .applied
                    .iter()
                    .filter(|(t, _)| *t > e.minute)
                    .map(|(_, d)| d)
                    .sum::<i64>();
                l.count_time = Some(e.minute);
            }
            "TRANSFER_OUT" => {
                l.change_on_hand(-q, e.minute);
                if let Some(to) = e.to {
                    self.levels
                        .entry((e.sku.into(), to.into()))
                        .or_default()
                        .in_transit += q;
                }
            }
            other => unreachable!("{other}"),
        }
    }
}

fn event() -> impl Strategy<Value = Ev> {
    let kinds = prop::sample::select(vec![
        "RECEIPT",
        "RECEIPT",
        "SALE",
        "RETURN",
        "ADJUSTMENT",
        "COUNT",
        "TRANSFER_OUT",
        "TRANSFER_IN",
        "RESERVATION",
        "RESERVATION",
        "RELEASE",
        "FULFILLMENT",
    ]);
    let locations = ["S1", "S2", "S3", "DC"];
    (
        0u8..60,
        kinds,
        prop::sample::select(vec!["A", "B"]),
        0usize..4,
        prop::option::of(0usize..4),
        -2i64..12,
        0i64..40,
    )
        .prop_map(move |(id, kind, sku, loc, to, quantity, minute)| {
            let to = to
                .filter(|t| kind == "TRANSFER_OUT" && *t != loc)
                .map(|t| locations[t]);
            Ev {
                id,
                kind,
                sku,
                location: locations[loc],
                to,
                quantity,
                minute,
            }
        })
}

/// Encoded dedup, partitions and catalog, and the log length, taken
/// half-way through a run.
type Checkpoint = (Vec<u8>, Vec<Vec<u8>>, Vec<u8>, usize);

/// Every partition's kept alerts and active ones, comparable across
/// engines built the same way.
#[allow(clippy::type_complexity)]
fn alerts(
    engine: &Engine,
) -> Vec<(
    Vec<(AlertKind, Transition, i64, i64, String)>,
    Vec<(AlertKind, u32)>,
)> {
    engine
        .partitions
        .iter()
        .map(|p| {
            let recent = p
                .alerts
                .recent
                .iter()
                .map(|a| {
                    (
                        a.kind,
                        a.transition,
                        a.at.0,
                        a.on_hand,
                        a.event_id.to_string(),
                    )
                })
                .collect();
            let mut active: Vec<_> = p.alerts.active.keys().copied().collect();
            active.sort();
            (recent, active)
        })
        .collect()
}

/// A catalog change the proptest may interleave: a location's type,
/// region and threshold override, or a product's threshold and safety
/// stock.
fn catalog_change() -> impl Strategy<Value = CatalogChange> {
    let location = (
        0usize..4,
        0usize..3,
        prop::option::of(0usize..2),
        prop::option::of(0i64..8),
    )
        .prop_map(|(l, t, r, threshold)| {
            let mut location = Location::unknown(["S1", "S2", "S3", "DC"][l]);
            location.kind = [LocationType::Store, LocationType::Dc, LocationType::Online][t];
            location.region = r.map(|r| ["East", "West"][r].to_owned());
            location.low_stock_threshold = threshold;
            CatalogChange::Location(location)
        });
    let product = (0usize..2, prop::option::of(0i64..8), prop::option::of(0i64..4)).prop_map(
        |(p, threshold, safety)| {
            let value = serde_json::json!({"name": "x", "lowStockThreshold": threshold, "safetyStock": safety});
            CatalogChange::Product(parse_product(&value, Some(["A", "B"][p])).unwrap())
        },
    );
    prop_oneof![location, product]
}

/// Roll-ups must equal plain sums over the levels, with each product's
/// policy and each location's groups as the catalog says now.
fn check_rollups(engine: &Engine) -> Result<(), TestCaseError> {
    let mut by_sku: BTreeMap<String, Totals> = BTreeMap::new();
    let mut by_location: BTreeMap<String, Totals> = BTreeMap::new();
    let mut by_group: BTreeMap<(String, String), Totals> = BTreeMap::new();
    for view in engine.levels() {
        let totals = Totals::of(
            &view.level.numbers(),
            engine.catalog.policy(&view.sku, &view.location_id),
        );
        by_sku.entry(view.sku.to_string()).or_default().add(&totals);
        by_location
            .entry(view.location_id.to_string())
            .or_default()
            .add(&totals);
        let groups = engine
            .catalog
            .locations
            .get(&*view.location_id)
            .map_or_else(|| vec!["type:unknown".to_owned()], Location::groups);
        for group in groups {
            by_group
                .entry((view.sku.to_string(), group))
                .or_default()
                .add(&totals);
        }
    }
    for (sku, expected) in &by_sku {
        prop_assert_eq!(&engine.sku_totals(sku), expected, "sku {}", sku);
        let mut groups: BTreeMap<(String, String), Totals> = BTreeMap::new();
        for partition in &engine.partitions {
            for (group, totals) in partition.group_totals(sku) {
                groups
                    .entry((sku.clone(), group.to_string()))
                    .or_default()
                    .add(&totals);
            }
        }
        groups.retain(|_, t| *t != Totals::default());
        let mut wanted: BTreeMap<_, _> = by_group
            .iter()
            .filter(|((s, _), _)| s == sku)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        wanted.retain(|_, t| *t != Totals::default());
        prop_assert_eq!(groups, wanted, "groups of {}", sku);
    }
    for (location, expected) in &by_location {
        let mut totals = Totals::default();
        for partition in &engine.partitions {
            if let Some(t) = partition.location_totals(location) {
                totals.add(&t);
            }
        }
        prop_assert_eq!(&totals, expected, "location {}", location);
    }
    Ok(())
}

fn state(engine: &Engine) -> BTreeMap<(String, String), (i64, i64, i64)> {
    engine
        .levels()
        .map(|v| {
            (
                (v.sku.to_string(), v.location_id.to_string()),
                (v.level.on_hand, v.level.reserved, v.level.in_transit),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn engine_equals_the_reference_model(events in prop::collection::vec(event(), 1..120), cuts in prop::collection::vec(1usize..20, 1..10), partitions in 1u16..16, changes in prop::collection::vec(prop::option::weighted(0.3, catalog_change()), 1..10)) {
        let mut model = Model::default();
        events.iter().for_each(|e| model.apply(e));

        // Time moves a millisecond per event, so levels go STALE and
        // refusals make bursts within a run.
        let timers = TimerRules { stale_after_ns: 10_000_000, burst_rejections: 2, burst_window_ns: 5_000_000 };
        let config = EngineConfig { partitions, timers, ..EngineConfig::default() };
        let mut engine = Engine::new(config);
        let mut logged: Vec<(Vec<CatalogChange>, Batch, Timestamp)> = Vec::new();
        let mut insufficient = Vec::new();
        let mut rejected = 0;
        let mut rest = &events[..];
        // A checkpoint taken half-way: encoded dedup, partitions, log length.
        let mut checkpoint: Option<Checkpoint> = None;
        let mut changes = changes.iter().cycle();
        let mut now = Timestamp::parse_rfc3339("2024-01-01T12:00:00Z").unwrap();
        for cut in cuts.iter().cycle() {
            if rest.is_empty() { break; }
            let (batch, tail) = rest.split_at((*cut).min(rest.len()));
            rest = tail;
            let body: Vec<String> = batch.iter().map(Ev::json).collect();
            let mut parsed = parse_body(body.join("\n").as_bytes(), BodyFormat::Ndjson, 1000).unwrap();
            rejected += parsed.rejected.len();
            now = now.saturating_add_ns(batch.len() as i64 * 1_000_000);
            let catalog: Vec<CatalogChange> = changes.next().cloned().flatten().into_iter().collect();
            let report = engine.apply_with_catalog(&catalog, &mut parsed.batch, now);
            for (index, outcome) in report.exceptions {
                prop_assert_eq!(outcome, Outcome::Rejected(Rejection::InsufficientStock));
                insufficient.push(batch[index as usize].id);
            }
            // What the log would hold: the admitted batch, through its encoding.
            let bytes = postcard::to_stdvec(&parsed.batch).unwrap();
            logged.push((catalog, postcard::from_bytes(&bytes).unwrap(), now));
            check_rollups(&engine)?;
            if checkpoint.is_none() && rest.len() <= events.len() / 2 {
                let parts = engine.partitions.iter().map(|p| postcard::to_stdvec(&p.snapshot()).unwrap()).collect();
                let catalog = postcard::to_stdvec(&engine.catalog).unwrap();
                checkpoint = Some((engine.dedup.snapshot().encode(), parts, catalog, logged.len()));
            }
        }
        let expected: BTreeMap<_, _> = model.levels.iter().map(|(k, l)| (k.clone(), (l.on_hand, l.reserved, l.in_transit))).collect();
        prop_assert_eq!(&state(&engine), &expected);
        prop_assert_eq!(insufficient, model.insufficient);
        prop_assert_eq!(rejected, model.rejected_invalid);

        // Replaying the log into a fresh engine rebuilds identical state.
        let mut replayed = Engine::new(config);
        for (catalog, batch, at) in &mut logged {
            let report = replayed.apply_with_catalog(catalog, batch, *at);
            prop_assert!(report.duplicates.is_empty(), "the log holds no duplicates");
        }
        prop_assert_eq!(&state(&replayed), &expected);
        prop_assert_eq!(alerts(&replayed), alerts(&engine));
        // STALE is active exactly for levels unchanged for the stale time.
        for (id, partition) in engine.partitions.iter().enumerate() {
            for view in partition.iter() {
                let stale = view.level.version > 0 && view.level.updated_at.saturating_add_ns(timers.stale_after_ns) <= now;
                let raised = partition.alerts.active.values().any(|a| a.kind == AlertKind::Stale && partition.names_of(a.slot) == (&view.sku, &view.location_id));
                prop_assert_eq!(raised, stale, "partition {} level {}/{}", id, view.sku, view.location_id);
            }
        }
        for view in engine.levels() {
            let again = replayed.get(&view.sku, &view.location_id).map(|v| v.level);
            prop_assert_eq!(Some(view.level), again);
        }

        // Restart from the half-way checkpoint plus the log after it
        // rebuilds identical state and remembers every eventId.
        let (dedup, parts, catalog, logged_before) = checkpoint.expect("taken half-way");
        let catalog: Catalog = postcard::from_bytes(&catalog).unwrap();
        let mut restarted = Engine {
            config,
            dedup: Dedup::restore(&DedupSnapshot::decode(&dedup).unwrap(), config.dedup_retention_ns, config.dedup_capacity),
            partitions: parts.iter().map(|b| Partition::restore(postcard::from_bytes::<PartitionSnapshot>(b).unwrap(), &catalog, config.timers)).collect(),
            catalog,
            orders: Default::default(),
        };
        check_rollups(&restarted)?;
        for (catalog, batch, at) in &mut logged[logged_before..] {
            let mut batch = batch.clone();
            let report = restarted.apply_with_catalog(catalog, &mut batch, *at);
            prop_assert!(report.duplicates.is_empty(), "the log tail holds no duplicates");
        }
        for view in engine.levels() {
            let again = restarted.get(&view.sku, &view.location_id).map(|v| v.level);
            prop_assert_eq!(Some(view.level), again);
        }
        prop_assert_eq!(restarted.dedup.len(), engine.dedup.len());
        prop_assert_eq!(alerts(&restarted), alerts(&engine));
        check_rollups(&restarted)?;
        check_rollups(&replayed)?;
        for event in &events {
            if event.valid() {
                let hash = event_id_hash(&format!("e{}", event.id));
                prop_assert!(restarted.dedup.contains(hash), "e{} forgotten", event.id);
            }
        }

        // Sending everything again changes nothing.
        for batch in events.chunks(7) {
            let body: Vec<String> = batch.iter().map(Ev::json).collect();
            let mut parsed = parse_body(body.join("\n").as_bytes(), BodyFormat::Ndjson, 1000).unwrap();
            let valid = parsed.batch.len();
            let report = engine.apply(&mut parsed.batch, now);
            prop_assert_eq!(report.duplicates.len(), valid);
        }
        prop_assert_eq!(&state(&engine), &expected);
    }
}
