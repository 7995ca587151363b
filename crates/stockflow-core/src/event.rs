//! The canonical inventory event and the batch that carries many of them.
//!
//! A [`Batch`] keeps every string of its events in one buffer and the events
//! as fixed-size records pointing into it, so parsing a request of 10,000
//! events allocates a handful of times, not 60,000. The same struct is what
//! the log stores, so a batch goes from the wire to the disk without being
//! rebuilt.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// What happened. Facts are past-tense in spirit; the wire names are the
/// contract's upper-case names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    Receipt,
    Sale,
    Return,
    Adjustment,
    Count,
    TransferOut,
    TransferIn,
    Reservation,
    Release,
    Fulfillment,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::Receipt,
        EventType::Sale,
        EventType::Return,
        EventType::Adjustment,
        EventType::Count,
        EventType::TransferOut,
        EventType::TransferIn,
        EventType::Reservation,
        EventType::Release,
        EventType::Fulfillment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Receipt => "RECEIPT",
            EventType::Sale => "SALE",
            EventType::Return => "RETURN",
            EventType::Adjustment => "ADJUSTMENT",
            EventType::Count => "COUNT",
            EventType::TransferOut => "TRANSFER_OUT",
            EventType::TransferIn => "TRANSFER_IN",
            EventType::Reservation => "RESERVATION",
            EventType::Release => "RELEASE",
            EventType::Fulfillment => "FULFILLMENT",
        }
    }

    pub fn from_wire(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// RESERVATION, RELEASE and FULFILLMENT: the types whose correlationId
    /// names the order whose hold they move.
    pub fn moves_holds(self) -> bool {
        matches!(
            self,
            EventType::Reservation | EventType::Release | EventType::Fulfillment
        )
    }
}

/// A string inside a batch's text buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    start: u32,
    len: u32,
}

/// One event inside a [`Batch`]; strings are spans of the batch text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRec {
    pub event_id: Span,
    pub sku: Span,
    pub location_id: Span,
    pub to_location_id: Option<Span>,
    pub source_system: Option<Span>,
    pub correlation_id: Option<Span>,
    /// RESERVATION naming an order only: how long the order holds what
    /// it reserves (the server's default when absent).
    pub hold_seconds: Option<u32>,
    pub event_type: EventType,
    pub quantity: i64,
    /// `None` until the sequencer stamps server time; always `Some` in the log.
    pub timestamp: Option<Timestamp>,
    /// Position of the event in the request that delivered it (for replies);
    /// not stored in the log.
    #[serde(skip)]
    pub index: u32,
}

/// A borrowed view of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub event_id: &'a str,
    pub event_type: EventType,
    pub sku: &'a str,
    pub location_id: &'a str,
    pub quantity: i64,
    pub timestamp: Option<Timestamp>,
    pub to_location_id: Option<&'a str>,
    pub source_system: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub hold_seconds: Option<u32>,
    pub index: u32,
}

/// Where an event's effects land: its own level's partition, and for a
/// TRANSFER_OUT with a destination, the destination's partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub source: u16,
    pub destination: Option<u16>,
}

/// Events with their strings in one buffer. See the module docs.
///
/// Decoding checks that every span lies inside the text on character
/// boundaries (a damaged record must be refused, not read out of bounds).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(try_from = "BatchWire")]
pub struct Batch {
    text: String,
    events: Vec<EventRec>,
    /// Derived from the events and the partition count; recomputed after
    /// decoding (see [`Batch::compute_routes`]), never stored.
    #[serde(skip)]
    routes: Vec<Route>,
}

/// A [`Batch`] as decoded, before its spans are checked.
#[derive(Deserialize)]
struct BatchWire {
    text: String,
    events: Vec<EventRec>,
}

impl TryFrom<BatchWire> for Batch {
    type Error = String;

    fn try_from(wire: BatchWire) -> Result<Batch, String> {
        let text = &wire.text;
        let inside = |span: &Span| {
            let end = span.start as usize + span.len as usize;
            end <= text.len()
                && text.is_char_boundary(span.start as usize)
                && text.is_char_boundary(end)
        };
        for (i, event) in wire.events.iter().enumerate() {
            let spans = [
                Some(&event.event_id),
                Some(&event.sku),
                Some(&event.location_id),
            ]
            .into_iter()
            .chain([
                event.to_location_id.as_ref(),
                event.source_system.as_ref(),
                event.correlation_id.as_ref(),
            ])
            .flatten();
            for span in spans {
                if !inside(span) {
                    return Err(format!("event {i} of a batch points outside its text"));
                }
            }
        }
        Ok(Batch {
            text: wire.text,
            events: wire.events,
            routes: Vec::new(),
        })
    }
}

