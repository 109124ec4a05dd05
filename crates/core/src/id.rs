//! Event ids: UUID v7 for events choreo publishes, any string for foreign ones.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The id of an event, also used as correlation id (the id of a flow's first
/// event) and causation id (the id of the event whose handling published this one).
///
/// Events published by choreo get a UUID v7, which sorts by creation time.
/// CloudEvents from other producers may use any string as `ce_id`; those ids are
/// kept verbatim. Comparing, hashing and copying a UUID id never allocates.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Repr);

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Repr {
    Uuid(Bits),
    Text(Arc<str>),
}

/// A UUID's 128 bits as two words, high first (so they order as the UUID
/// does). A `Uuid` is a byte array: in the enum it sat at an odd offset and
/// was copied in odd-sized pieces, which the processor could not forward
/// from the stores that had just written it: a stall on every id copied
/// (docs/performance.md has what it cost). Two words sit aligned next to
/// the tag.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Bits(u64, u64);

impl Bits {
    const fn of(u: Uuid) -> Self {
        let (high, low) = u.as_u64_pair();
        Bits(high, low)
    }

    const fn uuid(self) -> Uuid {
        Uuid::from_u64_pair(self.0, self.1)
    }
}

impl EventId {
    /// A fresh UUID v7 id (time-ordered, unique within and across processes).
    pub fn new() -> Self {
        EventId::generate(crate::Timestamp::now())
    }

    /// A fresh UUID v7 id for an event created at `time` (saves a clock read
    /// when the caller already has the time).
    ///
    /// Layout (RFC 9562, method 1): 48 bits of Unix milliseconds, 12 bits of a
    /// per-thread counter seeded randomly each millisecond (so ids made by one
    /// thread sort in creation order), 62 random bits. The random bits come
    /// from a per-thread generator seeded once from the operating system: no
    /// system call per id.
    #[inline]
    pub fn generate(time: crate::Timestamp) -> Self {
        EventId(Repr::Uuid(Bits::of(
            IDGEN.with(|g| g.borrow_mut().next(time.as_millis().max(0) as u64)),
        )))
    }

    /// The id of a UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        EventId(Repr::Uuid(Bits::of(uuid)))
    }

    /// Parses an id: the canonical lower-case hyphenated UUID text becomes a
    /// UUID id, any other non-empty string is kept as text (so an id always
    /// prints back exactly as it was received). Returns `None` for an empty
    /// string.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() {
            return None;
        }
        Some(
            EventId::from_uuid_text(s.as_bytes())
                .unwrap_or_else(|| EventId(Repr::Text(Arc::from(s)))),
        )
    }

    /// The canonical lower-case hyphenated UUID text (36 bytes, as choreo
    /// writes ids) as a UUID id, decoded straight from the bytes; `None` for
    /// anything else. What [`parse`](Self::parse) gives for that text, for
    /// readers that hold bytes (a capture record, a Kafka header) and read
    /// many ids: it checks and decodes eight digits at a time, where checking
    /// the text and then parsing it as a `Uuid` went a character at a time,
    /// twice.
    #[inline]
    pub fn from_uuid_text(text: &[u8]) -> Option<Self> {
        let raw: &[u8; 36] = text.try_into().ok()?;
        if raw[8] != b'-' || raw[13] != b'-' || raw[18] != b'-' || raw[23] != b'-' {
            return None;
        }
        let eight = |a: usize| -> [u8; 8] {
            let mut w = [0u8; 8];
            w.copy_from_slice(&raw[a..a + 8]);
            w
        };
        let four_four = |a: usize, b: usize| -> [u8; 8] {
            let mut w = [0u8; 8];
            w[..4].copy_from_slice(&raw[a..a + 4]);
            w[4..].copy_from_slice(&raw[b..b + 4]);
            w
        };
        let high = (u64::from(hex8(eight(0))?) << 32) | u64::from(hex8(four_four(9, 14))?);
        let low = (u64::from(hex8(four_four(19, 24))?) << 32) | u64::from(hex8(eight(28))?);
        Some(EventId(Repr::Uuid(Bits(high, low))))
    }

    /// The UUID, when the id is one.
    pub fn as_uuid(&self) -> Option<Uuid> {
        match &self.0 {
            Repr::Uuid(u) => Some(u.uuid()),
            Repr::Text(_) => None,
        }
    }
}

