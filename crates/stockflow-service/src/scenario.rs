//! Running the controlled scenario ([`CONTROLLED_EVENTS`]) against a
//! server, the one way both of its drivers do: the dashboard's simulator
//! (into its own backend) and `stockflow simulate --scenario controlled`
//! (over HTTP). Each says how to send a body and read a level
//! ([`Target`]); the steps and the waits are here, once.

use std::time::{Duration, Instant};

use crate::receipt::Receipt;
use crate::traffic::{Expected, CONTROLLED_EVENTS, CONTROLLED_EXPECTED};

/// How long the scenario waits for transfers to land, and then for the
/// levels to settle, at the most.
const SETTLE_MAX: Duration = Duration::from_secs(5);

/// A level's (onHand, reserved, inTransit).
pub type Quantities = (i64, i64, i64);

/// Where the scenario runs.
#[allow(async_fn_in_trait)] // used generically, never as a trait object
pub trait Target {
    type Error;
    /// Sends one NDJSON body; answers once its events are applied.
    async fn send_applied(&self, body: String) -> Result<Receipt, Self::Error>;
    /// A level's (onHand, reserved, inTransit) now; `None` if unknown.
    async fn level(&self, sku: &str, location: &str) -> Result<Option<Quantities>, Self::Error>;
}

/// What a run did: the receipt of every event (indexes as in
/// [`CONTROLLED_EVENTS`]) and each expected level next to the actual one.
pub struct Run {
    pub receipt: Receipt,
    pub levels: Vec<(&'static Expected, Option<Quantities>)>,
}

impl Run {
    pub fn passed(&self) -> bool {
        self.levels.iter().all(|(e, actual)| ok(e, *actual))
    }
}

/// Whether `actual` is what `expected` says.
pub fn ok(expected: &Expected, actual: Option<Quantities>) -> bool {
    actual == Some((expected.on_hand, expected.reserved, expected.in_transit))
}

/// Runs the scenario on `target`. In Kafka mode a transfer's in-transit
/// part reaches its destination's owner through the repartition topic, a
/// cycle after the TRANSFER_OUT is applied; a TRANSFER_IN applied before
/// that finds nothing in transit (a direct delivery). So, as in a store,
/// the arrivals go once the departures have landed (in the embedded mode
/// they have as soon as they are applied). Then the levels are read once
/// they settle, or as they are after [`SETTLE_MAX`].
pub async fn run<T: Target>(target: &T) -> Result<Run, T::Error> {
    let arrival = |l: &str| l.contains(r#""eventType":"TRANSFER_IN""#);
    // (index in the whole scenario, line) of each phase.
    type Phase<'a> = Vec<(usize, &'a str)>;
    let (arrivals, rest): (Phase, Phase) = CONTROLLED_EVENTS
        .lines()
        .enumerate()
        .partition(|(_, l)| arrival(l));
    let mut receipt = Receipt::default();
    for (i, phase) in [rest, arrivals].into_iter().enumerate() {
        if i == 1 {
            let landed = CONTROLLED_EXPECTED.iter().filter(|e| e.in_transit > 0);
            let landed: Vec<&Expected> = landed.collect();
            wait_until(target, &landed, |_, level| level.is_some_and(|l| l.2 > 0)).await?;
        }
        let body: String = phase.iter().map(|(_, l)| format!("{l}\n")).collect();
        let part = target.send_applied(body).await?;
        receipt.accepted += part.accepted;
        receipt.duplicates += part.duplicates;
        receipt.rejected += part.rejected;
        receipt.errors.extend(part.errors.into_iter().map(|mut e| {
            e.index = phase[e.index as usize].0 as u32;
            e
        }));
    }
    receipt.errors.sort_by_key(|e| e.index);
    let all: Vec<&Expected> = CONTROLLED_EXPECTED.iter().collect();
    wait_until(target, &all, ok).await?;
    let mut levels = Vec::new();
    for e in &CONTROLLED_EXPECTED {
        levels.push((e, target.level(e.sku, e.location).await?));
    }
    Ok(Run { receipt, levels })
}

/// Waits until `done` holds for every level of `expected`, or
/// [`SETTLE_MAX`] has passed.
async fn wait_until<T: Target>(
    target: &T,
    expected: &[&Expected],
    done: impl Fn(&Expected, Option<Quantities>) -> bool,
) -> Result<(), T::Error> {
    let deadline = Instant::now() + SETTLE_MAX;
    loop {
        let mut all = true;
        for e in expected {
            all &= done(e, target.level(e.sku, e.location).await?);
        }
        if all || Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
