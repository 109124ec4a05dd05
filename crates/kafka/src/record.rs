//! How an [`Envelope`] travels as a Kafka record: the CloudEvents 1.0 Kafka
//! protocol binding, binary content mode.
//!
//! | envelope field | record |
//! |---|---|
//! | `id` | header `ce_id` |
//! | `source` | header `ce_source` (left out when empty) |
//! | `event_type` | header `ce_type` |
//! | `time` | header `ce_time`, RFC 3339 in UTC with microseconds |
//! | `content_type` | header `content-type` |
//! | `correlation_id` | extension header `ce_correlationid` |
//! | `causation_id` | extension header `ce_causationid` (left out for a flow's first event) |
//! | `traceparent` / `tracestate` | plain headers `traceparent` / `tracestate` (read from `ce_traceparent` / `ce_tracestate` too) |
//! | `key` | the record key |
//! | `data` | the record value |
//! | `headers` | every other record header, in order |
//!
//! plus `ce_specversion: 1.0`. The topic is the record's topic.
//!
//! Reading is lenient, because a consumer must never drop what it cannot fully
//! read ([`envelope_from_record`]):
//!
//! - **Structured mode** (`content-type: application/cloudevents+json`, the
//!   whole event as a JSON object in the value) is accepted too.
//! - **A record from a producer that knows nothing of choreo** (no `ce_*`
//!   headers) is delivered with what can be derived: the id
//!   `<topic>/<partition>/<offset>`, the correlation id equal to that id (each
//!   such record is a flow of its own), the type from a `type` header or
//!   [`UNKNOWN_TYPE`], the time from the record timestamp, JSON content.
//!   On a dead-letter record (one with the `choreo-dlq-topic`, `-partition`
//!   and `-offset` headers, see [`dlq`](crate::dlq)) the id is derived from
//!   that origin, so the dead letter reads as the event that was delivered.
//! - **Trace context** comes from the plain `traceparent`/`tracestate`
//!   headers (the OpenTelemetry convention for Kafka), or, when there is no
//!   plain `traceparent`, from `ce_traceparent`/`ce_tracestate`: the
//!   CloudEvents distributed-tracing extension as a CloudEvents SDK writes it
//!   in binary mode.
//! - **A record with broken CloudEvents headers** (not UTF-8, a `ce_time` that
//!   is not RFC 3339, an unsupported `ce_specversion`, an unparsable
//!   structured event) is delivered the same way, with the
//!   [`MALFORMED_HEADER`] header saying what is wrong; the runtime
//!   dead-letters it with that reason.
//!
//! Everything here is pure: no client, no I/O, so it can be unit-tested and
//! fuzzed.

use std::borrow::Cow;
use std::cell::RefCell;

use bytes::Bytes;
use choreo_core::{
    ContentType, Envelope, Error, EventId, Headers, MALFORMED_HEADER, Name, Result, Timestamp,
};
use rustc_hash::FxHashMap;

/// Header names of the binary content mode.
pub mod names {
    /// `ce_specversion`: always `1.0`.
    pub const SPECVERSION: &str = "ce_specversion";
    /// `ce_id`: the event id.
    pub const ID: &str = "ce_id";
    /// `ce_source`: the publishing service.
    pub const SOURCE: &str = "ce_source";
    /// `ce_type`: the event type.
    pub const TYPE: &str = "ce_type";
    /// `ce_time`: publication time, RFC 3339.
    pub const TIME: &str = "ce_time";
    /// `content-type`: the payload's media type (matched case-insensitively on input).
    pub const CONTENT_TYPE: &str = "content-type";
    /// `ce_correlationid`: the flow (CloudEvents extension).
    pub const CORRELATION_ID: &str = "ce_correlationid";
    /// `ce_causationid`: the event whose handling published this one (CloudEvents extension).
    pub const CAUSATION_ID: &str = "ce_causationid";
    /// `traceparent`: W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// `tracestate`: W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// `type`: where a producer that knows nothing of CloudEvents may put an event type.
    pub const PLAIN_TYPE: &str = "type";
    /// `ce_traceparent`: the CloudEvents distributed-tracing extension in
    /// binary mode; read when there is no plain `traceparent`.
    pub const CE_TRACEPARENT: &str = "ce_traceparent";
    /// `ce_tracestate`: its trace state.
    pub const CE_TRACESTATE: &str = "ce_tracestate";
}

/// The CloudEvents version written and accepted.
pub const SPEC_VERSION: &str = "1.0";

/// The content type of a structured-mode record.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The event type given to a record that names none.
pub const UNKNOWN_TYPE: &str = "unknown";

/// Header names the mapping owns: an envelope may not carry them as extra headers.
const RESERVED: [&str; 12] = [
    names::SPECVERSION,
    names::ID,
    names::SOURCE,
    names::TYPE,
    names::TIME,
    names::CONTENT_TYPE,
    names::CORRELATION_ID,
    names::CAUSATION_ID,
    names::TRACEPARENT,
    names::TRACESTATE,
    names::CE_TRACEPARENT,
    names::CE_TRACESTATE,
];

/// One record header as read from Kafka: a name and a value that may be null.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader<'a> {
    /// Header name.
    pub name: &'a str,
    /// Header value; `None` for a null value.
    pub value: Option<&'a [u8]>,
}

/// The parts of a consumed record that the mapping reads.
#[derive(Debug, Clone, Copy)]
pub struct RecordParts<'a> {
    /// The topic it was read from.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The record timestamp in milliseconds since the epoch, if it has one.
    pub timestamp_ms: Option<i64>,
    /// The record key; `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// The record value; `None` for a null value (a tombstone).
    pub value: Option<&'a [u8]>,
    /// The record headers, in order.
    pub headers: &'a [RecordHeader<'a>],
}

