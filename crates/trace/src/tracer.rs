//! The tracer: ingests records into flows in flight, evicts within its caps, and finishes flows into the aggregates.

use std::collections::VecDeque;

use choreo_core::{Envelope, EventId, MALFORMED_HEADER, RELAYED_AT_HEADER, Timestamp, dlq_headers};
use choreo_topology::Topology;

use crate::Record;
use crate::aggregate::Aggregates;
use crate::analysis::{Analysis, Ctx, Scratch, analyse};
use crate::assemble::build_trace;
use crate::compact::{CompactEvent, CompactReceipt, Item, Translation};
use crate::config::{Receipts, TracerConfig};
use crate::export::{FlowWriter, LogWriter};
use crate::find::Query;
use crate::flow::{FlowStatus, FlowTrace};
use crate::fold::{self, Folder, Out};
use crate::metrics::{Gauges, TraceMetrics};
use crate::model::{EMPTY, Model, Sym, Symbols};
use crate::receipt::{ParsedReceipt, parse_receipt};
use crate::recent::{RecentFlows, SearchWindow};
use crate::report::{Counters, EvictReason, NowFrom, Report, ReportParts};
use crate::store::{Dl, Ev, FlowState, FlowTable, NO_OFFSET, NO_PARTITION, Rc};
use crate::util::{FastMap, Interner};

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
    config: TracerConfig,
    syms: Symbols,
    model: Option<Model>,
    flows: FlowTable,
    created: VecDeque<EventId>,
    records_in_flight: usize,
    evicted: FastMap<EventId, ()>,
    evicted_order: VecDeque<EventId>,
    agg: Aggregates,
    counters: Counters,
    max_time: i64,
    now: i64,
    receipts_seen: bool,
    /// Whether `finish` was given its "now".
    now_given: bool,
    /// Event type → the services whose receipts for it were seen: the
    /// evidence that a consumer's silence is real (see `never-handled`).
    handlers: Vec<Vec<Sym>>,
    metrics: Option<TraceMetrics>,
    kept: Vec<FlowTrace>,
    scratch: Scratch,
    log: Option<LogWriter>,
    flows_out: Option<FlowWriter>,
    /// Flows kept whole besides those `config.keep` names (see [`Tracer::keep_flows`]).
    also_keep: FastMap<EventId, ()>,
    receipt_names: Interner,
    /// The flows finished last, for a viewer.
    recent: RecentFlows,
    /// The events read last, for a viewer's search.
    search: SearchWindow,
    /// Ingesting a replayed record (see [`Tracer::ingest_replayed`]).
    replaying: bool,
    /// What replayed records counted, kept apart from `counters`.
    replay_counters: Counters,
    /// The partition of the record being ingested.
    at_partition: u32,
}

/// How one partition was restored, for [`Tracer::restored`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Horizon {
    /// The clock its previous owner had judged as of (see
    /// [`Tracer::restored`]); `None`: judge as of "now".
    pub clock: Option<Timestamp>,
    /// Whether older records exist than the replay read: flows that started
    /// before it are cut by the horizon.
    pub cut: bool,
}

/// What [`Tracer::restored`] did with the flows rebuilt from a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    /// Flows in flight at the previous owner's clock: this tracer's from now on.
    pub adopted: u64,
    /// Of those, flows whose beginning is older than the horizon.
    pub before_horizon: u64,
    /// Flows the previous owner had judged already: dropped unsaid.
    pub judged_before: u64,
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

