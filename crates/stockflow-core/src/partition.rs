//! One partition of the state: the levels whose (sku, locationId) hash to
//! it, with the indexes queries need. A partition has exactly one writer.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::event::{Batch, EventType};
use crate::level::{Level, Outcome};
use crate::time::Timestamp;

/// An interned name (sku or locationId) within one partition.
type Sym = u32;

/// A level with the names that key it, as queries return it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelView {
    pub sku: Arc<str>,
    pub location_id: Arc<str>,
    pub level: Level,
}

/// The stored form of a partition: its levels with their names. Indexes are
/// rebuilt on load, so they can never disagree with the levels.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    pub levels: Vec<(String, String, Level)>,
}

/// Serialises as a [`PartitionSnapshot`]; see [`Partition::snapshot`].
pub struct PartitionSnapshotRef<'a>(&'a Partition);

impl Serialize for PartitionSnapshotRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Levels<'a>(&'a Partition);
        impl Serialize for Levels<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let p = self.0;
                serializer.collect_seq(p.levels.iter().map(|(sku, location, level)| {
                    (
                        &*p.names[*sku as usize],
                        &*p.names[*location as usize],
                        level,
                    )
                }))
            }
        }
        let mut snapshot = serializer.serialize_struct("PartitionSnapshot", 1)?;
        snapshot.serialize_field("levels", &Levels(self.0))?;
        snapshot.end()
    }
}

/// An event of a batch that changed nothing, with why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    /// Position of the event in its batch.
    pub position: u32,
    pub outcome: Outcome,
}

#[derive(Debug, Default)]
pub struct Partition {
    /// Name ↔ symbol. Names live as long as the partition: levels are never
    /// deleted, so neither are their names.
    symbols: FxHashMap<Arc<str>, Sym>,
    names: Vec<Arc<str>>,
    /// (sku, location) → index into `levels`.
    index: FxHashMap<(Sym, Sym), u32>,
    levels: Vec<(Sym, Sym, Level)>,
    /// sku → its levels here, for per-SKU queries.
    by_sku: FxHashMap<Sym, Vec<u32>>,
    /// location → its levels here ordered by sku, for paginated queries.
    by_location: FxHashMap<Sym, BTreeMap<Arc<str>, u32>>,
}

impl Partition {
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Applies, in order, the parts of `batch` that land in partition `id`
    /// (see [`Batch::compute_routes`]), pushing every event that changed
    /// nothing to `exceptions`.
    pub fn apply_batch(
        &mut self,
        id: u16,
        batch: &Batch,
        now: Timestamp,
        exceptions: &mut Vec<Exception>,
    ) {
        let routes = batch.routes();
        debug_assert_eq!(
            routes.len(),
            batch.len(),
            "routes must be computed before applying"
        );
        for (position, route) in routes.iter().enumerate() {
            if route.source != id && route.destination != Some(id) {
                continue;
            }
            let event = batch.get(position);
            let at = event
                .timestamp
                .expect("the sequencer stamps every event before it is applied");
            if route.source == id {
                let outcome = self.level_mut(event.sku, event.location_id).apply(
                    event.event_type,
                    event.quantity,
                    at,
                    now,
                );
                if matches!(outcome, Outcome::Rejected(_)) {
                    exceptions.push(Exception {
                        position: position as u32,
                        outcome,
                    });
                }
            }
            if let (Some(to), true) = (event.to_location_id, route.destination == Some(id)) {
                debug_assert_eq!(event.event_type, EventType::TransferOut);
                let outcome = self
                    .level_mut(event.sku, to)
                    .apply_in_transit(event.quantity, now);
                if matches!(outcome, Outcome::Rejected(_)) {
                    exceptions.push(Exception {
                        position: position as u32,
                        outcome,
                    });
                }
            }
        }
    }

    /// The level, created empty if never seen.
    pub fn level_mut(&mut self, sku: &str, location: &str) -> &mut Level {
        let sku_sym = self.intern(sku);
        let location_sym = self.intern(location);
        let next = self.levels.len() as u32;
        let slot = *self.index.entry((sku_sym, location_sym)).or_insert(next);
        if slot == next {
            self.levels.push((sku_sym, location_sym, Level::default()));
            self.by_sku.entry(sku_sym).or_default().push(slot);
            let sku_name = self.names[sku_sym as usize].clone();
            self.by_location
                .entry(location_sym)
                .or_default()
                .insert(sku_name, slot);
        }
        &mut self.levels[slot as usize].2
    }

    fn intern(&mut self, name: &str) -> Sym {
        if let Some(sym) = self.symbols.get(name) {
            return *sym;
        }
        let sym = self.names.len() as Sym;
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.symbols.insert(name, sym);
        sym
    }

    fn view(&self, slot: u32) -> LevelView {
        let (sku, location, level) = &self.levels[slot as usize];
        LevelView {
            sku: self.names[*sku as usize].clone(),
            location_id: self.names[*location as usize].clone(),
            level: level.clone(),
        }
    }

    pub fn get(&self, sku: &str, location: &str) -> Option<LevelView> {
        let key = (*self.symbols.get(sku)?, *self.symbols.get(location)?);
        self.index.get(&key).map(|slot| self.view(*slot))
    }

    /// Every level of `sku` in this partition.
    pub fn levels_of_sku(&self, sku: &str) -> Vec<LevelView> {
        let Some(slots) = self.symbols.get(sku).and_then(|s| self.by_sku.get(s)) else {
            return Vec::new();
        };
        slots.iter().map(|slot| self.view(*slot)).collect()
    }

    /// Up to `limit` levels of `location` with sku > `after`, by sku.
    pub fn levels_of_location(
        &self,
        location: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<LevelView> {
        let Some(skus) = self
            .symbols
            .get(location)
            .and_then(|s| self.by_location.get(s))
        else {
            return Vec::new();
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        skus.range::<str, _>((lower, Bound::Unbounded))
            .take(limit)
            .map(|(_, slot)| self.view(*slot))
            .collect()
    }

    /// Every level, in creation order.
    pub fn iter(&self) -> impl Iterator<Item = LevelView> + '_ {
        (0..self.levels.len() as u32).map(|slot| self.view(slot))
    }

    /// The partition in its stored form, serialised straight from the live
    /// structures (no copy of the levels), so a checkpoint's pause is just
    /// the encoding.
    pub fn snapshot(&self) -> PartitionSnapshotRef<'_> {
        PartitionSnapshotRef(self)
    }

    pub fn restore(snapshot: PartitionSnapshot) -> Partition {
        let mut partition = Partition::default();
        for (sku, location, level) in snapshot.levels {
            *partition.level_mut(&sku, &location) = level;
        }
        partition
    }
}
