//! The tracer: ingests records, keeps flows in flight, finishes them and folds them into aggregates.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Mutex, mpsc};

use choreo_core::{Envelope, EventId, Name, Outcome, Timestamp, dlq_headers};
use choreo_topology::Topology;
use petgraph::graph::{Graph, NodeIndex};
use serde::Deserialize;

use crate::Record;
use crate::config::{Keep, Receipts, TracerConfig};
use crate::export::{LogChunk, LogFormat, LogWriter, Row};
use crate::finding::{Finding, Rule};
use crate::flow::{FlowStatus, FlowTrace, Handling, Owed, TracedEvent};
use crate::metrics::TraceMetrics;
use crate::model::{EMPTY, Kind, Model, Sym, Symbols};
use crate::report::{Aggregates, Counters, EvictReason, FlowBrief};
use crate::util::{FastMap, Interner};

const NO_PARTITION: u32 = u32::MAX;
const NO_OFFSET: u64 = u64::MAX;

/// An event as the tracer keeps it: symbols instead of names, no payload.
#[derive(Debug, Clone)]
pub(crate) struct Ev {
    pub(crate) id: EventId,
    pub(crate) cause: Option<EventId>,
    pub(crate) ty: Sym,
    pub(crate) source: Sym,
    pub(crate) topic: Sym,
    pub(crate) time: i64,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
}

/// A receipt as the tracer keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Rc {
    pub(crate) event: EventId,
    pub(crate) service: Sym,
    pub(crate) ty: Sym,
    pub(crate) outcome: Outcome,
    pub(crate) attempts: u32,
    pub(crate) started: i64,
    pub(crate) duration_us: u64,
    pub(crate) emitted: u32,
    pub(crate) reason: Option<Box<str>>,
}

/// A dead-letter copy of an event.
#[derive(Debug, Clone)]
pub(crate) struct Dl {
    pub(crate) event: EventId,
    pub(crate) service: Sym,
    pub(crate) reason: Box<str>,
    pub(crate) attempts: u32,
}

#[derive(Debug)]
pub(crate) struct FlowState {
    pub(crate) events: Vec<Ev>,
    pub(crate) receipts: Vec<Rc>,
    pub(crate) dead: Vec<Dl>,
    /// Event id → index in `events`, built once a flow grows past a few events.
    index: Option<FastMap<EventId, u32>>,
    pub(crate) last_activity: i64,
    pub(crate) duplicates: u32,
    /// An end event of its flow was seen, or an event was dead-lettered: it can
    /// be folded once it settles.
    pub(crate) resting: bool,
    /// Live mode: don't analyse again before this time.
    next_check: i64,
    pub(crate) name: Option<usize>,
}

impl FlowState {
    /// Frees what it holds (once folded).
    fn release(&mut self) {
        self.events = Vec::new();
        self.receipts = Vec::new();
        self.dead = Vec::new();
        self.index = None;
    }

    fn records(&self) -> usize {
        self.events.len() + self.receipts.len() + self.dead.len()
    }

    fn find(&self, id: &EventId) -> Option<usize> {
        match &self.index {
            Some(ix) => ix.get(id).map(|&i| i as usize),
            None => self.events.iter().position(|e| &e.id == id),
        }
    }
}

/// Flows in flight: a slab with an id index, so a lookup holds no borrow and
/// one hash probe finds a flow. Flows are boxed: growing the slab, sorting
/// it at the end of a batch and moving flows in and out then moves 32 bytes
/// a flow, not 170 (a million-event capture holds a quarter of a million
/// flows at once, and copying the slab as it doubled was a tenth of the
/// tracer's page faults).
#[derive(Default)]
pub(crate) struct FlowTable {
    index: FastMap<EventId, u32>,
    slab: Vec<(EventId, Box<FlowState>)>,
}

impl FlowTable {
    #[inline]
    fn find(&self, id: &EventId) -> Option<u32> {
        self.index.get(id).copied()
    }

    #[inline]
    fn at_mut(&mut self, i: u32) -> &mut FlowState {
        &mut self.slab[i as usize].1
    }

    fn contains_key(&self, id: &EventId) -> bool {
        self.index.contains_key(id)
    }

    fn insert(&mut self, id: EventId, state: FlowState) -> u32 {
        let i = self.slab.len() as u32;
        self.index.insert(id.clone(), i);
        self.slab.push((id, Box::new(state)));
        i
    }

    fn remove(&mut self, id: &EventId) -> Option<FlowState> {
        let i = self.index.remove(id)? as usize;
        let (_, state) = self.slab.swap_remove(i);
        if let Some((moved, _)) = self.slab.get(i) {
            self.index.insert(moved.clone(), i as u32);
        }
        Some(*state)
    }

    fn get(&self, id: &EventId) -> Option<&FlowState> {
        self.find(id).map(|i| &*self.slab[i as usize].1)
    }

    fn len(&self) -> usize {
        self.slab.len()
    }

    fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    fn values(&self) -> impl Iterator<Item = &FlowState> {
        self.slab.iter().map(|(_, f)| &**f)
    }

    fn iter(&self) -> impl Iterator<Item = (&EventId, &FlowState)> {
        self.slab.iter().map(|(id, f)| (id, &**f))
    }

    fn first_key(&self) -> Option<EventId> {
        self.slab.first().map(|(id, _)| id.clone())
    }

    fn take_all(&mut self) -> Vec<(EventId, Box<FlowState>)> {
        self.index.clear();
        std::mem::take(&mut self.slab)
    }
}

/// The borrowed shape of a receipt's JSON payload.
#[derive(Deserialize)]
struct ReceiptView<'a> {
    #[serde(borrow)]
    service: Cow<'a, str>,
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    outcome: Outcome,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    started: i64,
    #[serde(default)]
    duration_us: u64,
    #[serde(default)]
    emitted: Count,
}

/// A receipt's payload, parsed.
pub(crate) struct ParsedReceipt {
    event: EventId,
    service: Name,
    event_type: Name,
    outcome: Outcome,
    attempts: u32,
    reason: Option<Box<str>>,
    started: i64,
    duration_us: u64,
    emitted: u32,
}

/// Parses a receipt envelope's payload; `None` when it is not a receipt.
pub(crate) fn parse_receipt(data: &[u8], names: &mut Interner) -> Option<ParsedReceipt> {
    written_receipt(data, names)
        .or_else(|| fast_receipt(data, names))
        .or_else(|| serde_receipt(data, names))
}

/// Reads a receipt exactly as [`choreo_core::Receipt::write_json`] writes it:
/// the keys in its order, no spaces, no escapes, UUID ids. Matching that
/// shape literally is a third of the cost of scanning JSON; anything else
/// (`None`) goes to the general scanner.
fn written_receipt(data: &[u8], names: &mut Interner) -> Option<ParsedReceipt> {
    let mut p = Written { b: data, i: 0 };
    p.lit(b"{\"service\":")?;
    let service = p.name(names)?;
    p.lit(b",\"event_id\":")?;
    let event = p.id()?;
    p.lit(b",\"event_type\":")?;
    let event_type = p.name(names)?;
    p.lit(b",\"correlation_id\":")?;
    p.id()?;
    p.lit(b",\"topic\":")?;
    p.plain()?;
    p.lit(b",\"partition\":")?;
    p.int()?;
    p.lit(b",\"offset\":")?;
    p.int()?;
    p.lit(b",\"outcome\":")?;
    let outcome = match p.plain()? {
        b"acked" => Outcome::Acked,
        b"dead_lettered" => Outcome::DeadLettered,
        b"duplicate" => Outcome::Duplicate,
        b"redelivered" => Outcome::Redelivered,
        b"ignored" => Outcome::Ignored,
        _ => return None,
    };
    p.lit(b",\"attempts\":")?;
    let attempts = u32::try_from(p.int()?).ok()?;
    let reason = if p.lit(b",\"reason\":").is_some() {
        Some(Box::from(std::str::from_utf8(p.plain()?).ok()?))
    } else {
        None
    };
    p.lit(b",\"started\":")?;
    let started = p.int()?;
    p.lit(b",\"duration_us\":")?;
    let duration_us = u64::try_from(p.int()?).ok()?;
    let mut emitted = 0u32;
    if p.lit(b",\"emitted\":[").is_some() {
        loop {
            p.id()?;
            emitted += 1;
            if p.lit(b",").is_none() {
                break;
            }
        }
        p.lit(b"]")?;
    }
    p.lit(b"}")?;
    Some(ParsedReceipt {
        event,
        service,
        event_type,
        outcome,
        attempts,
        reason,
        started,
        duration_us,
        emitted,
    })
}

/// The cursor of [`written_receipt`].
struct Written<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Written<'a> {
    #[inline(always)]
    fn lit(&mut self, s: &[u8]) -> Option<()> {
        let end = self.i + s.len();
        (self.b.get(self.i..end)? == s).then(|| self.i = end)
    }

    /// A string without escapes.
    #[inline(always)]
    fn plain(&mut self) -> Option<&'a [u8]> {
        let rest = self.b.get(self.i..)?;
        let (&b'"', rest) = rest.split_first()? else {
            return None;
        };
        let n = rest.iter().position(|&c| c == b'"' || c == b'\\')?;
        if rest[n] != b'"' {
            return None;
        }
        self.i += n + 2;
        Some(&rest[..n])
    }

    #[inline(always)]
    fn name(&mut self, names: &mut Interner) -> Option<Name> {
        let raw = self.plain()?;
        match names.find_bytes(raw) {
            Some(n) => Some(n),
            None => Some(names.name(std::str::from_utf8(raw).ok()?)),
        }
    }

    /// A quoted UUID in canonical text.
    #[inline(always)]
    fn id(&mut self) -> Option<EventId> {
        let quoted = self.b.get(self.i..self.i + 38)?;
        if quoted[0] != b'"' || quoted[37] != b'"' {
            return None;
        }
        let id = crate::capture::fast_uuid(&quoted[1..37])?;
        self.i += 38;
        Some(id)
    }

    #[inline(always)]
    fn int(&mut self) -> Option<i64> {
        json_int(self.b, &mut self.i)
    }
}

