//! Dead letters on Kafka: the record as it was received, byte for byte, with
//! choreo's `choreo-dlq-*` headers after its own; and the record a replay
//! publishes back.
//!
//! The consumer keeps every record it reads as a [`RawRecord`] beside the
//! envelope it made of it. When the runtime dead-letters a delivery, the
//! dead-letter record ([`dead_letter_record`]) is that record — same key,
//! value, timestamp and headers, in their order, null values and all — with
//! these headers appended:
//!
//! | header | value |
//! |---|---|
//! | `choreo-dlq-reason` | why, e.g. `handler failed after 5 attempts: …`, `decode error: …`, `malformed record: …` |
//! | `choreo-dlq-service` | the service that gave up |
//! | `choreo-dlq-attempts` | how many times its handler ran (0: never) |
//! | `choreo-dlq-topic`, `choreo-dlq-partition`, `choreo-dlq-offset` | where the record was read |
//! | `choreo-dlq-time` | when it was dead-lettered (RFC 3339) |
//! | `choreo-dlq-malformed` | only for a record whose CloudEvents attributes could not be read: what is wrong |
//!
//! Nothing of the original is rewritten, so a record that was a valid
//! CloudEvent (binary or structured) is one on the dead-letter topic too, and
//! a broken one stays broken exactly as it arrived. Reading a dead letter
//! gives the envelope the service was delivered: an id or time that had to
//! be derived is derived from the origin headers as it was from the original
//! position (see [`record`](crate::record)).
//!
//! A replay ([`replay_record`]) publishes the dead letter without the
//! `choreo-dlq-*` headers, with `choreo-replay-count` one higher: the
//! original, byte for byte, plus the count.
//!
//! One limit, rdkafka's: a header whose *name* is not UTF-8 can be neither
//! read nor written; such a header is left out of the copy, and
//! `choreo-dlq-malformed` says so.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use choreo_core::{
    Bus, DeadLetter, Delivery, Envelope, MALFORMED_HEADER, Timestamp, dead_letter_envelope,
    dlq_headers,
};
use rdkafka::Message;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use smallvec::SmallVec;

use crate::bus::KafkaBus;
use crate::record::{RecordHeader, RecordParts};
use crate::{Error, Result};

/// A Kafka record exactly as it was read: key, value, timestamp, and headers
/// in their order with null values kept.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RawRecord {
    key: Option<Bytes>,
    value: Option<Bytes>,
    timestamp_ms: Option<i64>,
    /// Every header name and value, back to back. A consumed record's key,
    /// value and headers share one allocation.
    bytes: Bytes,
    /// Inline for the headers a CloudEvent usually has.
    headers: SmallVec<[Span; 12]>,
}

/// Where one header's name and value end in [`RawRecord::bytes`]; each
/// starts where the one before ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    name_end: usize,
    value_end: usize,
    null: bool,
}

impl RawRecord {
    /// A record with this key, value and timestamp (milliseconds since the
    /// epoch) and no headers yet.
    pub fn new(key: Option<Bytes>, value: Option<Bytes>, timestamp_ms: Option<i64>) -> Self {
        RawRecord {
            key,
            value,
            timestamp_ms,
            bytes: Bytes::new(),
            headers: SmallVec::new(),
        }
    }

    /// Appends a header; `None` is a null value.
    pub fn push_header(&mut self, name: &str, value: Option<&[u8]>) {
        // Grows in place while the buffer is this record's alone (as it is
        // while a record is built header by header); copied once otherwise.
        let mut bytes = match std::mem::take(&mut self.bytes).try_into_mut() {
            Ok(bytes) => bytes,
            Err(shared) => BytesMut::from(&shared[..]),
        };
        bytes.extend_from_slice(name.as_bytes());
        let name_end = bytes.len();
        bytes.extend_from_slice(value.unwrap_or_default());
        self.headers.push(Span {
            name_end,
            value_end: bytes.len(),
            null: value.is_none(),
        });
        self.bytes = bytes.freeze();
    }

