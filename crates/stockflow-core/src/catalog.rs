//! The product catalog and location master: what a SKU is (name, price,
//! thresholds) and where a location is (type, region, channel).
//!
//! Changes arrive as [`CatalogChange`]s through the same log as events, so
//! they are durable, ordered with the events around them, and replayed
//! identically. Products and locations are upserted whole; a price change
//! is kept in the product's price history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::level::Numbers;
use crate::limits::{ID_CHARS_MAX, PRICE_HISTORY_MAX, TEXT_CHARS_MAX};
use crate::time::Timestamp;

/// Below this available quantity a level counts as low stock, unless the
/// product says otherwise.
pub const LOW_STOCK_THRESHOLD_DEFAULT: i64 = 10;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub category: String,
    /// In minor units (cents): money is never a float here.
    pub price_minor: Option<i64>,
    pub currency: String,
    pub low_stock_threshold: Option<i64>,
    pub safety_stock: Option<i64>,
    /// A JSON object as text: anything else the source said about it.
    pub attributes: String,
    pub updated_at: Timestamp,
    /// The token name that last wrote it (empty: not yet recorded).
    #[serde(default)]
    pub updated_by: String,
    /// (when, price in minor units), oldest first, bounded.
    pub price_history: Vec<(Timestamp, i64)>,
}

impl Product {
    /// What stock rules this product asks for.
    pub fn policy(&self) -> Policy {
        Policy {
            low_stock_threshold: self
                .low_stock_threshold
                .unwrap_or(LOW_STOCK_THRESHOLD_DEFAULT),
            safety_stock: self.safety_stock.unwrap_or(0),
        }
    }
}

/// The per-SKU numbers that shape `available` and low-stock counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub low_stock_threshold: i64,
    /// Units held back: available = max(0, onHand − reserved − safetyStock).
    pub safety_stock: i64,
}

impl Policy {
    /// available = max(0, onHand − reserved − safetyStock).
    pub fn available(&self, level: &Numbers) -> i64 {
        (level.on_hand - level.reserved - self.safety_stock).max(0)
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            low_stock_threshold: LOW_STOCK_THRESHOLD_DEFAULT,
            safety_stock: 0,
        }
    }
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum LocationType {
    Store,
    Warehouse,
    Online,
    Dc,
    #[default]
    Unknown,
}

impl LocationType {
    pub fn as_str(self) -> &'static str {
        match self {
            LocationType::Store => "store",
            LocationType::Warehouse => "warehouse",
            LocationType::Online => "online",
            LocationType::Dc => "dc",
            LocationType::Unknown => "unknown",
        }
    }

    fn from_wire(text: &str) -> Option<LocationType> {
        [
            LocationType::Store,
            LocationType::Warehouse,
            LocationType::Online,
            LocationType::Dc,
            LocationType::Unknown,
        ]
        .into_iter()
        .find(|t| t.as_str() == text)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub location_id: String,
    pub name: String,
    pub kind: LocationType,
    pub region: Option<String>,
    pub channel: Option<String>,
    pub city: Option<String>,
    /// Overrides the products' low-stock threshold for stock held here
    /// (a small store alerts earlier than a warehouse).
    pub low_stock_threshold: Option<i64>,
    pub updated_at: Timestamp,
    /// The token name that last wrote it (empty: not yet recorded).
    #[serde(default)]
    pub updated_by: String,
}

impl Location {
    /// The roll-up groups this location's stock counts in, e.g.
    /// `region:West`, `channel:retail`, `type:store`.
    pub fn groups(&self) -> Vec<String> {
        let mut groups = vec![format!("type:{}", self.kind.as_str())];
        if let Some(region) = &self.region {
            groups.push(format!("region:{region}"));
        }
        if let Some(channel) = &self.channel {
            groups.push(format!("channel:{channel}"));
        }
        groups
    }

    /// A location only seen in events.
    pub fn unknown(location_id: &str) -> Location {
        Location {
            location_id: location_id.to_owned(),
            name: location_id.to_owned(),
            kind: LocationType::Unknown,
            region: None,
            channel: None,
            city: None,
            low_stock_threshold: None,
            updated_at: Timestamp(0),
            updated_by: String::new(),
        }
    }
}

/// One upsert, as the log holds it (with `updated_at` still unset; the
/// server time of its record is stamped when it is applied).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogChange {
    Product(Product),
    Location(Location),
    /// Someone has seen an alert and owns it (see [`crate::marks`]).
    Acknowledge(crate::marks::Acknowledgement),
    /// Alerts of a scope are muted until then (0 minutes: no longer).
    Mute(crate::marks::Mute),
}

/// Products by sku and locations by id.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Catalog {
    pub products: BTreeMap<String, Product>,
    pub locations: BTreeMap<String, Location>,
    /// Acknowledged alerts and mutes.
    pub marks: crate::marks::Marks,
}

/// A product's price moving from one price to another: the history a
/// PRICE_DROP alert is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriceChange {
    pub sku: String,
    /// Server time of the change.
    pub at: Timestamp,
    /// In minor units.
    pub before: i64,
    pub after: i64,
}

