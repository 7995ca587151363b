//! Turning request bodies into validated events.
//!
//! Parsing works on bytes and knows nothing of HTTP. A body is one JSON
//! object, a JSON array of objects, or NDJSON. Each event is read in one
//! serde pass into loosely typed fields, so a wrong type becomes a reason
//! naming the field ("quantity: must be a JSON integer, not a string")
//! instead of a generic serde error. Invalid events never stop the others:
//! they come back as [`Rejected`] with their raw text, for the dead-letter
//! store.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{Batch, EventRef, EventType};
use crate::limits::{HOLD_SECONDS_MAX, ID_CHARS_MAX, QUANTITY_ABS_MAX};
use crate::time::Timestamp;

/// How the body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object or a JSON array of objects.
    Json,
    /// One JSON object per line; blank lines are skipped.
    Ndjson,
}

/// An event that failed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Position of the event in the body (array index or non-blank line).
    pub index: u32,
    /// The eventId, when it could be read.
    pub event_id: Option<String>,
    pub reason: String,
    /// The event's raw text exactly as received.
    pub raw: String,
}

/// Valid events (in body order) and the rejected ones.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    pub batch: Batch,
    pub rejected: Vec<Rejected>,
}

impl Parsed {
    pub fn total(&self) -> usize {
        self.batch.len() + self.rejected.len()
    }
}

/// Why a whole body was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is not valid JSON: {0}")]
    Malformed(String),
    /// A CSV body (a source format's) that cannot be read as a table.
    #[error("body is not valid CSV: {0}")]
    MalformedCsv(String),
    #[error(
        "body must be a JSON object, a JSON array of objects, or NDJSON (application/x-ndjson)"
    )]
    WrongShape,
    #[error("body holds more than {max} events; split it into smaller batches")]
    TooManyEvents { max: usize },
}

/// Parses and validates a body of at most `events_max` events.
pub fn parse_body(body: &[u8], format: BodyFormat, events_max: usize) -> Result<Parsed, BodyError> {
    let mut parsed = Parsed {
        batch: Batch::with_capacity(0, body.len() / 2),
        rejected: Vec::new(),
    };
    match format {
        BodyFormat::Ndjson => parse_ndjson(body, events_max, &mut parsed)?,
        BodyFormat::Json => parse_json(body, events_max, &mut parsed)?,
    }
    Ok(parsed)
}

fn parse_ndjson(body: &[u8], events_max: usize, parsed: &mut Parsed) -> Result<(), BodyError> {
    let mut index = 0u32;
    for line in body.split(|b| *b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if index as usize >= events_max {
            return Err(BodyError::TooManyEvents { max: events_max });
        }
        match std::str::from_utf8(line) {
            Ok(text) => parse_one(text, index, parsed, true)?,
            Err(_) => parsed.rejected.push(Rejected {
                index,
                event_id: None,
                reason: "line is not valid UTF-8".into(),
                raw: String::from_utf8_lossy(line).into_owned(),
            }),
        }
        index += 1;
    }
    Ok(())
}

fn parse_json(body: &[u8], events_max: usize, parsed: &mut Parsed) -> Result<(), BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| BodyError::Malformed(e.to_string()))?;
    match text.trim_start().as_bytes().first() {
        Some(b'{') => parse_one(text.trim(), 0, parsed, false),
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|e| BodyError::Malformed(e.to_string()))?;
            if items.len() > events_max {
                return Err(BodyError::TooManyEvents { max: events_max });
            }
            for (index, item) in items.iter().enumerate() {
                parse_one(item.get(), index as u32, parsed, true)?;
            }
            Ok(())
        }
        Some(_) => Err(BodyError::WrongShape),
        None => Err(BodyError::Malformed("empty body".into())),
    }
}