/// The id given to a record without a usable `ce_id`: `<topic>/<partition>/<offset>`,
/// unique within a cluster.
pub fn derived_id(topic: &str, partition: i32, offset: i64) -> EventId {
    EventId::parse(&format!("{topic}/{partition}/{offset}"))
        .unwrap_or_else(|| EventId::parse("unknown").unwrap_or_default())
}

/// Record headers to write: names and values, in order.
pub type RecordHeaders<'a> = Vec<(&'a str, Cow<'a, [u8]>)>;

/// The headers of the record that carries `env`, in binary content mode, in
/// this order: `ce_specversion`, `ce_id`, `ce_source`, `ce_type`, `ce_time`,
/// `content-type`, `ce_correlationid`, `ce_causationid`, `traceparent`,
/// `tracestate`, then the envelope's extra headers.
///
/// The [`MALFORMED_HEADER`] header is not written: it describes how a record
/// was read, and the record written from such an envelope is well-formed.
///
/// # Errors
/// [`Error::Refused`] if an extra header uses one of the names the mapping owns.
pub fn record_headers(env: &Envelope) -> Result<RecordHeaders<'_>> {
    let mut out: RecordHeaders<'_> = Vec::with_capacity(10 + env.headers.len());
    each_record_header(env, |name, value| {
        let value = match value {
            Value::Borrowed(v) => Cow::Borrowed(v),
            Value::Written(v) => Cow::Owned(v.to_vec()),
        };
        out.push((name, value));
    })?;
    Ok(out)
}

/// A header's value as [`each_record_header`] hands it over.
pub(crate) enum Value<'a, 'w> {
    /// Bytes the envelope holds.
    Borrowed(&'a [u8]),
    /// Text written for this header only (an id, the time), on the stack
    /// where it fits.
    Written(&'w [u8]),
}

impl Value<'_, '_> {
    /// The value's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Value::Borrowed(v) | Value::Written(v) => v,
        }
    }
}

/// Calls `header` with each header of the record that carries `env`, in
/// [`record_headers`]' order, without building a list: a publish copies
/// them straight into the producer's headers, and writes the ids' text on
/// the stack.
///
/// # Errors
/// [`Error::Refused`] if an extra header uses one of the names the mapping
/// owns; `header` is then not called at all.
pub(crate) fn each_record_header<'a>(
    env: &'a Envelope,
    mut header: impl FnMut(&'a str, Value<'a, '_>),
) -> Result<()> {
    if let Some((name, _)) = env
        .headers
        .iter()
        .find(|(name, _)| *name != MALFORMED_HEADER && is_reserved(name))
    {
        return Err(Error::Refused {
            event_type: env.event_type.to_string(),
            topic: env.topic.to_string(),
            reason: format!(
                "extra header '{name}' is reserved for an envelope field on Kafka: set the field instead"
            ),
        });
    }
    header(names::SPECVERSION, Value::Borrowed(SPEC_VERSION.as_bytes()));
    header(names::ID, Value::Written(env.id.text_bytes(&mut [0; 36])));
    if !env.source.is_empty() {
        header(names::SOURCE, Value::Borrowed(env.source.as_bytes()));
    }
    header(names::TYPE, Value::Borrowed(env.event_type.as_bytes()));
    header(
        names::TIME,
        Value::Written(env.time.to_rfc3339().as_bytes()),
    );
    header(
        names::CONTENT_TYPE,
        Value::Borrowed(env.content_type.as_str().as_bytes()),
    );
    header(
        names::CORRELATION_ID,
        Value::Written(env.correlation_id.text_bytes(&mut [0; 36])),
    );
    if let Some(c) = &env.causation_id {
        header(
            names::CAUSATION_ID,
            Value::Written(c.text_bytes(&mut [0; 36])),
        );
    }
    if let Some(tp) = &env.traceparent {
        header(names::TRACEPARENT, Value::Borrowed(tp.as_bytes()));
    }
    if let Some(ts) = &env.tracestate {
        header(names::TRACESTATE, Value::Borrowed(ts.as_bytes()));
    }
    for (name, value) in env.headers.iter() {
        if name != MALFORMED_HEADER {
            header(name, Value::Borrowed(&value[..]));
        }
    }
    Ok(())
}

fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name) || name.eq_ignore_ascii_case(names::CONTENT_TYPE)
}

/// The envelope of a consumed record. Never fails and never panics: what
/// cannot be read is derived, and problems are reported in the
/// [`MALFORMED_HEADER`] header (see the [module docs](self)).
pub fn envelope_from_record(parts: &RecordParts<'_>) -> Envelope {
    envelope_sharing(parts, None, None)
}

/// [`envelope_from_record`] for a record whose key and value the caller
/// holds as `Bytes` already: the envelope shares them rather than copying.
pub(crate) fn envelope_sharing(
    parts: &RecordParts<'_>,
    key: Option<&Bytes>,
    value: Option<&Bytes>,
) -> Envelope {
    let shared = Shared { key, value };
    let content_type = parts
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(names::CONTENT_TYPE));
    if let Some(RecordHeader {
        value: Some(ct), ..
    }) = content_type
        && let Ok(ct) = std::str::from_utf8(ct)
        && essence(ct).eq_ignore_ascii_case(STRUCTURED_CONTENT_TYPE)
    {
        return structured(parts, shared);
    }
    binary(parts, shared)
}

