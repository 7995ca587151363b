//! What travels through the topics: canonical events as JSON (so any
//! client can read and write them), changelog records as postcard.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stockflow_core::{Batch, EventRef, Numbers, Timestamp};

/// One canonical event as the canonical and repartition topics carry it:
/// the contract's JSON, always with a timestamp (so that processing it
/// again gives the same result).
pub fn canonical_json(event: &EventRef<'_>, timestamp: Timestamp) -> String {
    let mut out = json!({
        "eventId": event.event_id,
        "eventType": event.event_type.as_str(),
        "sku": event.sku,
        "locationId": event.location_id,
        "quantity": event.quantity,
        "timestamp": event.timestamp.unwrap_or(timestamp).to_rfc3339(),
    });
    for (field, value) in [
        ("toLocationId", event.to_location_id),
        ("sourceSystem", event.source_system),
        ("correlationId", event.correlation_id),
    ] {
        if let Some(value) = value {
            out[field] = Value::from(value);
        }
    }
    if let Some(seconds) = event.hold_seconds {
        out["holdSeconds"] = Value::from(seconds);
    }
    out.to_string()
}

/// The header of a canonical (or repartition) record that names who sent
/// the event: a token name. Without it the event is `anonymous`. The
/// topics are trusted: whoever may produce to them may set it.
pub const BY_HEADER: &str = "stockflow-by";

/// The headers that say `by` sent a record; `None` for `anonymous`, which
/// needs none.
pub fn by_headers(by: &str) -> Option<rdkafka::message::OwnedHeaders> {
    (by != stockflow_core::ANONYMOUS && !by.is_empty()).then(|| {
        rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: BY_HEADER,
            value: Some(by),
        })
    })
}

/// Who a record says sent it: its `stockflow-by` header, if it has one
/// that can be a token name.
pub fn sender<H: rdkafka::message::Headers>(headers: Option<&H>) -> Option<&str> {
    headers?
        .iter()
        .find(|h| h.key == BY_HEADER)?
        .value
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| v.len() <= stockflow_core::limits::BY_BYTES_MAX)
}

/// A Kafka timestamp (ms since the epoch) as engine time.
pub fn from_millis(ms: i64) -> Timestamp {
    Timestamp(ms.saturating_mul(1_000_000))
}

/// Where a partition's inputs stand: the next offset to apply of each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    pub canonical: i64,
    pub repartition: i64,
}

/// One processed batch of partition p, in changelog partition p. State is
/// the fold of these records; `positions` is where the input stands after
/// it, so a restoring owner resumes exactly after the last one it applied.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangelogRecord {
    /// Where the input stood before this batch: a record that does not
    /// continue the state's positions was already applied (or is a stale
    /// writer's) and is skipped.
    pub from: Positions,
    pub to: Positions,
    pub now: Timestamp,
    /// Admitted canonical events (duplicates removed, timestamps stamped).
    pub events: Batch,
    /// Admitted in-transit events whose destination is this partition,
    /// and the saga's line events (reserve, release, fulfil) for its levels.
    pub transit: Batch,
    /// Messages to the orders homed here, in the order handled (the
    /// order step runs after the events, then holds due expire).
    pub orders: Vec<stockflow_core::saga::ToHome>,
    /// Level reports for the SKUs and locations homed here (their
    /// roll-ups): the payloads of the repartition records that carried
    /// them, as read.
    pub rollups: Vec<Vec<u8>>,
}

/// The changelog's format: the first byte of every changelog record and
/// snapshot chunk (postcard follows). Bump it whenever either encoding
/// changes, so that a build never misreads another's changelog: it stops
/// the restore and says which format it found.
pub const CHANGELOG_FORMAT: u8 = 4;

/// Why a changelog payload cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("it is in changelog format {0}, this build reads format {CHANGELOG_FORMAT}")]
    Format(u8),
    #[error("it is empty")]
    Empty,
    #[error("{0}")]
    Postcard(#[from] postcard::Error),
}

fn encode_versioned<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![CHANGELOG_FORMAT]).expect("encoding into a Vec cannot fail")
}

fn decode_versioned<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Unreadable> {
    match bytes.split_first() {
        None => Err(Unreadable::Empty),
        Some((&CHANGELOG_FORMAT, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&other, _)) => Err(Unreadable::Format(other)),
    }
}

