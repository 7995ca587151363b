//! Declarative dialects: a mapping file says where each canonical field
//! comes from in a source message, so a new JSON or CSV format needs no
//! code. The built-in formats are mapping files too (`sources/*.json`).
//!
//! A field is resolved in this order: a request parameter named by `param`,
//! the value at `path`, a `template`, a constant `const`. Paths are dotted
//! (`a.b.c`); with `each`, one event is made per element of that array and
//! `item.x` addresses the element. Templates substitute `{path}` and
//! `{index}` (the element's position).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The shape of the messages of a format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Input {
    /// A JSON object, an array of objects, or NDJSON.
    #[default]
    Json,
    /// CSV with a header row; every value is text.
    Csv,
}

/// A format's mapping file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mapping {
    /// The name in `/v1/sources/{format}/events`.
    pub format: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub input: Input,
    /// Path of an array: one canonical event per element.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub each: Option<String>,
    pub fields: Fields,
}

/// Where each canonical field comes from.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fields {
    pub event_id: Field,
    pub event_type: Field,
    pub sku: Field,
    pub location_id: Field,
    pub quantity: Field,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Field>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_location_id: Option<Field>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_system: Option<Field>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Field>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Field {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(rename = "const")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constant: Option<String>,
    /// A request query parameter that overrides everything else.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// Source value → canonical value; a value not listed is rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map: Option<BTreeMap<String, String>>,
    /// Quantity only: the sign each canonical eventType must have in the
    /// source; the canonical quantity is then its magnitude.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signs: Option<BTreeMap<String, Sign>>,
    /// Timestamp only: the UTC offset of zone-less times (e.g. "Z", "+02:00");
    /// the request parameter `assumeOffset` overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assume_offset: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sign {
    Positive,
    Negative,
    Any,
}

/// The request parameter that overrides a mapping's `assumeOffset`.
pub const ASSUME_OFFSET_PARAM: &str = "assumeOffset";

/// A canonical event made from a source message, as a JSON object ready
/// for the canonical validator.
pub type Canonical = Map<String, Value>;

/// Everything a field can be resolved against.
pub struct Context<'a> {
    pub message: &'a Value,
    pub item: Option<&'a Value>,
    pub index: usize,
    pub params: &'a BTreeMap<String, String>,
}

impl Mapping {
    /// Checks what serde cannot: a name that fits in a URL path and a
    /// dead letter's source (`amqp:{format}:{queue}`), and every required
    /// field has a source.
    pub fn validate(&self) -> Result<(), String> {
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if self.format.is_empty() || self.format.len() > 64 || !self.format.chars().all(name_char) {
            return Err(format!(
                "format {:?}: 1 to 64 letters, digits, '-', '_' or '.'",
                self.format
            ));
        }
        let f = &self.fields;
        for (name, field) in [
            ("eventId", &f.event_id),
            ("eventType", &f.event_type),
            ("sku", &f.sku),
            ("locationId", &f.location_id),
            ("quantity", &f.quantity),
        ] {
            if field.path.is_none() && field.template.is_none() && field.constant.is_none() {
                return Err(format!("fields.{name} needs a path, a template or a const"));
            }
        }
        if let Some(offset) = f.timestamp.as_ref().and_then(|t| t.assume_offset.as_ref()) {
            with_offset("2000-01-01T00:00:00", offset)
                .map_err(|e| format!("fields.timestamp.assumeOffset: {e}"))?;
        }
        Ok(())
    }

