//! The Avro object container format of captures: schema, encoder and a fast decoder.
//!
//! Writing and the fast read path encode and decode choreo's one record schema
//! directly (no `Value` tree, no per-record schema resolution): that is what
//! makes reading a million records a second possible. Files whose writer
//! schema differs (an older or newer choreo, another codec) are read through
//! apache-avro with schema resolution instead.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, OnceLock};

use apache_avro::Schema;
use apache_avro::types::Value;
use bytes::Bytes;
use choreo_core::{ContentType, Envelope, EventId, Headers, Name, Timestamp};

use crate::Record;
use crate::compact::{CompactEvent, Item, LocalNames};
use crate::util::Interner;

/// The magic bytes that open an Avro object container file.
pub(crate) const MAGIC: &[u8; 4] = b"Obj\x01";

/// The schema of one capture record (canonical JSON in [`SCHEMA_JSON`]).
pub const SCHEMA_JSON: &str = r#"{
  "type": "record",
  "name": "Record",
  "namespace": "choreo.capture",
  "doc": "One event or receipt envelope as a choreo capture saw it.",
  "fields": [
    {"name": "id", "type": "string"},
    {"name": "type", "type": "string"},
    {"name": "source", "type": "string"},
    {"name": "topic", "type": "string"},
    {"name": "key", "type": ["null", "bytes"], "default": null},
    {"name": "correlation_id", "type": ["null", "string"], "default": null},
    {"name": "causation_id", "type": ["null", "string"], "default": null},
    {"name": "time", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "traceparent", "type": ["null", "string"], "default": null},
    {"name": "tracestate", "type": ["null", "string"], "default": null},
    {"name": "content_type", "type": "string", "default": "application/json"},
    {"name": "data", "type": "bytes", "default": ""},
    {"name": "headers", "type": {"type": "array", "items": {
      "type": "record", "name": "Header",
      "fields": [{"name": "name", "type": "string"}, {"name": "value", "type": "bytes"}]
    }}, "default": []},
    {"name": "partition", "type": ["null", "int"], "default": null},
    {"name": "offset", "type": ["null", "long"], "default": null}
  ]
}"#;

/// The parsed capture schema.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::parse_str(SCHEMA_JSON).expect("the capture schema is valid"))
}

// ---- encoding ---------------------------------------------------------------

#[inline]
pub(crate) fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[inline]
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

#[inline]
fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(2);
            put_bytes(out, s.as_bytes());
        }
    }
}

fn put_id(out: &mut Vec<u8>, id: &EventId) {
    put_bytes(out, id.text_bytes(&mut [0; 36]));
}

/// Appends one record in the capture schema's binary encoding.
pub(crate) fn encode(out: &mut Vec<u8>, r: &Record) {
    let e = &r.envelope;
    put_id(out, &e.id);
    put_bytes(out, e.event_type.as_bytes());
    put_bytes(out, e.source.as_bytes());
    put_bytes(out, e.topic.as_bytes());
    match &e.key {
        None => out.push(0),
        Some(k) => {
            out.push(2);
            put_bytes(out, k);
        }
    }
    if r.attributed {
        out.push(2);
        put_id(out, &e.correlation_id);
    } else {
        out.push(0);
    }
    match &e.causation_id {
        None => out.push(0),
        Some(c) => {
            out.push(2);
            put_id(out, c);
        }
    }
    put_long(out, e.time.as_micros());
    put_opt_str(out, e.traceparent.as_deref());
    put_opt_str(out, e.tracestate.as_deref());
    put_bytes(out, e.content_type.as_str().as_bytes());
    put_bytes(out, &e.data);
    if !e.headers.is_empty() {
        put_long(out, e.headers.len() as i64);
        for (name, value) in e.headers.iter() {
            put_bytes(out, name.as_bytes());
            put_bytes(out, value);
        }
    }
    out.push(0);
    match r.partition {
        None => out.push(0),
        Some(p) => {
            out.push(2);
            put_long(out, i64::from(p));
        }
    }
    match r.offset {
        None => out.push(0),
        Some(o) => {
            out.push(2);
            put_long(out, o as i64);
        }
    }
}

