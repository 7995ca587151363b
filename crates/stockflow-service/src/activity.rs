//! What the dashboard's overview shows: events and commit latency per
//! second over the last ten minutes, and when each source system was last
//! heard from at each location.
//!
//! Prometheus has the same counters, but a page that opens should see the
//! last minutes at once rather than start an empty chart, and a browser
//! should not parse the exposition format. Both tables are bounded and
//! live in memory only: after a restart they start empty.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use stockflow_core::{Batch, Timestamp};

/// Seconds of throughput and latency kept.
pub const SECONDS_KEPT: usize = 600;
/// (source system, location) pairs tracked; pairs beyond are not added
/// (counted in `sourcesUntracked`), so a flood of made-up names cannot
/// grow memory.
pub const SOURCES_MAX: usize = 10_000;

/// Commit latency buckets: four per doubling from 1 µs, up to ~17 min.
const BUCKETS: usize = 4 * 30;

#[derive(Clone)]
struct Second {
    at: i64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    commits: u32,
    max_us: u64,
    latency: [u32; BUCKETS],
}

impl Second {
    fn new(at: i64) -> Second {
        Second {
            at,
            accepted: 0,
            duplicates: 0,
            rejected: 0,
            commits: 0,
            max_us: 0,
            latency: [0; BUCKETS],
        }
    }

    /// The upper edge of the bucket holding the `q` quantile, in ms.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().map(|&n| u64::from(n)).sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, &n) in self.latency.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                let edge_us = 2f64.powf((bucket + 1) as f64 / 4.0);
                return Some((edge_us / 1000.0).min(self.max_us as f64 / 1000.0));
            }
        }
        None
    }

    fn json(&self) -> Value {
        json!({
            "at": Timestamp(self.at * 1_000_000_000).to_rfc3339(),
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "commits": self.commits,
            "commitP50Ms": self.quantile_ms(0.5),
            "commitP99Ms": self.quantile_ms(0.99),
            "commitMaxMs": (self.commits > 0).then(|| self.max_us as f64 / 1000.0),
        })
    }
}

fn bucket(latency: Duration) -> usize {
    let us = latency.as_micros().max(1) as f64;
    ((us.log2() * 4.0) as usize).min(BUCKETS - 1)
}

struct Seen {
    received: Timestamp,
    event_time: Option<Timestamp>,
    events: u64,
}

/// See the module docs.
#[derive(Default)]
pub struct Activity {
    seconds: Mutex<VecDeque<Second>>,
    sources: Mutex<Sources>,
}

#[derive(Default)]
struct Sources {
    /// By source system, then location: lookups by `&str` need no
    /// allocation.
    seen: HashMap<Box<str>, HashMap<Box<str>, Seen>>,
    pairs: usize,
    untracked: u64,
}

impl Activity {
    /// Runs `f` on the bucket of second `at`, dropping seconds past the
    /// window. A late arrival for a second already dropped is ignored.
    fn with_second(&self, at: Timestamp, f: impl FnOnce(&mut Second)) {
        let at = at.0.div_euclid(1_000_000_000);
        let mut seconds = self.seconds.lock();
        match seconds.back() {
            Some(last) if last.at >= at => {}
            _ => seconds.push_back(Second::new(at)),
        }
        while seconds.len() > SECONDS_KEPT {
            seconds.pop_front();
        }
        if let Some(second) = seconds.iter_mut().rev().find(|s| s.at == at) {
            f(second);
        }
    }

    /// A group was committed at `now` with these counts.
    pub fn counted(&self, now: Timestamp, accepted: u64, duplicates: u64, rejected: u64) {
        self.with_second(now, |s| {
            s.accepted += accepted;
            s.duplicates += duplicates;
            s.rejected += rejected;
        });
    }

    /// A group formed at `now` was answered `latency` later.
    pub fn committed(&self, now: Timestamp, latency: Duration) {
        self.with_second(now, |s| {
            s.commits += 1;
            s.max_us = s.max_us.max(latency.as_micros() as u64);
            s.latency[bucket(latency)] += 1;
        });
    }

