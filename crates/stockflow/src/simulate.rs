//! Realistic traffic: POS sales and returns at stores, WMS receipts and
//! transfers, e-commerce reservations with fulfilment or release, ERP
//! adjustments and counts, about 1% redelivered duplicates. Also the
//! `controlled` scenario: a fixed set of events with known results.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// Products and places traffic is generated for.
#[derive(Clone, Debug)]
pub struct Catalog {
    pub skus: Vec<String>,
    pub stores: Vec<String>,
    pub warehouses: Vec<String>,
    pub online: String,
}

impl Catalog {
    /// The demo's world: 200 products, 10 stores, 2 warehouses and ONLINE.
    pub fn demo() -> Catalog {
        Catalog::sized(200, 10)
    }

    pub fn sized(products: usize, stores: usize) -> Catalog {
        Catalog {
            skus: (1..=products).map(|i| format!("SKU-{i:05}")).collect(),
            stores: (1..=stores).map(|i| format!("STORE-{i:03}")).collect(),
            warehouses: vec!["WH-EAST".into(), "WH-WEST".into()],
            online: "ONLINE".into(),
        }
    }

    pub fn locations(&self) -> impl Iterator<Item = &String> {
        self.stores
            .iter()
            .chain(&self.warehouses)
            .chain(std::iter::once(&self.online))
    }
}

/// Generates NDJSON lines of a realistic mix.
pub struct Traffic {
    rng: SmallRng,
    catalog: Catalog,
    run: String,
    next: u64,
    /// Recently sent lines, for redelivery (duplicates).
    recent: VecDeque<String>,
    /// Transfers on the road: (sku, destination, quantity).
    transfers: VecDeque<(usize, usize, i64)>,
    /// Open online reservations: (sku, quantity, order).
    holds: VecDeque<(usize, i64, u64)>,
}

impl Traffic {
    pub fn new(catalog: Catalog, seed: u64) -> Traffic {
        Traffic {
            rng: SmallRng::seed_from_u64(seed),
            catalog,
            run: format!("{seed:x}"),
            next: 0,
            recent: VecDeque::new(),
            transfers: VecDeque::new(),
            holds: VecDeque::new(),
        }
    }

