//! The one way a partition changes: a [`Step`], its share of one log
//! record (embedded mode) or one processed batch (Kafka mode) at one
//! `now`, in this order:
//!
//! 1. the record's catalog changes ([`Step::catalog`]);
//! 2. its batches, each in order ([`Step::batch`]);
//! 3. the decisions of the order step, if one ran ([`Step::orders`]);
//! 4. time passes ([`Step::end`]): STALE alerts, quiet bursts.
//!
//! Every apply and replay site goes through it — [`Engine`](crate::Engine),
//! the embedded appliers and their replay, Kafka mode's cycle and restore
//! — so live state and rebuilt state cannot come out in different orders.
//! Between 2 and 3 the order book decides, reading every partition: so a
//! step is a value its caller keeps (across a barrier, if it must), and
//! each call is handed the partition. Out of order, or dropped without
//! `end`, is a bug, caught by debug builds (and so by every test).

use crate::catalog::CatalogChange;
use crate::event::Batch;
use crate::orders::StepEffects;
use crate::partition::{Change, Exception, Partition};
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Catalog,
    Batches,
    Orders,
    Ended,
}

/// Partition `id`'s share of one step at `now` (see the module).
#[derive(Debug)]
#[must_use = "a step ends with `Step::end`, where time passes"]
pub struct Step {
    id: u16,
    now: Timestamp,
    phase: Phase,
}

impl Step {
    pub fn begin(id: u16, now: Timestamp) -> Step {
        Step {
            id,
            now,
            phase: Phase::Catalog,
        }
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    fn enter(&mut self, phase: Phase) {
        debug_assert!(
            self.phase <= phase && self.phase != Phase::Ended,
            "partition {}: {phase:?} after {:?} in one step",
            self.id,
            self.phase
        );
        self.phase = phase;
    }

    /// A catalog change of the record: before its events.
    pub fn catalog(&mut self, partition: &mut Partition, change: &CatalogChange) {
        self.enter(Phase::Catalog);
        partition.apply_catalog(change, self.now);
    }

    /// Applies the parts of routed `batch` that land in this partition,
    /// pushing every event that changed nothing to `exceptions` and what
    /// each part did to `changes` (see [`Batch::compute_routes`]).
    pub fn batch(
        &mut self,
        partition: &mut Partition,
        batch: &Batch,
        exceptions: &mut Vec<Exception>,
        changes: &mut Vec<Change>,
    ) {
        self.enter(Phase::Batches);
        partition.apply_batch(self.id, batch, self.now, exceptions, changes);
    }

    /// The order step's decisions: this partition's share of them, then
    /// its refusals. Every decision applies; one that does not lands in
    /// `exceptions`, and that is a bug.
    pub fn orders(
        &mut self,
        partition: &mut Partition,
        effects: &StepEffects,
        exceptions: &mut Vec<Exception>,
        changes: &mut Vec<Change>,
    ) {
        self.enter(Phase::Orders);
        effects.apply_to(self.id, partition, self.now, exceptions, changes);
    }

    /// Time passes to `now`: the step is done.
    pub fn end(mut self, partition: &mut Partition) {
        self.enter(Phase::Ended);
        partition.tick(self.now);
    }

    /// Gives up on a step whose record an error cut short: the caller
    /// drops the state it was building (a failed start), so no time
    /// passes and nothing else may follow.
    pub fn abandon(mut self) {
        self.phase = Phase::Ended;
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        debug_assert!(
            self.phase == Phase::Ended || std::thread::panicking(),
            "partition {}: a step at {:?} was dropped without `end`, so its time never passed",
            self.id,
            self.now
        );
    }
}
