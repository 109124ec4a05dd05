//! Aggregates and the report: flows by status, findings, the service graph, a verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use choreo_core::{EventId, Outcome, Timestamp};
use serde::Serialize;

use crate::config::TracerConfig;
use crate::engine::{Analysis, FlowState, Tracer};
use crate::finding::{Finding, Rule};
use crate::flow::{FlowStatus, FlowTrace, Owed};
use crate::metrics::{EdgeMetrics, TraceMetrics};
use crate::model::{EMPTY, Model, Sym, Symbols};
use crate::stats::{Histogram, Quantiles, format_micros};
use crate::util::FastMap;

/// Why a flow was evicted before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EvictReason {
    /// Too many flows in flight.
    FlowCap,
    /// Too many records in flight.
    RecordCap,
    /// One flow held too many records.
    FlowRecordCap,
    /// Reported stuck.
    Stuck,
    /// No activity for the idle timeout.
    Idle,
}

impl EvictReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::FlowCap => "flow_cap",
            EvictReason::RecordCap => "record_cap",
            EvictReason::FlowRecordCap => "flow_record_cap",
            EvictReason::Stuck => "stuck",
            EvictReason::Idle => "idle",
        }
    }
}

/// What the tracer read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Records ingested (everything).
    pub records: u64,
    /// Business events (distinct or not).
    pub events: u64,
    /// Receipts of handlings (`ignored` ones, for events a service has no
    /// handler for, are not counted).
    pub receipts: u64,
    /// Dead-letter copies.
    pub dead_letters: u64,
    /// Events seen again (same id) and collapsed.
    pub duplicates: u64,
    /// Records without choreo metadata (no correlation id or type), placed in no flow.
    pub unattributed: u64,
    /// Receipts whose payload could not be read (also counted as unattributed).
    pub bad_receipts: u64,
    /// Records of flows already evicted.
    pub late: u64,
    /// Events whose cause is not in their flow.
    pub orphans: u64,
    /// Flows evicted because the flow cap was reached.
    pub evicted_flow_cap: u64,
    /// Flows evicted because the record cap was reached.
    pub evicted_record_cap: u64,
    /// Flows evicted because they held too many records.
    pub evicted_flow_record_cap: u64,
    /// Stuck flows reported and evicted (live mode).
    pub evicted_stuck: u64,
    /// Flows evicted after the idle timeout.
    pub evicted_idle: u64,
}