impl PriceChange {
    /// A cut of at least `percent` percent: now ≤ before × (1 − percent/100),
    /// in integers.
    pub fn is_drop(&self, percent: u8) -> bool {
        self.before > 0 && self.after * 100 <= self.before * (100 - i64::from(percent))
    }

    /// The cut in tenths of a percent, rounded down.
    pub fn drop_permille(&self) -> i64 {
        if self.before <= 0 {
            return 0;
        }
        (self.before - self.after) * 1000 / self.before
    }
}

impl Product {
    /// The price changes its (bounded) history holds, oldest first.
    pub fn price_changes(&self) -> impl Iterator<Item = PriceChange> + '_ {
        self.price_history.windows(2).map(|pair| PriceChange {
            sku: self.sku.clone(),
            at: pair[1].0,
            before: pair[0].1,
            after: pair[1].1,
        })
    }
}

impl Catalog {
    /// Applies one change at server time `now`. A product's price history
    /// grows when its price changes; the change from a known price is
    /// returned (what a PRICE_DROP alert is raised from, once, where the
    /// change is applied).
    pub fn apply(&mut self, change: &CatalogChange, now: Timestamp) -> Option<PriceChange> {
        match change {
            CatalogChange::Product(product) => {
                let mut product = product.clone();
                product.updated_at = now;
                let mut history = self
                    .products
                    .get(&product.sku)
                    .map(|old| old.price_history.clone())
                    .unwrap_or_default();
                let mut changed = None;
                if let Some(price) = product.price_minor {
                    let last = history.last().map(|(_, last)| *last);
                    if last != Some(price) {
                        changed = last.map(|before| PriceChange {
                            sku: product.sku.clone(),
                            at: now,
                            before,
                            after: price,
                        });
                        history.push((now, price));
                        let excess = history.len().saturating_sub(PRICE_HISTORY_MAX);
                        history.drain(..excess);
                    }
                }
                product.price_history = history;
                self.products.insert(product.sku.clone(), product);
                changed
            }
            CatalogChange::Location(location) => {
                let mut location = location.clone();
                location.updated_at = now;
                self.locations
                    .insert(location.location_id.clone(), location);
                None
            }
            CatalogChange::Acknowledge(acknowledgement) => {
                self.marks.acknowledge(acknowledgement, now);
                None
            }
            CatalogChange::Mute(mute) => {
                self.marks.mute(mute, now);
                None
            }
        }
    }

    /// The stock rules of `sku` at `location`: the product's, with the
    /// location's low-stock threshold, if it sets one, in place of the
    /// product's.
    pub fn policy(&self, sku: &str, location: &str) -> Policy {
        let mut policy = self
            .products
            .get(sku)
            .map(Product::policy)
            .unwrap_or_default();
        if let Some(threshold) = self
            .locations
            .get(location)
            .and_then(|l| l.low_stock_threshold)
        {
            policy.low_stock_threshold = threshold;
        }
        policy
    }
}

/// Reads a product from its JSON form. Unknown top-level fields are kept
/// in `attributes`, never dropped. `sku` from the path wins when given.
pub fn parse_product(value: &Value, sku: Option<&str>) -> Result<Product, String> {
    let object = value.as_object().ok_or("a product must be a JSON object")?;
    let mut attributes = match object.get("attributes") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return Err("attributes: must be an object".into()),
    };
    // updatedAt and updatedBy are the server's to set (a product read
    // back and sent again must not grow attributes of them).
    const KNOWN: [&str; 11] = [
        "sku",
        "updatedAt",
        "updatedBy",
        "name",
        "category",
        "price",
        "currency",
        "lowStockThreshold",
        "safetyStock",
        "attributes",
        "priceHistory",
    ];
    for (key, v) in object {
        if !KNOWN.contains(&key.as_str()) {
            attributes.insert(key.clone(), v.clone());
        }
    }
    let body_sku = optional_text(object, "sku", ID_CHARS_MAX)?;
    let sku = match (sku, body_sku) {
        (Some(path), Some(body)) if path != body => {
            return Err(format!(
                "sku: the body says {} but the path says {}",
                crate::parse::quote(&body),
                crate::parse::quote(path)
            ))
        }
        (Some(path), _) => {
            check_id(path, "sku")?;
            path.to_owned()
        }
        (None, Some(body)) => body,
        (None, None) => return Err("sku: required".into()),
    };
    let currency = optional_text(object, "currency", 3)?.unwrap_or_else(|| "USD".into());
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "currency: {} is not an ISO 4217 code like USD",
            crate::parse::quote(&currency)
        ));
    }
    Ok(Product {
        name: optional_text(object, "name", TEXT_CHARS_MAX)?.ok_or("name: required")?,
        sku,
        category: optional_text(object, "category", ID_CHARS_MAX)?.unwrap_or_default(),
        price_minor: price(object.get("price"))?,
        currency,
        low_stock_threshold: non_negative(object, "lowStockThreshold")?,
        safety_stock: non_negative(object, "safetyStock")?,
        attributes: Value::Object(attributes).to_string(),
        updated_at: Timestamp(0),
        updated_by: updated_by(object)?,
        price_history: Vec::new(),
    })
}

