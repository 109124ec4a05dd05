//! Shared by the fuzz targets and the seed generator: how a fuzz input
//! becomes a Kafka record, and the Avro schemas the `confluent_avro`
//! target's registry holds.
//!
//! A record input is a small binary layout, so that seeds can be written from
//! real records and libFuzzer's mutations stay meaningful:
//!
//! ```text
//! partition: i32 BE, offset: i64 BE, timestamp: i64 BE (i64::MIN = none),
//! topic, key, value: field, header count: u8, then (name, value) fields
//! field = u16 BE length (0xFFFF = absent) followed by that many bytes
//! ```
//!
//! A short input reads as zeros and absent fields: every byte string is a
//! record.

use choreo_kafka::record::{RecordHeader, RecordParts};

const ABSENT: u16 = u16::MAX;

/// An owned record, decoded from fuzz bytes or built from a real one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Header names are bytes on the wire; lossy UTF-8 here, as rdkafka
    /// hands them over as `&str`.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let head = self.take(N);
        out[..head.len()].copy_from_slice(head);
        out
    }

    fn field(&mut self) -> Option<Vec<u8>> {
        let len = u16::from_be_bytes(self.array::<2>());
        (len != ABSENT).then(|| self.take(len as usize).to_vec())
    }
}

impl Record {
    /// This record carrying what the Kafka backend writes for `env`: its
    /// headers, key and payload (topic, position and timestamp kept). The
    /// backend's error when it refuses to write `env`.
    pub fn carrying(self, env: &choreo_core::Envelope) -> choreo_core::Result<Record> {
        let headers = choreo_kafka::record::record_headers(env)?;
        Ok(Record {
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), Some(v.to_vec())))
                .collect(),
            value: Some(env.data.to_vec()),
            key: env.key.as_ref().map(|k| k.to_vec()),
            ..self
        })
    }

    /// The record `data` describes (see the [module docs](self)).
    pub fn decode(data: &[u8]) -> Record {
        let mut c = Cursor(data);
        let partition = i32::from_be_bytes(c.array());
        let offset = i64::from_be_bytes(c.array());
        let ts = i64::from_be_bytes(c.array());
        let text =
            |b: Option<Vec<u8>>| String::from_utf8_lossy(&b.unwrap_or_default()).into_owned();
        let topic = text(c.field());
        let key = c.field();
        let value = c.field();
        let count = c.array::<1>()[0];
        let mut headers = Vec::new();
        for _ in 0..count {
            if c.0.is_empty() {
                break;
            }
            let name = text(c.field());
            headers.push((name, c.field()));
        }
        Record {
            topic,
            partition,
            offset,
            timestamp_ms: (ts != i64::MIN).then_some(ts),
            key,
            value,
            headers,
        }
    }

    /// The bytes [`Record::decode`] reads back as this record (fields longer
    /// than 65534 bytes are cut).
    pub fn encode(&self) -> Vec<u8> {
        fn field(out: &mut Vec<u8>, b: Option<&[u8]>) {
            match b {
                None => out.extend_from_slice(&ABSENT.to_be_bytes()),
                Some(b) => {
                    let b = &b[..b.len().min(ABSENT as usize - 1)];
                    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&self.partition.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.timestamp_ms.unwrap_or(i64::MIN).to_be_bytes());
        field(&mut out, Some(self.topic.as_bytes()));
        field(&mut out, self.key.as_deref());
        field(&mut out, self.value.as_deref());
        out.push(self.headers.len().min(255) as u8);
        for (name, value) in self.headers.iter().take(255) {
            field(&mut out, Some(name.as_bytes()));
            field(&mut out, value.as_deref());
        }
        out
    }

    /// Runs `f` with this record as the Kafka backend sees a consumed one.
    pub fn with_parts<T>(&self, f: impl FnOnce(&RecordParts<'_>) -> T) -> T {
        let headers: Vec<RecordHeader<'_>> = self
            .headers
            .iter()
            .map(|(name, value)| RecordHeader {
                name,
                value: value.as_deref(),
            })
            .collect();
        f(&RecordParts {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: &headers,
        })
    }
}

/// The event types of the `confluent_avro` target, with their writer
/// schemas (registered in the registry) and, for some, the reader schema the
/// codec knows them by (a field added with a default: schema resolution).
pub const AVRO_TYPES: &[(&str, &str, Option<&str>)] = &[
    (
        "OrderPlaced",
        r#"{"type":"record","name":"OrderPlaced","fields":[
            {"name":"order_id","type":"long"},
            {"name":"customer","type":"string"},
            {"name":"items","type":{"type":"array","items":{"type":"record","name":"Item","fields":[
                {"name":"sku","type":"string"},{"name":"qty","type":"int"},{"name":"price","type":"double"}]}}},
            {"name":"note","type":["null","string"],"default":null},
            {"name":"tags","type":{"type":"map","values":"string"}}]}"#,
        Some(
            r#"{"type":"record","name":"OrderPlaced","fields":[
            {"name":"order_id","type":"long"},
            {"name":"customer","type":"string"},
            {"name":"items","type":{"type":"array","items":{"type":"record","name":"Item","fields":[
                {"name":"sku","type":"string"},{"name":"qty","type":"int"},{"name":"price","type":"double"}]}}},
            {"name":"note","type":["null","string"],"default":null},
            {"name":"tags","type":{"type":"map","values":"string"}},
            {"name":"channel","type":"string","default":"web"}]}"#,
        ),
    ),
    (
        "PaymentCaptured",
        r#"{"type":"record","name":"PaymentCaptured","fields":[
            {"name":"order_id","type":"long"},
            {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":12,"scale":2}},
            {"name":"currency","type":{"type":"enum","name":"Currency","symbols":["EUR","USD","GBP"]}},
            {"name":"card","type":{"type":"fixed","name":"Last4","size":4}},
            {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}},
            {"name":"id","type":{"type":"string","logicalType":"uuid"}}]}"#,
        None,
    ),
    (
        "Tree",
        r#"{"type":"record","name":"Tree","fields":[
            {"name":"label","type":"string"},
            {"name":"children","type":{"type":"array","items":"Tree"}},
            {"name":"weight","type":["null","float","boolean"],"default":null}]}"#,
        None,
    ),
];

