//! Capture files: writing and reading recorded envelopes and receipts.
//!
//! Two formats, told apart by content when reading:
//!
//! - **Avro object container file** (the canonical one; `.avro`): one record
//!   per envelope in the schema [`SCHEMA_JSON`] — the envelope's fields plus
//!   `partition` and `offset` where the source knew them. A record whose
//!   `correlation_id` is null lacks choreo metadata and is counted as
//!   unattributed. Codec `null`; blocks of about 64 KiB, so a capture that was
//!   cut short (a killed `choreo capture`) loses at most its last block.
//! - **JSON lines** (`.jsonl`): one envelope per line; the keys are listed in
//!   the [`jsonl`] module docs.
//!
//! ```
//! use choreo_core::Envelope;
//! use choreo_trace::Record;
//! use choreo_trace::capture::{Format, Reader, Writer};
//!
//! let mut writer = Writer::new(Vec::new(), Format::Avro).unwrap();
//! let first = Envelope::new("OrderPlaced", "orders", "{}").with_source("checkout");
//! writer.write(&Record::new(first.clone()).at(0, 41)).unwrap();
//! let bytes = writer.finish().unwrap();
//!
//! let mut reader = Reader::from_read("run.avro", std::io::Cursor::new(bytes)).unwrap();
//! let record = reader.next().unwrap().unwrap();
//! assert_eq!(record.envelope, first);
//! assert_eq!((record.partition, record.offset), (Some(0), Some(41)));
//! assert!(reader.next().is_none());
//! ```

mod avro;
pub mod jsonl;
mod lines;
pub(crate) mod parallel;

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use choreo_core::{Envelope, EventId};

pub use avro::{SCHEMA_JSON, schema};

use crate::record::{Progress, Source};
use crate::util::Interner;
use crate::{Error, Record, Result};

/// A capture file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Avro object container file (the canonical format).
    Avro,
    /// JSON lines: one envelope per line.
    JsonLines,
}

impl Format {
    /// The format a file name asks for: `.jsonl`, `.ndjson` and `.json` mean
    /// JSON lines, anything else Avro.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson" | "json") => Format::JsonLines,
            _ => Format::Avro,
        }
    }

    /// `avro` or `jsonl`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Avro => "avro",
            Format::JsonLines => "jsonl",
        }
    }
}

/// Bytes of encoded records after which an Avro block is written out.
const BLOCK_BYTES: usize = 64 * 1024;

/// Writes records to a capture, in either format.
///
/// Dropping a writer flushes what it buffered (errors are then lost: call
/// [`Writer::finish`] to see them).
pub struct Writer<W: Write> {
    out: Option<W>,
    label: PathBuf,
    format: Format,
    sync: [u8; 16],
    block: Vec<u8>,
    in_block: u64,
    records: u64,
}

impl<W: Write> std::fmt::Debug for Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("label", &self.label)
            .field("format", &self.format)
            .field("records", &self.records)
            .finish()
    }
}

impl Writer<BufWriter<File>> {
    /// Creates (or truncates) the file at `path` and writes a capture in `format`.
    pub fn create(path: impl AsRef<Path>, format: Format) -> Result<Self> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            action: "create",
            source,
        })?;
        let mut w = Writer::new(BufWriter::with_capacity(256 * 1024, file), format)?;
        w.label = path.to_owned();
        Ok(w)
    }
}

impl<W: Write> Writer<W> {
    /// Starts a capture in `format` on `out` (the Avro header is written at once).
    pub fn new(mut out: W, format: Format) -> Result<Self> {
        let label = PathBuf::from("<capture>");
        let sync = *EventId::new().as_uuid().unwrap_or_default().as_bytes();
        if format == Format::Avro {
            avro::write_header(&mut out, sync).map_err(|source| Error::Io {
                path: label.clone(),
                action: "write",
                source,
            })?;
        }
        Ok(Writer {
            out: Some(out),
            label,
            format,
            sync,
            block: Vec::with_capacity(BLOCK_BYTES + 4096),
            in_block: 0,
            records: 0,
        })
    }