/// The record's key and value as `Bytes`, when the caller has them.
#[derive(Clone, Copy)]
struct Shared<'a> {
    key: Option<&'a Bytes>,
    value: Option<&'a Bytes>,
}

impl Shared<'_> {
    fn key(&self, parts: &RecordParts<'_>) -> Option<Bytes> {
        match self.key {
            Some(k) => Some(k.clone()),
            None => parts.key.map(Bytes::copy_from_slice),
        }
    }

    fn value(&self, parts: &RecordParts<'_>) -> Bytes {
        match (self.value, parts.value) {
            (Some(v), _) => v.clone(),
            (None, Some(v)) => Bytes::copy_from_slice(v),
            (None, None) => Bytes::new(),
        }
    }
}

/// The position a dead-letter record was read from, from its
/// `choreo-dlq-topic`, `-partition` and `-offset` headers.
fn dead_letter_origin(headers: &Headers) -> Option<EventId> {
    use choreo_core::dlq_headers;
    let topic = headers.get_str(dlq_headers::TOPIC)?;
    let partition = headers.get_str(dlq_headers::PARTITION)?.parse().ok()?;
    let offset = headers.get_str(dlq_headers::OFFSET)?.parse().ok()?;
    Some(derived_id(topic, partition, offset))
}

/// The [`Name`] of `s`, shared with every record of this thread that had
/// the same one: a consumer reads the same few topics, sources and types in
/// every record, and sharing them saves an allocation (freed on another
/// thread, later) per name per record. At most [`NAMES_KEPT`] names of up
/// to [`NAME_KEPT_LEN`] bytes are kept; past that the table starts again.
fn shared_name(s: &str) -> Name {
    thread_local! {
        static NAMES: RefCell<FxHashMap<Box<str>, Name>> = RefCell::new(FxHashMap::default());
    }
    if s.len() > NAME_KEPT_LEN {
        return Name::from(s);
    }
    NAMES.with_borrow_mut(|names| {
        if let Some(n) = names.get(s) {
            return n.clone();
        }
        if names.len() >= NAMES_KEPT {
            names.clear();
        }
        let n = Name::from(s);
        names.insert(s.into(), n.clone());
        n
    })
}

/// How many names [`shared_name`] keeps per thread.
const NAMES_KEPT: usize = 1024;
/// The longest name [`shared_name`] keeps, in bytes: any Kafka topic's
/// (at most 249), so a consumer shares its topics' names whatever they are.
const NAME_KEPT_LEN: usize = 255;

/// A media type without its parameters (compare it without case).
fn essence(media_type: &str) -> &str {
    media_type.split(';').next().unwrap_or("").trim()
}

/// What the attributes of a record say, before the derived fallbacks apply.
#[derive(Default)]
struct Attributes {
    /// Borrowed when it is the version choreo reads (the usual case: no
    /// allocation per record).
    spec: Option<Cow<'static, str>>,
    id: Option<EventId>,
    source: Option<Name>,
    event_type: Option<Name>,
    time: Option<Timestamp>,
    content_type: Option<ContentType>,
    correlation_id: Option<EventId>,
    causation_id: Option<EventId>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    problems: Vec<String>,
}

impl Attributes {
    fn into_envelope(
        mut self,
        parts: &RecordParts<'_>,
        shared: Shared<'_>,
        data: Bytes,
        mut headers: Headers,
    ) -> Envelope {
        if let Some(spec) = &self.spec
            && spec != SPEC_VERSION
        {
            self.problems.push(format!(
                "unsupported CloudEvents spec version '{}' (choreo reads {SPEC_VERSION})",
                shorten(spec)
            ));
        }
        let id = self.id.unwrap_or_else(|| {
            dead_letter_origin(&headers)
                .unwrap_or_else(|| derived_id(parts.topic, parts.partition, parts.offset))
        });
        let correlation_id = self.correlation_id.unwrap_or_else(|| id.clone());
        let time = self.time.unwrap_or_else(|| {
            parts
                .timestamp_ms
                .filter(|t| *t >= 0)
                .map_or(Timestamp::EPOCH, Timestamp::from_millis)
        });
        headers.remove(MALFORMED_HEADER);
        if !self.problems.is_empty() {
            headers.insert(MALFORMED_HEADER, self.problems.join("; "));
        }
        Envelope {
            id,
            event_type: self
                .event_type
                .unwrap_or_else(|| Name::from_static(UNKNOWN_TYPE)),
            source: self.source.unwrap_or_default(),
            topic: shared_name(parts.topic),
            key: shared.key(parts),
            correlation_id,
            causation_id: self.causation_id,
            time,
            traceparent: self.traceparent,
            tracestate: self.tracestate,
            content_type: self.content_type.unwrap_or_default(),
            data,
            headers,
        }
    }
}

/// Shortens a value quoted in a problem description.
fn shorten(s: &str) -> Cow<'_, str> {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return Cow::Borrowed(s);
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

/// The text of a header that must be non-empty UTF-8, or a problem.
fn text<'a>(h: &RecordHeader<'a>, problems: &mut Vec<String>) -> Option<&'a str> {
    match h.value {
        None => {
            problems.push(format!("header '{}' is null", h.name));
            None
        }
        Some(v) => match std::str::from_utf8(v) {
            Ok("") => {
                problems.push(format!("header '{}' is empty", h.name));
                None
            }
            Ok(s) => Some(s),
            Err(_) => {
                problems.push(format!("header '{}' is not UTF-8", h.name));
                None
            }
        },
    }
}