/// A JSON integer at `b[*i..]`, advancing `i` past it; `None` for anything
/// else (a fraction, an exponent, no digits, an overflow).
#[inline(always)]
fn json_int(b: &[u8], i: &mut usize) -> Option<i64> {
    let neg = b.get(*i) == Some(&b'-');
    if neg {
        *i += 1;
    }
    let start = *i;
    let mut v: i64 = 0;
    while let Some(&c) = b.get(*i) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d))?;
        *i += 1;
    }
    if *i == start || matches!(b.get(*i), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some(if neg { -v } else { v })
}

/// A scanner for the flat JSON object the runtime writes for a receipt. It
/// handles what serde_json produces for [`choreo_core::Receipt`] and gives up
/// (`None`, so serde_json takes over) on anything else: escapes, nesting.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    #[inline]
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    #[inline]
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        let end = start + memchr::memchr2(b'"', b'\\', &self.b[start..])?;
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        Some(&self.b[start..end])
    }

    #[inline]
    fn int(&mut self) -> Option<i64> {
        self.ws();
        json_int(self.b, &mut self.i)
    }

    fn null(&mut self) -> bool {
        self.ws();
        if self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            true
        } else {
            false
        }
    }

    /// Counts the strings of an array of strings.
    fn count_strings(&mut self) -> Option<u32> {
        self.eat(b'[')?;
        let mut n = 0u32;
        if self.eat(b']').is_some() {
            return Some(0);
        }
        loop {
            self.string()?;
            n += 1;
            if self.eat(b',').is_none() {
                self.eat(b']')?;
                return Some(n);
            }
        }
    }
}

fn fast_receipt(data: &[u8], names: &mut Interner) -> Option<ParsedReceipt> {
    let mut p = Scan { b: data, i: 0 };
    p.eat(b'{')?;
    let (mut service, mut event, mut ty, mut outcome) = (None, None, None, None);
    let (mut attempts, mut started, mut duration, mut emitted) = (0u32, 0i64, 0u64, 0u32);
    let mut reason = None;
    if p.eat(b'}').is_none() {
        loop {
            let key = p.string()?;
            p.eat(b':')?;
            match key {
                b"service" => service = Some(std::str::from_utf8(p.string()?).ok()?),
                b"event_id" => {
                    let raw = p.string()?;
                    event = crate::capture::fast_uuid(raw)
                        .or_else(|| EventId::parse(std::str::from_utf8(raw).ok()?));
                }
                b"event_type" => ty = Some(std::str::from_utf8(p.string()?).ok()?),
                b"outcome" => {
                    outcome = Some(match p.string()? {
                        b"acked" => Outcome::Acked,
                        b"dead_lettered" => Outcome::DeadLettered,
                        b"duplicate" => Outcome::Duplicate,
                        b"redelivered" => Outcome::Redelivered,
                        b"ignored" => Outcome::Ignored,
                        _ => return None,
                    })
                }
                b"attempts" => attempts = u32::try_from(p.int()?).ok()?,
                b"started" => started = p.int()?,
                b"duration_us" => duration = u64::try_from(p.int()?).ok()?,
                b"emitted" => emitted = p.count_strings()?,
                b"reason" => {
                    if !p.null() {
                        reason = Some(Box::from(std::str::from_utf8(p.string()?).ok()?));
                    }
                }
                b"correlation_id" | b"topic" => {
                    p.string()?;
                }
                b"partition" | b"offset" => {
                    p.int()?;
                }
                _ => return None,
            }
            if p.eat(b',').is_none() {
                p.eat(b'}')?;
                break;
            }
        }
    }
    Some(ParsedReceipt {
        event: event?,
        service: names.name(service?),
        event_type: names.name(ty?),
        outcome: outcome?,
        attempts,
        reason,
        started,
        duration_us: duration,
        emitted,
    })
}

fn serde_receipt(data: &[u8], names: &mut Interner) -> Option<ParsedReceipt> {
    let view = serde_json::from_slice::<ReceiptView<'_>>(data).ok()?;
    let event = crate::capture::fast_uuid(view.event_id.as_bytes())
        .or_else(|| EventId::parse(&view.event_id))?;
    Some(ParsedReceipt {
        event,
        service: names.name(&view.service),
        event_type: names.name(&view.event_type),
        outcome: view.outcome,
        attempts: view.attempts,
        reason: view.reason.map(String::into_boxed_str),
        started: view.started,
        duration_us: view.duration_us,
        emitted: view.emitted.0,
    })
}

/// Counts a JSON array's elements without keeping them.
#[derive(Default)]
struct Count(u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Count, A::Error> {
                let mut n = 0u32;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n = n.saturating_add(1);
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(V)
    }
}

/// The tracer. Feed it records with [`Tracer::ingest`]; in live mode call
/// [`Tracer::tick`] now and then; at the end of a batch call
/// [`Tracer::finish`]; read the results with [`Tracer::report`].
///
/// ```
/// use choreo_core::Envelope;
/// use choreo_topology::Topology;
/// use choreo_trace::{Record, Tracer, TracerConfig};
///
/// let topology = Topology::parse(
///     "name: t\nevents:\n  A: {topic: a}\n  B: {topic: b}\nservices:\n  s:\n    emits: [A]\n  r:\n    on:\n      A: {emit: [B]}\nflows:\n  f: {starts_with: A, ends_with: [B]}\n",
///     "t.yaml",
/// ).unwrap();
/// let mut tracer = Tracer::new(TracerConfig::batch(), Some(&topology));
/// let a = Envelope::new("A", "a", "{}").with_source("s");
/// let b = Envelope::new("B", "b", "{}").with_source("r").caused_by(&a);
/// tracer.ingest(&Record::new(b)); // out of order is fine
/// tracer.ingest(&Record::new(a));
/// tracer.finish(None);
/// let report = tracer.report();
/// assert_eq!(report.flows.completed, 1);
/// assert!(report.findings.is_empty());
/// ```
pub struct Tracer {
    pub(crate) config: TracerConfig,
    pub(crate) syms: Symbols,
    pub(crate) model: Option<Model>,
    flows: FlowTable,
    created: VecDeque<EventId>,
    records_in_flight: usize,
    evicted: FastMap<EventId, ()>,
    evicted_order: VecDeque<EventId>,
    pub(crate) agg: Aggregates,
    pub(crate) counters: Counters,
    pub(crate) max_time: i64,
    pub(crate) now: i64,
    receipts_seen: bool,
    pub(crate) metrics: Option<TraceMetrics>,
    kept: Vec<FlowTrace>,
    scratch: Scratch,
    log: Option<LogWriter>,
    receipt_names: Interner,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("flows_in_flight", &self.flows.len())
            .field("records_in_flight", &self.records_in_flight)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Scratch {
    graph: Graph<u32, ()>,
    order: Vec<u32>,
    node_of: Vec<NodeIndex>,
    parent: Vec<u32>,
}

/// What analysing a flow found.
pub(crate) struct Analysis {
    pub(crate) status: FlowStatus,
    pub(crate) name: Option<usize>,
    pub(crate) start: i64,
    pub(crate) end: Option<i64>,
    pub(crate) findings: Vec<Raw>,
    pub(crate) owed: Vec<RawOwed>,
    /// The earliest future deadline, for live mode.
    pub(crate) next_deadline: Option<i64>,
    pub(crate) orphans: u32,
}

/// A finding before names are resolved.
pub(crate) struct Raw {
    pub(crate) rule: Rule,
    pub(crate) service: Sym,
    pub(crate) event_type: Sym,
    pub(crate) event: Option<u32>,
    pub(crate) time: i64,
    pub(crate) message: String,
}

pub(crate) struct RawOwed {
    pub(crate) service: Sym,
    pub(crate) event: u32,
    pub(crate) owes: Vec<Sym>,
    pub(crate) one_of: bool,
    pub(crate) deadline: Option<i64>,
}

impl Tracer {
    /// A tracer with `config`, checking against `topology` when given (without
    /// one it reconstructs flows and aggregates but checks only structure:
    /// orphans, clock skew, loops, dead letters).
    pub fn new(config: TracerConfig, topology: Option<&Topology>) -> Tracer {
        let mut syms = Symbols::default();
        let model = topology.map(|t| Model::new(t, &mut syms));
        Tracer {
            config,
            syms,
            model,
            flows: FlowTable::default(),
            created: VecDeque::new(),
            records_in_flight: 0,
            evicted: FastMap::default(),
            evicted_order: VecDeque::new(),
            agg: Aggregates::default(),
            counters: Counters::default(),
            max_time: i64::MIN,
            now: i64::MIN,
            receipts_seen: false,
            metrics: None,
            kept: Vec::new(),
            scratch: Scratch::default(),
            log: None,
            receipt_names: Interner::default(),
        }
    }

