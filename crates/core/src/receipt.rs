//! Receipts: what a service did with an event it received.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{ContentType, Envelope, EventId, Name, Timestamp};

/// The default topic receipts are published to.
pub const RECEIPTS_TOPIC: &str = "choreo.receipts";
/// The event type of a receipt envelope.
pub const RECEIPT_TYPE: &str = "choreo.Receipt";

/// How a delivery ended for the service that received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The handler succeeded (perhaps after retries) and its emissions were published.
    Acked,
    /// The handler gave up, or the payload did not decode: the event went to the dead-letter topic.
    DeadLettered,
    /// The event id was already handled by this service: acked without running the handler.
    Duplicate,
    /// The delivery was given back to the bus (shutdown during a retry, or a
    /// failed publish of the handler's emissions); it will be delivered again.
    Redelivered,
    /// The service does not route the event: it has no handler for its type
    /// (or the record names no type at all). Acked without running a handler,
    /// so the event is not delivered to this service again; the receipt makes
    /// visible that it arrived and was passed over. `attempts` is 0 and
    /// `reason` says why. Not a handling: the tracer counts no edge for it.
    Ignored,
}

impl Outcome {
    /// The label used in metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Acked => "acked",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Duplicate => "duplicate",
            Outcome::Redelivered => "redelivered",
            Outcome::Ignored => "ignored",
        }
    }
}

/// What one service did with one delivered event.
///
/// The runtime publishes one per settled delivery to [`RECEIPTS_TOPIC`] (unless
/// switched off), whatever the [`Outcome`] — `acked`, `dead_lettered`,
/// `duplicate`, `redelivered`, or `ignored` for a delivery the service has no
/// handler for. They let the tracer see what events alone can't: a service
/// that received an event and emitted nothing, a handler that keeps failing,
/// an event that reached a service which passed it over, and where in a flow
/// time is spent.
///
/// The receipt contract, for other tools reading `choreo.receipts`: the value
/// is this struct as JSON (the field names below; `reason` and `emitted` left
/// out when empty), `outcome` is one of the [`Outcome::as_str`] words, and the
/// envelope is in the handled event's flow, caused by it (see
/// [`Receipt::to_envelope`]). A reader must tolerate outcomes it does not know
/// (new ones may be added) by skipping the receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The service that handled the event.
    pub service: Name,
    /// The handled event's id.
    pub event_id: EventId,
    /// The handled event's type.
    pub event_type: Name,
    /// The handled event's flow.
    pub correlation_id: EventId,
    /// Where it was read from.
    pub topic: Name,
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// How many times the handler ran for this delivery (0 for a duplicate).
    pub attempts: u32,
    /// Why it failed, when it did (the last error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the first attempt started.
    pub started: Timestamp,
    /// Microseconds from the first attempt's start to the settlement.
    pub duration_us: u64,
    /// Ids of the events the handler published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emitted: Vec<EventId>,
}

impl Receipt {
    /// The receipt borrowed, for writing.
    pub fn borrowed(&self) -> ReceiptRef<'_> {
        ReceiptRef {
            service: &self.service,
            event_id: &self.event_id,
            event_type: &self.event_type,
            correlation_id: &self.correlation_id,
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            outcome: self.outcome,
            attempts: self.attempts,
            reason: self.reason.as_deref(),
            started: self.started,
            duration_us: self.duration_us,
            emitted: &self.emitted,
        }
    }

    /// The envelope that carries this receipt on `topic`: same flow as the
    /// handled event, caused by it, keyed like it, timed at the settlement
    /// (`started` + `duration_us`).
    pub fn to_envelope(&self, topic: Name, handled: &Envelope) -> Envelope {
        // The id from the clock: a settlement time from elsewhere (a receipt
        // built by hand) must not move the thread's id clock.
        self.to_envelope_with_id(EventId::new(), topic, handled)
    }

    /// [`to_envelope`](Receipt::to_envelope) with the envelope's id given: a
    /// runtime that has just read the clock for the settlement makes the id
    /// from that reading ([`EventId::generate`]) rather than reading it again.
    pub fn to_envelope_with_id(&self, id: EventId, topic: Name, handled: &Envelope) -> Envelope {
        self.borrowed().to_envelope_with_id(id, topic, handled)
    }

    /// Writes the receipt as JSON — the same document serde produces for it,
    /// written by hand because every handled event publishes one.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.borrowed().write_json(out)
    }

    /// Reads a receipt from its envelope; `None` when the envelope is not one.
    pub fn from_envelope(env: &Envelope) -> Option<Receipt> {
        if env.event_type.as_str() != RECEIPT_TYPE {
            return None;
        }
        serde_json::from_slice(&env.data).ok()
    }
}

