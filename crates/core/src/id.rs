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
    Uuid(Uuid),
    Text(Arc<str>),
}

impl EventId {
    /// A fresh UUID v7 id (time-ordered, unique within and across processes).
    pub fn new() -> Self {
        EventId(Repr::Uuid(Uuid::now_v7()))
    }

    /// The id of a UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        EventId(Repr::Uuid(uuid))
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
        if canonical {
            if let Ok(u) = Uuid::parse_str(s) {
                return Some(EventId(Repr::Uuid(u)));
            }
        }
        Some(EventId(Repr::Text(Arc::from(s))))
    }

    /// The UUID, when the id is one.
    pub fn as_uuid(&self) -> Option<Uuid> {
        match &self.0 {
            Repr::Uuid(u) => Some(*u),
            Repr::Text(_) => None,
        }
    }
}

impl Default for EventId {
    fn default() -> Self {
        EventId::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Uuid(u) => fmt::Display::fmt(&u.hyphenated(), f),
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
                serializer.serialize_str(u.hyphenated().encode_lower(&mut buf))
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
        let a = EventId::new();
        let b = EventId::new();
        assert_eq!(a.as_uuid().unwrap().get_version_num(), 7);
        assert!(a < b);
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
