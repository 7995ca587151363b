//! Server time: the one place the shell reads the clock. The engine core
//! never does; it is handed `now` with each step.

use stockflow_core::Timestamp;

/// Server time now (only the sequencer, and Kafka mode's cycle, use it
/// for state).
pub fn wall_clock() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now()).expect("the clock is within 1677..2262")
}
