//! Fuzzing by mutation (issue 19): every decoder of bytes from outside —
//! the canonical body, each source format, a log segment and the record in
//! it, a checkpoint — is fed seeds a user could send, mutated at random
//! (bytes flipped, inserted, deleted, repeated, cut off, tokens spliced in),
//! and must answer with a value or an error: never a panic, never an event
//! outside the contract, never a reason that echoes a whole bad value.
//! Case counts keep each target to seconds in CI, and the seed is fixed so
//! that the suite is repeatable; `PROPTEST_RNG_SEED=<n>` and
//! `PROPTEST_CASES=<n>` explore further (20,000 cases of each ran clean).

use std::collections::BTreeMap;

use proptest::prelude::*;
use stockflow_core::{limits, parse_body, BodyFormat, Parsed};

/// Tokens that break parsers: structure, escapes, numbers at the edges,
/// encodings.
const TOKENS: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\n",
    "\r\n",
    "\\",
    "\\u0000",
    "\\ud800",
    "\u{202e}",
    "\u{0}",
    "-0",
    "1e309",
    "-1.5",
    "18446744073709551616",
    "-9223372036854775808",
    "9223372036854775807",
    "null",
    "true",
    "\"\"",
    "\"eventId\":",
    "\"quantity\":",
    "\u{feff}",
    "\u{ff}",
    ";",
    ",,",
    "\"a\"\"b\"",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Repeat(usize, usize),
    Truncate(usize),
    Splice(usize, &'static str),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, x)| Mutation::Flip(at, x)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Mutation::Repeat(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::sample::select(TOKENS)).prop_map(|(at, t)| Mutation::Splice(at, t)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..6)
}