/// Writes the container header; returns the sync marker to end blocks with.
pub(crate) fn write_header<W: Write>(w: &mut W, sync: [u8; 16]) -> io::Result<()> {
    let mut out = Vec::with_capacity(SCHEMA_JSON.len() + 64);
    out.extend_from_slice(MAGIC);
    put_long(&mut out, 2);
    put_bytes(&mut out, b"avro.schema");
    put_bytes(&mut out, SCHEMA_JSON.as_bytes());
    put_bytes(&mut out, b"avro.codec");
    put_bytes(&mut out, b"null");
    put_long(&mut out, 0);
    out.extend_from_slice(&sync);
    w.write_all(&out)
}

/// Writes one block of `count` encoded records.
pub(crate) fn write_block<W: Write>(
    w: &mut W,
    count: u64,
    data: &[u8],
    sync: &[u8; 16],
) -> io::Result<()> {
    let mut head = Vec::with_capacity(20);
    put_long(&mut head, count as i64);
    put_long(&mut head, data.len() as i64);
    w.write_all(&head)?;
    w.write_all(data)?;
    w.write_all(sync)
}

// ---- decoding ---------------------------------------------------------------

/// Why a record or block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The input ended inside it.
    Truncated,
    /// The bytes are not what the schema says.
    Corrupt(String),
}

impl Fault {
    pub(crate) fn describe(&self, what: &str) -> String {
        match self {
            Fault::Truncated => format!("the file ends inside {what} (truncated)"),
            Fault::Corrupt(why) => format!("{what} is corrupt: {why}"),
        }
    }
}

/// A cursor over a block's bytes.
pub(crate) struct Cursor<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a Bytes) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    #[inline(always)]
    fn long(&mut self) -> Result<i64, Fault> {
        // Most numbers in a record (lengths, union branches) take one byte.
        if let Some(&byte) = self.buf.get(self.pos)
            && byte < 0x80
        {
            self.pos += 1;
            return Ok(i64::from(byte >> 1) ^ -i64::from(byte & 1));
        }
        self.long_slow()
    }

    #[inline(never)]
    fn long_slow(&mut self) -> Result<i64, Fault> {
        let b = &self.buf[..];
        let mut z: u64 = 0;
        let mut shift = 0;
        loop {
            let Some(&byte) = b.get(self.pos) else {
                return Err(Fault::Truncated);
            };
            self.pos += 1;
            z |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(Fault::Corrupt("a number is longer than 10 bytes".into()));
            }
        }
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    #[inline(always)]
    fn len(&mut self) -> Result<usize, Fault> {
        let n = self.long()?;
        if n < 0 {
            return Err(Fault::Corrupt(format!("negative length {n}")));
        }
        let n = n as u64;
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            // A length past the end: truncated when the block itself was cut short,
            // which the caller knows; here it is reported as truncation and the
            // caller reclassifies it for complete blocks.
            return Err(Fault::Truncated);
        }
        Ok(n as usize)
    }

    #[inline(always)]
    fn raw(&mut self) -> Result<&'a [u8], Fault> {
        let n = self.len()?;
        let buf: &'a Bytes = self.buf;
        let s = &buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline(always)]
    fn bytes(&mut self) -> Result<Bytes, Fault> {
        let n = self.len()?;
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    #[inline]
    fn str(&mut self) -> Result<&'a str, Fault> {
        let raw = self.raw()?;
        std::str::from_utf8(raw).map_err(|_| Fault::Corrupt("a string is not UTF-8".into()))
    }

    /// A string field as a shared name, compared as bytes before any UTF-8 check.
    #[inline(always)]
    fn name(&mut self, names: &mut Interner) -> Result<Name, Fault> {
        let raw = self.raw()?;
        if let Some(n) = names.find_bytes(raw) {
            return Ok(n);
        }
        Ok(names.name(utf8(raw)?))
    }

    /// The record's optional partition and offset, in range.
    #[inline(always)]
    fn position(&mut self) -> Result<(Option<u32>, Option<u64>), Fault> {
        let partition = if self.branch("partition")? {
            let p = self.long()?;
            Some(
                u32::try_from(p)
                    .map_err(|_| Fault::Corrupt(format!("partition {p} out of range")))?,
            )
        } else {
            None
        };
        let offset = if self.branch("offset")? {
            let o = self.long()?;
            Some(u64::try_from(o).map_err(|_| Fault::Corrupt(format!("offset {o} out of range")))?)
        } else {
            None
        };
        Ok((partition, offset))
    }

    #[inline(always)]
    fn branch(&mut self, field: &str) -> Result<bool, Fault> {
        match self.long()? {
            0 => Ok(false),
            1 => Ok(true),
            n => Err(Fault::Corrupt(format!(
                "field '{field}' has union branch {n} (expected 0 or 1)"
            ))),
        }
    }
}