/// A registry holding every writer schema of [`AVRO_TYPES`], with ids 1, 2, 3
/// in order.
pub fn avro_registry() -> choreo_avro::MemoryRegistry {
    use choreo_avro::SchemaRegistry;
    let registry = choreo_avro::MemoryRegistry::new();
    for (name, writer, _) in AVRO_TYPES {
        registry
            .register(&format!("fuzz-{name}"), writer)
            .expect("the fuzz schemas are valid");
    }
    registry
}

fn schema(json: &str) -> choreo_avro::apache_avro::Schema {
    choreo_avro::apache_avro::Schema::parse_str(json).expect("the fuzz schemas are valid")
}

/// The codec the `confluent_avro` target decodes with: the registry of
/// [`avro_registry`], and the reader schemas of [`AVRO_TYPES`].
pub fn avro_codec() -> choreo_avro::AvroCodec {
    let mut codec = choreo_avro::AvroCodec::new(avro_registry());
    for (name, _, reader) in AVRO_TYPES {
        if let Some(reader) = reader {
            codec = codec.with_schema(name, schema(reader));
        }
    }
    codec
}

/// A codec that writes every type of [`AVRO_TYPES`] with its writer schema
/// (the same ids as [`avro_registry`]): makes the seeds.
pub fn avro_writer_codec() -> choreo_avro::AvroCodec {
    let mut codec = choreo_avro::AvroCodec::new(avro_registry());
    for (name, writer, _) in AVRO_TYPES {
        codec = codec.with_schema(name, schema(writer));
    }
    codec
}