impl Tracer {
    /// A tracer with `config`, checking against `topology` when given (without
    /// one it reconstructs flows and aggregates but checks only structure:
    /// orphans, clock skew, loops, dead letters).
    pub fn new(config: TracerConfig, topology: Option<&Topology>) -> Tracer {
        let mut syms = Symbols::default();
        let model = topology.map(|t| Model::new(t, &mut syms));
        Tracer {
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
            now_given: false,
            handlers: Vec::new(),
            metrics: None,
            kept: Vec::new(),
            scratch: Scratch::default(),
            log: None,
            flows_out: None,
            also_keep: FastMap::default(),
            receipt_names: Interner::default(),
            recent: RecentFlows::new(config.recent_flows),
            search: SearchWindow::new(config.search_bytes),
            config,
            replaying: false,
            replay_counters: Counters::default(),
            at_partition: NO_PARTITION,
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

    /// Writes every flow's verdict (a [`FlowSummary`](crate::FlowSummary)) to
    /// `out` as one JSON line when the flow finishes.
    pub fn export_flows(&mut self, out: FlowWriter) {
        self.flows_out = Some(out);
    }

    /// Takes the flows' lines back (after [`Tracer::finish`]) and flushes
    /// them: the flows written, or the first write error.
    pub fn finish_flows(&mut self) -> Option<std::io::Result<u64>> {
        self.flows_out.take().map(FlowWriter::finish)
    }

    /// Keeps these flows whole too (see [`Tracer::kept`]), besides those
    /// [`TracerConfig::keep`] names: flows found by what a user knows of
    /// them, before they finish.
    pub fn keep_flows(&mut self, ids: impl IntoIterator<Item = EventId>) {
        self.also_keep.extend(ids.into_iter().map(|id| (id, ())));
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

    /// Ingests a record read again to rebuild state: a consumer-group member
    /// restoring a partition whose previous owner acted on this record
    /// already. Its flow is rebuilt, but nothing is counted (the previous
    /// owner counted it), and the flow is not judged until
    /// [`Tracer::restored`] decides whether the previous owner did judge
    /// it. The caps hold: a flow still restoring that must go is dropped
    /// unsaid.
    pub fn ingest_replayed(&mut self, record: &Record) {
        std::mem::swap(&mut self.counters, &mut self.replay_counters);
        self.replaying = true;
        self.ingest(record);
        self.replaying = false;
        std::mem::swap(&mut self.counters, &mut self.replay_counters);
    }

    /// Records replayed so far (see [`Tracer::ingest_replayed`]).
    pub fn records_replayed(&self) -> u64 {
        self.replay_counters.records
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

    /// Ingests a record decoded straight into its compact form, naming with
    /// `names` (the translation of the reader that decoded it).
    pub(crate) fn ingest_item(&mut self, item: Item, names: &mut Translation) {
        match item {
            Item::Event(e) => {
                self.counters.records += 1;
                self.ingest_compact_event(e, names);
            }
            Item::Receipt(r) => {
                self.counters.records += 1;
                self.ingest_compact_receipt(r, names);
            }
            Item::BadReceipt => {
                self.counters.records += 1;
                self.bad_receipt();
            }
            Item::Unattributed => {
                self.counters.records += 1;
                self.counters.unattributed += 1;
            }
            Item::Whole(record) => self.ingest(&record),
        }
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
        self.at_partition = partition.unwrap_or(NO_PARTITION);
        if !attributed {
            self.counters.unattributed += 1;
            return;
        }
        if crate::record::is_receipt_type(&env.event_type) {
            self.ingest_receipt(env, pre);
        } else if let Some(reason) = env.headers.get_str(dlq_headers::REASON) {
            self.ingest_dead_letter(env, reason, partition.zip(offset));
        } else {
            self.ingest_event(env, partition, offset);
        }
    }

    /// A receipt: attached to its flow.
    fn ingest_receipt(&mut self, env: &Envelope, pre: Option<ParsedReceipt>) {
        let parsed = match pre {
            Some(p) => Some(p),
            None => parse_receipt(&env.data, &mut self.receipt_names),
        };
        let Some(view) = parsed else {
            self.bad_receipt();
            return;
        };
        self.receipts_seen = true;
        if view.ignored {
            self.counters.ignored += 1;
            return;
        }
        let service = self.syms.intern(&view.service);
        let ty = self.syms.intern(&view.event_type);
        self.place_receipt(
            &env.correlation_id,
            env.time.as_micros(),
            Rc {
                event: view.event,
                service,
                ty,
                outcome: view.outcome,
                attempts: view.attempts,
                started: view.started,
                duration_us: view.duration_us,
                emitted: view.emitted,
                reason: view.reason,
            },
        );
    }

    /// A receipt decoded straight into its compact form (see [`crate::compact`]).
    fn ingest_compact_receipt(&mut self, r: CompactReceipt, names: &mut Translation) {
        self.receipts_seen = true;
        if r.ignored {
            self.counters.ignored += 1;
            return;
        }
        let service = names.sym(r.service, &mut self.syms);
        let ty = names.sym(r.event_type, &mut self.syms);
        self.place_receipt(
            &r.correlation,
            r.time,
            Rc {
                event: r.event,
                service,
                ty,
                outcome: r.outcome,
                attempts: r.attempts,
                started: r.started,
                duration_us: r.duration_us,
                emitted: r.emitted,
                reason: r.reason,
            },
        );
    }

    /// A record of the receipt type whose payload is not a receipt.
    fn bad_receipt(&mut self) {
        self.counters.unattributed += 1;
        self.counters.bad_receipts += 1;
    }

    /// Attaches a handled (or given up) receipt, its service not yet made
    /// canonical, to its flow. (A receipt of an ignored record is not one.)
    fn place_receipt(&mut self, corr: &EventId, time: i64, mut rc: Rc) {
        self.counters.receipts += 1;
        let done = rc.started.saturating_add(rc.duration_us as i64);
        if let Some(m) = &self.model {
            rc.service = m.canonical(rc.service);
        }
        self.saw_handler(rc.ty, rc.service);
        self.bump_time(time.max(done));
        let ty = rc.ty;
        if let Some(flow) = self.flow_for(corr, time, Some(ty)) {
            flow.receipts.push(rc);
            flow.last_activity = flow.last_activity.max(time);
            // Something changed: judge it again at the next tick.
            flow.next_check = i64::MIN;
            self.records_in_flight += 1;
            self.after_growth(corr);
        }
    }

    /// A dead-letter copy of an event (it carries the reason header).
    fn ingest_dead_letter(&mut self, env: &Envelope, reason: &str, position: Option<(u32, u64)>) {
        let time = env.time.as_micros();
        self.bump_time(time);
        self.counters.dead_letters += 1;
        let malformed = env.headers.get(MALFORMED_HEADER).is_some()
            || reason.starts_with(crate::analysis::poison::MALFORMED_REASON);
        let service = env
            .headers
            .get_str(dlq_headers::SERVICE)
            .map_or(EMPTY, |s| self.syms.intern_str(s));
        let (event, correlation) = match malformed.then(|| stands_for(env, position)).flatten() {
            Some(original) => original,
            None => (env.id.clone(), env.correlation_id.clone()),
        };
        let dl = Dl {
            event,
            service: self
                .model
                .as_ref()
                .map_or(service, |m| m.canonical(service)),
            reason: reason.into(),
            attempts: env
                .headers
                .get_str(dlq_headers::ATTEMPTS)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            at: env
                .headers
                .get_str(dlq_headers::TIME)
                .and_then(Timestamp::parse_rfc3339)
                .map(Timestamp::as_micros),
            malformed,
            marker: false,
        };
        let ty = self.syms.get(env.event_type.as_str());
        if let Some(flow) = self.flow_for(&correlation, time, ty) {
            flow.dead.push(dl);
            flow.last_activity = flow.last_activity.max(time);
            // Something changed: judge it again at the next tick.
            flow.next_check = i64::MIN;
            self.records_in_flight += 1;
            self.after_growth(&correlation);
        }
    }

    /// A business event: added to its flow, or collapsed into the copy it duplicates.
    fn ingest_event(&mut self, env: &Envelope, partition: Option<u32>, offset: Option<u64>) {
        let ty = self.syms.intern(&env.event_type);
        let source = self.syms.intern(&env.source);
        let topic = self.syms.intern(&env.topic);
        // What is wrong with the record, when its source could only partly read it.
        let malformed = if env.headers.is_empty() {
            None
        } else {
            env.headers.get_str(MALFORMED_HEADER)
        };
        let new = self.place_event(
            &env.correlation_id,
            Ev {
                id: env.id.clone(),
                cause: env.causation_id.clone(),
                ty,
                source,
                topic,
                time: env.time.as_micros(),
                partition: partition.unwrap_or(NO_PARTITION),
                offset: offset.unwrap_or(NO_OFFSET),
            },
            malformed,
        );
        if new {
            // Held for search only when new (a duplicate is the same event).
            self.search.push(env);
            // Relayed from an outbox: how long it waited there (a copy the
            // relay published again is a duplicate, not counted).
            if !self.replaying
                && let Some(at) = malformed
                    .is_none()
                    .then(|| env.headers.get_str(RELAYED_AT_HEADER))
                    .flatten()
                    .and_then(Timestamp::parse_rfc3339)
            {
                let service = match &self.model {
                    Some(m) => m.canonical(source),
                    None => source,
                };
                self.agg
                    .outbox_lag(service, at.micros_since(env.time).max(0));
            }
        }
    }

    /// An event decoded straight into its compact form (see [`crate::compact`]).
    fn ingest_compact_event(&mut self, e: CompactEvent, names: &mut Translation) {
        let ty = names.sym(e.ty, &mut self.syms);
        let source = names.sym(e.source, &mut self.syms);
        let topic = names.sym(e.topic, &mut self.syms);
        self.place_event(
            &e.correlation,
            Ev {
                id: e.id,
                cause: e.cause,
                ty,
                source,
                topic,
                time: e.time,
                partition: e.partition.unwrap_or(NO_PARTITION),
                offset: e.offset.unwrap_or(NO_OFFSET),
            },
            None,
        );
    }

    /// Adds an event (its source not yet made canonical) to its flow, or
    /// collapses it into the copy it duplicates; `malformed` says what is
    /// wrong with a record its source could only partly read. True when the
    /// event was new to its flow.
    fn place_event(&mut self, corr: &EventId, mut ev: Ev, malformed: Option<&str>) -> bool {
        let time = ev.time;
        self.bump_time(time);
        self.counters.events += 1;
        if let Some(m) = &self.model {
            ev.source = m.canonical(ev.source);
        }
        let Some(flow) = self.flow_for(corr, time, Some(ev.ty)) else {
            return false;
        };
        flow.last_activity = flow.last_activity.max(time);
        // Something changed: judge it again at the next tick.
        flow.next_check = i64::MIN;
        if let Some(i) = flow.find(&ev.id) {
            // At-least-once: the same event again. Keep the first, fill in its position.
            flow.duplicates += 1;
            let e = &mut flow.events[i];
            if e.partition == NO_PARTITION {
                e.partition = ev.partition;
                e.offset = ev.offset;
            }
            self.counters.duplicates += 1;
            return false;
        }
        let id = malformed.is_some().then(|| ev.id.clone());
        flow.push_event(ev);
        if let (Some(problem), Some(id)) = (malformed, id) {
            // No service can read it: every one that receives it dead-letters it.
            flow.dead.push(Dl {
                event: id,
                service: EMPTY,
                reason: problem.into(),
                attempts: 0,
                at: None,
                malformed: true,
                marker: true,
            });
            self.records_in_flight += 1;
        }
        self.records_in_flight += 1;
        self.after_growth(corr);
        true
    }

    /// Notes that `service` handled (or gave up on) an event of type `ty`.
    #[inline]
    fn saw_handler(&mut self, ty: Sym, service: Sym) {
        let ty = ty as usize;
        if self.handlers.len() <= ty {
            self.handlers.resize(ty + 1, Vec::new());
        }
        let seen = &mut self.handlers[ty];
        if !seen.contains(&service) {
            seen.push(service);
        }
    }

    #[inline]
    fn bump_time(&mut self, t: i64) {
        if t > self.max_time {
            self.max_time = t;
        }
    }

    /// The flow a record belongs to, created if new; `None` for a late record
    /// of an evicted flow.
    fn flow_for(&mut self, corr: &EventId, time: i64, ty: Option<Sym>) -> Option<&mut FlowState> {
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
        let name = self.model.as_ref().and_then(|m| m.flow_of(ty?));
        // A flow rebuilt from a replay is counted once adopted.
        if !self.replaying {
            self.count_started(name);
        }
        if self.config.max_flows != usize::MAX {
            self.created.push_back(corr.clone());
        }
        let mut state = FlowState::new(time, name);
        state.home = self.at_partition;
        state.restoring = self.replaying;
        let i = self.flows.insert(corr.clone(), state);
        Some(self.flows.at_mut(i))
    }

    fn count_started(&mut self, name: Option<usize>) {
        self.agg.started(name);
        if let (Some(m), Some(metrics)) = (&self.model, &self.metrics) {
            metrics.flow_started(name.map(|n| m.flows[n].name.as_str()));
        } else if let Some(metrics) = &self.metrics {
            metrics.flow_started(None);
        }
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
            if state.restoring {
                // Not this tracer's to judge (yet): dropped unsaid, within
                // the caps, counted with the replay's counters (which are
                // `self.counters` while a replayed record is ingested).
                if self.replaying {
                    self.counters.evicted(reason);
                } else {
                    self.replay_counters.evicted(reason);
                }
                self.remember_evicted(corr.clone());
                return;
            }
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
        let mut due: Vec<(EventId, Due)> = Vec::new();
        for (id, f) in self.flows.iter() {
            if f.restoring {
                continue;
            }
            let quiet = now_us.saturating_sub(f.last_activity);
            if quiet >= idle {
                due.push((id.clone(), Due::Idle));
            } else if !has_model && quiet >= settle {
                due.push((id.clone(), Due::Settled));
            } else if has_model && now_us >= f.next_check {
                due.push((id.clone(), Due::Check));
            }
        }
        for (id, why) in due {
            let Some(state) = self.flows.remove(&id) else {
                continue;
            };
            if why != Due::Check {
                let evicted = (why == Due::Idle).then_some(EvictReason::Idle);
                self.records_in_flight -= state.records();
                if let Some(r) = evicted {
                    self.counters.evicted(r);
                    if let Some(m) = &self.metrics {
                        m.evicted(r);
                    }
                }
                self.remember_evicted(id.clone());
                self.finalize(id, state, now_us, evicted);
                continue;
            }
            let a = self.analyse(&id, &state, now_us);
            let at_rest = matches!(
                a.status,
                FlowStatus::Completed | FlowStatus::Failed | FlowStatus::Recovered
            );
            let settled_at = state.last_activity.saturating_add(settle);
            if a.status == FlowStatus::Stuck {
                // Reported, and evicted: what it owes will not come now.
                self.records_in_flight -= state.records();
                self.counters.evicted(EvictReason::Stuck);
                if let Some(m) = &self.metrics {
                    m.evicted(EvictReason::Stuck);
                }
                self.remember_evicted(id.clone());
                self.fold(id, &state, a, None);
            } else if at_rest && a.next_deadline.is_none() && now_us >= settled_at {
                // At rest, quiet for the settle time (late receipts had
                // their chance), and nothing owed that may still come.
                self.records_in_flight -= state.records();
                self.remember_evicted(id.clone());
                self.fold(id, &state, a, None);
            } else {
                // The others wait: for their next deadline (an owed
                // reaction, a sink's receipt, is judged when its bound
                // passes), or, at rest, to settle.
                let mut state = state;
                state.next_check = match a.next_deadline {
                    Some(d) => d,
                    None if at_rest => settled_at,
                    None => i64::MAX,
                };
                self.flows.insert(id, state);
            }
        }
        self.update_gauges(now_us);
    }

    /// Ends a restore: decides, for every flow rebuilt from replayed records
    /// (see [`Tracer::ingest_replayed`]), whether the partition's previous
    /// owner had judged it already, as a tick at that owner's clock would
    /// have (`horizon(partition).clock`, else `now`): stuck, settled at
    /// rest, or idle. Those are dropped unsaid (their later records count as
    /// late, as they did for the previous owner). The others are adopted:
    /// counted as started here and judged from the next tick on; those
    /// missing their first event while the replay was cut by the horizon are
    /// marked [`FlowSummary::before_horizon`](crate::FlowSummary::before_horizon).
    pub fn restored(&mut self, now: Timestamp, horizon: impl Fn(u32) -> Horizon) -> Restored {
        let settle = i64::try_from(self.config.settle.as_micros()).unwrap_or(i64::MAX);
        let idle = i64::try_from(self.config.idle.as_micros()).unwrap_or(i64::MAX);
        let ids: Vec<EventId> = self
            .flows
            .iter()
            .filter(|(_, f)| f.restoring)
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Restored::default();
        for id in ids {
            let Some(mut state) = self.flows.remove(&id) else {
                continue;
            };
            let h = horizon(state.home);
            let at = h.clock.unwrap_or(now).as_micros();
            let quiet = at.saturating_sub(state.last_activity);
            let judged = if quiet >= idle {
                true
            } else if self.model.is_none() {
                quiet >= settle
            } else {
                let a = self.analyse(&id, &state, at);
                let at_rest = matches!(
                    a.status,
                    FlowStatus::Completed | FlowStatus::Failed | FlowStatus::Recovered
                );
                a.status == FlowStatus::Stuck
                    || (at_rest
                        && a.next_deadline.is_none()
                        && at >= state.last_activity.saturating_add(settle))
            };
            if judged {
                self.records_in_flight -= state.records();
                self.remember_evicted(id);
                out.judged_before += 1;
                continue;
            }
            state.restoring = false;
            state.next_check = i64::MIN;
            if h.cut && state.find(&id).is_none() {
                state.before_horizon = true;
                out.before_horizon += 1;
                self.counters.before_horizon += 1;
            }
            self.count_started(state.name);
            self.flows.insert(id, state);
            out.adopted += 1;
        }
        out
    }

    /// Gives up, unjudged, every flow whose first record came from a
    /// partition (by number) `lost` says: a consumer-group member whose
    /// partitions were reassigned, or that leaves the group (their next owner
    /// restores and judges those flows). Returns how many.
    pub fn hand_over(&mut self, lost: impl Fn(u32) -> bool) -> u64 {
        let ids: Vec<EventId> = self
            .flows
            .iter()
            .filter(|(_, f)| lost(f.home))
            .map(|(id, _)| id.clone())
            .collect();
        let mut n = 0;
        for id in ids {
            if let Some(state) = self.flows.remove(&id) {
                self.records_in_flight -= state.records();
                if !state.restoring {
                    self.counters.handed_over += 1;
                    n += 1;
                }
            }
        }
        n
    }

    fn update_gauges(&self, now_us: i64) {
        if let Some(m) = &self.metrics {
            m.gauges(
                &Gauges {
                    counters: &self.counters,
                    records_in_flight: self.records_in_flight,
                    in_flight_by_flow: self.in_flight_by_flow(),
                    latest: self.latest(),
                },
                now_us,
            );
        }
    }

    /// Ends a batch: every flow still in flight is finished as of `now` (by
    /// default the latest timestamp seen in the input): completed, failed,
    /// stuck or still in progress.
    pub fn finish(&mut self, now: Option<Timestamp>) {
        self.now_given = now.is_some();
        let now_us = self.effective_now(now);
        self.now = now_us;
        let mut flows = self.flows.take_all();
        self.created.clear();
        self.records_in_flight = 0;
        // A stable order, so reports and examples do not depend on hashing.
        flows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let ctx = Ctx {
            model: self.model.as_ref(),
            syms: &self.syms,
            config: &self.config,
            receipts_expected: self.receipts_expected(),
            handlers: &self.handlers,
        };
        let batch = fold::Batch {
            ctx: &ctx,
            metrics: self.metrics.as_ref(),
            keep: &self.also_keep,
            now: now_us,
            recent_from: None,
        };
        let out = Out {
            log: self.log.as_mut(),
            flows: self.flows_out.as_mut(),
        };
        let orphans = fold::finish_batch(
            batch,
            &mut self.agg,
            &mut self.kept,
            &mut self.recent,
            out,
            flows,
        );
        self.counters.orphans += orphans;
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
            handlers: &self.handlers,
        };
        let mut out = Out {
            log: self.log.as_mut(),
            flows: self.flows_out.as_mut(),
        };
        let mut folder = Folder::new(
            &ctx,
            self.metrics.as_ref(),
            &mut self.agg,
            &self.also_keep,
            out.shape(),
        );
        // `a` was just analysed: the scratch holds this flow's time order.
        folder.flow(&id, state, &a, evicted, &self.scratch.order);
        let Folder {
            orphans,
            kept,
            recent,
            out: chunk,
            ..
        } = folder;
        self.counters.orphans += orphans;
        self.kept.extend(kept);
        recent.into_iter().for_each(|t| self.recent.push(t));
        out.write(&chunk);
    }

    /// Flows kept whole (see [`TracerConfig::keep`]), in the order they finished.
    pub fn kept(&self) -> &[FlowTrace] {
        &self.kept
    }

    /// The flow with this correlation id as it stands now: still in flight,
    /// kept, or among the recent flows.
    pub fn flow(&mut self, correlation_id: &EventId) -> Option<FlowTrace> {
        if !self.flows.contains_key(correlation_id) {
            return self
                .kept
                .iter()
                .find(|t| &t.correlation_id == correlation_id)
                .or_else(|| self.recent.get(correlation_id))
                .cloned();
        }
        let now = self.effective_now(None);
        let state = self.flows.remove(correlation_id)?;
        let a = self.analyse(correlation_id, &state, now);
        let trace = build_trace(&self.ctx(), correlation_id, &state, &a, &self.scratch.order);
        self.flows.insert(correlation_id.clone(), state);
        Some(trace)
    }

    /// "Now" as the tracer judges flows: the latest of the clock it was
    /// ticked with and the newest record's time; `None` before any.
    pub fn now(&self) -> Option<Timestamp> {
        let now = self.effective_now(None);
        (now != i64::MIN).then(|| Timestamp::from_micros(now))
    }

    /// The flows finished last, whole, oldest first: the newest
    /// [`TracerConfig::recent_flows`] of them.
    pub fn recent(&self) -> impl DoubleEndedIterator<Item = &FlowTrace> {
        self.recent.iter()
    }

    /// The flows in flight judged as of the latest time seen, the most
    /// recently active first, at most `max` (only those are judged: a viewer
    /// asks for a page, not for all of them).
    pub fn in_flight(&self, max: usize) -> Vec<FlowTrace> {
        let mut active: Vec<(i64, &EventId, &FlowState)> = self
            .flows
            .iter()
            .map(|(id, f)| (f.last_activity, id, f))
            .collect();
        if active.len() > max {
            active.select_nth_unstable_by(max, |a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
            active.truncate(max);
        }
        active.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let now = self.effective_now(None);
        let ctx = self.ctx();
        let mut scratch = Scratch::default();
        active
            .into_iter()
            .map(|(_, id, f)| {
                let a = analyse(&ctx, &mut scratch, id, f, now);
                build_trace(&ctx, id, f, &a, &scratch.order)
            })
            .collect()
    }

    /// Correlation ids of the flows that have what `query` looks for, newest
    /// first, at most `max`: by event or correlation id among the flows in
    /// flight and the recent flows, and by record key or payload field among
    /// the events of the search window ([`TracerConfig::search_bytes`]).
    pub fn find(&self, query: &Query, max: usize) -> Vec<EventId> {
        let mut out = Vec::new();
        if let Some(id) = query.id() {
            let held = |corr: &EventId| corr == id;
            for (corr, f) in self.flows.iter() {
                if held(corr) || f.find(id).is_some() {
                    out.push(corr.clone());
                }
            }
            for t in self.recent.iter().rev() {
                if !out.contains(&t.correlation_id)
                    && (held(&t.correlation_id) || t.events().any(|e| &e.id == id))
                {
                    out.push(t.correlation_id.clone());
                }
            }
        }
        self.search.find(query, max, &mut out);
        out.truncate(max);
        out
    }

    /// The JSON payloads of flow `correlation_id`'s events that the search
    /// window still holds ([`TracerConfig::search_bytes`]), by event id:
    /// nothing unless a search window is kept, and only JSON payloads of at
    /// most 16 KiB.
    pub fn held_payloads(&self, correlation_id: &EventId) -> Vec<(EventId, String)> {
        self.search.payloads(correlation_id)
    }

    /// Everything known so far: counts, flows by status, findings, the service graph.
    pub fn report(&self) -> Report {
        let model = self.model.as_ref();
        let (by_flow, mut flows) = self.agg.flow_reports(model);
        flows.in_flight = self.flows.len() as u64;
        Report::build(ReportParts {
            now: (self.now != i64::MIN || self.max_time != i64::MIN)
                .then(|| Timestamp::from_micros(self.now.max(self.max_time))),
            now_from: if self.now_given {
                NowFrom::Given
            } else {
                NowFrom::LatestRecord
            },
            topology: model.map(|m| m.name.clone()),
            input: self.counters.clone(),
            flows,
            by_flow,
            findings: self.agg.rule_reports(&self.syms),
            edges: self.agg.edge_reports(&self.syms),
            outbox: self.agg.outbox_reports(&self.syms),
            listed: self.agg.briefs().to_vec(),
        })
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
            handlers: &self.handlers,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tracer_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<super::Tracer>();
        send::<crate::capture::Reader>();
        send::<crate::Report>();
    }
}

/// Why a flow is looked at in a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// No activity for the idle timeout: evicted.
    Idle,
    /// Without a topology, quiet for the settle time.
    Settled,
    /// A deadline may have passed, or something changed.
    Check,
}

/// The record a malformed dead-letter copy stands for: (event id,
/// correlation id). A copy kept as it was received is no more readable than
/// its original, so a source derives its ids from where it read it
/// (`<topic>/<partition>/<offset>`, the Kafka backend's convention); those of
/// the original are then the same derived from the origin the copy's
/// headers name. `None` when the copy's ids were its own.
fn stands_for(env: &Envelope, position: Option<(u32, u64)>) -> Option<(EventId, EventId)> {
    let (partition, offset) = position?;
    let derived = format!("{}/{partition}/{offset}", env.topic);
    if env.id.to_string() != derived {
        return None;
    }
    let origin = format!(
        "{}/{}/{}",
        env.headers.get_str(dlq_headers::TOPIC)?,
        env.headers.get_str(dlq_headers::PARTITION)?,
        env.headers.get_str(dlq_headers::OFFSET)?
    );
    let id = EventId::parse(&origin)?;
    let correlation = if env.correlation_id == env.id {
        id.clone()
    } else {
        env.correlation_id.clone()
    };
    Some((id, correlation))
}
