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
/// from the stores that had just written it (a stall on every id copied,
/// 1 % of the chain benchmark). Two words sit aligned next to the tag.
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
    pub fn generate(time: crate::Timestamp) -> Self {
        EventId(Repr::Uuid(Bits::of(
            IDGEN.with(|g| g.borrow_mut().next(time.as_millis().max(0) as u64)),
        )))
    }

    /// The id of a UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        EventId(Repr::Uuid(Bits::of(uuid)))
    }

    /// Parses an id: a UUID in any of its textual forms becomes a UUID id, any
    /// other non-empty string is kept as text. Returns `None` for an empty string.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() {
            return None;
        }
        // Only the canonical lower-case hyphenated form becomes a UUID, so an id
        // always prints back exactly as it was received.
        let canonical = s.len() == 36
            && s.bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if let (true, Ok(u)) = (canonical, Uuid::parse_str(s)) {
            return Some(EventId::from_uuid(u));
        }
        Some(EventId(Repr::Text(Arc::from(s))))
    }

    /// The UUID, when the id is one.
    pub fn as_uuid(&self) -> Option<Uuid> {
        match &self.0 {
            Repr::Uuid(u) => Some(u.uuid()),
            Repr::Text(_) => None,
        }
    }
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
    /// The id's text as a partition key, in a buffer of exactly its size.
    pub fn to_key(&self) -> bytes::Bytes {
        match &self.0 {
            Repr::Uuid(u) => {
                let mut buf = [0u8; 36];
                u.uuid().hyphenated().encode_lower(&mut buf);
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
        match &self.0 {
            Repr::Uuid(u) => {
                let mut buf = [0u8; 36];
                serializer.serialize_str(u.uuid().hyphenated().encode_lower(&mut buf))
            }
            Repr::Text(t) => serializer.serialize_str(t),
        }
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

    #[test]
    fn ids_serialize_as_strings() {
        let a = EventId::new();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{a}\""));
        let back: EventId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
    }
}
