//! The report: flows by status, findings, the service graph, a verdict; for people and as JSON.

use std::fmt::Write as _;

use choreo_core::{EventId, Timestamp};
use serde::Serialize;

use crate::finding::{Finding, Rule};
use crate::flow::{FlowStatus, FlowTrace, Owed};
use crate::stats::{Quantiles, format_micros};

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
    /// Receipts of handlings.
    pub receipts: u64,
    /// Receipts of records a service ignored (it routes no handler for their
    /// type): acknowledged, not handled, and not counted in `receipts`.
    pub ignored: u64,
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
    /// Flows taken over from a restore (a consumer-group member rebuilding a
    /// partition it was given) whose beginning is older than the look-back:
    /// judged without it, their missing causes not counted as orphans.
    pub before_horizon: u64,
    /// Flows given up unjudged to another member of the group (their
    /// partition was reassigned): the new owner judges them.
    pub handed_over: u64,
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
    /// Completed after a dead letter was replayed and handled.
    pub recovered: u64,
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

/// How long one service's events waited in its transactional outbox: from
/// the handler's write (the event's time) to the relay's publication (the
/// `choreo-relayed-at` header the relay adds).
#[derive(Debug, Clone, Serialize)]
pub struct OutboxReport {
    /// The publishing service.
    pub service: String,
    /// Write → publication, µs, over the events relayed (duplicates not counted).
    pub lag: Quantiles,
}

/// Where the "now" flows are judged at came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NowFrom {
    /// The newest record's time (a capture file, by default).
    LatestRecord,
    /// Given (`--now`).
    Given,
    /// The wall clock (a live source: Kafka, a bus).
    WallClock,
}

impl NowFrom {
    /// In words, for the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            NowFrom::LatestRecord => "the newest record's time",
            NowFrom::Given => "given",
            NowFrom::WallClock => "the wall clock",
        }
    }
}

/// A "now" this far behind the capture's end or the clock is worth a note:
/// flows in progress then may have stopped since.
const FAR_BEHIND_US: i64 = 60_000_000;

/// What a [`Report`] is made of, as the tracer has it.
pub(crate) struct ReportParts {
    pub(crate) now: Option<Timestamp>,
    pub(crate) now_from: NowFrom,
    pub(crate) topology: Option<String>,
    pub(crate) input: Counters,
    pub(crate) flows: FlowTotals,
    pub(crate) by_flow: Vec<FlowNameReport>,
    pub(crate) findings: Vec<RuleReport>,
    pub(crate) edges: Vec<EdgeReport>,
    pub(crate) outbox: Vec<OutboxReport>,
    pub(crate) listed: Vec<FlowBrief>,
}

/// Everything the tracer knows: the stable JSON of `choreo trace --format json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The "now" flows were judged at (latest input timestamp, or `--now`).
    pub now: Option<Timestamp>,
    /// Where that "now" came from.
    pub now_from: NowFrom,
    /// What the reader should know about the judgement (a "now" far behind
    /// the capture's end or the clock), in words.
    pub notes: Vec<String>,
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
    /// The services that publish through a transactional outbox, with how
    /// long their events waited there, by name (empty without one).
    pub outbox: Vec<OutboxReport>,
    /// Stuck and failed flows (at most `listed_flows`).
    pub listed: Vec<FlowBrief>,
    /// True when nothing was found: no findings, no failed or stuck flows.
    pub ok: bool,
    /// One line.
    pub verdict: String,
}