    /// Events of `batch` arrived at `now` through `channel` (the label
    /// used for events that name no source system).
    pub fn heard(&self, batch: &Batch, channel: &str, now: Timestamp) {
        let mut sources = self.sources.lock();
        let Sources {
            seen,
            pairs,
            untracked,
        } = &mut *sources;
        for event in batch.iter() {
            let system = event.source_system.unwrap_or(channel);
            let locations = match seen.get_mut(system) {
                Some(locations) => locations,
                None if *pairs >= SOURCES_MAX => {
                    *untracked += 1;
                    continue;
                }
                None => seen.entry(system.into()).or_default(),
            };
            match locations.get_mut(event.location_id) {
                Some(s) => {
                    s.received = s.received.max(now);
                    s.event_time = s.event_time.max(event.timestamp);
                    s.events += 1;
                }
                None if *pairs >= SOURCES_MAX => *untracked += 1,
                None => {
                    *pairs += 1;
                    let first = Seen {
                        received: now,
                        event_time: event.timestamp,
                        events: 1,
                    };
                    locations.insert(event.location_id.into(), first);
                }
            }
        }
    }

    /// The last `seconds` seconds, oldest first, and the sources, least
    /// recently heard first; a source is stale after `stale_after`.
    pub fn json(&self, seconds: usize, now: Timestamp, stale_after: Duration) -> Value {
        // Every second of the window, quiet ones as zeros, so a chart
        // shows a pause as a pause rather than a line across it.
        let series: Vec<Value> = {
            let kept = self.seconds.lock();
            let last = now.0.div_euclid(1_000_000_000);
            let first = last - seconds as i64 + 1;
            let mut kept = kept.iter().skip_while(|s| s.at < first).peekable();
            (first..=last)
                .map(|at| match kept.next_if(|s| s.at == at) {
                    Some(second) => second.json(),
                    None => Second::new(at).json(),
                })
                .collect()
        };
        let stale_ns = stale_after.as_nanos() as i64;
        let sources = self.sources.lock();
        let mut list: Vec<(&str, &str, &Seen)> = sources
            .seen
            .iter()
            .flat_map(|(system, at)| at.iter().map(|(l, seen)| (&**system, &**l, seen)))
            .collect();
        list.sort_by(|a, b| {
            a.2.received
                .cmp(&b.2.received)
                .then((a.0, a.1).cmp(&(b.0, b.1)))
        });
        let list: Vec<Value> = list
            .into_iter()
            .map(|(system, location, seen)| {
                let quiet_ns = now.0.saturating_sub(seen.received.0).max(0);
                json!({
                    "sourceSystem": system,
                    "locationId": location,
                    "lastReceivedAt": seen.received.to_rfc3339(),
                    "lastEventAt": seen.event_time.map(|t| t.to_rfc3339()),
                    "events": seen.events,
                    "secondsSinceLast": quiet_ns / 1_000_000_000,
                    "stale": quiet_ns >= stale_ns,
                })
            })
            .collect();
        json!({
            "seconds": series,
            "sources": list,
            "sourcesUntracked": sources.untracked,
            "staleAfterSeconds": stale_after.as_secs(),
        })
    }
}