impl Batch {
    pub fn with_capacity(events: usize, text_bytes: usize) -> Batch {
        Batch {
            text: String::with_capacity(text_bytes),
            events: Vec::with_capacity(events),
            routes: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// About how many bytes the batch takes (its text and records), in
    /// memory and in a log record.
    pub fn bytes(&self) -> usize {
        self.text.len() + self.events.len() * std::mem::size_of::<EventRec>()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Appends an event. Strings are copied into the batch text.
    pub fn push(&mut self, event: &EventRef<'_>) {
        let rec = EventRec {
            event_id: self.intern(event.event_id),
            sku: self.intern(event.sku),
            location_id: self.intern(event.location_id),
            to_location_id: event.to_location_id.map(|s| self.intern(s)),
            source_system: event.source_system.map(|s| self.intern(s)),
            correlation_id: event.correlation_id.map(|s| self.intern(s)),
            hold_seconds: event.hold_seconds,
            event_type: event.event_type,
            quantity: event.quantity,
            timestamp: event.timestamp,
            index: event.index,
        };
        self.events.push(rec);
    }

    fn intern(&mut self, s: &str) -> Span {
        let start = self.text.len();
        self.text.push_str(s);
        // Batches are bounded by the request size limit, far below 4 GiB.
        debug_assert!(self.text.len() <= u32::MAX as usize);
        Span {
            start: start as u32,
            len: s.len() as u32,
        }
    }

    fn str(&self, span: Span) -> &str {
        &self.text[span.start as usize..(span.start + span.len) as usize]
    }

    pub fn get(&self, i: usize) -> EventRef<'_> {
        let rec = &self.events[i];
        EventRef {
            event_id: self.str(rec.event_id),
            event_type: rec.event_type,
            sku: self.str(rec.sku),
            location_id: self.str(rec.location_id),
            quantity: rec.quantity,
            timestamp: rec.timestamp,
            to_location_id: rec.to_location_id.map(|s| self.str(s)),
            source_system: rec.source_system.map(|s| self.str(s)),
            correlation_id: rec.correlation_id.map(|s| self.str(s)),
            hold_seconds: rec.hold_seconds,
            index: rec.index,
        }
    }

    /// The record of event `i` (its numbers; strings are spans).
    pub fn rec(&self, i: usize) -> &EventRec {
        &self.events[i]
    }

    /// The level key of event `i`: sku, locationId, toLocationId. Cheaper
    /// than [`Batch::get`] on the apply path, which needs only these.
    pub fn key(&self, i: usize) -> (&str, &str, Option<&str>) {
        let rec = &self.events[i];
        (
            self.str(rec.sku),
            self.str(rec.location_id),
            rec.to_location_id.map(|s| self.str(s)),
        )
    }

    pub fn event_id(&self, i: usize) -> &str {
        self.str(self.events[i].event_id)
    }

    /// Sets the quantity of event `i` (a decision that the owner of its
    /// level narrows, see `saga::settle_fulfilments`).
    pub fn set_quantity(&mut self, i: usize, quantity: i64) {
        self.events[i].quantity = quantity;
    }

    /// The order event `i` acts for: its correlationId, when it is a
    /// RESERVATION, RELEASE or FULFILLMENT (the types that move holds; on
    /// other types a correlationId is only carried along).
    pub fn order_of(&self, i: usize) -> Option<&str> {
        let rec = &self.events[i];
        rec.event_type
            .moves_holds()
            .then_some(rec.correlation_id)
            .flatten()
            .map(|s| self.str(s))
    }

    /// Whether any event acts for an order (see [`Batch::order_of`]).
    pub fn has_order_events(&self) -> bool {
        self.events
            .iter()
            .any(|rec| rec.correlation_id.is_some() && rec.event_type.moves_holds())
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = EventRef<'_>> + '_ {
        (0..self.events.len()).map(|i| self.get(i))
    }

    /// Renumbers each event's `index` (its position in the request), e.g.
    /// from a translated line to the source message it came from.
    pub fn remap_indexes(&mut self, map: impl Fn(u32) -> u32) {
        for rec in &mut self.events {
            rec.index = map(rec.index);
        }
    }

    /// Gives every event without a timestamp the server time `now`.
    pub fn stamp_missing_timestamps(&mut self, now: Timestamp) {
        for rec in &mut self.events {
            rec.timestamp.get_or_insert(now);
        }
    }

    /// Keeps the events for which `keep(position)` is true (and their
    /// routes). Their strings stay in the text buffer: a batch is
    /// short-lived, so compacting it is not worth a copy.
    pub fn retain_positions(&mut self, keep: impl Fn(usize) -> bool) {
        let mut position = 0;
        self.events.retain(|_| {
            position += 1;
            keep(position - 1)
        });
        if !self.routes.is_empty() {
            let mut position = 0;
            self.routes.retain(|_| {
                position += 1;
                keep(position - 1)
            });
        }
    }

    /// Computes where each event's effects land for `partitions` partitions.
    pub fn compute_routes(&mut self, partitions: u16) {
        let routes = (0..self.events.len())
            .map(|i| {
                let e = self.get(i);
                Route {
                    source: crate::route(e.sku, e.location_id, partitions),
                    destination: e
                        .to_location_id
                        .map(|to| crate::route(e.sku, to, partitions)),
                }
            })
            .collect();
        self.routes = routes;
    }

    /// Routes computed by [`Batch::compute_routes`]; empty before.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_event() -> Batch {
        let mut batch = Batch::default();
        batch.push(&EventRef {
            event_id: "e-1",
            event_type: EventType::Receipt,
            sku: "SKU-é",
            location_id: "S1",
            quantity: 1,
            timestamp: None,
            to_location_id: None,
            source_system: None,
            correlation_id: None,
            hold_seconds: None,
            index: 0,
        });
        batch
    }

    /// Found by mutation fuzzing: a damaged record whose span runs past
    /// its batch's text decoded, and reading the event panicked.
    #[test]
    fn a_batch_whose_spans_leave_its_text_does_not_decode() {
        let good = one_event();
        let decoded: Batch = postcard::from_bytes(&postcard::to_stdvec(&good).unwrap()).unwrap();
        assert_eq!(decoded.get(0).sku, "SKU-é");
        let mut past_the_end = good.clone();
        past_the_end.events[0].location_id.len += 1;
        let mut inside_a_char = good.clone();
        inside_a_char.events[0].sku.len -= 1;
        for bad in [past_the_end, inside_a_char] {
            let bytes = postcard::to_stdvec(&bad).unwrap();
            assert!(postcard::from_bytes::<Batch>(&bytes).is_err());
        }
    }
}