fn utf8(raw: &[u8]) -> Result<&str, Fault> {
    std::str::from_utf8(raw).map_err(|_| Fault::Corrupt("a string is not UTF-8".into()))
}

/// An id field: `None` when empty.
#[inline(always)]
fn id_field(raw: &[u8]) -> Result<Option<EventId>, Fault> {
    if let Some(id) = EventId::from_uuid_text(raw) {
        return Ok(Some(id));
    }
    let s = std::str::from_utf8(raw).map_err(|_| Fault::Corrupt("an id is not UTF-8".into()))?;
    Ok(EventId::parse(s))
}

/// Decodes one record at the cursor and appends it to `out` (built in place
/// rather than returned: a record is a few hundred bytes, and moving each
/// one twice was a tenth of the decoding time).
#[inline(always)]
pub(crate) fn decode_into(
    out: &mut Vec<Record>,
    c: &mut Cursor<'_>,
    names: &mut Interner,
    lean: bool,
    fallback_id: impl FnOnce() -> String,
) -> Result<(), Fault> {
    decode_parts(c, names, lean, fallback_id).map(|p| out.push(assemble(p)))
}

/// Decodes one record at the cursor straight into the tracer's compact form
/// (see [`crate::compact`]): what [`decode_into`] and the tracer's ingestion
/// would make of it, without building the record. A record with headers (a
/// dead-letter copy, a malformed event's mark) is decoded whole, as
/// [`decode_into`] does, with `fallback_id` naming it when its id is empty.
#[inline(always)]
pub(crate) fn decode_item(
    c: &mut Cursor<'_>,
    local: &mut LocalNames,
    names: &mut Interner,
    lean: bool,
    fallback_id: impl FnOnce() -> String,
) -> Result<Item, Fault> {
    let start = c.pos;
    let not_utf8 = || Fault::Corrupt("a string is not UTF-8".into());
    let id = id_field(c.raw()?)?;
    // Numbered (and so checked) at once, in the order the record path checks them.
    let ty_raw = c.raw()?;
    let ty = local.of(ty_raw).ok_or_else(not_utf8)?;
    let source = local.of(c.raw()?).ok_or_else(not_utf8)?;
    let topic = local.of(c.raw()?).ok_or_else(not_utf8)?;
    if c.branch("key")? {
        c.raw()?;
    }
    let correlation = if c.branch("correlation_id")? {
        id_field(c.raw()?)?
    } else {
        None
    };
    let cause = if c.branch("causation_id")? {
        id_field(c.raw()?)?
    } else {
        None
    };
    let time = c.long()?;
    for field in ["traceparent", "tracestate"] {
        if c.branch(field)? {
            let raw = c.raw()?;
            if !lean {
                utf8(raw)?;
            }
        }
    }
    match c.raw()? {
        b"application/json" | b"" | b"application/avro" => {}
        other => {
            utf8(other)?;
        }
    }
    let data = c.raw()?;
    if c.long()? != 0 {
        // Headers: rare (dead-letter copies), read the whole record.
        c.pos = start;
        let mut one = Vec::with_capacity(1);
        decode_into(&mut one, c, names, lean, fallback_id)?;
        let record = one.pop().ok_or(Fault::Truncated)?;
        return Ok(Item::Whole(Box::new(record)));
    }
    let (partition, offset) = c.position()?;
    let (Some(id), Some(correlation), false) = (id, correlation, ty_raw.is_empty()) else {
        return Ok(Item::Unattributed);
    };
    if crate::record::is_receipt_type_bytes(ty_raw) {
        return Ok(match crate::receipt::parse_receipt(data, names) {
            Some(view) => Item::receipt(correlation, time, view, local),
            None => Item::BadReceipt,
        });
    }
    Ok(Item::Event(CompactEvent {
        correlation,
        id,
        cause,
        ty,
        source,
        topic,
        time,
        partition,
        offset,
    }))
}

