//! The store simulator inside the server, driven from the dashboard: start
//! and stop continuous random traffic at a rate, send N random events, run
//! the controlled scenario, and list what was sent.
//!
//! It produces the same traffic as `stockflow simulate` ([`Traffic`]) but
//! hands it to the server's backend directly, as POST /v1/events does
//! (the same seam, so the same code in both modes), labelled with the
//! source `simulator`. Only `stockflow demo` and `stockflow serve --simulator`
//! switch it on: a production server must not invent sales.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use stockflow_core::{parse_body, BodyFormat, Parsed};
use tokio::task::JoinHandle;

use crate::asks::{Quantities, Wait};
use crate::ApiError;
use stockflow_service::clock::wall_clock;
use stockflow_service::receipt::Receipt;
use stockflow_service::scenario;
use stockflow_service::traffic::{Catalog, Traffic};

/// Highest continuous rate (events/s) the dashboard may ask for.
pub const RATE_MAX: u32 = 100_000;
/// Most events one "send N" may ask for.
pub const SEND_MAX: u32 = 100_000;
/// Messages kept for the "sent" list.
pub const RECENT_MAX: usize = 200;
/// Continuous traffic is sent in batches this often.
const TICK: Duration = Duration::from_millis(100);

/// Why the simulator refused a request.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    #[error("the simulator is off on this server; start it with `stockflow serve --simulator` or run `stockflow demo`")]
    Disabled,
    #[error("{0}")]
    Invalid(String),
    #[error("the ingest queue is full; retry shortly")]
    Overloaded,
    #[error("the server is stopping")]
    Stopping,
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where the simulator's events go: the server's own backend, as a trait
/// object (the backend holds the simulator, so the simulator holds it
/// weakly, and cannot name its type).
pub trait Sink: Send + Sync {
    fn submit(&self, parsed: Parsed, wait: Wait) -> BoxFuture<'_, Result<Receipt, ApiError>>;
    fn quantities<'a>(
        &'a self,
        sku: &'a str,
        location: &'a str,
    ) -> BoxFuture<'a, Option<Quantities>>;
}

/// One sent message and what became of it.
struct Sent {
    line: Box<str>,
    outcome: Box<str>,
}

#[derive(Default)]
struct Totals {
    sent: u64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
}

/// Continuous traffic in progress.
struct Running {
    rate: u32,
    task: JoinHandle<()>,
    /// Set to stop after the batch in flight (whose receipt is recorded).
    stop: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    running: Option<Running>,
    /// The rate of traffic told to stop whose batch in flight is not
    /// answered yet: still reported as running, so that "stopped" means
    /// the totals are final.
    stopping: Option<u32>,
    totals: Totals,
    recent: VecDeque<Sent>,
    /// Makes every run's eventIds new.
    runs: u64,
}

/// See the module docs.
pub struct Simulator {
    enabled: bool,
    sink: std::sync::Weak<dyn Sink>,
    events_max: usize,
    inner: Mutex<Inner>,
}

impl Simulator {
    pub fn new(
        enabled: bool,
        sink: std::sync::Weak<dyn Sink>,
        events_max: usize,
    ) -> Arc<Simulator> {
        Arc::new(Simulator {
            enabled,
            sink,
            events_max,
            inner: Mutex::default(),
        })
    }

    fn check_enabled(&self) -> Result<(), SimulatorError> {
        if self.enabled {
            Ok(())
        } else {
            Err(SimulatorError::Disabled)
        }
    }

    fn traffic(&self) -> Traffic {
        let mut inner = self.inner.lock();
        inner.runs += 1;
        // Seeded by time and run, so a restarted server's runs do not
        // reuse the eventIds of an earlier one (they would be duplicates).
        let seed = (wall_clock().0 as u64)
            .wrapping_mul(31)
            .wrapping_add(inner.runs);
        Traffic::new(Catalog::demo(), seed)
    }