    /// Writes every flow's events to `log` as the flow finishes (see [`crate::export`]).
    pub fn export_log(&mut self, log: LogWriter) {
        self.log = Some(log);
    }

    /// Takes the event log back (after [`Tracer::finish`]) and finishes it:
    /// the cases and events written, or the first write error.
    pub fn finish_log(&mut self) -> Option<std::io::Result<(u64, u64)>> {
        self.log.take().map(LogWriter::finish)
    }

    /// Flows in flight per flow name (`unknown` when not known yet).
    pub fn in_flight_by_flow(&self) -> Vec<(String, usize)> {
        let mut counts: FastMap<Option<usize>, usize> = FastMap::default();
        for f in self.flows.values() {
            *counts.entry(f.name).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = counts
            .into_iter()
            .map(|(n, c)| {
                let name = n
                    .and_then(|n| self.model.as_ref().map(|m| m.flows[n].name.to_string()))
                    .unwrap_or_else(|| "unknown".to_owned());
                (name, c)
            })
            .collect();
        v.sort();
        v
    }

    /// Exports Prometheus metrics on `registry` from now on (see the crate
    /// docs for the table).
    pub fn register_metrics(&mut self, registry: &prometheus::Registry) -> crate::Result<()> {
        let mut m = TraceMetrics::new(registry)?;
        m.set_caps(&self.config);
        if let Some(model) = &self.model {
            m.init_flows(model.flows.iter().map(|f| f.name.to_string()).collect());
        }
        self.metrics = Some(m);
        Ok(())
    }

    /// The settings.
    pub fn config(&self) -> &TracerConfig {
        &self.config
    }

    /// Flows in flight.
    pub fn flows_in_flight(&self) -> usize {
        self.flows.len()
    }

    /// Records (events, receipts, dead-letter copies) held in flight.
    pub fn records_in_flight(&self) -> usize {
        self.records_in_flight
    }

    /// The latest event time seen (the default "now" of a capture).
    pub fn latest(&self) -> Option<Timestamp> {
        (self.max_time != i64::MIN).then(|| Timestamp::from_micros(self.max_time))
    }

    /// Ingests a record.
    pub fn ingest(&mut self, record: &Record) {
        self.ingest_parts(
            &record.envelope,
            record.partition,
            record.offset,
            record.attributed,
            None,
        );
    }

    /// Ingests an envelope read at `position` (partition, offset) when known.
    pub fn ingest_envelope(&mut self, envelope: &Envelope, position: Option<(u32, u64)>) {
        self.ingest_parts(
            envelope,
            position.map(|p| p.0),
            position.map(|p| p.1),
            !envelope.event_type.is_empty(),
            None,
        );
    }

    /// Ingests a record whose receipt payload (when it is a receipt) was
    /// already parsed, on the reading thread.
    pub(crate) fn ingest_prepared(&mut self, record: &Record, pre: Option<ParsedReceipt>) {
        self.ingest_parts(
            &record.envelope,
            record.partition,
            record.offset,
            record.attributed,
            pre,
        );
    }

    fn ingest_parts(
        &mut self,
        env: &Envelope,
        partition: Option<u32>,
        offset: Option<u64>,
        attributed: bool,
        pre: Option<ParsedReceipt>,
    ) {
        self.counters.records += 1;
        if !attributed {
            self.counters.unattributed += 1;
            return;
        }
        let time = env.time.as_micros();
        if crate::record::is_receipt_type(&env.event_type) {
            let parsed = match pre {
                Some(p) => Some(p),
                None => parse_receipt(&env.data, &mut self.receipt_names),
            };
            let Some(view) = parsed else {
                self.counters.unattributed += 1;
                self.counters.bad_receipts += 1;
                return;
            };
            self.receipts_seen = true;
            if view.outcome == Outcome::Ignored {
                // The service has no handler for the event: not a handling.
                self.bump_time(time);
                return;
            }
            self.counters.receipts += 1;
            let outcome = view.outcome;
            let done = view.started.saturating_add(view.duration_us as i64);
            let rc = Rc {
                event: view.event,
                service: self.syms.intern(&view.service),
                ty: self.syms.intern(&view.event_type),
                outcome,
                attempts: view.attempts,
                started: view.started,
                duration_us: view.duration_us,
                emitted: view.emitted,
                reason: view.reason,
            };
            self.bump_time(time.max(done));
            let handled = view.event_type.clone();
            if let Some(flow) = self.flow_for(&env.correlation_id, time, handled.as_str()) {
                flow.receipts.push(rc);
                flow.last_activity = flow.last_activity.max(time);
                // Something changed: judge it again at the next tick.
                flow.next_check = i64::MIN;
                if outcome == Outcome::DeadLettered {
                    flow.resting = true;
                }
                self.records_in_flight += 1;
                self.after_growth(&env.correlation_id);
            }
            return;
        }
        self.bump_time(time);
        if let Some(reason) = env.headers.get_str(dlq_headers::REASON) {
            self.counters.dead_letters += 1;
            let dl = Dl {
                event: env.id.clone(),
                service: env
                    .headers
                    .get_str(dlq_headers::SERVICE)
                    .map_or(EMPTY, |s| self.syms.intern_str(s)),
                reason: reason.into(),
                attempts: env
                    .headers
                    .get_str(dlq_headers::ATTEMPTS)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0),
            };
            let ty = env.event_type.clone();
            if let Some(flow) = self.flow_for(&env.correlation_id, time, ty.as_str()) {
                flow.dead.push(dl);
                flow.resting = true;
                flow.last_activity = flow.last_activity.max(time);
                // Something changed: judge it again at the next tick.
                flow.next_check = i64::MIN;
                self.records_in_flight += 1;
                self.after_growth(&env.correlation_id);
            }
            return;
        }
        self.counters.events += 1;
        let ty = self.syms.intern(&env.event_type);
        let source = self.syms.intern(&env.source);
        let topic = self.syms.intern(&env.topic);
        let ends = self.ends_a_flow(ty);
        let Some(flow) = self.flow_for(&env.correlation_id, time, env.event_type.as_str()) else {
            return;
        };
        flow.last_activity = flow.last_activity.max(time);
        // Something changed: judge it again at the next tick.
        flow.next_check = i64::MIN;
        if let Some(i) = flow.find(&env.id) {
            // At-least-once: the same event again. Keep the first, fill in its position.
            flow.duplicates += 1;
            let e = &mut flow.events[i];
            if e.partition == NO_PARTITION {
                e.partition = partition.unwrap_or(NO_PARTITION);
                e.offset = offset.unwrap_or(NO_OFFSET);
            }
            self.counters.duplicates += 1;
            return;
        }
        flow.events.push(Ev {
            id: env.id.clone(),
            cause: env.causation_id.clone(),
            ty,
            source,
            topic,
            time,
            partition: partition.unwrap_or(NO_PARTITION),
            offset: offset.unwrap_or(NO_OFFSET),
        });
        if ends {
            flow.resting = true;
        }
        if flow.index.is_none() && flow.events.len() > 24 {
            flow.index = Some(
                flow.events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.id.clone(), i as u32))
                    .collect(),
            );
        } else if let Some(ix) = flow.index.as_mut() {
            ix.insert(env.id.clone(), (flow.events.len() - 1) as u32);
        }
        self.records_in_flight += 1;
        self.after_growth(&env.correlation_id);
    }

    #[inline]
    fn bump_time(&mut self, t: i64) {
        if t > self.max_time {
            self.max_time = t;
        }
    }

    fn ends_a_flow(&self, ty: Sym) -> bool {
        self.model
            .as_ref()
            .is_some_and(|m| m.flows.iter().any(|f| f.ends.contains(&ty)))
    }

    /// The flow a record belongs to, created if new; `None` for a late record
    /// of an evicted flow.
    fn flow_for(&mut self, corr: &EventId, time: i64, event_type: &str) -> Option<&mut FlowState> {
        if let Some(i) = self.flows.find(corr) {
            return Some(self.flows.at_mut(i));
        }
        if !self.evicted.is_empty() && self.evicted.contains_key(corr) {
            self.counters.late += 1;
            return None;
        }
        if self.flows.len() >= self.config.max_flows {
            self.evict_oldest(EvictReason::FlowCap);
        }
        let name = self.model.as_ref().and_then(|m| {
            let ty = self.syms.get(event_type)?;
            m.flow_of(ty)
        });
        self.agg.started(name);
        if let (Some(m), Some(metrics)) = (&self.model, &self.metrics) {
            metrics.flow_started(name.map(|n| m.flows[n].name.as_str()));
        } else if let Some(metrics) = &self.metrics {
            metrics.flow_started(None);
        }
        if self.config.max_flows != usize::MAX {
            self.created.push_back(corr.clone());
        }
        let i = self.flows.insert(
            corr.clone(),
            FlowState {
                events: Vec::new(),
                receipts: Vec::new(),
                dead: Vec::new(),
                index: None,
                last_activity: time,
                duplicates: 0,
                resting: false,
                next_check: i64::MIN,
                name,
            },
        );
        Some(self.flows.at_mut(i))
    }

    fn after_growth(&mut self, corr: &EventId) {
        if self.config.max_records_per_flow != usize::MAX
            && self
                .flows
                .get(corr)
                .is_some_and(|f| f.records() > self.config.max_records_per_flow)
        {
            self.evict(corr, EvictReason::FlowRecordCap);
        }
        while self.records_in_flight > self.config.max_records && !self.flows.is_empty() {
            if !self.evict_oldest(EvictReason::RecordCap) {
                break;
            }
        }
    }

    fn evict_oldest(&mut self, reason: EvictReason) -> bool {
        while let Some(id) = self.created.pop_front() {
            if self.flows.contains_key(&id) {
                self.evict(&id, reason);
                return true;
            }
        }
        // Without creation order (batch config), evict any.
        let Some(id) = self.flows.first_key() else {
            return false;
        };
        self.evict(&id, reason);
        true
    }

    fn evict(&mut self, corr: &EventId, reason: EvictReason) {
        let now = self.effective_now(None);
        if let Some(state) = self.flows.remove(corr) {
            self.records_in_flight -= state.records();
            self.counters.evicted(reason);
            if let Some(m) = &self.metrics {
                m.evicted(reason);
            }
            self.remember_evicted(corr.clone());
            self.finalize(corr.clone(), state, now, Some(reason));
        }
    }

    fn remember_evicted(&mut self, corr: EventId) {
        if self.config.remember_evicted == 0 {
            return;
        }
        if self.evicted_order.len() >= self.config.remember_evicted
            && let Some(old) = self.evicted_order.pop_front()
        {
            self.evicted.remove(&old);
        }
        self.evicted.insert(corr.clone(), ());
        self.evicted_order.push_back(corr);
    }

    fn effective_now(&self, now: Option<Timestamp>) -> i64 {
        match now {
            Some(t) => t.as_micros(),
            None if self.now != i64::MIN => self.now.max(self.max_time),
            None => self.max_time,
        }
    }

    /// Live mode: advances the clock to `now`. Flows that reached their end
    /// and have been quiet for [`TracerConfig::settle`] are folded into the
    /// aggregates and dropped; stuck flows are reported and evicted; flows idle
    /// for [`TracerConfig::idle`] are evicted. Updates the gauges.
    pub fn tick(&mut self, now: Timestamp) {
        let now_us = now.as_micros();
        self.now = self.now.max(now_us);
        let settle = i64::try_from(self.config.settle.as_micros()).unwrap_or(i64::MAX);
        let idle = i64::try_from(self.config.idle.as_micros()).unwrap_or(i64::MAX);
        let has_model = self.model.is_some();
        let mut due: Vec<(EventId, Option<EvictReason>)> = Vec::new();
        for (id, f) in self.flows.iter() {
            let quiet = now_us.saturating_sub(f.last_activity);
            if quiet >= idle {
                due.push((id.clone(), Some(EvictReason::Idle)));
            } else if (f.resting || !has_model) && quiet >= settle {
                due.push((id.clone(), None));
            } else if has_model && now_us >= f.next_check {
                due.push((id.clone(), Some(EvictReason::Stuck)));
            }
        }
        for (id, reason) in due {
            let Some(state) = self.flows.remove(&id) else {
                continue;
            };
            match reason {
                Some(EvictReason::Stuck) => {
                    // Only stuck flows go; the others wait for their next deadline.
                    let a = self.analyse(&id, &state, now_us);
                    if a.status == FlowStatus::Stuck {
                        self.records_in_flight -= state.records();
                        self.counters.evicted(EvictReason::Stuck);
                        if let Some(m) = &self.metrics {
                            m.evicted(EvictReason::Stuck);
                        }
                        self.remember_evicted(id.clone());
                        self.fold(id, &state, a, None);
                    } else {
                        let mut state = state;
                        state.next_check = a.next_deadline.unwrap_or(i64::MAX);
                        self.flows.insert(id, state);
                    }
                }
                Some(r) => {
                    self.records_in_flight -= state.records();
                    self.counters.evicted(r);
                    if let Some(m) = &self.metrics {
                        m.evicted(r);
                    }
                    self.remember_evicted(id.clone());
                    self.finalize(id, state, now_us, Some(r));
                }
                None => {
                    self.records_in_flight -= state.records();
                    self.remember_evicted(id.clone());
                    self.finalize(id, state, now_us, None);
                }
            }
        }
        self.update_gauges(now_us);
    }

    fn update_gauges(&self, now_us: i64) {
        if let Some(m) = &self.metrics {
            m.gauges(self, now_us);
        }
    }

    /// Ends a batch: every flow still in flight is finished as of `now` (by
    /// default the latest timestamp seen in the input): completed, failed,
    /// stuck or still in progress.
    pub fn finish(&mut self, now: Option<Timestamp>) {
        let now_us = self.effective_now(now);
        self.now = now_us;
        let mut ids = self.flows.take_all();
        self.created.clear();
        self.records_in_flight = 0;
        // A stable order, so reports and examples do not depend on hashing.
        ids.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let receipts_expected = self.receipts_expected();
        let ctx = Ctx {
            model: self.model.as_ref(),
            syms: &self.syms,
            config: &self.config,
            receipts_expected,
        };
        let log_format = self.log.as_ref().map(LogWriter::format);
        let metrics = self.metrics.as_ref();
        let mut orphans = 0;
        let mut log = self.log.take();
        let (agg, kept, config) = (&mut self.agg, &mut self.kept, &self.config);
        if !(config.parallel && ids.len() >= PARALLEL_FROM) {
            // A chunk at a time, so the event log's text is held a chunk at a time.
            for flows in ids.chunks_mut(CHUNK) {
                let (o, k, chunk) = fold_all(&ctx, metrics, agg, log_format, flows, now_us);
                orphans += o;
                kept.extend(k);
                if let (Some(w), Some(chunk)) = (log.as_mut(), chunk) {
                    w.append(&chunk);
                }
            }
        } else {
            // Flows are independent: this thread and a helper take chunks of
            // them in turn, analyse and fold each chunk into aggregates of its
            // own, and this thread merges the chunks in their order — the
            // result is the same as one thread's. Taking chunks rather than
            // halves keeps both threads busy to the end; a third thread writes
            // the event log.
            let chunks = ids.len().div_ceil(CHUNK);
            let work = Mutex::new((0usize, std::mem::take(&mut ids).into_iter()));
            let take = || {
                let mut w = work.lock().unwrap_or_else(|e| e.into_inner());
                let i = w.0;
                let flows: Vec<_> = w.1.by_ref().take(CHUNK).collect();
                w.0 += 1;
                (!flows.is_empty()).then_some((i, flows))
            };
            let fold = |mut flows: Vec<(EventId, Box<FlowState>)>| {
                let mut part = Aggregates::default();
                let (o, k, chunk) =
                    fold_all(&ctx, metrics, &mut part, log_format, &mut flows, now_us);
                // Freed here, on the thread that folded them.
                drop(flows);
                (part, o, k, chunk)
            };
            std::thread::scope(|scope| {
                let (log_tx, log_rx) = mpsc::sync_channel::<LogChunk>(4);
                let writer = log.as_mut().map(|w| {
                    scope.spawn(move || {
                        for chunk in log_rx {
                            w.append(&chunk);
                        }
                    })
                });
                // Bounded: the helper waits rather than run far ahead of the merge.
                let (done_tx, done_rx) = mpsc::sync_channel(4);
                let (take, fold) = (&take, &fold);
                let helper = scope.spawn(move || {
                    while let Some((i, flows)) = take() {
                        if done_tx.send((i, fold(flows))).is_err() {
                            return;
                        }
                    }
                });
                let mut pending = std::collections::BTreeMap::new();
                let mut next = 0;
                while next < chunks {
                    // Past a few chunks folded ahead of the one the helper is
                    // still on, wait for it rather than hold more.
                    let ahead = pending.len() >= MAX_AHEAD;
                    match if ahead { None } else { take() } {
                        Some((i, flows)) => {
                            pending.insert(i, fold(flows));
                        }
                        // Nothing left to take, or far enough ahead: wait for
                        // the helper's chunk.
                        None => match done_rx.recv() {
                            Ok((i, part)) => {
                                pending.insert(i, part);
                            }
                            // The helper is gone (it panicked: rethrown below).
                            Err(_) => break,
                        },
                    }
                    pending.extend(done_rx.try_iter());
                    while let Some((part, o, k, chunk)) = pending.remove(&next) {
                        agg.merge(part, config);
                        orphans += o;
                        kept.extend(k);
                        if let Some(chunk) = chunk {
                            // Only rendered when there is a log, hence a writer.
                            let _ = log_tx.send(chunk);
                        }
                        next += 1;
                    }
                }
                drop(log_tx);
                helper
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                if let Some(w) = writer {
                    w.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
                }
            });
        }
        self.log = log;
        self.counters.orphans += orphans;
        drop(ids);
        self.update_gauges(now_us);
    }

    /// Analyses and folds a finished (or evicted) flow.
    fn finalize(&mut self, id: EventId, state: FlowState, now: i64, evicted: Option<EvictReason>) {
        let a = self.analyse(&id, &state, now);
        self.fold(id, &state, a, evicted);
    }

    fn fold(&mut self, id: EventId, state: &FlowState, a: Analysis, evicted: Option<EvictReason>) {
        let ctx = Ctx {
            model: self.model.as_ref(),
            syms: &self.syms,
            config: &self.config,
            receipts_expected: false,
        };
        let mut folder = Folder::new(
            &ctx,
            self.metrics.as_ref(),
            &mut self.agg,
            self.log.as_ref().map(LogWriter::format),
        );
        // `a` was just analysed: the scratch holds this flow's time order.
        folder.flow(&id, state, &a, evicted, &self.scratch.order);
        let Folder {
            orphans, kept, log, ..
        } = folder;
        self.counters.orphans += orphans;
        self.kept.extend(kept);
        if let (Some(w), Some(chunk)) = (self.log.as_mut(), log) {
            w.append(&chunk);
        }
    }

    /// Flows kept whole (see [`TracerConfig::keep`]), in the order they finished.
    pub fn kept(&self) -> &[FlowTrace] {
        &self.kept
    }

    /// The flow with this correlation id as it stands now: kept, or still in flight.
    pub fn flow(&mut self, correlation_id: &EventId) -> Option<FlowTrace> {
        if let Some(t) = self
            .kept
            .iter()
            .find(|t| &t.correlation_id == correlation_id)
        {
            return Some(t.clone());
        }
        let now = self.effective_now(None);
        let state = self.flows.remove(correlation_id)?;
        let a = self.analyse(correlation_id, &state, now);
        let trace = build_trace(&self.ctx(), correlation_id, &state, &a, &self.scratch.order);
        self.flows.insert(correlation_id.clone(), state);
        Some(trace)
    }

    /// Everything known so far: counts, flows by status, findings, the service graph.
    pub fn report(&self) -> crate::Report {
        crate::Report::build(self)
    }

    pub(crate) fn name(&self, s: Sym) -> &Name {
        self.syms.name(s)
    }

    fn receipts_expected(&self) -> bool {
        match self.config.receipts {
            Receipts::Auto => self.receipts_seen,
            Receipts::Expected => true,
            Receipts::Absent => false,
        }
    }

    /// Rebuilds the causal graph of a flow and checks it.
    pub(crate) fn analyse(&mut self, corr: &EventId, f: &FlowState, now: i64) -> Analysis {
        let mut scratch = std::mem::take(&mut self.scratch);
        let a = analyse(&self.ctx(), &mut scratch, corr, f, now);
        self.scratch = scratch;
        a
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            model: self.model.as_ref(),
            syms: &self.syms,
            config: &self.config,
            receipts_expected: self.receipts_expected(),
        }
    }
}