/// The id in a header, or a problem. A UUID's text (as choreo writes ids)
/// is decoded from the bytes, which checks them too; any other text goes
/// through [`text`] and [`EventId::parse`], with the same result as
/// before.
fn id(h: &RecordHeader<'_>, problems: &mut Vec<String>) -> Option<EventId> {
    h.value
        .and_then(EventId::from_uuid_text)
        .or_else(|| text(h, problems).and_then(EventId::parse))
}

fn binary(parts: &RecordParts<'_>, shared: Shared<'_>) -> Envelope {
    let mut a = Attributes::default();
    let mut headers = Headers::new();
    let mut plain_type: Option<Name> = None;
    // The CloudEvents tracing extension, used when there is no plain traceparent.
    let mut ce_trace: (Option<&str>, Option<&str>) = (None, None);
    let mut seen_content_type = false;
    for h in parts.headers {
        let name = h.name;
        // The first occurrence of an attribute wins; later ones are ignored.
        match name {
            names::SPECVERSION if a.spec.is_none() => {
                a.spec = text(h, &mut a.problems).map(|s| match s {
                    SPEC_VERSION => Cow::Borrowed(SPEC_VERSION),
                    other => Cow::Owned(other.to_owned()),
                });
            }
            names::ID if a.id.is_none() => {
                a.id = id(h, &mut a.problems);
            }
            names::SOURCE if a.source.is_none() => {
                // An empty source is how choreo writes "unknown"; not a problem.
                a.source = match h.value.map(std::str::from_utf8) {
                    Some(Ok(s)) => Some(shared_name(s)),
                    Some(Err(_)) | None => text(h, &mut a.problems).map(shared_name),
                };
            }
            names::TYPE if a.event_type.is_none() => {
                a.event_type = text(h, &mut a.problems).map(shared_name);
            }
            names::TIME if a.time.is_none() => {
                if let Some(s) = text(h, &mut a.problems) {
                    a.time = Timestamp::parse_rfc3339(s);
                    if a.time.is_none() {
                        a.problems.push(format!(
                            "header '{}' is not an RFC 3339 time: '{}'",
                            names::TIME,
                            shorten(s)
                        ));
                    }
                }
            }
            names::CORRELATION_ID if a.correlation_id.is_none() => {
                a.correlation_id = id(h, &mut a.problems);
            }
            names::CAUSATION_ID if a.causation_id.is_none() => {
                a.causation_id = id(h, &mut a.problems);
            }
            // Trace context is advisory: an unreadable one is dropped, as
            // OpenTelemetry propagators do.
            names::TRACEPARENT if a.traceparent.is_none() => {
                a.traceparent = utf8(h.value).map(str::to_owned);
            }
            names::TRACESTATE if a.tracestate.is_none() => {
                a.tracestate = utf8(h.value).map(str::to_owned);
            }
            names::CE_TRACEPARENT if ce_trace.0.is_none() => ce_trace.0 = utf8(h.value),
            names::CE_TRACESTATE if ce_trace.1.is_none() => ce_trace.1 = utf8(h.value),
            n if n.eq_ignore_ascii_case(names::CONTENT_TYPE) => {
                if !seen_content_type {
                    seen_content_type = true;
                    a.content_type = text(h, &mut a.problems).map(ContentType::parse);
                }
            }
            n if is_reserved(n) || n == MALFORMED_HEADER => {}
            n => {
                if n == names::PLAIN_TYPE && plain_type.is_none() {
                    plain_type = utf8(h.value).filter(|s| !s.is_empty()).map(shared_name);
                }
                headers.insert(n, h.value.map_or_else(Bytes::new, Bytes::copy_from_slice));
            }
        }
    }
    if a.event_type.is_none() && !parts.headers.iter().any(|h| h.name == names::TYPE) {
        a.event_type = plain_type;
    }
    if a.traceparent.is_none()
        && let Some(tp) = ce_trace.0
    {
        // A trace state goes with its own traceparent only.
        a.traceparent = Some(tp.to_owned());
        a.tracestate = ce_trace.1.map(str::to_owned);
    }
    let data = shared.value(parts);
    a.into_envelope(parts, shared, data, headers)
}

fn utf8(v: Option<&[u8]>) -> Option<&str> {
    v.and_then(|v| std::str::from_utf8(v).ok())
}