/// Decodes one record's fields at the cursor; `fallback_id` names a record whose id is empty.
#[inline(always)]
fn decode_parts<F: FnOnce() -> String>(
    c: &mut Cursor<'_>,
    names: &mut Interner,
    lean: bool,
    fallback_id: F,
) -> Result<Parts<F>, Fault> {
    let id = id_field(c.raw()?)?;
    let event_type = c.name(names)?;
    let source = c.name(names)?;
    let topic = c.name(names)?;
    let key = if c.branch("key")? {
        if lean {
            c.raw()?;
            None
        } else {
            Some(c.bytes()?)
        }
    } else {
        None
    };
    let correlation = if c.branch("correlation_id")? {
        id_field(c.raw()?)?
    } else {
        None
    };
    let causation = if c.branch("causation_id")? {
        id_field(c.raw()?)?
    } else {
        None
    };
    let time = Timestamp::from_micros(c.long()?);
    let traceparent = if c.branch("traceparent")? {
        let raw = c.raw()?;
        (!lean).then(|| utf8(raw).map(str::to_owned)).transpose()?
    } else {
        None
    };
    let tracestate = if c.branch("tracestate")? {
        let raw = c.raw()?;
        (!lean).then(|| utf8(raw).map(str::to_owned)).transpose()?
    } else {
        None
    };
    let content_type = match c.raw()? {
        b"application/json" | b"" => ContentType::Json,
        b"application/avro" => ContentType::Avro,
        other => content_type(
            std::str::from_utf8(other)
                .map_err(|_| Fault::Corrupt("a string is not UTF-8".into()))?,
            names,
        ),
    };
    // Lean: the tracer reads the payloads of receipts only.
    let data = if lean && !crate::record::is_receipt_type(&event_type) {
        c.raw()?;
        Bytes::new()
    } else {
        c.bytes()?
    };
    let mut headers = Headers::new();
    loop {
        let mut n = c.long()?;
        if n == 0 {
            break;
        }
        if n < 0 {
            // A negative count is followed by the block's size in bytes.
            n = n
                .checked_neg()
                .ok_or_else(|| Fault::Corrupt("header count".into()))?;
            c.long()?;
        }
        if n as u64 > (c.buf.len() - c.pos) as u64 {
            return Err(Fault::Truncated);
        }
        for _ in 0..n {
            let name = c.str()?;
            let value = c.bytes()?;
            headers.insert(names.name(name), value);
        }
    }
    let (partition, offset) = c.position()?;
    Ok(Parts {
        id,
        event_type,
        source,
        topic,
        key,
        correlation,
        causation,
        time,
        traceparent,
        tracestate,
        content_type,
        data,
        headers,
        partition,
        offset,
        fallback_id,
    })
}

pub(crate) fn content_type(s: &str, names: &mut Interner) -> ContentType {
    match s {
        "application/json" | "" => ContentType::Json,
        "application/avro" => ContentType::Avro,
        other => match ContentType::parse(other) {
            ContentType::Other(_) => ContentType::Other(names.name(other.trim())),
            known => known,
        },
    }
}

pub(crate) struct Parts<F> {
    pub(crate) id: Option<EventId>,
    pub(crate) event_type: Name,
    pub(crate) source: Name,
    pub(crate) topic: Name,
    pub(crate) key: Option<Bytes>,
    pub(crate) correlation: Option<EventId>,
    pub(crate) causation: Option<EventId>,
    pub(crate) time: Timestamp,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    pub(crate) content_type: ContentType,
    pub(crate) data: Bytes,
    pub(crate) headers: Headers,
    pub(crate) partition: Option<u32>,
    pub(crate) offset: Option<u64>,
    pub(crate) fallback_id: F,
}

