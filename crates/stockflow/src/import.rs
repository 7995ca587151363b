//! `stockflow import`: a file in any source format, into a running server
//! (`--url`) or straight into a stopped server's data directory
//! (`--data-dir`), in batches, with progress and a final summary.
//!
//! Files are read line by line (NDJSON, CSV) so their size is not bounded by
//! memory; a file holding one JSON array is read whole (up to
//! [`JSON_ARRAY_BYTES_MAX`]). CSV fields must not contain line breaks.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::value::RawValue;
use stockflow_core::{parse_body, BodyFormat, Parsed};

use stockflow_embedded::pipeline::Pipeline;
use stockflow_service::config::Config;
use stockflow_service::receipt::Receipt;
use stockflow_service::sources::{translate, Input, Sources};

/// Messages per request or per submitted batch.
pub const BATCH_MESSAGES: usize = 5_000;
/// Batches submitted to the data directory's pipeline before the oldest
/// one's receipt is awaited.
const IN_FLIGHT: usize = 4;
/// A JSON-array file is parsed whole; NDJSON has no such limit.
pub const JSON_ARRAY_BYTES_MAX: u64 = 1 << 30;
/// Attempts per batch when the server answers 429/503.
const OVERLOAD_RETRIES: u32 = 30;
/// Reasons shown in the summary; the rest are in the dead-letter store.
const ERRORS_SHOWN: usize = 10;

/// Where the events go.
pub enum Target {
    Url(String),
    DataDir(PathBuf),
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Summary {
    pub messages: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// (message number in the file, reason), the first few.
    pub errors: Vec<(u64, String)>,
}

impl Summary {
    fn add(&mut self, first_message: u64, receipt: &Receipt) {
        self.accepted += receipt.accepted;
        self.duplicates += receipt.duplicates;
        self.rejected += receipt.rejected;
        for e in &receipt.errors {
            if self.errors.len() < ERRORS_SHOWN {
                self.errors
                    .push((first_message + u64::from(e.index), e.reason.clone()));
            }
        }
    }
}

/// One request's worth of the file, framed as its format expects.
struct Chunk {
    first_message: u64,
    messages: usize,
    body: String,
}

/// `format` is a source format name, or `canonical` for /v1/events.
pub async fn run(
    file: &Path,
    format: &str,
    target: Target,
    params: BTreeMap<String, String>,
    sources: Sources,
) -> anyhow::Result<Summary> {
    let input = match format {
        "canonical" => Input::Json,
        name => match sources.get(name) {
            Some(mapping) => mapping.input,
            None => bail!(
                "unknown format {name:?}; known: canonical, {}",
                sources.names().collect::<Vec<_>>().join(", ")
            ),
        },
    };
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let progress = ProgressBar::new(size);
    progress.set_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg} eta {eta}",
        )
        .expect("valid template"),
    );
    let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel::<(Chunk, u64)>(4);
    let reader_file = file.to_owned();
    let reader = tokio::task::spawn_blocking(move || read_chunks(&reader_file, input, &chunks_tx));
    let started = Instant::now();
    let summary = match target {
        Target::Url(url) => to_server(&url, format, input, &params, chunks_rx, &progress).await?,
        Target::DataDir(dir) => {
            let format = format.to_owned();
            let progress = progress.clone();
            tokio::task::spawn_blocking(move || {
                to_data_dir(dir, &format, &params, sources, chunks_rx, &progress)
            })
            .await??
        }
    };
    reader.await??;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}: {} messages in {seconds:.2} s ({:.0} messages/s): accepted {}, duplicates {}, rejected {}",
        file.display(),
        summary.messages,
        summary.messages as f64 / seconds.max(1e-9),
        summary.accepted,
        summary.duplicates,
        summary.rejected
    );
    for (message, reason) in &summary.errors {
        println!("  message {message}: {reason}");
    }
    if summary.rejected > summary.errors.len() as u64 {
        println!("  (all rejected messages are kept with their reasons at /v1/dead-letters)");
    }
    // Last, for scripts: one line of key=value.
    println!(
        "summary: messages={} accepted={} duplicates={} rejected={} seconds={seconds:.3}",
        summary.messages, summary.accepted, summary.duplicates, summary.rejected
    );
    Ok(summary)
}

/// Splits the file into bodies of at most [`BATCH_MESSAGES`] messages,
/// sending each with the bytes of the file it covered.
fn read_chunks(
    file: &Path,
    input: Input,
    out: &tokio::sync::mpsc::Sender<(Chunk, u64)>,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
    );
    let first = reader
        .fill_buf()?
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .copied();
    if input == Input::Json && first == Some(b'[') {
        return read_json_array(reader, file, out);
    }
    let header = if input == Input::Csv {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        header
    } else {
        String::new()
    };
    let mut consumed = header.len() as u64;
    let mut chunk = Chunk {
        first_message: 0,
        messages: 0,
        body: header.clone(),
    };
    let mut line = String::new();
    let mut messages = 0u64;
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .with_context(|| format!("{} is not UTF-8 text", file.display()))?;
        if read == 0 {
            break;
        }
        consumed += read as u64;
        if line.trim().is_empty() {
            continue;
        }
        chunk.body.push_str(line.trim_end());
        chunk.body.push('\n');
        chunk.messages += 1;
        messages += 1;
        if chunk.messages == BATCH_MESSAGES {
            let next = Chunk {
                first_message: messages,
                messages: 0,
                body: header.clone(),
            };
            let full = std::mem::replace(&mut chunk, next);
            if out
                .blocking_send((full, std::mem::take(&mut consumed)))
                .is_err()
            {
                return Ok(()); // the sender stopped on an error of its own
            }
        }
    }
    if chunk.messages > 0 {
        let _ = out.blocking_send((chunk, consumed));
    }
    Ok(())
}