/// A [`Receipt`] borrowed from what its writer holds: the same fields, and
/// the same document and envelope, without copying the names and ids into a
/// `Receipt` first (a runtime writes one per handled event).
#[derive(Debug, Clone, Copy)]
pub struct ReceiptRef<'a> {
    /// The service that handled the event.
    pub service: &'a Name,
    /// The handled event's id.
    pub event_id: &'a EventId,
    /// The handled event's type.
    pub event_type: &'a str,
    /// The handled event's flow.
    pub correlation_id: &'a EventId,
    /// Where it was read from.
    pub topic: &'a str,
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// How many times the handler ran for this delivery (0 for a duplicate).
    pub attempts: u32,
    /// Why it failed, when it did (the last error).
    pub reason: Option<&'a str>,
    /// When the first attempt started.
    pub started: Timestamp,
    /// Microseconds from the first attempt's start to the settlement.
    pub duration_us: u64,
    /// Ids of the events the handler published.
    pub emitted: &'a [EventId],
}

impl ReceiptRef<'_> {
    /// [`Receipt::to_envelope_with_id`] for the borrowed receipt.
    pub fn to_envelope_with_id(&self, id: EventId, topic: Name, handled: &Envelope) -> Envelope {
        Arc::unwrap_or_clone(self.to_shared_envelope(id, topic, handled))
    }

    /// [`to_envelope_with_id`](Self::to_envelope_with_id), shared, as the
    /// runtime publishes it.
    pub fn to_shared_envelope(
        &self,
        id: EventId,
        topic: Name,
        handled: &Envelope,
    ) -> Arc<Envelope> {
        self.envelope_of(|buf| self.write_json(buf), id, topic, handled)
    }

    /// [`to_shared_envelope`](Self::to_shared_envelope), its document begun
    /// with `head` (see [`ReceiptHead`]): the same envelope, the same bytes.
    pub fn to_shared_envelope_with(
        &self,
        head: &ReceiptHead,
        id: EventId,
        topic: Name,
        handled: &Envelope,
    ) -> Arc<Envelope> {
        self.envelope_of(|buf| self.write_json_with(head, buf), id, topic, handled)
    }

    /// The receipt's envelope, its document written by `write`.
    fn envelope_of(
        &self,
        write: impl FnOnce(&mut Vec<u8>),
        id: EventId,
        topic: Name,
        handled: &Envelope,
    ) -> Arc<Envelope> {
        let data = crate::codec::bytes_from_scratch(|buf| {
            write(buf);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|never| match never {});
        let settled = self
            .started
            .as_micros()
            .saturating_add(i64::try_from(self.duration_us).unwrap_or(i64::MAX));
        Arc::new(Envelope {
            id,
            event_type: Name::from_static(RECEIPT_TYPE),
            source: self.service.clone(),
            topic,
            key: handled.key.clone(),
            correlation_id: handled.correlation_id.clone(),
            causation_id: Some(handled.id.clone()),
            time: Timestamp::from_micros(settled),
            traceparent: handled.traceparent.clone(),
            tracestate: handled.tracestate.clone(),
            content_type: ContentType::Json,
            data,
            headers: crate::Headers::new(),
        })
    }

    /// [`Receipt::write_json`] for the borrowed receipt: the same bytes.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Room for all of it at once (escapes aside): the fixed text, ids
        // and numbers take under 300 bytes.
        out.reserve(
            140 + self.service.len() + self.event_type.len() + self.topic.len() + self.rest_len(),
        );
        let ids = [self.event_id, self.correlation_id];
        write_head(
            out,
            [self.service, self.event_type, self.topic],
            |out, i| json_id(out, ids[i]),
        );
        self.write_rest(out);
    }

    /// [`write_json`](Self::write_json), begun with `head`: the same bytes,
    /// with the names' text copied from `head` rather than checked and
    /// quoted again. Falls back to `write_json` when `head` was made for
    /// other names, or an id is not a UUID.
    pub fn write_json_with(&self, head: &ReceiptHead, out: &mut Vec<u8>) {
        // The head first: when it was made for other names, `write_json`
        // writes the ids' text, so it is not written here for nothing.
        if !head.is_for(self.service, self.event_type, self.topic) {
            return self.write_json(out);
        }
        let (Some(event_id), Some(correlation_id)) =
            (self.event_id.uuid_text(), self.correlation_id.uuid_text())
        else {
            return self.write_json(out);
        };
        out.reserve(head.text.len() + 2 * 36 + self.rest_len());
        let (first, rest) = head.text.split_at(head.middle);
        let (middle, last) = rest.split_at(head.last - head.middle);
        out.extend_from_slice(first);
        out.extend_from_slice(&event_id);
        out.extend_from_slice(middle);
        out.extend_from_slice(&correlation_id);
        out.extend_from_slice(last);
        self.write_rest(out);
    }

    /// Room for what follows the topic (escapes aside): the numbers, the
    /// outcome, the reason and the emitted ids.
    fn rest_len(&self) -> usize {
        160 + self.reason.map_or(0, |r| r.len() + 12) + 39 * self.emitted.len()
    }

    /// What follows `"partition":`, to the end.
    fn write_rest(&self, out: &mut Vec<u8>) {
        json_int(out, i64::from(self.partition));
        out.extend_from_slice(b",\"offset\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.offset).as_bytes());
        out.extend_from_slice(b",\"outcome\":\"");
        out.extend_from_slice(self.outcome.as_str().as_bytes());
        out.extend_from_slice(b"\",\"attempts\":");
        json_int(out, i64::from(self.attempts));
        if let Some(reason) = self.reason {
            out.extend_from_slice(b",\"reason\":");
            json_str(out, reason);
        }
        out.extend_from_slice(b",\"started\":");
        json_int(out, self.started.as_micros());
        out.extend_from_slice(b",\"duration_us\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.duration_us).as_bytes());
        if !self.emitted.is_empty() {
            out.extend_from_slice(b",\"emitted\":[");
            for (i, id) in self.emitted.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_id(out, id);
            }
            out.push(b']');
        }
        out.push(b'}');
    }
}