    /// Sends one NDJSON body to the backend and records it. Traffic waits
    /// until its events are durable; the scenario (`Wait::Applied`) until
    /// they are applied, as it then reads the levels they made.
    /// `by`: the token name that asked for the traffic, recorded as the
    /// sender of its events.
    async fn send_body(
        &self,
        body: String,
        wait: Wait,
        by: &str,
    ) -> Result<Receipt, SimulatorError> {
        let mut parsed = parse_body(body.as_bytes(), BodyFormat::Ndjson, self.events_max)
            .map_err(|e| SimulatorError::Invalid(e.to_string()))?;
        parsed.batch.set_by(by);
        let sink = self.sink.upgrade().ok_or(SimulatorError::Stopping)?;
        let receipt = sink
            .submit(parsed, wait)
            .await
            .map_err(|e| match e.status.as_u16() {
                _ if e.code == "stopping" => SimulatorError::Stopping,
                429 | 503 | 504 | 507 => SimulatorError::Overloaded,
                _ => SimulatorError::Invalid(e.message),
            })?;
        self.record(&body, &receipt);
        Ok(receipt)
    }

    /// A level's (onHand, reserved, inTransit) as its owner has it now.
    async fn level(&self, sku: &str, location: &str) -> Option<(i64, i64, i64)> {
        let sink = self.sink.upgrade()?;
        let q = sink.quantities(sku, location).await?;
        Some((q.on_hand, q.reserved, q.in_transit))
    }

    fn record(&self, body: &str, receipt: &Receipt) {
        let mut inner = self.inner.lock();
        let totals = &mut inner.totals;
        totals.sent += body.lines().count() as u64;
        totals.accepted += receipt.accepted;
        totals.duplicates += receipt.duplicates;
        totals.rejected += receipt.rejected;
        // Only the tail of a big batch can be listed anyway.
        let lines: Vec<(usize, &str)> = body.lines().enumerate().collect();
        let skip = lines.len().saturating_sub(RECENT_MAX);
        for (index, line) in lines.into_iter().skip(skip) {
            let outcome = receipt
                .errors
                .iter()
                .find(|e| e.index as usize == index)
                .map_or("applied or duplicate", |e| e.reason.as_str());
            inner.recent.push_back(Sent {
                line: line.into(),
                outcome: outcome.into(),
            });
        }
        while inner.recent.len() > RECENT_MAX {
            inner.recent.pop_front();
        }
    }

    /// Sends `count` random events now, in one batch per 10,000, as `by`.
    pub async fn send(&self, count: u32, by: &str) -> Result<Value, SimulatorError> {
        self.check_enabled()?;
        if !(1..=SEND_MAX).contains(&count) {
            return Err(SimulatorError::Invalid(format!(
                "count must be from 1 to {SEND_MAX}"
            )));
        }
        let mut traffic = self.traffic();
        let (mut accepted, mut duplicates, mut rejected) = (0, 0, 0);
        let mut left = count;
        while left > 0 {
            let n = left.min(10_000);
            left -= n;
            let mut body = String::new();
            (0..n).for_each(|_| traffic.push_event(&mut body));
            let receipt = self.send_body(body, Wait::Durable, by).await?;
            accepted += receipt.accepted;
            duplicates += receipt.duplicates;
            rejected += receipt.rejected;
        }
        Ok(
            json!({"sent": count, "accepted": accepted, "duplicates": duplicates, "rejected": rejected}),
        )
    }

