//! What people say about alerts: an acknowledgement ("I have seen this
//! alert and own it") and a mute ("do not tell me about these until
//! then"). Both are written by a named caller and travel with the catalog
//! (through the log in the embedded mode, the catalog topic in Kafka
//! mode), so they are durable, ordered and the same on every instance.
//!
//! An acknowledgement is kept per level and kind, naming the alert it was
//! of: the next alert of that level and kind starts unacknowledged. A
//! mute covers every alert matching its kind, SKU and location (each
//! optional: none mutes every alert, say for a stocktake) until its end;
//! muting the same scope again replaces it, and a mute of 0 minutes ends
//! it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::limits::{
    ACKNOWLEDGEMENTS_MAX, ACKNOWLEDGEMENT_KEPT_NS, BY_BYTES_MAX, ID_CHARS_MAX, MUTE_MINUTES_MAX,
    TEXT_CHARS_MAX,
};
use crate::time::Timestamp;

/// Alert kinds as the API names them: the level kinds and PRICE_DROP.
pub const KINDS: [&str; 7] = [
    "LOW_STOCK",
    "OUT_OF_STOCK",
    "BACK_IN_STOCK",
    "NEGATIVE_ON_HAND",
    "STALE",
    "RESERVATION_REJECTED",
    "PRICE_DROP",
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledgement {
    pub alert_id: String,
    pub kind: String,
    pub sku: String,
    pub location_id: Option<String>,
    pub note: Option<String>,
    /// The token name that acknowledged it.
    pub by: String,
    /// Server time it was recorded (stamped when applied).
    pub at: Timestamp,
}

impl Acknowledgement {
    /// The level and kind it is kept under.
    pub fn key(&self) -> String {
        scope_key(
            Some(self.kind.as_str()),
            Some(self.sku.as_str()),
            self.location_id.as_deref(),
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mute {
    /// Names the scope: the same kind, SKU and location give the same id.
    pub id: String,
    pub kind: Option<String>,
    pub sku: Option<String>,
    pub location_id: Option<String>,
    /// How long it lasts from when it is recorded; 0 ends it.
    pub minutes: i64,
    pub reason: Option<String>,
    pub by: String,
    /// Server time it was recorded, and its end (stamped when applied).
    pub at: Timestamp,
    pub until: Timestamp,
}

impl Mute {
    /// Whether an alert of `kind` at (`sku`, `location`) falls under it.
    pub fn covers(&self, kind: &str, sku: &str, location: Option<&str>) -> bool {
        self.kind.as_deref().is_none_or(|k| k == kind)
            && self.sku.as_deref().is_none_or(|s| s == sku)
            && self
                .location_id
                .as_deref()
                .is_none_or(|l| Some(l) == location)
    }
}

/// The marks the catalog keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    /// By [`Acknowledgement::key`].
    pub acknowledgements: std::collections::BTreeMap<String, Acknowledgement>,
    /// By id; only mutes not yet over when the last one was applied.
    pub mutes: std::collections::BTreeMap<String, Mute>,
}

impl Marks {
    pub fn acknowledge(&mut self, acknowledgement: &Acknowledgement, now: Timestamp) {
        let mut acknowledgement = acknowledgement.clone();
        acknowledgement.at = now;
        self.acknowledgements
            .retain(|_, a| now.0.saturating_sub(a.at.0) < ACKNOWLEDGEMENT_KEPT_NS);
        self.acknowledgements
            .insert(acknowledgement.key(), acknowledgement);
        if self.acknowledgements.len() > ACKNOWLEDGEMENTS_MAX {
            let oldest = self
                .acknowledgements
                .iter()
                .min_by_key(|(_, a)| a.at)
                .map(|(k, _)| k.clone());
            if let Some(key) = oldest {
                self.acknowledgements.remove(&key);
            }
        }
    }

    pub fn mute(&mut self, mute: &Mute, now: Timestamp) {
        self.mutes.retain(|_, m| m.until > now);
        if mute.minutes <= 0 {
            self.mutes.remove(&mute.id);
            return;
        }
        let mut mute = mute.clone();
        mute.at = now;
        mute.until = Timestamp(now.0.saturating_add(mute.minutes * 60 * 1_000_000_000));
        self.mutes.insert(mute.id.clone(), mute);
    }

    /// The acknowledgement of alert `id`, if its level and kind's newest
    /// is of this very alert and not older than kept at `now`.
    pub fn acknowledgement(
        &self,
        id: &str,
        kind: &str,
        sku: &str,
        location: Option<&str>,
        now: Timestamp,
    ) -> Option<&Acknowledgement> {
        self.acknowledgements
            .get(&scope_key(Some(kind), Some(sku), location))
            .filter(|a| a.alert_id == id && now.0.saturating_sub(a.at.0) < ACKNOWLEDGEMENT_KEPT_NS)
    }

    /// The mute in force at `now` that covers the alert (the one that
    /// lasts longest, if several do).
    pub fn mute_over(
        &self,
        kind: &str,
        sku: &str,
        location: Option<&str>,
        now: Timestamp,
    ) -> Option<&Mute> {
        self.mutes
            .values()
            .filter(|m| m.until > now && m.covers(kind, sku, location))
            .max_by_key(|m| m.until)
    }

    /// The mutes in force at `now`, by id.
    pub fn mutes_at(&self, now: Timestamp) -> impl Iterator<Item = &Mute> {
        self.mutes.values().filter(move |m| m.until > now)
    }
}

/// A scope as one key: the parts joined by a control character, which no
/// id may hold, so two scopes never share a key.
fn scope_key(kind: Option<&str>, sku: Option<&str>, location: Option<&str>) -> String {
    let part = |p: Option<&str>| p.map_or_else(|| "\u{1f}*".to_owned(), str::to_owned);
    format!("{}\u{1e}{}\u{1e}{}", part(kind), part(sku), part(location))
}

/// A short stable id of a scope key: a mute's id, and the catalog
/// topic's key of an acknowledgement in Kafka mode.
pub fn scope_id(key: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
}

/// The id of a mute of this scope.
pub fn mute_id(kind: Option<&str>, sku: Option<&str>, location: Option<&str>) -> String {
    scope_id(&scope_key(kind, sku, location))
}

/// An acknowledgement from its JSON form (`alertId`, `kind`, `sku`,
/// `locationId`, `note`, `by`; the shell sets `by`).
pub fn parse_acknowledgement(value: &Value) -> Result<Acknowledgement, String> {
    let object = value
        .as_object()
        .ok_or("an acknowledgement must be a JSON object")?;
    let kind = kind(object)?.ok_or("kind: required")?;
    Ok(Acknowledgement {
        alert_id: id(object, "alertId")?.ok_or("alertId: required")?,
        kind,
        sku: id(object, "sku")?.ok_or("sku: required")?,
        location_id: id(object, "locationId")?,
        note: text(object, "note", TEXT_CHARS_MAX)?,
        by: text(object, "by", BY_BYTES_MAX)?.unwrap_or_default(),
        at: Timestamp(0),
    })
}

/// A mute from its JSON form (`kind`, `sku`, `locationId`, each optional;
/// `minutes` from 0 to 30 days, 0 ending it; `reason`; `by`, which the
/// shell sets). Its id follows from its scope; `id`, when given (a
/// path's, or the catalog topic's key), must be that.
pub fn parse_mute(value: &Value, given: Option<&str>) -> Result<Mute, String> {
    let object = value.as_object().ok_or("a mute must be a JSON object")?;
    let (kind, sku, location_id) = (kind(object)?, id(object, "sku")?, id(object, "locationId")?);
    let minutes = match object.get("minutes") {
        None | Some(Value::Null) => return Err("minutes: required".into()),
        Some(v) => v
            .as_number()
            .and_then(crate::parse::whole_number)
            .filter(|m| (0..=MUTE_MINUTES_MAX).contains(m))
            .ok_or_else(|| {
                format!("minutes: must be a whole number from 1 to {MUTE_MINUTES_MAX} (30 days)")
            })?,
    };
    let id = mute_id(kind.as_deref(), sku.as_deref(), location_id.as_deref());
    if let Some(given) = given.filter(|g| *g != id) {
        return Err(format!(
            "id: {given:?} is not the id of this mute's kind, sku and locationId ({id})"
        ));
    }
    Ok(Mute {
        id,
        kind,
        sku,
        location_id,
        minutes,
        reason: text(object, "reason", TEXT_CHARS_MAX)?,
        by: text(object, "by", BY_BYTES_MAX)?.unwrap_or_default(),
        at: Timestamp(0),
        until: Timestamp(0),
    })
}

fn kind(object: &Map<String, Value>) -> Result<Option<String>, String> {
    match text(object, "kind", 32)? {
        None => Ok(None),
        Some(kind) if KINDS.contains(&kind.as_str()) => Ok(Some(kind)),
        Some(kind) => Err(format!(
            "kind: {} is not one of {}",
            crate::parse::quote(&kind),
            KINDS.join(", ")
        )),
    }
}

fn id(object: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    let value = text(object, name, ID_CHARS_MAX)?;
    if let Some(value) = &value {
        crate::parse::check_id(value, name)?;
    }
    Ok(value)
}

fn text(object: &Map<String, Value>, name: &str, max: usize) -> Result<Option<String>, String> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => {
            Err(format!("{name}: must not be empty (leave it out for none)"))
        }
        Some(Value::String(s)) if s.chars().count() > max => {
            Err(format!("{name}: longer than {max} characters"))
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{name}: must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MINUTE: i64 = 60 * 1_000_000_000;

    fn mute(v: Value) -> Mute {
        parse_mute(&v, None).expect("a valid mute")
    }

    #[test]
    fn a_mute_covers_its_scope_until_its_end_and_is_replaced_or_ended() {
        let mut marks = Marks::default();
        marks.mute(
            &mute(json!({"kind": "LOW_STOCK", "sku": "A", "minutes": 10, "by": "ops"})),
            Timestamp(0),
        );
        let found = marks.mute_over("LOW_STOCK", "A", Some("S1"), Timestamp(MINUTE));
        assert_eq!(
            found.map(|m| (m.by.as_str(), m.until)),
            Some(("ops", Timestamp(10 * MINUTE)))
        );
        assert!(
            marks
                .mute_over("LOW_STOCK", "A", None, Timestamp(MINUTE))
                .is_some(),
            "any location"
        );
        assert!(
            marks
                .mute_over("OUT_OF_STOCK", "A", Some("S1"), Timestamp(MINUTE))
                .is_none(),
            "another kind"
        );
        assert!(
            marks
                .mute_over("LOW_STOCK", "B", Some("S1"), Timestamp(MINUTE))
                .is_none(),
            "another sku"
        );
        assert!(
            marks
                .mute_over("LOW_STOCK", "A", Some("S1"), Timestamp(10 * MINUTE))
                .is_none(),
            "over at its end"
        );
        // The same scope again: one mute, the newer end.
        marks.mute(
            &mute(json!({"sku": "A", "kind": "LOW_STOCK", "minutes": 60})),
            Timestamp(5 * MINUTE),
        );
        assert_eq!(marks.mutes.len(), 1);
        assert_eq!(marks.mutes_at(Timestamp(30 * MINUTE)).count(), 1);
        // A mute of 0 minutes ends it; an expired one goes with the next change.
        marks.mute(
            &mute(json!({"sku": "A", "kind": "LOW_STOCK", "minutes": 0})),
            Timestamp(6 * MINUTE),
        );
        assert!(marks.mutes.is_empty());
        marks.mute(
            &mute(json!({"locationId": "S1", "minutes": 1})),
            Timestamp(0),
        );
        marks.mute(
            &mute(json!({"locationId": "S2", "minutes": 1})),
            Timestamp(2 * MINUTE),
        );
        assert_eq!(marks.mutes.len(), 1, "the expired mute is gone");
    }

    #[test]
    fn an_acknowledgement_is_of_one_alert_and_a_newer_alert_starts_unacknowledged() {
        let mut marks = Marks::default();
        let ack = parse_acknowledgement(&json!({"alertId": "3-7", "kind": "LOW_STOCK", "sku": "A", "locationId": "S1", "by": "ana", "note": "reorder placed"})).unwrap();
        marks.acknowledge(&ack, Timestamp(5));
        let found = marks
            .acknowledgement("3-7", "LOW_STOCK", "A", Some("S1"), Timestamp(6))
            .expect("acknowledged");
        assert_eq!(
            (found.by.as_str(), found.at, found.note.as_deref()),
            ("ana", Timestamp(5), Some("reorder placed"))
        );
        assert!(
            marks
                .acknowledgement("3-9", "LOW_STOCK", "A", Some("S1"), Timestamp(6))
                .is_none(),
            "a newer alert of the level"
        );
        assert!(marks
            .acknowledgement("3-7", "LOW_STOCK", "A", None, Timestamp(6))
            .is_none());
        // Kept 30 days, even if no acknowledgement comes after it.
        let late = Timestamp(5 + ACKNOWLEDGEMENT_KEPT_NS);
        assert!(
            marks
                .acknowledgement("3-7", "LOW_STOCK", "A", Some("S1"), late)
                .is_none(),
            "too old"
        );
        marks.acknowledge(&ack, Timestamp(5 + ACKNOWLEDGEMENT_KEPT_NS));
        assert_eq!(marks.acknowledgements.len(), 1);
    }

    #[test]
    fn bad_marks_are_refused_with_the_reason() {
        let refused = |v: Value| parse_mute(&v, None).unwrap_err();
        assert!(refused(json!({"sku": "", "minutes": 5})).contains("sku: must not be empty"));
        assert!(refused(json!({"sku": "A", "reason": "", "minutes": 5}))
            .contains("reason: must not be empty"));
        // No scope: every alert (a stocktake's mute).
        let all = parse_mute(&json!({"minutes": 5}), None).unwrap();
        assert!(all.covers("LOW_STOCK", "A", Some("S1")) && all.covers("PRICE_DROP", "B", None));
        assert!(refused(json!({"sku": "A"})).contains("minutes: required"));
        assert!(refused(json!({"sku": "A", "minutes": 50000})).contains("30 days"));
        assert!(refused(json!({"sku": "A", "minutes": 1.5})).contains("whole number"));
        assert!(refused(json!({"kind": "SOLD_OUT", "minutes": 5})).contains("not one of"));
        assert!(parse_mute(&json!({"sku": "A", "minutes": 5}), Some("00"))
            .unwrap_err()
            .contains("not the id"));
        let ack = |v: Value| parse_acknowledgement(&v).unwrap_err();
        assert!(ack(json!({"kind": "LOW_STOCK", "sku": "A"})).contains("alertId: required"));
        assert!(
            ack(json!({"alertId": "1-1", "kind": "LOW_STOCK", "sku": "A\u{7}"}))
                .contains("control")
        );
        assert_eq!(
            mute_id(Some("LOW_STOCK"), None, None),
            parse_mute(&json!({"kind": "LOW_STOCK", "minutes": 1}), None)
                .unwrap()
                .id
        );
        assert_ne!(
            mute_id(Some("A"), None, None),
            mute_id(None, Some("A"), None)
        );
    }
}