/// Parses one event's text. A syntax error rejects just this event when
/// `syntax_error_is_event_error`, and the whole body otherwise (a body that
/// is one broken object is a bad request, not a bad event).
fn parse_one(
    text: &str,
    index: u32,
    parsed: &mut Parsed,
    syntax_error_is_event_error: bool,
) -> Result<(), BodyError> {
    let wire = match serde_json::from_str::<Wire<'_>>(text) {
        Ok(wire) => wire,
        Err(e) if syntax_error_is_event_error => {
            let reason = format!("invalid JSON: {e}");
            parsed.rejected.push(Rejected {
                index,
                event_id: None,
                reason,
                raw: text.to_owned(),
            });
            return Ok(());
        }
        Err(e) => return Err(BodyError::Malformed(e.to_string())),
    };
    match validate(&wire, index) {
        Ok(event) => parsed.batch.push(&event),
        Err(reason) => parsed.rejected.push(Rejected {
            index,
            event_id: wire
                .event_id
                .as_ref()
                .and_then(Field::as_str)
                .map(str::to_owned),
            reason,
            raw: text.to_owned(),
        }),
    }
    Ok(())
}

/// Checks every rule of the canonical event contract.
fn validate<'a>(wire: &'a Wire<'a>, index: u32) -> Result<EventRef<'a>, String> {
    if let Some(problem) = &wire.problem {
        return Err(problem.clone());
    }
    let event_id = required_id(&wire.event_id, "eventId")?;
    let type_name = required_str(&wire.event_type, "eventType")?;
    let event_type = EventType::from_wire(type_name).ok_or_else(|| {
        format!(
            "eventType: unknown type {}; expected one of {}",
            quote(type_name),
            EventType::ALL.map(EventType::as_str).join(", ")
        )
    })?;
    let sku = required_id(&wire.sku, "sku")?;
    let location_id = required_id(&wire.location_id, "locationId")?;
    let quantity = quantity(&wire.quantity, event_type)?;
    let timestamp = match optional_str(&wire.timestamp, "timestamp")? {
        None => None,
        Some(text) => Some(Timestamp::parse_rfc3339(text).ok_or_else(|| {
            format!(
                "timestamp: {} is not an RFC 3339 date-time such as 2024-05-01T10:00:00Z",
                quote(text)
            )
        })?),
    };
    let to_location_id = optional_str(&wire.to_location_id, "toLocationId")?;
    if let Some(to) = to_location_id {
        if event_type != EventType::TransferOut {
            return Err("toLocationId: only allowed on TRANSFER_OUT".into());
        }
        check_id(to, "toLocationId")?;
        if to == location_id {
            return Err("toLocationId: must differ from locationId".into());
        }
    }
    let source_system = optional_str(&wire.source_system, "sourceSystem")?;
    let correlation_id = optional_str(&wire.correlation_id, "correlationId")?;
    if let Some(source) = source_system {
        if char_count_over(source, ID_CHARS_MAX) {
            return Err(format!(
                "sourceSystem: longer than {ID_CHARS_MAX} characters"
            ));
        }
    }
    // The id of an order: an empty one would name an order no one can
    // address (leave it out for no order).
    if let Some(order) = correlation_id {
        check_id(order, "correlationId")?;
    }
    let hold_seconds = hold_seconds(&wire.hold_seconds)?;
    if hold_seconds.is_some() && (event_type != EventType::Reservation || correlation_id.is_none())
    {
        return Err("holdSeconds: only allowed on a RESERVATION with a correlationId (the order it holds for)".into());
    }
    Ok(EventRef {
        event_id,
        event_type,
        sku,
        location_id,
        quantity,
        timestamp,
        to_location_id,
        source_system,
        correlation_id,
        hold_seconds,
        // Never read from the body: the shell records who sent it.
        by: "",
        index,
    })
}

