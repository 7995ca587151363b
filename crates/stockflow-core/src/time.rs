//! Timestamps: nanoseconds since the Unix epoch, UTC.
//!
//! The core never reads a clock; the shell passes `now` in. Nanoseconds in
//! an `i64` cover the years 1677 to 2262, which bounds what we accept.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// A point in time, nanoseconds since 1970-01-01T00:00:00Z.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Parses an RFC 3339 date-time (`2024-05-01T10:00:00Z`,
    /// `2024-05-01T12:00:00.5+02:00`). `None` if malformed or outside the
    /// representable range.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let parsed = DateTime::parse_from_rfc3339(text).ok()?;
        parsed.timestamp_nanos_opt().map(Timestamp)
    }

    pub fn from_datetime(time: DateTime<Utc>) -> Option<Timestamp> {
        time.timestamp_nanos_opt().map(Timestamp)
    }

    /// RFC 3339 in UTC with only as many fractional digits as needed.
    pub fn to_rfc3339(self) -> String {
        DateTime::<Utc>::from_timestamp_nanos(self.0).to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    pub fn saturating_sub_ns(self, ns: i64) -> Timestamp {
        Timestamp(self.0.saturating_sub(ns))
    }

    pub fn saturating_add_ns(self, ns: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_normalises_to_utc() {
        let t = Timestamp::parse_rfc3339("2024-05-01T12:00:00.5+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-05-01T10:00:00.500Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for bad in [
            "2024-05-01",
            "2024-05-01 10:00:00",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
        }
    }
}
