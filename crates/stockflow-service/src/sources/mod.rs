//! Source dialects: each source system's message format, normalised into
//! canonical events before anything else sees them.
//!
//! Every format is a [`Mapping`]; the built-ins are mapping files embedded
//! from `crates/stockflow-service/sources/`, and `--sources DIR` adds a user's own.
//! Translation makes canonical JSON from each source message and runs it
//! through the one canonical validator, so a dialect can never let through
//! an event that POST /v1/events would refuse. Rejections point at the
//! source message (its index and raw text) and name the source field.

mod mapping;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde_json::value::RawValue;
use serde_json::Value;
use stockflow_core::{parse_body, BodyError, BodyFormat, Parsed, Rejected};

/// The format name of the canonical event itself (what `import --format`
/// and a raw topic call events that need no translation).
pub const CANONICAL: &str = "canonical";

pub use mapping::{Input, Mapping};

/// The built-in formats, as mapping files.
const BUILT_IN: [&str; 7] = [
    include_str!("../../sources/store-item.json"),
    include_str!("../../sources/inventory-event.json"),
    include_str!("../../sources/order-line.json"),
    include_str!("../../sources/order-placed.json"),
    include_str!("../../sources/order-cancelled.json"),
    include_str!("../../sources/csv.json"),
    include_str!("../../sources/erp-snapshot.json"),
];

/// Every format the server understands, by name.
#[derive(Clone, Debug)]
pub struct Sources {
    formats: BTreeMap<String, Mapping>,
}

impl Default for Sources {
    fn default() -> Sources {
        let mut formats = BTreeMap::new();
        for text in BUILT_IN {
            let mapping = parse_mapping(text).expect("built-in mappings are valid");
            formats.insert(mapping.format.clone(), mapping);
        }
        Sources { formats }
    }
}

fn parse_mapping(text: &str) -> Result<Mapping, String> {
    let mapping: Mapping = serde_json::from_str(text).map_err(|e| e.to_string())?;
    mapping.validate()?;
    Ok(mapping)
}

impl Sources {
    /// The built-ins plus every `*.json` mapping file in `dir`; a file may
    /// replace a built-in by using its format name.
    pub fn with_dir(dir: &Path) -> anyhow::Result<Sources> {
        let mut sources = Sources::default();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the mapping directory {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mapping =
                parse_mapping(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            tracing::info!(format = mapping.format, file = %path.display(), "loaded source mapping");
            sources.formats.insert(mapping.format.clone(), mapping);
        }
        Ok(sources)
    }

    pub fn get(&self, format: &str) -> Option<&Mapping> {
        self.formats.get(format)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.formats.keys().map(String::as_str)
    }

    pub fn all(&self) -> impl Iterator<Item = &Mapping> {
        self.formats.values()
    }
}

/// One source message: its raw text and, if it could be read, its value.
pub struct Message<'a> {
    pub raw: std::borrow::Cow<'a, str>,
    pub value: Result<Value, String>,
}

/// Translates a body of `mapping`'s format into canonical events.
/// `framing` says how JSON bodies are framed (ignored for CSV); `params`
/// are the request's query parameters. Indexes in the result are source
/// message positions.
pub fn translate(
    mapping: &Mapping,
    body: &[u8],
    framing: BodyFormat,
    params: &BTreeMap<String, String>,
    events_max: usize,
) -> Result<Parsed, BodyError> {
    let messages = match mapping.input {
        Input::Json => json_messages(body, framing)?,
        Input::Csv => csv_messages(body)?,
    };
    let mut canonical = String::with_capacity(body.len() + body.len() / 2);
    // (message, element of `each`) of each canonical line.
    let mut origin: Vec<(u32, u32)> = Vec::new();
    let mut rejected = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let index = index as u32;
        let events = message
            .value
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|value| mapping.apply(value, params));
        match events {
            Ok(events) => {
                for (element, event) in events.into_iter().enumerate() {
                    if origin.len() >= events_max {
                        return Err(BodyError::TooManyEvents { max: events_max });
                    }
                    canonical.push_str(&Value::Object(event).to_string());
                    canonical.push('\n');
                    origin.push((index, element as u32));
                }
            }
            Err(reason) => rejected.push(Rejected {
                index,
                event_id: None,
                reason,
                raw: message.raw.clone().into_owned(),
            }),
        }
    }
    let Parsed {
        mut batch,
        rejected: invalid,
    } = parse_body(canonical.as_bytes(), BodyFormat::Ndjson, usize::MAX)?;
    batch.remap_indexes(|line| origin[line as usize].0);
    for r in invalid {
        let (index, element) = origin[r.index as usize];
        rejected.push(Rejected {
            index,
            event_id: r.event_id,
            reason: in_source_terms(mapping, &r.reason, element),
            raw: messages[index as usize].raw.clone().into_owned(),
        });
    }
    rejected.sort_by_key(|r| r.index);
    Ok(Parsed { batch, rejected })
}