/// Reads a location from its JSON form; the id from the path wins.
pub fn parse_location(value: &Value, id: Option<&str>) -> Result<Location, String> {
    let object = value
        .as_object()
        .ok_or("a location must be a JSON object")?;
    let body_id = optional_text(object, "locationId", ID_CHARS_MAX)?;
    let location_id = match (id, body_id) {
        (Some(path), Some(body)) if path != body => {
            return Err(format!(
                "locationId: the body says {} but the path says {}",
                crate::parse::quote(&body),
                crate::parse::quote(path)
            ))
        }
        (Some(path), _) => {
            check_id(path, "locationId")?;
            path.to_owned()
        }
        (None, Some(body)) => body,
        (None, None) => return Err("locationId: required".into()),
    };
    let kind = match optional_text(object, "type", 16)? {
        None => LocationType::Unknown,
        Some(text) => LocationType::from_wire(&text).ok_or_else(|| {
            format!(
                "type: {} is not one of store, warehouse, online, dc, unknown",
                crate::parse::quote(&text)
            )
        })?,
    };
    Ok(Location {
        name: optional_text(object, "name", TEXT_CHARS_MAX)?.unwrap_or_else(|| location_id.clone()),
        location_id,
        kind,
        region: optional_text(object, "region", ID_CHARS_MAX)?,
        channel: optional_text(object, "channel", ID_CHARS_MAX)?,
        city: optional_text(object, "city", ID_CHARS_MAX)?,
        low_stock_threshold: non_negative(object, "lowStockThreshold")?,
        updated_at: Timestamp(0),
        updated_by: updated_by(object)?,
    })
}

/// A product's sku or a location's id: the rule of every id (an order
/// could not name a product whose sku an event could not carry).
fn check_id(value: &str, name: &str) -> Result<(), String> {
    crate::parse::check_id(value, name)
}

/// `updatedBy`, which the shell sets to the writer's token name before
/// the JSON is parsed (in Kafka mode the catalog topic carries it so).
fn updated_by(object: &Map<String, Value>) -> Result<String, String> {
    Ok(optional_text(object, "updatedBy", crate::limits::BY_BYTES_MAX)?.unwrap_or_default())
}

fn optional_text(
    object: &Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<Option<String>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Err(format!("{name}: must not be empty")),
        Some(Value::String(s)) if s.chars().count() > max => {
            Err(format!("{name}: longer than {max} characters"))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{name}: must be a string")),
    }
}

fn non_negative(object: &Map<String, Value>, name: &str) -> Result<Option<i64>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_number().and_then(crate::parse::whole_number) {
            Some(n) if (0..=crate::limits::QUANTITY_ABS_MAX).contains(&n) => Ok(Some(n)),
            _ => Err(format!(
                "{name}: must be a whole number from 0 to {}",
                crate::limits::QUANTITY_ABS_MAX
            )),
        },
    }
}

/// A price as minor units: 25.15 → 2515. More than two decimals is refused
/// rather than rounded.
fn price(value: Option<&Value>) -> Result<Option<i64>, String> {
    let number = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("price: must be a JSON number".into()),
    };
    let invalid =
        || format!("price: {number} is not a non-negative amount with at most 2 decimals");
    let (whole, fraction) = number.split_once('.').unwrap_or((&number, ""));
    if whole.starts_with('-') || fraction.len() > 2 || number.contains(['e', 'E']) {
        return Err(invalid());
    }
    let whole: i64 = whole.parse().map_err(|_| invalid())?;
    let fraction: i64 = format!("{fraction:0<2}").parse().map_err(|_| invalid())?;
    whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(fraction))
        .filter(|p| *p <= 1_000_000_000_000)
        .map(Some)
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn priced(catalog: &mut Catalog, price: Value, at: i64) -> Option<PriceChange> {
        let product = parse_product(&serde_json::json!({"name": "P", "price": price}), Some("P"))
            .expect("a valid product");
        catalog.apply(&CatalogChange::Product(product), Timestamp(at))
    }

    #[test]
    fn a_price_change_is_reported_once_where_it_is_applied() {
        let mut catalog = Catalog::default();
        assert_eq!(
            priced(&mut catalog, 10.into(), 1),
            None,
            "a first price is no change"
        );
        assert_eq!(
            priced(&mut catalog, 10.0.into(), 2),
            None,
            "the same price is no change"
        );
        let cut = priced(&mut catalog, 8.5.into(), 3).expect("a change");
        assert_eq!((cut.before, cut.after, cut.at), (1000, 850, Timestamp(3)));
        assert!(cut.is_drop(15) && !cut.is_drop(16));
        assert_eq!(cut.drop_permille(), 150);
        let rise = priced(&mut catalog, 9.into(), 4).expect("a change");
        assert!(!rise.is_drop(1));
        let changes: Vec<PriceChange> = catalog.products["P"].price_changes().collect();
        assert_eq!(changes, [cut, rise], "the history holds the same changes");
        assert_eq!(
            priced(&mut catalog, Value::Null, 5),
            None,
            "no price is no change"
        );
    }
}
