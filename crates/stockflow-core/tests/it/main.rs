//! Integration tests of the engine core: one binary, several modules.

mod dedup;
mod holds;
mod location_pages;
mod model;
mod orders;
mod parsing;
mod reference;
mod rules;

use stockflow_core::{parse_body, BatchReport, BodyFormat, Engine, EngineConfig, Timestamp};

/// `2024-01-01T10:MM:00Z` as a timestamp, for readable tests.
pub fn at(minute: u32) -> String {
    format!("2024-01-01T10:{minute:02}:00Z")
}

/// One event as NDJSON.
pub fn ev(id: &str, kind: &str, sku: &str, location: &str, quantity: i64, minute: u32) -> String {
    format!(
        r#"{{"eventId":"{id}","eventType":"{kind}","sku":"{sku}","locationId":"{location}","quantity":{quantity},"timestamp":"{}"}}"#,
        at(minute)
    )
}

/// Applies each NDJSON body as one batch, at server time 2024-01-02.
pub fn run(engine: &mut Engine, bodies: &[String]) -> Vec<BatchReport> {
    let now = Timestamp::parse_rfc3339("2024-01-02T00:00:00Z").unwrap();
    bodies
        .iter()
        .map(|body| {
            let mut parsed = parse_body(body.as_bytes(), BodyFormat::Ndjson, 100_000).unwrap();
            assert!(
                parsed.rejected.is_empty(),
                "unexpected rejections: {:?}",
                parsed.rejected
            );
            engine.apply(&mut parsed.batch, now)
        })
        .collect()
}

/// (onHand, reserved, available, inTransit) of a level; panics if unseen.
pub fn level(engine: &Engine, sku: &str, location: &str) -> (i64, i64, i64, i64) {
    let view = engine
        .get(sku, location)
        .unwrap_or_else(|| panic!("{sku}@{location} never seen"));
    let l = view.level;
    (l.on_hand, l.reserved, l.available(), l.in_transit)
}

pub fn engine() -> Engine {
    Engine::new(EngineConfig::default())
}