fn hold_seconds(field: &Option<Field<'_>>) -> Result<Option<u32>, String> {
    let range = || format!("holdSeconds: must be a whole number from 1 to {HOLD_SECONDS_MAX}");
    match field {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Int(s)) if (1..=HOLD_SECONDS_MAX as i64).contains(s) => Ok(Some(*s as u32)),
        Some(_) => Err(range()),
    }
}

fn quantity(field: &Option<Field<'_>>, event_type: EventType) -> Result<i64, String> {
    let q = match field {
        None | Some(Field::Null) => return Err("quantity: required".into()),
        Some(Field::Int(q)) => *q,
        Some(Field::Float) => return Err("quantity: must be a JSON integer, not a decimal".into()),
        Some(Field::BigInt) => {
            return Err(format!(
                "quantity: out of range (|quantity| <= {QUANTITY_ABS_MAX})"
            ))
        }
        Some(other) => {
            return Err(format!(
                "quantity: must be a JSON integer, not {}",
                other.kind()
            ))
        }
    };
    // unsigned_abs: i64::MIN has no positive i64 (its abs() wraps to itself
    // in release builds and would pass a signed comparison).
    if q.unsigned_abs() > QUANTITY_ABS_MAX.unsigned_abs() {
        return Err(format!(
            "quantity: out of range (|quantity| <= {QUANTITY_ABS_MAX})"
        ));
    }
    match event_type {
        EventType::Adjustment if q == 0 => Err("quantity: ADJUSTMENT must not be 0".into()),
        EventType::Adjustment => Ok(q),
        EventType::Count if q < 0 => Err("quantity: COUNT must be >= 0".into()),
        EventType::Count => Ok(q),
        _ if q <= 0 => Err(format!("quantity: {} must be > 0", event_type.as_str())),
        _ => Ok(q),
    }
}

fn required_str<'a>(field: &'a Option<Field<'a>>, name: &str) -> Result<&'a str, String> {
    optional_str(field, name)?.ok_or_else(|| format!("{name}: required"))
}

fn required_id<'a>(field: &'a Option<Field<'a>>, name: &str) -> Result<&'a str, String> {
    let value = required_str(field, name)?;
    check_id(value, name)?;
    Ok(value)
}

/// `value` quoted for a reason told to its sender (and kept with a dead
/// letter): at most ~200 bytes of it, so a huge bad value does not come
/// back, or get stored twice, whole.
pub fn quote(value: &str) -> String {
    const SHOWN_BYTES: usize = 200;
    if value.len() <= SHOWN_BYTES {
        return format!("{value:?}");
    }
    let mut end = SHOWN_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &value[..end], value.len())
}

/// The rules of every id (eventId, sku, locationId, toLocationId,
/// correlationId): not empty, not only white space, at most
/// [`ID_CHARS_MAX`] characters, and no control characters or
/// bidirectional-text controls, which would make two ids that print alike
/// differ (or one print as another) in every log, page and export.
pub fn check_id(value: &str, name: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{name}: must not be empty"));
    }
    if char_count_over(value, ID_CHARS_MAX) {
        return Err(format!("{name}: longer than {ID_CHARS_MAX} characters"));
    }
    let unprintable = if value.is_ascii() {
        value
            .bytes()
            .position(|b| b < 0x20 || b == 0x7f)
            .map(|i| (i, char::from(value.as_bytes()[i])))
    } else {
        value
            .chars()
            .enumerate()
            .find(|(_, c)| c.is_control() || is_bidi_control(*c))
    };
    if let Some((at, c)) = unprintable {
        let what = if c.is_control() {
            "a control character"
        } else {
            "a bidirectional-text control"
        };
        return Err(format!(
            "{name}: must not contain {what} (U+{:04X} at character {at})",
            u32::from(c)
        ));
    }
    if value.trim().is_empty() {
        return Err(format!("{name}: must not be only white space"));
    }
    Ok(())
}

/// Embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069): they
/// reorder how the text around them prints.
/// A JSON number as a whole number: `2` or `2.0` (JSON does not tell
/// them apart); `None` for a fraction, or a float past 2^53, beyond which
/// a float no longer holds every whole number.
pub fn whole_number(n: &serde_json::Number) -> Option<i64> {
    const EXACT_MAX: f64 = 9_007_199_254_740_992.0;
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= EXACT_MAX)
            .map(|f| f as i64)
    })
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn char_count_over(value: &str, max: usize) -> bool {
    // Byte length bounds the char count from above: the fast path for ASCII.
    value.len() > max && value.chars().count() > max
}

fn optional_str<'a>(field: &'a Option<Field<'a>>, name: &str) -> Result<Option<&'a str>, String> {
    match field {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Str(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{name}: must be a string, not {}", other.kind())),
    }
}

/// A JSON value as far as validation cares.
enum Field<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    /// An integer beyond `i64`.
    BigInt,
    Float,
    Bool,
    Null,
    Array,
    Object,
}

impl Field<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Field::Str(_) => "a string",
            Field::Int(_) | Field::BigInt => "an integer",
            Field::Float => "a decimal number",
            Field::Bool => "a boolean",
            Field::Null => "null",
            Field::Array => "an array",
            Field::Object => "an object",
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Field::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Field::BigInt, Field::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // serde_json hands `-0` (a JSON integer) over as the float -0.0,
        // and integers beyond u64 as floats too.
        if v == 0.0 && v.is_sign_negative() {
            return Ok(Field::Int(0));
        }
        let whole_but_huge = v.fract() == 0.0 && v.abs() > i64::MAX as f64;
        Ok(if whole_but_huge {
            Field::BigInt
        } else {
            Field::Float
        })
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Field::Bool)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Object)
    }
}

/// The fields of one event as sent. Unknown fields are ignored (senders may
/// carry extra attributes); a repeated field is a problem.
#[derive(Default)]
struct Wire<'a> {
    event_id: Option<Field<'a>>,
    event_type: Option<Field<'a>>,
    sku: Option<Field<'a>>,
    location_id: Option<Field<'a>>,
    quantity: Option<Field<'a>>,
    timestamp: Option<Field<'a>>,
    to_location_id: Option<Field<'a>>,
    source_system: Option<Field<'a>>,
    correlation_id: Option<Field<'a>>,
    hold_seconds: Option<Field<'a>>,
    /// First structural problem found (not an object, duplicate field).
    problem: Option<String>,
}

impl<'de> Deserialize<'de> for Wire<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WireVisitor)
    }
}

struct WireVisitor;

impl<'de> WireVisitor {
    fn not_an_object<E>(kind: &str) -> Result<Wire<'de>, E> {
        Ok(Wire {
            problem: Some(format!("event must be a JSON object, not {kind}")),
            ..Wire::default()
        })
    }
}

impl<'de> Visitor<'de> for WireVisitor {
    type Value = Wire<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut wire = Wire::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "eventId" => &mut wire.event_id,
                "eventType" => &mut wire.event_type,
                "sku" => &mut wire.sku,
                "locationId" => &mut wire.location_id,
                "quantity" => &mut wire.quantity,
                "timestamp" => &mut wire.timestamp,
                "toLocationId" => &mut wire.to_location_id,
                "sourceSystem" => &mut wire.source_system,
                "correlationId" => &mut wire.correlation_id,
                "holdSeconds" => &mut wire.hold_seconds,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = map.next_value::<Field<'de>>()?;
            if slot.is_some() && wire.problem.is_none() {
                wire.problem = Some(format!("{key}: appears more than once"));
            }
            *slot = Some(value);
        }
        Ok(wire)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Self::not_an_object("an array")
    }
    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
        Self::not_an_object("a string")
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Self::not_an_object("a string")
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Self::not_an_object("a number")
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Self::not_an_object("a number")
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Self::not_an_object("a number")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Self::not_an_object("a boolean")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Self::not_an_object("null")
    }
}