/// The text a receipt's document begins with when its service handles one
/// event type read from one topic: everything up to `"partition":` but the
/// two ids. The same for every delivery of a route, so a runtime makes it
/// once per route and writes each receipt with
/// [`ReceiptRef::write_json_with`]: the names are then copied, not checked
/// for escapes and quoted again for every handled event.
#[derive(Debug, Clone)]
pub struct ReceiptHead {
    service: Name,
    event_type: Name,
    topic: Name,
    /// `{"service":…,"event_id":"`, then `","event_type":…,"correlation_id":"`
    /// from `middle`, then `","topic":…,"partition":` from `last`.
    text: Vec<u8>,
    middle: usize,
    last: usize,
}

impl ReceiptHead {
    /// The head of the receipts of `service` for events of `event_type` read
    /// from `topic`.
    pub fn new(service: &Name, event_type: &Name, topic: &Name) -> Self {
        let mut text = Vec::with_capacity(80 + service.len() + event_type.len() + topic.len());
        // Each id's place: between its quotes.
        let mut places = [0; 2];
        write_head(&mut text, [service, event_type, topic], |out, i| {
            out.push(b'"');
            places[i] = out.len();
            out.push(b'"');
        });
        let [middle, last] = places;
        ReceiptHead {
            service: service.clone(),
            event_type: event_type.clone(),
            topic: topic.clone(),
            text,
            middle,
            last,
        }
    }

    /// Whether this is the head of receipts with these names.
    #[inline]
    pub fn is_for(&self, service: &str, event_type: &str, topic: &str) -> bool {
        same(&self.service, service)
            && same(&self.event_type, event_type)
            && same(&self.topic, topic)
    }
}

/// A receipt's document up to `"partition":`: its `names` (service, event
/// type, topic), and, where the handled event's id and its flow's go,
/// whatever `id` writes (called with 0, then 1). The one place the order of
/// these fields is written, for [`ReceiptRef::write_json`] and
/// [`ReceiptHead`] alike.
#[inline]
fn write_head(out: &mut Vec<u8>, names: [&str; 3], mut id: impl FnMut(&mut Vec<u8>, usize)) {
    let [service, event_type, topic] = names;
    out.extend_from_slice(b"{\"service\":");
    json_str(out, service);
    out.extend_from_slice(b",\"event_id\":");
    id(out, 0);
    out.extend_from_slice(b",\"event_type\":");
    json_str(out, event_type);
    out.extend_from_slice(b",\"correlation_id\":");
    id(out, 1);
    out.extend_from_slice(b",\"topic\":");
    json_str(out, topic);
    out.extend_from_slice(b",\"partition\":");
}

/// String equality, told at once when both are the same text in memory (a
/// route's names are shared, not copied, from one delivery to the next).
#[inline]
fn same(a: &str, b: &str) -> bool {
    (std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()) || a == b
}