    /// The format being written.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Appends a record.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        match self.format {
            Format::Avro => {
                avro::encode(&mut self.block, record);
                self.in_block += 1;
                if self.block.len() >= BLOCK_BYTES {
                    self.end_block()?;
                }
            }
            Format::JsonLines => {
                let mut line = jsonl::encode(record);
                line.push('\n');
                let label = self.label.clone();
                if let Some(out) = self.out.as_mut() {
                    out.write_all(line.as_bytes()).map_err(|source| Error::Io {
                        path: label,
                        action: "write",
                        source,
                    })?;
                }
            }
        }
        self.records += 1;
        Ok(())
    }

    /// Appends an envelope with its position, when known.
    pub fn write_envelope(
        &mut self,
        envelope: &Envelope,
        position: Option<(u32, u64)>,
    ) -> Result<()> {
        let mut r = Record::new(envelope.clone());
        if let Some((p, o)) = position {
            r = r.at(p, o);
        }
        self.write(&r)
    }

    fn end_block(&mut self) -> Result<()> {
        if self.in_block == 0 {
            return Ok(());
        }
        if let Some(out) = self.out.as_mut() {
            avro::write_block(out, self.in_block, &self.block, &self.sync).map_err(|source| {
                Error::Io {
                    path: self.label.clone(),
                    action: "write",
                    source,
                }
            })?;
        }
        self.block.clear();
        self.in_block = 0;
        Ok(())
    }

    /// Ends the current block and flushes the underlying writer: everything
    /// written so far is then readable (call it periodically when capturing live).
    pub fn flush(&mut self) -> Result<()> {
        self.end_block()?;
        if let Some(out) = self.out.as_mut() {
            out.flush().map_err(|source| Error::Io {
                path: self.label.clone(),
                action: "write",
                source,
            })?;
        }
        Ok(())
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> Result<W> {
        self.flush()?;
        Ok(self.out.take().expect("the writer is only taken by finish"))
    }
}

impl<W: Write> Drop for Writer<W> {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = self.flush();
        }
    }
}

/// A reader that remembers the bytes it has read while `recording`, so the
/// Avro header can be replayed to apache-avro when the fast path does not apply.
struct Recorder<R> {
    inner: R,
    recorded: Option<Vec<u8>>,
    consumed: u64,
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(rec) = self.recorded.as_mut() {
            rec.extend_from_slice(&buf[..n]);
        }
        self.consumed += n as u64;
        Ok(n)
    }
}

