//! The JSON lines format of captures: one envelope per line.
//!
//! Each line is an object with these keys (all but `id` and `type` optional;
//! `null` and absent mean the same):
//!
//! | key | value |
//! |---|---|
//! | `id` | the event id (string) |
//! | `type` | the event type |
//! | `source` | the publishing service |
//! | `topic` | the topic |
//! | `key` / `key_base64` | the partition key: text, or base64 when it is not UTF-8 |
//! | `correlation_id` (or `correlationid`) | the flow; absent → the record is unattributed |
//! | `causation_id` (or `causationid`) | the cause |
//! | `time` | RFC 3339 text, or integer microseconds since the epoch |
//! | `traceparent`, `tracestate` | W3C trace context |
//! | `content_type` (or `datacontenttype`) | the payload's media type; default `application/json` |
//! | `data` / `data_base64` | the payload: any JSON value when it is JSON, else base64 |
//! | `headers` | extra headers, in order, as `[name, value]` pairs; a value is text, or `{"base64": "…"}` when not UTF-8 (an object `{name: value}` is accepted too) |
//! | `partition`, `offset` | where the record was read, when known |

use bytes::Bytes;
use choreo_core::{ContentType, EventId, Headers, Timestamp};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::avro::{Parts, assemble, content_type};
use crate::Record;
use crate::util::Interner;
use choreo_core::base64;

/// Encodes a record as one JSON line (without the newline).
pub(crate) fn encode(r: &Record) -> String {
    let e = &r.envelope;
    let mut m = Map::new();
    m.insert("id".into(), e.id.to_string().into());
    m.insert("type".into(), e.event_type.as_str().into());
    m.insert("source".into(), e.source.as_str().into());
    m.insert("topic".into(), e.topic.as_str().into());
    if let Some(k) = &e.key {
        match std::str::from_utf8(k) {
            Ok(s) => m.insert("key".into(), s.into()),
            Err(_) => m.insert("key_base64".into(), base64::encode(k).into()),
        };
    }
    if r.attributed {
        m.insert("correlation_id".into(), e.correlation_id.to_string().into());
    }
    if let Some(c) = &e.causation_id {
        m.insert("causation_id".into(), c.to_string().into());
    }
    m.insert("time".into(), e.time.to_rfc3339().into());
    if let Some(t) = &e.traceparent {
        m.insert("traceparent".into(), t.as_str().into());
    }
    if let Some(t) = &e.tracestate {
        m.insert("tracestate".into(), t.as_str().into());
    }
    m.insert("content_type".into(), e.content_type.as_str().into());
    // Embedded as JSON only when that gives back the same bytes (key order,
    // spacing and number forms survive), so a round trip is exact.
    let json_data = (e.content_type == ContentType::Json)
        .then(|| serde_json::from_slice::<Value>(&e.data).ok())
        .flatten()
        .filter(|v| v.to_string().as_bytes() == &e.data[..]);
    match json_data {
        Some(v) => m.insert("data".into(), v),
        None => m.insert("data_base64".into(), base64::encode(&e.data).into()),
    };
    if !e.headers.is_empty() {
        let h: Vec<Value> = e
            .headers
            .iter()
            .map(|(name, value)| {
                let v = match std::str::from_utf8(value) {
                    Ok(s) => Value::from(s),
                    Err(_) => serde_json::json!({ "base64": base64::encode(value) }),
                };
                Value::Array(vec![Value::from(name), v])
            })
            .collect();
        m.insert("headers".into(), Value::Array(h));
    }
    if let Some(p) = r.partition {
        m.insert("partition".into(), p.into());
    }
    if let Some(o) = r.offset {
        m.insert("offset".into(), o.into());
    }
    Value::Object(m).to_string()
}

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_base64: Option<String>,
    #[serde(default, alias = "correlationid")]
    correlation_id: Option<String>,
    #[serde(default, alias = "causationid")]
    causation_id: Option<String>,
    #[serde(default)]
    time: Option<Value>,
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default)]
    tracestate: Option<String>,
    #[serde(default, alias = "datacontenttype")]
    content_type: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    data_base64: Option<String>,
    #[serde(default)]
    headers: Option<Value>,
    #[serde(default)]
    partition: Option<u32>,
    #[serde(default)]
    offset: Option<u64>,
}

