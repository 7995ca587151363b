//! `stockflow demo`: a server with a demo world and live traffic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::server::Server;
use crate::simulate::{self, Catalog};

pub async fn run(listen: SocketAddr, data_dir: Option<PathBuf>, rate: u32) -> anyhow::Result<()> {
    // Without --data-dir the demo keeps its data in a temporary directory
    // that is removed on exit.
    let temporary = tempfile::Builder::new()
        .prefix("stockflow-demo-")
        .tempdir()?;
    let dir = data_dir.unwrap_or_else(|| temporary.path().to_owned());
    let server = Server::start(Config::new(dir.clone()), listen).await?;
    let url = server.url();
    seed(&url).await?;
    println!("stockflow demo is running (data in {})", dir.display());
    println!("  stock of one item:    curl {url}/v1/stock/SKU-00001");
    println!("  one level:            curl {url}/v1/stock/SKU-00001/STORE-001");
    println!("  a store, paginated:   curl '{url}/v1/locations/STORE-001/stock?limit=5'");
    println!("  dead letters:         curl {url}/v1/dead-letters");
    println!("  API description:      curl {url}/v1/openapi.json");
    println!("  Prometheus metrics:   curl {url}/metrics");
    println!(
        "A simulator is sending {rate} events/s of POS, WMS and e-commerce traffic. Ctrl-C stops."
    );
    let traffic_url = url.clone();
    let traffic = tokio::spawn(async move {
        simulate::random(
            &traffic_url,
            rate,
            Duration::from_secs(365 * 24 * 3600),
            rand::random(),
            true,
        )
        .await
    });
    crate::shutdown_signal().await;
    traffic.abort();
    server.stop().await?;
    println!("stopped");
    Ok(())
}

/// Initial receipts for every product at every location. Fixed eventIds, so
/// restarting the demo on the same data directory does not receive twice.
async fn seed(url: &str) -> anyhow::Result<()> {
    let catalog = Catalog::demo();
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
