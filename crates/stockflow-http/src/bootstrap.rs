//! `serve --catalog FILE`: products (and their initial stock) from a file
//! at startup.
//!
//! The file is a JSON array (or NDJSON) of products in stockflow's shape or
//! the KartShoppe shape `{productId, name, description, category, brand,
//! price, inventory, …}`. `inventory` becomes a COUNT at the configured
//! location, timestamped at the Unix epoch with a derived eventId: starting
//! again with the same file changes nothing, and a later restart can never
//! reset stock that moved since (a COUNT at the epoch is stale once applied,
//! and every real event is later than it).

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;
use stockflow_core::catalog::parse_product;
use stockflow_core::{parse_body, BodyFormat, CatalogChange, Product};

use crate::asks::CatalogItem;
use crate::asks::Wait;
use crate::backend::Backend;

/// Largest catalog file read at startup.
pub const CATALOG_FILE_BYTES_MAX: u64 = 256 << 20;

/// What a catalog file holds: product upserts and initial-stock events.
pub struct Bootstrap {
    /// Each product, and its JSON in stockflow's shape.
    pub products: Vec<(Product, Value)>,
    /// The initial COUNTs, one canonical JSON event per line.
    pub counts: Vec<String>,
}

/// Reads `file`; `location` is where `inventory` quantities are counted.
pub fn read(file: &Path, location: &str) -> anyhow::Result<Bootstrap> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read the catalog file {}", file.display()))?
        .len();
    if size > CATALOG_FILE_BYTES_MAX {
        bail!(
            "{} is {size} bytes; catalog files are read at startup up to {CATALOG_FILE_BYTES_MAX} bytes, import bigger ones with POST /v1/products",
            file.display()
        );
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the catalog file {}", file.display()))?;
    let items: Vec<Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON array", file.display()))?
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(n, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{} line {}: not JSON", file.display(), n + 1))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut products = Vec::with_capacity(items.len());
    let mut counts = Vec::new();
    for (n, mut item) in items.into_iter().enumerate() {
        let object = item
            .as_object_mut()
            .with_context(|| format!("{} item {n}: not an object", file.display()))?;
        if let Some(id) = object.remove("productId") {
            let id = match id {
                Value::Number(n) => Value::String(n.to_string()),
                other => other,
            };
            object.entry("sku").or_insert(id);
        }
        let inventory = object.remove("inventory");
        // The server writes the file's products itself.
        object.insert("updatedBy".into(), Value::from(stockflow_core::SERVER));
        let product = parse_product(&item, None)
            .map_err(|reason| anyhow::anyhow!("{} item {n}: {reason}", file.display()))?;
        if let Some(quantity) = inventory {
            let count = serde_json::json!({
                "eventId": format!("catalog-initial:{}:{location}", product.sku),
                "eventType": "COUNT",
                "sku": product.sku,
                "locationId": location,
                "quantity": quantity,
                "timestamp": "1970-01-01T00:00:00Z",
                "sourceSystem": "catalog",
            });
            counts.push(count.to_string());
        }
        products.push((product, item));
    }
    Ok(Bootstrap { products, counts })
}

/// Loads `serve --catalog FILE`, if given, before the server listens.
pub async fn load<B: Backend>(backend: &B) -> anyhow::Result<()> {
    let config = backend.config();
    let Some(file) = &config.catalog_file else {
        return Ok(());
    };
    let bootstrap = read(file, &config.catalog_location)?;
    let products = bootstrap.products.len();
    let (changed, counted) = apply(backend, bootstrap).await?;
    tracing::info!(file = %file.display(), products, changed, initial_counts_applied = counted, "catalog file loaded");
    Ok(())
}

/// Where the file's writes say they come from (dead letters, activity).
const SOURCE: &str = "catalog-file";

/// Upserts the products that differ from the catalog and submits the
/// initial counts, through whichever backend serves; returns (products
/// changed, counts accepted).
pub async fn apply<B: Backend>(backend: &B, bootstrap: Bootstrap) -> anyhow::Result<(usize, u64)> {
    let refused = |what: &str, error: crate::ApiError| {
        anyhow::anyhow!("catalog file: {what} refused: {}", error.message)
    };
    let items: Vec<CatalogItem> = {
        let catalog = backend.catalog();
        bootstrap
            .products
            .into_iter()
            .filter(|(p, _)| {
                catalog
                    .products
                    .get(&p.sku)
                    .is_none_or(|old| !same_product(old, p))
            })
            .map(|(product, json)| CatalogItem {
                change: CatalogChange::Product(product),
                json,
            })
            .collect()
    };
    let changed = items.len();
    if !items.is_empty() {
        backend
            .write_catalog(items, Vec::new(), SOURCE)
            .await
            .map_err(|e| refused("products", e))?;
    }
    // In request-sized bodies, as a client would send them.
    let mut accepted = 0;
    let size = backend.config().request_events_max.max(1);
    for (n, lines) in bootstrap.counts.chunks(size).enumerate() {
        let body = lines.join("\n");
        let mut parsed = parse_body(body.as_bytes(), BodyFormat::Ndjson, usize::MAX)?;
        parsed.batch.set_by(stockflow_core::SERVER);
        if let Some(bad) = parsed.rejected.first() {
            bail!(
                "catalog file: initial stock number {}: {}",
                n * size + bad.index as usize + 1,
                bad.reason
            );
        }
        let receipt = backend
            .submit(parsed, SOURCE, Wait::Durable)
            .await
            .map_err(|e| refused("initial stock", e))?;
        accepted += receipt.accepted;
    }
    Ok((changed, accepted))
}

/// Equal apart from when it was last written.
fn same_product(old: &Product, new: &Product) -> bool {
    Product {
        updated_at: old.updated_at,
        updated_by: old.updated_by.clone(),
        price_history: old.price_history.clone(),
        ..new.clone()
    } == *old
}