/// One in every byte of a word.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte of a word.
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` (all below 0x80) set where the byte is ≥ `n`.
#[inline(always)]
const fn at_least(x: u64, n: u8) -> u64 {
    x.wrapping_add((0x80 - n as u64) * ONES) & HIGHS
}

/// Eight lower-case hex digits (in text order) as the 32-bit number they
/// spell; `None` when any is not one. The eight are read as one word and
/// checked and converted together (SWAR), not a digit at a time.
#[inline(always)]
fn hex8(text: [u8; 8]) -> Option<u32> {
    let x = u64::from_le_bytes(text);
    if x & HIGHS != 0 {
        return None;
    }
    let digit = at_least(x, b'0') & !at_least(x, b'9' + 1);
    let letter = at_least(x, b'a') & !at_least(x, b'f' + 1);
    if digit | letter != HIGHS {
        return None;
    }
    // Each byte's value: its low nibble, plus 9 for a letter ('a' = 0x61).
    let v = (x & (0x0f * ONES)) + (letter >> 7) * 9;
    // Pairs of digits into bytes (the first digit is the high nibble), then
    // the four bytes together, in text order.
    let pairs = ((v << 4) | (v >> 8)) & 0x00ff_00ff_00ff_00ff;
    let quads = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    Some(u32::from_be_bytes(
        ((quads | (quads >> 16)) as u32).to_le_bytes(),
    ))
}

/// The sixteen lower-case hex digits of `x`, most significant first. The
/// nibbles are spread one to a byte and turned into digits together (SWAR),
/// not a digit at a time through a table.
#[inline(always)]
fn hex16(x: u64) -> [u8; 16] {
    // Eight nibbles of a 32-bit half, one to a byte, the first in the
    // highest byte.
    fn spread(v: u32) -> u64 {
        let x = u64::from(v);
        let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
        let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
        (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f
    }
    let digits = |n: u64| {
        // 1 in each byte whose nibble is 10 or more: those become letters
        // ('a' is 39 past '9' + 1).
        let letters = ((n + 6 * ONES) >> 4) & ONES;
        (n + u64::from(b'0') * ONES + letters * 39).to_be_bytes()
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&digits(spread((x >> 32) as u32)));
    out[8..].copy_from_slice(&digits(spread(x as u32)));
    out
}

/// The canonical lower-case hyphenated text of the UUID `(high, low)`.
#[inline]
fn hyphenated(high: u64, low: u64) -> [u8; 36] {
    let (h, l) = (hex16(high), hex16(low));
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&h[..8]);
    out[9..13].copy_from_slice(&h[8..12]);
    out[14..18].copy_from_slice(&h[12..]);
    out[19..23].copy_from_slice(&l[..4]);
    out[24..].copy_from_slice(&l[4..]);
    out
}

thread_local! {
    static IDGEN: std::cell::RefCell<IdGen> = std::cell::RefCell::new(IdGen::new());
}

struct IdGen {
    rng: rand::rngs::SmallRng,
    last_ms: u64,
    counter: u16,
}

impl IdGen {
    fn new() -> Self {
        use rand::SeedableRng;
        IdGen {
            rng: rand::rngs::SmallRng::from_os_rng(),
            last_ms: 0,
            counter: 0,
        }
    }

    #[inline]
    fn next(&mut self, now_ms: u64) -> Uuid {
        use rand::Rng;
        let ms = if now_ms > self.last_ms {
            self.last_ms = now_ms;
            // Leave headroom for many ids in the same millisecond.
            self.counter = self.rng.random::<u16>() & 0x07ff;
            now_ms
        } else {
            self.counter += 1;
            if self.counter > 0x0fff {
                // Counter exhausted: borrow the next millisecond.
                self.last_ms += 1;
                self.counter = self.rng.random::<u16>() & 0x07ff;
            }
            self.last_ms
        };
        let r: u64 = self.rng.random();
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[6] = 0x70 | ((self.counter >> 8) as u8 & 0x0f);
        b[7] = self.counter as u8;
        b[8] = 0x80 | ((r >> 56) as u8 & 0x3f);
        b[9..].copy_from_slice(&r.to_be_bytes()[1..]);
        Uuid::from_bytes(b)
    }
}

impl Default for EventId {
    fn default() -> Self {
        EventId::new()
    }
}

impl EventId {
    /// A UUID id's canonical text (lower-case, hyphenated); `None` for a
    /// text id. Written without formatting machinery: receipts and keys
    /// write several per handled event.
    pub fn uuid_text(&self) -> Option<[u8; 36]> {
        match &self.0 {
            Repr::Uuid(Bits(high, low)) => Some(hyphenated(*high, *low)),
            Repr::Text(_) => None,
        }
    }

    /// The id's text (as [`Display`](fmt::Display) writes it) without
    /// allocating: a UUID's canonical text written into `buf` by the same
    /// writer as [`uuid_text`](Self::uuid_text), a text id as it is.
    #[inline]
    pub fn text<'a>(&'a self, buf: &'a mut [u8; 36]) -> &'a str {
        match &self.0 {
            // Checked as UTF-8 to be a `str` (about 80 instructions): where
            // bytes will do, `text_bytes` skips that.
            Repr::Uuid(_) => {
                std::str::from_utf8(self.text_bytes(buf)).expect("a UUID's text is ASCII")
            }
            Repr::Text(t) => t,
        }
    }

    /// [`text`](Self::text) as bytes, for writers of bytes (record headers,
    /// captures): the same text, not checked again as UTF-8.
    #[inline]
    pub fn text_bytes<'a>(&'a self, buf: &'a mut [u8; 36]) -> &'a [u8] {
        match &self.0 {
            Repr::Uuid(Bits(high, low)) => {
                *buf = hyphenated(*high, *low);
                buf
            }
            Repr::Text(t) => t.as_bytes(),
        }
    }

    /// The id's text as a partition key, in a buffer of exactly its size.
    #[inline]
    pub fn to_key(&self) -> bytes::Bytes {
        match &self.0 {
            Repr::Uuid(Bits(high, low)) => {
                let buf = hyphenated(*high, *low);
                // One allocation holding the text and its reference count: a
                // key is shared (by the events one attempt emits, by an
                // event's receipt), and a key copied from a slice would
                // allocate its count apart on the first share.
                bytes::Bytes::from_owner(buf)
            }
            Repr::Text(t) => bytes::Bytes::copy_from_slice(t.as_bytes()),
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Uuid(u) => fmt::Display::fmt(&u.uuid().hyphenated(), f),
            Repr::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl From<Uuid> for EventId {
    fn from(u: Uuid) -> Self {
        EventId::from_uuid(u)
    }
}

/// Error for [`EventId::from_str`]: the id was empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event id must not be empty")]
pub struct EmptyId;

impl FromStr for EventId {
    type Err = EmptyId;
    fn from_str(s: &str) -> Result<Self, EmptyId> {
        EventId::parse(s).ok_or(EmptyId)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.text(&mut [0; 36]))
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        EventId::parse(&s).ok_or_else(|| serde::de::Error::custom("an event id must not be empty"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_is_the_canonical_hyphenated_form() {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut cases = vec![
            Uuid::nil(),
            Uuid::max(),
            Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
        ];
        cases.extend((0..10_000).map(|_| Uuid::from_u128(rng.random())));
        for u in cases {
            let id = EventId::from_uuid(u);
            let text = id.uuid_text().unwrap();
            assert_eq!(
                std::str::from_utf8(&text).unwrap(),
                u.hyphenated().to_string()
            );
            assert_eq!(id.text(&mut [0; 36]), u.hyphenated().to_string());
            assert_eq!(id.text_bytes(&mut [0; 36]), text);
            assert_eq!(id.to_key(), u.hyphenated().to_string().as_bytes());
            assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{u}\""));
            assert_eq!(EventId::from_uuid_text(&text), Some(id));
        }
        assert_eq!(EventId::parse("order-7").unwrap().uuid_text(), None);
    }

    #[test]
    fn a_text_id_is_its_own_text_everywhere() {
        let id = EventId::parse("order-17/\"quoted\"").unwrap();
        assert_eq!(id.uuid_text(), None);
        assert_eq!(id.text(&mut [0; 36]), "order-17/\"quoted\"");
        assert_eq!(id.text_bytes(&mut [0; 36]), b"order-17/\"quoted\"");
        assert_eq!(id.to_string(), "order-17/\"quoted\"");
        assert_eq!(id.to_key(), "order-17/\"quoted\"".as_bytes());
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            r#""order-17/\"quoted\"""#
        );
    }

    #[test]
    fn new_ids_are_uuid_v7_and_sort_by_creation() {
        let ids: Vec<EventId> = (0..10_000).map(|_| EventId::new()).collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{:?} !< {:?}", w[0], w[1]);
        }
        let u = ids[0].as_uuid().unwrap();
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        let (secs, _) = u.get_timestamp().unwrap().to_unix();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            now.abs_diff(secs) <= 1,
            "the timestamp is the creation time"
        );
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn uuid_ids_order_as_their_uuids_and_take_three_words() {
        let uuids: Vec<Uuid> = [
            "00000000-0000-7000-8000-000000000001",
            "00000000-0000-7000-8000-000000000100",
            "0190b3c4-1d2e-7a8b-9c0d-1e2f3a4b5c6d",
            "0190b3c4-1d2e-7a8b-ffff-ffffffffffff",
            "0190b3c4-1d2f-7000-8000-000000000000",
            "ffffffff-ffff-7fff-bfff-ffffffffffff",
        ]
        .iter()
        .map(|s| Uuid::parse_str(s).unwrap())
        .collect();
        for a in &uuids {
            for b in &uuids {
                let (x, y) = (EventId::from_uuid(*a), EventId::from_uuid(*b));
                assert_eq!(x.cmp(&y), a.cmp(b), "{a} vs {b}");
                assert_eq!(x.as_uuid(), Some(*a));
            }
        }
        assert_eq!(std::mem::size_of::<EventId>(), 24);
    }

    #[test]
    fn ids_round_trip_through_text() {
        let a = EventId::new();
        assert_eq!(EventId::parse(&a.to_string()), Some(a.clone()));
        assert!(EventId::parse(&a.to_string()).unwrap().as_uuid().is_some());
        let foreign = EventId::parse("order-42/attempt-1").unwrap();
        assert_eq!(foreign.to_string(), "order-42/attempt-1");
        assert!(foreign.as_uuid().is_none());
        // An upper-case UUID is kept as text so it prints back unchanged.
        let upper = "0190B3C4-1D2E-7A8B-9C0D-1E2F3A4B5C6D";
        assert_eq!(EventId::parse(upper).unwrap().to_string(), upper);
        assert_eq!(EventId::parse(""), None);
    }

    /// What `parse` did before it decoded UUID text itself: the text checked
    /// for the canonical characters, then parsed by the uuid crate.
    fn reference(text: &[u8]) -> Option<EventId> {
        let s = std::str::from_utf8(text).ok()?;
        let canonical = s.len() == 36
            && s.bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        canonical
            .then(|| Uuid::parse_str(s).ok())
            .flatten()
            .map(EventId::from_uuid)
    }

    #[test]
    fn uuid_text_decodes_as_the_uuid_crate_parses_it() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let u = Uuid::from_u64_pair(rng, rng.rotate_left(23) ^ 0x5555);
            let text = u.hyphenated().to_string();
            let id = EventId::from_uuid_text(text.as_bytes());
            assert_eq!(id.as_ref().and_then(EventId::as_uuid), Some(u), "{text}");
            assert_eq!(EventId::parse(&text), id);
        }
        for (text, ok) in [
            ("00000000-0000-0000-0000-000000000000", true),
            ("ffffffff-ffff-ffff-ffff-ffffffffffff", true),
            ("0123abcd-4567-89ef-0a1b-2c3d4e5f6789", true),
            // Anything else stays text.
            ("0123ABCD-4567-89ef-0a1b-2c3d4e5f6789", false),
            ("0123abcg-4567-89ef-0a1b-2c3d4e5f6789", false),
            ("0123abc/-4567-89ef-0a1b-2c3d4e5f6789", false),
            ("0123abc:-4567-89ef-0a1b-2c3d4e5f6789", false),
            ("0123abc`-4567-89ef-0a1b-2c3d4e5f6789", false),
            ("0123abcd_4567-89ef-0a1b-2c3d4e5f6789", false),
            ("0123abcd-4567-89ef-0a1b-2c3d4e5f678", false),
            ("0123abcd-4567-89ef-0a1b-2c3d4e5f67890", false),
            ("0123abcd-4567-89ef-0a1b-2c3d4e5f678\u{e9}", false),
        ] {
            let id = EventId::from_uuid_text(text.as_bytes());
            assert_eq!(id.is_some(), ok, "{text}");
            assert_eq!(id, reference(text.as_bytes()), "{text}");
            assert_eq!(EventId::parse(text).unwrap().to_string(), text);
        }
        // Every byte value in every position.
        let good = b"0123abcd-4567-89ef-0a1b-2c3d4e5f6789";
        for pos in 0..36 {
            for byte in 0..=255u8 {
                let mut t = *good;
                t[pos] = byte;
                assert_eq!(
                    EventId::from_uuid_text(&t),
                    reference(&t),
                    "byte {byte:#x} at {pos}"
                );
            }
        }
    }

    #[test]
    fn ids_serialize_as_strings() {
        let a = EventId::new();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{a}\""));
        let back: EventId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }
}