/// Structured mode: the whole event is a JSON object in the record value.
fn structured(parts: &RecordParts<'_>, shared: Shared<'_>) -> Envelope {
    let mut a = Attributes::default();
    let mut headers = Headers::new();
    // Trace context in plain headers (the transport's, as OpenTelemetry
    // writes it) wins over the event's tracing extension attributes.
    let mut plain_trace: (Option<&str>, Option<&str>) = (None, None);
    // Other record headers but content-type are kept as extra headers.
    for h in parts.headers {
        match h.name {
            names::TRACEPARENT if plain_trace.0.is_none() => plain_trace.0 = utf8(h.value),
            names::TRACESTATE if plain_trace.1.is_none() => plain_trace.1 = utf8(h.value),
            names::TRACEPARENT | names::TRACESTATE | MALFORMED_HEADER => {}
            n if n.eq_ignore_ascii_case(names::CONTENT_TYPE) => {}
            n => headers.insert(n, h.value.map_or_else(Bytes::new, Bytes::copy_from_slice)),
        }
    }
    let raw = parts.value.unwrap_or_default();
    let object = match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(_) => {
            a.problems
                .push("structured CloudEvent is not a JSON object".to_owned());
            return a.into_envelope(parts, shared, shared.value(parts), headers);
        }
        Err(e) => {
            a.problems
                .push(format!("structured CloudEvent is not valid JSON: {e}"));
            return a.into_envelope(parts, shared, shared.value(parts), headers);
        }
    };
    if let Some(tp) = plain_trace.0 {
        a.traceparent = Some(tp.to_owned());
        a.tracestate = plain_trace.1.map(str::to_owned);
    }
    let mut data_json: Option<serde_json::Value> = None;
    let mut data_base64: Option<String> = None;
    for (k, v) in object {
        let string = |what: &str, problems: &mut Vec<String>| -> Option<String> {
            match v.as_str() {
                Some("") => {
                    problems.push(format!("structured CloudEvent attribute '{what}' is empty"));
                    None
                }
                Some(s) => Some(s.to_owned()),
                None => {
                    problems.push(format!(
                        "structured CloudEvent attribute '{what}' is not a string"
                    ));
                    None
                }
            }
        };
        match k.as_str() {
            "specversion" => a.spec = string("specversion", &mut a.problems).map(Cow::Owned),
            "id" => a.id = string("id", &mut a.problems).and_then(|s| EventId::parse(&s)),
            "source" => a.source = string("source", &mut a.problems).map(Name::from),
            "type" => a.event_type = string("type", &mut a.problems).map(Name::from),
            "time" => {
                if let Some(s) = string("time", &mut a.problems) {
                    a.time = Timestamp::parse_rfc3339(&s);
                    if a.time.is_none() {
                        a.problems.push(format!(
                            "structured CloudEvent attribute 'time' is not an RFC 3339 time: '{}'",
                            shorten(&s)
                        ));
                    }
                }
            }
            "datacontenttype" => {
                a.content_type =
                    string("datacontenttype", &mut a.problems).map(|s| ContentType::parse(&s));
            }
            "correlationid" => {
                a.correlation_id =
                    string("correlationid", &mut a.problems).and_then(|s| EventId::parse(&s));
            }
            "causationid" => {
                a.causation_id =
                    string("causationid", &mut a.problems).and_then(|s| EventId::parse(&s));
            }
            "traceparent" if plain_trace.0.is_none() => {
                a.traceparent = v.as_str().map(str::to_owned);
            }
            "tracestate" if plain_trace.0.is_none() => {
                a.tracestate = v.as_str().map(str::to_owned);
            }
            "traceparent" | "tracestate" => {}
            "data" => data_json = Some(v),
            "data_base64" => data_base64 = string("data_base64", &mut a.problems),
            _ => {
                // Other extension attributes become `ce_<name>` headers, as
                // binary mode would carry them.
                let value = match v {
                    serde_json::Value::String(s) => s.into_bytes(),
                    other => other.to_string().into_bytes(),
                };
                headers.insert(format!("ce_{k}"), value);
            }
        }
    }
    if a.spec.is_none() {
        a.problems
            .push("structured CloudEvent has no 'specversion'".to_owned());
    }
    if a.id.is_none() && !a.problems.iter().any(|p| p.contains("'id'")) {
        a.problems
            .push("structured CloudEvent has no 'id'".to_owned());
    }
    if a.event_type.is_none() && !a.problems.iter().any(|p| p.contains("'type'")) {
        a.problems
            .push("structured CloudEvent has no 'type'".to_owned());
    }
    let data = match (data_base64, data_json) {
        (Some(b64), _) => match choreo_core::base64::decode(&b64) {
            Some(bytes) => Bytes::from(bytes),
            None => {
                a.problems
                    .push("structured CloudEvent attribute 'data_base64' is not base64".to_owned());
                Bytes::new()
            }
        },
        (None, Some(serde_json::Value::String(s))) if !is_json(a.content_type.as_ref()) => {
            Bytes::from(s.into_bytes())
        }
        (None, Some(v)) => Bytes::from(v.to_string().into_bytes()),
        (None, None) => Bytes::new(),
    };
    a.into_envelope(parts, shared, data, headers)
}

