//! `AvroCodec`: Avro payloads in the Confluent wire format.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{AvroSchema, Schema};
use bytes::Bytes;
use choreo_core::{Codec, ContentType, Event, PayloadMeta};
use parking_lot::RwLock;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::registry::SchemaRegistry;
use crate::{Error, Result};

/// The magic byte that starts a Confluent-framed payload.
pub const MAGIC: u8 = 0;

/// How the subject a writer schema is registered under is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SubjectNaming {
    /// `<topic>-value` (Confluent's TopicNameStrategy), the default. Every
    /// event type of a topic shares the subject, so under a registry that
    /// checks compatibility they must be compatible versions of one schema:
    /// use [`SubjectNaming::TopicRecord`] for topics that carry several types.
    #[default]
    Topic,
    /// `<topic>-<record full name>` (TopicRecordNameStrategy).
    TopicRecord,
}

/// One event type's schema.
struct TypeSchema {
    schema: Schema,
    json: String,
    full_name: String,
    /// The writer schema's id per subject, once registered.
    ids: RwLock<HashMap<String, u32>>,
}

/// The Avro codec (`application/avro`): payloads in the Confluent wire
/// format — magic byte 0, the writer schema's id as 4 big-endian bytes, the
/// Avro binary datum.
///
/// Each event type it writes has a schema, derived from its Rust type with
/// `#[derive(AvroSchema)]` and added with [`AvroCodec::with`]; the schema is
/// registered in the [`SchemaRegistry`] under `<topic>-value` on first use
/// (or at start with [`AvroCodec::register`]). Reading looks the writer
/// schema up by the id in the payload (cached) and resolves it against the
/// reader's schema for the event type when there is one, so a consumer
/// with a newer schema (a field added with a default) reads records written
/// with the old one.
///
/// Decoding fails (and the runtime dead-letters the event with the reason)
/// for a payload that is not Confluent-framed, an id the registry does not
/// know, or a datum that does not match; each is counted in
/// `choreo_avro_decode_failures_total{topic,reason}`.
///
/// ```
/// use std::sync::Arc;
/// use apache_avro::AvroSchema;
/// use choreo_avro::{AvroCodec, MemoryRegistry};
/// use choreo_core::Codecs;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, AvroSchema)]
/// struct OrderPlaced { order_id: u64 }
/// choreo_core::event!(OrderPlaced, topic = "orders");
///
/// let codec = AvroCodec::new(MemoryRegistry::new()).with::<OrderPlaced>();
/// let codecs = Codecs::json().encode_with(Arc::new(codec));
/// let payload = codecs.encode(&OrderPlaced { order_id: 7 }).unwrap();
/// assert_eq!(payload[0], 0); // magic byte
/// let back: OrderPlaced = codecs.decode(&codecs.content_type(), &payload).unwrap();
/// assert_eq!(back.order_id, 7);
/// ```
pub struct AvroCodec {
    registry: Arc<dyn SchemaRegistry>,
    types: HashMap<String, TypeSchema>,
    naming: SubjectNaming,
    /// Writer schemas by id. parking_lot RwLock: never held across an await.
    writers: RwLock<HashMap<u32, Arc<Schema>>>,
    failures: OnceLock<IntCounterVec>,
}

impl fmt::Debug for AvroCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<&str> = self.types.keys().map(String::as_str).collect();
        types.sort_unstable();
        f.debug_struct("AvroCodec")
            .field("types", &types)
            .field("naming", &self.naming)
            .finish_non_exhaustive()
    }
}

impl AvroCodec {
    /// A codec using `registry`, with no event types yet.
    pub fn new(registry: impl SchemaRegistry) -> Self {
        AvroCodec::with_registry(Arc::new(registry))
    }

    /// A codec using a shared registry.
    pub fn with_registry(registry: Arc<dyn SchemaRegistry>) -> Self {
        AvroCodec {
            registry,
            types: HashMap::new(),
            naming: SubjectNaming::Topic,
            writers: RwLock::new(HashMap::new()),
            failures: OnceLock::new(),
        }
    }

    /// Writes and reads `E` with the schema derived from its type. The
    /// schema's record name is what schema resolution matches on: keep it
    /// when the Rust type is renamed (`#[serde(rename = "OrderPlaced")]`).
    ///
    /// apache-avro derives `u64` as a Rust-specific 8-byte `fixed`; this codec
    /// writes it as an Avro `long` instead, which every Avro implementation
    /// reads (a `u64` above `i64::MAX` then fails to encode).
    ///
    /// # Panics
    /// If the derived schema cannot be made portable (it always can for
    /// schemas apache-avro derives).
    pub fn with<E: Event + AvroSchema>(self) -> Self {
        let schema = portable(&E::get_schema()).unwrap_or_else(|e| {
            panic!("the Avro schema derived for '{}' is unusable: {e}", E::TYPE)
        });
        self.with_schema(E::TYPE, schema)
    }

