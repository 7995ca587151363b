//! Roll-ups by SKU and by location for the Kafka mode: the levels of a
//! SKU (of a location), wherever they are owned, collected at the SKU's
//! (the location's) home partition.
//!
//! The embedded mode keeps a SKU's totals in each partition and adds the
//! partitions up at query time: every partition is in one process. In
//! Kafka mode a SKU's locations are spread over every member, so each
//! level's owner reports the level's numbers, after every change, to the
//! partition that is the SKU's home (through the repartition topic):
//!
//! ```text
//! owner of (sku, A) ─┐
//! owner of (sku, B) ─┼─ LevelReports ─► home(sku): RollupBook ─► totals, by region/type/channel
//! owner of (sku, C) ─┘
//! ```
//!
//! A report carries the level's whole numbers and its version (the count
//! of changes its owner applied), so the book keeps the newest report per
//! level: a repeated or late report changes nothing, and no report has to
//! arrive exactly once. Totals are derived at query time from the newest
//! numbers and the catalog (policies, location groups), so a catalog
//! change moves them without any report.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Location};
use crate::level::Numbers;
use crate::partition::Totals;

/// The partition that keeps a SKU's roll-up: a pure function of the SKU.
pub fn sku_home(sku: &str, partitions: u16) -> u16 {
    crate::route(sku, "", partitions)
}

/// The partition that keeps a location's roll-up.
pub fn location_home(location_id: &str, partitions: u16) -> u16 {
    crate::route("", location_id, partitions)
}

/// The newest report of every level of the SKUs homed in one partition,
/// and of the locations homed there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollupBook {
    skus: FxHashMap<String, FxHashMap<String, (u64, Numbers)>>,
    levels: u64,
    /// location → sku → the newest report.
    locations: FxHashMap<String, FxHashMap<String, (u64, Numbers)>>,
}

/// Keeps `numbers` at `version` under (outer, inner) if newer than what
/// is held; (whether it changed, whether the key is new).
fn keep_newest(
    book: &mut FxHashMap<String, FxHashMap<String, (u64, Numbers)>>,
    outer: &str,
    inner: &str,
    version: u64,
    numbers: Numbers,
) -> (bool, bool) {
    let held = match book.get_mut(outer) {
        Some(held) => held,
        None => book.entry(outer.to_owned()).or_default(),
    };
    match held.get_mut(inner) {
        Some(held) if held.0 >= version => (false, false),
        Some(held) => {
            *held = (version, numbers);
            (true, false)
        }
        None => {
            held.insert(inner.to_owned(), (version, numbers));
            (true, true)
        }
    }
}

impl RollupBook {
    /// Takes a level's report (its numbers at `version`, the count of
    /// changes its owner applied) if it is newer than the one held; true
    /// if it changed the book.
    pub fn apply(&mut self, sku: &str, location_id: &str, version: u64, numbers: Numbers) -> bool {
        let (changed, new) = keep_newest(&mut self.skus, sku, location_id, version, numbers);
        self.levels += u64::from(new);
        changed
    }

    /// The same for a level of a location homed here.
    pub fn apply_location(
        &mut self,
        sku: &str,
        location_id: &str,
        version: u64,
        numbers: Numbers,
    ) -> bool {
        keep_newest(&mut self.locations, location_id, sku, version, numbers).0
    }

    /// The SKUs homed here with a level at `location_id`.
    pub fn skus_at(&self, location_id: &str) -> Vec<String> {
        self.skus
            .iter()
            .filter(|(_, locations)| locations.contains_key(location_id))
            .map(|(sku, _)| sku.clone())
            .collect()
    }

    /// The locations homed here with a level of `sku`.
    pub fn locations_of(&self, sku: &str) -> Vec<String> {
        self.locations
            .iter()
            .filter(|(_, skus)| skus.contains_key(sku))
            .map(|(location, _)| location.clone())
            .collect()
    }

    /// A location's totals over every SKU, under the catalog's rules;
    /// `None` if no level of it was reported here.
    pub fn location_totals(&self, location_id: &str, catalog: &Catalog) -> Option<Totals> {
        let skus = self.locations.get(location_id)?;
        let mut totals = Totals::default();
        for (sku, (_, numbers)) in skus {
            totals.add(&Totals::of(numbers, catalog.policy(sku, location_id)));
        }
        Some(totals)
    }

    /// Levels in the book.
    pub fn len(&self) -> u64 {
        self.levels
    }

    pub fn is_empty(&self) -> bool {
        self.levels == 0
    }

    /// The SKUs in the book.
    pub fn skus(&self) -> impl Iterator<Item = &str> {
        self.skus.keys().map(String::as_str)
    }