/// Builds a record from decoded fields; a missing id or correlation id makes
/// it unattributed rather than an error.
#[inline(always)]
pub(crate) fn assemble<F: FnOnce() -> String>(p: Parts<F>) -> Record {
    let (id, id_ok) = match p.id {
        Some(id) => (id, true),
        None => (
            EventId::parse(&(p.fallback_id)()).unwrap_or_default(),
            false,
        ),
    };
    let correlation = p.correlation;
    let attributed = id_ok && correlation.is_some() && !p.event_type.is_empty();
    let envelope = Envelope {
        correlation_id: correlation.unwrap_or_else(|| id.clone()),
        id,
        event_type: p.event_type,
        source: p.source,
        topic: p.topic,
        key: p.key,
        causation_id: p.causation,
        time: p.time,
        traceparent: p.traceparent,
        tracestate: p.tracestate,
        content_type: p.content_type,
        data: p.data,
        headers: p.headers,
    };
    Record {
        envelope,
        partition: p.partition,
        offset: p.offset,
        attributed,
    }
}

// ---- the container ----------------------------------------------------------

/// The container header as read.
pub(crate) struct Header {
    pub(crate) schema: String,
    pub(crate) codec: String,
    pub(crate) sync: [u8; 16],
    /// Bytes the header took.
    pub(crate) len: u64,
}

/// Reads exactly `buf.len()` bytes unless the input ends first; returns how many were read.
pub(crate) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads one zig-zag long from a stream; `Ok(None)` at a clean end of input.
pub(crate) fn read_long<R: Read>(r: &mut R, consumed: &mut u64) -> Result<Option<i64>, ReadFault> {
    let mut z: u64 = 0;
    let mut shift = 0;
    let mut first = true;
    loop {
        let mut b = [0u8; 1];
        let n = read_full(r, &mut b).map_err(ReadFault::Io)?;
        if n == 0 {
            return if first {
                Ok(None)
            } else {
                Err(ReadFault::Fault(Fault::Truncated))
            };
        }
        first = false;
        *consumed += 1;
        z |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(ReadFault::Fault(Fault::Corrupt(
                "a number is longer than 10 bytes".into(),
            )));
        }
    }
    Ok(Some(((z >> 1) as i64) ^ -((z & 1) as i64)))
}

/// A fault while reading from a stream: the input's own error, or bad bytes.
#[derive(Debug)]
pub(crate) enum ReadFault {
    Io(io::Error),
    Fault(Fault),
}

impl From<Fault> for ReadFault {
    fn from(f: Fault) -> Self {
        ReadFault::Fault(f)
    }
}

/// The largest header or block the reader accepts: a corrupt length must not
/// make it allocate without limit.
pub(crate) const MAX_BLOCK: u64 = 256 * 1024 * 1024;

fn read_sized<R: Read>(r: &mut R, consumed: &mut u64, what: &str) -> Result<Vec<u8>, ReadFault> {
    let n = read_long(r, consumed)?.ok_or(Fault::Truncated)?;
    if n < 0 || n as u64 > MAX_BLOCK {
        return Err(Fault::Corrupt(format!("{what} has length {n}")).into());
    }
    let mut buf = vec![0u8; n as usize];
    let got = read_full(r, &mut buf).map_err(ReadFault::Io)?;
    *consumed += got as u64;
    if got < buf.len() {
        return Err(Fault::Truncated.into());
    }
    Ok(buf)
}