impl Counters {
    pub(crate) fn evicted(&mut self, r: EvictReason) {
        match r {
            EvictReason::FlowCap => self.evicted_flow_cap += 1,
            EvictReason::RecordCap => self.evicted_record_cap += 1,
            EvictReason::FlowRecordCap => self.evicted_flow_record_cap += 1,
            EvictReason::Stuck => self.evicted_stuck += 1,
            EvictReason::Idle => self.evicted_idle += 1,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct FlowStats {
    started: u64,
    /// Starts moved here (+) or away (−) once a flow's name was known.
    moved: i64,
    completed: u64,
    failed: u64,
    in_progress: u64,
    stuck: u64,
    evicted: u64,
    duration: Histogram,
}

#[derive(Default)]
pub(crate) struct EdgeStats {
    count: u64,
    failed: u64,
    redelivered: u64,
    duplicates: u64,
    inferred: u64,
    queue: Histogram,
    handler: Histogram,
    latency: Histogram,
    metrics: Option<EdgeMetrics>,
}

/// Everything folded from finished flows.
#[derive(Default)]
pub(crate) struct Aggregates {
    edges: FastMap<(Sym, Sym, Sym), EdgeStats>,
    by_flow: FastMap<Option<usize>, FlowStats>,
    findings: FastMap<(Rule, Sym, Sym), u64>,
    examples: BTreeMap<Rule, Vec<Finding>>,
    briefs: Vec<FlowBrief>,
}

impl Aggregates {
    pub(crate) fn started(&mut self, name: Option<usize>) {
        self.by_flow.entry(name).or_default().started += 1;
    }

    /// Adds everything `other` folded after what this one folded: the
    /// same result as folding both in one, in that order.
    pub(crate) fn merge(&mut self, other: Aggregates, config: &TracerConfig) {
        for (k, e) in other.edges {
            match self.edges.get_mut(&k) {
                Some(mine) => {
                    mine.count += e.count;
                    mine.failed += e.failed;
                    mine.redelivered += e.redelivered;
                    mine.duplicates += e.duplicates;
                    mine.inferred += e.inferred;
                    mine.queue.merge(&e.queue);
                    mine.handler.merge(&e.handler);
                    mine.latency.merge(&e.latency);
                }
                None => {
                    self.edges.insert(k, e);
                }
            }
        }
        for (k, f) in other.by_flow {
            let mine = self.by_flow.entry(k).or_default();
            mine.started += f.started;
            mine.moved += f.moved;
            mine.completed += f.completed;
            mine.failed += f.failed;
            mine.in_progress += f.in_progress;
            mine.stuck += f.stuck;
            mine.evicted += f.evicted;
            mine.duration.merge(&f.duration);
        }
        for (k, n) in other.findings {
            *self.findings.entry(k).or_default() += n;
        }
        for (_, examples) in other.examples {
            for f in examples {
                self.push_example(f, config);
            }
        }
        for b in other.briefs {
            self.push_brief(b, config);
        }
    }

    pub(crate) fn wants_brief(&self, status: FlowStatus, config: &TracerConfig) -> bool {
        matches!(status, FlowStatus::Stuck | FlowStatus::Failed)
            && self.briefs.len() < config.listed_flows
    }

    pub(crate) fn push_brief(&mut self, brief: FlowBrief, config: &TracerConfig) {
        if self.briefs.len() < config.listed_flows {
            self.briefs.push(brief);
        }
    }

    pub(crate) fn wants_example(&self, rule: Rule, config: &TracerConfig) -> bool {
        self.examples
            .get(&rule)
            .is_none_or(|v| v.len() < config.examples_per_rule)
    }

    pub(crate) fn push_example(&mut self, f: Finding, config: &TracerConfig) {
        let v = self.examples.entry(f.rule).or_default();
        // One example per flow: the report shows different flows.
        if v.len() < config.examples_per_rule
            && !v.iter().any(|x| x.correlation_id == f.correlation_id)
        {
            v.push(f);
        }
    }

    pub(crate) fn fold_flow(
        &mut self,
        state: &FlowState,
        a: &Analysis,
        evicted: Option<EvictReason>,
        syms: &Symbols,
        model: Option<&Model>,
        metrics: Option<&TraceMetrics>,
    ) {
        let flow_name = a.name.and_then(|n| model.map(|m| m.flows[n].name.as_str()));
        if a.name != state.name {
            // Started was counted under the flow the first record suggested;
            // the whole flow says otherwise. Kept as a difference, so folds on
            // several threads add up.
            self.by_flow.entry(state.name).or_default().moved -= 1;
            self.by_flow.entry(a.name).or_default().moved += 1;
        }
        let st = self.by_flow.entry(a.name).or_default();
        match a.status {
            FlowStatus::Completed => st.completed += 1,
            FlowStatus::Failed => st.failed += 1,
            FlowStatus::InProgress => st.in_progress += 1,
            FlowStatus::Stuck => st.stuck += 1,
        }
        if matches!(
            evicted,
            Some(
                EvictReason::FlowCap
                    | EvictReason::RecordCap
                    | EvictReason::FlowRecordCap
                    | EvictReason::Idle
            )
        ) {
            st.evicted += 1;
        }
        let duration = match (a.status, a.end) {
            (FlowStatus::Completed | FlowStatus::Failed, Some(end)) => {
                Some(end.saturating_sub(a.start))
            }
            _ => None,
        };
        if a.status == FlowStatus::Completed
            && let Some(d) = duration
        {
            st.duration.record(d);
        }
        if let Some(m) = metrics {
            m.flow_finished(flow_name, a.status, duration);
        }
        for f in &a.findings {
            *self
                .findings
                .entry((f.rule, f.service, f.event_type))
                .or_default() += 1;
            if let Some(m) = metrics {
                m.violation(f.rule, syms.name(f.service));
            }
        }
        // Edges from receipts.
        for r in &state.receipts {
            let ev = state.events.iter().find(|e| e.id == r.event);
            let producer = ev.map_or(EMPTY, |e| e.source);
            let edge = self.edge(producer, r.ty, r.service, syms, metrics);
            let failed = matches!(r.outcome, Outcome::DeadLettered | Outcome::Redelivered);
            match r.outcome {
                Outcome::Duplicate => edge.duplicates += 1,
                Outcome::Redelivered => edge.redelivered += 1,
                Outcome::DeadLettered => edge.failed += 1,
                Outcome::Acked | Outcome::Ignored => {}
            }
            if r.outcome == Outcome::Duplicate {
                continue;
            }
            edge.count += 1;
            let handler = r.duration_us as i64;
            edge.handler.record(handler);
            let queue = ev.map(|e| r.started.saturating_sub(e.time).max(0));
            if let Some(q) = queue {
                edge.queue.record(q);
                edge.latency.record(q.saturating_add(handler));
            }
            if let Some(em) = &edge.metrics {
                em.observe(failed, queue, Some(handler));
            }
        }
        // Edges seen only through causation (no receipt from the consumer).
        let mut pairs: Vec<(usize, Sym)> = Vec::new();
        for kid in &state.events {
            let Some(cause) = &kid.cause else { continue };
            let Some(p) = state.events.iter().position(|e| &e.id == cause) else {
                continue;
            };
            if pairs.contains(&(p, kid.source)) {
                continue;
            }
            pairs.push((p, kid.source));
            let parent = &state.events[p];
            if state
                .receipts
                .iter()
                .any(|r| r.event == parent.id && r.service == kid.source)
            {
                continue;
            }
            let first = state
                .events
                .iter()
                .filter(|e| e.cause.as_ref() == Some(&parent.id) && e.source == kid.source)
                .map(|e| e.time)
                .min()
                .unwrap_or(kid.time);
            let edge = self.edge(parent.source, parent.ty, kid.source, syms, metrics);
            edge.count += 1;
            edge.inferred += 1;
            let latency = first.saturating_sub(parent.time).max(0);
            edge.latency.record(latency);
            if let Some(em) = &edge.metrics {
                em.observe(false, Some(latency), None);
            }
        }
    }

    fn edge(
        &mut self,
        producer: Sym,
        ty: Sym,
        consumer: Sym,
        syms: &Symbols,
        metrics: Option<&TraceMetrics>,
    ) -> &mut EdgeStats {
        self.edges
            .entry((producer, ty, consumer))
            .or_insert_with(|| EdgeStats {
                metrics: metrics.map(|m| {
                    m.edge(
                        label(syms.name(producer)),
                        syms.name(ty),
                        label(syms.name(consumer)),
                    )
                }),
                ..EdgeStats::default()
            })
    }
}

fn label(name: &str) -> &str {
    if name.is_empty() { "unknown" } else { name }
}

/// A stuck or failed flow, listed in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowBrief {
    /// The correlation id.
    pub correlation_id: EventId,
    /// The flow name.
    pub flow: Option<String>,
    /// Its status.
    pub status: FlowStatus,
    /// Its first event's time.
    pub started: Timestamp,
    /// The rules it broke, each once.
    pub rules: Vec<Rule>,
    /// What is owed (stuck flows).
    pub owed: Vec<Owed>,
}

impl FlowBrief {
    pub(crate) fn of(t: &FlowTrace) -> FlowBrief {
        let mut rules: Vec<Rule> = t.findings.iter().map(|f| f.rule).collect();
        rules.sort_unstable();
        rules.dedup();
        FlowBrief {
            correlation_id: t.correlation_id.clone(),
            flow: t.flow.clone(),
            status: t.status,
            started: t.started,
            rules,
            owed: t.owed.clone(),
        }
    }
}

/// Flow counts by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FlowTotals {
    /// Flows seen.
    pub started: u64,
    /// Reached a declared end.
    pub completed: u64,
    /// Dead-lettered, or came to rest on a non-end.
    pub failed: u64,
    /// Still owed events, no deadline passed (at the end of a batch: as of "now").
    pub in_progress: u64,
    /// Past a `within` with events owed.
    pub stuck: u64,
    /// Evicted by a cap or the idle timeout before finishing.
    pub evicted: u64,
    /// Still held in flight (live mode).
    pub in_flight: u64,
}

/// One flow name's counts and durations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowNameReport {
    /// The flow name (`unknown` for flows whose first event starts no declared flow).
    pub flow: String,
    /// Counts.
    #[serde(flatten)]
    pub totals: FlowTotals,
    /// Durations of completed flows.
    pub duration: Quantiles,
}

