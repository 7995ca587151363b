//! `stockflow simulate`: sends [`Traffic`] to a running server over HTTP,
//! at a rate with a progress bar, or the controlled scenario with its
//! expected levels checked.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

use stockflow_service::receipt::Receipt;
use stockflow_service::scenario;
use stockflow_service::traffic::{Catalog, Traffic};

/// What the server answered, summed.
#[derive(Debug, Default, Deserialize)]
pub struct Totals {
    /// Events sent (a redelivery included: it comes back a duplicate).
    #[serde(default)]
    pub sent: u64,
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
    post_events(client, url, "", body).await
}

/// POSTs one NDJSON body to `/v1/events{query}` and reads the receipt as
/// `T`, or says what the server answered.
async fn post_events<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    query: &str,
    body: String,
) -> anyhow::Result<T> {
    let response = client
        .post(format!("{url}/v1/events{query}"))
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
    if rate == 0 {
        return Ok(Totals::default());
    }
    let client = reqwest::Client::new();
    let mut traffic = Traffic::new(Catalog::demo(), seed);
    let tick = Duration::from_millis(100);
    let per_tick = rate as f64 / 10.0;
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events {rate} eta {eta}")
            .expect("valid template")
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                    let _ = write!(out, "{:.0}/s", state.per_sec());
                },
            ),
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
        if n == 0 {
            continue;
        }
        let mut body = String::new();
        (0..n).for_each(|_| traffic.push_event(&mut body));
        // An event may come with another (a redelivery): count lines.
        let lines = body.lines().count() as u64;
        let got = post_ndjson(&client, url, body).await?;
        sums.sent += lines;
        sums.accepted += got.accepted;
        sums.duplicates += got.duplicates;
        sums.rejected += got.rejected;
        sent += lines;
        bar.set_length(total.max(sent));
        bar.set_position(sent);
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

/// The scenario over HTTP: each body with `?wait=applied`, levels read
/// through the public API.
struct Http {
    client: reqwest::Client,
    url: String,
}

impl scenario::Target for Http {
    type Error = anyhow::Error;

    async fn send_applied(&self, body: String) -> anyhow::Result<Receipt> {
        post_events(&self.client, &self.url, "?wait=applied", body).await
    }

    async fn level(&self, sku: &str, location: &str) -> anyhow::Result<Option<(i64, i64, i64)>> {
        let response = self
            .client
            .get(format!("{}/v1/stock/{sku}/{location}", self.url))
            .send()
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let level: LevelBody = response.error_for_status()?.json().await?;
        Ok(Some((level.on_hand, level.reserved, level.in_transit)))
    }
}

/// Runs the controlled scenario ([`scenario::run`]) and checks every
/// expected level; returns the mismatches (empty when all is as
/// documented).
pub async fn controlled(url: &str) -> anyhow::Result<(Totals, Vec<String>)> {
    let target = Http {
        client: reqwest::Client::new(),
        url: url.to_owned(),
    };
    let run = scenario::run(&target).await?;
    let mut mismatches = Vec::new();
    for (e, level) in &run.levels {
        let want = (e.on_hand, e.reserved, e.in_transit);
        let have = level.map_or("no such level".to_owned(), |l| format!("{l:?}"));
        println!(
            "{:<7} {:<8} expected onHand/reserved/inTransit {want:?}, got {have}",
            e.sku, e.location
        );
        if !scenario::ok(e, *level) {
            mismatches.push(format!(
                "{} at {}: expected {want:?}, got {have}",
                e.sku, e.location
            ));
        }
    }
    let totals = Totals {
        sent: run.receipt.accepted + run.receipt.duplicates + run.receipt.rejected,
        accepted: run.receipt.accepted,
        duplicates: run.receipt.duplicates,
        rejected: run.receipt.rejected,
    };
    Ok((totals, mismatches))
}