    /// Every level of a SKU: (location, numbers).
    pub fn levels<'a>(&'a self, sku: &str) -> impl Iterator<Item = (&'a str, Numbers)> + 'a {
        self.skus
            .get(sku)
            .into_iter()
            .flatten()
            .map(|(location, held)| (location.as_str(), held.1))
    }

    /// The numbers held for one level.
    pub fn get(&self, sku: &str, location_id: &str) -> Option<Numbers> {
        self.skus.get(sku)?.get(location_id).map(|held| held.1)
    }

    /// A SKU's totals over every location, and by location group
    /// (`region:…`, `type:…`, `channel:…`), under the catalog's rules:
    /// the same sums a partition keeps for its own levels.
    pub fn totals(&self, sku: &str, catalog: &Catalog) -> (Totals, BTreeMap<String, Totals>) {
        let mut totals = Totals::default();
        let mut groups: BTreeMap<String, Totals> = BTreeMap::new();
        for (location, (_, numbers)) in self.skus.get(sku).into_iter().flatten() {
            let one = Totals::of(numbers, catalog.policy(sku, location));
            totals.add(&one);
            let groups_of = match catalog.locations.get(location) {
                Some(known) => known.groups(),
                None => Location::unknown(location).groups(),
            };
            for group in groups_of {
                groups.entry(group).or_default().add(&one);
            }
        }
        (totals, groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CatalogChange, LocationType, Product};
    use crate::time::Timestamp;

    /// A report of level (S, `location`).
    fn report(location: &str, version: u64, on_hand: i64, reserved: i64) -> (&str, u64, Numbers) {
        let numbers = Numbers {
            on_hand,
            reserved,
            in_transit: 0,
        };
        (location, version, numbers)
    }

    fn apply(book: &mut RollupBook, (location, version, numbers): &(&str, u64, Numbers)) -> bool {
        book.apply("S", location, *version, *numbers)
    }

    #[test]
    fn the_newest_report_of_a_level_wins_whatever_the_order() {
        let reports = [
            report("A", 1, 5, 0),
            report("A", 3, 9, 2),
            report("B", 1, 4, 0),
            report("A", 2, 7, 0),
        ];
        let mut forward = RollupBook::default();
        for r in &reports {
            apply(&mut forward, r);
        }
        let mut backward = RollupBook::default();
        for r in reports.iter().rev() {
            apply(&mut backward, r);
        }
        // Every report twice, as a crash before a commit would send them.
        let mut twice = RollupBook::default();
        for r in reports.iter().chain(&reports) {
            apply(&mut twice, r);
        }
        assert_eq!(forward, backward);
        assert_eq!(forward, twice);
        assert_eq!(forward.len(), 2);
        assert_eq!(forward.get("S", "A").unwrap().on_hand, 9);
        assert!(
            !apply(&mut forward, &report("A", 3, 100, 0)),
            "same version again"
        );
        assert_eq!(forward.get("S", "A").unwrap().on_hand, 9);
    }

    #[test]
    fn totals_follow_the_catalog_rules_of_each_location() {
        let mut book = RollupBook::default();
        apply(&mut book, &report("A", 1, 10, 4));
        apply(&mut book, &report("B", 1, 3, 0));
        apply(&mut book, &report("C", 1, 0, 0));
        let mut catalog = Catalog::default();
        let now = Timestamp(0);
        catalog.apply(
            &CatalogChange::Product(Product {
                sku: "S".into(),
                name: "S".into(),
                category: String::new(),
                price_minor: None,
                currency: "EUR".into(),
                low_stock_threshold: Some(5),
                safety_stock: Some(1),
                attributes: "{}".into(),
                updated_at: now,
                updated_by: String::new(),
                price_history: Vec::new(),
            }),
            now,
        );
        for (id, region) in [("A", "West"), ("B", "West")] {
            catalog.apply(
                &CatalogChange::Location(Location {
                    kind: LocationType::Store,
                    region: Some(region.into()),
                    ..Location::unknown(id)
                }),
                now,
            );
        }
        let (totals, groups) = book.totals("S", &catalog);
        // available = max(0, onHand − reserved − safety): 5 + 2 + 0.
        assert_eq!(
            (
                totals.on_hand,
                totals.reserved,
                totals.available,
                totals.levels
            ),
            (13, 4, 7, 3)
        );
        assert_eq!((totals.at_zero, totals.below_threshold), (1, 2));
        let west = groups["region:West"];
        assert_eq!((west.on_hand, west.available, west.levels), (13, 7, 2));
        assert_eq!(groups["type:store"].levels, 2);
        assert_eq!(groups["type:unknown"].levels, 1, "C is only seen in events");
        assert!(book.totals("T", &catalog).0.levels == 0);
    }
}