fn apply(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for m in mutations {
        let at = |i: usize| {
            if bytes.is_empty() {
                0
            } else {
                i % (bytes.len() + 1)
            }
        };
        match m {
            Mutation::Flip(i, x) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] ^= x;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(i, more) => {
                let i = at(*i);
                bytes.splice(i..i, more.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = at(*i);
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Mutation::Repeat(i, n) => {
                let i = at(*i);
                let end = (i + n).min(bytes.len());
                let part = bytes[i..end].to_vec();
                bytes.splice(end..end, part);
            }
            Mutation::Truncate(i) => {
                let i = at(*i);
                bytes.truncate(i);
            }
            Mutation::Splice(i, token) => {
                let i = at(*i);
                bytes.splice(i..i, token.bytes());
            }
        }
    }
    bytes
}

/// What every parse result must hold, whatever the input.
fn within_the_contract(parsed: &Parsed, events_max: usize) {
    assert!(parsed.total() <= events_max, "{} events", parsed.total());
    for i in 0..parsed.batch.len() {
        let event = parsed.batch.get(i);
        for id in [event.event_id, event.sku, event.location_id] {
            let chars = id.chars().count();
            assert!((1..=limits::ID_CHARS_MAX).contains(&chars), "id {id:?}");
            assert!(!id.chars().any(char::is_control), "id {id:?}");
            assert!(!id.trim().is_empty(), "id {id:?}");
        }
        assert!(
            event.quantity.abs() <= limits::QUANTITY_ABS_MAX,
            "{}",
            event.quantity
        );
    }
    for rejected in &parsed.rejected {
        assert!(
            rejected.reason.len() < 1024,
            "a reason of {} bytes",
            rejected.reason.len()
        );
    }
}

const EVENTS_MAX: usize = 1000;

/// `cases` cases from a fixed seed, unless the environment asks otherwise.
fn config(cases: u32) -> ProptestConfig {
    let chosen = ProptestConfig::default();
    let seeded = std::env::var_os("PROPTEST_RNG_SEED").is_some();
    let counted = std::env::var_os("PROPTEST_CASES").is_some();
    ProptestConfig {
        cases: if counted { chosen.cases } else { cases },
        rng_seed: if seeded {
            chosen.rng_seed
        } else {
            proptest::test_runner::RngSeed::Fixed(19)
        },
        failure_persistence: None,
        ..chosen
    }
}

fn canonical_seeds() -> Vec<(BodyFormat, String)> {
    let one = r#"{"eventId":"e-1","eventType":"RECEIPT","sku":"SKU-1","locationId":"S1","quantity":5,"timestamp":"2026-11-01T10:00:00Z","sourceSystem":"WMS"}"#;
    let two = r#"{"eventId":"e-2","eventType":"RESERVATION","sku":"SKU-1","locationId":"S1","quantity":2,"correlationId":"o-1","holdSeconds":60}"#;
    let three = r#"{"eventId":"e-3","eventType":"TRANSFER_OUT","sku":"SKU-1","locationId":"S1","toLocationId":"S2","quantity":1}"#;
    vec![
        (BodyFormat::Json, format!("[{one},{two},{three}]")),
        (BodyFormat::Json, one.to_owned()),
        (BodyFormat::Ndjson, format!("{one}\n{two}\n\n{three}\n")),
    ]
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn the_canonical_parser_answers_every_mutation_within_the_contract(
        seed in 0usize..3,
        changes in mutations(),
    ) {
        let (format, text) = &canonical_seeds()[seed];
        let body = apply(text.as_bytes(), &changes);
        if let Ok(parsed) = parse_body(&body, *format, EVENTS_MAX) {
            within_the_contract(&parsed, EVENTS_MAX);
        }
    }

    #[test]
    fn every_source_format_answers_every_mutation_within_the_contract(
        seed in 0usize..SOURCE_SEEDS.len(),
        changes in mutations(),
    ) {
        let (format, framing, text) = SOURCE_SEEDS[seed];
        let sources = stockflow_service::sources::Sources::default();
        let mapping = sources.get(format).expect("a built-in format");
        let body = apply(text.as_bytes(), &changes);
        let params = BTreeMap::from([("locationId".to_owned(), "STORE-7".to_owned())]);
        for params in [BTreeMap::new(), params] {
            if let Ok(parsed) = stockflow_service::sources::translate(mapping, &body, framing, &params, EVENTS_MAX) {
                within_the_contract(&parsed, EVENTS_MAX);
            }
        }
    }
}

/// A message a real source sends, per built-in format.
const SOURCE_SEEDS: &[(&str, BodyFormat, &str)] = &[
    ("inventory-event", BodyFormat::Json, r#"[{"eventId":"i-1","eventType":"SALE","sku":"A","locationId":"S1","quantityDelta":-2,"timestamp":"2026-11-01T10:00:00Z"}]"#),
    ("order-line", BodyFormat::Ndjson, "{\"orderId\":\"o-1\",\"productId\":\"P-1\",\"quantity\":2,\"timestamp\":\"2026-11-01T10:00:00Z\"}\n{\"orderId\":\"o-2\",\"productId\":\"P-2\",\"quantity\":4}"),
    ("order-placed", BodyFormat::Json, r#"{"id":"ord-9","orderDate":"2026-11-01T13:00:00Z","orderItems":[{"skuCode":"P-1","quantity":3,"price":9.5},{"skuCode":"P-2","quantity":5}]}"#),
    ("order-cancelled", BodyFormat::Json, r#"{"id":"ord-9","orderDate":"2026-11-01T13:00:00Z","orderItems":[{"skuCode":"P-1","quantity":3}]}"#),
    ("store-item", BodyFormat::Json, r#"[{"id":0,"storeName":"Store_1","sku":"Item_1","type":"RESTOCK","quantity":10,"price":25.15,"timestamp":"2020-10-13T16:48:35.455027"},{"id":1,"storeName":"Store_1","sku":"Item_3","type":"SALE","quantity":1,"price":12.5,"timestamp":"2020-10-13T16:48:35.655412"}]"#),
    ("csv", BodyFormat::Json, "sku,locationId,eventType,quantity,eventId\nQ,S1,ADJUSTMENT,5,q-4\nR,S2,RECEIPT,7,q-5\n"),
    ("erp-snapshot", BodyFormat::Json, "sku,locationId,quantity,asOf\nSKU-00001,STORE-001,42,2026-11-01\nSKU-00002,STORE-001,0,2026-11-01\n"),
];

/// A data directory a real server wrote: events of every kind, a refused
/// body, an order, a product, then a clean stop (so a checkpoint too).
fn written() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let server = crate::start(dir.path(), |_| {}).await;
            let url = server.url();
            for (_, body) in canonical_seeds() {
                crate::post(&url, "application/x-ndjson", body.replace("},{", "}\n{")).await;
            }
            crate::post(&url, "application/json", "[{\"eventId\":").await;
            crate::post_json(&url, "/v1/products", serde_json::json!({"sku": "SKU-1", "name": "One"})).await;
            let order = serde_json::json!({"orderId": "o-9", "lines": [{"sku": "SKU-1", "locationId": "S1", "quantity": 1}]});
            crate::post_json(&url, "/v1/orders", order).await;
            server.stop().await.unwrap();
        });
        dir
    })
    .path()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else if path.file_name().is_some_and(|n| n != "LOCK") {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Every event of a decoded record, read as replay reads it.
fn read_all(group: &stockflow_embedded::record::CommitGroup) {
    for batch in &group.batches {
        for i in 0..batch.len() {
            let event = batch.get(i);
            let _ = (
                event.event_id.len(),
                event.sku.len(),
                event.location_id.len(),
            );
        }
    }
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn a_mutated_log_segment_opens_or_is_refused_and_its_records_decode_or_are_refused(
        changes in mutations(),
    ) {
        let log = stockflow_embedded::recovery::log_dir(written());
        let (_, segment) = stockflow_log::segments(&log).unwrap().pop().unwrap();
        let bytes = apply(&std::fs::read(&segment).unwrap(), &changes);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(segment.file_name().unwrap()), bytes).unwrap();
        let _ = stockflow_log::find_damage(dir.path());
        if stockflow_log::LogWriter::open(dir.path(), 1 << 30).is_ok() {
            for record in stockflow_log::read_records(dir.path(), 0).unwrap() {
                let Ok((_, payload)) = record else { break };
                if let Ok(group) = stockflow_embedded::record::CommitGroup::decode(&payload) {
                    read_all(&group);
                }
            }
        }
    }

    #[test]
    fn a_mutated_log_record_decodes_or_is_refused(
        record in any::<prop::sample::Index>(),
        changes in mutations(),
    ) {
        let log = stockflow_embedded::recovery::log_dir(written());
        let records: Vec<Vec<u8>> = stockflow_log::read_records(&log, 0)
            .unwrap()
            .map(|r| r.unwrap().1)
            .collect();
        let chosen: &Vec<u8> = record.get(&records);
        let payload = apply(chosen, &changes);
        if let Ok(group) = stockflow_embedded::record::CommitGroup::decode(&payload) {
            read_all(&group);
        }
    }

    #[test]
    fn a_mutated_checkpoint_loads_or_is_refused(
        file in any::<prop::sample::Index>(),
        changes in mutations(),
        reseal in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(written(), dir.path());
        let checkpoint = std::fs::read_dir(dir.path().join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap();
        let mut parts: Vec<_> = std::fs::read_dir(&checkpoint)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "snap"))
            .collect();
        parts.sort();
        let part = file.get(&parts);
        if reseal {
            // Past the checksum: the decoders themselves must hold.
            let payload = stockflow_log::read_snapshot(part).unwrap();
            stockflow_log::write_snapshot(part, &apply(&payload, &changes)).unwrap();
        } else {
            let bytes = apply(&std::fs::read(part).unwrap(), &changes);
            std::fs::write(part, bytes).unwrap();
        }
        let config = stockflow_service::config::Config::new(dir.path().to_owned());
        let _ = stockflow_embedded::recovery::recover(&config);
    }
}