fn is_json(ct: Option<&ContentType>) -> bool {
    match ct {
        None | Some(ContentType::Json) => true,
        Some(ContentType::Avro) => false,
        Some(ContentType::Other(n)) => {
            let e = essence(n).as_bytes();
            e.len() >= 5 && e[e.len() - 5..].eq_ignore_ascii_case(b"+json")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the producer writes it for `env`, read back as `RecordParts`.
    fn round_trip(env: &Envelope) -> Envelope {
        let headers = record_headers(env).expect("headers");
        let owned: Vec<(String, Vec<u8>)> = headers
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v.into_owned()))
            .collect();
        let borrowed: Vec<RecordHeader<'_>> = owned
            .iter()
            .map(|(n, v)| RecordHeader {
                name: n,
                value: Some(v),
            })
            .collect();
        envelope_from_record(&RecordParts {
            topic: &env.topic,
            partition: 3,
            offset: 42,
            timestamp_ms: Some(1),
            key: env.key.as_deref(),
            value: Some(&env.data),
            headers: &borrowed,
        })
    }

    fn h<'a>(name: &'a str, value: &'a [u8]) -> RecordHeader<'a> {
        RecordHeader {
            name,
            value: Some(value),
        }
    }

    fn parts<'a>(headers: &'a [RecordHeader<'a>], value: &'a [u8]) -> RecordParts<'a> {
        RecordParts {
            topic: "orders",
            partition: 2,
            offset: 17,
            timestamp_ms: Some(1_764_104_835_123),
            key: Some(b"k-1"),
            value: Some(value),
            headers,
        }
    }

    #[test]
    fn every_field_round_trips() {
        let mut env = Envelope::new("OrderPlaced", "orders", &b"\x00\xffbinary"[..])
            .with_source("checkout")
            .caused_by(&Envelope::new("CartClosed", "carts", "{}"));
        env.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        env.tracestate = Some("congo=t61rcWkgMzE".into());
        env.content_type = ContentType::Other(Name::from("application/x-custom; v=2"));
        env.headers.insert("x-tenant", "acme");
        env.headers
            .insert("x-binary", Bytes::from_static(b"\x00\xff"));
        env.headers.insert("ce_subject", "order-7");
        assert_eq!(round_trip(&env), env);

        let first = Envelope::new("OrderPlaced", "orders", "{}").with_source("checkout");
        assert_eq!(round_trip(&first), first);
        let mut keyless = Envelope::new("OrderPlaced", "orders", "{}");
        keyless.key = None;
        assert_eq!(round_trip(&keyless), keyless);
    }

    #[test]
    fn binary_mode_headers_are_the_cloudevents_ones() {
        let env = Envelope::new("OrderPlaced", "orders", "{}").with_source("checkout");
        let headers = record_headers(&env).unwrap();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(get("ce_specversion").as_deref(), Some("1.0"));
        assert_eq!(get("ce_id"), Some(env.id.to_string()));
        assert_eq!(get("ce_source").as_deref(), Some("checkout"));
        assert_eq!(get("ce_type").as_deref(), Some("OrderPlaced"));
        assert_eq!(get("ce_time"), Some(env.time.to_rfc3339()));
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert_eq!(get("ce_correlationid"), Some(env.id.to_string()));
        assert_eq!(
            get("ce_causationid"),
            None,
            "a flow's first event has no cause"
        );
        assert_eq!(get("traceparent"), None);
    }

    #[test]
    fn reserved_extra_headers_are_refused_and_malformed_is_not_written() {
        let mut env = Envelope::new("OrderPlaced", "orders", "{}");
        env.headers.insert("ce_type", "Other");
        let err = record_headers(&env).unwrap_err().to_string();
        assert!(err.contains("'ce_type' is reserved"), "{err}");

        let mut env = Envelope::new("OrderPlaced", "orders", "{}");
        env.headers.insert(MALFORMED_HEADER, "header 'ce_time' …");
        let headers = record_headers(&env).unwrap();
        assert!(headers.iter().all(|(n, _)| *n != MALFORMED_HEADER));
    }

    #[test]
    fn a_foreign_record_is_delivered_with_what_can_be_derived() {
        let env = envelope_from_record(&parts(&[], b"{\"order\":1}"));
        assert_eq!(env.id.to_string(), "orders/2/17");
        assert_eq!(
            env.correlation_id, env.id,
            "a foreign record is a flow of its own"
        );
        assert_eq!(env.causation_id, None);
        assert_eq!(env.event_type, UNKNOWN_TYPE);
        assert_eq!(env.source, "");
        assert_eq!(env.topic, "orders");
        assert_eq!(env.key.as_deref(), Some(&b"k-1"[..]));
        assert_eq!(env.time, Timestamp::from_millis(1_764_104_835_123));
        assert_eq!(env.content_type, ContentType::Json);
        assert_eq!(&env.data[..], b"{\"order\":1}");
        assert!(env.headers.get(MALFORMED_HEADER).is_none());

        let headers = [h("type", b"OrderPlaced"), h("x-app", b"legacy")];
        let env = envelope_from_record(&parts(&headers, b"{}"));
        assert_eq!(env.event_type, "OrderPlaced");
        assert_eq!(env.headers.get_str("x-app"), Some("legacy"));

        let none = RecordParts {
            key: None,
            value: None,
            timestamp_ms: None,
            ..parts(&[], b"")
        };
        let env = envelope_from_record(&none);
        assert_eq!(env.key, None);
        assert!(env.data.is_empty());
        assert_eq!(env.time, Timestamp::EPOCH);
    }

    /// Ids are decoded from the header's bytes when they are a UUID's
    /// text; whatever the bytes, the id and the problems are those of
    /// reading the text and parsing it, as before.
    #[test]
    fn ids_read_from_bytes_are_those_of_their_text() {
        fn by_text(h: &RecordHeader<'_>) -> (Option<EventId>, Vec<String>) {
            let mut problems = Vec::new();
            let id = text(h, &mut problems).and_then(EventId::parse);
            (id, problems)
        }
        let check = |value: Option<&[u8]>| {
            let h = RecordHeader {
                name: names::ID,
                value,
            };
            let mut problems = Vec::new();
            let got = id(&h, &mut problems);
            let (want, want_problems) = by_text(&h);
            assert_eq!(got, want, "{:?}", value.map(String::from_utf8_lossy));
            assert_eq!(problems, want_problems);
            got
        };
        let uuid = b"0193a5f4-7c1e-7abc-8def-0123456789ab";
        assert!(check(Some(uuid)).unwrap().as_uuid().is_some());
        let upper = b"0193A5F4-7C1E-7ABC-8DEF-0123456789AB";
        assert_eq!(
            check(Some(upper)).unwrap().to_string(),
            "0193A5F4-7C1E-7ABC-8DEF-0123456789AB"
        );
        for odd in [
            &b""[..],
            b"e-1",
            b"\xff\xfe",
            b"0193a5f4-7c1e-7abc-8def-0123456789a\xff",
            b"0193a5f4_7c1e-7abc-8def-0123456789ab",
            b"0193a5f4-7c1e-7abc-8def-0123456789abc",
        ] {
            check(Some(odd));
        }
        check(None);
        // Random 36-byte values from an alphabet of hex digits, hyphens and
        // a few others, hyphens mostly where a UUID has them.
        let alphabet = b"0123456789abcdefABCDEF-g \xc3\xa9\xff";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut v = [0u8; 36];
            for (i, b) in v.iter_mut().enumerate() {
                let r = next();
                *b = if matches!(i, 8 | 13 | 18 | 23) && r % 8 != 0 {
                    b'-'
                } else if r % 16 < 14 {
                    b"0123456789abcdef"[(r >> 8) as usize % 16]
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                };
            }
            check(Some(&v));
        }
    }

    #[test]
    fn a_cloudevent_from_another_sdk_starts_its_own_flow() {
        let headers = [
            h("ce_specversion", b"1.0"),
            h("ce_id", b"A234-1234-1234"),
            h("ce_source", b"/mycontext/subcontext"),
            h("ce_type", b"com.example.someevent"),
            h("ce_time", b"2018-04-05T03:56:24Z"),
            h("Content-Type", b"application/json; charset=utf-8"),
        ];
        let env = envelope_from_record(&parts(&headers, b"{}"));
        assert_eq!(env.id.to_string(), "A234-1234-1234");
        assert_eq!(env.correlation_id, env.id);
        assert_eq!(env.source, "/mycontext/subcontext");
        assert_eq!(env.event_type, "com.example.someevent");
        assert_eq!(
            env.time,
            Timestamp::parse_rfc3339("2018-04-05T03:56:24Z").unwrap()
        );
        assert_eq!(env.content_type, ContentType::Json);
        assert!(env.headers.is_empty(), "{:?}", env.headers);
    }

    #[test]
    fn broken_headers_are_derived_and_reported() {
        let headers = [
            h("ce_specversion", b"1.0"),
            h("ce_id", b"\xff\xfe"),
            h("ce_type", b"OrderPlaced"),
            h("ce_time", b"yesterday"),
            RecordHeader {
                name: "ce_correlationid",
                value: None,
            },
        ];
        let env = envelope_from_record(&parts(&headers, b"{}"));
        assert_eq!(env.id.to_string(), "orders/2/17");
        assert_eq!(env.event_type, "OrderPlaced");
        assert_eq!(env.time, Timestamp::from_millis(1_764_104_835_123));
        assert_eq!(env.correlation_id, env.id);
        let problem = env.headers.get_str(MALFORMED_HEADER).expect("reported");
        assert!(problem.contains("header 'ce_id' is not UTF-8"), "{problem}");
        assert!(
            problem.contains("header 'ce_time' is not an RFC 3339 time: 'yesterday'"),
            "{problem}"
        );
        assert!(
            problem.contains("header 'ce_correlationid' is null"),
            "{problem}"
        );

        let headers = [h("ce_specversion", b"0.3"), h("ce_type", b"\xc3")];
        let env = envelope_from_record(&parts(&headers, b"{}"));
        assert_eq!(env.event_type, UNKNOWN_TYPE);
        let problem = env.headers.get_str(MALFORMED_HEADER).unwrap();
        assert!(problem.contains("spec version '0.3'"), "{problem}");
        assert!(problem.contains("'ce_type' is not UTF-8"), "{problem}");
    }

    #[test]
    fn a_malformed_header_on_the_wire_is_not_trusted() {
        let headers = [
            h("ce_id", b"e-1"),
            h("ce_type", b"OrderPlaced"),
            h(MALFORMED_HEADER, b"forged"),
        ];
        let env = envelope_from_record(&parts(&headers, b"{}"));
        assert!(env.headers.get(MALFORMED_HEADER).is_none());
    }

    #[test]
    fn structured_mode_is_accepted() {
        let value = br#"{
            "specversion": "1.0", "id": "e-1", "source": "payment", "type": "PaymentCaptured",
            "time": "2025-11-25T21:07:15.123456Z", "datacontenttype": "application/json",
            "correlationid": "flow-1", "causationid": "e-0",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "subject": "order-7", "priority": 3,
            "data": {"order_id": 7}
        }"#;
        let headers = [
            h(
                "content-type",
                b"application/cloudevents+json; charset=utf-8",
            ),
            h("x-tenant", b"acme"),
        ];
        let env = envelope_from_record(&parts(&headers, value));
        assert!(
            env.headers.get(MALFORMED_HEADER).is_none(),
            "{:?}",
            env.headers
        );
        assert_eq!(env.id.to_string(), "e-1");
        assert_eq!(env.source, "payment");
        assert_eq!(env.event_type, "PaymentCaptured");
        assert_eq!(env.correlation_id.to_string(), "flow-1");
        assert_eq!(
            env.causation_id.as_ref().map(|c| c.to_string()).as_deref(),
            Some("e-0")
        );
        assert_eq!(env.time.to_rfc3339(), "2025-11-25T21:07:15.123456Z");
        assert_eq!(env.content_type, ContentType::Json);
        assert_eq!(&env.data[..], br#"{"order_id":7}"#);
        assert!(env.traceparent.is_some());
        assert_eq!(env.headers.get_str("ce_subject"), Some("order-7"));
        assert_eq!(env.headers.get_str("ce_priority"), Some("3"));
        assert_eq!(env.headers.get_str("x-tenant"), Some("acme"));

        let value = br#"{"specversion":"1.0","id":"e-2","type":"Blob","source":"s",
            "datacontenttype":"application/octet-stream","data_base64":"AAH/dGV4dA=="}"#;
        let headers = [h("content-type", b"application/cloudevents+json")];
        let env = envelope_from_record(&parts(&headers, value));
        assert_eq!(&env.data[..], b"\x00\x01\xfftext");
        assert_eq!(env.content_type.as_str(), "application/octet-stream");

        let value = br#"{"specversion":"1.0","id":"e-3","type":"Note","source":"s",
            "datacontenttype":"text/plain","data":"hello"}"#;
        let env = envelope_from_record(&parts(&headers, value));
        assert_eq!(&env.data[..], b"hello");

        // Media types compare without case: the structured mode's, and a
        // `+json` data content type (whose string data stays JSON text).
        let value = br#"{"specversion":"1.0","id":"e-4","type":"Note","source":"s",
            "datacontenttype":"Application/Problem+JSON","data":"hello"}"#;
        let headers = [h(
            "Content-Type",
            b"Application/CloudEvents+JSON ; charset=utf-8",
        )];
        let env = envelope_from_record(&parts(&headers, value));
        assert_eq!(env.id.to_string(), "e-4");
        assert_eq!(&env.data[..], br#""hello""#);
    }

    #[test]
    fn broken_structured_events_are_reported() {
        let headers = [h("content-type", b"application/cloudevents+json")];
        let env = envelope_from_record(&parts(&headers, b"{not json"));
        assert_eq!(env.id.to_string(), "orders/2/17");
        assert_eq!(&env.data[..], b"{not json");
        let problem = env.headers.get_str(MALFORMED_HEADER).unwrap();
        assert!(problem.contains("not valid JSON"), "{problem}");

        let env = envelope_from_record(&parts(&headers, br#"{"id": 5, "data_base64": "!!"}"#));
        let problem = env.headers.get_str(MALFORMED_HEADER).unwrap();
        assert!(problem.contains("'id' is not a string"), "{problem}");
        assert!(problem.contains("no 'specversion'"), "{problem}");
        assert!(problem.contains("no 'type'"), "{problem}");
        assert!(problem.contains("'data_base64' is not base64"), "{problem}");
    }

    #[test]
    fn long_values_are_shortened_in_problems() {
        let long = "x".repeat(500);
        let headers = [h("ce_time", long.as_bytes())];
        let env = envelope_from_record(&parts(&headers, b""));
        let problem = env.headers.get_str(MALFORMED_HEADER).unwrap();
        assert!(problem.len() < 200, "{problem}");
    }

    #[test]
    fn the_cloudevents_tracing_extension_is_trace_context_and_plain_headers_win() {
        const FOREIGN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        const PLAIN: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let headers = [
            h("ce_specversion", b"1.0"),
            h("ce_id", b"e-1"),
            h("ce_type", b"OrderPlaced"),
            h("ce_traceparent", FOREIGN.as_bytes()),
            h("ce_tracestate", b"vendor=foreign"),
        ];
        let env = envelope_from_record(&parts(&headers, b"{}"));
        assert_eq!(env.traceparent.as_deref(), Some(FOREIGN));
        assert_eq!(env.tracestate.as_deref(), Some("vendor=foreign"));
        assert!(
            env.headers.is_empty(),
            "read as attributes: {:?}",
            env.headers
        );
        // Written back as the plain headers, and read back the same.
        assert_eq!(round_trip(&env).traceparent.as_deref(), Some(FOREIGN));

        let headers = [
            h("ce_id", b"e-1"),
            h("ce_type", b"OrderPlaced"),
            h("ce_traceparent", FOREIGN.as_bytes()),
            h("ce_tracestate", b"vendor=foreign"),
            h("traceparent", PLAIN.as_bytes()),
        ];
        let env = envelope_from_record(&parts(&headers, b"{}"));
        assert_eq!(env.traceparent.as_deref(), Some(PLAIN));
        assert_eq!(
            env.tracestate, None,
            "a trace state goes with its own traceparent"
        );

        let value = format!(
            r#"{{"specversion":"1.0","id":"e-1","source":"s","type":"T","traceparent":"{FOREIGN}","tracestate":"a=b","data":{{}}}}"#
        );
        let ct = h("content-type", b"application/cloudevents+json");
        let env = envelope_from_record(&parts(&[ct], value.as_bytes()));
        assert_eq!(env.traceparent.as_deref(), Some(FOREIGN));
        assert_eq!(env.tracestate.as_deref(), Some("a=b"));
        let with_plain = [ct, h("traceparent", PLAIN.as_bytes())];
        let env = envelope_from_record(&parts(&with_plain, value.as_bytes()));
        assert_eq!(env.traceparent.as_deref(), Some(PLAIN));
        assert_eq!(env.tracestate, None);
        assert!(env.headers.get("traceparent").is_none());
    }

    #[test]
    fn a_dead_letter_without_a_readable_id_takes_the_id_of_its_origin() {
        let headers = [
            h("ce_id", b"\xff"),
            h("choreo-dlq-topic", b"orders"),
            h("choreo-dlq-partition", b"4"),
            h("choreo-dlq-offset", b"99"),
        ];
        let env = envelope_from_record(&parts(&headers, b"{}"));
        assert_eq!(env.id.to_string(), "orders/4/99");
        assert_eq!(env.correlation_id, env.id);
        assert_eq!(env.topic, "orders", "read from the parts' topic");
        // Without a whole origin, from the record's own position.
        let env = envelope_from_record(&parts(&headers[..3], b"{}"));
        assert_eq!(env.id.to_string(), "orders/2/17");
    }
}