    /// Appends one event line (with '\n') to `out`.
    pub fn push_event(&mut self, out: &mut String) {
        if self.rng.random_bool(0.01) && !self.recent.is_empty() {
            let pick = self.rng.random_range(0..self.recent.len());
            out.push_str(&self.recent[pick]);
            return;
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let c = &self.catalog;
        let sku = self.rng.random_range(0..c.skus.len());
        let store = self.rng.random_range(0..c.stores.len());
        let roll = self.rng.random_range(0..100);
        let (kind, location, quantity, source, extra) = match roll {
            0..=54 => (
                "SALE",
                c.stores[store].clone(),
                self.rng.random_range(1..=3),
                "POS",
                String::new(),
            ),
            55..=64 => {
                let wh = &c.warehouses[self.rng.random_range(0..c.warehouses.len())];
                (
                    "RECEIPT",
                    wh.clone(),
                    self.rng.random_range(20..=100),
                    "WMS",
                    String::new(),
                )
            }
            65..=68 => ("RETURN", c.stores[store].clone(), 1, "POS", String::new()),
            69..=70 => {
                let q = if self.rng.random_bool(0.5) {
                    1
                } else {
                    -self.rng.random_range(1..=3)
                };
                (
                    "ADJUSTMENT",
                    c.stores[store].clone(),
                    q,
                    "ERP",
                    String::new(),
                )
            }
            71..=74 => {
                let q = self.rng.random_range(5..=20);
                self.transfers.push_back((sku, store, q));
                let wh = &c.warehouses[self.rng.random_range(0..c.warehouses.len())];
                (
                    "TRANSFER_OUT",
                    wh.clone(),
                    q,
                    "WMS",
                    format!(r#","toLocationId":"{}""#, c.stores[store]),
                )
            }
            75..=78 if !self.transfers.is_empty() => {
                let (sku, store, q) = self.transfers.pop_front().expect("not empty");
                return self.finish(
                    out,
                    &now,
                    "TRANSFER_IN",
                    sku,
                    &c.stores[store].clone(),
                    q,
                    "WMS",
                    "",
                );
            }
            75..=88 => {
                let q = self.rng.random_range(1..=2);
                let order = self.next;
                self.holds.push_back((sku, q, order));
                (
                    "RESERVATION",
                    c.online.clone(),
                    q,
                    "ECOM",
                    format!(r#","correlationId":"order-{}-{order}""#, self.run),
                )
            }
            89..=98 if !self.holds.is_empty() => {
                let (sku, q, order) = self.holds.pop_front().expect("not empty");
                let kind = if roll < 95 { "FULFILLMENT" } else { "RELEASE" };
                let extra = format!(r#","correlationId":"order-{}-{order}""#, self.run);
                let online = c.online.clone();
                return self.finish(out, &now, kind, sku, &online, q, "ECOM", &extra);
            }
            _ => (
                "COUNT",
                c.stores[store].clone(),
                self.rng.random_range(0..=40),
                "ERP",
                String::new(),
            ),
        };
        self.finish(out, &now, kind, sku, &location, quantity, source, &extra);
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        out: &mut String,
        now: &str,
        kind: &str,
        sku: usize,
        location: &str,
        quantity: i64,
        source: &str,
        extra: &str,
    ) {
        self.next += 1;
        let line = format!(
            "{{\"eventId\":\"sim-{}-{}\",\"eventType\":\"{kind}\",\"sku\":\"{}\",\"locationId\":\"{location}\",\"quantity\":{quantity},\"timestamp\":\"{now}\",\"sourceSystem\":\"{source}\"{extra}}}\n",
            self.run, self.next, self.catalog.skus[sku]
        );
        out.push_str(&line);
        if self.recent.len() >= 1000 {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }
}

/// What the server answered, summed.
#[derive(Debug, Default, Deserialize)]
pub struct Totals {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

/// POSTs one NDJSON body and returns the receipt's counts.
pub async fn post_ndjson(
    client: &reqwest::Client,
    url: &str,
    body: String,
) -> anyhow::Result<Totals> {
    let response = client
        .post(format!("{url}/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is `stockflow serve` running?"))?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "{url} answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    Ok(response.json().await?)
}

/// Sends random traffic at `rate` events/s for `duration`, in batches every
/// 100 ms, showing progress unless `quiet`.
pub async fn random(
    url: &str,
    rate: u32,
    duration: Duration,
    seed: u64,
    quiet: bool,
) -> anyhow::Result<Totals> {
    let client = reqwest::Client::new();
    let mut traffic = Traffic::new(Catalog::demo(), seed);
    let tick = Duration::from_millis(100);
    let per_tick = (rate as f64 / 10.0).max(1.0);
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
            .expect("valid template"),
    );
    let mut sums = Totals::default();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut due = 0.0f64;
    let mut interval = tokio::time::interval(tick);
    while started.elapsed() < duration {
        interval.tick().await;
        due += per_tick;
        let n = due.floor() as u64;
        due -= n as f64;
        let mut body = String::new();
        (0..n).for_each(|_| traffic.push_event(&mut body));
        let got = post_ndjson(&client, url, body).await?;
        sums.accepted += got.accepted;
        sums.duplicates += got.duplicates;
        sums.rejected += got.rejected;
        sent += n;
        bar.set_position(sent.min(total));
    }
    bar.finish_and_clear();
    Ok(sums)
}

/// One line of the controlled scenario's expected results.
pub struct Expected {
    pub sku: &'static str,
    pub location: &'static str,
    pub on_hand: i64,
    pub reserved: i64,
    pub in_transit: i64,
}

/// The controlled scenario. Re-running it changes nothing (fixed eventIds).
pub const CONTROLLED_EVENTS: &str = r#"{"eventId":"ctrl-01","eventType":"RECEIPT","sku":"CTRL-A","locationId":"STORE-1","quantity":10,"timestamp":"2024-06-01T09:00:00Z"}
{"eventId":"ctrl-02","eventType":"SALE","sku":"CTRL-A","locationId":"STORE-1","quantity":3,"timestamp":"2024-06-01T09:10:00Z"}
{"eventId":"ctrl-03","eventType":"RETURN","sku":"CTRL-A","locationId":"STORE-1","quantity":1,"timestamp":"2024-06-01T09:20:00Z"}
{"eventId":"ctrl-02","eventType":"SALE","sku":"CTRL-A","locationId":"STORE-1","quantity":3,"timestamp":"2024-06-01T09:10:00Z"}
{"eventId":"ctrl-04","eventType":"RESERVATION","sku":"CTRL-A","locationId":"STORE-1","quantity":5,"timestamp":"2024-06-01T09:30:00Z"}
{"eventId":"ctrl-05","eventType":"RESERVATION","sku":"CTRL-A","locationId":"STORE-1","quantity":4,"timestamp":"2024-06-01T09:31:00Z"}
{"eventId":"ctrl-06","eventType":"FULFILLMENT","sku":"CTRL-A","locationId":"STORE-1","quantity":2,"timestamp":"2024-06-01T09:40:00Z"}
{"eventId":"ctrl-07","eventType":"RECEIPT","sku":"CTRL-A","locationId":"WH-1","quantity":100,"timestamp":"2024-06-01T08:00:00Z"}
{"eventId":"ctrl-08","eventType":"TRANSFER_OUT","sku":"CTRL-A","locationId":"WH-1","toLocationId":"STORE-2","quantity":20,"timestamp":"2024-06-01T08:30:00Z"}
{"eventId":"ctrl-09","eventType":"TRANSFER_IN","sku":"CTRL-A","locationId":"STORE-2","quantity":15,"timestamp":"2024-06-01T11:00:00Z"}
{"eventId":"ctrl-10","eventType":"RECEIPT","sku":"CTRL-B","locationId":"STORE-1","quantity":50,"timestamp":"2024-06-01T10:00:00Z"}
{"eventId":"ctrl-11","eventType":"SALE","sku":"CTRL-B","locationId":"STORE-1","quantity":5,"timestamp":"2024-06-01T10:20:00Z"}
{"eventId":"ctrl-12","eventType":"COUNT","sku":"CTRL-B","locationId":"STORE-1","quantity":40,"timestamp":"2024-06-01T10:10:00Z"}
{"eventId":"ctrl-13","eventType":"SALE","sku":"CTRL-B","locationId":"STORE-1","quantity":2,"timestamp":"2024-06-01T10:05:00Z"}
{"eventId":"ctrl-14","eventType":"SALE","sku":"CTRL-B","locationId":"STORE-1","quantity":1.5,"timestamp":"2024-06-01T10:30:00Z"}
"#;

/// Expected levels after [`CONTROLLED_EVENTS`]: the README explains each.
pub const CONTROLLED_EXPECTED: [Expected; 4] = [
    // 10 − 3 + 1 − 2 (fulfilled); 5 reserved − 2 fulfilled; the second
    // reservation (4 > 10−3+1−5 = 3 free) is rejected; the duplicate sale ignored.
    Expected {
        sku: "CTRL-A",
        location: "STORE-1",
        on_hand: 6,
        reserved: 3,
        in_transit: 0,
    },
    Expected {
        sku: "CTRL-A",
        location: "WH-1",
        on_hand: 80,
        reserved: 0,
        in_transit: 0,
    },
    // 20 sent, 15 arrived.
    Expected {
        sku: "CTRL-A",
        location: "STORE-2",
        on_hand: 15,
        reserved: 0,
        in_transit: 5,
    },
    // Counted 40 at 10:10, minus the 10:20 sale; the 10:05 sale is absorbed
    // by the count; the 1.5 sale is rejected (dead letter).
    Expected {
        sku: "CTRL-B",
        location: "STORE-1",
        on_hand: 35,
        reserved: 0,
        in_transit: 0,
    },
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LevelBody {
    on_hand: i64,
    reserved: i64,
    in_transit: i64,
}

/// Runs the controlled scenario and checks every expected level; returns
/// the mismatches (empty when all is as documented).
pub async fn controlled(url: &str) -> anyhow::Result<(Totals, Vec<String>)> {
    let client = reqwest::Client::new();
    let totals = post_ndjson(&client, url, CONTROLLED_EVENTS.to_owned()).await?;
    let mut mismatches = Vec::new();
    for e in &CONTROLLED_EXPECTED {
        let got: LevelBody = client
            .get(format!("{url}/v1/stock/{}/{}", e.sku, e.location))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let (want, have) = (
            (e.on_hand, e.reserved, e.in_transit),
            (got.on_hand, got.reserved, got.in_transit),
        );
        println!(
            "{:<7} {:<8} expected onHand/reserved/inTransit {want:?}, got {have:?}",
            e.sku, e.location
        );
        if want != have {
            mismatches.push(format!(
                "{} at {}: expected {want:?}, got {have:?}",
                e.sku, e.location
            ));
        }
    }
    Ok((totals, mismatches))
}
