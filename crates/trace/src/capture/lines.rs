//! JSON lines read straight into the tracer's compact records: a one-pass scanner for the plainest lines, serde with borrowed strings for the rest of the common shapes.
//!
//! Whatever neither takes is read by [`super::jsonl::decode`], so every line
//! reads as it always did, errors included.

use choreo_core::{EventId, Timestamp, base64};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::compact::{CompactEvent, Item, LocalNames};
use crate::util::Interner;

/// The borrowed shape of a line, for [`decode_item`]: strings without
/// escapes, payloads checked but not kept. A line it cannot take (an escape,
/// an id that is a number) is read by [`super::jsonl::decode`] instead.
#[derive(Deserialize, Default, Debug, PartialEq)]
struct FastLine<'a> {
    #[serde(default, borrow)]
    id: Option<&'a str>,
    #[serde(default, borrow, rename = "type")]
    event_type: Option<&'a str>,
    #[serde(default, borrow)]
    source: Option<&'a str>,
    #[serde(default, borrow)]
    topic: Option<&'a str>,
    #[serde(default, borrow)]
    key: Option<&'a str>,
    #[serde(default, borrow)]
    key_base64: Option<&'a str>,
    #[serde(default, borrow, alias = "correlationid")]
    correlation_id: Option<&'a str>,
    #[serde(default, borrow, alias = "causationid")]
    causation_id: Option<&'a str>,
    #[serde(default, borrow)]
    time: Option<FastTime<'a>>,
    #[serde(default, borrow)]
    traceparent: Option<&'a str>,
    #[serde(default, borrow)]
    tracestate: Option<&'a str>,
    #[serde(default, borrow, alias = "datacontenttype")]
    content_type: Option<&'a str>,
    #[serde(default)]
    data: Option<IgnoredAny>,
    #[serde(default, borrow)]
    data_base64: Option<&'a str>,
    #[serde(default)]
    headers: Option<IgnoredAny>,
    #[serde(default)]
    partition: Option<u32>,
    #[serde(default)]
    offset: Option<u64>,
}

/// A line's `time` as [`FastLine`] takes it.
#[derive(Debug, PartialEq)]
enum FastTime<'a> {
    Micros(i64),
    Text(&'a str),
    /// Anything [`super::jsonl::decode`] must judge (a fraction, an escaped string).
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for FastTime<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FastTime<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("RFC 3339 text or microseconds")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(FastTime::Micros(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(FastTime::Other, FastTime::Micros))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(FastTime::Other)
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FastTime::Text(v))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(FastTime::Other)
            }
        }
        d.deserialize_any(V)
    }
}

/// serde_json's limit on nesting when it builds a `Value` ([`super::jsonl::decode`]
/// does); skipping a payload has none, so a line that could reach it is
/// left to [`super::jsonl::decode`].
const NESTING: usize = 120;