/// Counts bytes handed to apache-avro, to say roughly where it found damage.
struct Counting<R> {
    inner: R,
    consumed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

type Stream = BufReader<Box<dyn Read + Send>>;

struct FastAvro {
    input: Stream,
    sync: [u8; 16],
    /// File offset of the next block.
    offset: u64,
    block: Option<avro::Block>,
    pool: avro::BlockPool,
    pos: usize,
    decoded: u64,
}

struct ResolvedAvro {
    reader: apache_avro::Reader<'static, Counting<Box<dyn Read + Send>>>,
    consumed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

struct Jsonl {
    input: Stream,
    offset: u64,
    line: Vec<u8>,
    number: u64,
}

enum Inner {
    Fast(Box<FastAvro>),
    Resolved(Box<ResolvedAvro>),
    Jsonl(Jsonl),
    Done,
}

/// Reads a capture file record by record, in either format (detected by content).
///
/// Streams: memory stays at one Avro block or one line whatever the file's
/// size. On a damaged file it yields every record before the damage, then one
/// [`Error::Damaged`] with the byte offset and the count read, then ends.
/// It never panics on any input (fuzzed: `fuzz/fuzz_targets/capture_reader.rs`).
pub struct Reader {
    label: PathBuf,
    format: Format,
    lean: bool,
    /// Reused by `next` on the fast path.
    one: Vec<Record>,
    inner: Inner,
    names: Interner,
    records: u64,
    total: Option<u64>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("label", &self.label)
            .field("format", &self.format)
            .field("records", &self.records)
            .finish()
    }
}

impl Reader {
    /// Opens the capture file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Reader> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            action: "open",
            source,
        })?;
        let total = file.metadata().ok().map(|m| m.len());
        let mut r = Reader::from_read(path, file)?;
        r.total = total;
        Ok(r)
    }

    /// Reads a capture from any byte stream, labelled `label` in messages.
    pub fn from_read(
        label: impl Into<PathBuf>,
        input: impl Read + Send + 'static,
    ) -> Result<Reader> {
        let label = label.into();
        let mut rec = Recorder {
            inner: input,
            recorded: Some(Vec::new()),
            consumed: 0,
        };
        let mut start = [0u8; 4];
        let n = avro::read_full(&mut rec, &mut start).map_err(|source| Error::Io {
            path: label.clone(),
            action: "read",
            source,
        })?;
        let names = Interner::default();
        if n == 4 && &start == avro::MAGIC {
            return Reader::avro(label, rec, names);
        }
        let first = start[..n].iter().find(|b| !b.is_ascii_whitespace());
        if n > 0 && first.is_some_and(|b| *b != b'{') {
            return Err(Error::UnknownFormat {
                path: label,
                start: String::from_utf8_lossy(&start[..n]).into_owned(),
            });
        }
        // JSON lines (or empty): replay the peeked bytes.
        let peeked = start[..n].to_vec();
        let boxed: Box<dyn Read + Send> = Box::new(io::Cursor::new(peeked).chain(rec.inner));
        Ok(Reader {
            label,
            format: Format::JsonLines,
            lean: false,
            one: Vec::new(),
            inner: Inner::Jsonl(Jsonl {
                input: BufReader::with_capacity(256 * 1024, boxed),
                offset: 0,
                line: Vec::new(),
                number: 0,
            }),
            names,
            records: 0,
            total: None,
        })
    }

    fn avro<R: Read + Send + 'static>(
        label: PathBuf,
        mut rec: Recorder<R>,
        names: Interner,
    ) -> Result<Reader> {
        let header = match avro::read_header(&mut rec) {
            Ok(h) => h,
            Err((offset, avro::ReadFault::Io(source))) => {
                let _ = offset;
                return Err(Error::Io {
                    path: label,
                    action: "read",
                    source,
                });
            }
            Err((offset, avro::ReadFault::Fault(f))) => {
                return Err(Error::Damaged {
                    path: label,
                    offset: offset.min(rec.consumed),
                    records: 0,
                    reason: f.describe("the Avro header"),
                });
            }
        };
        if avro::fast_path(&header.schema, &header.codec) {
            rec.recorded = None;
            let boxed: Box<dyn Read + Send> = Box::new(rec.inner);
            return Ok(Reader {
                label,
                format: Format::Avro,
                lean: false,
                one: Vec::new(),
                inner: Inner::Fast(Box::new(FastAvro {
                    // Small: blocks are read past it, straight into their buffers.
                    input: BufReader::with_capacity(16 * 1024, boxed),
                    sync: header.sync,
                    offset: header.len,
                    block: None,
                    pool: avro::BlockPool::default(),
                    pos: 0,
                    decoded: 0,
                })),
                names,
                records: 0,
                total: None,
            });
        }
        // Another writer schema or codec: let apache-avro resolve it to ours,
        // once the schema's shape is known to be safe to hand it.
        if let Err(reason) = avro::check_schema(&header.schema) {
            return Err(Error::Schema {
                path: label,
                reason,
            });
        }
        let recorded = rec.recorded.take().unwrap_or_default();
        let replay: Box<dyn Read + Send> = Box::new(io::Cursor::new(recorded).chain(rec.inner));
        let consumed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counting = Counting {
            inner: replay,
            consumed: consumed.clone(),
        };
        let reader = apache_avro::Reader::builder(counting)
            .reader_schema(avro::schema())
            .build()
            .map_err(|e| Error::Schema {
                path: label.clone(),
                reason: e.to_string(),
            })?;
        Ok(Reader {
            label,
            format: Format::Avro,
            lean: false,
            one: Vec::new(),
            inner: Inner::Resolved(Box::new(ResolvedAvro { reader, consumed })),
            names,
            records: 0,
            total: None,
        })
    }

    /// Leaves out what the tracer never reads, to read faster: the W3C
    /// trace context (`traceparent`, `tracestate`), partition keys, and the
    /// payloads of everything but receipts (their records carry an empty
    /// `data`). Ids, types, sources, topics, times, positions and headers
    /// are read as always. Avro only; JSON lines are read whole.
    pub fn lean(mut self) -> Self {
        self.lean = true;
        self
    }

    /// The detected format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Records read so far.
    pub fn records_read(&self) -> u64 {
        self.records
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        match &self.inner {
            Inner::Fast(f) => f.offset,
            Inner::Resolved(r) => r.consumed.load(std::sync::atomic::Ordering::Relaxed),
            Inner::Jsonl(j) => j.offset,
            Inner::Done => self.total.unwrap_or(0),
        }
    }

    fn damaged(&mut self, offset: u64, reason: String) -> Option<Result<Record>> {
        self.inner = Inner::Done;
        Some(Err(Error::Damaged {
            path: self.label.clone(),
            offset,
            records: self.records,
            reason,
        }))
    }

    fn io_error(&mut self, source: io::Error) -> Option<Result<Record>> {
        self.inner = Inner::Done;
        Some(Err(Error::Io {
            path: self.label.clone(),
            action: "read",
            source,
        }))
    }

    fn damage(&mut self, offset: u64, reason: String) -> Error {
        self.inner = Inner::Done;
        Error::Damaged {
            path: self.label.clone(),
            offset,
            records: self.records,
            reason,
        }
    }

    /// Decodes up to `max` records straight into `out`; `Ok(0)` at the end.
    /// On damage the records before it are in `out` and counted.
    fn fill_fast(&mut self, out: &mut Vec<Record>, max: usize) -> Result<usize> {
        let start = out.len();
        let Inner::Fast(f) = &mut self.inner else {
            return Ok(0);
        };
        loop {
            if let Some(block) = &f.block {
                let mut c = avro::Cursor::new(&block.data);
                c.seek(f.pos);
                while f.decoded < block.count {
                    if out.len() - start >= max {
                        f.pos = c.pos();
                        self.records += (out.len() - start) as u64;
                        return Ok(out.len() - start);
                    }
                    let record_offset = block.data_offset + c.pos() as u64;
                    match avro::decode_into(out, &mut c, &mut self.names, self.lean, || {
                        format!("capture-offset-{record_offset}")
                    }) {
                        Ok(()) => f.decoded += 1,
                        Err(fault) => {
                            let fault = if block.complete && fault == avro::Fault::Truncated {
                                avro::Fault::Corrupt("it runs past the end of its block".into())
                            } else {
                                fault
                            };
                            let reason = fault.describe(&format!(
                                "record {} of the block at byte {}",
                                f.decoded + 1,
                                block.data_offset
                            ));
                            self.records += (out.len() - start) as u64;
                            return Err(self.damage(record_offset, reason));
                        }
                    }
                }
                f.pos = c.pos();
                if out.len() - start >= max {
                    // Full: what follows the block is checked on the next call,
                    // after these records have been handed out.
                    self.records += (out.len() - start) as u64;
                    return Ok(out.len() - start);
                }
                // Block done: check what follows it.
                let leftover = block.data.len() - f.pos;
                let data_end = block.data_offset + f.pos as u64;
                let damage = if leftover > 0 && block.complete {
                    Some((
                        data_end,
                        format!(
                            "the block holds {leftover} bytes after its {} records (corrupt block size or count)",
                            f.decoded
                        ),
                    ))
                } else if !block.complete {
                    Some((
                        data_end,
                        "the file ends inside a block (truncated)".to_owned(),
                    ))
                } else if !block.sync_ok {
                    Some((
                        block.sync_offset,
                        "the block's sync marker is missing or wrong (corrupt or truncated)"
                            .to_owned(),
                    ))
                } else {
                    None
                };
                if let Some((at, reason)) = damage {
                    self.records += (out.len() - start) as u64;
                    return Err(self.damage(at, reason));
                }
                f.block = None;
            }
            match avro::read_block(&mut f.input, f.offset, &f.sync, &f.pool) {
                Ok(None) => {
                    self.inner = Inner::Done;
                    self.records += (out.len() - start) as u64;
                    return Ok(out.len() - start);
                }
                Ok(Some((block, len))) => {
                    f.offset += len;
                    f.pos = 0;
                    f.decoded = 0;
                    f.block = Some(block);
                }
                Err(avro::ReadFault::Io(source)) => {
                    self.records += (out.len() - start) as u64;
                    self.inner = Inner::Done;
                    return Err(Error::Io {
                        path: self.label.clone(),
                        action: "read",
                        source,
                    });
                }
                Err(avro::ReadFault::Fault(fault)) => {
                    let at = f.offset;
                    self.records += (out.len() - start) as u64;
                    return Err(self.damage(at, fault.describe("the block header")));
                }
            }
        }
    }

    fn next_fast(&mut self) -> Option<Result<Record>> {
        let mut one = std::mem::take(&mut self.one);
        let r = match self.fill_fast(&mut one, 1) {
            Ok(_) => one.pop().map(Ok),
            Err(e) => Some(Err(e)),
        };
        self.one = one;
        r
    }

    fn next_resolved(&mut self) -> Option<Result<Record>> {
        let Inner::Resolved(r) = &mut self.inner else {
            return None;
        };
        let consumed = r.consumed.load(std::sync::atomic::Ordering::Relaxed);
        match r.reader.next() {
            None => {
                self.inner = Inner::Done;
                None
            }
            Some(Ok(value)) => {
                let n = self.records;
                match avro::from_value(value, &mut self.names, || format!("capture-record-{n}")) {
                    Ok(rec) => {
                        self.records += 1;
                        Some(Ok(rec))
                    }
                    Err(reason) => self.damaged(consumed, reason),
                }
            }
            Some(Err(e)) => self.damaged(
                consumed,
                format!("apache-avro could not read the next record (offset is the start of the block being read): {e}"),
            ),
        }
    }

    fn next_jsonl(&mut self) -> Option<Result<Record>> {
        loop {
            let Inner::Jsonl(j) = &mut self.inner else {
                return None;
            };
            j.line.clear();
            let start = j.offset;
            let n = match j.input.read_until(b'\n', &mut j.line) {
                Ok(n) => n,
                Err(e) => return self.io_error(e),
            };
            if n == 0 {
                self.inner = Inner::Done;
                return None;
            }
            j.offset += n as u64;
            j.number += 1;
            let complete = j.line.last() == Some(&b'\n');
            let text = trim(&j.line);
            if text.is_empty() {
                continue;
            }
            let number = j.number;
            match jsonl::decode(text, &mut self.names, || line_id(number)) {
                Ok(r) => {
                    self.records += 1;
                    return Some(Ok(r));
                }
                Err(reason) => return self.damaged(start, line_damage(number, complete, &reason)),
            }
        }
    }
}

