//! Body forms and validation reasons.

use stockflow_core::{parse_body, BodyError, BodyFormat};

/// Parses a one-event JSON body and returns the rejection reason.
fn reason(event: &str) -> String {
    let parsed = parse_body(event.as_bytes(), BodyFormat::Json, 10).unwrap();
    assert_eq!(parsed.batch.len(), 0, "{event} should be rejected");
    assert_eq!(parsed.rejected[0].raw, event, "raw payload is kept exactly");
    parsed.rejected[0].reason.clone()
}

fn with(field: &str) -> String {
    format!(r#"{{"eventId":"e","eventType":"RECEIPT","sku":"A","locationId":"S",{field}}}"#)
}

#[test]
fn a_reason_quotes_at_most_about_200_bytes_of_a_bad_value() {
    let huge = "X".repeat(15 << 20);
    let event = format!(
        r#"{{"eventId":"e","eventType":"{huge}","sku":"A","locationId":"S","quantity":1}}"#
    );
    let got = reason(&event);
    assert!(got.len() < 400, "{} bytes", got.len());
    assert!(
        got.starts_with("eventType: unknown type \"XXX"),
        "{}",
        &got[..60]
    );
    assert!(
        got.contains(&format!("… ({} bytes)", huge.len())),
        "says how long it was"
    );
    let multibyte = format!(
        r#"{{"eventId":"e","eventType":"SALE","sku":"A","locationId":"S","quantity":1,"timestamp":"{}"}}"#,
        "é".repeat(500)
    );
    assert!(
        reason(&multibyte).len() < 400,
        "cut on a character boundary, still short"
    );
}

#[test]
fn every_broken_rule_is_named_in_the_reason() {
    let long = "x".repeat(129);
    let cases = [
        (with(r#""quantity":1.5"#), "quantity: must be a JSON integer, not a decimal"),
        (with(r#""quantity":"5""#), "quantity: must be a JSON integer, not a string"),
        (with(r#""quantity":0"#), "quantity: RECEIPT must be > 0"),
        (with(r#""quantity":-3"#), "quantity: RECEIPT must be > 0"),
        (with(r#""quantity":99999999999999999999"#), "quantity: out of range"),
        (with(r#""quantity":-9223372036854775808"#), "quantity: out of range"),
        (r#"{"eventId":"a\u0000b","eventType":"SALE","sku":"A","locationId":"S","quantity":1}"#.into(), "eventId: must not contain a control character (U+0000 at character 1)"),
        (r#"{"eventId":"e","eventType":"SALE","sku":"A\u202eB","locationId":"S","quantity":1}"#.into(), "sku: must not contain a bidirectional-text control (U+202E at character 1)"),
        (r#"{"eventId":"e","eventType":"SALE","sku":"A","locationId":"   ","quantity":1}"#.into(), "locationId: must not be only white space"),
        (r#"{"eventId":"e","eventType":"SALE","sku":"A","locationId":"S","quantity":1,"correlationId":""}"#.into(), "correlationId: must not be empty"),
        (r#"{"eventId":"e","eventType":"SALE","sku":"A","locationId":"S","quantity":1,"correlationId":"o\n1"}"#.into(), "correlationId: must not contain a control character"),
        (with(r#""quantity":1,"timestamp":"yesterday""#), "timestamp: \"yesterday\" is not an RFC 3339"),
        (with(r#""quantity":1,"toLocationId":"B""#), "toLocationId: only allowed on TRANSFER_OUT"),
        (with(r#""quantity":1,"sourceSystem":7"#), "sourceSystem: must be a string, not an integer"),
        (with(r#""quantity":1,"quantity":2"#), "quantity: appears more than once"),
        (r#"{"eventId":"e","eventType":"COUNT","sku":"A","locationId":"S","quantity":-1}"#.into(), "quantity: COUNT must be >= 0"),
        (r#"{"eventId":"e","eventType":"ADJUSTMENT","sku":"A","locationId":"S","quantity":0}"#.into(), "quantity: ADJUSTMENT must not be 0"),
        (r#"{"eventId":"e","eventType":"RESTOCK","sku":"A","locationId":"S","quantity":1}"#.into(), "eventType: unknown type \"RESTOCK\""),
        (r#"{"eventType":"SALE","sku":"A","locationId":"S","quantity":1}"#.into(), "eventId: required"),
        (r#"{"eventId":"","eventType":"SALE","sku":"A","locationId":"S","quantity":1}"#.into(), "eventId: must not be empty"),
        (format!(r#"{{"eventId":"{long}","eventType":"SALE","sku":"A","locationId":"S","quantity":1}}"#), "eventId: longer than 128"),
        (format!(r#"{{"eventId":"e","eventType":"SALE","sku":"{long}","locationId":"S","quantity":1}}"#), "sku: longer than 128"),
        (r#"{"eventId":"e","eventType":"SALE","sku":"A","quantity":1}"#.into(), "locationId: required"),
        (r#"{"eventId":"e","eventType":"TRANSFER_OUT","sku":"A","locationId":"S","toLocationId":"S","quantity":1}"#.into(), "toLocationId: must differ"),
        (with(r#""quantity":1,"holdSeconds":60"#), "holdSeconds: only allowed on a RESERVATION with a correlationId"),
        (r#"{"eventId":"e","eventType":"RESERVATION","sku":"A","locationId":"S","quantity":1,"holdSeconds":60}"#.into(), "holdSeconds: only allowed on a RESERVATION with a correlationId"),
        (r#"{"eventId":"e","eventType":"RESERVATION","sku":"A","locationId":"S","quantity":1,"correlationId":"o","holdSeconds":604801}"#.into(), "holdSeconds: must be a whole number from 1 to 604800"),
        (r#"{"eventId":"e","eventType":"RESERVATION","sku":"A","locationId":"S","quantity":1,"correlationId":"o","holdSeconds":"60"}"#.into(), "holdSeconds: must be a whole number"),
    ];
    for (event, expected) in cases {
        let got = reason(&event);
        assert!(
            got.starts_with(expected),
            "{event}\n  expected reason starting {expected:?}\n  got {got:?}"
        );
    }
}

#[test]
fn ids_are_measured_in_characters_not_bytes() {
    let id = "é".repeat(128);
    let body = format!(
        r#"{{"eventId":"{id}","eventType":"SALE","sku":"A","locationId":"S","quantity":1}}"#
    );
    assert_eq!(
        parse_body(body.as_bytes(), BodyFormat::Json, 1)
            .unwrap()
            .batch
            .len(),
        1
    );
}

#[test]
fn arrays_keep_valid_events_and_report_each_invalid_one_by_index() {
    let body = format!(
        r#"[{}, 42, {}, {{"eventId":"bad","eventType":"SALE"}}]"#,
        with(r#""quantity":1"#),
        with(r#""quantity":2"#).replace(r#""e""#, r#""e2""#)
    );
    let parsed = parse_body(body.as_bytes(), BodyFormat::Json, 10).unwrap();
    assert_eq!(parsed.batch.len(), 2);
    let rejected: Vec<_> = parsed
        .rejected
        .iter()
        .map(|r| (r.index, r.event_id.clone()))
        .collect();
    assert_eq!(rejected, vec![(1, None), (3, Some("bad".into()))]);
    assert_eq!(
        parsed.rejected[0].reason,
        "event must be a JSON object, not a number"
    );
}

#[test]
fn ndjson_rejects_a_broken_line_and_keeps_the_rest() {
    let body = format!(
        "{}\n\n{{not json\n{}\n",
        with(r#""quantity":1"#),
        with(r#""quantity":2"#).replace(r#""e""#, r#""f""#)
    );
    let parsed = parse_body(body.as_bytes(), BodyFormat::Ndjson, 10).unwrap();
    assert_eq!(parsed.batch.len(), 2);
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].index, 1, "blank lines are not counted");
    assert!(parsed.rejected[0].reason.starts_with("invalid JSON"));
    assert_eq!(parsed.rejected[0].raw, "{not json");
}

#[test]
fn whole_body_problems_are_errors_not_rejections() {
    assert!(matches!(
        parse_body(b"{broken", BodyFormat::Json, 10),
        Err(BodyError::Malformed(_))
    ));
    assert!(matches!(
        parse_body(b"[1,", BodyFormat::Json, 10),
        Err(BodyError::Malformed(_))
    ));
    assert_eq!(
        parse_body(b"\"text\"", BodyFormat::Json, 10).unwrap_err(),
        BodyError::WrongShape
    );
    assert!(matches!(
        parse_body(b"  ", BodyFormat::Json, 10),
        Err(BodyError::Malformed(_))
    ));
    let three = format!("[{0},{0},{0}]", with(r#""quantity":1"#));
    assert_eq!(
        parse_body(three.as_bytes(), BodyFormat::Json, 2).unwrap_err(),
        BodyError::TooManyEvents { max: 2 }
    );
    assert_eq!(parse_body(b"[]", BodyFormat::Json, 2).unwrap().total(), 0);
}

#[test]
fn escaped_strings_are_unescaped() {
    let body =
        r#"{"eventId":"e\u0031","eventType":"SALE","sku":"A\"B","locationId":"S","quantity":1}"#;
    let parsed = parse_body(body.as_bytes(), BodyFormat::Json, 1).unwrap();
    let event = parsed.batch.get(0);
    assert_eq!((event.event_id, event.sku), ("e1", "A\"B"));
}