/// Decodes one line straight into the tracer's compact form (see
/// [`crate::compact`]): what [`super::jsonl::decode`] and the tracer's ingestion would make
/// of it. `None` when the line is not of the common shape (escapes, headers,
/// an embedded receipt payload, anything [`super::jsonl::decode`] would refuse): the caller
/// then reads it with [`super::jsonl::decode`]. `scratch` holds decoded base64.
pub(crate) fn decode_item(
    line: &[u8],
    local: &mut LocalNames,
    names: &mut Interner,
    scratch: &mut Vec<u8>,
) -> Option<Item> {
    let (l, decoded) = match scan(line, scratch) {
        Some(read) => read,
        None => (serde_json::from_slice::<FastLine<'_>>(line).ok()?, false),
    };
    if l.headers.is_some() {
        return None;
    }
    if l.data.is_some()
        && line.len() > NESTING
        && memchr::memchr2_iter(b'{', b'[', line).count() >= NESTING
    {
        return None;
    }
    let time = match l.time {
        Some(FastTime::Micros(t)) => t,
        Some(FastTime::Text(s)) => Timestamp::parse_rfc3339(s)?.as_micros(),
        Some(FastTime::Other) => return None,
        None => Timestamp::EPOCH.as_micros(),
    };
    // Rare (a key that is not text): checked apart, `scratch` may hold the payload.
    if l.key.is_none()
        && let Some(k) = l.key_base64
        && base64::decode_either(k).is_none()
    {
        return None;
    }
    let _ = (l.traceparent, l.tracestate, l.content_type);
    // The payload: only receipts' is read; everyone's base64 must be base64.
    let decoded = match l.data_base64 {
        Some(_) if decoded => true,
        Some(b) => {
            if !base64::decode_either_into(b, scratch) {
                return None;
            }
            true
        }
        None => false,
    };
    // Any id but an empty one is an id (`EventId::parse`); a receipt's own
    // is not kept, so it is only parsed for an event.
    let id = l.id.filter(|id| !id.is_empty())?;
    let ty = l.event_type.unwrap_or("");
    let correlation = l.correlation_id.and_then(parse_id);
    let (Some(correlation), false) = (correlation, ty.is_empty()) else {
        return Some(Item::Unattributed);
    };
    let ty_local = local.of(ty.as_bytes())?;
    let source = local.of(l.source.unwrap_or("").as_bytes())?;
    let topic = local.of(l.topic.unwrap_or("").as_bytes())?;
    if crate::record::is_receipt_type(ty) {
        let data: &[u8] = match (decoded, l.data) {
            (true, _) => scratch,
            // An embedded payload: decode normalises it first.
            (false, Some(_)) => return None,
            (false, None) => &[],
        };
        return Some(match crate::receipt::parse_receipt(data, names) {
            Some(view) => Item::receipt(correlation, time, view, local),
            None => Item::BadReceipt,
        });
    }
    Some(Item::Event(CompactEvent {
        correlation,
        id: parse_id(id)?,
        cause: l.causation_id.and_then(parse_id),
        ty: ty_local,
        source,
        topic,
        time,
        partition: l.partition,
        offset: l.offset,
    }))
}

#[inline]
fn parse_id(text: &str) -> Option<EventId> {
    EventId::from_uuid_text(text.as_bytes()).or_else(|| EventId::parse(text))
}

/// Reads a line of the plainest shape into a [`FastLine`] in one pass:
/// strings without escapes, whole numbers, no nesting. `None` when unsure
/// (then serde reads it), never a different reading than serde's: every
/// field it takes is checked as strictly, a key twice is left to serde
/// (which refuses it), and so is anything after the object.
///
/// `data_base64` is decoded into `scratch` as it is read (`true` beside the
/// line when it was): see [`Scanner::base64`].
fn scan<'a>(line: &'a [u8], scratch: &mut Vec<u8>) -> Option<(FastLine<'a>, bool)> {
    // The same check as `std::str::from_utf8`, many bytes a step.
    let text = simdutf8::basic::from_utf8(line).ok()?;
    let mut s = Scanner {
        t: text,
        b: line,
        i: 0,
    };
    let mut l = FastLine::default();
    let mut decoded = false;
    let mut seen = 0u32;
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.eat(b'}').is_none() {
        // Where in `WRITTEN` the next key is looked for first.
        let mut next = 0;
        loop {
            let bit = match s.written_key(&mut next) {
                Some(bit) => bit,
                None => {
                    let bit = s.key()?;
                    // Looked for after this key from now on.
                    if let Some(k) = WRITTEN.iter().position(|w| w.bit == bit) {
                        next = k + 1;
                    }
                    bit
                }
            };
            s.ws();
            if bit != 31 {
                if seen & (1 << bit) != 0 {
                    return None;
                }
                seen |= 1 << bit;
            }
            match bit {
                0 => l.id = s.text_or_null()?,
                1 => l.event_type = s.text_or_null()?,
                2 => l.source = s.text_or_null()?,
                3 => l.topic = s.text_or_null()?,
                4 => l.key = s.text_or_null()?,
                5 => l.key_base64 = s.text_or_null()?,
                6 => l.correlation_id = s.text_or_null()?,
                7 => l.causation_id = s.text_or_null()?,
                8 => {
                    l.time = match s.b.get(s.i)? {
                        b'"' => Some(FastTime::Text(s.string()?)),
                        b'n' => s.null()?,
                        _ => Some(FastTime::Micros(s.int()?)),
                    }
                }
                9 => l.traceparent = s.text_or_null()?,
                10 => l.tracestate = s.text_or_null()?,
                11 => l.content_type = s.text_or_null()?,
                12 => l.data = s.scalar()?.then_some(IgnoredAny),
                13 => (l.data_base64, decoded) = s.base64(scratch)?,
                14 => l.headers = s.scalar()?.then_some(IgnoredAny),
                15 => l.partition = s.count_or_null()?.map(u32::try_from).transpose().ok()?,
                16 => l.offset = s.count_or_null()?.map(u64::try_from).transpose().ok()?,
                _ => {
                    s.scalar()?;
                }
            }
            s.ws();
            if s.eat(b',').is_some() {
                s.ws();
                continue;
            }
            s.eat(b'}')?;
            break;
        }
    }
    s.ws();
    (s.i == s.b.len()).then_some((l, decoded))
}

