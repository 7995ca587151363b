//! The engine: dedup plus partitions, composed the one way every mode uses.
//!
//! The shell runs the two halves on different threads — [`admit`] on the
//! single sequencer, each partition's [`Step`] on its writer — but in
//! exactly the order [`Engine::apply_record`] does here, so this function
//! is the specification the property tests check and recovery replays.

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogChange, PriceChange};
use crate::dedup::{event_id_hash, Dedup};
use crate::event::Batch;
use crate::level::Outcome;
use crate::limits::{DEDUP_ENTRIES_MAX_DEFAULT, DEDUP_RETENTION_NS_DEFAULT, PARTITIONS_DEFAULT};
use crate::orders::{
    hold_changes, step_due, Answer, OrderBook, OrderCommand, StepEffects, StockOf,
};
use crate::partition::{route, Exception, LevelView, Partition, Totals};
use crate::step::Step;
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    pub partitions: u16,
    pub dedup_retention_ns: i64,
    pub dedup_capacity: usize,
    pub timers: crate::alerts::TimerRules,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            partitions: PARTITIONS_DEFAULT,
            dedup_retention_ns: DEDUP_RETENTION_NS_DEFAULT,
            dedup_capacity: DEDUP_ENTRIES_MAX_DEFAULT,
            timers: crate::alerts::TimerRules::default(),
        }
    }
}

/// The sequencer's half: stamps server time on events without a timestamp
/// and removes duplicates (earlier commits or earlier in this batch).
/// Returns the request indexes of the duplicates removed.
pub fn admit(dedup: &mut Dedup, batch: &mut Batch, now: Timestamp) -> Vec<u32> {
    batch.stamp_missing_timestamps(now);
    let mut duplicate_positions = Vec::new();
    for (position, event) in batch.iter().enumerate() {
        if !dedup.admit(event_id_hash(event.event_id), now) {
            duplicate_positions.push(position);
        }
    }
    if duplicate_positions.is_empty() {
        return Vec::new();
    }
    let indexes = duplicate_positions
        .iter()
        .map(|p| batch.get(*p).index)
        .collect();
    batch.retain_positions(|p| duplicate_positions.binary_search(&p).is_err());
    indexes
}

/// What applying one batch did, by request index.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub duplicates: Vec<u32>,
    /// Accepted events that changed nothing, sorted by index.
    pub exceptions: Vec<(u32, Outcome)>,
}

/// What one log record did (see [`Engine::apply_record`]).
#[derive(Debug, Default)]
pub struct RecordReport {
    /// One per batch, in order.
    pub batches: Vec<BatchReport>,
    /// One per order command, in order (empty when the step did not run).
    pub answers: Vec<Answer>,
    /// The price changes of the record's catalog changes.
    pub prices: Vec<PriceChange>,
}