impl Report {
    /// The report of these parts: the verdict and the service's nodes are
    /// derived from them.
    pub(crate) fn build(parts: ReportParts) -> Report {
        let ReportParts {
            now,
            now_from,
            topology,
            input,
            flows: totals,
            by_flow,
            findings,
            edges,
            outbox,
            listed,
        } = parts;
        let broken: Vec<&RuleReport> = findings.iter().filter(|f| f.rule.is_violation()).collect();
        let violations: u64 = broken.iter().map(|f| f.count).sum();
        let ok = violations == 0 && totals.failed == 0 && totals.stuck == 0;
        let finished =
            totals.completed + totals.recovered + totals.failed + totals.stuck + totals.in_progress;
        // A tracer that took its flows over from a restore judges flows
        // without having counted a record of them.
        let verdict = if input.records == 0 && finished == 0 {
            "no records: nothing to trace".to_owned()
        } else if ok {
            format!(
                "ok: {} flow{} traced{}, no violations",
                finished,
                plural(finished),
                match &topology {
                    Some(t) => format!(" against '{t}'"),
                    None => " (no topology: structure only)".to_owned(),
                }
            )
        } else {
            let mut parts = Vec::new();
            if violations > 0 {
                parts.push(format!(
                    "{violations} violation{} of {} rule{}",
                    plural(violations),
                    broken.len(),
                    plural(broken.len() as u64)
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
            now,
            now_from,
            notes: Vec::new(),
            topology,
            input,
            flows: totals,
            by_flow,
            findings,
            services: services_of(&edges),
            edges,
            outbox,
            listed,
            ok,
            verdict,
        }
    }

    /// Says where "now" came from (`from`), and adds a note when it is the
    /// newest record's time and that is far behind the capture's end
    /// (`input_end`, when the source knows it: a file's last write) or the
    /// wall clock (`wall`), while flows are in progress: they may have
    /// stopped since, and `--now` judges as of another time.
    pub fn note_clock(&mut self, from: NowFrom, wall: Timestamp, input_end: Option<Timestamp>) {
        self.now_from = from;
        let (Some(now), NowFrom::LatestRecord) = (self.now, from) else {
            return;
        };
        if self.flows.in_progress == 0 {
            return;
        }
        let n = self.flows.in_progress;
        let behind = |t: Timestamp, what: &str| {
            let gap = t.micros_since(now);
            (gap > FAR_BEHIND_US).then(|| {
                format!(
                    "the newest record is {} before {what} ({t}); {n} flow{} in progress then may have stopped since — --now judges as of another time",
                    format_micros(gap as u64),
                    plural(n)
                )
            })
        };
        self.notes
            .extend(input_end.and_then(|end| behind(end, "the capture's end")));
        self.notes.extend(behind(wall, "the wall clock"));
    }

    /// The human summary: flows by status, top violations with an example flow
    /// each, the slowest edges, and the verdict.
    pub fn summary(&self) -> String {
        let mut o = String::new();
        let i = &self.input;
        let _ = writeln!(
            o,
            "read {} records: {} events, {} receipts{}, {} dead-letter copies; {} duplicates collapsed, {} unattributed{}",
            i.records,
            i.events,
            i.receipts,
            if i.ignored > 0 {
                format!(
                    " (and {} of records a service routes no handler for)",
                    i.ignored
                )
            } else {
                String::new()
            },
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
                "judged at {now} ({}){}",
                self.now_from.as_str(),
                match &self.topology {
                    Some(t) => format!(" against topology '{t}'"),
                    None => " without a topology (structure only)".to_owned(),
                }
            );
        }
        for note in &self.notes {
            let _ = writeln!(o, "note: {note}");
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
        if self.flows.recovered > 0 {
            let _ = writeln!(
                o,
                "({} recovered: completed after a dead letter was replayed)",
                self.flows.recovered
            );
        }
        if self.flows.evicted > 0 || self.flows.in_flight > 0 {
            let _ = writeln!(
                o,
                "({} evicted, {} in flight)",
                self.flows.evicted, self.flows.in_flight
            );
        }
        for (violations, title) in [(true, "violations by rule:"), (false, "notes:")] {
            let rules: Vec<&RuleReport> = self
                .findings
                .iter()
                .filter(|r| r.rule.is_violation() == violations)
                .take(10)
                .collect();
            if rules.is_empty() {
                continue;
            }
            let _ = writeln!(o);
            let _ = writeln!(o, "{title}");
            for r in rules {
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
        if !self.outbox.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "outbox lag (the handler's write → the relay's publication, p50 / p95 / p99):"
            );
            for b in &self.outbox {
                let _ = writeln!(
                    o,
                    "  {}: {} / {} / {} over {}",
                    b.service,
                    format_micros(b.lag.p50_us),
                    format_micros(b.lag.p95_us),
                    format_micros(b.lag.p99_us),
                    b.lag.count
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
