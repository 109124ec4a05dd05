//! Receipts' JSON payloads, parsed: a literal reader for what the runtime writes, a scanner for flat JSON, serde for the rest.

use std::borrow::Cow;

use choreo_core::{EventId, Name, Outcome};
use serde::Deserialize;

use crate::util::Interner;

/// The borrowed shape of a receipt's JSON payload.
#[derive(Deserialize)]
struct ReceiptView<'a> {
    #[serde(borrow)]
    service: Cow<'a, str>,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    outcome: OutcomeText,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    started: i64,
    #[serde(default)]
    duration_us: u64,
    #[serde(default)]
    emitted: Count,
}

/// A receipt's outcome as written: the runtime's outcomes, and `ignored`
/// (a record the service does not route: acknowledged, not handled).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum OutcomeText {
    Acked,
    DeadLettered,
    Duplicate,
    Redelivered,
    Ignored,
}

/// The outcome (`None`: ignored) of an outcome's text.
#[inline]
fn outcome(text: &[u8]) -> Option<Option<Outcome>> {
    Some(match text {
        b"acked" => Some(Outcome::Acked),
        b"dead_lettered" => Some(Outcome::DeadLettered),
        b"duplicate" => Some(Outcome::Duplicate),
        b"redelivered" => Some(Outcome::Redelivered),
        b"ignored" => None,
        _ => return None,
    })
}

/// A receipt's payload, parsed.
pub(crate) struct ParsedReceipt {
    pub(crate) event: EventId,
    pub(crate) service: Name,
    pub(crate) event_type: Name,
    pub(crate) outcome: Outcome,
    pub(crate) attempts: u32,
    pub(crate) reason: Option<Box<str>>,
    pub(crate) started: i64,
    pub(crate) duration_us: u64,
    pub(crate) emitted: u32,
    /// The service ignored the record (it does not route its type): not a
    /// handling, not a consumption. `outcome` is then meaningless.
    pub(crate) ignored: bool,
}

/// Parses a receipt envelope's payload; `None` when it is not a receipt.
pub(crate) fn parse_receipt(data: &[u8], names: &mut Interner) -> Option<ParsedReceipt> {
    written_receipt(data, names)
        .or_else(|| fast_receipt(data, names))
        .or_else(|| serde_receipt(data, names))
}

/// Reads a receipt exactly as [`choreo_core::Receipt::write_json`] writes it:
/// the keys in its order, no spaces, no escapes, UUID ids. Matching that
/// shape literally is a third of the cost of scanning JSON; anything else
/// (`None`) goes to the general scanner.
fn written_receipt(data: &[u8], names: &mut Interner) -> Option<ParsedReceipt> {
    let mut p = Written { b: data, i: 0 };
    p.lit(b"{\"service\":")?;
    let service = p.name(names)?;
    p.lit(b",\"event_id\":")?;
    let event = p.id()?;
    p.lit(b",\"event_type\":")?;
    let event_type = p.name(names)?;
    p.lit(b",\"correlation_id\":")?;
    p.id()?;
    p.lit(b",\"topic\":")?;
    p.plain()?;
    p.lit(b",\"partition\":")?;
    p.int()?;
    p.lit(b",\"offset\":")?;
    p.int()?;
    p.lit(b",\"outcome\":")?;
    let settled = outcome(p.plain()?)?;
    p.lit(b",\"attempts\":")?;
    let attempts = u32::try_from(p.int()?).ok()?;
    let reason = if p.lit(b",\"reason\":").is_some() {
        Some(Box::from(std::str::from_utf8(p.plain()?).ok()?))
    } else {
        None
    };
    p.lit(b",\"started\":")?;
    let started = p.int()?;
    p.lit(b",\"duration_us\":")?;
    let duration_us = u64::try_from(p.int()?).ok()?;
    let mut emitted = 0u32;
    if p.lit(b",\"emitted\":[").is_some() {
        loop {
            p.id()?;
            emitted += 1;
            if p.lit(b",").is_none() {
                break;
            }
        }
        p.lit(b"]")?;
    }
    p.lit(b"}")?;
    Some(ParsedReceipt {
        event,
        service,
        event_type,
        outcome: settled.unwrap_or(Outcome::Acked),
        attempts,
        reason,
        started,
        duration_us,
        emitted,
        ignored: settled.is_none(),
    })
}

