//! `stockflow demo`: a server with a demo world and live traffic.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::server::Server;
use crate::simulate;
use stockflow_service::config::Config;
use stockflow_service::traffic::Catalog;

pub async fn run(listen: SocketAddr, data_dir: Option<PathBuf>, rate: u32) -> anyhow::Result<()> {
    // Without --data-dir the demo keeps its data in a temporary directory
    // that is removed on exit.
    let temporary = tempfile::Builder::new()
        .prefix("stockflow-demo-")
        .tempdir()?;
    let dir = data_dir.unwrap_or_else(|| temporary.path().to_owned());
    let mut config = Config::new(dir.clone());
    config.simulator = true;
    let server = Server::start(config, listen).await?;
    let url = server.url();
    seed(&url).await?;
    println!("stockflow demo is running (data in {})", dir.display());
    println!("  dashboard and storefront: {url}/");
    println!("  stock of one item:    curl {url}/v1/stock/SKU-00001");
    println!("  one level:            curl {url}/v1/stock/SKU-00001/STORE-001");
    println!("  a store, paginated:   curl '{url}/v1/locations/STORE-001/stock?limit=5'");
    println!("  its low stock:        curl '{url}/v1/locations/STORE-001/stock?status=low'");
    println!("  an item by region:    curl {url}/v1/items/SKU-00001");
    println!("  a store's totals:     curl {url}/v1/locations/STORE-001");
    println!("  a level's history:    curl {url}/v1/stock/SKU-00001/STORE-001/history");
    println!("  products:             curl '{url}/v1/products?category=Footwear&limit=5'");
    println!("  source formats:       curl {url}/v1/sources");
    println!("  dead letters:         curl {url}/v1/dead-letters");
    println!("  live changes (SSE):   curl -N '{url}/v1/stream?kinds=stock,alerts'");
    println!("  API description:      curl {url}/v1/openapi.json");
    println!("  Prometheus metrics:   curl {url}/metrics");
    if rate > 0 {
        server.simulator.start(rate, stockflow_core::SERVER)?;
        println!(
            "A simulator is sending {rate} events/s of POS, WMS and e-commerce traffic \
             (stop or change it on the dashboard's Simulator page). Ctrl-C stops."
        );
    }
    crate::shutdown_signal().await;
    server.stop().await?;
    println!("stopped");
    Ok(())
}

/// The location master and product catalog of the demo world, so roll-ups
/// by region and type have something to show.
async fn seed_catalog(
    client: &reqwest::Client,
    url: &str,
    catalog: &Catalog,
) -> anyhow::Result<()> {
    const CITIES: [(&str, &str); 10] = [
        ("Boston", "East"),
        ("New York", "East"),
        ("Philadelphia", "East"),
        ("Atlanta", "East"),
        ("Chicago", "Central"),
        ("Denver", "West"),
        ("Seattle", "West"),
        ("Portland", "West"),
        ("San Francisco", "West"),
        ("Los Angeles", "West"),
    ];
    let mut locations: Vec<serde_json::Value> = catalog
        .stores
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (city, region) = CITIES[i % CITIES.len()];
            serde_json::json!({"locationId": id, "name": format!("{city} store"), "type": "store",
                               "region": region, "channel": "retail", "city": city})
        })
        .collect();
    for (id, region) in [("WH-EAST", "East"), ("WH-WEST", "West")] {
        if catalog.warehouses.iter().any(|w| w == id) {
            locations.push(serde_json::json!({"locationId": id, "name": format!("{region} warehouse"),
                                              "type": "warehouse", "region": region, "channel": "supply"}));
        }
    }
    locations.push(serde_json::json!({"locationId": catalog.online, "name": "Web shop", "type": "online", "channel": "ecommerce"}));
    // Thresholds a planner would set: a few days of sales, fewer units
    // of what costs more.
    const CATEGORIES: [(&str, &str, i64); 5] = [
        ("Footwear", "Trail shoe", 8),
        ("Outerwear", "Rain jacket", 8),
        ("Camping", "Headlamp", 10),
        ("Accessories", "Wool socks", 12),
        ("Electronics", "GPS watch", 4),
    ];
    let products: Vec<serde_json::Value> = catalog
        .skus
        .iter()
        .enumerate()
        .map(|(i, sku)| {
            let (category, name, threshold) = CATEGORIES[i % CATEGORIES.len()];
            serde_json::json!({"sku": sku, "name": format!("{name} {}", i + 1), "category": category,
                               "price": (1999 + (i as i64 * 250) % 18000) as f64 / 100.0,
                               "lowStockThreshold": threshold})
        })
        .collect();
    for (path, items) in [("locations", locations), ("products", products)] {
        let response = client
            .post(format!("{url}/v1/{path}"))
            .json(&items)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "seeding {path}: {}",
            response.status()
        );
    }
    Ok(())
}

/// Initial receipts for every product at every location. Fixed eventIds, so
/// restarting the demo on the same data directory does not receive twice.
async fn seed(url: &str) -> anyhow::Result<()> {
    let catalog = Catalog::demo();
    seed_catalog(&reqwest::Client::new(), url, &catalog).await?;
    let mut body = String::new();
    for (i, sku) in catalog.skus.iter().enumerate() {
        for location in catalog.locations() {
            let quantity = 20 + (i * 7 + location.len() * 13) % 180;
            body.push_str(&format!(
                "{{\"eventId\":\"demo-init-{sku}-{location}\",\"eventType\":\"RECEIPT\",\"sku\":\"{sku}\",\"locationId\":\"{location}\",\"quantity\":{quantity},\"sourceSystem\":\"ERP\"}}\n"
            ));
        }
    }
    let totals = simulate::post_ndjson(&reqwest::Client::new(), url, body).await?;
    println!(
        "seeded {} products at {} locations ({} new receipts)",
        catalog.skus.len(),
        catalog.locations().count(),
        totals.accepted
    );
    Ok(())
}
