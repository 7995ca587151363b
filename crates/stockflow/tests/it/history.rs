//! Per-level history and as-of answers, checked against a replay of the
//! real log up to each instant, before and after restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use stockflow_core::{Engine, EngineConfig, Timestamp};
use stockflow_embedded::record::CommitGroup;

use crate::{get, post, start};

fn ev(id: &str, kind: &str, sku: &str, location: &str, quantity: i64, at: &str) -> String {
    format!(
        r#"{{"eventId":"{id}","eventType":"{kind}","sku":"{sku}","locationId":"{location}","quantity":{quantity},"timestamp":"{at}"}}"#
    )
}

/// (onHand, reserved, inTransit) of every level after replaying the log's
/// records committed at or before `at`.
fn replay_until(
    data_dir: &std::path::Path,
    at: Timestamp,
) -> BTreeMap<(String, String), (i64, i64, i64)> {
    let mut engine = Engine::new(EngineConfig::default());
    for item in stockflow_log::read_records(&data_dir.join("log"), 0).unwrap() {
        let (_, payload) = item.unwrap();
        let group = CommitGroup::decode(&payload).unwrap();
        if group.now > at {
            break;
        }
        let mut batches = group.batches;
        let (catalog, orders) = (&group.catalog, &group.orders);
        engine.apply_record(
            catalog,
            &mut batches,
            orders,
            group.now,
            group.event_hold_ns,
        );
    }
    crate::levels_of(&engine)
}

async fn as_of_state(
    url: &str,
    skus: &[&str],
    at: &str,
) -> BTreeMap<(String, String), (i64, i64, i64)> {
    let mut state = BTreeMap::new();
    for sku in skus {
        let (status, answer) = get(
            url,
            &format!("/v1/stock/{sku}?asOf={}", at.replace('+', "%2B")),
        )
        .await;
        if status == 404 {
            continue;
        }
        assert_eq!(status, 200, "{answer}");
        for level in answer["locations"].as_array().unwrap() {
            state.insert(
                (
                    sku.to_string(),
                    level["locationId"].as_str().unwrap().to_owned(),
                ),
                (
                    level["onHand"].as_i64().unwrap(),
                    level["reserved"].as_i64().unwrap(),
                    level["inTransit"].as_i64().unwrap(),
                ),
            );
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_answers_equal_a_replay_of_the_log_up_to_each_instant() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |c| c.checkpoint_events = 7).await;
    let url = server.url();
    let steps = [
        vec![
            ev("h1", "RECEIPT", "A", "S1", 10, "2026-11-01T10:00:00Z"),
            ev("h2", "RECEIPT", "B", "S1", 4, "2026-11-01T10:00:00Z"),
        ],
        vec![
            ev("h3", "SALE", "A", "S1", 3, "2026-11-01T11:00:00Z"),
            ev("h4", "RESERVATION", "A", "S1", 50, "2026-11-01T11:00:00Z"),
        ],
        vec![
            ev("h5", "COUNT", "A", "S1", 20, "2026-11-01T10:30:00Z"),
            ev("h6", "RECEIPT", "A", "S1", 5, "2026-11-01T10:10:00Z"),
        ],
        vec![format!(
            r#"{{"eventId":"h7","eventType":"TRANSFER_OUT","sku":"A","locationId":"S1","quantity":2,"toLocationId":"S2","timestamp":"2026-11-01T12:00:00Z"}}"#
        )],
        vec![
            ev("h8", "RESERVATION", "A", "S1", 4, "2026-11-01T12:30:00Z"),
            ev("h9", "TRANSFER_IN", "A", "S2", 2, "2026-11-01T13:00:00Z"),
        ],
    ];
    let mut instants = Vec::new();
    for step in &steps {
        let (status, _) = post(&url, "application/x-ndjson", step.join("\n")).await;
        assert_eq!(status, 200);
        // Strictly after this group's server time and before the next one's.
        tokio::time::sleep(Duration::from_millis(5)).await;
        instants.push(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let (_, history) = get(&url, "/v1/stock/A/S1/history").await;
    let events: Vec<(String, String)> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["eventId"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("h8", "applied"),
        ("h7", "applied"),
        ("h6", "absorbed"),
        ("h5", "applied"),
        ("h4", "insufficient_stock"),
        ("h3", "applied"),
        ("h1", "applied"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(
        events, expected,
        "newest first, rejected and absorbed ones marked"
    );
    assert_eq!(
        history["events"][0]["level"],
        json!({"onHand": 15, "reserved": 4, "available": 11, "inTransit": 0})
    );
    let (_, s2) = get(&url, "/v1/stock/A/S2/history").await;
    assert_eq!(s2["events"][1]["part"], "in_transit");
    assert_eq!(s2["events"][1]["level"]["inTransit"], 2);

    let (_, first_page) = get(&url, "/v1/stock/A/S1/history?limit=3").await;
    assert_eq!(first_page["events"].as_array().unwrap().len(), 3);
    let before = first_page["nextBefore"].as_str().unwrap();
    let (_, second_page) = get(
        &url,
        &format!("/v1/stock/A/S1/history?limit=3&before={before}"),
    )
    .await;
    assert_eq!(second_page["events"][0]["eventId"], "h5");
    // A cursor no page of this level starts at is not found; one that is
    // not a cursor is a bad request.
    let (status, beyond) = get(&url, "/v1/stock/A/S1/history?before=999999").await;
    assert_eq!(status, 404, "{beyond}");
    for bad in ["0", "x1", "%2B1"] {
        let (status, _) = get(&url, &format!("/v1/stock/A/S1/history?before={bad}")).await;
        assert_eq!(status, 400, "before={bad}");
    }

    let (_, explained) = get(
        &url,
        &format!("/v1/stock/A/S1?asOf={}", instants[1].replace('+', "%2B")),
    )
    .await;
    assert_eq!(explained["lastEventId"], "h4", "{explained}");
    let (status, _) = get(&url, "/v1/stock/A/S2?asOf=2020-01-01T00:00:00Z").await;
    assert_eq!(status, 404, "S2 did not exist yet");
    server.stop().await.unwrap();

    // Live answers come from history the checkpoints (every 7 events) kept
    // and the log replay rewrote; then from a replay of the whole log.
    for replay_everything in [false, true] {
        if replay_everything {
            std::fs::remove_dir_all(dir.path().join("checkpoints")).unwrap();
        }
        let server = start(dir.path(), |_| {}).await;
        for at in &instants {
            let expected = replay_until(dir.path(), Timestamp::parse_rfc3339(at).unwrap());
            let answered = as_of_state(&server.url(), &["A", "B"], at).await;
            assert_eq!(answered, expected, "as of {at}, replay={replay_everything}");
        }
        let (_, again) = get(&server.url(), "/v1/stock/A/S1/history").await;
        assert_eq!(
            again["events"], history["events"],
            "history is rebuilt exactly once"
        );
        server.stop().await.unwrap();
    }
}