    /// Writes and reads events of type `event_type` with `schema`.
    pub fn with_schema(mut self, event_type: &str, schema: Schema) -> Self {
        // The full form: the Parsing Canonical Form drops field defaults,
        // which readers of newer versions need.
        let json = serde_json::to_string(&schema).unwrap_or_else(|_| schema.canonical_form());
        let full_name = schema
            .name()
            .map(|n| n.fullname(None))
            .unwrap_or_else(|| event_type.to_owned());
        self.types.insert(
            event_type.to_owned(),
            TypeSchema {
                schema,
                json,
                full_name,
                ids: RwLock::new(HashMap::new()),
            },
        );
        self
    }

    /// Sets how subjects are named (default `<topic>-value`).
    pub fn subject_naming(mut self, naming: SubjectNaming) -> Self {
        self.naming = naming;
        self
    }

    /// The schema used for `event_type`, if any.
    pub fn schema(&self, event_type: &str) -> Option<&Schema> {
        self.types.get(event_type).map(|t| &t.schema)
    }

    /// Registers the schema of every event type declared with
    /// [`with`](AvroCodec::with) for `topic`s given as `(event type, topic)`,
    /// so publishing never waits for the registry. Call it at start.
    pub fn register<'a, I>(&self, types: I) -> Result<()>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        for (event_type, topic) in types {
            let t = self.types.get(event_type).ok_or_else(|| Error::Schema {
                reason: format!(
                    "no schema for event type '{event_type}': add it with AvroCodec::with"
                ),
            })?;
            self.writer_id(t, topic)?;
        }
        Ok(())
    }

    /// Registers `choreo_avro_decode_failures_total` with `registry`.
    pub fn register_metrics(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.failures().clone()))
    }

    /// Decode failures counted for `topic` and `reason` (`wire_format`,
    /// `unknown_schema`, `datum`).
    pub fn decode_failures(&self, topic: &str, reason: &str) -> u64 {
        self.failures().with_label_values(&[topic, reason]).get()
    }

    fn failures(&self) -> &IntCounterVec {
        self.failures.get_or_init(|| {
            IntCounterVec::new(
                Opts::new(
                    "choreo_avro_decode_failures_total",
                    "Avro payloads that could not be decoded, by reason (wire_format, unknown_schema, datum).",
                ),
                &["topic", "reason"],
            )
            .expect("valid metric definition")
        })
    }

    fn subject(&self, t: &TypeSchema, topic: &str) -> String {
        match self.naming {
            SubjectNaming::Topic => format!("{topic}-value"),
            SubjectNaming::TopicRecord => format!("{topic}-{}", t.full_name),
        }
    }

    fn writer_id(&self, t: &TypeSchema, topic: &str) -> Result<u32> {
        let subject = self.subject(t, topic);
        if let Some(id) = t.ids.read().get(&subject) {
            return Ok(*id);
        }
        let id = blocking(|| self.registry.register(&subject, &t.json))?;
        t.ids.write().insert(subject, id);
        self.writers
            .write()
            .entry(id)
            .or_insert_with(|| Arc::new(t.schema.clone()));
        Ok(id)
    }

    fn writer_schema(&self, id: u32) -> Result<Arc<Schema>> {
        if let Some(s) = self.writers.read().get(&id) {
            return Ok(s.clone());
        }
        let json = blocking(|| self.registry.schema(id))?;
        let schema = Schema::parse_str(&json).map_err(|e| Error::Schema {
            reason: format!("the registry's schema {id} does not parse: {e}"),
        })?;
        let schema = Arc::new(schema);
        self.writers.write().insert(id, schema.clone());
        Ok(schema)
    }

    fn fail(&self, meta: PayloadMeta<'_>, reason: &str, message: String) -> choreo_core::Error {
        self.failures()
            .with_label_values(&[meta.topic, reason])
            .inc();
        choreo_core::Error::Decode {
            event_type: meta.event_type.to_owned(),
            content_type: ContentType::Avro.to_string(),
            reason: message,
        }
    }
}

/// `schema` with apache-avro's Rust-specific `u64` fixed type replaced by `long`.
fn portable(schema: &Schema) -> Result<Schema> {
    const U64: &str = "org.apache.avro.rust.u64";
    fn rewrite(v: &mut serde_json::Value) {
        use serde_json::Value as J;
        match v {
            J::Object(o)
                if o.get("type").and_then(J::as_str) == Some("fixed")
                    && (o.get("name").and_then(J::as_str) == Some(U64)
                        || (o.get("name").and_then(J::as_str) == Some("u64")
                            && o.get("namespace").and_then(J::as_str)
                                == Some("org.apache.avro.rust"))) =>
            {
                *v = J::String("long".into());
            }
            J::String(s) if s == U64 => *v = J::String("long".into()),
            J::Object(o) => o.values_mut().for_each(rewrite),
            J::Array(a) => a.iter_mut().for_each(rewrite),
            _ => {}
        }
    }
    let mut json = serde_json::to_value(schema).map_err(|e| Error::Schema {
        reason: format!("the schema does not serialize: {e}"),
    })?;
    rewrite(&mut json);
    Schema::parse(&json).map_err(|e| Error::Schema {
        reason: e.to_string(),
    })
}

