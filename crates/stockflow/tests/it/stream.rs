//! The live stream over a real socket: filters, ids, resume with
//! Last-Event-ID, and an explicit gap when the id is too old.

use std::time::Duration;

use serde_json::Value;

use crate::{event, post, send_event, start};

/// One parsed SSE event: (id, event name, data).
pub type Sse = (String, String, Value);

pub struct Reader {
    response: reqwest::Response,
    buffer: String,
}

impl Reader {
    pub async fn open(url: &str, last: Option<&str>) -> Reader {
        let mut request = reqwest::Client::new().get(url);
        if let Some(id) = last {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Reader {
            response,
            buffer: String::new(),
        }
    }

    /// The next event that is not a keep-alive comment.
    pub async fn next(&mut self) -> Sse {
        self.try_next().await.expect("the stream stays open")
    }

    /// The next event, or `None` once the stream has ended (the server
    /// stopped or died).
    pub async fn try_next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut name, mut data) =
                    (String::new(), String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    }
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    }
                    if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((id, name, serde_json::from_str(&data).unwrap()));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.response.chunk())
                .await
                .expect("an event within 5 s");
            match chunk {
                Ok(Some(chunk)) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_filtered_changes_and_resume_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let mut stock = Reader::open(&format!("{url}/v1/stream?sku=LIVE&kinds=stock"), None).await;
    let mut alerts =
        Reader::open(&format!("{url}/v1/stream?kinds=alerts&locationId=S1"), None).await;

    send_event(&url, "other", "RECEIPT", "ELSEWHERE", "S1", 50).await;
    send_event(&url, "l1", "RECEIPT", "LIVE", "S1", 12).await;
    let (first_id, name, data) = stock.next().await;
    assert_eq!(name, "stock");
    assert_eq!(
        (
            data["sku"].as_str(),
            data["onHand"].as_i64(),
            data["eventId"].as_str()
        ),
        (Some("LIVE"), Some(12), Some("l1"))
    );
    send_event(&url, "l2", "SALE", "LIVE", "S1", 5).await;
    let (second_id, _, data) = stock.next().await;
    assert_eq!(data["available"], 7);
    let (_, name, alert) = alerts.next().await;
    assert_eq!(
        (name.as_str(), alert["kind"].as_str(), alert["sku"].as_str()),
        ("alerts", Some("LOW_STOCK"), Some("LIVE"))
    );
    drop(stock);

    // Missed while away: delivered on reconnect, in order, then live.
    send_event(&url, "l3", "SALE", "LIVE", "S1", 1).await;
    send_event(&url, "l4", "SALE", "LIVE", "S1", 1).await;
    let mut resumed = Reader::open(
        &format!("{url}/v1/stream?sku=LIVE&kinds=stock"),
        Some(&second_id),
    )
    .await;
    let got: Vec<String> = [resumed.next().await, resumed.next().await]
        .iter()
        .map(|(_, _, d)| d["eventId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ["l3", "l4"]);
    send_event(&url, "l5", "RETURN", "LIVE", "S1", 1).await;
    assert_eq!(resumed.next().await.2["eventId"], "l5");
    assert_ne!(first_id, second_id);

    // An id from another run (or long gone) is answered with an explicit gap.
    let mut stale = Reader::open(&format!("{url}/v1/stream?sku=LIVE"), Some("1-5")).await;
    let (_, name, data) = stale.next().await;
    assert_eq!(name, "gap");
    assert!(data["message"].as_str().unwrap().contains("REST API"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_gets_resync_and_never_slows_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let mut slow = Reader::open(&format!("{url}/v1/stream?kinds=stock"), None).await;
    // 40k changes while it reads nothing: far more than its buffer and the
    // socket's.
    for batch in 0..40 {
        let body: Vec<String> = (0..1000)
            .map(|i| {
                event(
                    &format!("f{batch}-{i}"),
                    "RECEIPT",
                    &format!("F{i}"),
                    "S1",
                    1,
                )
            })
            .collect();
        let (status, _) = post(&url, "application/x-ndjson", body.join("\n")).await;
        assert_eq!(status, 200, "ingest is not held up by the subscriber");
    }
    let mut seen = 0;
    loop {
        let (_, name, data) = slow.next().await;
        if name == "resync" {
            assert!(data["message"].as_str().unwrap().contains("Last-Event-ID"));
            break;
        }
        seen += 1;
        assert!(
            seen < 40_000,
            "the slow subscriber was never told to resync"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_carries_the_same_messages_and_resumes() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as Frame;

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let ws = url.replace("http://", "ws://");
    async fn next(
        socket: &mut (impl futures_util::Stream<Item = Result<Frame, tokio_tungstenite::tungstenite::Error>>
                  + Unpin),
    ) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), socket.next())
                .await
                .expect("a frame within 5 s")
                .unwrap()
                .unwrap();
            if let Frame::Text(text) = frame {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("{ws}/v1/ws?sku=WS&kinds=stock"))
            .await
            .unwrap();
    send_event(&url, "w1", "RECEIPT", "OTHER", "S1", 5).await;
    send_event(&url, "w2", "RECEIPT", "WS", "S1", 7).await;
    let first = next(&mut socket).await;
    assert_eq!(
        (
            first["event"].as_str(),
            first["data"]["eventId"].as_str(),
            first["data"]["onHand"].as_i64()
        ),
        (Some("stock"), Some("w2"), Some(7))
    );
    drop(socket);
    send_event(&url, "w3", "SALE", "WS", "S1", 2).await;
    let id = first["id"].as_str().unwrap();
    let (mut resumed, _) =
        tokio_tungstenite::connect_async(format!("{ws}/v1/ws?sku=WS&kinds=stock&lastEventId={id}"))
            .await
            .unwrap();
    assert_eq!(
        next(&mut resumed).await["data"]["eventId"],
        "w3",
        "missed while away"
    );
    let (mut stale, _) = tokio_tungstenite::connect_async(format!("{ws}/v1/ws?lastEventId=1-1"))
        .await
        .unwrap();
    assert_eq!(next(&mut stale).await["event"], "gap");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_pushed_when_placed_and_when_their_hold_expires() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    send_event(&url, "so-r", "RECEIPT", "SO", "S1", 5).await;
    let mut reader = Reader::open(&format!("{url}/v1/stream?kinds=orders"), None).await;
    let order = serde_json::json!({"orderId": "so-1", "lines": [{"sku": "SO", "locationId": "S1", "quantity": 2}], "holdSeconds": 1});
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/orders"))
        .json(&order)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, name, data) = reader.next().await;
    assert_eq!(
        (
            name.as_str(),
            data["orderId"].as_str(),
            data["status"].as_str()
        ),
        ("orders", Some("so-1"), Some("reserved"))
    );
    // Nobody touches it: the engine's timer expires the hold and says so.
    let (_, name, data) = reader.next().await;
    assert_eq!(
        (
            name.as_str(),
            data["orderId"].as_str(),
            data["status"].as_str()
        ),
        ("orders", Some("so-1"), Some("expired")),
        "{data}"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_keeps_the_stream_resumable_and_a_lost_journal_says_gap() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let mut reader = Reader::open(&format!("{url}/v1/stream?sku=GR&kinds=stock"), None).await;
    send_event(&url, "gr-1", "RECEIPT", "GR", "S1", 5).await;
    let (last, _, _) = reader.next().await;
    drop(reader);
    // Missed while away, then the server restarts.
    send_event(&url, "gr-2", "SALE", "GR", "S1", 1).await;
    server.stop().await.unwrap();

    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let mut resumed =
        Reader::open(&format!("{url}/v1/stream?sku=GR&kinds=stock"), Some(&last)).await;
    send_event(&url, "gr-3", "SALE", "GR", "S1", 1).await;
    let got: Vec<(String, String)> = [resumed.next().await, resumed.next().await]
        .into_iter()
        .map(|(id, _, d)| (id, d["eventId"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        (got[0].1.as_str(), got[1].1.as_str()),
        ("gr-2", "gr-3"),
        "no gap across a graceful restart"
    );
    assert_eq!(
        got[0].0.split('-').next(),
        last.split('-').next(),
        "the same run of ids continues"
    );
    let after_restart = got[1].0.clone();
    drop(resumed);
    server.stop().await.unwrap();

    // A lost journal (a disk replaced, say): a client from before hears of
    // a gap. (A crash loses nothing: crash::sigkill_mid_stream_….)
    std::fs::remove_dir_all(dir.path().join("stream")).unwrap();
    let server = start(dir.path(), |_| {}).await;
    let mut stale = Reader::open(
        &format!("{}/v1/stream?sku=GR&kinds=stock", server.url()),
        Some(&after_restart),
    )
    .await;
    assert_eq!(stale.next().await.1, "gap");
    server.stop().await.unwrap();
}

/// What [`newest_totals`] read: the newest message per key.
type Newest = std::collections::BTreeMap<(String, String), Value>;

/// Reads `reader` until it is quiet for 1.5 s: the newest message of each
/// key (`sku` of items, `locationId` of locations), how many came, and
/// the last id.
async fn newest_totals(reader: &mut Reader) -> (Newest, usize, String) {
    let mut newest = std::collections::BTreeMap::new();
    let (mut count, mut last) = (0, String::new());
    while let Ok(Some((id, name, data))) =
        tokio::time::timeout(Duration::from_millis(1500), reader.try_next()).await
    {
        let key = match name.as_str() {
            "items" => data["sku"].as_str().unwrap().to_owned(),
            "locations" => data["locationId"].as_str().unwrap().to_owned(),
            other => panic!("only totals were asked for, got {other}: {data}"),
        };
        count += 1;
        last = id;
        newest.insert((name, key), data);
    }
    (newest, count, last)
}

/// The fields a totals message shares with the REST roll-ups.
fn totals_of(value: &Value) -> Vec<i64> {
    [
        "onHand",
        "reserved",
        "available",
        "inTransit",
        "levels",
        "atZero",
        "belowThreshold",
    ]
    .iter()
    .map(|f| {
        value[*f]
            .as_i64()
            .unwrap_or_else(|| panic!("{f} in {value}"))
    })
    .collect()
}

/// Item and location totals are pushed coalesced (a handful of messages
/// for thousands of events, the newest per key per cycle), and the
/// newest of each key is what GET /v1/items/{sku} and GET
/// /v1/locations/{id} say; a sku filter gets that SKU's alone; a product's
/// safety stock and a location's threshold move them; and resuming them
/// across a restart (which does not rebuild them) is a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_and_location_totals_are_pushed_coalesced_and_match_the_roll_ups() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let mut all = Reader::open(&format!("{url}/v1/stream?kinds=items,locations"), None).await;
    let mut one = Reader::open(&format!("{url}/v1/stream?kinds=items&sku=TOT-1"), None).await;
    let started = std::time::Instant::now();
    let (bodies, per_body) = (20, 100);
    for round in 0..bodies {
        let body: Vec<String> = (0..per_body)
            .map(|i| {
                let n = round * per_body + i;
                let kind = if n % 3 == 0 { "SALE" } else { "RECEIPT" };
                serde_json::json!({"eventId": format!("tot-{n}"), "eventType": kind,
                    "sku": format!("TOT-{}", n % 3), "locationId": format!("L{}", n % 4),
                    "quantity": 1 + n % 5})
                .to_string()
            })
            .collect();
        let (status, receipt) = post(&url, "application/x-ndjson", body.join("\n")).await;
        assert_eq!(status, 200, "{receipt}");
    }
    let cycles = started.elapsed().as_millis() as usize / 250 + 2;
    let (newest, count, _) = newest_totals(&mut all).await;
    let events = bodies * per_body;
    // 3 SKUs and 4 locations: at most one message per key per cycle.
    assert!(
        count <= 7 * cycles,
        "{count} messages for {events} events over {cycles} cycles"
    );
    assert_eq!(newest.len(), 7, "{newest:?}");
    for ((kind, key), data) in &newest {
        let rest = match kind.as_str() {
            "items" => crate::get(&url, &format!("/v1/items/{key}")).await,
            _ => crate::get(&url, &format!("/v1/locations/{key}")).await,
        };
        assert_eq!(rest.0, 200, "{}", rest.1);
        assert_eq!(
            totals_of(data),
            totals_of(&rest.1["totals"]),
            "{kind} {key}"
        );
    }
    let (only, _, _) = newest_totals(&mut one).await;
    let keys: Vec<_> = only.keys().collect();
    assert_eq!(keys, [&("items".to_owned(), "TOT-1".to_owned())]);
    assert_eq!(
        only.values().next(),
        newest.get(&("items".into(), "TOT-1".into()))
    );

    // A safety stock of 2 holds back 2 units at each of its 4 locations.
    let before = newest[&("items".to_owned(), "TOT-1".to_owned())]["available"]
        .as_i64()
        .unwrap();
    let response = reqwest::Client::new()
        .put(format!("{url}/v1/products/TOT-1"))
        .json(&serde_json::json!({"name": "Totals", "safetyStock": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (moved, _, last) = newest_totals(&mut one).await;
    let after = &moved[&("items".to_owned(), "TOT-1".to_owned())];
    assert_eq!(after["available"].as_i64(), Some(before - 8), "{after}");
    // A location's low-stock threshold moves the low counts of the SKUs
    // there: 1,000 makes every level of L2 low.
    let response = reqwest::Client::new()
        .put(format!("{url}/v1/locations/L2"))
        .json(&serde_json::json!({"name": "Two", "type": "store", "lowStockThreshold": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (moved, _, _) = newest_totals(&mut all).await;
    for sku in ["TOT-0", "TOT-1", "TOT-2"] {
        let pushed = &moved[&("items".to_owned(), sku.to_owned())];
        let (_, item) = crate::get(&url, &format!("/v1/items/{sku}")).await;
        assert_eq!(totals_of(pushed), totals_of(&item["totals"]), "{sku}");
    }
    server.stop().await.unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let mut resumed = Reader::open(
        &format!("{url}/v1/stream?kinds=items&sku=TOT-1"),
        Some(&last),
    )
    .await;
    let (_, name, _) = resumed.next().await;
    assert_eq!(name, "gap", "totals are not rebuilt by a restart");
    server.stop().await.unwrap();
}

/// A flood of SKUs never holds a location's totals back: 10,000 SKUs
/// moved at once take several cycles (2,048 keys each at most), and the
/// location they share comes within the first of them, not after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_skus_does_not_hold_location_totals_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), |_| {}).await;
    let url = server.url();
    let mut reader = Reader::open(&format!("{url}/v1/stream?kinds=items,locations"), None).await;
    let skus = 10_000;
    let body: Vec<String> = (0..skus)
        .map(|n| {
            serde_json::json!({"eventId": format!("flood-{n}"), "eventType": "RECEIPT",
                "sku": format!("FLOOD-{n}"), "locationId": "FLOOD-LOC", "quantity": 1})
            .to_string()
        })
        .collect();
    let (status, receipt) = post(&url, "application/x-ndjson", body.join("\n")).await;
    assert_eq!(status, 200, "{receipt}");
    let mut items = 0;
    loop {
        let (_, name, data) = reader.next().await;
        if name == "locations" {
            assert_eq!(data["locationId"], "FLOOD-LOC");
            break;
        }
        items += 1;
    }
    assert!(
        items < skus / 2,
        "the location came after {items} of the {skus} SKUs' totals"
    );
    server.stop().await.unwrap();
}