/// Reads the header after the magic bytes (which the caller consumed).
pub(crate) fn read_header<R: Read>(r: &mut R) -> Result<Header, (u64, ReadFault)> {
    let mut consumed = MAGIC.len() as u64;
    let mut schema = None;
    let mut codec = None;
    let mut body = || -> Result<[u8; 16], ReadFault> {
        loop {
            let Some(mut n) = read_long(r, &mut consumed)? else {
                return Err(Fault::Truncated.into());
            };
            if n == 0 {
                break;
            }
            if n < 0 {
                n = n
                    .checked_neg()
                    .ok_or(Fault::Corrupt("metadata count".into()))?;
                read_long(r, &mut consumed)?;
            }
            if n > 1024 {
                return Err(Fault::Corrupt(format!("{n} metadata entries")).into());
            }
            for _ in 0..n {
                let key = read_sized(r, &mut consumed, "a metadata key")?;
                let value = read_sized(r, &mut consumed, "a metadata value")?;
                match key.as_slice() {
                    b"avro.schema" => schema = Some(String::from_utf8_lossy(&value).into_owned()),
                    b"avro.codec" => codec = Some(String::from_utf8_lossy(&value).into_owned()),
                    _ => {}
                }
            }
        }
        let mut sync = [0u8; 16];
        let got = read_full(r, &mut sync).map_err(ReadFault::Io)?;
        consumed += got as u64;
        if got < 16 {
            return Err(Fault::Truncated.into());
        }
        Ok(sync)
    };
    match body() {
        Ok(sync) => Ok(Header {
            schema: schema.unwrap_or_default(),
            codec: codec.unwrap_or_else(|| "null".into()),
            sync,
            len: consumed,
        }),
        Err(e) => Err((consumed, e)),
    }
}

/// Whether records written with `writer_schema` and `codec` can take the
/// fast path: the capture schema itself (compared as JSON, so spacing and
/// key order do not matter), no compression.
pub(crate) fn fast_path(writer_schema: &str, codec: &str) -> bool {
    static OURS: OnceLock<serde_json::Value> = OnceLock::new();
    let ours = OURS.get_or_init(|| serde_json::from_str(SCHEMA_JSON).unwrap_or_default());
    codec == "null"
        && serde_json::from_str::<serde_json::Value>(writer_schema).is_ok_and(|v| &v == ours)
}

/// Checks the shape of a writer schema before apache-avro parses it: the
/// keys whose values Avro interprets must hold what the specification says.
/// apache-avro 0.22 panics on some schemas it parses (an attribute such as
/// `"symbols": null` on a field), and a capture file is untrusted input.
pub(crate) fn check_schema(text: &str) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the schema is not JSON: {e}"))?;
    check_schema_value(&v, 0)
}

