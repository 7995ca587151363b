//! Realistic traffic: POS sales and returns at stores, WMS receipts and
//! transfers, e-commerce reservations with fulfilment or release, ERP
//! adjustments and counts, about 1% redelivered duplicates. Also the
//! `controlled` scenario: a fixed set of events with known results. What
//! `stockflow simulate` sends to a server, and the dashboard's simulator
//! inside one.

use std::collections::VecDeque;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

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
    ///
    /// The flows balance, as in a running business: what stores sell
    /// (55% of events, 1.5 units on average) their transfers bring back
    /// (4%, 20 units), and the web shop's fulfilments (6%, 1.5) its own
    /// receipts (1%, 10). A world that bled would run every level dry and
    /// raise alerts by the second, teaching users to ignore them. A count
    /// finds a level a little off, never a random one.
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
                self.rng.random_range(1..=2),
                "POS",
                String::new(),
            ),
            64 => (
                "RECEIPT",
                c.online.clone(),
                self.rng.random_range(5..=15),
                "WMS",
                String::new(),
            ),
            55..=63 => {
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
                let q = self.rng.random_range(10..=30);
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
            // A cycle count corrects shrinkage: a unit or two off.
            _ => (
                "ADJUSTMENT",
                c.stores[store].clone(),
                -self.rng.random_range(1..=2),
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
