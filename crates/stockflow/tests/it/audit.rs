//! Who changed what: every write records the name of the token that made
//! it, and the answers show it. One walk through the writes a user makes
//! (events, an order and its cancel, a catalog change, a dead letter
//! replayed corrected) checked against who made each, run on an embedded
//! server with tokens, on one without (everyone is `anonymous`), and on a
//! Kafka-mode cluster (see `kafka::access`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stockflow_service::auth::Role;

/// The writers of the walk: a till (ingest), a web shop (orders) and an
/// operator (admin), each with `read` too.
pub const WRITERS: [(&str, &[Role]); 3] = [
    ("till", &[Role::Ingest, Role::Read]),
    ("shop", &[Role::Orders, Role::Read]),
    ("ops", &[Role::Admin, Role::Orders, Role::Read]),
];

/// A writer: the secret it sends (none on an open server) and the name
/// the server should record for it.
#[derive(Clone)]
pub struct Writer {
    pub secret: Option<String>,
    pub name: String,
}

/// The server under test.
pub struct Target<'a> {
    pub client: &'a reqwest::Client,
    pub url: &'a str,
    /// Keeps the walk's ids apart from other walks on the same server.
    pub tag: &'a str,
}

impl Target<'_> {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        by: &Writer,
        body: Option<Value>,
    ) -> (u16, Value) {
        // A 503 says "retry shortly" (a Kafka-mode cluster rebalancing);
        // a client does, and every write of the walk is idempotent.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut request = self
                .client
                .request(method.clone(), format!("{}{path}", self.url))
                .timeout(Duration::from_secs(60));
            if let Some(secret) = &by.secret {
                request = request.bearer_auth(secret);
            }
            if let Some(body) = &body {
                request = request.json(body);
            }
            let answer = request.send().await.expect("the server answers");
            let status = answer.status().as_u16();
            let answer = answer.json().await.unwrap_or(Value::Null);
            if status != 503 || Instant::now() > deadline {
                return (status, answer);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sends `event` (one refusal) as `by`; returns the id of the dead
    /// letter it became, once `reader` sees it.
    async fn refused(&self, event: Value, by: &Writer, reader: &Writer) -> u64 {
        let event_id = event["eventId"].as_str().unwrap().to_owned();
        let (status, receipt) = self
            .send(reqwest::Method::POST, "/v1/events", by, Some(event))
            .await;
        assert_eq!(
            (status, &receipt["rejected"]),
            (200, &json!(1)),
            "{receipt}"
        );
        let page = self
            .read_until(LETTERS, reader, |p| letter_of(p, &event_id).is_some())
            .await;
        letter_of(&page, &event_id).unwrap()
    }

    /// GETs `path` until `done` holds for the answer (Kafka mode applies
    /// and materialises a moment after it acknowledges).
    async fn read_until(&self, path: &str, by: &Writer, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.send(reqwest::Method::GET, path, by, None).await;
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path}: still {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The dead letters the walk's refused events become.
const LETTERS: &str = "/v1/dead-letters?reason=quantity&limit=1000";

/// The id of the letter of `event_id` on a page of dead letters.
fn letter_of(page: &Value, event_id: &str) -> Option<u64> {
    page["deadLetters"]
        .as_array()?
        .iter()
        .find(|l| l["eventId"] == event_id)?["id"]
        .as_u64()
}

/// The level history's (eventType, by), oldest first.
fn senders(history: &Value) -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = history["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["eventType"].as_str().unwrap_or("?").to_owned(),
                e["by"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    entries.reverse();
    entries
}

/// The walk. `till`, `shop` and `ops` as in [`WRITERS`].
pub async fn who_did_what(target: &Target<'_>, till: &Writer, shop: &Writer, ops: &Writer) {
    use reqwest::Method;
    let tag = target.tag;
    let sku = format!("AUD-{tag}");
    let order_id = format!("aud-{tag}");
    // The till receives stock.
    let receipt = json!({"eventId": format!("aud-r-{tag}"), "eventType": "RECEIPT",
        "sku": sku, "locationId": "S1", "quantity": 10});
    let (status, body) = target
        .send(Method::POST, "/v1/events", till, Some(receipt))
        .await;
    assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");
    let level = format!("/v1/stock/{sku}/S1");
    target.read_until(&level, till, |l| l["onHand"] == 10).await;
    // The shop places an order; the operator cancels it.
    let order =
        json!({"orderId": order_id, "lines": [{"sku": sku, "locationId": "S1", "quantity": 3}]});
    let (status, placed) = target
        .send(Method::POST, "/v1/orders", shop, Some(order))
        .await;
    assert_eq!(status, 200, "{placed}");
    let first = &placed["transitions"][0];
    assert_eq!(
        (&first["action"], &first["status"], &first["by"]),
        (&json!("place"), &json!("reserved"), &json!(shop.name)),
        "{placed}"
    );
    let cancel = format!("/v1/orders/{order_id}/cancel");
    let (status, cancelled) = target
        .send(Method::POST, &cancel, ops, Some(json!({})))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    let trail: Vec<(&str, &str, &str)> = cancelled["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["action"].as_str().unwrap(),
                t["status"].as_str().unwrap(),
                t["by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        trail,
        [
            ("place", "reserved", shop.name.as_str()),
            ("cancel", "cancelled", ops.name.as_str())
        ],
        "{cancelled}"
    );
    // GET shows the same trail.
    let read = target
        .read_until(&format!("/v1/orders/{order_id}"), till, |o| {
            o["status"] == "cancelled"
        })
        .await;
    assert_eq!(read["transitions"], cancelled["transitions"]);
    // The level's history names who moved it each time: the till's
    // receipt, the shop's reservation, the operator's release.
    let history = target
        .read_until(&format!("{level}/history"), till, |h| {
            h["events"].as_array().is_some_and(|e| e.len() == 3)
        })
        .await;
    assert_eq!(
        senders(&history),
        [
            ("RECEIPT".to_owned(), till.name.clone()),
            ("RESERVATION".to_owned(), shop.name.clone()),
            ("RELEASE".to_owned(), ops.name.clone())
        ],
        "{history}"
    );
    // The operator writes the product; a forged updatedBy is not taken.
    let product = json!({"name": "Audited", "price": 9.5, "updatedBy": "someone-else"});
    let (status, written) = target
        .send(
            Method::PUT,
            &format!("/v1/products/{sku}"),
            ops,
            Some(product),
        )
        .await;
    assert_eq!(status, 200, "{written}");
    assert_eq!(written["updatedBy"], json!(ops.name), "{written}");
    assert!(
        written["attributes"].get("updatedBy").is_none(),
        "{written}"
    );
    // The till sends an event that is refused; the operator replays it
    // corrected, and the level says the operator sent it.
    let bad = json!({"eventId": format!("aud-bad-{tag}"), "eventType": "RECEIPT",
        "sku": sku, "locationId": "S2", "quantity": "five"});
    let letter = target.refused(bad, till, ops).await;
    let corrected = json!({"eventId": format!("aud-bad-{tag}"), "eventType": "RECEIPT",
        "sku": sku, "locationId": "S2", "quantity": 5});
    let (status, replayed) = target
        .send(
            Method::POST,
            &format!("/v1/dead-letters/{letter}/replay"),
            ops,
            Some(corrected),
        )
        .await;
    assert_eq!(
        (status, &replayed["resolved"]),
        (200, &json!(true)),
        "{replayed}"
    );
    let history = target
        .read_until(&format!("/v1/stock/{sku}/S2/history"), till, |h| {
            h["events"].as_array().is_some_and(|e| e.len() == 1)
        })
        .await;
    assert_eq!(
        senders(&history),
        [("RECEIPT".to_owned(), ops.name.clone())],
        "{history}"
    );
    // Another refused event, which the operator discards: it leaves the
    // list (who discarded it is in the log, see the callers).
    let bad = json!({"eventId": format!("aud-drop-{tag}"), "eventType": "SALE",
        "sku": sku, "locationId": "S3", "quantity": "two"});
    let id = target.refused(bad, till, ops).await;
    let (status, _) = target
        .send(Method::DELETE, &format!("/v1/dead-letters/{id}"), ops, None)
        .await;
    assert_eq!(status, 204);
    let event_id = format!("aud-drop-{tag}");
    target
        .read_until(LETTERS, ops, |p| letter_of(p, &event_id).is_none())
        .await;
    alert_marks(target, till, shop, ops).await;
}

/// The active alerts of the walk's level (sku, S1), with `filter`.
fn active_at_s1(tag: &str, filter: &str) -> String {
    format!("/v1/alerts?active=true&sku=AUD-{tag}&locationId=S1{filter}")
}

fn alerts_of(page: &Value) -> Vec<Value> {
    page["alerts"].as_array().cloned().unwrap_or_default()
}

/// The walk goes on: a sale makes the level low; the operator
/// acknowledges the alert and mutes the SKU's low-stock alerts, then
/// ends the mute; each says who, and reads back the same from the
/// reader's side. The level's next alert starts unacknowledged.
async fn alert_marks(target: &Target<'_>, till: &Writer, shop: &Writer, ops: &Writer) {
    use reqwest::Method;
    let tag = target.tag;
    let sku = format!("AUD-{tag}");
    let sale = json!({"eventId": format!("aud-s-{tag}"), "eventType": "SALE",
        "sku": sku, "locationId": "S1", "quantity": 8});
    let (status, body) = target
        .send(Method::POST, "/v1/events", till, Some(sale))
        .await;
    assert_eq!((status, &body["accepted"]), (200, &json!(1)), "{body}");
    let page = target
        .read_until(&active_at_s1(tag, ""), till, |p| alerts_of(p).len() == 1)
        .await;
    let alert = &alerts_of(&page)[0];
    assert_eq!(alert["kind"], "LOW_STOCK", "{page}");
    assert!(alert.get("acknowledged").is_none(), "{alert}");
    let id = alert["id"].as_str().unwrap().to_owned();
    let acknowledge = format!("/v1/alerts/{id}/acknowledge");
    if shop.secret.is_some() {
        // Acknowledging is an operator's: the shop's token cannot.
        let (status, refused) = target
            .send(Method::POST, &acknowledge, shop, Some(json!({})))
            .await;
        assert_eq!(status, 403, "{refused}");
    }
    let (status, done) = target
        .send(
            Method::POST,
            &acknowledge,
            ops,
            Some(json!({"note": "reorder placed"})),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (
            &done["id"],
            &done["acknowledged"]["by"],
            &done["acknowledged"]["note"]
        ),
        (&json!(id), &json!(ops.name), &json!("reorder placed")),
        "{done}"
    );
    // Anyone reading sees who acknowledged it; it leaves the list of the
    // unacknowledged.
    let page = target
        .read_until(&active_at_s1(tag, ""), till, |p| {
            alerts_of(p)
                .first()
                .is_some_and(|a| a["acknowledged"]["by"] == json!(ops.name))
        })
        .await;
    assert_eq!(alerts_of(&page).len(), 1, "{page}");
    let (_, open) = target
        .send(
            Method::GET,
            &active_at_s1(tag, "&acknowledged=false"),
            till,
            None,
        )
        .await;
    assert_eq!(alerts_of(&open), Vec::<Value>::new(), "{open}");
    // An unknown or cleared alert cannot be acknowledged.
    let (status, missing) = target
        .send(
            Method::POST,
            "/v1/alerts/0-999999/acknowledge",
            ops,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 404, "{missing}");
    // The operator mutes the SKU's low-stock alerts for an hour.
    let mute = json!({"kind": "LOW_STOCK", "sku": sku, "minutes": 60, "reason": "recount due"});
    let (status, muted) = target
        .send(Method::POST, "/v1/alerts/mutes", ops, Some(mute))
        .await;
    assert_eq!(status, 201, "{muted}");
    assert_eq!(
        (&muted["by"], &muted["reason"]),
        (&json!(ops.name), &json!("recount due")),
        "{muted}"
    );
    let mute_id = muted["id"].as_str().unwrap().to_owned();
    let page = target
        .read_until(&active_at_s1(tag, "&muted=true"), till, |p| {
            alerts_of(p).len() == 1
        })
        .await;
    assert_eq!(alerts_of(&page)[0]["muted"]["id"], json!(mute_id), "{page}");
    assert_eq!(
        alerts_of(&page)[0]["muted"]["by"],
        json!(ops.name),
        "{page}"
    );
    let (_, unmuted) = target
        .send(Method::GET, &active_at_s1(tag, "&muted=false"), till, None)
        .await;
    assert_eq!(alerts_of(&unmuted), Vec::<Value>::new(), "{unmuted}");
    let (_, mutes) = target
        .send(Method::GET, "/v1/alerts/mutes", till, None)
        .await;
    assert!(
        mutes["mutes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == json!(mute_id) && m["sku"] == json!(sku)),
        "{mutes}"
    );
    // Ending it: the alert is no longer muted, and the mute is gone.
    let (status, ended) = target
        .send(
            Method::DELETE,
            &format!("/v1/alerts/mutes/{mute_id}"),
            ops,
            None,
        )
        .await;
    assert_eq!((status, &ended["id"]), (200, &json!(mute_id)), "{ended}");
    target
        .read_until(&active_at_s1(tag, "&muted=false"), till, |p| {
            alerts_of(p).len() == 1
        })
        .await;
    let (_, mutes) = target
        .send(Method::GET, "/v1/alerts/mutes", till, None)
        .await;
    assert!(
        !mutes["mutes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == json!(mute_id)),
        "{mutes}"
    );
    let (status, _) = target
        .send(
            Method::DELETE,
            &format!("/v1/alerts/mutes/{mute_id}"),
            ops,
            None,
        )
        .await;
    assert_eq!(status, 404, "a mute ended twice");
    // Restocked and sold again: the level's next LOW_STOCK is a new
    // alert, which no one has acknowledged.
    for (n, (kind, quantity)) in [("RECEIPT", 20), ("SALE", 19)].into_iter().enumerate() {
        let event = json!({"eventId": format!("aud-again-{n}-{tag}"), "eventType": kind,
            "sku": sku, "locationId": "S1", "quantity": quantity});
        let (status, body) = target
            .send(Method::POST, "/v1/events", till, Some(event))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let page = target
        .read_until(&active_at_s1(tag, ""), till, |p| {
            alerts_of(p).first().is_some_and(|a| a["id"] != json!(id))
        })
        .await;
    assert!(alerts_of(&page)[0].get("acknowledged").is_none(), "{page}");
}

/// Whether a server's log says `by` resolved dead letters (a replay and
/// a discard) at least twice.
pub fn log_names_resolver(log: &str, by: &str) -> bool {
    // Without the terminal's colour codes around each field.
    let mut plain = String::with_capacity(log.len());
    let mut in_code = false;
    for c in log.chars() {
        match c {
            '\u{1b}' => in_code = true,
            'm' if in_code => in_code = false,
            _ if in_code => {}
            c => plain.push(c),
        }
    }
    plain
        .lines()
        .filter(|l| l.contains("dead letter resolved") && l.contains(&format!("by={by}")))
        .count()
        >= 2
}

/// The writers of [`WRITERS`] with tokens in `file` (created there).
pub fn writers_with_tokens(file: &std::path::Path) -> [Writer; 3] {
    WRITERS.map(|(name, roles)| Writer {
        secret: Some(stockflow_service::auth::create(file, name, roles).unwrap()),
        name: name.to_owned(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_names_its_token_and_an_open_server_says_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let [till, shop, ops] = writers_with_tokens(&file);
    let (secured, url) = crate::auth::serve(
        &dir.path().join("secured"),
        &["--auth-file", file.to_str().unwrap()],
        &dir.path().join("secured.log"),
    );
    let client = reqwest::Client::new();
    let target = Target {
        client: &client,
        url: &url,
        tag: "tokens",
    };
    who_did_what(&target, &till, &shop, &ops).await;
    drop(secured);
    let log = std::fs::read_to_string(dir.path().join("secured.log")).unwrap();
    assert!(log_names_resolver(&log, "ops"), "{log}");

    let (open, url) =
        crate::auth::serve(&dir.path().join("open"), &[], &dir.path().join("open.log"));
    let anonymous = Writer {
        secret: None,
        name: "anonymous".into(),
    };
    let target = Target {
        client: &client,
        url: &url,
        tag: "open",
    };
    who_did_what(&target, &anonymous, &anonymous, &anonymous).await;
    drop(open);
}