fn check_schema_value(v: &serde_json::Value, depth: usize) -> Result<(), String> {
    use serde_json::Value;
    if depth > 64 {
        return Err("the schema nests more than 64 levels deep".into());
    }
    match v {
        Value::String(_) => Ok(()),
        Value::Array(branches) => branches
            .iter()
            .try_for_each(|b| check_schema_value(b, depth + 1)),
        Value::Object(m) => {
            for (key, val) in m {
                match key.as_str() {
                    "type" | "items" | "values" => check_schema_value(val, depth + 1)?,
                    "fields" => {
                        let fields = val
                            .as_array()
                            .ok_or("'fields' must be a list of field objects")?;
                        for f in fields {
                            if !f.is_object() {
                                return Err("'fields' must be a list of field objects".into());
                            }
                            check_schema_value(f, depth + 1)?;
                        }
                    }
                    "symbols" | "aliases"
                        if !val
                            .as_array()
                            .is_some_and(|a| a.iter().all(Value::is_string)) =>
                    {
                        return Err(format!("'{key}' must be a list of names"));
                    }
                    "name" | "namespace" | "logicalType" | "doc" if !val.is_string() => {
                        return Err(format!("'{key}' must be text"));
                    }
                    "size" | "precision" | "scale" if !val.is_u64() => {
                        return Err(format!("'{key}' must be a whole number"));
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        other => Err(format!(
            "a schema must be a name, an object or a union, not {other}"
        )),
    }
}

/// One block read from the stream: its records' bytes.
pub(crate) struct Block {
    /// Records the block says it holds.
    pub(crate) count: u64,
    /// The records' bytes (possibly fewer than announced, when truncated).
    pub(crate) data: Bytes,
    /// The offset of `data`'s first byte in the file.
    pub(crate) data_offset: u64,
    /// False when the input ended before the block's end.
    pub(crate) complete: bool,
    /// Whether the sync marker after it matched.
    pub(crate) sync_ok: bool,
    /// The offset of the sync marker.
    pub(crate) sync_offset: u64,
}

/// Block buffers given back once every record read from them is gone.
///
/// Records slice their strings and payloads out of their block's buffer, so a
/// buffer lives until the tracer (on another thread) has dropped the last
/// record of its block. A fresh buffer per block costs page faults (the kernel
/// clears every page) and a free across threads; reusing them costs neither.
#[derive(Clone, Default)]
pub(crate) struct BlockPool(Arc<Mutex<Pooled>>);

#[derive(Default)]
struct Pooled {
    free: Vec<Vec<u8>>,
    bytes: usize,
}

/// What the pool keeps at most, in buffer capacity: enough for the blocks in
/// flight between the reading thread and the tracer, small next to the file.
const POOL_BYTES: usize = 32 * 1024 * 1024;

impl BlockPool {
    /// An empty buffer with room for `size` bytes: a pooled one if there is one.
    fn take(&self, size: usize) -> Vec<u8> {
        let buf = {
            let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let buf = p.free.pop();
            if let Some(b) = &buf {
                p.bytes -= b.capacity();
            }
            buf
        };
        match buf {
            Some(mut b) => {
                // Exact: doubling would let pooled buffers creep towards twice
                // the largest block.
                b.reserve_exact(size);
                b
            }
            None => Vec::with_capacity(size),
        }
    }
}

impl Pool for BlockPool {
    fn give(&self, mut buf: Vec<u8>) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if p.bytes + buf.capacity() <= POOL_BYTES {
            buf.clear();
            p.bytes += buf.capacity();
            p.free.push(buf);
        }
    }
}

/// Where a [`Lent`] buffer goes back to.
pub(crate) trait Pool: Send + Sync + 'static {
    /// Takes back a buffer that was lent out.
    fn give(&self, buf: Vec<u8>);
}

/// A buffer lent out of a pool (a block's, a piece's), given back when the
/// last slice of it is dropped.
pub(crate) struct Lent<P: Pool> {
    pub(crate) buf: Vec<u8>,
    pub(crate) pool: P,
}

impl<P: Pool> AsRef<[u8]> for Lent<P> {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl<P: Pool> Drop for Lent<P> {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

/// Reads the next block starting at `offset` into a buffer from `pool`;
/// `Ok(None)` at the clean end of the file.
pub(crate) fn read_block<R: Read>(
    r: &mut R,
    offset: u64,
    sync: &[u8; 16],
    pool: &BlockPool,
) -> Result<Option<(Block, u64)>, ReadFault> {
    let mut consumed = 0u64;
    let Some(count) = read_long(r, &mut consumed)? else {
        return Ok(None);
    };
    if count < 0 {
        return Err(Fault::Corrupt(format!("a block announces {count} records")).into());
    }
    let size = read_long(r, &mut consumed)?.ok_or(Fault::Truncated)?;
    if size < 0 || size as u64 > MAX_BLOCK {
        return Err(Fault::Corrupt(format!("a block announces {size} bytes")).into());
    }
    if count as u64 > size as u64 {
        return Err(
            Fault::Corrupt(format!("a block announces {count} records in {size} bytes")).into(),
        );
    }
    let data_offset = offset + consumed;
    // Read straight into a buffer of the block's size: no zeroing, and with a
    // small BufReader most of it comes from the file without an extra copy.
    let mut v = pool.take(size as usize);
    let got = (&mut *r)
        .take(size as u64)
        .read_to_end(&mut v)
        .map_err(ReadFault::Io)?;
    let data = Bytes::from_owner(Lent {
        buf: v,
        pool: pool.clone(),
    });
    let complete = got == size as usize;
    let sync_offset = data_offset + got as u64;
    let mut marker = [0u8; 16];
    let mut sync_ok = false;
    let mut total = consumed + got as u64;
    if complete {
        let m = read_full(r, &mut marker).map_err(ReadFault::Io)?;
        total += m as u64;
        sync_ok = m == 16 && &marker == sync;
    }
    Ok(Some((
        Block {
            count: count as u64,
            data,
            data_offset,
            complete,
            sync_ok,
            sync_offset,
        },
        total,
    )))
}

// ---- the apache-avro path ---------------------------------------------------

/// Converts a record read by apache-avro (resolved to the capture schema) into a [`Record`].
pub(crate) fn from_value(
    value: Value,
    names: &mut Interner,
    fallback_id: impl FnOnce() -> String,
) -> Result<Record, String> {
    let Value::Record(fields) = value else {
        return Err("a record is not an Avro record".into());
    };
    let mut id = String::new();
    let mut event_type = String::new();
    let mut source = String::new();
    let mut topic = String::new();
    let mut key = None;
    let mut correlation = None;
    let mut causation = None;
    let mut time = 0i64;
    let mut traceparent = None;
    let mut tracestate = None;
    let mut ctype = String::new();
    let mut data = Bytes::new();
    let mut headers = Headers::new();
    let mut partition = None;
    let mut offset = None;
    for (name, v) in fields {
        let v = match v {
            Value::Union(_, inner) => *inner,
            other => other,
        };
        match (name.as_str(), v) {
            (_, Value::Null) => {}
            ("id", Value::String(s)) => id = s,
            ("type", Value::String(s)) => event_type = s,
            ("source", Value::String(s)) => source = s,
            ("topic", Value::String(s)) => topic = s,
            ("key", Value::Bytes(b)) => key = Some(Bytes::from(b)),
            ("correlation_id", Value::String(s)) => correlation = Some(s),
            ("causation_id", Value::String(s)) => causation = Some(s),
            ("time", Value::Long(t) | Value::TimestampMicros(t)) => time = t,
            ("time", Value::TimestampMillis(t)) => time = t.saturating_mul(1000),
            ("traceparent", Value::String(s)) => traceparent = Some(s),
            ("tracestate", Value::String(s)) => tracestate = Some(s),
            ("content_type", Value::String(s)) => ctype = s,
            ("data", Value::Bytes(b)) => data = Bytes::from(b),
            ("headers", Value::Array(items)) => {
                for item in items {
                    if let Value::Record(hf) = item {
                        let mut hn = String::new();
                        let mut hv = Vec::new();
                        for (n, v) in hf {
                            match (n.as_str(), v) {
                                ("name", Value::String(s)) => hn = s,
                                ("value", Value::Bytes(b)) => hv = b,
                                _ => {}
                            }
                        }
                        headers.insert(names.name(&hn), hv);
                    }
                }
            }
            ("partition", Value::Int(p)) => partition = u32::try_from(p).ok(),
            ("offset", Value::Long(o)) => offset = u64::try_from(o).ok(),
            (field, other) => {
                return Err(format!("field '{field}' has an unexpected value {other:?}"));
            }
        }
    }
    let event_type = names.name(&event_type);
    let source = names.name(&source);
    let topic = names.name(&topic);
    let content_type = content_type(&ctype, names);
    Ok(assemble(Parts {
        id: EventId::parse(&id),
        event_type,
        source,
        topic,
        key,
        correlation: correlation.as_deref().and_then(EventId::parse),
        causation: causation.as_deref().and_then(EventId::parse),
        time: Timestamp::from_micros(time),
        traceparent,
        tracestate,
        content_type,
        data,
        headers,
        partition,
        offset,
        fallback_id,
    }))
}

impl Cursor<'_> {
    /// Moves to `pos` (within the buffer).
    pub(crate) fn seek(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_buffer_returns_to_the_pool_once_its_last_slice_is_gone() {
        let pool = BlockPool::default();
        let mut buf = pool.take(100);
        buf.extend_from_slice(&[7; 100]);
        let addr = buf.as_ptr();
        let data = Bytes::from_owner(Lent {
            buf,
            pool: pool.clone(),
        });
        let slice = data.slice(10..20);
        drop(data);
        assert!(
            pool.0.lock().unwrap().free.is_empty(),
            "a slice still holds it"
        );
        drop(slice);
        let again = pool.take(50);
        assert_eq!(again.as_ptr(), addr, "the same buffer, reused");
        assert!(again.is_empty());
    }

    #[test]
    fn the_block_pool_keeps_a_bounded_number_of_bytes() {
        let pool = BlockPool::default();
        for _ in 0..3 {
            pool.give(Vec::with_capacity(POOL_BYTES / 2));
        }
        let p = pool.0.lock().unwrap();
        assert_eq!(p.free.len(), 2, "the third would pass the bound");
        assert!(p.bytes <= POOL_BYTES);
    }
}