    /// The canonical events of one source message, or why it cannot be
    /// mapped (naming the source field at fault).
    pub fn apply(
        &self,
        message: &Value,
        params: &BTreeMap<String, String>,
    ) -> Result<Vec<Canonical>, String> {
        if !message.is_object() {
            return Err(format!("a {} message must be a JSON object", self.format));
        }
        let Some(each) = &self.each else {
            let context = Context {
                message,
                item: None,
                index: 0,
                params,
            };
            return Ok(vec![self.event(&context)?]);
        };
        let items = lookup(message, each)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{each}: required, an array"))?;
        if items.is_empty() {
            return Err(format!("{each}: must not be empty"));
        }
        items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let context = Context {
                    message,
                    item: Some(item),
                    index,
                    params,
                };
                self.event(&context)
                    .map_err(|e| format!("{each}[{index}].{}", e.trim_start_matches("item.")))
            })
            .collect()
    }

    fn event(&self, cx: &Context<'_>) -> Result<Canonical, String> {
        let f = &self.fields;
        let mut out = Map::new();
        let event_type = self.text(&f.event_type, "eventType", cx)?;
        if let Some(t) = &event_type {
            out.insert("eventType".into(), Value::String(t.clone()));
        }
        for (name, field) in [
            ("eventId", Some(&f.event_id)),
            ("sku", Some(&f.sku)),
            ("locationId", Some(&f.location_id)),
            ("toLocationId", f.to_location_id.as_ref()),
            ("sourceSystem", f.source_system.as_ref()),
            ("correlationId", f.correlation_id.as_ref()),
        ] {
            if let Some(value) = field
                .map(|field| self.text(field, name, cx))
                .transpose()?
                .flatten()
            {
                out.insert(name.into(), Value::String(value));
            }
        }
        if let Some(quantity) = self.quantity(event_type.as_deref(), cx)? {
            out.insert("quantity".into(), quantity);
        }
        if let Some(field) = &f.timestamp {
            if let Some(value) = self.text(field, "timestamp", cx)? {
                // `?assumeOffset=+02:00` configures a source's zone per request.
                let offset = cx
                    .params
                    .get(ASSUME_OFFSET_PARAM)
                    .or(field.assume_offset.as_ref());
                let value = match offset {
                    Some(offset) => with_offset(&value, offset)
                        .map_err(|e| format!("{}: {e}", describe(field, "timestamp")))?,
                    None => value,
                };
                out.insert("timestamp".into(), Value::String(value));
            }
        }
        Ok(out)
    }

    /// A text field: numbers in the source become their decimal text.
    fn text(&self, field: &Field, name: &str, cx: &Context<'_>) -> Result<Option<String>, String> {
        let Some(value) = resolve(field, cx)? else {
            return Ok(None);
        };
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            other => {
                return Err(format!(
                    "{}: must be a string, not {}",
                    describe(field, name),
                    kind(&other)
                ))
            }
        };
        match &field.map {
            None => Ok(Some(text)),
            Some(map) => match map.get(&text) {
                Some(mapped) => Ok(Some(mapped.clone())),
                None => Err(format!(
                    "{}: {} is not one of {}",
                    describe(field, name),
                    stockflow_core::parse::quote(&text),
                    map.keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
        }
    }

    fn quantity(
        &self,
        event_type: Option<&str>,
        cx: &Context<'_>,
    ) -> Result<Option<Value>, String> {
        let field = &self.fields.quantity;
        let Some(value) = resolve(field, cx)? else {
            return Ok(None);
        };
        let source = describe(field, "quantity");
        let value = match (self.input, value) {
            // CSV has only text; a JSON source keeps its own types and the
            // canonical validator refuses "5" or 1.5 there.
            (Input::Csv, Value::String(s)) => match s.trim().parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => {
                    let s = stockflow_core::parse::quote(&s);
                    return Err(format!("{source}: {s} is not a whole number"));
                }
            },
            (_, value) => value,
        };
        let (Some(signs), Some(n)) = (&field.signs, value.as_i64()) else {
            return Ok(Some(value));
        };
        let sign = event_type
            .and_then(|t| signs.get(t))
            .copied()
            .unwrap_or(Sign::Any);
        let n = match sign {
            Sign::Any => n,
            Sign::Positive if n > 0 => n,
            // i64::MIN has no positive counterpart: out of range, whatever the sign.
            Sign::Negative if n < 0 => n.checked_neg().ok_or_else(|| {
                format!(
                    "{source}: out of range (|{source}| <= {})",
                    stockflow_core::limits::QUANTITY_ABS_MAX
                )
            })?,
            Sign::Positive | Sign::Negative => {
                let want = if sign == Sign::Positive {
                    "positive"
                } else {
                    "negative"
                };
                return Err(format!(
                    "{source}: a {} must have a {want} {source}, got {n}",
                    event_type.unwrap_or("?")
                ));
            }
        };
        Ok(Some(Value::from(n)))
    }

    /// The source of a canonical field, for rewriting the canonical
    /// validator's reasons ("quantity: ..." → "quantityDelta: ..."); paths
    /// into an `each` element keep their `item.` prefix.
    pub fn source_of(&self, canonical: &str) -> Option<String> {
        let f = &self.fields;
        let field = match canonical {
            "eventId" => Some(&f.event_id),
            "eventType" => Some(&f.event_type),
            "sku" => Some(&f.sku),
            "locationId" => Some(&f.location_id),
            "quantity" => Some(&f.quantity),
            "timestamp" => f.timestamp.as_ref(),
            "toLocationId" => f.to_location_id.as_ref(),
            "sourceSystem" => f.source_system.as_ref(),
            "correlationId" => f.correlation_id.as_ref(),
            _ => None,
        }?;
        Some(match &field.path {
            Some(path) => path.clone(),
            None => describe(field, canonical),
        })
    }
}

fn resolve(field: &Field, cx: &Context<'_>) -> Result<Option<Value>, String> {
    if let Some(value) = field.param.as_ref().and_then(|p| cx.params.get(p)) {
        return Ok(Some(Value::String(value.clone())));
    }
    if let Some(path) = &field.path {
        match at(path, cx) {
            Some(Value::Null) | None => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(value) => return Ok(Some(value.clone())),
        }
    }
    if let Some(template) = &field.template {
        return render(template, cx).map(|s| Some(Value::String(s)));
    }
    Ok(field.constant.clone().map(Value::String))
}

/// Names a field's source in a reason: its path, else how it is made.
fn describe(field: &Field, canonical: &str) -> String {
    match (&field.path, &field.template, &field.constant) {
        (Some(path), _, _) => path.trim_start_matches("item.").to_owned(),
        (None, Some(template), _) => format!("{canonical} (from template {template:?})"),
        (None, None, Some(constant)) => format!("{canonical} (constant {constant:?})"),
        (None, None, None) => canonical.to_owned(),
    }
}