/// Changelog snapshot chunks are keyed `snapshot:{index}`: the next
/// snapshot reuses the keys, so compaction keeps only the latest.
pub const SNAPSHOT_KEY_PREFIX: &str = "snapshot:";
/// The key of a snapshot's first chunk.
pub const SNAPSHOT_FIRST_KEY: &str = "snapshot:0";

/// One piece of a partition's state written into its changelog (the
/// local snapshot's encoding, cut to fit Kafka's message size). A
/// restoring owner that reads every chunk of one snapshot in a row
/// starts from it instead of folding the records before it, which
/// compaction may have removed (they are tombstoned once covered).
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The input positions of the state: the records after it continue
    /// from here.
    pub positions: Positions,
    pub index: u32,
    pub count: u32,
    pub bytes: Vec<u8>,
}

impl SnapshotChunk {
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotChunk, Unreadable> {
        decode_versioned(bytes)
    }
}

/// The changelog index's record for one partition (key: the partition
/// number): where its latest snapshot starts.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotIndex {
    pub offset: i64,
    pub canonical: i64,
    pub repartition: i64,
}

impl ChangelogRecord {
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<ChangelogRecord, Unreadable> {
        decode_versioned(bytes)
    }
}

/// One level as its owner has it after a change, for the roll-up at its
/// SKU's home (see `stockflow_core::rollup`). Read in place: the names
/// borrow from the record.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelReport<'a> {
    pub sku: &'a str,
    pub location_id: &'a str,
    /// How many changes the owner applied to the level.
    pub version: u64,
    pub numbers: Numbers,
}

/// Appends one level report to a repartition record's payload: reports
/// follow one another in postcard with no count, so an owner can add
/// them as it goes through its changed levels.
pub fn push_report(
    out: &mut Vec<u8>,
    sku: &str,
    location_id: &str,
    version: u64,
    numbers: Numbers,
) {
    let report = LevelReport {
        sku,
        location_id,
        version,
        numbers,
    };
    *out =
        postcard::to_extend(&report, std::mem::take(out)).expect("encoding into a Vec cannot fail");
}

/// The level reports of one repartition record.
pub fn decode_reports(mut bytes: &[u8]) -> Result<Vec<LevelReport<'_>>, postcard::Error> {
    let mut reports = Vec::new();
    while !bytes.is_empty() {
        let (report, rest) = postcard::take_from_bytes::<LevelReport>(bytes)?;
        reports.push(report);
        bytes = rest;
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_pushed_one_by_one_decode_as_written() {
        let numbers = Numbers {
            on_hand: -3,
            reserved: 7,
            in_transit: 1 << 40,
        };
        let mut payload = Vec::new();
        push_report(&mut payload, "SKU-1", "STORE-9", 12, numbers);
        push_report(&mut payload, "SKU-2", "", 0, Numbers::default());
        let reports = decode_reports(&payload).unwrap();
        assert_eq!(
            reports,
            vec![
                LevelReport {
                    sku: "SKU-1",
                    location_id: "STORE-9",
                    version: 12,
                    numbers,
                },
                LevelReport {
                    sku: "SKU-2",
                    location_id: "",
                    version: 0,
                    numbers: Numbers::default(),
                },
            ]
        );
        assert!(decode_reports(&payload[..payload.len() - 1]).is_err());
    }

    #[test]
    fn a_changelog_payload_of_another_format_is_refused_by_name() {
        let chunk = SnapshotChunk {
            positions: Positions {
                canonical: 5,
                repartition: 2,
            },
            index: 1,
            count: 3,
            bytes: vec![1, 2, 3],
        };
        let mut bytes = chunk.encode();
        let read = SnapshotChunk::decode(&bytes).unwrap();
        assert_eq!(
            (read.positions, read.index, read.bytes),
            (chunk.positions, 1, vec![1, 2, 3])
        );
        bytes[0] = CHANGELOG_FORMAT + 1;
        let error = SnapshotChunk::decode(&bytes).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "it is in changelog format {}, this build reads format {CHANGELOG_FORMAT}",
                CHANGELOG_FORMAT + 1
            )
        );
        // Before the format byte, payloads began with an offset as a
        // zigzag varint: an even byte, so never taken for format 1.
        let unversioned = postcard::to_stdvec(&chunk).unwrap();
        assert!(matches!(
            ChangelogRecord::decode(&unversioned),
            Err(Unreadable::Format(n)) if n % 2 == 0
        ));
        assert!(matches!(
            ChangelogRecord::decode(&[]),
            Err(Unreadable::Empty)
        ));
    }
}