    /// [`push_header`](RawRecord::push_header), returning the record.
    pub fn with_header(mut self, name: &str, value: Option<&[u8]>) -> Self {
        self.push_header(name, value);
        self
    }

    /// The key; `None` for a null key.
    pub fn key(&self) -> Option<&Bytes> {
        self.key.as_ref()
    }

    /// The value; `None` for a null value (a tombstone).
    pub fn value(&self) -> Option<&Bytes> {
        self.value.as_ref()
    }

    /// The record timestamp, in milliseconds since the epoch.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }

    /// The headers, in order.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = RecordHeader<'_>> + '_ {
        let mut start = 0;
        self.headers.iter().map(move |s| {
            let name = std::str::from_utf8(&self.bytes[start..s.name_end])
                .expect("header names are written from text");
            let value = (!s.null).then(|| &self.bytes[s.name_end..s.value_end]);
            start = s.value_end;
            RecordHeader { name, value }
        })
    }

    /// The value of the last header called `name` (the one a reader keeps),
    /// `Some(None)` when it is null.
    pub fn header(&self, name: &str) -> Option<Option<&[u8]>> {
        self.headers()
            .filter(|h| h.name == name)
            .last()
            .map(|h| h.value)
    }

    /// The envelope of this record, read from `topic`/`partition`/`offset`,
    /// as a consumer makes it ([`envelope_from_record`](crate::record::envelope_from_record)).
    pub fn envelope(&self, topic: &str, partition: i32, offset: i64) -> Envelope {
        let headers: SmallVec<[RecordHeader<'_>; 16]> = self.headers().collect();
        self.envelope_with(&headers, topic, partition, offset)
    }

    /// [`envelope`](Self::envelope), given this record's headers as they
    /// were read (by [`message_headers`](Self::message_headers)), so they
    /// are not split and checked again.
    pub(crate) fn envelope_with(
        &self,
        headers: &[RecordHeader<'_>],
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Envelope {
        crate::record::envelope_sharing(
            &RecordParts {
                topic,
                partition,
                offset,
                timestamp_ms: self.timestamp_ms,
                key: self.key.as_deref(),
                value: self.value.as_deref(),
                headers,
            },
            self.key.as_ref(),
            self.value.as_ref(),
        )
    }

    /// The headers of a consumed message, and the number of them that
    /// could not be read (a name that is not UTF-8, on which rdkafka
    /// panics).
    pub(crate) fn message_headers<'m>(
        m: &'m BorrowedMessage<'_>,
    ) -> (SmallVec<[RecordHeader<'m>; 16]>, usize) {
        let mut unreadable = 0;
        let mut headers: SmallVec<[RecordHeader<'m>; 16]> = SmallVec::new();
        if let Some(hs) = m.headers() {
            for i in 0..hs.count() {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hs.try_get(i))) {
                    Ok(Some(h)) => headers.push(RecordHeader {
                        name: h.key,
                        value: h.value,
                    }),
                    Ok(None) => {}
                    Err(_) => unreadable += 1,
                }
            }
        }
        (headers, unreadable)
    }

    /// The record of a consumed message, whose readable headers are
    /// `headers` (from [`message_headers`](Self::message_headers)).
    pub(crate) fn of_message(m: &BorrowedMessage<'_>, headers: &[RecordHeader<'_>]) -> RawRecord {
        // Key, value and headers copied into one buffer, then shared.
        let (key, value) = (m.key(), m.payload());
        let len = |b: Option<&[u8]>| b.map_or(0, <[u8]>::len);
        let size = len(key)
            + len(value)
            + headers
                .iter()
                .map(|h| h.name.len() + len(h.value))
                .sum::<usize>();
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(key.unwrap_or_default());
        bytes.extend_from_slice(value.unwrap_or_default());
        let values_end = bytes.len();
        let mut spans = SmallVec::new();
        for RecordHeader { name, value } in headers {
            // Spans count from where the headers start.
            bytes.extend_from_slice(name.as_bytes());
            let name_end = bytes.len() - values_end;
            bytes.extend_from_slice(value.unwrap_or_default());
            spans.push(Span {
                name_end,
                value_end: bytes.len() - values_end,
                null: value.is_none(),
            });
        }
        let bytes = Bytes::from(bytes);
        let key_end = len(key);
        RawRecord {
            key: key.map(|_| bytes.slice(..key_end)),
            value: value.map(|_| bytes.slice(key_end..values_end)),
            timestamp_ms: m.timestamp().to_millis(),
            bytes: bytes.slice(values_end..),
            headers: spans,
        }
    }

    /// The headers as rdkafka writes them.
    fn owned_headers(&self) -> OwnedHeaders {
        let mut out = OwnedHeaders::new_with_capacity(self.headers.len());
        for h in self.headers() {
            out = out.insert(Header {
                key: h.name,
                value: h.value,
            });
        }
        out
    }
}

