//! What every part of a running stockflow service shares, below the
//! backend seam: the shell's configuration and limits, the live stream
//! hub, per-level history files, source dialects, activity, metrics,
//! dead letters and the JSON shapes both modes answer in.
//!
//! **Never** knows which mode runs it, and never speaks HTTP: the seam
//! and the router are `stockflow-http`, the modes `stockflow-embedded`
//! and `stockflow-kafka`.

pub mod activity;
pub mod auth;
pub mod clock;
pub mod config;
pub mod dead_letter;
pub mod history;
pub mod json;
pub mod lake;
pub mod links;
pub mod metrics;
pub mod receipt;
pub mod scenario;
pub mod sink_tables;
pub mod sinks;
pub mod sources;
pub mod stream;
pub mod tls;
pub mod traffic;