/// Folds finished flows into aggregates: on the tracer's thread, or on a
/// helper thread over its own aggregates, merged afterwards.
pub(crate) struct Folder<'a> {
    ctx: &'a Ctx<'a>,
    metrics: Option<&'a TraceMetrics>,
    agg: &'a mut Aggregates,
    pub(crate) orphans: u64,
    pub(crate) kept: Vec<FlowTrace>,
    pub(crate) log: Option<LogChunk>,
}

impl<'a> Folder<'a> {
    pub(crate) fn new(
        ctx: &'a Ctx<'a>,
        metrics: Option<&'a TraceMetrics>,
        agg: &'a mut Aggregates,
        log: Option<LogFormat>,
    ) -> Self {
        Folder {
            ctx,
            metrics,
            agg,
            orphans: 0,
            kept: Vec::new(),
            log: log.map(LogChunk::new),
        }
    }

    /// Folds one flow; `order` is its events' time order, from its analysis.
    pub(crate) fn flow(
        &mut self,
        id: &EventId,
        state: &FlowState,
        a: &Analysis,
        evicted: Option<EvictReason>,
        order: &[u32],
    ) {
        let config = self.ctx.config;
        let keep = match &config.keep {
            Keep::None => false,
            Keep::One(k) => k == id,
            Keep::All => true,
        };
        self.orphans += u64::from(a.orphans);
        if let Some(chunk) = self.log.as_mut() {
            debug_assert_eq!(order.len(), state.events.len(), "the flow's own order");
            log_case(self.ctx, chunk, id, state, a, order);
        }
        self.agg.fold_flow(
            state,
            a,
            evicted,
            self.ctx.syms,
            self.ctx.model,
            self.metrics,
        );
        let brief = self.agg.wants_brief(a.status, config);
        if keep || brief {
            let trace = build_trace(self.ctx, id, state, a, order);
            if brief {
                self.agg.push_brief(FlowBrief::of(&trace), config);
            }
            if keep {
                self.kept.push(trace);
            }
        }
        if a.findings
            .iter()
            .any(|f| self.agg.wants_example(f.rule, config))
        {
            for f in resolve_findings(self.ctx, id, state, a) {
                self.agg.push_example(f, config);
            }
        }
    }
}

