//! stockflow's engine core: canonical inventory events in, state changes out.
//!
//! Everything here is synchronous and deterministic: no IO, no clock, no
//! async. Time comes in as an argument (`now`), so replaying the same
//! batches at the same times rebuilds the same state, bit for bit.
//!
//! - [`parse_body`] turns a request body into a [`Batch`] of valid events
//!   and a list of [`Rejected`] ones with reasons.
//! - [`admit`] stamps server time and drops duplicate eventIds ([`Dedup`]).
//! - A [`Step`] is the one way a partition changes: a record's catalog
//!   changes, its batches (the contract's rules, [`Level`], applied to the
//!   levels the partition owns; [`route`] says which partition that is),
//!   the order step's decisions, then time passing, in that order.
//! - [`Engine`] composes them the way every mode does.
//!
//! ```
//! use stockflow_core::{parse_body, BodyFormat, Engine, EngineConfig, Timestamp};
//! let body = br#"{"eventId":"e1","eventType":"RECEIPT","sku":"A","locationId":"S1","quantity":5}"#;
//! let mut parsed = parse_body(body, BodyFormat::Json, 1000).unwrap();
//! let mut engine = Engine::new(EngineConfig::default());
//! engine.apply(&mut parsed.batch, Timestamp(0));
//! assert_eq!(engine.get("A", "S1").unwrap().level.on_hand, 5);
//! ```

pub mod alerts;
pub mod catalog;
pub mod dedup;
pub mod engine;
pub mod event;
pub mod level;
pub mod limits;
pub mod marks;
pub mod orders;
pub mod parse;
pub mod partition;
pub mod rollup;
pub mod saga;
pub mod step;
pub mod time;

pub use catalog::{Catalog, CatalogChange, Location, LocationType, Policy, PriceChange, Product};
pub use dedup::{event_id_hash, Dedup, DedupDecodeError, DedupSnapshot};
pub use engine::{admit, BatchReport, Engine, EngineConfig, RecordReport};
pub use event::{Batch, EventRef, EventType, Route, ANONYMOUS, SERVER};
pub use level::{Hold, Level, Numbers, Outcome, Rejection};
pub use orders::{OrderBook, OrderCommand};
pub use parse::{parse_body, BodyError, BodyFormat, Parsed, Rejected};
pub use partition::route;
pub use partition::{
    Change, Exception, LevelView, Partition, PartitionImage, PartitionSnapshot, Totals,
};
pub use step::Step;
pub use time::Timestamp;
