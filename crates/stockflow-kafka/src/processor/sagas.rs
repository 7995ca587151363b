//! Orders in Kafka mode: the messages to and from an order's home
//! partition (the saga coordinator's book), the roll-up reports to a
//! SKU's and a location's home, the totals those homes publish, and the
//! Tick that expires due holds.

use super::*;

/// A saga's line action as the canonical event its level's owner applies.
pub(super) fn line_action_json(action: &LineAction, now: Timestamp) -> String {
    let event_id = action.event_id();
    let event = stockflow_core::EventRef {
        event_id: &event_id,
        event_type: action.event_type,
        sku: &action.sku,
        location_id: &action.location_id,
        quantity: action.quantity,
        timestamp: Some(now),
        to_location_id: None,
        source_system: Some("stockflow-orders"),
        correlation_id: Some(&action.order_id),
        hold_seconds: None,
        by: &action.by,
        index: 0,
    };
    canonical_json(&event, now)
}

impl Processor {
    /// The order messages among a cycle's repartition records, and their
    /// newest timestamp; unreadable ones go to the DLQ.
    pub(super) fn order_messages(&self, p: u16, inputs: &[&Input]) -> (Vec<ToHome>, i64) {
        let mut messages = Vec::new();
        let mut newest = 0i64;
        for input in inputs.iter().filter(|i| i.kind == InputKind::Order) {
            match serde_json::from_slice::<ToHome>(&input.payload) {
                Ok(message) => {
                    newest = newest.max(input.timestamp_ms);
                    messages.push(message);
                }
                Err(error) => self.dead_letter(
                    &self.settings.topics.repartition,
                    i32::from(p),
                    input.offset,
                    &input.payload,
                    &format!("not an order message: {error}"),
                ),
            }
        }
        (messages, newest)
    }

    /// Applies the level reports among a cycle's repartition records to
    /// the roll-ups of the SKUs and locations homed in `p`; the records'
    /// payloads, for the changelog, and the keys whose totals moved.
    /// Unreadable ones go to the DLQ, whole.
    pub(super) fn level_reports(&self, p: u16, inputs: &[&Input]) -> (Vec<Vec<u8>>, Moved) {
        let mut payloads = Vec::new();
        let mut moved = Moved::default();
        let mut book = self.shared.rollups[p as usize].write();
        for input in inputs.iter().filter(|i| i.kind == InputKind::Rollup) {
            match decode_reports(&input.payload) {
                Ok(reports) => {
                    for r in reports {
                        let (sku, location) =
                            apply_report(&mut book, p, self.settings.partitions, &r);
                        if sku {
                            moved.skus.insert(r.sku.to_owned());
                        }
                        if location {
                            moved.locations.insert(r.location_id.to_owned());
                        }
                    }
                    payloads.push(input.payload.clone());
                }
                Err(error) => self.dead_letter(
                    &self.settings.topics.repartition,
                    i32::from(p),
                    input.offset,
                    &input.payload,
                    &format!("not level reports: {error}"),
                ),
            }
        }
        (payloads, moved)
    }

    /// Publishes the newest totals of the SKUs and locations homed in `p`
    /// that this cycle moved, keyed, to the compacted totals topics: one
    /// record per key per cycle, however many events moved it.
    pub(super) fn publish_totals(&self, p: u16, moved: &Moved) {
        use stockflow_service::stream::{totals_json, Kind};
        if moved.skus.is_empty() && moved.locations.is_empty() {
            return;
        }
        let book = self.shared.rollups[p as usize].read();
        let catalog = self.shared.catalog.read();
        let topics = &self.settings.topics;
        for sku in &moved.skus {
            let (totals, _) = book.totals(sku, &catalog);
            let json = totals_json(Kind::Items, sku, &totals).to_string();
            self.send(
                BaseRecord::to(&topics.item_totals)
                    .partition(i32::from(p))
                    .key(sku.as_str())
                    .payload(&json),
            );
        }
        for location in &moved.locations {
            if let Some(totals) = book.location_totals(location, &catalog) {
                let json = totals_json(Kind::Locations, location, &totals).to_string();
                self.send(
                    BaseRecord::to(&topics.location_totals)
                        .partition(i32::from(p))
                        .key(location.as_str())
                        .payload(&json),
                );
            }
        }
    }