fn log_case(
    ctx: &Ctx<'_>,
    chunk: &mut LogChunk,
    id: &EventId,
    state: &FlowState,
    a: &Analysis,
    order: &[u32],
) {
    let rows = order.iter().map(|&i| {
        let e = &state.events[i as usize];
        Row {
            activity: ctx.syms.name(e.ty),
            time: e.time,
            resource: ctx.syms.name(e.source),
            event_id: &e.id,
            topic: ctx.syms.name(e.topic),
        }
    });
    let flow = a
        .name
        .and_then(|n| ctx.model.map(|m| m.flows[n].name.as_str()));
    let mut buf = [0u8; 36];
    let case = match id.as_uuid() {
        Some(u) => std::borrow::Cow::Borrowed(&*u.hyphenated().encode_lower(&mut buf)),
        None => std::borrow::Cow::Owned(id.to_string()),
    };
    chunk.case(&case, flow, a.status, order.len(), rows);
}

/// Flows at the end of a batch from which the analysis uses a second thread.
const PARALLEL_FROM: usize = 2048;

/// Flows a thread takes at a time in the end-of-batch fold.
const CHUNK: usize = 1024;

/// Chunks folded and waiting for an earlier one to be merged, at most: what
/// the end of a batch holds beyond the chunks being folded.
const MAX_AHEAD: usize = 8;

/// Analyses and folds `flows` into `agg`: the orphans counted, the flows
/// kept, the event-log text.
/// Each flow's records are freed as soon as it is folded, on the thread
/// that folded it: freeing a million small vectors afterwards, on one
/// thread, took a tenth of the end of a batch.
fn fold_all(
    ctx: &Ctx<'_>,
    metrics: Option<&TraceMetrics>,
    agg: &mut Aggregates,
    log: Option<LogFormat>,
    flows: &mut [(EventId, Box<FlowState>)],
    now: i64,
) -> (u64, Vec<FlowTrace>, Option<LogChunk>) {
    let mut scratch = Scratch::default();
    let mut folder = Folder::new(ctx, metrics, agg, log);
    for (id, f) in flows {
        let a = analyse(ctx, &mut scratch, id, f, now);
        folder.flow(id, f, &a, None, &scratch.order);
        f.release();
    }
    (folder.orphans, folder.kept, folder.log)
}

/// What analysing a flow needs: read-only, so flows can be analysed on several threads.
pub(crate) struct Ctx<'a> {
    model: Option<&'a Model>,
    syms: &'a Symbols,
    config: &'a TracerConfig,
    receipts_expected: bool,
}