/// Runs a registry call, letting other tasks run meanwhile when inside a
/// multi-threaded tokio runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Codec for AvroCodec {
    fn content_type(&self) -> ContentType {
        ContentType::Avro
    }

    fn encode(
        &self,
        meta: PayloadMeta<'_>,
        value: &serde_json::Value,
    ) -> choreo_core::Result<Bytes> {
        let encode_err = |reason: String| choreo_core::Error::Encode {
            event_type: meta.event_type.to_owned(),
            content_type: ContentType::Avro.to_string(),
            reason,
        };
        let t = self.types.get(meta.event_type).ok_or_else(|| {
            encode_err(format!(
                "no Avro schema for this event type: add it with AvroCodec::with::<{}>()",
                meta.event_type
            ))
        })?;
        let id = self
            .writer_id(t, meta.topic)
            .map_err(|e| encode_err(e.to_string()))?;
        let avro = from_json(value)
            .map_err(encode_err)?
            .resolve(&t.schema)
            .map_err(|e| encode_err(format!("the value does not fit the schema: {e}")))?;
        let datum = GenericDatumWriter::builder(&t.schema)
            .build()
            .and_then(|w| w.write_value_to_vec(avro))
            .map_err(|e| encode_err(format!("writing the datum failed: {e}")))?;
        let mut out = Vec::with_capacity(5 + datum.len());
        out.push(MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&datum);
        Ok(Bytes::from(out))
    }

    fn decode(&self, meta: PayloadMeta<'_>, data: &[u8]) -> choreo_core::Result<serde_json::Value> {
        if data.len() < 5 || data[0] != MAGIC {
            return Err(self.fail(
                meta,
                "wire_format",
                format!(
                    "not in the Confluent wire format (a payload starts with magic byte 0 and a 4-byte schema id; this one has {} bytes{})",
                    data.len(),
                    data.first()
                        .map(|b| format!(", starting with {b:#04x}"))
                        .unwrap_or_default()
                ),
            ));
        }
        let id = u32::from_be_bytes([data[1], data[2], data[3], data[4]]);
        let writer = self
            .writer_schema(id)
            .map_err(|e| self.fail(meta, "unknown_schema", e.to_string()))?;
        let reader = self.types.get(meta.event_type).map(|t| &t.schema);
        let mut datum = &data[5..];
        let value = GenericDatumReader::builder(&writer)
            .maybe_reader_schema(reader)
            .build()
            .and_then(|r| r.read_value(&mut datum))
            .map_err(|e| {
                self.fail(
                    meta,
                    "datum",
                    format!("the datum does not match writer schema {id}: {e}"),
                )
            })?;
        Ok(to_json(value))
    }
}

/// A JSON value as a schema-less Avro value, for `Value::resolve` to fit to
/// the schema (objects to records with defaults, longs to ints, strings to
/// enums, union branches).
fn from_json(v: &serde_json::Value) -> std::result::Result<Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Long(i),
            (None, _) if n.is_u64() => {
                return Err(format!("{n} does not fit Avro's signed 64-bit long"));
            }
            (None, Some(f)) => Value::Double(f),
            (None, None) => return Err(format!("{n} is not a number Avro can hold")),
        },
        J::String(s) => Value::String(s.clone()),
        J::Array(items) => Value::Array(items.iter().map(from_json).collect::<Result<_, _>>()?),
        J::Object(fields) => Value::Map(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), from_json(v)?)))
                .collect::<std::result::Result<_, String>>()?,
        ),
    })
}