/// One rule's findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleReport {
    /// The rule.
    pub rule: Rule,
    /// What it checks.
    pub summary: &'static str,
    /// Findings in all.
    pub count: u64,
    /// Findings by service and event type, most first.
    pub by: Vec<RuleSite>,
    /// A few example findings, from different flows.
    pub examples: Vec<Finding>,
}

/// Where a rule was broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSite {
    /// The service.
    pub service: String,
    /// The event type.
    pub event_type: String,
    /// How often.
    pub count: u64,
}

/// One edge of the service graph: `producer --event_type--> consumer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeReport {
    /// The publishing service (`unknown` when the event was not captured).
    pub producer: String,
    /// The event type.
    pub event_type: String,
    /// The consuming service.
    pub consumer: String,
    /// Deliveries handled (receipts other than duplicates, plus edges seen
    /// only through causation).
    pub count: u64,
    /// Dead-lettered deliveries.
    pub failed: u64,
    /// Deliveries given back for redelivery.
    pub redelivered: u64,
    /// Duplicate deliveries skipped by idempotency.
    pub duplicates: u64,
    /// Deliveries known only from causation (no receipt).
    pub inferred: u64,
    /// Publish → handler start, µs (from receipts).
    pub queue: Quantiles,
    /// Handler time, µs (from receipts).
    pub handler: Quantiles,
    /// Publish → handler done (or → first emission, without receipts), µs.
    pub latency: Quantiles,
}