/// Rebuilds the causal graph of a flow and checks it.
fn analyse(ctx: &Ctx<'_>, s: &mut Scratch, corr: &EventId, f: &FlowState, now: i64) -> Analysis {
    let receipts_expected = ctx.receipts_expected;
    let n = f.events.len();

    // Time order (arrival order breaks ties): out-of-order input lands in place.
    s.order.clear();
    s.order.extend(0..n as u32);
    // Usually already so: events mostly arrive in the order they happened.
    if !f.events.is_sorted_by_key(|e| e.time) {
        s.order.sort_by_key(|&i| (f.events[i as usize].time, i));
    }
    s.graph.clear();
    s.node_of.clear();
    s.node_of.resize(n, NodeIndex::end());
    for &i in &s.order {
        s.node_of[i as usize] = s.graph.add_node(i);
    }
    s.parent.clear();
    s.parent.resize(n, u32::MAX);
    let mut findings = Vec::new();
    let mut orphans = 0u32;
    let model = ctx.model;
    let syms = ctx.syms;
    let tolerance = i64::try_from(ctx.config.skew_tolerance.as_micros()).unwrap_or(i64::MAX);
    for (i, e) in f.events.iter().enumerate() {
        let Some(cause) = &e.cause else { continue };
        match f.find(cause) {
            Some(p) if p != i => {
                s.parent[i] = p as u32;
                s.graph.add_edge(s.node_of[p], s.node_of[i], ());
                let pt = f.events[p].time;
                if e.time.saturating_add(tolerance) < pt {
                    findings.push(Raw {
                        rule: Rule::ClockSkew,
                        service: e.source,
                        event_type: e.ty,
                        event: Some(i as u32),
                        time: e.time,
                        message: format!(
                            "'{}' (by '{}') is {} earlier than its cause '{}' (by '{}')",
                            syms.name(e.ty),
                            syms.name(e.source),
                            crate::stats::format_micros(pt.saturating_sub(e.time) as u64),
                            syms.name(f.events[p].ty),
                            syms.name(f.events[p].source),
                        ),
                    });
                }
            }
            Some(_) => {
                findings.push(Raw {
                    rule: Rule::CausalLoop,
                    service: e.source,
                    event_type: e.ty,
                    event: Some(i as u32),
                    time: e.time,
                    message: format!("'{}' names itself as its cause", syms.name(e.ty)),
                });
            }
            None => {
                orphans += 1;
                findings.push(Raw {
                    rule: Rule::Orphan,
                    service: e.source,
                    event_type: e.ty,
                    event: Some(i as u32),
                    time: e.time,
                    message: format!(
                        "'{}' by '{}' names cause {cause}, which is not in the flow",
                        syms.name(e.ty),
                        syms.name(e.source)
                    ),
                });
            }
        }
    }
    if n > 1 && petgraph::algo::is_cyclic_directed(&s.graph) {
        findings.push(Raw {
            rule: Rule::CausalLoop,
            service: EMPTY,
            event_type: EMPTY,
            event: None,
            time: f.events.first().map_or(0, |e| e.time),
            message: "causation ids form a loop: some event is its own ancestor".into(),
        });
    }
    // The flow's first event: the one whose id is the correlation id, else
    // the earliest without a cause, else the earliest.
    let root = f
        .events
        .iter()
        .position(|e| &e.id == corr)
        .or_else(|| {
            s.order
                .iter()
                .map(|&i| i as usize)
                .find(|&i| f.events[i].cause.is_none())
        })
        .or_else(|| s.order.first().map(|&i| i as usize));
    let start = root.map_or(f.last_activity, |r| f.events[r].time);
    let last = f
        .events
        .iter()
        .map(|e| e.time)
        .max()
        .unwrap_or(f.last_activity);
    let dead_any = !f.dead.is_empty()
        || f.receipts
            .iter()
            .any(|r| r.outcome == Outcome::DeadLettered);

    let Some(m) = model else {
        let status = if dead_any {
            FlowStatus::Failed
        } else {
            FlowStatus::Completed
        };
        dead_letter_findings(f, syms, &mut findings);
        return Analysis {
            status,
            name: None,
            start,
            end: Some(last),
            findings,
            owed: Vec::new(),
            next_deadline: None,
            orphans,
        };
    };

    let name = root
        .and_then(|r| {
            let e = &f.events[r];
            if e.cause.is_none() {
                m.flow_started_by(e.ty)
            } else {
                None
            }
        })
        .or_else(|| root.and_then(|r| m.flow_of(f.events[r].ty)))
        .or(f.name);
    if let Some(r) = root {
        let e = &f.events[r];
        if e.cause.is_none() && m.event(e.ty).is_some() && m.flow_started_by(e.ty).is_none() {
            findings.push(Raw {
                rule: Rule::UnknownFlow,
                service: e.source,
                event_type: e.ty,
                event: Some(r as u32),
                time: e.time,
                message: format!(
                    "the flow starts with '{}', which is no flow's `starts_with`",
                    syms.name(e.ty)
                ),
            });
        }
    }

    // Unknown names, once per flow each.
    let mut unknown_seen: Vec<(Rule, Sym)> = Vec::new();
    let mut note_unknown =
        |rule: Rule, sym: Sym, ty: Sym, ev: Option<u32>, time: i64, findings: &mut Vec<Raw>| {
            if sym == EMPTY || unknown_seen.contains(&(rule, sym)) {
                return;
            }
            unknown_seen.push((rule, sym));
            let what = if rule == Rule::UnknownEvent {
                "event type"
            } else {
                "service"
            };
            findings.push(Raw {
                rule,
                service: if rule == Rule::UnknownService {
                    sym
                } else {
                    EMPTY
                },
                event_type: ty,
                event: ev,
                time,
                message: format!(
                    "{what} '{}' is not declared in topology '{}'",
                    syms.name(sym),
                    m.name
                ),
            });
        };
    for (i, e) in f.events.iter().enumerate() {
        if m.event(e.ty).is_none() {
            note_unknown(
                Rule::UnknownEvent,
                e.ty,
                e.ty,
                Some(i as u32),
                e.time,
                &mut findings,
            );
        }
        if m.service(e.source).is_none() {
            note_unknown(
                Rule::UnknownService,
                e.source,
                e.ty,
                Some(i as u32),
                e.time,
                &mut findings,
            );
        }
    }
    for r in &f.receipts {
        if m.service(r.service).is_none() {
            let ev = f.find(&r.event).map(|i| i as u32);
            note_unknown(
                Rule::UnknownService,
                r.service,
                r.ty,
                ev,
                r.started,
                &mut findings,
            );
        }
    }

    // Roots emitted on a service's own: must be in its `emits`.
    for (i, e) in f.events.iter().enumerate() {
        if e.cause.is_some() {
            continue;
        }
        if let (Some(svc), Some(_)) = (m.service(e.source), m.event(e.ty))
            && !svc.emits.contains(&e.ty)
        {
            findings.push(Raw {
                rule: Rule::UndeclaredEmit,
                service: e.source,
                event_type: e.ty,
                event: Some(i as u32),
                time: e.time,
                message: format!(
                    "'{}' published '{}' on its own, but its `emits` does not list it",
                    syms.name(e.source),
                    syms.name(e.ty)
                ),
            });
        }
    }

    // Per event: what each consumer did, or owes.
    let mut owed: Vec<RawOwed> = Vec::new();
    let mut kids: Vec<usize> = Vec::new();
    let mut other_services: Vec<Sym> = Vec::new();
    for (i, e) in f.events.iter().enumerate() {
        kids.clear();
        kids.extend(
            s.graph
                .neighbors(s.node_of[i])
                .map(|nx| s.graph[nx] as usize),
        );
        let info = m.event(e.ty);
        // Children from services that have no reaction to this event, and
        // children outside the reacting service's contract.
        other_services.clear();
        for &k in &kids {
            let kid = &f.events[k];
            if m.service(kid.source).is_none() || m.event(kid.ty).is_none() || info.is_none() {
                continue;
            }
            match m.reaction(kid.source, e.ty) {
                None => {
                    if !other_services.contains(&kid.source) {
                        other_services.push(kid.source);
                        findings.push(Raw {
                            rule: Rule::UndeclaredConsume,
                            service: kid.source,
                            event_type: e.ty,
                            event: Some(i as u32),
                            time: kid.time,
                            message: format!(
                                "'{}' reacted to '{}' (it published '{}'), but declares no reaction to it",
                                syms.name(kid.source),
                                syms.name(e.ty),
                                syms.name(kid.ty)
                            ),
                        });
                    }
                }
                Some(r) if !r.emits.contains(&kid.ty) => findings.push(Raw {
                    rule: Rule::UndeclaredEmit,
                    service: kid.source,
                    event_type: kid.ty,
                    event: Some(k as u32),
                    time: kid.time,
                    message: format!(
                        "'{}' emitted '{}' in reaction to '{}', which its reaction does not list{}",
                        syms.name(kid.source),
                        syms.name(kid.ty),
                        syms.name(e.ty),
                        if r.emits.is_empty() {
                            " (it is a sink)".to_owned()
                        } else {
                            format!(
                                " ({}{})",
                                if r.kind == Kind::OneOf { "one of " } else { "" },
                                list(syms, &r.emits)
                            )
                        }
                    ),
                }),
                Some(_) => {}
            }
        }
        // Receipts from services with no reaction to this event.
        for r in f.receipts.iter().filter(|r| r.event == e.id) {
            if info.is_none() || m.service(r.service).is_none() {
                continue;
            }
            if m.reaction(r.service, e.ty).is_none() && !other_services.contains(&r.service) {
                other_services.push(r.service);
                findings.push(Raw {
                    rule: Rule::UndeclaredConsume,
                    service: r.service,
                    event_type: e.ty,
                    event: Some(i as u32),
                    time: r.started,
                    message: format!(
                        "'{}' handled '{}' ({}), but declares no reaction to it",
                        syms.name(r.service),
                        syms.name(e.ty),
                        r.outcome.as_str()
                    ),
                });
            }
        }
        let Some(info) = info else { continue };
        for reaction in &info.consumers {
            let svc = reaction.service;
            let mut acked = false;
            let mut dup = false;
            let mut dead: Option<(&str, u32)> = None;
            let mut receipt_emitted: Option<u32> = None;
            let mut settled_at: Option<i64> = None;
            for r in f
                .receipts
                .iter()
                .filter(|r| r.service == svc && r.event == e.id)
            {
                match r.outcome {
                    Outcome::Acked => {
                        acked = true;
                        receipt_emitted = Some(receipt_emitted.unwrap_or(0).max(r.emitted));
                        let done = r.started.saturating_add(r.duration_us as i64);
                        settled_at = Some(settled_at.map_or(done, |d: i64| d.min(done)));
                    }
                    Outcome::Duplicate => dup = true,
                    Outcome::DeadLettered => {
                        dead = Some((r.reason.as_deref().unwrap_or(""), r.attempts));
                    }
                    Outcome::Redelivered | Outcome::Ignored => {}
                }
            }
            if dead.is_none()
                && let Some(d) = f
                    .dead
                    .iter()
                    .find(|d| d.event == e.id && (d.service == svc || d.service == EMPTY))
            {
                dead = Some((&d.reason, d.attempts));
            }
            if let Some((reason, attempts)) = dead {
                findings.push(Raw {
                    rule: Rule::DeadLettered,
                    service: svc,
                    event_type: e.ty,
                    event: Some(i as u32),
                    time: e.time,
                    message: format!(
                        "'{}' dead-lettered '{}' after {attempts} attempt{}: {reason}",
                        syms.name(svc),
                        syms.name(e.ty),
                        if attempts == 1 { "" } else { "s" }
                    ),
                });
                continue;
            }
            let mut emitted_types: Vec<Sym> = Vec::new();
            let mut last_emit: Option<i64> = None;
            for &k in &kids {
                let kid = &f.events[k];
                if kid.source == svc {
                    if !emitted_types.contains(&kid.ty) {
                        emitted_types.push(kid.ty);
                    }
                    last_emit = Some(last_emit.map_or(kid.time, |t: i64| t.max(kid.time)));
                }
            }
            let ran = acked || !emitted_types.is_empty();
            if ran {
                // Emissions its receipt announces but the input does not
                // (yet) hold: the flow is not at rest.
                let seen = kids.iter().filter(|&&k| f.events[k].source == svc).count();
                if receipt_emitted.is_some_and(|n| n as usize > seen) {
                    owed.push(RawOwed {
                        service: svc,
                        event: i as u32,
                        owes: reaction.emits.clone(),
                        one_of: reaction.kind == Kind::OneOf,
                        deadline: None,
                    });
                }
                match reaction.kind {
                    Kind::All => {
                        let missing: Vec<Sym> = reaction
                            .emits
                            .iter()
                            .copied()
                            .filter(|x| !emitted_types.contains(x))
                            .collect();
                        let receipts_say_short =
                            receipt_emitted.is_none_or(|n| (n as usize) < reaction.emits.len());
                        if !missing.is_empty() && receipts_say_short {
                            findings.push(Raw {
                                rule: Rule::MissingEmit,
                                service: svc,
                                event_type: e.ty,
                                event: Some(i as u32),
                                time: e.time,
                                message: format!(
                                    "'{}' handled '{}' but did not emit {} (its reaction emits {}){}",
                                    syms.name(svc),
                                    syms.name(e.ty),
                                    list(syms, &missing),
                                    list(syms, &reaction.emits),
                                    receipt_note(receipt_emitted)
                                ),
                            });
                        }
                    }
                    Kind::OneOf => {
                        let chosen: Vec<Sym> = emitted_types
                            .iter()
                            .copied()
                            .filter(|x| reaction.emits.contains(x))
                            .collect();
                        if chosen.len() > 1 {
                            findings.push(Raw {
                                rule: Rule::BothBranches,
                                service: svc,
                                event_type: e.ty,
                                event: Some(i as u32),
                                time: e.time,
                                message: format!(
                                    "'{}' emitted {} in reaction to '{}', but its reaction emits exactly one of {}",
                                    syms.name(svc),
                                    list(syms, &chosen),
                                    syms.name(e.ty),
                                    list(syms, &reaction.emits)
                                ),
                            });
                        } else if chosen.is_empty() && receipt_emitted.is_none_or(|n| n == 0) {
                            findings.push(Raw {
                                rule: Rule::MissingEmit,
                                service: svc,
                                event_type: e.ty,
                                event: Some(i as u32),
                                time: e.time,
                                message: format!(
                                    "'{}' handled '{}' but emitted none of {}{}",
                                    syms.name(svc),
                                    syms.name(e.ty),
                                    list(syms, &reaction.emits),
                                    receipt_note(receipt_emitted)
                                ),
                            });
                        }
                    }
                    Kind::Nothing => {}
                }
                if let Some(within) = reaction.within_us {
                    let done = last_emit.or(settled_at);
                    if let Some(done) = done {
                        let took = done.saturating_sub(e.time);
                        if took > within {
                            findings.push(Raw {
                                rule: Rule::ReactionLate,
                                service: svc,
                                event_type: e.ty,
                                event: Some(i as u32),
                                time: e.time,
                                message: format!(
                                    "'{}' took {} to react to '{}' (within {})",
                                    syms.name(svc),
                                    crate::stats::format_micros(took as u64),
                                    syms.name(e.ty),
                                    crate::stats::format_micros(within as u64)
                                ),
                            });
                        }
                    }
                }
                continue;
            }
            if dup {
                continue;
            }
            if reaction.kind == Kind::Nothing && !receipts_expected {
                continue;
            }
            owed.push(RawOwed {
                service: svc,
                event: i as u32,
                owes: reaction.emits.clone(),
                one_of: reaction.kind == Kind::OneOf,
                deadline: reaction.within_us.map(|w| e.time.saturating_add(w)),
            });
        }
    }

    // Cycles: an event type repeating along one causal path.
    let bound = ctx.config.cycle_bound;
    if n as u64 > u64::from(bound) {
        let mut per_type: FastMap<Sym, u32> = FastMap::default();
        for e in &f.events {
            *per_type.entry(e.ty).or_default() += 1;
        }
        if per_type.values().any(|&c| c > bound) {
            // Per repeating type, the deepest repetition along one path.
            let mut worst: Vec<(Sym, u32, usize)> = Vec::new();
            for (i, e) in f.events.iter().enumerate() {
                if per_type[&e.ty] <= bound {
                    continue;
                }
                let mut count = 1u32;
                let mut p = s.parent[i];
                let mut steps = 0usize;
                while p != u32::MAX && steps <= n {
                    if f.events[p as usize].ty == e.ty {
                        count += 1;
                    }
                    p = s.parent[p as usize];
                    steps += 1;
                }
                match worst.iter_mut().find(|w| w.0 == e.ty) {
                    Some(w) if w.1 < count => *w = (e.ty, count, i),
                    Some(_) => {}
                    None => worst.push((e.ty, count, i)),
                }
            }
            for (ty, count, i) in worst {
                if count <= bound {
                    continue;
                }
                let e = &f.events[i];
                findings.push(Raw {
                    rule: Rule::CycleBound,
                    service: e.source,
                    event_type: ty,
                    event: Some(i as u32),
                    time: e.time,
                    message: format!(
                        "'{}' occurs {count} times along one causal path (bound {bound})",
                        syms.name(ty)
                    ),
                });
            }
        }
    }

    // Status.
    let flow = name.map(|x| &m.flows[x]);
    let end = flow.and_then(|fl| {
        f.events
            .iter()
            .filter(|e| fl.ends.contains(&e.ty))
            .map(|e| e.time)
            .min()
    });
    let flow_deadline = flow
        .and_then(|fl| fl.within_us)
        .map(|w| start.saturating_add(w));
    let mut next_deadline: Option<i64> = None;
    let status = if dead_any {
        if findings.iter().all(|x| x.rule != Rule::DeadLettered) {
            dead_letter_findings(f, syms, &mut findings);
        }
        FlowStatus::Failed
    } else if let Some(end_time) = end {
        if let (Some(fl), Some(w)) = (flow, flow.and_then(|fl| fl.within_us)) {
            let took = end_time.saturating_sub(start);
            if took > w {
                let r = root.unwrap_or(0);
                findings.push(Raw {
                    rule: Rule::FlowLate,
                    service: f.events.get(r).map_or(EMPTY, |e| e.source),
                    event_type: f.events.get(r).map_or(EMPTY, |e| e.ty),
                    event: None,
                    time: start,
                    message: format!(
                        "flow '{}' took {} (within {})",
                        fl.name,
                        crate::stats::format_micros(took as u64),
                        crate::stats::format_micros(w as u64)
                    ),
                });
            }
        }
        FlowStatus::Completed
    } else if owed.is_empty() {
        if flow.is_some() && n > 0 {
            let leaves: Vec<Sym> = (0..n)
                .filter(|&i| s.graph.neighbors(s.node_of[i]).next().is_none())
                .map(|i| f.events[i].ty)
                .fold(Vec::new(), |mut acc, t| {
                    if !acc.contains(&t) {
                        acc.push(t);
                    }
                    acc
                });
            let fl = flow.map(|fl| fl.name.as_str()).unwrap_or_default();
            let last_ev = s.order.last().map_or(0, |&i| i as usize);
            findings.push(Raw {
                rule: Rule::BadEnd,
                service: f.events[last_ev].source,
                event_type: f.events[last_ev].ty,
                event: None,
                time: last,
                message: format!(
                    "flow '{fl}' came to rest on {} without reaching an end ({})",
                    list(syms, &leaves),
                    list(syms, &flow.map(|fl| fl.ends.clone()).unwrap_or_default())
                ),
            });
            FlowStatus::Failed
        } else {
            FlowStatus::Completed
        }
    } else {
        let overdue_flow = flow_deadline.is_some_and(|d| now > d);
        let overdue_reaction = owed.iter().any(|o| o.deadline.is_some_and(|d| now > d));
        if overdue_flow || overdue_reaction {
            for o in &owed {
                let overdue = overdue_flow || o.deadline.is_some_and(|d| now > d);
                if !overdue {
                    continue;
                }
                let e = &f.events[o.event as usize];
                findings.push(Raw {
                    rule: Rule::Stuck,
                    service: o.service,
                    event_type: e.ty,
                    event: Some(o.event),
                    time: e.time,
                    message: format!(
                        "'{}' owes {} for '{}' since {} ({} overdue{})",
                        syms.name(o.service),
                        owes_text(syms, &o.owes, o.one_of),
                        syms.name(e.ty),
                        Timestamp::from_micros(e.time),
                        if o.deadline.is_some_and(|d| now > d) {
                            "its reaction is"
                        } else {
                            "the flow is"
                        },
                        match (o.deadline, flow_deadline) {
                            (Some(d), _) if now > d => format!(
                                ", by {}",
                                crate::stats::format_micros(now.saturating_sub(d) as u64)
                            ),
                            (_, Some(d)) if now > d => format!(
                                ", by {}",
                                crate::stats::format_micros(now.saturating_sub(d) as u64)
                            ),
                            _ => String::new(),
                        }
                    ),
                });
            }
            FlowStatus::Stuck
        } else {
            next_deadline = owed
                .iter()
                .filter_map(|o| o.deadline)
                .chain(flow_deadline)
                .min()
                .map(|d| d.saturating_add(1));
            FlowStatus::InProgress
        }
    };
    let end = match status {
        FlowStatus::Completed => end.or(Some(last)),
        FlowStatus::Failed => Some(last),
        _ => None,
    };
    Analysis {
        status,
        name,
        start,
        end,
        findings,
        owed,
        next_deadline,
        orphans,
    }
}