/// The id of a record without one on line `number` of a JSON-lines capture.
pub(crate) fn line_id(number: u64) -> String {
    format!("capture-line-{number}")
}

/// Why line `number` of a JSON-lines capture stopped the reading: `reason`,
/// and whether the line was cut short (it has no newline).
pub(crate) fn line_damage(number: u64, complete: bool, reason: &str) -> String {
    if complete {
        format!("line {number}: {reason}")
    } else {
        format!("line {number} is cut short (truncated): {reason}")
    }
}

fn trim(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &line[start..end.max(start)]
}

impl Iterator for Reader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        match &self.inner {
            Inner::Fast(_) => self.next_fast(),
            Inner::Resolved(_) => self.next_resolved(),
            Inner::Jsonl(_) => self.next_jsonl(),
            Inner::Done => None,
        }
    }
}

impl Source for Reader {
    fn name(&self) -> String {
        self.label.display().to_string()
    }

    fn next_record(&mut self) -> Option<Result<Record>> {
        self.next()
    }

    fn fill(&mut self, out: &mut Vec<Record>, max: usize) -> Result<usize> {
        if matches!(self.inner, Inner::Fast(_)) {
            return self.fill_fast(out, max);
        }
        crate::record::fill_one_by_one(self, out, max)
    }

    fn progress(&self) -> Progress {
        Progress {
            records: self.records,
            bytes: self.bytes_read(),
            total_bytes: self.total,
        }
    }
}