/// "quantity: must be > 0" → "quantityDelta: must be > 0", or
/// "orderItems[1].quantity: ..." for a field of an `each` element.
fn in_source_terms(mapping: &Mapping, reason: &str, element: u32) -> String {
    let Some((field, rest)) = reason.split_once(": ") else {
        return reason.to_owned();
    };
    match (mapping.source_of(field), &mapping.each) {
        (Some(source), Some(each)) if source.starts_with("item.") => {
            format!("{each}[{element}].{}: {rest}", &source["item.".len()..])
        }
        (Some(source), _) => format!("{source}: {rest}"),
        (None, _) => reason.to_owned(),
    }
}

/// The JSON messages of a body (one object, an array, or NDJSON), each with
/// its raw text; a message that is not JSON is an error of its own.
pub fn json_messages(body: &[u8], framing: BodyFormat) -> Result<Vec<Message<'_>>, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| BodyError::Malformed(e.to_string()))?;
    let read =
        |raw: &str| serde_json::from_str::<Value>(raw).map_err(|e| format!("invalid JSON: {e}"));
    match framing {
        BodyFormat::Ndjson => Ok(text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| Message {
                raw: line.into(),
                value: read(line),
            })
            .collect()),
        BodyFormat::Json => match text.trim_start().as_bytes().first() {
            Some(b'[') => {
                let items: Vec<&RawValue> =
                    serde_json::from_str(text).map_err(|e| BodyError::Malformed(e.to_string()))?;
                Ok(items
                    .into_iter()
                    .map(|item| Message {
                        raw: item.get().into(),
                        value: read(item.get()),
                    })
                    .collect())
            }
            Some(b'{') => {
                let value = serde_json::from_str::<Value>(text)
                    .map_err(|e| BodyError::Malformed(e.to_string()))?;
                Ok(vec![Message {
                    raw: text.trim().into(),
                    value: Ok(value),
                }])
            }
            Some(_) => Err(BodyError::WrongShape),
            None => Err(BodyError::Malformed("empty body".into())),
        },
    }
}

/// CSV rows as objects keyed by the (trimmed) header; empty cells are
/// absent. A row that cannot be read is rejected on its own.
fn csv_messages(body: &[u8]) -> Result<Vec<Message<'_>>, BodyError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| BodyError::MalformedCsv(format!("header: {e}")))?
        .iter()
        .map(str::to_owned)
        .collect();
    if headers.iter().all(String::is_empty) {
        return Err(BodyError::MalformedCsv(
            "a header row naming the columns is needed".into(),
        ));
    }
    // Two columns of one name: which one counts would be a guess.
    for (i, name) in headers.iter().enumerate() {
        if !name.is_empty() && headers[..i].contains(name) {
            return Err(BodyError::MalformedCsv(format!(
                "header: column {} appears more than once",
                stockflow_core::parse::quote(name)
            )));
        }
    }
    let mut messages = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let start = reader.position().byte() as usize;
        let read = reader.read_record(&mut record);
        let end = (reader.position().byte() as usize).min(body.len());
        let raw = String::from_utf8_lossy(&body[start..end]);
        let raw = match raw {
            std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(s.trim_end()),
            std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.trim_end().to_owned()),
        };
        match read {
            Ok(false) => break,
            Ok(true) => {
                let mut row = serde_json::Map::new();
                for (name, cell) in headers.iter().zip(record.iter()) {
                    if !cell.is_empty() {
                        row.insert(name.clone(), Value::String(cell.to_owned()));
                    }
                }
                messages.push(Message {
                    raw,
                    value: Ok(Value::Object(row)),
                });
            }
            Err(e) => messages.push(Message {
                raw,
                value: Err(format!("CSV row cannot be read: {e}")),
            }),
        }
    }
    Ok(messages)
}