fn dead_letter_findings(f: &FlowState, syms: &Symbols, findings: &mut Vec<Raw>) {
    let mut seen: Vec<(usize, Sym)> = Vec::new();
    for r in f
        .receipts
        .iter()
        .filter(|r| r.outcome == Outcome::DeadLettered)
    {
        let i = f.find(&r.event);
        if let Some(i) = i {
            seen.push((i, r.service));
        }
        findings.push(Raw {
            rule: Rule::DeadLettered,
            service: r.service,
            event_type: r.ty,
            event: i.map(|i| i as u32),
            time: r.started,
            message: format!(
                "'{}' dead-lettered '{}' after {} attempt{}: {}",
                syms.name(r.service),
                syms.name(r.ty),
                r.attempts,
                if r.attempts == 1 { "" } else { "s" },
                r.reason.as_deref().unwrap_or("")
            ),
        });
    }
    for d in &f.dead {
        let i = f.find(&d.event);
        if i.is_some_and(|i| seen.contains(&(i, d.service))) {
            continue;
        }
        let ty = i.map_or(EMPTY, |i| f.events[i].ty);
        findings.push(Raw {
            rule: Rule::DeadLettered,
            service: d.service,
            event_type: ty,
            event: i.map(|i| i as u32),
            time: i.map_or(0, |i| f.events[i].time),
            message: format!(
                "'{}' dead-lettered '{}' after {} attempts: {}",
                syms.name(d.service),
                syms.name(ty),
                d.attempts,
                d.reason
            ),
        });
    }
}