impl fmt::Debug for RawRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        f.debug_struct("RawRecord")
            .field("key", &self.key.as_deref().map(lossy))
            .field("value_len", &self.value.as_ref().map(Bytes::len))
            .field("timestamp_ms", &self.timestamp_ms)
            .field(
                "headers",
                &self
                    .headers()
                    .map(|h| (h.name, h.value.map(lossy)))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Where a dead-lettered record was read.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
}

/// The dead-letter record of `received`: the record as it was received,
/// then the `choreo-dlq-*` headers (see the [module docs](self)).
/// `malformed` is what made the record unreadable, when something did.
pub fn dead_letter_record(
    received: &RawRecord,
    origin: Origin<'_>,
    info: &DeadLetter,
    malformed: Option<&str>,
    now: Timestamp,
) -> RawRecord {
    let mut out = received.clone();
    let attempts = info.attempts.to_string();
    let partition = origin.partition.to_string();
    let offset = origin.offset.to_string();
    let time = now.to_rfc3339();
    for (name, value) in [
        (dlq_headers::REASON, info.reason.as_str()),
        (dlq_headers::SERVICE, info.service.as_str()),
        (dlq_headers::ATTEMPTS, attempts.as_str()),
        (dlq_headers::TOPIC, origin.topic),
        (dlq_headers::PARTITION, partition.as_str()),
        (dlq_headers::OFFSET, offset.as_str()),
        (dlq_headers::TIME, time.as_str()),
    ] {
        out.push_header(name, Some(value.as_bytes()));
    }
    if let Some(problem) = malformed {
        out.push_header(dlq_headers::MALFORMED, Some(problem.as_bytes()));
    }
    out
}

/// The record a replay publishes: the dead letter without the
/// `choreo-dlq-*` headers and its old `choreo-replay-count`, with
/// `choreo-replay-count` set to `replays + 1` (`replays`: the count the dead
/// letter carries). Key, value, timestamp and every other header as they are.
pub fn replay_record(dead: &RawRecord, replays: u32) -> RawRecord {
    let mut out = RawRecord::new(dead.key.clone(), dead.value.clone(), dead.timestamp_ms);
    for h in dead.headers() {
        if h.name == dlq_headers::REPLAYS || dlq_headers::ALL.contains(&h.name) {
            continue;
        }
        out.push_header(h.name, h.value);
    }
    let count = (replays + 1).to_string();
    out.push_header(dlq_headers::REPLAYS, Some(count.as_bytes()));
    out
}

