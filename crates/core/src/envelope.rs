//! The envelope every event travels in, on every backend.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{EventId, Name, Timestamp};

/// The payload's codec, carried as the `content-type` of the event.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub enum ContentType {
    /// `application/json` (the default codec).
    #[default]
    Json,
    /// `application/avro`: Confluent wire format (magic byte 0, 4-byte schema id, datum).
    Avro,
    /// Any other media type, kept verbatim.
    Other(Name),
}

impl ContentType {
    /// The media type text.
    pub fn as_str(&self) -> &str {
        match self {
            ContentType::Json => "application/json",
            ContentType::Avro => "application/avro",
            ContentType::Other(n) => n.as_str(),
        }
    }

    /// Parses a media type; parameters such as `; charset=utf-8` are ignored when
    /// recognising JSON and Avro, and kept for anything else.
    pub fn parse(s: &str) -> ContentType {
        // Compared without case and without allocating: this runs for every
        // record a Kafka consumer reads.
        let essence = s.split(';').next().unwrap_or("").trim();
        let is = |names: &[&str]| names.iter().any(|n| essence.eq_ignore_ascii_case(n));
        if is(&["application/json", "text/json"]) {
            ContentType::Json
        } else if is(&[
            "application/avro",
            "avro/binary",
            "application/vnd.apache.avro+binary",
        ]) {
            ContentType::Avro
        } else {
            ContentType::Other(Name::from(s.trim()))
        }
    }
}

impl fmt::Debug for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ContentType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ContentType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(ContentType::parse(&s))
    }
}

/// Extra headers an envelope carries beside its fixed fields: dead-letter
/// information, replay markers, CloudEvents extensions choreo does not model.
///
/// Names are case-sensitive; order is kept. A small vector: most envelopes have
/// no extra headers and then it does not allocate.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Headers(Vec<(Name, Bytes)>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(Vec::new())
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.0
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v)
    }

    /// The value of `name` as UTF-8 text, when it is.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Sets `name`, replacing any earlier value.
    pub fn insert(&mut self, name: impl Into<Name>, value: impl Into<Bytes>) {
        let name = name.into();
        let value = value.into();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<Bytes> {
        let i = self.0.iter().position(|(n, _)| n.as_str() == name)?;
        Some(self.0.remove(i).1)
    }

    /// Iterates over `(name, value)` in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

/// The metadata and payload of one event. Every backend carries exactly these fields.
///
/// | field | meaning |
/// |---|---|
/// | `id` | unique event id (UUID v7 for events choreo publishes) |
/// | `event_type` | event type name, e.g. `OrderPlaced` |
/// | `source` | the service that published it |
/// | `topic` | where it was published |
/// | `key` | partition key; the SDK defaults it to the correlation id so one flow stays on one partition |
/// | `correlation_id` | the flow: the id of the flow's first event |
/// | `causation_id` | the event whose handling published this one; `None` for a flow's first event |
/// | `time` | when it was published |
/// | `traceparent` / `tracestate` | W3C trace context |
/// | `content_type` | the payload codec |
/// | `data` | the payload bytes |
/// | `headers` | anything else (dead-letter reason, replay marker, unknown CloudEvents extensions) |
///
/// Services rarely build envelopes by hand: the service runtime's `Context`
/// and `Publisher` (in `choreo-bus`) do it and stamp the ids.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique event id.
    pub id: EventId,
    /// Event type name.
    #[serde(rename = "type")]
    pub event_type: Name,
    /// The publishing service; empty when unknown (a foreign record without `ce_source`).
    pub source: Name,
    /// The topic it was published to.
    pub topic: Name,
    /// Partition key; `None` only for foreign records that had none.
    pub key: Option<Bytes>,
    /// The flow this event belongs to.
    pub correlation_id: EventId,
    /// The event whose handling published this one; `None` for a flow's first event.
    pub causation_id: Option<EventId>,
    /// Publication time.
    pub time: Timestamp,
    /// W3C `traceparent`.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
    /// Payload codec.
    pub content_type: ContentType,
    /// Payload.
    pub data: Bytes,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

impl Envelope {
    /// A new envelope that starts a flow: a fresh id, the correlation id equal to
    /// it, no causation, the time now, the key equal to the correlation id, JSON content.
    pub fn new(
        event_type: impl Into<Name>,
        topic: impl Into<Name>,
        data: impl Into<Bytes>,
    ) -> Envelope {
        let time = Timestamp::now();
        let id = EventId::generate(time);
        Envelope {
            key: Some(id.to_key()),
            correlation_id: id.clone(),
            id,
            event_type: event_type.into(),
            source: Name::empty(),
            topic: topic.into(),
            causation_id: None,
            time,
            traceparent: None,
            tracestate: None,
            content_type: ContentType::Json,
            data: data.into(),
            headers: Headers::new(),
        }
    }

    /// Sets the source and returns the envelope.
    pub fn with_source(mut self, source: impl Into<Name>) -> Envelope {
        self.source = source.into();
        self
    }

    /// Makes this envelope a consequence of `cause`: same flow (correlation id),
    /// caused by it, same key so the flow stays on one partition per topic, and
    /// trace context inherited unless already set.
    pub fn caused_by(mut self, cause: &Envelope) -> Envelope {
        self.correlation_id = cause.correlation_id.clone();
        self.causation_id = Some(cause.id.clone());
        self.key = cause
            .key
            .clone()
            .or_else(|| Some(cause.correlation_id.to_key()));
        if self.traceparent.is_none() {
            self.traceparent = cause.traceparent.clone();
            self.tracestate = cause.tracestate.clone();
        }
        self
    }

    /// The key used to choose a partition: the key, or the correlation id when
    /// there is none.
    pub fn partition_key(&self) -> PartitionKey<'_> {
        match &self.key {
            Some(k) => PartitionKey::Bytes(k),
            None => PartitionKey::Correlation(&self.correlation_id),
        }
    }

    /// True for a flow's first event.
    pub fn starts_flow(&self) -> bool {
        self.causation_id.is_none()
    }
}