/// Everything the tracer knows: the stable JSON of `choreo trace --format json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The "now" flows were judged at (latest input timestamp, or `--now`).
    pub now: Option<Timestamp>,
    /// The topology checked against.
    pub topology: Option<String>,
    /// What was read.
    pub input: Counters,
    /// Flows by status.
    pub flows: FlowTotals,
    /// Per flow name.
    pub by_flow: Vec<FlowNameReport>,
    /// Findings by rule, most frequent first.
    pub findings: Vec<RuleReport>,
    /// The service graph's nodes: every service on an edge, sorted.
    pub services: Vec<String>,
    /// The service graph's edges, busiest first.
    pub edges: Vec<EdgeReport>,
    /// Stuck and failed flows (at most `listed_flows`).
    pub listed: Vec<FlowBrief>,
    /// True when nothing was found: no findings, no failed or stuck flows.
    pub ok: bool,
    /// One line.
    pub verdict: String,
}

impl Report {
    pub(crate) fn build(t: &Tracer) -> Report {
        let model = t.model.as_ref();
        let flow_label = |n: Option<usize>| -> String {
            n.and_then(|n| model.map(|m| m.flows[n].name.to_string()))
                .unwrap_or_else(|| "unknown".to_owned())
        };
        let mut totals = FlowTotals::default();
        let mut by_flow: Vec<FlowNameReport> = t
            .agg
            .by_flow
            .iter()
            .filter(|(_, s)| {
                s.started as i64 + s.moved != 0
                    || s.completed + s.failed + s.in_progress + s.stuck + s.evicted > 0
            })
            .map(|(n, s)| {
                let ft = FlowTotals {
                    started: u64::try_from(s.started as i64 + s.moved).unwrap_or(0),
                    completed: s.completed,
                    failed: s.failed,
                    in_progress: s.in_progress,
                    stuck: s.stuck,
                    evicted: s.evicted,
                    in_flight: 0,
                };
                totals.started += ft.started;
                totals.completed += ft.completed;
                totals.failed += ft.failed;
                totals.in_progress += ft.in_progress;
                totals.stuck += ft.stuck;
                totals.evicted += ft.evicted;
                FlowNameReport {
                    flow: flow_label(*n),
                    totals: ft,
                    duration: s.duration.summary(),
                }
            })
            .collect();
        totals.in_flight = t.flows_in_flight() as u64;
        by_flow.sort_by(|a, b| {
            b.totals
                .started
                .cmp(&a.totals.started)
                .then(a.flow.cmp(&b.flow))
        });

        let mut rules: BTreeMap<Rule, (u64, Vec<RuleSite>)> = BTreeMap::new();
        for ((rule, svc, ty), count) in &t.agg.findings {
            let e = rules.entry(*rule).or_default();
            e.0 += count;
            e.1.push(RuleSite {
                service: t.name(*svc).to_string(),
                event_type: t.name(*ty).to_string(),
                count: *count,
            });
        }
        let mut findings: Vec<RuleReport> = rules
            .into_iter()
            .map(|(rule, (count, mut by))| {
                by.sort_by(|a, b| {
                    b.count
                        .cmp(&a.count)
                        .then_with(|| a.service.cmp(&b.service))
                        .then_with(|| a.event_type.cmp(&b.event_type))
                });
                RuleReport {
                    rule,
                    summary: rule.summary(),
                    count,
                    by,
                    examples: t.agg.examples.get(&rule).cloned().unwrap_or_default(),
                }
            })
            .collect();
        findings.sort_by(|a, b| b.count.cmp(&a.count).then(a.rule.cmp(&b.rule)));

        let mut edges: Vec<EdgeReport> = t
            .agg
            .edges
            .iter()
            .map(|((p, ty, c), s)| EdgeReport {
                producer: label(t.name(*p)).to_owned(),
                event_type: t.name(*ty).to_string(),
                consumer: label(t.name(*c)).to_owned(),
                count: s.count,
                failed: s.failed,
                redelivered: s.redelivered,
                duplicates: s.duplicates,
                inferred: s.inferred,
                queue: s.queue.summary(),
                handler: s.handler.summary(),
                latency: s.latency.summary(),
            })
            .collect();
        edges.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.producer.cmp(&b.producer))
                .then_with(|| a.event_type.cmp(&b.event_type))
                .then_with(|| a.consumer.cmp(&b.consumer))
        });
        let violations: u64 = findings.iter().map(|f| f.count).sum();
        let ok = violations == 0 && totals.failed == 0 && totals.stuck == 0;
        let finished = totals.completed + totals.failed + totals.stuck + totals.in_progress;
        let verdict = if t.counters.records == 0 {
            "no records: nothing to trace".to_owned()
        } else if ok {
            format!(
                "ok: {} flow{} traced{}, no violations",
                finished,
                plural(finished),
                match &model {
                    Some(m) => format!(" against '{}'", m.name),
                    None => " (no topology: structure only)".to_owned(),
                }
            )
        } else {
            let mut parts = Vec::new();
            if violations > 0 {
                parts.push(format!(
                    "{violations} violation{} of {} rule{}",
                    plural(violations),
                    findings.len(),
                    plural(findings.len() as u64)
                ));
            }
            if totals.failed > 0 {
                parts.push(format!("{} failed", totals.failed));
            }
            if totals.stuck > 0 {
                parts.push(format!("{} stuck", totals.stuck));
            }
            format!(
                "NOT OK: {} in {finished} flow{}",
                parts.join(", "),
                plural(finished)
            )
        };
        Report {
            now: (t.now != i64::MIN || t.max_time != i64::MIN)
                .then(|| Timestamp::from_micros(t.now.max(t.max_time))),
            topology: model.map(|m| m.name.clone()),
            input: t.counters.clone(),
            flows: totals,
            by_flow,
            findings,
            services: services_of(&edges),
            edges,
            listed: t.agg.briefs.clone(),
            ok,
            verdict,
        }
    }

    /// The human summary: flows by status, top violations with an example flow
    /// each, the slowest edges, and the verdict.
    pub fn summary(&self) -> String {
        let mut o = String::new();
        let i = &self.input;
        let _ = writeln!(
            o,
            "read {} records: {} events, {} receipts, {} dead-letter copies; {} duplicates collapsed, {} unattributed{}",
            i.records,
            i.events,
            i.receipts,
            i.dead_letters,
            i.duplicates,
            i.unattributed,
            if i.late > 0 {
                format!(", {} late", i.late)
            } else {
                String::new()
            }
        );
        if let Some(now) = self.now {
            let _ = writeln!(
                o,
                "judged at {now}{}",
                match &self.topology {
                    Some(t) => format!(" against topology '{t}'"),
                    None => " without a topology (structure only)".to_owned(),
                }
            );
        }
        if !self.by_flow.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "{:<20} {:>9} {:>9} {:>9} {:>11} {:>9} {:>10} {:>10}",
                "flow", "started", "completed", "failed", "in progress", "stuck", "p50", "p99"
            );
            for f in &self.by_flow {
                let t = &f.totals;
                let _ = writeln!(
                    o,
                    "{:<20} {:>9} {:>9} {:>9} {:>11} {:>9} {:>10} {:>10}",
                    f.flow,
                    t.started,
                    t.completed,
                    t.failed,
                    t.in_progress,
                    t.stuck,
                    if f.duration.count > 0 {
                        format_micros(f.duration.p50_us)
                    } else {
                        "-".into()
                    },
                    if f.duration.count > 0 {
                        format_micros(f.duration.p99_us)
                    } else {
                        "-".into()
                    },
                );
            }
        }
        if self.flows.evicted > 0 || self.flows.in_flight > 0 {
            let _ = writeln!(
                o,
                "({} evicted, {} in flight)",
                self.flows.evicted, self.flows.in_flight
            );
        }
        if !self.findings.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(o, "violations by rule:");
            for r in self.findings.iter().take(10) {
                let top: Vec<String> =
                    r.by.iter()
                        .take(3)
                        .map(|s| {
                            let mut who = String::new();
                            if !s.service.is_empty() {
                                who.push_str(&s.service);
                            }
                            if !s.event_type.is_empty() {
                                if !who.is_empty() {
                                    who.push('/');
                                }
                                who.push_str(&s.event_type);
                            }
                            format!("{who} ×{}", s.count)
                        })
                        .collect();
                let _ = writeln!(
                    o,
                    "  {:<19} {:>8}  {}",
                    r.rule.code(),
                    r.count,
                    top.join(", ")
                );
                if let Some(ex) = r.examples.first() {
                    let _ = writeln!(o, "      e.g. flow {}: {}", ex.correlation_id, ex.message);
                }
            }
        }
        let slow: Vec<&EdgeReport> = {
            let mut v: Vec<&EdgeReport> =
                self.edges.iter().filter(|e| e.latency.count > 0).collect();
            v.sort_by_key(|e| std::cmp::Reverse(e.latency.p99_us));
            v.into_iter().take(5).collect()
        };
        if !slow.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(o, "slowest edges (publish → handled, p50 / p95 / p99):");
            for e in slow {
                let _ = writeln!(
                    o,
                    "  {} --{}--> {}: {} / {} / {} over {}{}",
                    e.producer,
                    e.event_type,
                    e.consumer,
                    format_micros(e.latency.p50_us),
                    format_micros(e.latency.p95_us),
                    format_micros(e.latency.p99_us),
                    e.latency.count,
                    if e.failed > 0 {
                        format!(", {} dead-lettered", e.failed)
                    } else {
                        String::new()
                    }
                );
            }
        }
        let stuck: Vec<&FlowBrief> = self
            .listed
            .iter()
            .filter(|b| b.status == FlowStatus::Stuck)
            .take(5)
            .collect();
        if !stuck.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(o, "stuck flows (first {}):", stuck.len());
            for b in stuck {
                let owed: Vec<String> = b
                    .owed
                    .iter()
                    .map(|w| {
                        format!(
                            "'{}' owes {}{} for {} since {}",
                            w.service,
                            if w.one_of { "one of " } else { "" },
                            if w.owes.is_empty() {
                                "a receipt".to_owned()
                            } else {
                                w.owes.join(", ")
                            },
                            w.event_type,
                            w.since
                        )
                    })
                    .collect();
                let _ = writeln!(o, "  {}: {}", b.correlation_id, owed.join("; "));
            }
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "{}", self.verdict);
        o
    }

    /// The service graph alone as JSON: `{"nodes": [...], "edges": [...]}`.
    pub fn graph_json(&self) -> serde_json::Value {
        serde_json::json!({
            "nodes": self.services,
            "edges": self.edges,
        })
    }

    fn services(&self) -> Vec<String> {
        self.services.clone()
    }

    /// The service graph in Graphviz DOT: services as nodes, one edge per
    /// producer, event type and consumer, labelled with counts and p99 latency;
    /// edges with failures are red.
    pub fn graph_dot(&self) -> String {
        let mut o = String::from(
            "digraph choreo_trace {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n",
        );
        for s in self.services() {
            let _ = writeln!(o, "  {};", quote(&s));
        }
        for e in &self.edges {
            let _ = writeln!(
                o,
                "  {} -> {} [label={}{}];",
                quote(&e.producer),
                quote(&e.consumer),
                quote(&format!(
                    "{} ×{}{}\np99 {}",
                    e.event_type,
                    e.count,
                    if e.failed > 0 {
                        format!(" ({} failed)", e.failed)
                    } else {
                        String::new()
                    },
                    format_micros(e.latency.p99_us)
                )),
                if e.failed > 0 {
                    ", color=red, fontcolor=red"
                } else {
                    ""
                }
            );
        }
        o.push_str("}\n");
        o
    }

    /// The service graph as a Mermaid flowchart.
    pub fn graph_mermaid(&self) -> String {
        let services = self.services();
        let id = |s: &str| format!("s{}", services.iter().position(|x| x == s).unwrap_or(0));
        let mut o = String::from("flowchart LR\n");
        for s in &services {
            let _ = writeln!(o, "  {}[\"{}\"]", id(s), mermaid_text(s));
        }
        for e in &self.edges {
            let _ = writeln!(
                o,
                "  {} -->|\"{} ×{}{} p99 {}\"| {}",
                id(&e.producer),
                mermaid_text(&e.event_type),
                e.count,
                if e.failed > 0 {
                    format!(" ({} failed)", e.failed)
                } else {
                    String::new()
                },
                format_micros(e.latency.p99_us),
                id(&e.consumer)
            );
        }
        o
    }
}

fn services_of(edges: &[EdgeReport]) -> Vec<String> {
    let mut s: Vec<String> = edges
        .iter()
        .flat_map(|e| [e.producer.clone(), e.consumer.clone()])
        .collect();
    s.sort();
    s.dedup();
    s
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn mermaid_text(s: &str) -> String {
    s.replace('"', "#quot;")
}