impl KafkaBus {
    /// Publishes `record` as it is — key, value, timestamp and headers byte
    /// for byte — to `topic`, created as configured when missing, and waits
    /// for every in-sync replica. A keyed record goes where the producer's
    /// partitioner (murmur2, like choreo's own events) puts its key; a
    /// keyless one to partition `keyless_partition` (modulo the topic's
    /// partition count), so that it stays where it was.
    pub async fn publish_record(
        &self,
        topic: &str,
        record: &RawRecord,
        keyless_partition: u32,
    ) -> Result<()> {
        let inner = self.inner();
        let partitions = inner.ensure_topic(topic, None).await?.max(1);
        let started = Instant::now();
        let mut out: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).headers(record.owned_headers());
        if let Some(v) = &record.value {
            out = out.payload(&v[..]);
        }
        if let Some(t) = record.timestamp_ms {
            out = out.timestamp(t);
        }
        match &record.key {
            Some(k) => out = out.key(&k[..]),
            None => out = out.partition((keyless_partition % partitions) as i32),
        }
        let failed = |source: KafkaError| {
            let error = Error::Kafka {
                context: format!("publishing a record to kafka topic '{topic}'"),
                source,
            };
            inner.watch.explain(started, error)
        };
        let delivery = loop {
            match inner.producer().send_result(out) {
                Ok(d) => break d,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // Bounded queue: wait for room rather than grow memory.
                    out = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((source, _)) => return Err(failed(source)),
            }
        };
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((source, _))) => Err(failed(source)),
            Err(_) => Err(failed(KafkaError::Canceled)),
        }
    }
}

