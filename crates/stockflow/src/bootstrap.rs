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

use crate::pipeline::Pipeline;

/// Largest catalog file read at startup.
pub const CATALOG_FILE_BYTES_MAX: u64 = 256 << 20;

/// What a catalog file holds: product upserts and initial-stock events.
pub struct Bootstrap {
    pub products: Vec<Product>,
    /// Canonical NDJSON of the initial COUNTs.
    pub counts: String,
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
    let mut counts = String::new();
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
            counts.push_str(&count.to_string());
            counts.push('\n');
        }
        products.push(product);
    }
    Ok(Bootstrap { products, counts })
}

/// Upserts the products that differ from the catalog and submits the
/// initial counts; returns (products changed, counts accepted).
pub async fn apply(pipeline: &Pipeline, bootstrap: Bootstrap) -> anyhow::Result<(usize, u64)> {
    let changes: Vec<CatalogChange> = {
        let catalog = pipeline.shared.catalog.read();
        bootstrap
            .products
            .into_iter()
            .filter(|p| {
                catalog
                    .products
                    .get(&p.sku)
                    .is_none_or(|old| !same_product(old, p))
            })
            .map(CatalogChange::Product)
            .collect()
    };
    let changed = changes.len();
    let source = "catalog-file";
    if !changes.is_empty() {
        pipeline
            .submit_catalog(changes, Vec::new(), source)
            .map_err(|_| anyhow::anyhow!("the engine is overloaded at startup"))?
            .await?;
    }
    let parsed = parse_body(bootstrap.counts.as_bytes(), BodyFormat::Ndjson, usize::MAX)?;
    if let Some(bad) = parsed.rejected.first() {
        bail!(
            "catalog file: initial stock of item {}: {}",
            bad.index,
            bad.reason
        );
    }
    let receipt = pipeline
        .submit_blocking(parsed, source)
        .map_err(anyhow::Error::from)?
        .await?;
    Ok((changed, receipt.accepted))
}

/// Equal apart from when it was last written.
fn same_product(old: &Product, new: &Product) -> bool {
    Product {
        updated_at: old.updated_at,
        price_history: old.price_history.clone(),
        ..new.clone()
    } == *old
}