fn json_int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn json_id(out: &mut Vec<u8>, id: &EventId) {
    match id.uuid_text() {
        Some(text) => {
            let mut quoted = [b'"'; 38];
            quoted[1..37].copy_from_slice(&text);
            out.extend_from_slice(&quoted);
        }
        None => json_str(out, id.text(&mut [0; 36])),
    }
}

/// A JSON string; plain text (the usual case for names) is copied as is.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if plain(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // serde_json's escaping for anything unusual; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// One in every byte of a word.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte of a word.
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether JSON leaves `text` as it is: no control character, quote or
/// backslash (what serde_json escapes). Eight bytes at a time (SWAR): a
/// receipt checks three names.
fn plain(text: &[u8]) -> bool {
    // Each test is exact for the word as a whole: the borrow that can
    // corrupt the bytes above a match only does so once one has matched.
    fn plain8(x: u64) -> bool {
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
        let control = x.wrapping_sub(0x20 * ONES) & !x & HIGHS;
        let quote = zero(x ^ (u64::from(b'"') * ONES));
        let backslash = zero(x ^ (u64::from(b'\\') * ONES));
        control | quote | backslash == 0
    }
    if text.len() < 8 {
        return text.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&text[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let mut at = 0;
    while at + 8 < text.len() {
        if !plain8(word(at)) {
            return false;
        }
        at += 8;
    }
    // The last eight bytes, overlapping the word before if need be.
    plain8(word(text.len() - 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_told_from_text_json_escapes() {
        let escaped = |t: &[u8]| t.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        let mut cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"payment".to_vec(),
            b"bench.s1".to_vec(),
            "caf\u{e9} \u{1f600}".as_bytes().to_vec(),
            b"\x7f\x20~".to_vec(),
        ];
        // Every byte that matters, at every position of words and tails.
        for len in 1..=17 {
            for pos in 0..len {
                for b in [
                    0x00, 0x01, 0x1f, 0x20, 0x21, b'"', 0x23, b'\\', 0x5b, 0x5d, 0x7f, 0x80, 0xff,
                ] {
                    let mut t = vec![b'x'; len];
                    t[pos] = b;
                    cases.push(t);
                }
            }
        }
        for t in cases {
            assert_eq!(plain(&t), !escaped(&t), "{t:?}");
        }
    }

    /// Service payment's receipt for `handled`, settled as `outcome` at
    /// offset 0 of partition 0 after one attempt, just now, emitting nothing.
    fn answering(handled: &Envelope, outcome: Outcome) -> Receipt {
        Receipt {
            service: Name::from_static("payment"),
            event_id: handled.id.clone(),
            event_type: handled.event_type.clone(),
            correlation_id: handled.correlation_id.clone(),
            topic: handled.topic.clone(),
            partition: 0,
            offset: 0,
            outcome,
            attempts: 1,
            reason: None,
            started: Timestamp::now(),
            duration_us: 0,
            emitted: vec![],
        }
    }

    #[test]
    fn receipt_round_trips_through_its_envelope() {
        let handled = Envelope::new("OrderPlaced", "orders", "{}").with_source("checkout");
        let r = Receipt {
            partition: 3,
            offset: 17,
            attempts: 5,
            reason: Some("handler failed after 5 attempts: card declined".into()),
            duration_us: 1234,
            ..answering(&handled, Outcome::DeadLettered)
        };
        let env = r.to_envelope(Name::from_static(RECEIPTS_TOPIC), &handled);
        // The hand-written JSON is exactly serde's.
        assert_eq!(env.data, serde_json::to_vec(&r).unwrap());
        let mut odd = r.clone();
        odd.service = Name::from("pay\"ment\n");
        odd.event_id = EventId::parse("order-7 \"quoted\"").unwrap();
        odd.emitted = vec![EventId::new(), EventId::parse("x").unwrap()];
        odd.reason = None;
        let mut buf = Vec::new();
        odd.write_json(&mut buf);
        assert_eq!(buf, serde_json::to_vec(&odd).unwrap());
        assert_eq!(env.correlation_id, handled.correlation_id);
        assert_eq!(env.causation_id.as_ref(), Some(&handled.id));
        assert_eq!(env.source, "payment");
        // Written from borrowed fields, shared: the same envelope.
        let shared = r
            .borrowed()
            .to_shared_envelope(env.id.clone(), env.topic.clone(), &handled);
        assert_eq!(*shared, env);
        assert_eq!(Receipt::from_envelope(&env), Some(r));
        assert_eq!(Receipt::from_envelope(&handled), None);
    }

    #[test]
    fn a_receipt_begun_with_its_head_is_the_same_document() {
        let names = [
            ("payment", "OrderPlaced", "orders"),
            ("pay\"ment\n", "Order\\Placed", "or\u{1}ders"),
            ("caf\u{e9}", "\u{1f600}", ""),
        ];
        let (one, two) = (EventId::new(), EventId::new());
        let text = EventId::parse("order-7 \"quoted\"").unwrap();
        // Two different UUIDs both ways round (a head that swapped the ids
        // would show), and a text id on either side (written whole).
        let ids = [
            (one.clone(), two.clone()),
            (two.clone(), one.clone()),
            (one.clone(), text.clone()),
            (text.clone(), two.clone()),
        ];
        let emitted = [
            vec![],
            vec![EventId::new()],
            vec![EventId::new(), text.clone()],
        ];
        let reasons = [None, Some("card \"declined\"\n"), Some("")];
        let (mut checked, mut through_head) = (0, 0);
        for (service, event_type, topic) in names {
            let (service, event_type, topic) = (
                Name::from(service),
                Name::from(event_type),
                Name::from(topic),
            );
            let head = ReceiptHead::new(&service, &event_type, &topic);
            // Heads made for other names, each differing in one: the
            // receipt is written in full.
            let other = Name::from_static("other");
            let others = [
                ReceiptHead::new(&other, &event_type, &topic),
                ReceiptHead::new(&service, &other, &topic),
                ReceiptHead::new(&service, &event_type, &other),
            ];
            for (event_id, correlation_id) in &ids {
                for emitted in &emitted {
                    for reason in reasons {
                        let r = Receipt {
                            service: service.clone(),
                            event_id: event_id.clone(),
                            event_type: event_type.clone(),
                            correlation_id: correlation_id.clone(),
                            topic: topic.clone(),
                            partition: 7,
                            offset: u64::MAX,
                            outcome: Outcome::Acked,
                            attempts: 2,
                            reason: reason.map(str::to_owned),
                            started: Timestamp::from_micros(-3),
                            duration_us: 0,
                            emitted: emitted.clone(),
                        };
                        let serde = serde_json::to_vec(&r).unwrap();
                        let mut whole = Vec::new();
                        r.write_json(&mut whole);
                        assert_eq!(whole, serde);
                        for h in std::iter::once(&head).chain(&others) {
                            let mut buf = b"kept".to_vec();
                            r.borrowed().write_json_with(h, &mut buf);
                            assert_eq!(buf[..4], *b"kept");
                            assert_eq!(
                                String::from_utf8_lossy(&buf[4..]),
                                String::from_utf8_lossy(&serde)
                            );
                        }
                        checked += 1;
                        if event_id.uuid_text().is_some() && correlation_id.uuid_text().is_some() {
                            through_head += 1;
                        }
                    }
                }
            }
        }
        assert_eq!((checked, through_head), (3 * 4 * 3 * 3, 3 * 2 * 3 * 3));
        // And in its envelope, for an event that is not its flow's first.
        let mut handled = Envelope::new("OrderPlaced", "orders", "{}").with_source("checkout");
        handled.correlation_id = EventId::new();
        let r = Receipt {
            offset: 1,
            duration_us: 5,
            emitted: vec![EventId::new()],
            ..answering(&handled, Outcome::Acked)
        };
        let head = ReceiptHead::new(&r.service, &r.event_type, &r.topic);
        let id = EventId::new();
        let topic = Name::from_static(RECEIPTS_TOPIC);
        assert_eq!(
            *r.borrowed()
                .to_shared_envelope_with(&head, id.clone(), topic.clone(), &handled),
            r.to_envelope_with_id(id, topic, &handled)
        );
    }

    #[test]
    fn an_ignored_receipt_is_written_and_read_with_its_word() {
        let handled = Envelope::new("OrderCancelled", "orders", "{}").with_source("checkout");
        let r = Receipt {
            offset: 3,
            attempts: 0,
            reason: Some("no handler for event type 'OrderCancelled'".into()),
            ..answering(&handled, Outcome::Ignored)
        };
        let mut buf = Vec::new();
        r.write_json(&mut buf);
        assert_eq!(buf, serde_json::to_vec(&r).unwrap());
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains("\"outcome\":\"ignored\""), "{text}");
        let env = r.to_envelope(Name::from_static(RECEIPTS_TOPIC), &handled);
        assert_eq!(Receipt::from_envelope(&env), Some(r));
    }
}