/// What a partitioner hashes: see [`Envelope::partition_key`].
#[derive(Debug, Clone, Copy)]
pub enum PartitionKey<'a> {
    /// The envelope's key bytes.
    Bytes(&'a [u8]),
    /// No key: the correlation id's text.
    Correlation(&'a EventId),
}

impl PartitionKey<'_> {
    /// The partition for this key among `partitions`, with Kafka's default
    /// (Java client) partitioner: `murmur2(key) & 0x7fffffff % partitions`.
    /// The in-process bus and the Kafka backend (configured with
    /// `partitioner=murmur2_random`) therefore place a key on the same partition.
    pub fn partition(&self, partitions: u32) -> u32 {
        if partitions <= 1 {
            return 0;
        }
        let h = match self {
            PartitionKey::Bytes(b) => murmur2(b),
            PartitionKey::Correlation(id) => murmur2(id.to_string().as_bytes()),
        };
        (h & 0x7fff_ffff) % partitions
    }
}

/// MurmurHash2 as Kafka's Java client computes it (seed `0x9747b28c`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("id", &self.id)
            .field("type", &self.event_type)
            .field("source", &self.source)
            .field("topic", &self.topic)
            .field(
                "key",
                &self.key.as_ref().map(|k| String::from_utf8_lossy(k)),
            )
            .field("correlation_id", &self.correlation_id)
            .field("causation_id", &self.causation_id)
            .field("time", &self.time)
            .field("traceparent", &self.traceparent)
            .field("content_type", &self.content_type)
            .field("data_len", &self.data.len())
            .field("headers", &self.headers)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_java_client() {
        // Reference values of org.apache.kafka.common.utils.Utils.murmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn caused_by_inherits_flow_and_key() {
        let first = Envelope::new("OrderPlaced", "orders", "{}").with_source("checkout");
        assert!(first.starts_flow());
        assert_eq!(first.correlation_id, first.id);
        let next = Envelope::new("PaymentCaptured", "payments", "{}").caused_by(&first);
        assert_eq!(next.correlation_id, first.id);
        assert_eq!(next.causation_id.as_ref(), Some(&first.id));
        assert_eq!(next.key, first.key);
        assert_eq!(
            next.partition_key().partition(8),
            first.partition_key().partition(8)
        );
    }

    #[test]
    fn content_type_parsing() {
        assert_eq!(
            ContentType::parse("application/json; charset=utf-8"),
            ContentType::Json
        );
        assert_eq!(ContentType::parse("application/avro"), ContentType::Avro);
        assert_eq!(ContentType::parse("text/plain").as_str(), "text/plain");
        // Media types compare without case; parameters and spaces aside.
        assert_eq!(
            ContentType::parse(" Application/JSON ;v=1"),
            ContentType::Json
        );
        assert_eq!(ContentType::parse("TEXT/json"), ContentType::Json);
        assert_eq!(ContentType::parse("Avro/Binary"), ContentType::Avro);
        assert_eq!(
            ContentType::parse("application/vnd.apache.avro+BINARY"),
            ContentType::Avro
        );
        // Anything else keeps its text as written.
        assert_eq!(
            ContentType::parse(" Application/JSONX ").as_str(),
            "Application/JSONX"
        );
    }
}
