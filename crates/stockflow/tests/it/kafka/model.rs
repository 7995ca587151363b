//! The reference: a random workload, what a plain model says it must
//! leave (levels, active alerts), and how a cluster's answers are held
//! against it.

use super::*;

/// (key, JSON line) of each message to produce.
pub type Lines = Vec<(String, String)>;

pub const SKUS: usize = 30;

pub const LOCATIONS: usize = 8;

/// The scenario: ≥100k events over 240 levels, the stream a user's
/// systems send (see `holds::mixed_stream`): receipts, sales,
/// adjustments, late and early counts, transfers, plain reservations,
/// and over a third RESERVATION, RELEASE and FULFILLMENT naming one of 50
/// orders (whose homes are other partitions, so each crosses partitions
/// through the sagas), ~2% redelivered duplicates and ~0.3% invalid
/// events; then TRANSFER_INs for most transfers, sent after every
/// transfer's in-transit part has landed (across keys Kafka keeps no
/// order, so a TRANSFER_IN racing its own in-transit would be a different
/// test).
pub fn workload(seed: u64, events: usize) -> (Vec<Ev>, Vec<Ev>) {
    let shape = crate::holds::Shape {
        events,
        skus: SKUS,
        locations: LOCATIONS,
        orders: 50,
        commands: 0.0,
        batch_max: 1000,
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    let stream: Vec<Ev> = crate::holds::mixed_stream(seed, shape)
        .into_iter()
        .flat_map(|step| match step {
            crate::holds::Step::Events(events) => events,
            crate::holds::Step::Order(_) => unreachable!("no commands asked for"),
        })
        .filter(|e| e.kind != "TRANSFER_IN")
        .collect();
    let mut seen = std::collections::HashSet::new();
    let arrivals = stream
        .iter()
        .filter(|e| e.kind == "TRANSFER_OUT" && e.valid() && seen.insert(e.id))
        .filter(|_| rng.random_bool(0.8))
        .map(|e| Ev {
            id: e.id + 10_000_000,
            kind: "TRANSFER_IN",
            location: e.to.expect("a transfer names its destination"),
            to: None,
            hold_s: None,
            order: None,
            ..e.clone()
        })
        .collect();
    (stream, arrivals)
}

/// The messages to produce: (key, canonical JSON) with eventIds `k{seed}-N`.
pub fn lines(seed: u64, events: &[Ev]) -> Lines {
    events
        .iter()
        .map(|e| {
            let key = format!("{}:{}", sku(e.sku), location(e.location));
            (key, e.json_with(&format!("k{seed}-")))
        })
        .collect()
}

/// (onHand, reserved, inTransit) by (sku, location).
pub type Levels = BTreeMap<(String, String), (i64, i64, i64)>;

/// Levels by the reference model, from the same events in the same order;
/// and the model, for its orders' holds.
pub fn reference(phases: &[&[Ev]]) -> (Levels, Model) {
    // No hold expires: the instances hold for a week.
    let mut model = Model::new(i64::MAX / 4);
    for e in phases.iter().flat_map(|p| p.iter()) {
        model.event(e, 0);
    }
    let levels = model
        .levels_by_name()
        .into_iter()
        .map(|(key, (on_hand, reserved, in_transit, _))| (key, (on_hand, reserved, in_transit)))
        .collect();
    (levels, model)
}

/// Kinds of alert that only the levels decide (others depend on time).
pub const LEVEL_ALERT_KINDS: [&str; 3] = ["LOW_STOCK", "OUT_OF_STOCK", "NEGATIVE_ON_HAND"];

/// The active alerts of those kinds in the embedded engine's fold, as
/// (kind, sku, locationId, severity). (Alerts are transitions the engine
/// decides; the levels they follow are checked against the model.)
pub fn reference_alerts(phases: &[&[(String, String)]]) -> Vec<(String, String, String, String)> {
    let mut engine = Engine::new(EngineConfig::default());
    for phase in phases {
        for (_, line) in phase.iter() {
            let mut parsed = parse_body(line.as_bytes(), BodyFormat::Json, 1).unwrap();
            engine.apply(&mut parsed.batch, Timestamp(1));
        }
    }
    let mut active = Vec::new();
    for partition in &engine.partitions {
        for alert in partition.alerts.active.values() {
            let (sku, location) = partition.names_of(alert.slot);
            let kind = alert.kind.as_str();
            if LEVEL_ALERT_KINDS.contains(&kind) {
                let severity = alert.severity.as_str().to_owned();
                active.push((
                    kind.to_owned(),
                    sku.to_string(),
                    location.to_string(),
                    severity,
                ));
            }
        }
    }
    active.sort();
    active
}

/// The active level alerts `url` reports for the whole cluster, page by
/// page, in the same form.
pub fn active_alerts(url: &str) -> Vec<(String, String, String, String)> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut page_url = format!("{url}/v1/alerts?active=true&limit=1000");
        if let Some(after) = &after {
            page_url.push_str(&format!("&after={after}"));
        }
        let (status, page) = get_settled(&page_url);
        assert_eq!(status, 200, "{page}");
        for alert in page["alerts"].as_array().unwrap() {
            let text = |k: &str| alert[k].as_str().unwrap().to_owned();
            if LEVEL_ALERT_KINDS.contains(&alert["kind"].as_str().unwrap()) {
                all.push((
                    text("kind"),
                    text("sku"),
                    text("locationId"),
                    text("severity"),
                ));
            }
        }
        match page["nextAfter"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    all.sort();
    all
}

pub fn produce(producer: &BaseProducer, topic: &str, lines: &[(String, String)]) {
    for (key, line) in lines {
        let record = BaseRecord::to(topic)
            .key(key.as_str())
            .payload(line.as_str());
        stockflow_kafka::send(producer, record).unwrap();
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// Every level of the reference, read through `url` (which forwards to
/// the owner): the ones that differ.
pub fn differences(url: &str, want: &BTreeMap<(String, String), (i64, i64, i64)>) -> Vec<String> {
    let mut got = BTreeMap::new();
    for l in 0..LOCATIONS {
        let location = format!("L{l}");
        let mut after = String::new();
        loop {
            let Some((200, page)) = http::blocking_get(&format!(
                "{url}/v1/locations/{location}/stock?limit=1000{after}"
            )) else {
                return vec![format!("{location}: no answer yet")];
            };
            for level in page["levels"].as_array().unwrap() {
                let n = |f: &str| level[f].as_i64().unwrap();
                got.insert(
                    (level["sku"].as_str().unwrap().to_owned(), location.clone()),
                    (n("onHand"), n("reserved"), n("inTransit")),
                );
            }
            match page["nextAfter"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => break,
            }
        }
    }
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .map(|(k, v)| {
            let p = stockflow_core::route(&k.0, &k.1, 12);
            format!("{k:?} (partition {p}): want {v:?}, got {:?}", got.get(k))
        })
        .collect();
    let mut summary: Vec<String> = wrong.iter().take(10).cloned().collect();
    if wrong.len() > 10 {
        summary.push(format!("… {} levels differ in all", wrong.len()));
    }
    summary
}

/// Waits until `url` answers `want` (the reference of `sent`); on failure
/// says why, including how the canonical log of the first wrong level
/// differs from what was sent.
pub fn wait_equal(
    broker: &Broker,
    url: &str,
    want: &BTreeMap<(String, String), (i64, i64, i64)>,
    sent: &[(String, String)],
) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let diff = differences(url, want);
        if diff.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            if std::env::var("KAFKA_HOLD").is_ok() {
                eprintln!("HOLDING: broker {} instance {url}", broker.bootstrap);
                std::thread::sleep(Duration::from_secs(1200));
            }
            let cluster = http::blocking_get(&format!("{url}/v1/cluster"));
            let first = diff[0].split(" (partition").next().unwrap_or_default();
            let explained = explain(broker, first, sent);
            panic!(
                "levels at {url} never matched the reference: {diff:#?}\n{explained}\ndead letters by reason: {:#?}\ncluster: {cluster:?}",
                broker.reasons("inventory.dlq")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// How the canonical topic's events of one level (`("sku", "location")` as
/// printed) differ from the valid events sent for it: missing, extra, or
/// in another order.
pub fn explain(broker: &Broker, level: &str, sent: &[(String, String)]) -> String {
    let key = level
        .trim_matches(|c| "()\" ".contains(c))
        .replace("\", \"", ":");
    let id_of = |line: &[u8]| -> Option<String> {
        let v: Value = serde_json::from_slice(line).ok()?;
        Some(v["eventId"].as_str()?.to_owned())
    };
    let mut seen = std::collections::HashSet::new();
    let expected: Vec<String> = sent
        .iter()
        .filter(|(k, l)| {
            // Invalid events (a quantity the type does not allow) are
            // dead letters, not on the level.
            let v: Value = serde_json::from_str(l).unwrap_or_default();
            let q = v["quantity"].as_i64().unwrap_or(0);
            let valid = match v["eventType"].as_str() {
                Some("ADJUSTMENT") => q != 0,
                Some("COUNT") => q >= 0,
                _ => q > 0,
            };
            *k == key && valid
        })
        .filter_map(|(_, l)| id_of(l.as_bytes()))
        .filter(|id| seen.insert(id.clone()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut repeats = 0;
    let logged: Vec<String> = broker
        .read_all("inventory.events.canonical")
        .into_iter()
        .filter(|(k, _, _)| k.as_deref() == Some(key.as_str()))
        .filter_map(|(_, v, _)| id_of(&v?))
        .filter(|id| {
            seen.insert(id.clone()) || {
                repeats += 1;
                false
            }
        })
        .collect();
    let first_difference = expected.iter().zip(&logged).position(|(a, b)| a != b);
    format!(
        "level {key}: {} events sent, {} first occurrences in the canonical topic ({repeats} repeats); first difference in order at {first_difference:?}: sent {:?}, logged {:?}",
        expected.len(),
        logged.len(),
        first_difference.map(|i| &expected[i..(i + 5).min(expected.len())]),
        first_difference.map(|i| &logged[i..(i + 5).min(logged.len())]),
    )
}