/// The whole state, single-threaded.
#[derive(Debug)]
pub struct Engine {
    pub config: EngineConfig,
    pub dedup: Dedup,
    pub partitions: Vec<Partition>,
    pub catalog: Catalog,
    pub orders: OrderBook,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            config,
            dedup: Dedup::new(config.dedup_retention_ns, config.dedup_capacity),
            partitions: (0..config.partitions)
                .map(|_| {
                    let mut partition = Partition::default();
                    partition.set_timer_rules(config.timers);
                    partition
                })
                .collect(),
            catalog: Catalog::default(),
            orders: OrderBook::default(),
        }
    }

    /// One [`Step`] per partition, at `now`.
    pub fn begin_steps(&self, now: Timestamp) -> Vec<Step> {
        (0..self.partitions.len())
            .map(|id| Step::begin(id as u16, now))
            .collect()
    }

    /// The catalog changes of a step: to the catalog and every partition;
    /// the price changes they make.
    pub fn step_catalog(
        &mut self,
        steps: &mut [Step],
        changes: &[CatalogChange],
    ) -> Vec<PriceChange> {
        assert_eq!(steps.len(), self.partitions.len(), "one step a partition");
        let mut prices = Vec::new();
        for change in changes {
            prices.extend(self.catalog.apply(change, steps[0].now()));
            for (step, partition) in steps.iter_mut().zip(&mut self.partitions) {
                step.catalog(partition, change);
            }
        }
        prices
    }

    /// Ends every partition's step: time passes.
    pub fn end_steps(&mut self, steps: Vec<Step>) {
        for (step, partition) in steps.into_iter().zip(&mut self.partitions) {
            step.end(partition);
        }
    }

    /// Roll-up of `sku` over every location.
    pub fn sku_totals(&self, sku: &str) -> Totals {
        let mut totals = Totals::default();
        for partition in &self.partitions {
            if let Some(t) = partition.sku_totals(sku) {
                totals.add(&t);
            }
        }
        totals
    }

    /// Admits `batch` (removing duplicates from it) and applies it at
    /// `now`, as a record of its own: one step.
    pub fn apply(&mut self, batch: &mut Batch, now: Timestamp) -> BatchReport {
        self.apply_with_catalog(&[], batch, now)
    }

    /// [`Engine::apply`] for a record that also holds catalog changes,
    /// applied first.
    pub fn apply_with_catalog(
        &mut self,
        catalog: &[CatalogChange],
        batch: &mut Batch,
        now: Timestamp,
    ) -> BatchReport {
        let mut steps = self.begin_steps(now);
        self.step_catalog(&mut steps, catalog);
        let duplicates = admit(&mut self.dedup, batch, now);
        batch.compute_routes(self.config.partitions);
        let mut exceptions: Vec<Exception> = Vec::new();
        let mut changes = Vec::new();
        for (step, partition) in steps.iter_mut().zip(&mut self.partitions) {
            step.batch(partition, batch, &mut exceptions, &mut changes);
            changes.clear();
        }
        self.end_steps(steps);
        exceptions.sort_by_key(|e| e.position);
        BatchReport {
            duplicates,
            exceptions: exceptions
                .into_iter()
                .map(|e| (batch.get(e.position as usize).index, e.outcome))
                .collect(),
        }
    }

    /// Applies one log record the way the embedded pipeline and its replay
    /// do, as one step: its catalog changes; each batch admitted and
    /// applied in order; then, if due, the
    /// order step (take in what the batches' order events did to holds,
    /// expire due holds, decide `commands`, apply the decisions); then
    /// time passes for the alerts. `event_hold_ns` is the hold an order
    /// gets when an event reserves for it.
    pub fn apply_record(
        &mut self,
        catalog: &[CatalogChange],
        batches: &mut [Batch],
        commands: &[OrderCommand],
        now: Timestamp,
        event_hold_ns: i64,
    ) -> RecordReport {
        let partitions = self.config.partitions;
        let mut report = RecordReport::default();
        let mut observed = Vec::new();
        let mut order_events = false;
        let mut steps = self.begin_steps(now);
        report.prices = self.step_catalog(&mut steps, catalog);
        for batch in batches.iter_mut() {
            let duplicates = admit(&mut self.dedup, batch, now);
            batch.compute_routes(partitions);
            order_events |= batch.has_order_events();
            let (mut exceptions, mut changes) = (Vec::new(), Vec::new());
            for (step, partition) in steps.iter_mut().zip(&mut self.partitions) {
                step.batch(partition, batch, &mut exceptions, &mut changes);
            }
            let mut held: Vec<_> = hold_changes(batch, &changes).collect();
            held.sort_by_key(|(position, _)| *position);
            observed.extend(held.into_iter().map(|(_, change)| change));
            exceptions.sort_by_key(|e| e.position);
            report.batches.push(BatchReport {
                duplicates,
                exceptions: exceptions
                    .into_iter()
                    .map(|e| (batch.get(e.position as usize).index, e.outcome))
                    .collect(),
            });
        }
        if step_due(&self.orders, commands, order_events, now) {
            self.orders.observe(&observed, now, event_hold_ns);
            let views: Vec<&Partition> = self.partitions.iter().collect();
            let stock = StockOf {
                partitions: &views,
                catalog: &self.catalog,
            };
            let (events, answers) = self.orders.decide(commands, now, &stock);
            let effects = StepEffects::new(commands, &events, &answers, now, partitions);
            let (mut exceptions, mut changes) = (Vec::new(), Vec::new());
            for (step, partition) in steps.iter_mut().zip(&mut self.partitions) {
                step.orders(partition, &effects, &mut exceptions, &mut changes);
            }
            debug_assert!(
                exceptions.is_empty(),
                "every decision applies: {exceptions:?}"
            );
            report.answers = answers;
        }
        self.end_steps(steps);
        report
    }

    pub fn partition_of(&self, sku: &str, location_id: &str) -> &Partition {
        &self.partitions[route(sku, location_id, self.config.partitions) as usize]
    }

    pub fn get(&self, sku: &str, location_id: &str) -> Option<LevelView> {
        self.partition_of(sku, location_id).get(sku, location_id)
    }

    pub fn levels(&self) -> impl Iterator<Item = LevelView> + '_ {
        self.partitions.iter().flat_map(Partition::iter)
    }
}
