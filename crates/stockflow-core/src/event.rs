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
    /// Who sent it: the token name (empty: [`ANONYMOUS`]). Events of one
    /// request share one copy of the name in the batch text.
    pub by: Span,
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
    /// Who sent it (see [`EventRec::by`]); the parser leaves it empty,
    /// [`Batch::get`] says [`ANONYMOUS`] for empty.
    pub by: &'a str,
    pub index: u32,
}

/// Who made a change the server cannot name a token for: an
/// unauthenticated server's callers, a record produced to a topic
/// without a `by` header, an import straight into a data directory.
pub const ANONYMOUS: &str = "anonymous";

/// Who made a change the server made itself, e.g. an expired hold.
pub const SERVER: &str = "stockflow";

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
            for span in spans.chain([&event.by]) {
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

/// A batch read without checking its spans: what `repair` salvages from
/// a damaged log record, whose flipped bit may have moved one span out of
/// its text (which would refuse the whole batch).
#[derive(Deserialize)]
pub struct DamagedBatch(BatchWire);

impl DamagedBatch {
    /// The events whose eventId still lies in the text, as a batch of
    /// those ids alone (every other field blank), and how many events
    /// could not be read.
    pub fn salvage(self) -> (Batch, usize) {
        let BatchWire { text, events } = self.0;
        let mut batch = Batch::with_capacity(events.len(), text.len());
        let mut unreadable = 0;
        for (index, rec) in events.iter().enumerate() {
            let (start, end) = (rec.event_id.start as usize, rec.event_id.end());
            let id = text.get(start..end).filter(|_| end <= text.len());
            let Some(event_id) = id else {
                unreadable += 1;
                continue;
            };
            batch.push(&EventRef {
                event_id,
                event_type: rec.event_type,
                sku: "",
                location_id: "",
                quantity: rec.quantity,
                timestamp: rec.timestamp,
                to_location_id: None,
                source_system: None,
                correlation_id: None,
                hold_seconds: None,
                by: "",
                index: index as u32,
            });
        }
        (batch, unreadable)
    }
}

impl Span {
    fn end(self) -> usize {
        self.start as usize + self.len as usize
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
            by: self.intern_by(event.by),
            index: event.index,
        };
        self.events.push(rec);
    }

    /// The span of `by`: the previous event's when it is the same name (a
    /// request's events share one copy), else a new one. Empty and
    /// [`ANONYMOUS`] are stored alike, as nothing.
    fn intern_by(&mut self, by: &str) -> Span {
        if by.is_empty() || by == ANONYMOUS {
            return Span::default();
        }
        match self.events.last() {
            Some(last) if last.by.len > 0 && self.str(last.by) == by => last.by,
            _ => self.intern(by),
        }
    }

    /// Records `by` as the sender of every event (the caller a request
    /// was authenticated as): one copy of the name for the batch.
    pub fn set_by(&mut self, by: &str) {
        let span = match by.is_empty() || by == ANONYMOUS {
            true => Span::default(),
            false => self.intern(by),
        };
        for rec in &mut self.events {
            rec.by = span;
        }
    }

    /// Records the sender of each event as `by_of(its index)` (events
    /// gathered from records of different senders). Consecutive events of
    /// one sender share one copy of the name.
    pub fn set_by_each<'a>(&mut self, by_of: impl Fn(u32) -> &'a str) {
        let mut last: Option<(&'a str, Span)> = None;
        for i in 0..self.events.len() {
            let by = by_of(self.events[i].index);
            let span = match last {
                Some((name, span)) if name == by => span,
                _ if by.is_empty() || by == ANONYMOUS => Span::default(),
                _ => self.intern(by),
            };
            last = Some((by, span));
            self.events[i].by = span;
        }
    }

    /// Who sent event `i` ([`ANONYMOUS`] when no one is known).
    pub fn by(&self, i: usize) -> &str {
        match self.events[i].by {
            span if span.len == 0 => ANONYMOUS,
            span => self.str(span),
        }
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
            by: self.by(i),
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
            by: "pos-gateway",
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
        assert_eq!(decoded.get(0).by, "pos-gateway");
        let mut past_the_end = good.clone();
        past_the_end.events[0].location_id.len = past_the_end.text.len() as u32;
        let mut inside_a_char = good.clone();
        inside_a_char.events[0].sku.len -= 1;
        for bad in [past_the_end, inside_a_char] {
            let bytes = postcard::to_stdvec(&bad).unwrap();
            assert!(postcard::from_bytes::<Batch>(&bytes).is_err());
        }
    }

    #[test]
    fn senders_are_kept_per_event_and_share_one_copy_per_run() {
        let mut batch = Batch::default();
        let template = one_event();
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            batch.push(&EventRef {
                event_id: id,
                index: i as u32,
                by: "",
                ..template.get(0)
            });
        }
        assert!(batch.iter().all(|e| e.by == ANONYMOUS));
        batch.set_by_each(|i| ["pos", "pos", ANONYMOUS, "wms"][i as usize]);
        let by: Vec<&str> = batch.iter().map(|e| e.by).collect();
        assert_eq!(by, ["pos", "pos", ANONYMOUS, "wms"]);
        assert_eq!(batch.rec(0).by, batch.rec(1).by, "one copy for a run");
        batch.set_by("ops");
        assert!(batch.iter().all(|e| e.by == "ops"));
        let decoded: Batch = postcard::from_bytes(&postcard::to_stdvec(&batch).unwrap()).unwrap();
        assert_eq!(decoded.by(3), "ops");
    }

    #[test]
    fn a_damaged_batch_gives_up_the_ids_still_in_its_text() {
        let template = one_event();
        let mut batch = Batch::default();
        let ids: Vec<String> = (0..20).map(|i| format!("e-{i}")).collect();
        for id in &ids {
            batch.push(&EventRef {
                event_id: id,
                ..template.get(0)
            });
        }
        let beyond = batch.text.len() as u32 + 7;
        batch.events[3].sku.start = beyond;
        batch.events[9].event_id.start = beyond;
        let bytes = postcard::to_stdvec(&batch).unwrap();
        assert!(postcard::from_bytes::<Batch>(&bytes).is_err());
        let damaged: DamagedBatch = postcard::from_bytes(&bytes).unwrap();
        let (salvaged, unreadable) = damaged.salvage();
        let got: Vec<&str> = salvaged.iter().map(|e| e.event_id).collect();
        let want: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| *id != "e-9")
            .collect();
        assert_eq!((got, unreadable), (want, 1));
    }
}