    /// Starts continuous random traffic at `rate` events/s (replacing a
    /// running one), sent as `by`.
    pub fn start(self: &Arc<Self>, rate: u32, by: &str) -> Result<(), SimulatorError> {
        self.check_enabled()?;
        if !(1..=RATE_MAX).contains(&rate) {
            return Err(SimulatorError::Invalid(format!(
                "rate must be from 1 to {RATE_MAX} events per second"
            )));
        }
        let mut traffic = self.traffic();
        // Weak: an abandoned simulator stops its traffic when dropped.
        let me = Arc::downgrade(self);
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let by = by.to_owned();
        let task = tokio::spawn(async move {
            let per_tick = f64::from(rate) * TICK.as_secs_f64();
            let mut due = 0.0f64;
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = stopped.changed() => return,
                }
                due += per_tick;
                let n = due.floor() as u32;
                due -= f64::from(n);
                if n == 0 {
                    continue;
                }
                let mut body = String::new();
                (0..n).for_each(|_| traffic.push_event(&mut body));
                let Some(me) = me.upgrade() else { return };
                match me.send_body(body, Wait::Durable, &by).await {
                    Ok(_) => {}
                    // Overload is the engine protecting itself: skip a beat.
                    Err(SimulatorError::Overloaded) => {}
                    Err(error) => {
                        tracing::warn!(%error, "simulator stopped");
                        return;
                    }
                }
            }
        });
        let replaced = self
            .inner
            .lock()
            .running
            .replace(Running { rate, task, stop });
        if let Some(old) = replaced {
            // Its batch in flight still lands and is counted.
            let _ = old.stop.send(true);
        }
        tracing::info!(rate, "simulator started");
        Ok(())
    }

    /// Stops continuous traffic once the batch in flight is answered, so
    /// the totals count everything sent; stopping a stopped simulator is
    /// fine.
    pub async fn stop(&self) -> Result<(), SimulatorError> {
        self.check_enabled()?;
        let running = {
            let mut inner = self.inner.lock();
            let running = inner.running.take();
            if let Some(r) = &running {
                inner.stopping = Some(r.rate);
            }
            running
        };
        if let Some(running) = running {
            // Cleared however this ends (a caller that goes away included).
            struct Stopped<'a>(&'a Simulator);
            impl Drop for Stopped<'_> {
                fn drop(&mut self) {
                    self.0.inner.lock().stopping = None;
                }
            }
            let _stopped = Stopped(self);
            let _ = running.stop.send(true);
            let _ = running.task.await;
            tracing::info!("simulator stopped");
        }
        Ok(())
    }

    /// Runs the controlled scenario ([`scenario::run`]): fixed events with
    /// documented results, and each expected level next to the one the
    /// engine now has.
    pub async fn scenario(&self, by: &str) -> Result<Value, SimulatorError> {
        self.check_enabled()?;
        let run = scenario::run(&Sender(self, by)).await?;
        let passed = run.passed();
        let levels: Vec<Value> = run
            .levels
            .into_iter()
            .map(|(e, level)| {
                let actual = level.map(|(on_hand, reserved, in_transit)| {
                    json!({"onHand": on_hand, "reserved": reserved, "inTransit": in_transit})
                });
                json!({
                    "sku": e.sku,
                    "locationId": e.location,
                    "expected": {"onHand": e.on_hand, "reserved": e.reserved, "inTransit": e.in_transit},
                    "actual": actual,
                    "ok": scenario::ok(e, level),
                })
            })
            .collect();
        Ok(json!({
            "receipt": run.receipt,
            "levels": levels,
            "passed": passed,
        }))
    }

    /// What the dashboard shows: state, totals and the last messages,
    /// newest first.
    pub fn status(&self) -> Value {
        let inner = self.inner.lock();
        let recent: Vec<Value> = inner
            .recent
            .iter()
            .rev()
            .map(|s| {
                let event: Value = serde_json::from_str(&s.line).unwrap_or(Value::Null);
                json!({"event": event, "outcome": &*s.outcome})
            })
            .collect();
        let t = &inner.totals;
        json!({
            "enabled": self.enabled,
            "running": inner.running.is_some() || inner.stopping.is_some(),
            "rate": inner.running.as_ref().map(|r| r.rate).or(inner.stopping),
            "sent": t.sent,
            "accepted": t.accepted,
            "duplicates": t.duplicates,
            "rejected": t.rejected,
            "recent": recent,
        })
    }
}

/// The simulator sending as a token name.
struct Sender<'a>(&'a Simulator, &'a str);

/// The scenario runs into the server's own backend, waiting for each
/// body to be applied.
impl scenario::Target for Sender<'_> {
    type Error = SimulatorError;

    async fn send_applied(&self, body: String) -> Result<Receipt, SimulatorError> {
        self.0.send_body(body, Wait::Applied, self.1).await
    }

    async fn level(
        &self,
        sku: &str,
        location: &str,
    ) -> Result<Option<(i64, i64, i64)>, SimulatorError> {
        Ok(Simulator::level(self.0, sku, location).await)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(running) = self.inner.get_mut().running.take() {
            running.task.abort();
        }
    }
}