/// [`Bus::dead_letter`] on Kafka: the record as received plus choreo's
/// headers ([`dead_letter_record`]), then the delivery is acked; if the copy
/// cannot be published the delivery is given back and the error returned.
pub(crate) async fn dead_letter(
    bus: &KafkaBus,
    delivery: Delivery,
    info: DeadLetter,
) -> choreo_core::Result<()> {
    let published = match delivery.original::<RawRecord>() {
        Some(received) => {
            let env = delivery.envelope();
            let origin = Origin {
                topic: &env.topic,
                partition: delivery.partition(),
                offset: delivery.offset(),
            };
            let malformed = env.headers.get_str(MALFORMED_HEADER);
            let record = dead_letter_record(&received, origin, &info, malformed, Timestamp::now());
            bus.publish_record(&info.topic, &record, delivery.partition())
                .await
                .map_err(choreo_core::Error::from)
        }
        // Not a record this backend read (a delivery made by hand): the
        // envelope's copy, as every backend makes it.
        None => bus.publish(dead_letter_envelope(&delivery, &info)).await,
    };
    match published {
        Ok(()) => {
            delivery.ack();
            Ok(())
        }
        Err(e) => {
            delivery.redeliver();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_core::Name;

    #[test]
    fn headers_pushed_one_by_one_keep_their_order_and_nulls() {
        let mut record = RawRecord::new(None, Some(Bytes::from_static(b"v")), Some(7));
        for i in 0..40 {
            let value = format!("value-{i}");
            let value = (i % 5 != 0).then_some(value.as_bytes());
            record.push_header(&format!("h{i}"), value);
        }
        let copy = record.clone();
        // A record that shares its buffer with another grows apart from it.
        let mut grown = record.clone().with_header("last", Some(b""));
        assert_eq!(record, copy);
        assert_eq!(grown.headers().len(), 41);
        assert_eq!(grown.header("last"), Some(Some(&b""[..])));
        grown.push_header("h3", None);
        assert_eq!(grown.header("h3"), Some(None), "the last of a name wins");
        let headers: Vec<_> = record.headers().collect();
        assert_eq!(headers.len(), 40);
        for (i, h) in headers.iter().enumerate() {
            assert_eq!(h.name, format!("h{i}"));
            let expected = format!("value-{i}");
            assert_eq!(h.value, (i % 5 != 0).then_some(expected.as_bytes()));
        }
        assert_eq!(record.key(), None);
        assert_eq!(record.value().map(|v| &v[..]), Some(&b"v"[..]));
    }

    fn received() -> RawRecord {
        RawRecord::new(
            Some(Bytes::from_static(b"k-1")),
            Some(Bytes::from_static(b"{\"order_id\":")),
            Some(1_764_104_835_123),
        )
        .with_header("ce_specversion", Some(b"0.3"))
        .with_header("ce_id", Some(b"\xff\xfe"))
        .with_header("Content-Type", Some(b"application/json"))
        .with_header("x-null", None)
        .with_header("x-empty", Some(b""))
        .with_header("ce_time", Some(b"yesterday"))
    }

    fn info() -> DeadLetter {
        DeadLetter {
            topic: Name::from_static("orders.dlq"),
            reason: "malformed record: header 'ce_id' is not UTF-8".into(),
            attempts: 0,
            service: Name::from_static("payment"),
        }
    }

    #[test]
    fn headers_read_back_in_order_with_nulls() {
        let r = received();
        let hs: Vec<(&str, Option<&[u8]>)> = r.headers().map(|h| (h.name, h.value)).collect();
        assert_eq!(
            hs,
            vec![
                ("ce_specversion", Some(&b"0.3"[..])),
                ("ce_id", Some(&b"\xff\xfe"[..])),
                ("Content-Type", Some(&b"application/json"[..])),
                ("x-null", None),
                ("x-empty", Some(&b""[..])),
                ("ce_time", Some(&b"yesterday"[..])),
            ]
        );
        assert_eq!(r.header("x-null"), Some(None));
        assert_eq!(r.header("missing"), None);
    }

    #[test]
    fn a_dead_letter_is_the_original_then_choreos_headers_and_a_replay_the_original_again() {
        let original = received();
        let origin = Origin {
            topic: "orders",
            partition: 2,
            offset: 17,
        };
        let now = Timestamp::parse_rfc3339("2026-01-31T12:00:00Z").unwrap();
        let dead = dead_letter_record(&original, origin, &info(), Some("broken"), now);
        assert_eq!(dead.key(), original.key());
        assert_eq!(dead.value(), original.value());
        assert_eq!(dead.timestamp_ms(), original.timestamp_ms());
        let n = original.headers().len();
        assert!(
            dead.headers().take(n).eq(original.headers()),
            "the original's headers first, unchanged"
        );
        let ours: Vec<(&str, String)> = dead
            .headers()
            .skip(n)
            .map(|h| {
                (
                    h.name,
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ours,
            vec![
                (dlq_headers::REASON, info().reason),
                (dlq_headers::SERVICE, "payment".into()),
                (dlq_headers::ATTEMPTS, "0".into()),
                (dlq_headers::TOPIC, "orders".into()),
                (dlq_headers::PARTITION, "2".into()),
                (dlq_headers::OFFSET, "17".into()),
                (dlq_headers::TIME, "2026-01-31T12:00:00.000000Z".into()),
                (dlq_headers::MALFORMED, "broken".into()),
            ]
        );

        let replayed = replay_record(&dead, 0);
        let expected = original
            .clone()
            .with_header(dlq_headers::REPLAYS, Some(b"1"));
        assert_eq!(replayed, expected);
        // Dead-lettered again, replayed again: the count goes up, once.
        let again = dead_letter_record(&replayed, origin, &info(), None, now);
        let twice = replay_record(&again, 1);
        assert_eq!(
            twice,
            original.with_header(dlq_headers::REPLAYS, Some(b"2"))
        );
    }

    #[test]
    fn a_dead_letter_reads_back_as_the_envelope_the_service_was_delivered() {
        let original = received();
        let delivered = original.envelope("orders", 2, 17);
        assert_eq!(delivered.id.to_string(), "orders/2/17");
        assert!(delivered.headers.get(MALFORMED_HEADER).is_some());
        let origin = Origin {
            topic: "orders",
            partition: 2,
            offset: 17,
        };
        let dead = dead_letter_record(&original, origin, &info(), None, Timestamp::now());
        // On the dead-letter topic, at another position.
        let read = dead.envelope("orders.dlq", 0, 5);
        assert_eq!(
            read.id, delivered.id,
            "derived from the origin, not the copy's position"
        );
        assert_eq!(read.correlation_id, delivered.correlation_id);
        assert_eq!(read.time, delivered.time);
        assert_eq!(read.key, delivered.key);
        assert_eq!(read.data, delivered.data);
        assert_eq!(read.topic, "orders.dlq");
        assert_eq!(
            read.headers.get_str(MALFORMED_HEADER),
            delivered.headers.get_str(MALFORMED_HEADER)
        );
        assert_eq!(read.headers.get_str(dlq_headers::SERVICE), Some("payment"));
    }
}