/// The keys as `choreo capture` writes them (in this order, those a line
/// has), each with its colon, and the bit of its field in [`scan`].
const WRITTEN: [Written; 17] = [
    Written::new(b"\"causation_id\":", 7),
    Written::new(b"\"content_type\":", 11),
    Written::new(b"\"correlation_id\":", 6),
    Written::new(b"\"data\":", 12),
    Written::new(b"\"data_base64\":", 13),
    Written::new(b"\"headers\":", 14),
    Written::new(b"\"id\":", 0),
    Written::new(b"\"key\":", 4),
    Written::new(b"\"key_base64\":", 5),
    Written::new(b"\"offset\":", 16),
    Written::new(b"\"partition\":", 15),
    Written::new(b"\"source\":", 2),
    Written::new(b"\"time\":", 8),
    Written::new(b"\"topic\":", 3),
    Written::new(b"\"traceparent\":", 9),
    Written::new(b"\"tracestate\":", 10),
    Written::new(b"\"type\":", 1),
];

/// A key of [`WRITTEN`] with its colon, as two words to compare the next
/// sixteen bytes of a line with (and, for a longer one, its last byte).
struct Written {
    words: [u64; 2],
    masks: [u64; 2],
    len: usize,
    last: u8,
    bit: u32,
}

impl Written {
    const fn new(text: &[u8], bit: u32) -> Self {
        assert!(text.len() <= 17);
        let (mut words, mut masks) = ([0u64; 2], [0u64; 2]);
        let mut i = 0;
        while i < text.len() && i < 16 {
            words[i / 8] |= (text[i] as u64) << (8 * (i % 8));
            masks[i / 8] |= 0xff << (8 * (i % 8));
            i += 1;
        }
        Written {
            words,
            masks,
            len: text.len(),
            last: text[text.len() - 1],
            bit,
        }
    }