    /// Queues level reports to the home of their SKUs (repartition
    /// partition `home`).
    pub(super) fn send_reports(&self, home: u16, payload: &[u8]) {
        let headers = OwnedHeaders::new().insert(Header {
            key: ROLLUP_HEADER,
            value: Some("1"),
        });
        self.send(
            BaseRecord::<(), [u8]>::to(&self.settings.topics.repartition)
                .partition(i32::from(home))
                .payload(payload)
                .headers(headers),
        );
    }

    /// Runs the order step of partition `p` (the home of some orders):
    /// the cycle's messages, then the holds due. Queues what it asks of
    /// line owners, this partition's answers to its line reservations,
    /// and every changed order to the orders topic.
    pub(super) fn step_orders(
        &self,
        p: u16,
        messages: &[ToHome],
        replies: &[(u16, ToHome)],
        now: Timestamp,
    ) {
        let mut asked = StepOut::default();
        let mut book = self.shared.books[p as usize].write();
        for message in messages {
            book.apply(message, now, &mut asked);
        }
        book.expire(now, &mut asked);
        let n = self.settings.partitions;
        for action in &asked.actions {
            let payload = line_action_json(action, now);
            let key = level_key(&action.sku, &action.location_id);
            let mut record = BaseRecord::to(&self.settings.topics.repartition)
                .partition(i32::from(route(&action.sku, &action.location_id, n)))
                .key(&key)
                .payload(&payload);
            if let Some(headers) = by_headers(&action.by) {
                record = record.headers(headers);
            }
            self.send(record);
        }
        for (home, reply) in replies {
            self.send_order_message(*home, reply);
        }
        asked.changed.sort_unstable();
        asked.changed.dedup();
        for id in &asked.changed {
            if let Some(saga) = book.orders.get(id) {
                let json = stockflow_service::json::order_json(&saga.order).to_string();
                self.send(
                    BaseRecord::to(&self.settings.topics.orders)
                        .partition(i32::from(p))
                        .key(id)
                        .payload(&json),
                );
            }
        }
    }

    /// Holds fall due with time, and time in Kafka mode is the input's: a
    /// home partition whose next hold is due by the wall clock is sent a
    /// Tick record, so its next cycle expires the hold (and replaying the
    /// changelog expires it at the same point).
    pub(super) fn tick_due_holds(&mut self) {
        const AGAIN_AFTER: Duration = Duration::from_millis(200);
        let now = stockflow_service::clock::wall_clock();
        let mut sent = false;
        let owned: Vec<u16> = self.owned.keys().copied().collect();
        for p in owned {
            let due = self.shared.books[p as usize]
                .read()
                .next_expiry()
                .is_some_and(|at| at <= now);
            let recently = self
                .ticked
                .get(&p)
                .is_some_and(|t| t.elapsed() < AGAIN_AFTER);
            if due && !recently {
                self.send_order_message(p, &ToHome::Tick);
                self.ticked.insert(p, Instant::now());
                sent = true;
            }
        }
        if sent && self.settings.transactions {
            // Visible only once committed; there may be no cycle to do it.
            self.commit_transaction(None, &[]);
        }
    }

    /// Queues a message to the home of an order (repartition partition `home`).
    pub(super) fn send_order_message(&self, home: u16, message: &ToHome) {
        let payload = serde_json::to_vec(message).expect("an order message serializes");
        let headers = OwnedHeaders::new().insert(Header {
            key: ORDER_HEADER,
            value: Some("1"),
        });
        let key = message.order_id().unwrap_or_default();
        self.send(
            BaseRecord::to(&self.settings.topics.repartition)
                .partition(i32::from(home))
                .key(key)
                .payload(&payload)
                .headers(headers),
        );
    }
}

/// The SKUs and locations homed in a partition whose totals a cycle moved.
#[derive(Default)]
pub(super) struct Moved {
    pub(super) skus: std::collections::BTreeSet<String>,
    pub(super) locations: std::collections::BTreeSet<String>,
}

/// Applies a level report to the roll-ups of partition `p`: to its SKU's
/// if `p` is the SKU's home, to its location's if `p` is the location's
/// (a report goes once to each home, once if they are the same). Whether
/// it moved each.
pub(super) fn apply_report(
    book: &mut RollupBook,
    p: u16,
    partitions: u16,
    r: &crate::wire::LevelReport<'_>,
) -> (bool, bool) {
    let sku =
        sku_home(r.sku, partitions) == p && book.apply(r.sku, r.location_id, r.version, r.numbers);
    let location = location_home(r.location_id, partitions) == p
        && book.apply_location(r.sku, r.location_id, r.version, r.numbers);
    (sku, location)
}