/// The cluster's activity from its members' (Kafka mode): counts summed
/// per second, latencies the slowest member's, and each source at each
/// location as last heard by any member.
pub fn merge(parts: &[Value]) -> Value {
    let Some(first) = parts.first() else {
        return Value::Null;
    };
    let mut merged = first.clone();
    let mut by_second: Vec<Value> = merged["seconds"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut sources: std::collections::BTreeMap<(String, String), Value> = Default::default();
    let mut untracked = 0;
    for part in parts {
        untracked += part["sourcesUntracked"].as_u64().unwrap_or(0);
        if !std::ptr::eq(part, first) {
            for second in part["seconds"].as_array().into_iter().flatten() {
                let Some(mine) = by_second.iter_mut().find(|s| s["at"] == second["at"]) else {
                    continue;
                };
                for count in ["accepted", "duplicates", "rejected", "commits"] {
                    let sum =
                        mine[count].as_u64().unwrap_or(0) + second[count].as_u64().unwrap_or(0);
                    mine[count] = sum.into();
                }
                for latency in ["commitP50Ms", "commitP99Ms", "commitMaxMs"] {
                    if let Some(theirs) = second[latency].as_f64() {
                        if mine[latency].as_f64().is_none_or(|m| m < theirs) {
                            mine[latency] = theirs.into();
                        }
                    }
                }
            }
        }
        for source in part["sources"].as_array().into_iter().flatten() {
            let key = (
                source["sourceSystem"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                source["locationId"].as_str().unwrap_or_default().to_owned(),
            );
            match sources.get_mut(&key) {
                None => {
                    sources.insert(key, source.clone());
                }
                Some(seen) => {
                    let events = seen["events"].as_u64().unwrap_or(0)
                        + source["events"].as_u64().unwrap_or(0);
                    seen["events"] = events.into();
                    // RFC 3339 in UTC with a fixed precision sorts as text.
                    for latest in ["lastReceivedAt", "lastEventAt"] {
                        if source[latest].as_str() > seen[latest].as_str() {
                            seen[latest] = source[latest].clone();
                        }
                    }
                    let quiet = seen["secondsSinceLast"]
                        .as_i64()
                        .min(source["secondsSinceLast"].as_i64());
                    seen["secondsSinceLast"] = quiet.into();
                    let stale = seen["stale"] == true && source["stale"] == true;
                    seen["stale"] = stale.into();
                }
            }
        }
    }
    let mut list: Vec<Value> = sources.into_values().collect();
    list.sort_by(|a, b| {
        a["lastReceivedAt"]
            .as_str()
            .cmp(&b["lastReceivedAt"].as_str())
    });
    merged["seconds"] = by_second.into();
    merged["sources"] = list.into();
    merged["sourcesUntracked"] = untracked.into();
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_activity_merges_into_the_clusters() {
        let t = Timestamp(100_000_000_000);
        let stale = Duration::from_secs(60);
        let (a, b) = (Activity::default(), Activity::default());
        a.counted(t, 10, 1, 0);
        a.committed(t, Duration::from_millis(2));
        b.counted(t, 5, 0, 2);
        b.committed(t, Duration::from_millis(40));
        let batch = |location: &str| {
            let body = format!(
                r#"{{"eventId":"e-{location}","eventType":"SALE","sku":"S","locationId":"{location}","quantity":1,"sourceSystem":"pos"}}"#
            );
            stockflow_core::parse_body(body.as_bytes(), stockflow_core::BodyFormat::Json, 1)
                .unwrap()
                .batch
        };
        a.heard(&batch("L1"), "kafka", Timestamp(t.0 - 120_000_000_000));
        b.heard(&batch("L1"), "kafka", t);
        b.heard(&batch("L2"), "kafka", t);
        let merged = merge(&[a.json(2, t, stale), b.json(2, t, stale)]);
        let now = merged["seconds"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(
            (
                now["accepted"].as_u64(),
                now["duplicates"].as_u64(),
                now["rejected"].as_u64(),
                now["commits"].as_u64()
            ),
            (Some(15), Some(1), Some(2), Some(2))
        );
        let p99 = now["commitP99Ms"].as_f64().unwrap();
        assert!(p99 >= 38.0, "the slowest member's p99: {p99}");
        let sources = merged["sources"].as_array().unwrap();
        assert_eq!(sources.len(), 2, "{sources:?}");
        let l1 = sources.iter().find(|s| s["locationId"] == "L1").unwrap();
        assert_eq!(l1["events"], 2);
        assert_eq!(l1["stale"], false, "heard recently by one member: {l1}");
        assert_eq!(l1["lastReceivedAt"], t.to_rfc3339());
    }

    #[test]
    fn quantiles_come_from_the_bucket_edges_and_never_exceed_the_max() {
        let activity = Activity::default();
        let t = Timestamp(5_000_000_000);
        for _ in 0..98 {
            activity.committed(t, Duration::from_micros(1000));
        }
        activity.committed(t, Duration::from_millis(40));
        activity.committed(t, Duration::from_millis(50));
        let second = activity.seconds.lock()[0].clone();
        let p50 = second.quantile_ms(0.5).unwrap();
        assert!((1.0..1.2).contains(&p50), "p50 {p50}");
        let p99 = second.quantile_ms(0.99).unwrap();
        assert!((40.0..=48.0).contains(&p99), "p99 {p99}");
        assert_eq!(second.quantile_ms(1.0), Some(50.0));
    }

    #[test]
    fn the_window_keeps_the_last_seconds_only() {
        let activity = Activity::default();
        for s in 0..(SECONDS_KEPT as i64 + 5) {
            activity.counted(Timestamp(s * 1_000_000_000), 1, 0, 0);
        }
        let now = Timestamp((SECONDS_KEPT as i64 + 4) * 1_000_000_000);
        let json = activity.json(SECONDS_KEPT, now, Duration::from_secs(1));
        let seconds = json["seconds"].as_array().unwrap();
        assert_eq!(seconds.len(), SECONDS_KEPT);
        assert_eq!(seconds[0]["at"], Timestamp(5_000_000_000).to_rfc3339());
        assert!(seconds.iter().all(|s| s["accepted"] == 1));
    }

    #[test]
    fn quiet_seconds_are_zeros_and_the_series_ends_now() {
        let activity = Activity::default();
        activity.counted(Timestamp(10_000_000_000), 7, 1, 0);
        activity.committed(Timestamp(10_000_000_000), Duration::from_millis(2));
        activity.counted(Timestamp(13_000_000_000), 3, 0, 0);
        let json = activity.json(6, Timestamp(14_500_000_000), Duration::from_secs(1));
        let accepted: Vec<i64> = json["seconds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["accepted"].as_i64().unwrap())
            .collect();
        assert_eq!(accepted, [0, 7, 0, 0, 3, 0]);
        assert_eq!(json["seconds"][1]["commits"], 1);
        assert_eq!(json["seconds"][2]["commitP99Ms"], Value::Null);
    }

    #[test]
    fn sources_are_kept_per_system_and_location_and_go_stale() {
        let activity = Activity::default();
        let parsed = stockflow_core::parse_body(
            br#"[{"eventId":"a","eventType":"SALE","sku":"S","locationId":"L1","quantity":1,"sourceSystem":"POS"},
                 {"eventId":"b","eventType":"SALE","sku":"S","locationId":"L1","quantity":1,"sourceSystem":"POS"},
                 {"eventId":"c","eventType":"RECEIPT","sku":"S","locationId":"L2","quantity":1}]"#,
            stockflow_core::BodyFormat::Json,
            10,
        )
        .unwrap();
        activity.heard(&parsed.batch, "http:/v1/events", Timestamp(1_000_000_000));
        let json = activity.json(1, Timestamp(11_000_000_000), Duration::from_secs(5));
        let sources = json["sources"].as_array().unwrap();
        assert_eq!(sources.len(), 2);
        let pos = sources.iter().find(|s| s["sourceSystem"] == "POS").unwrap();
        assert_eq!(
            (pos["locationId"].as_str(), pos["events"].as_u64()),
            (Some("L1"), Some(2))
        );
        assert_eq!(pos["stale"], true);
        assert_eq!(pos["secondsSinceLast"], 10);
        // No sourceSystem: named by the channel it came through.
        assert!(sources
            .iter()
            .any(|s| s["sourceSystem"] == "http:/v1/events" && s["locationId"] == "L2"));
        let fresh = activity.json(1, Timestamp(2_000_000_000), Duration::from_secs(5));
        assert!(fresh["sources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["stale"] == false));
    }
}
