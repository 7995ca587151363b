//! `stockflow simulate`: sends [`Traffic`] to a running server over HTTP,
//! at a rate with a progress bar, or the controlled scenario with its
//! expected levels checked.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

use stockflow_service::traffic::{Catalog, Traffic, CONTROLLED_EVENTS, CONTROLLED_EXPECTED};

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