/// Decodes one line. A line that is valid JSON but lacks choreo metadata is an
/// unattributed record; only text that is not a JSON object is an error.
pub(crate) fn decode(
    line: &[u8],
    names: &mut Interner,
    fallback_id: impl FnOnce() -> String,
) -> Result<Record, String> {
    let l: Line = serde_json::from_slice(line).map_err(|e| {
        format!(
            "not a JSON object with envelope fields: {e} (column {})",
            e.column()
        )
    })?;
    let id = match l.id {
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let time = match l.time {
        Some(Value::String(s)) => Timestamp::parse_rfc3339(&s)
            .ok_or_else(|| format!("'time' is not RFC 3339 text: {s:?}"))?,
        Some(Value::Number(n)) => Timestamp::from_micros(
            n.as_i64()
                .ok_or_else(|| format!("'time' is not a whole number of microseconds: {n}"))?,
        ),
        Some(Value::Null) | None => Timestamp::EPOCH,
        Some(other) => {
            return Err(format!(
                "'time' must be RFC 3339 text or microseconds, not {other}"
            ));
        }
    };
    let key = match (l.key, l.key_base64) {
        (Some(k), _) => Some(Bytes::from(k)),
        (None, Some(b)) => Some(Bytes::from(
            base64::decode_either(&b).ok_or("'key_base64' is not base64")?,
        )),
        (None, None) => None,
    };
    let ctype = content_type(l.content_type.as_deref().unwrap_or(""), names);
    let data = match (l.data, l.data_base64) {
        (_, Some(b)) => {
            Bytes::from(base64::decode_either(&b).ok_or("'data_base64' is not base64")?)
        }
        (Some(Value::Null) | None, None) => Bytes::new(),
        (Some(v), None) => Bytes::from(v.to_string()),
    };
    let mut headers = Headers::new();
    let pairs: Vec<(String, Value)> = match l.headers {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(o)) => o.into_iter().collect(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let v = pair.pop().unwrap_or_default();
                    match pair.pop() {
                        Some(Value::String(n)) => Ok((n, v)),
                        _ => Err("a header name must be text".to_owned()),
                    }
                }
                _ => Err("'headers' must hold [name, value] pairs".to_owned()),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "'headers' must be a list of [name, value] pairs, not {other}"
            ));
        }
    };
    for (name, v) in pairs {
        let value = match v {
            Value::String(s) => Bytes::from(s),
            Value::Object(o) => match o.get("base64").and_then(Value::as_str) {
                Some(b) => Bytes::from(
                    base64::decode_either(b)
                        .ok_or_else(|| format!("header '{name}' is not base64"))?,
                ),
                None => Bytes::from(Value::Object(o).to_string()),
            },
            other => Bytes::from(other.to_string()),
        };
        headers.insert(names.name(&name), value);
    }
    let event_type = names.name(l.event_type.as_deref().unwrap_or(""));
    let source = names.name(l.source.as_deref().unwrap_or(""));
    let topic = names.name(l.topic.as_deref().unwrap_or(""));
    Ok(assemble(Parts {
        id: EventId::parse(&id),
        event_type,
        source,
        topic,
        key,
        correlation: l.correlation_id.as_deref().and_then(EventId::parse),
        causation: l.causation_id.as_deref().and_then(EventId::parse),
        time,
        traceparent: l.traceparent,
        tracestate: l.tracestate,
        content_type: ctype,
        data,
        headers,
        partition: l.partition,
        offset: l.offset,
        fallback_id,
    }))
}