/// An Avro value as serde's data model sees it, in JSON.
fn to_json(v: Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Boolean(b) => J::Bool(b),
        Value::Int(n) | Value::Date(n) | Value::TimeMillis(n) => J::from(n),
        Value::Long(n)
        | Value::TimeMicros(n)
        | Value::TimestampMillis(n)
        | Value::TimestampMicros(n)
        | Value::TimestampNanos(n)
        | Value::LocalTimestampMillis(n)
        | Value::LocalTimestampMicros(n)
        | Value::LocalTimestampNanos(n) => J::from(n),
        Value::Float(x) => serde_json::Number::from_f64(f64::from(x)).map_or(J::Null, J::Number),
        Value::Double(x) => serde_json::Number::from_f64(x).map_or(J::Null, J::Number),
        Value::Bytes(b) | Value::Fixed(_, b) => J::Array(b.into_iter().map(J::from).collect()),
        Value::String(s) | Value::Enum(_, s) => J::String(s),
        Value::Union(_, inner) => to_json(*inner),
        Value::Array(items) => J::Array(items.into_iter().map(to_json).collect()),
        Value::Map(m) => J::Object(m.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        Value::Record(fields) => {
            J::Object(fields.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
        Value::Decimal(d) => serde_json::to_value(&d).unwrap_or(J::Null),
        Value::BigDecimal(d) => J::String(d.to_string()),
        Value::Duration(d) => J::Array(vec![
            J::from(u32::from(d.months())),
            J::from(u32::from(d.days())),
            J::from(u32::from(d.millis())),
        ]),
        Value::Uuid(u) => J::String(u.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryRegistry;

    fn meta<'a>(event_type: &'a str, topic: &'a str) -> PayloadMeta<'a> {
        PayloadMeta { event_type, topic }
    }

    const SCHEMA: &str = r#"{"type":"record","name":"OrderPlaced","fields":[
        {"name":"order_id","type":"long"},
        {"name":"note","type":["null","string"],"default":null},
        {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["Web","Shop"]}},
        {"name":"tags","type":{"type":"array","items":"string"}}]}"#;

    #[test]
    fn round_trips_through_the_confluent_wire_format() {
        let registry = Arc::new(MemoryRegistry::new());
        let codec = AvroCodec::with_registry(registry.clone())
            .with_schema("OrderPlaced", Schema::parse_str(SCHEMA).unwrap());
        let value =
            serde_json::json!({"order_id": 7, "note": "gift", "kind": "Shop", "tags": ["a"]});
        let bytes = codec.encode(meta("OrderPlaced", "orders"), &value).unwrap();
        assert_eq!(bytes[0], MAGIC);
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        assert_eq!(registry.versions("orders-value"), vec![id]);
        let back = codec.decode(meta("OrderPlaced", "orders"), &bytes).unwrap();
        assert_eq!(back, value);

        let none = serde_json::json!({"order_id": 8, "note": null, "kind": "Web", "tags": []});
        let bytes = codec.encode(meta("OrderPlaced", "orders"), &none).unwrap();
        assert_eq!(
            codec.decode(meta("OrderPlaced", "orders"), &bytes).unwrap(),
            none
        );
    }

    #[test]
    fn decode_failures_say_why_and_are_counted() {
        let codec = AvroCodec::new(MemoryRegistry::new())
            .with_schema("OrderPlaced", Schema::parse_str(SCHEMA).unwrap());
        let m = meta("OrderPlaced", "orders");
        let err = codec
            .decode(m, b"{\"order_id\":1}")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("decode error:") && err.contains("Confluent wire format"),
            "{err}"
        );
        let err = codec
            .decode(m, &[0, 0, 0, 0, 42, 1])
            .unwrap_err()
            .to_string();
        assert!(err.contains("schema id 42"), "{err}");
        let good = codec
            .encode(
                m,
                &serde_json::json!({"order_id": 1, "note": null, "kind": "Web", "tags": []}),
            )
            .unwrap();
        let err = codec.decode(m, &good[..6]).unwrap_err().to_string();
        assert!(err.contains("does not match writer schema"), "{err}");
        assert_eq!(codec.decode_failures("orders", "wire_format"), 1);
        assert_eq!(codec.decode_failures("orders", "unknown_schema"), 1);
        assert_eq!(codec.decode_failures("orders", "datum"), 1);
    }

    #[test]
    fn encoding_needs_a_schema_that_fits() {
        let codec = AvroCodec::new(MemoryRegistry::new())
            .with_schema("OrderPlaced", Schema::parse_str(SCHEMA).unwrap());
        let err = codec
            .encode(meta("Other", "orders"), &serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("AvroCodec::with::<Other>()"), "{err}");
        let err = codec
            .encode(
                meta("OrderPlaced", "orders"),
                &serde_json::json!({"order_id": "x"}),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not fit the schema"), "{err}");
    }

    #[test]
    fn topic_record_naming_gives_each_type_its_subject() {
        let registry = Arc::new(MemoryRegistry::new());
        let codec = AvroCodec::with_registry(registry.clone())
            .with_schema("OrderPlaced", Schema::parse_str(SCHEMA).unwrap())
            .subject_naming(SubjectNaming::TopicRecord);
        codec.register([("OrderPlaced", "orders")]).unwrap();
        assert_eq!(registry.subjects(), vec!["orders-OrderPlaced"]);
        assert!(codec.register([("Unknown", "orders")]).is_err());
    }
}