fn list(syms: &Symbols, s: &[Sym]) -> String {
    let names: Vec<String> = s.iter().map(|x| format!("'{}'", syms.name(*x))).collect();
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.join(", ")
    }
}

fn owes_text(syms: &Symbols, owes: &[Sym], one_of: bool) -> String {
    if owes.is_empty() {
        "its receipt".to_owned()
    } else if one_of {
        format!("one of {}", list(syms, owes))
    } else {
        list(syms, owes)
    }
}

fn receipt_note(emitted: Option<u32>) -> String {
    match emitted {
        Some(n) => format!(" — its receipt says it emitted {n}"),
        None => String::new(),
    }
}

/// Resolves raw findings into [`Finding`]s with names.
pub(crate) fn resolve_findings(
    ctx: &Ctx<'_>,
    corr: &EventId,
    f: &FlowState,
    a: &Analysis,
) -> Vec<Finding> {
    let flow = a
        .name
        .and_then(|n| ctx.model.map(|m| m.flows[n].name.to_string()));
    a.findings
        .iter()
        .map(|r| Finding {
            rule: r.rule,
            correlation_id: corr.clone(),
            flow: flow.clone(),
            service: ctx.syms.name(r.service).to_string(),
            event_type: ctx.syms.name(r.event_type).to_string(),
            event_id: r.event.map(|i| f.events[i as usize].id.clone()),
            time: Timestamp::from_micros(r.time),
            message: r.message.clone(),
        })
        .collect()
}

/// The flow as a [`FlowTrace`]; `order` is its events' time order, from its
/// analysis `a`.
fn build_trace(
    ctx: &Ctx<'_>,
    corr: &EventId,
    f: &FlowState,
    a: &Analysis,
    order: &[u32],
) -> FlowTrace {
    debug_assert_eq!(order.len(), f.events.len(), "the flow's own order");
    let mut graph: Graph<TracedEvent, ()> = Graph::with_capacity(order.len(), order.len());
    let mut node = vec![NodeIndex::end(); f.events.len()];
    for &i in order {
        let i = i as usize;
        let e = &f.events[i];
        let handled = f
            .receipts
            .iter()
            .filter(|r| r.event == e.id)
            .map(|r| Handling {
                service: ctx.syms.name(r.service).clone(),
                outcome: r.outcome,
                attempts: r.attempts,
                started: Timestamp::from_micros(r.started),
                duration_us: r.duration_us,
                reason: r.reason.as_deref().map(str::to_owned),
                emitted: r.emitted,
            })
            .collect();
        let orphan = e.cause.as_ref().is_some_and(|c| f.find(c).is_none());
        node[i] = graph.add_node(TracedEvent {
            id: e.id.clone(),
            event_type: ctx.syms.name(e.ty).clone(),
            source: ctx.syms.name(e.source).clone(),
            topic: ctx.syms.name(e.topic).clone(),
            time: Timestamp::from_micros(e.time),
            partition: (e.partition != NO_PARTITION).then_some(e.partition),
            offset: (e.offset != NO_OFFSET).then_some(e.offset),
            causation_id: e.cause.clone(),
            orphan,
            handled,
        });
    }
    for (i, e) in f.events.iter().enumerate() {
        if let Some(p) = e.cause.as_ref().and_then(|c| f.find(c))
            && p != i
        {
            graph.add_edge(node[p], node[i], ());
        }
    }
    let owed = a
        .owed
        .iter()
        .map(|o| {
            let e = &f.events[o.event as usize];
            Owed {
                service: ctx.syms.name(o.service).to_string(),
                event_type: ctx.syms.name(e.ty).to_string(),
                event_id: e.id.clone(),
                owes: o
                    .owes
                    .iter()
                    .map(|s| ctx.syms.name(*s).to_string())
                    .collect(),
                one_of: o.one_of,
                since: Timestamp::from_micros(e.time),
                deadline: o.deadline.map(Timestamp::from_micros),
            }
        })
        .collect();
    FlowTrace {
        correlation_id: corr.clone(),
        flow: a
            .name
            .and_then(|n| ctx.model.map(|m| m.flows[n].name.to_string())),
        status: a.status,
        started: Timestamp::from_micros(a.start),
        ended: a.end.map(Timestamp::from_micros),
        graph,
        findings: resolve_findings(ctx, corr, f, a),
        owed,
        duplicates: f.duplicates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_core::{Name, Receipt};

    fn receipt(reason: Option<&str>, emitted: usize) -> Receipt {
        Receipt {
            service: Name::from("pay\u{e9}ment"),
            event_id: EventId::new(),
            event_type: Name::from("OrderPlaced"),
            correlation_id: EventId::new(),
            topic: Name::from("orders"),
            partition: 3,
            offset: 77,
            outcome: Outcome::DeadLettered,
            attempts: 4,
            reason: reason.map(str::to_owned),
            started: choreo_core::Timestamp::from_micros(-5),
            duration_us: 1234,
            emitted: (0..emitted).map(|_| EventId::new()).collect(),
        }
    }

    #[test]
    fn the_fast_receipt_parser_agrees_with_serde() {
        let mut names = Interner::default();
        for r in [
            receipt(None, 0),
            receipt(Some("carrier down"), 2),
            receipt(Some("quote \" inside"), 1),
        ] {
            let json = serde_json::to_vec(&r).unwrap();
            let mut written = Vec::new();
            r.write_json(&mut written);
            let a = serde_receipt(&json, &mut names).unwrap();
            let b = parse_receipt(&json, &mut names).unwrap();
            let d = parse_receipt(&written, &mut names).unwrap();
            // The literal reader takes what the runtime writes, escapes aside.
            let e = written_receipt(&written, &mut names);
            assert_eq!(
                e.is_some(),
                !r.reason.as_deref().unwrap_or("").contains('"')
            );
            for p in [&a, &b, &d].into_iter().chain(e.as_ref()) {
                assert_eq!(p.event, r.event_id);
                assert_eq!(p.service, r.service);
                assert_eq!(p.event_type, r.event_type);
                assert_eq!(p.outcome, r.outcome);
                assert_eq!(p.attempts, 4);
                assert_eq!(p.started, -5);
                assert_eq!(p.duration_us, 1234);
                assert_eq!(p.emitted as usize, r.emitted.len());
                assert_eq!(p.reason.as_deref(), r.reason.as_deref());
            }
        }
        // An escape makes the fast path give up; serde still reads it.
        let json = serde_json::to_vec(&receipt(Some("quote \" inside"), 0)).unwrap();
        assert!(fast_receipt(&json, &mut names).is_none());
        assert!(parse_receipt(b"{\"service\": 1}", &mut names).is_none());
        // Cut anywhere, the literal reader gives up rather than misread.
        let mut written = Vec::new();
        receipt(Some("carrier down"), 2).write_json(&mut written);
        for end in 0..written.len() {
            assert!(
                written_receipt(&written[..end], &mut names).is_none(),
                "{end}"
            );
        }
        assert!(parse_receipt(b"not json", &mut names).is_none());
    }
}

#[cfg(test)]
mod send_tests {
    #[test]
    fn a_tracer_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<super::Tracer>();
        send::<crate::capture::Reader>();
        send::<crate::Report>();
    }
}