    /// Whether `line` (at least seventeen bytes, as two words and the
    /// seventeenth) begins with this key and its colon.
    #[inline(always)]
    fn starts(&self, words: [u64; 2], seventeenth: u8) -> bool {
        ((words[0] ^ self.words[0]) & self.masks[0]) | ((words[1] ^ self.words[1]) & self.masks[1])
            == 0
            && (self.len <= 16 || seventeenth == self.last)
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` (little-endian) that is a quote, a
/// backslash or a control character: the bytes a plain JSON string cannot
/// hold, and its end. Exact for the lowest: a borrow can only mark bytes
/// after one that is.
#[inline(always)]
const fn specials(x: u64) -> u64 {
    const fn below(x: u64, n: u64) -> u64 {
        x.wrapping_sub(n * ONES) & !x & HIGHS
    }
    let quote = x ^ (b'"' as u64 * ONES);
    let backslash = x ^ (b'\\' as u64 * ONES);
    below(quote, 1) | below(backslash, 1) | below(x, 0x20)
}

/// The cursor of [`scan`] over a line known to be UTF-8.
struct Scanner<'a> {
    t: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    #[inline(always)]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    /// A string without escapes or control characters (which JSON forbids
    /// raw), read in one pass, eight bytes at a time: the first special
    /// byte (see [`specials`]) must be its closing quote. Its place is
    /// found from the word's bits, not by a loop over its last bytes.
    #[inline(always)]
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let mut i = start;
        let end = loop {
            if let Some(w) = self.b.get(i..i + 16) {
                let lo = specials(u64::from_le_bytes(w[..8].try_into().ok()?));
                let hi = specials(u64::from_le_bytes(w[8..].try_into().ok()?));
                if lo | hi != 0 {
                    break i + if lo != 0 {
                        (lo.trailing_zeros() / 8) as usize
                    } else {
                        8 + (hi.trailing_zeros() / 8) as usize
                    };
                }
                i += 16;
                continue;
            }
            // Under sixteen bytes left: a word at a time. (One loop over
            // blocks padded to sixteen costs 2 % more instructions a run.)
            let word = match self.b.get(i..i + 8) {
                Some(w) => u64::from_le_bytes(w.try_into().ok()?),
                None => {
                    // The line's last bytes, padded with spaces.
                    let rest = self.b.get(i..)?;
                    let mut w = [b' '; 8];
                    w[..rest.len()].copy_from_slice(rest);
                    u64::from_le_bytes(w)
                }
            };
            let found = specials(word);
            if found != 0 {
                break i + (found.trailing_zeros() / 8) as usize;
            }
            i += 8;
            if i >= self.b.len() {
                return None;
            }
        };
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        // Both ends are ASCII quotes: a slice of the checked text.
        self.t.get(start..end)
    }

    /// A key and its colon, read when they are the next of [`WRITTEN`] from
    /// `next` (or one of the three after it): each is a string without
    /// escapes and a colon, so this reads what [`Self::key`] would, with a
    /// comparison of two words. `next` moves past the key found. `None`
    /// near the line's end, where [`Self::key`] reads every key.
    #[inline(always)]
    fn written_key(&mut self, next: &mut usize) -> Option<u32> {
        let ahead: &[u8; 17] = self.b.get(self.i..self.i + 17)?.try_into().ok()?;
        let words = [
            u64::from_le_bytes(ahead[..8].try_into().ok()?),
            u64::from_le_bytes(ahead[8..16].try_into().ok()?),
        ];
        let end = (*next + 4).min(WRITTEN.len());
        for (k, w) in WRITTEN[*next..end].iter().enumerate() {
            if w.starts(words, ahead[16]) {
                self.i += w.len;
                *next += k + 1;
                return Some(w.bit);
            }
        }
        None
    }

    /// A key, the colon after it, and the bit of its field (31 for one
    /// the tracer does not read).
    #[inline(always)]
    fn key(&mut self) -> Option<u32> {
        let key = self.string()?;
        self.ws();
        self.eat(b':')?;
        Some(match key {
            "id" => 0,
            "type" => 1,
            "source" => 2,
            "topic" => 3,
            "key" => 4,
            "key_base64" => 5,
            "correlation_id" | "correlationid" => 6,
            "causation_id" | "causationid" => 7,
            "time" => 8,
            "traceparent" => 9,
            "tracestate" => 10,
            "content_type" | "datacontenttype" => 11,
            "data" => 12,
            "data_base64" => 13,
            "headers" => 14,
            "partition" => 15,
            "offset" => 16,
            _ => 31,
        })
    }

    /// A string that should be base64 (a payload, often hundreds of
    /// bytes), decoded into `out` as it is read: its end is the next quote
    /// (found by `memchr`, many bytes at a time), and if what lies before
    /// it decodes, it holds nothing but base64's characters, so it is the
    /// string [`Self::string`] would read, with no escape. If it does not
    /// decode, [`Self::string`] reads it (`false`: nothing decoded), and the
    /// caller judges it as before.
    #[inline(always)]
    fn base64(&mut self, out: &mut Vec<u8>) -> Option<(Option<&'a str>, bool)> {
        if self.b.get(self.i)? != &b'"' {
            return self.lit(b"null").map(|()| (None, false));
        }
        let start = self.i + 1;
        if let Some(len) = memchr::memchr(b'"', self.b.get(start..)?)
            && let Some(text) = self.t.get(start..start + len)
            && base64::decode_either_into(text, out)
        {
            self.i = start + len + 1;
            return Some((Some(text), true));
        }
        self.string().map(|s| (Some(s), false))
    }

    #[inline(always)]
    fn null(&mut self) -> Option<Option<FastTime<'a>>> {
        self.lit(b"null")?;
        Some(None)
    }

    #[inline(always)]
    fn lit(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    #[inline(always)]
    fn text_or_null(&mut self) -> Option<Option<&'a str>> {
        match self.b.get(self.i)? {
            b'"' => self.string().map(Some),
            _ => self.lit(b"null").map(|()| None),
        }
    }

    /// A whole number as serde_json reads one into an integer: no leading
    /// zeros, no fraction or exponent, not `-0` (serde_json takes that for
    /// a fraction), within an `i64`.
    #[inline(always)]
    fn int(&mut self) -> Option<i64> {
        let neg = self.eat(b'-').is_some();
        let start = self.i;
        let mut v: i64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            v = v.checked_mul(10)?.checked_add(i64::from(d))?;
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0
            || (digits > 1 && self.b[start] == b'0')
            || (neg && v == 0)
            || matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        Some(if neg { -v } else { v })
    }

    #[inline(always)]
    fn count_or_null(&mut self) -> Option<Option<i64>> {
        if self.b.get(self.i)? == &b'n' {
            return self.lit(b"null").map(|()| None);
        }
        let v = self.int()?;
        (v >= 0).then_some(Some(v))
    }

    /// A value that is not an object or array: `false` for null.
    #[inline(always)]
    fn scalar(&mut self) -> Option<bool> {
        match self.b.get(self.i)? {
            b'"' => self.string().map(|_| true),
            b'n' => self.lit(b"null").map(|()| false),
            b't' => self.lit(b"true").map(|()| true),
            b'f' => self.lit(b"false").map(|()| true),
            _ => self.int().map(|_| true),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn the_first_special_byte_is_found_exactly() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let interesting = [
            0u8, 0x1f, 0x20, b'"', b'!', b'#', b'\\', b'[', b']', 0x7f, 0x80, 0xff,
        ];
        for _ in 0..1_000_000 {
            let mut bytes: [u8; 8] = rng.random();
            let odds = [0.05, 0.3][rng.random_range(0..2)];
            for b in &mut bytes {
                if rng.random_bool(odds) {
                    *b = interesting[rng.random_range(0..interesting.len())];
                }
            }
            let first = bytes
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20);
            let found = specials(u64::from_le_bytes(bytes));
            let lowest = (found != 0).then(|| (found.trailing_zeros() / 8) as usize);
            assert_eq!(lowest, first, "{bytes:?}");
        }
    }

    /// The names of [`WRITTEN`], in its order.
    const WRITTEN_NAMES: [&str; WRITTEN.len()] = [
        "causation_id",
        "content_type",
        "correlation_id",
        "data",
        "data_base64",
        "headers",
        "id",
        "key",
        "key_base64",
        "offset",
        "partition",
        "source",
        "time",
        "topic",
        "traceparent",
        "tracestate",
        "type",
    ];

    /// A key `choreo capture` writes is only taken whole, with its colon:
    /// cut short, followed by anything else, or run on into a longer key,
    /// the line is read as any other (and refused when it is not JSON).
    #[test]
    fn a_written_key_is_taken_only_with_its_colon() {
        for name in WRITTEN_NAMES {
            for after in [
                "x\"a\"",
                "\"a\"",
                " \"a\"",
                "\t:\"a\"",
                " :\"a\"",
                "s\":\"a\"",
                ":\"a\"",
            ] {
                let mut name = name.to_owned();
                let mut after = after.to_owned();
                if let Some(rest) = after.strip_prefix("s\"") {
                    name.push('s');
                    after = rest.to_owned();
                } else {
                    after = format!("\"{after}");
                }
                if matches!(name.as_str(), "offset" | "partition") {
                    after = after.replace("\"a\"", "1");
                }
                // Long enough after the key for the two-word comparison.
                let line = format!("{{\"{name}{after},\"zzzzzzzzzzzzzzzzzzzz\":1}}");
                let scanned = scan(line.as_bytes(), &mut Vec::new()).map(|(l, _)| l);
                let read = serde_json::from_slice::<FastLine<'_>>(line.as_bytes()).ok();
                match (&scanned, &read) {
                    (Some(s), Some(r)) => assert_eq!(s, r, "{line}"),
                    (Some(_), None) => panic!("{line}: serde refuses it, the scanner took it"),
                    _ => {}
                }
                if after.starts_with("\":") {
                    assert!(scanned.is_some(), "{line}");
                }
            }
        }
    }

    /// Every key `choreo capture` writes is matched by the two-word
    /// comparison (not only read correctly by the general path), to the
    /// field the general path gives it, from up to three keys before it.
    #[test]
    fn written_keys_are_matched_without_the_general_path() {
        for (k, name) in WRITTEN_NAMES.iter().enumerate() {
            let line = format!("\"{name}\":\"aaaaaaaaaaaaaaaaaaaa\"}}");
            let general = {
                let mut s = Scanner {
                    t: &line,
                    b: line.as_bytes(),
                    i: 0,
                };
                (s.key(), s.i)
            };
            assert_eq!(general.1, name.len() + 3, "{line}");
            for from in k.saturating_sub(3)..=k {
                let mut s = Scanner {
                    t: &line,
                    b: line.as_bytes(),
                    i: 0,
                };
                let mut next = from;
                let bit = s.written_key(&mut next);
                assert_eq!((bit, s.i), general, "{line} from {from}");
                assert_eq!(next, k + 1, "{line}");
            }
        }
    }

    /// Lines built from pieces that are easy to get wrong: whatever the
    /// scanner takes, serde reads the same way.
    #[test]
    fn the_scanner_reads_lines_as_serde_does() {
        const KEYS: &[&str] = &[
            "id",
            "type",
            "source",
            "topic",
            "key",
            "key_base64",
            "correlation_id",
            "correlationid",
            "causation_id",
            "time",
            "traceparent",
            "content_type",
            "data",
            "data_base64",
            "headers",
            "partition",
            "offset",
            "other",
            "t\\u0079pe",
        ];
        const VALUES: &[&str] = &[
            "\"a\"",
            "\"\"",
            "\"019ab697-e800-74fb-a038-00ff07da3298\"",
            "\"Zm9vYmFy\"",
            "\"eyJzZXJ2aWNlIjoicGF5bWVudCJ9\"",
            "\"abcdefghij\\\"k\"",
            "\"abcdefghijklmnopq\\\"r\"",
            "\"abcdefghijk\tl\"",
            "\"abcdefghijklmnopqrstuvwxyz0123456789\"",
            "\"Zm8=\\\"\"",
            "\"Zm8\\u003d\"",
            "\"x\\\"y\"",
            "\"tab\tin\"",
            "\"é\"",
            "null",
            "true",
            "false",
            "0",
            "-0",
            "7",
            "-7",
            "07",
            "1.5",
            "1e3",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "18446744073709551616",
            "[]",
            "{}",
            "[1,{\"a\":[2]}]",
            "\"2025-11-24T16:00:00Z\"",
            "nul",
            "\"unterminated",
        ];
        const GAPS: &[&str] = &["", " ", "\t", "\r"];
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let (mut taken, mut total) = (0, 0);
        for _ in 0..200_000 {
            let mut line = String::from("{");
            let fields = rng.random_range(0..6);
            for f in 0..fields {
                if f > 0 {
                    line.push(',');
                }
                line.push_str(GAPS[rng.random_range(0..GAPS.len())]);
                line.push('"');
                line.push_str(KEYS[rng.random_range(0..KEYS.len())]);
                line.push('"');
                line.push_str(GAPS[rng.random_range(0..GAPS.len())]);
                line.push(':');
                line.push_str(VALUES[rng.random_range(0..VALUES.len())]);
            }
            line.push_str(GAPS[rng.random_range(0..GAPS.len())]);
            line.push('}');
            if rng.random_bool(0.05) {
                line.push_str(" x");
            }
            total += 1;
            let mut scratch = vec![7];
            if let Some((scanned, decoded)) = scan(line.as_bytes(), &mut scratch) {
                // A payload decoded while scanned is the one decoded after.
                if decoded {
                    let payload = scanned.data_base64.and_then(base64::decode_either);
                    assert_eq!(Some(scratch), payload, "{line}");
                }
                taken += 1;
                let read: FastLine<'_> =
                    serde_json::from_slice(line.as_bytes()).unwrap_or_else(|e| {
                        panic!("{line}: serde refuses it ({e}), the scanner took it")
                    });
                assert_eq!(scanned, read, "{line}");
            }
        }
        assert!(taken > total / 10, "the scanner took {taken} of {total}");
    }
}