fn read_json_array(
    mut reader: impl Read,
    file: &Path,
    out: &tokio::sync::mpsc::Sender<(Chunk, u64)>,
) -> anyhow::Result<()> {
    let mut text = String::new();
    reader
        .by_ref()
        .take(JSON_ARRAY_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("{} is not UTF-8 text", file.display()))?;
    if text.len() as u64 > JSON_ARRAY_BYTES_MAX {
        bail!(
            "{} is a JSON array over {JSON_ARRAY_BYTES_MAX} bytes; convert it to NDJSON (one message per line)",
            file.display()
        );
    }
    let items: Vec<&RawValue> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON array", file.display()))?;
    let per_item = text.len() as u64 / items.len().max(1) as u64;
    for (n, group) in items.chunks(BATCH_MESSAGES).enumerate() {
        let mut body = String::new();
        for item in group {
            // Compact one message per line whatever the file's layout.
            let value: serde_json::Value = serde_json::from_str(item.get())?;
            body.push_str(&value.to_string());
            body.push('\n');
        }
        let chunk = Chunk {
            first_message: (n * BATCH_MESSAGES) as u64,
            messages: group.len(),
            body,
        };
        if out
            .blocking_send((chunk, per_item * group.len() as u64))
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct ApiError {
    message: String,
}

async fn to_server(
    url: &str,
    format: &str,
    input: Input,
    params: &BTreeMap<String, String>,
    mut chunks: tokio::sync::mpsc::Receiver<(Chunk, u64)>,
    progress: &ProgressBar,
) -> anyhow::Result<Summary> {
    let url = url.trim_end_matches('/');
    let endpoint = match format {
        "canonical" => format!("{url}/v1/events"),
        name => format!("{url}/v1/sources/{name}/events"),
    };
    // What the chunks are: the format's CSV, or one JSON message a line.
    let media_type = match input {
        Input::Csv => "text/csv",
        Input::Json => "application/x-ndjson",
    };
    let client = reqwest::Client::new();
    let mut summary = Summary::default();
    while let Some((chunk, bytes)) = chunks.recv().await {
        let mut attempt = 0;
        let receipt: Receipt = loop {
            attempt += 1;
            let response = client
                .post(&endpoint)
                .query(params)
                .header("content-type", media_type)
                .body(chunk.body.clone())
                .send()
                .await
                .with_context(|| format!("cannot reach {url}; is `stockflow serve` running?"))?;
            let status = response.status();
            if status.is_success() {
                break response.json().await?;
            }
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let message = response
                .json::<ApiError>()
                .await
                .map_or_else(|_| status.to_string(), |e| e.message);
            match retry_after {
                Some(seconds) if attempt < OVERLOAD_RETRIES => {
                    progress.set_message(format!("server busy, retrying in {seconds} s"));
                    tokio::time::sleep(Duration::from_secs(seconds)).await;
                }
                _ => bail!(
                    "{endpoint} refused messages {}..{}: {status}: {message}",
                    chunk.first_message,
                    chunk.first_message + chunk.messages as u64
                ),
            }
        };
        progress.set_message(String::new());
        summary.messages += chunk.messages as u64;
        summary.add(chunk.first_message, &receipt);
        progress.inc(bytes);
    }
    Ok(summary)
}

fn to_data_dir(
    dir: PathBuf,
    format: &str,
    params: &BTreeMap<String, String>,
    sources: Sources,
    mut chunks: tokio::sync::mpsc::Receiver<(Chunk, u64)>,
    progress: &ProgressBar,
) -> anyhow::Result<Summary> {
    let config = Config {
        sources,
        ..Config::new(dir)
    };
    let recovered = stockflow_embedded::recovery::recover(&config)?;
    let pipeline = Pipeline::start(&config, recovered)?;
    let source = format!("import:{format}");
    let mut summary = Summary::default();
    // Several batches in flight: the next is parsed and sequenced while
    // the last is fsynced and applied, and the log commits them as one
    // group. Receipts are taken in order, each after its batch is
    // durable and applied, as the server answers a request.
    let mut in_flight = std::collections::VecDeque::with_capacity(IN_FLIGHT);
    let settle = |(pending, first, messages, bytes): (
        stockflow_embedded::pipeline::Pending,
        u64,
        usize,
        u64,
    ),
                  summary: &mut Summary| {
        let receipt = pending.blocking_recv()?;
        summary.messages += messages as u64;
        summary.add(first, &receipt);
        progress.inc(bytes);
        Ok::<_, anyhow::Error>(())
    };
    let result = (|| {
        while let Some((chunk, bytes)) = chunks.blocking_recv() {
            let framing = BodyFormat::Ndjson;
            let parsed: Parsed = match config.sources.get(format) {
                Some(mapping) => {
                    translate(mapping, chunk.body.as_bytes(), framing, params, usize::MAX)?
                }
                None => parse_body(chunk.body.as_bytes(), framing, usize::MAX)?,
            };
            let pending = pipeline
                .submit_blocking(parsed, &source)
                .map_err(anyhow::Error::from)?;
            in_flight.push_back((pending, chunk.first_message, chunk.messages, bytes));
            if in_flight.len() >= IN_FLIGHT {
                let oldest = in_flight.pop_front().expect("not empty");
                settle(oldest, &mut summary)?;
            }
        }
        while let Some(oldest) = in_flight.pop_front() {
            settle(oldest, &mut summary)?;
        }
        Ok::<_, anyhow::Error>(())
    })();
    pipeline.shutdown();
    result.map(|()| summary)
}