fn at<'a>(path: &str, cx: &Context<'a>) -> Option<&'a Value> {
    match (path.strip_prefix("item."), cx.item) {
        (Some(rest), Some(item)) => lookup(item, rest),
        _ => lookup(cx.message, path),
    }
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// Fills a derived eventId's template. So that two messages never derive
/// the same id, every part but the last has `%` and `:` (the built-in
/// templates' separator) percent-encoded: `{orderId}:{productId}` of
/// `col:x`, `P9` is `col%3Ax:P9`, never `col`, `x:P9`'s `col:x:P9`. The
/// last part needs no encoding (everything before it is unambiguous), so
/// a time stays as it is; and a part without `%` or `:` is as it always
/// was, so re-sending what an earlier version took is still a duplicate.
fn render(template: &str, cx: &Context<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let last = template.rfind('{');
    let mut rest = template;
    let mut offset = 0;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("template {template:?} has an unclosed {{"))?;
        let name = &rest[open + 1..open + close];
        let encode = Some(offset + open) != last;
        let mut push = |text: &str| match encode {
            true => push_encoded(&mut out, text),
            false => out.push_str(text),
        };
        match name {
            "index" => push(&cx.index.to_string()),
            path => match at(path, cx) {
                Some(Value::String(s)) if !s.is_empty() => push(s),
                Some(Value::Number(n)) => push(&n.to_string()),
                Some(Value::Bool(b)) => push(&b.to_string()),
                _ => {
                    return Err(format!(
                        "{}: required (the eventId is derived from it)",
                        path.trim_start_matches("item.")
                    ))
                }
            },
        }
        offset += open + close + 1;
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `text` with `%` and `:` percent-encoded (see [`render`]).
fn push_encoded(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
}

/// Gives a zone-less time (or date) the offset `offset`; times that carry
/// their own offset pass unchanged.
fn with_offset(value: &str, offset: &str) -> Result<String, String> {
    if DateTime::parse_from_rfc3339(value).is_ok() {
        return Ok(value.to_owned());
    }
    let naive = NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f"))
        .or_else(|_| {
            NaiveDate::parse_from_str(value, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists"))
        })
        .map_err(|_| {
            let value = stockflow_core::parse::quote(value);
            format!("{value} is not a date-time (RFC 3339, or without a zone)")
        })?;
    let text = format!("{}{offset}", naive.format("%Y-%m-%dT%H:%M:%S%.f"));
    DateTime::parse_from_rfc3339(&text)
        .map(|_| text)
        .map_err(|_| format!("{offset:?} is not a UTC offset like Z or +02:00"))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::{render, with_offset, Context};

    #[test]
    fn derived_ids_never_collide_and_plain_parts_derive_what_they_always_did() {
        let params = Default::default();
        let id = |message: serde_json::Value| {
            let cx = Context {
                message: &message,
                item: None,
                index: 0,
                params: &params,
            };
            render("order-line:{orderId}:{productId}", &cx).unwrap()
        };
        let a = id(serde_json::json!({"orderId": "col:x", "productId": "P9"}));
        let b = id(serde_json::json!({"orderId": "col", "productId": "x:P9"}));
        assert_ne!(a, b);
        assert_eq!(a, "order-line:col%3Ax:P9");
        assert_eq!(b, "order-line:col:x:P9");
        // The escape character is escaped too, so no id can pose as another.
        let c = id(serde_json::json!({"orderId": "col%3Ax", "productId": "P9"}));
        assert_eq!(c, "order-line:col%253Ax:P9");
        // Parts without % or : are as an earlier version derived them.
        let d = id(serde_json::json!({"orderId": "o-1", "productId": 42}));
        assert_eq!(d, "order-line:o-1:42");
        let cx_time =
            serde_json::json!({"storeName": "S:1", "id": 7, "timestamp": "2020-10-13T16:48:35"});
        let cx = Context {
            message: &cx_time,
            item: None,
            index: 0,
            params: &params,
        };
        let store = render("store-item:{storeName}:{id}:{timestamp}", &cx).unwrap();
        assert_eq!(store, "store-item:S%3A1:7:2020-10-13T16:48:35");
    }

    #[test]
    fn zone_less_times_get_the_assumed_offset_and_zoned_ones_keep_theirs() {
        let cases = [
            (
                "2020-10-13T16:48:35.455027",
                "Z",
                "2020-10-13T16:48:35.455027Z",
            ),
            ("2020-10-13 16:48:35", "+02:00", "2020-10-13T16:48:35+02:00"),
            ("2026-11-01", "Z", "2026-11-01T00:00:00Z"),
            (
                "2026-11-01T10:00:00-05:00",
                "Z",
                "2026-11-01T10:00:00-05:00",
            ),
        ];
        for (input, offset, expected) in cases {
            assert_eq!(
                with_offset(input, offset).as_deref(),
                Ok(expected),
                "{input}"
            );
        }
        assert!(with_offset("13/10/2020", "Z").is_err());
        assert!(with_offset("2026-11-01T10:00:00", "CET").is_err());
    }
}