/// The cursor of [`written_receipt`].
struct Written<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Written<'a> {
    #[inline(always)]
    fn lit(&mut self, s: &[u8]) -> Option<()> {
        let end = self.i + s.len();
        (self.b.get(self.i..end)? == s).then(|| self.i = end)
    }

    /// A string without escapes.
    #[inline(always)]
    fn plain(&mut self) -> Option<&'a [u8]> {
        let rest = self.b.get(self.i..)?;
        let (&b'"', rest) = rest.split_first()? else {
            return None;
        };
        let n = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
        if rest[n] != b'"' {
            return None;
        }
        self.i += n + 2;
        Some(&rest[..n])
    }

    #[inline(always)]
    fn name(&mut self, names: &mut Interner) -> Option<Name> {
        let raw = self.plain()?;
        match names.find_bytes(raw) {
            Some(n) => Some(n),
            None => Some(names.name(std::str::from_utf8(raw).ok()?)),
        }
    }

    /// A quoted UUID in canonical text.
    #[inline(always)]
    fn id(&mut self) -> Option<EventId> {
        let quoted = self.b.get(self.i..self.i + 38)?;
        if quoted[0] != b'"' || quoted[37] != b'"' {
            return None;
        }
        let id = EventId::from_uuid_text(&quoted[1..37])?;
        self.i += 38;
        Some(id)
    }

    #[inline(always)]
    fn int(&mut self) -> Option<i64> {
        json_int(self.b, &mut self.i)
    }
}

/// A JSON integer at `b[*i..]`, advancing `i` past it; `None` for anything
/// else (a fraction, an exponent, no digits, an overflow).
#[inline(always)]
fn json_int(b: &[u8], i: &mut usize) -> Option<i64> {
    let neg = b.get(*i) == Some(&b'-');
    if neg {
        *i += 1;
    }
    let start = *i;
    let mut v: i64 = 0;
    while let Some(&c) = b.get(*i) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d))?;
        *i += 1;
    }
    if *i == start || matches!(b.get(*i), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some(if neg { -v } else { v })
}

/// A scanner for the flat JSON object the runtime writes for a receipt. It
/// handles what serde_json produces for [`choreo_core::Receipt`] and gives up
/// (`None`, so serde_json takes over) on anything else: escapes, nesting.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    #[inline]
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    #[inline]
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        let end = start + memchr::memchr2(b'"', b'\\', &self.b[start..])?;
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        Some(&self.b[start..end])
    }

    #[inline]
    fn int(&mut self) -> Option<i64> {
        self.ws();
        json_int(self.b, &mut self.i)
    }

    fn null(&mut self) -> bool {
        self.ws();
        if self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            true
        } else {
            false
        }
    }

    /// Counts the strings of an array of strings.
    fn count_strings(&mut self) -> Option<u32> {
        self.eat(b'[')?;
        let mut n = 0u32;
        if self.eat(b']').is_some() {
            return Some(0);
        }
        loop {
            self.string()?;
            n += 1;
            if self.eat(b',').is_none() {
                self.eat(b']')?;
                return Some(n);
            }
        }
    }
}

fn fast_receipt(data: &[u8], names: &mut Interner) -> Option<ParsedReceipt> {
    let mut p = Scan { b: data, i: 0 };
    p.eat(b'{')?;
    let (mut service, mut event, mut ty, mut settled) = (None, None, None, None);
    let (mut attempts, mut started, mut duration, mut emitted) = (0u32, 0i64, 0u64, 0u32);
    let mut reason = None;
    if p.eat(b'}').is_none() {
        loop {
            let key = p.string()?;
            p.eat(b':')?;
            match key {
                b"service" => service = Some(std::str::from_utf8(p.string()?).ok()?),
                b"event_id" => {
                    let raw = p.string()?;
                    event = EventId::from_uuid_text(raw)
                        .or_else(|| EventId::parse(std::str::from_utf8(raw).ok()?));
                }
                b"event_type" => ty = Some(std::str::from_utf8(p.string()?).ok()?),
                b"outcome" => settled = Some(outcome(p.string()?)?),
                b"attempts" => attempts = u32::try_from(p.int()?).ok()?,
                b"started" => started = p.int()?,
                b"duration_us" => duration = u64::try_from(p.int()?).ok()?,
                b"emitted" => emitted = p.count_strings()?,
                b"reason" => {
                    if !p.null() {
                        reason = Some(Box::from(std::str::from_utf8(p.string()?).ok()?));
                    }
                }
                b"correlation_id" | b"topic" => {
                    p.string()?;
                }
                b"partition" | b"offset" => {
                    p.int()?;
                }
                _ => return None,
            }
            if p.eat(b',').is_none() {
                p.eat(b'}')?;
                break;
            }
        }
    }
    Some(ParsedReceipt {
        event: event?,
        service: names.name(service?),
        event_type: names.name(ty?),
        outcome: settled?.unwrap_or(Outcome::Acked),
        attempts,
        reason,
        started,
        duration_us: duration,
        emitted,
        ignored: settled?.is_none(),
    })
}

fn serde_receipt(data: &[u8], names: &mut Interner) -> Option<ParsedReceipt> {
    let view = serde_json::from_slice::<ReceiptView<'_>>(data).ok()?;
    let event = EventId::from_uuid_text(view.event_id.as_bytes())
        .or_else(|| EventId::parse(&view.event_id))?;
    Some(ParsedReceipt {
        event,
        service: names.name(&view.service),
        event_type: names.name(&view.event_type),
        outcome: match view.outcome {
            OutcomeText::Acked | OutcomeText::Ignored => Outcome::Acked,
            OutcomeText::DeadLettered => Outcome::DeadLettered,
            OutcomeText::Duplicate => Outcome::Duplicate,
            OutcomeText::Redelivered => Outcome::Redelivered,
        },
        ignored: matches!(view.outcome, OutcomeText::Ignored),
        attempts: view.attempts,
        reason: view.reason.map(String::into_boxed_str),
        started: view.started,
        duration_us: view.duration_us,
        emitted: view.emitted.0,
    })
}

/// Counts a JSON array's elements without keeping them.
#[derive(Default)]
struct Count(u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Count, A::Error> {
                let mut n = 0u32;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n = n.saturating_add(1);
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_core::{Name, Receipt};

    fn receipt(reason: Option<&str>, emitted: usize) -> Receipt {
        Receipt {
            service: Name::from("pay\u{e9}ment"),
            event_id: EventId::new(),
            event_type: Name::from("OrderPlaced"),
            correlation_id: EventId::new(),
            topic: Name::from("orders"),
            partition: 3,
            offset: 77,
            outcome: Outcome::DeadLettered,
            attempts: 4,
            reason: reason.map(str::to_owned),
            started: choreo_core::Timestamp::from_micros(-5),
            duration_us: 1234,
            emitted: (0..emitted).map(|_| EventId::new()).collect(),
        }
    }

    #[test]
    fn the_fast_receipt_parser_agrees_with_serde() {
        let mut names = Interner::default();
        for r in [
            receipt(None, 0),
            receipt(Some("carrier down"), 2),
            receipt(Some("quote \" inside"), 1),
        ] {
            let json = serde_json::to_vec(&r).unwrap();
            let mut written = Vec::new();
            r.write_json(&mut written);
            let a = serde_receipt(&json, &mut names).unwrap();
            let b = parse_receipt(&json, &mut names).unwrap();
            let d = parse_receipt(&written, &mut names).unwrap();
            // The literal reader takes what the runtime writes, escapes aside.
            let e = written_receipt(&written, &mut names);
            assert_eq!(
                e.is_some(),
                !r.reason.as_deref().unwrap_or("").contains('"')
            );
            for p in [&a, &b, &d].into_iter().chain(e.as_ref()) {
                assert_eq!(p.event, r.event_id);
                assert_eq!(p.service, r.service);
                assert_eq!(p.event_type, r.event_type);
                assert_eq!(p.outcome, r.outcome);
                assert_eq!(p.attempts, 4);
                assert_eq!(p.started, -5);
                assert_eq!(p.duration_us, 1234);
                assert_eq!(p.emitted as usize, r.emitted.len());
                assert_eq!(p.reason.as_deref(), r.reason.as_deref());
            }
        }
        // An escape makes the fast path give up; serde still reads it.
        let json = serde_json::to_vec(&receipt(Some("quote \" inside"), 0)).unwrap();
        assert!(fast_receipt(&json, &mut names).is_none());
        assert!(parse_receipt(b"{\"service\": 1}", &mut names).is_none());
        // Cut anywhere, the literal reader gives up rather than misread.
        let mut written = Vec::new();
        receipt(Some("carrier down"), 2).write_json(&mut written);
        for end in 0..written.len() {
            assert!(
                written_receipt(&written[..end], &mut names).is_none(),
                "{end}"
            );
        }
        assert!(parse_receipt(b"not json", &mut names).is_none());
    }

    #[test]
    fn an_ignored_receipt_is_read_as_ignored_by_every_parser() {
        let mut names = Interner::default();
        let mut written = Vec::new();
        receipt(None, 0).write_json(&mut written);
        let text = String::from_utf8(written)
            .unwrap()
            .replace("\"outcome\":\"dead_lettered\"", "\"outcome\":\"ignored\"");
        for parsed in [
            written_receipt(text.as_bytes(), &mut names),
            fast_receipt(text.as_bytes(), &mut names),
            serde_receipt(text.as_bytes(), &mut names),
        ] {
            assert!(parsed.unwrap().ignored);
        }
        let spaced = text.replace(',', ", ");
        assert!(
            parse_receipt(spaced.as_bytes(), &mut names)
                .unwrap()
                .ignored
        );
        let wrong = text.replace("ignored", "ignoring");
        assert!(parse_receipt(wrong.as_bytes(), &mut names).is_none());
    }
}
