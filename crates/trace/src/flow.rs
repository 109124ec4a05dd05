//! One reconstructed flow: its causal graph with receipts attached, status, findings and debts.

use std::fmt::Write as _;

use choreo_core::{EventId, Name, Outcome, Timestamp};
use petgraph::Direction;
use petgraph::graph::{Graph, NodeIndex};
use serde::Serialize;

use crate::finding::Finding;
use crate::stats::format_micros;

/// Where a flow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowStatus {
    /// It reached one of its flow's `ends_with` events (and nothing was dead-lettered).
    Completed,
    /// An event was dead-lettered, or it came to rest on events that end nothing.
    Failed,
    /// Events are still owed and no deadline has passed.
    InProgress,
    /// Past the flow's `within` or a reaction's `within` with events still owed.
    Stuck,
    /// It completed after an event dead-lettered on the way was replayed and
    /// handled; its history keeps the dead letter.
    Recovered,
}

impl FlowStatus {
    /// `completed`, `failed`, `in_progress`, `stuck` or `recovered`.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStatus::Completed => "completed",
            FlowStatus::Failed => "failed",
            FlowStatus::InProgress => "in_progress",
            FlowStatus::Stuck => "stuck",
            FlowStatus::Recovered => "recovered",
        }
    }
}

/// A service that owes events: it received (or should have received) an event
/// and has not yet reacted as its reaction says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owed {
    /// The service that owes.
    pub service: String,
    /// The event it reacts to.
    pub event_type: String,
    /// That event's id.
    pub event_id: EventId,
    /// What it owes: the reaction's events (all of them, or one of them), or
    /// empty for a sink that owes only its receipt.
    pub owes: Vec<String>,
    /// Whether `owes` is a `one_of` choice.
    pub one_of: bool,
    /// Since when: the event's publication.
    pub since: Timestamp,
    /// When the reaction's `within` runs out, if it has one.
    pub deadline: Option<Timestamp>,
}

/// One flow's verdict, without its events: a line of `choreo trace --format
/// flows-jsonl` (every flow, every finding; stable field names, times in µs
/// since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowSummary {
    /// The flow's correlation id.
    pub correlation_id: EventId,
    /// The topology's flow name, when known.
    pub flow: Option<String>,
    /// Where it stands.
    pub status: FlowStatus,
    /// Its first event's time.
    pub started: Timestamp,
    /// When it reached an end (or, failed, its last event).
    pub ended: Option<Timestamp>,
    /// Since when something is owed: the earliest owed event's time.
    pub owed_since: Option<Timestamp>,
    /// Its distinct events.
    pub events: u64,
    /// Copies of events seen more than once, collapsed.
    pub duplicates: u32,
    /// Services that still owe events.
    pub owed: Vec<Owed>,
    /// Every finding.
    pub findings: Vec<Finding>,
    /// Its beginning is older than the tracer's horizon (a live tracer took
    /// it over from a restore that looked back less far than the flow's
    /// start): what it lacks from before is not reported as orphans.
    /// Written only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub before_horizon: bool,
}

/// What one service did with an event, from its receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Handling {
    /// The service.
    pub service: Name,
    /// How it ended.
    pub outcome: Outcome,
    /// Handler runs.
    pub attempts: u32,
    /// When the first attempt started.
    pub started: Timestamp,
    /// Handler time, µs (first attempt's start to settlement).
    pub duration_us: u64,
    /// The last error, if any.
    pub reason: Option<String>,
    /// How many events the handler published.
    pub emitted: u32,
}

/// One event in a flow, with what its consumers did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TracedEvent {
    /// The event id.
    pub id: EventId,
    /// Its type.
    pub event_type: Name,
    /// The publishing service.
    pub source: Name,
    /// The topic.
    pub topic: Name,
    /// Publication time.
    pub time: Timestamp,
    /// The partition, when the capture knew it.
    pub partition: Option<u32>,
    /// The offset, when the capture knew it.
    pub offset: Option<u64>,
    /// Its cause's id (`None` for the first event).
    pub causation_id: Option<EventId>,
    /// Whether the cause is missing from the flow.
    pub orphan: bool,
    /// Receipts: which services handled it and how.
    pub handled: Vec<Handling>,
}

/// A flow rebuilt: events as nodes, causation as edges (cause → effect).
#[derive(Debug, Clone, Serialize)]
pub struct FlowTrace {
    /// The flow's correlation id.
    pub correlation_id: EventId,
    /// The topology's flow name, when known.
    pub flow: Option<String>,
    /// Where it stands.
    pub status: FlowStatus,
    /// Its first event's time.
    pub started: Timestamp,
    /// When it reached an end (or, failed, its last event).
    pub ended: Option<Timestamp>,
    /// The causal graph, nodes in time order.
    #[serde(skip)]
    pub graph: Graph<TracedEvent, ()>,
    /// What the conformance check found.
    pub findings: Vec<Finding>,
    /// Services that still owe events.
    pub owed: Vec<Owed>,
    /// Copies of events seen more than once (at-least-once delivery), collapsed.
    pub duplicates: u32,
    /// Its beginning is older than the tracer's horizon (see
    /// [`FlowSummary::before_horizon`]).
    pub before_horizon: bool,
}

impl FlowTrace {
    /// Its verdict without its events (what `--format flows-jsonl` writes).
    pub fn summary(&self) -> FlowSummary {
        FlowSummary {
            correlation_id: self.correlation_id.clone(),
            flow: self.flow.clone(),
            status: self.status,
            started: self.started,
            ended: self.ended,
            owed_since: self.owed.iter().map(|o| o.since).min(),
            events: self.graph.node_count() as u64,
            duplicates: self.duplicates,
            owed: self.owed.clone(),
            findings: self.findings.clone(),
            before_horizon: self.before_horizon,
        }
    }

    /// The events in time order.
    pub fn events(&self) -> impl Iterator<Item = &TracedEvent> {
        self.graph.node_weights()
    }

    /// Events without a cause in the flow (the first event, and orphans), in time order.
    pub fn roots(&self) -> Vec<NodeIndex> {
        self.graph
            .node_indices()
            .filter(|n| {
                self.graph
                    .neighbors_directed(*n, Direction::Incoming)
                    .next()
                    .is_none()
            })
            .collect()
    }

    /// The effects of `node`, in time order.
    pub fn children(&self, node: NodeIndex) -> Vec<NodeIndex> {
        let mut c: Vec<NodeIndex> = self.graph.neighbors(node).collect();
        c.sort_by_key(|n| (self.graph[*n].time, n.index()));
        c
    }

    /// The flow as a JSON document: its summary, events (with their cause and
    /// receipts), findings and debts. Stable field names.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        let events: Vec<&TracedEvent> = self.events().collect();
        v["events"] = serde_json::to_value(events).unwrap_or_default();
        v
    }

    /// The flow as a timeline tree for people: each event with its service,
    /// topic/partition/offset, time since the flow's start, who handled it and
    /// how, and findings marked inline.
    pub fn timeline(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "flow {} ({}) — {} — started {}{}",
            self.correlation_id,
            self.flow.as_deref().unwrap_or("unknown flow"),
            self.status.as_str(),
            self.started,
            match self.ended {
                Some(e) => format!(
                    ", took {}",
                    format_micros(e.micros_since(self.started).max(0) as u64)
                ),
                None => String::new(),
            }
        );
        for root in self.roots() {
            self.node_lines(root, "", true, &mut out, 0);
        }
        let general: Vec<&Finding> = self
            .findings
            .iter()
            .filter(|f| f.event_id.is_none())
            .collect();
        for f in general {
            let _ = writeln!(out, "  ✗ violation[{}]: {}", f.rule, f.message);
        }
        for o in &self.owed {
            let _ = writeln!(
                out,
                "  … '{}' owes {}{} for {} since {}{}",
                o.service,
                if o.one_of { "one of " } else { "" },
                if o.owes.is_empty() {
                    "a receipt".to_owned()
                } else {
                    o.owes.join(", ")
                },
                o.event_type,
                o.since,
                o.deadline
                    .map(|d| format!(" (due {d})"))
                    .unwrap_or_default()
            );
        }
        if self.duplicates > 0 {
            let _ = writeln!(
                out,
                "  ({} duplicate deliveries collapsed)",
                self.duplicates
            );
        }
        out
    }

    fn node_lines(&self, n: NodeIndex, prefix: &str, last: bool, out: &mut String, depth: usize) {
        let e = &self.graph[n];
        let branch = if depth == 0 {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let mut pos = e.topic.to_string();
        if let Some(p) = e.partition {
            let _ = write!(pos, "/{p}");
            if let Some(o) = e.offset {
                let _ = write!(pos, "@{o}");
            }
        }
        let rel = e.time.micros_since(self.started);
        let _ = writeln!(
            out,
            "{prefix}{branch}+{} {} by {} on {}{}",
            fmt_rel(rel),
            e.event_type,
            if e.source.is_empty() {
                "?"
            } else {
                e.source.as_str()
            },
            pos,
            if e.orphan {
                "  ✗ orphan: its cause is not in the flow"
            } else {
                ""
            }
        );
        let child_prefix = if depth == 0 {
            "  ".to_owned()
        } else {
            format!("{prefix}{}", if last { "   " } else { "│  " })
        };
        for h in &e.handled {
            let _ = writeln!(
                out,
                "{child_prefix}· {} {} after {} in {}{}{}",
                h.service,
                h.outcome.as_str(),
                fmt_rel(h.started.micros_since(e.time)),
                format_micros(h.duration_us),
                if h.attempts > 1 {
                    format!(", {} attempts", h.attempts)
                } else {
                    String::new()
                },
                h.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
        for f in self
            .findings
            .iter()
            .filter(|f| f.event_id.as_ref() == Some(&e.id))
        {
            let _ = writeln!(out, "{child_prefix}✗ violation[{}]: {}", f.rule, f.message);
        }
        let kids = self.children(n);
        for (i, k) in kids.iter().enumerate() {
            self.node_lines(*k, &child_prefix, i + 1 == kids.len(), out, depth + 1);
        }
    }
}

impl FlowTrace {
    /// The flow's causal graph in Graphviz DOT: events as nodes (type,
    /// publisher, time since the start, who handled it and how), causation as
    /// edges, owed events as dashed nodes hanging off the event they are owed
    /// for, and events with findings in red with the rules named.
    pub fn to_dot(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "digraph {} {{",
            dot_quote(&format!("flow {}", self.correlation_id))
        );
        let _ = writeln!(o, "  rankdir=LR;");
        let _ = writeln!(o, "  labelloc=t;");
        let _ = writeln!(o, "  label={};", dot_quote(&self.title()));
        let _ = writeln!(o, "  node [shape=box, style=rounded];");
        for n in self.graph.node_indices() {
            let e = &self.graph[n];
            let rules = self.rules_at(&e.id);
            let mut label = self.event_lines(e).join("\n");
            if !rules.is_empty() {
                label.push_str(&format!("\n✗ {}", rules.join(", ")));
            }
            let _ = writeln!(
                o,
                "  e{} [label={}{}];",
                n.index(),
                dot_quote(&label),
                if rules.is_empty() {
                    ""
                } else {
                    ", color=red, fontcolor=red"
                }
            );
        }
        for edge in self.graph.raw_edges() {
            let _ = writeln!(
                o,
                "  e{} -> e{};",
                edge.source().index(),
                edge.target().index()
            );
        }
        for (i, w) in self.owed.iter().enumerate() {
            let Some(from) = self.node_of(&w.event_id) else {
                continue;
            };
            let _ = writeln!(
                o,
                "  owed{i} [label={}, style=\"rounded,dashed\", color=orange, fontcolor=orange];",
                dot_quote(&owed_label(w).join("\n"))
            );
            let _ = writeln!(
                o,
                "  e{} -> owed{i} [style=dashed, color=orange, label={}];",
                from.index(),
                dot_quote(&w.service)
            );
        }
        o.push_str("}\n");
        o
    }

    /// The flow's causal graph as a Mermaid flowchart, with the same content
    /// as [`FlowTrace::to_dot`].
    pub fn to_mermaid(&self) -> String {
        let mut o = String::from("flowchart LR\n");
        let mut marked = Vec::new();
        for n in self.graph.node_indices() {
            let e = &self.graph[n];
            let rules = self.rules_at(&e.id);
            let mut lines = self.event_lines(e);
            if !rules.is_empty() {
                lines.push(format!("✗ {}", rules.join(", ")));
                marked.push(format!("e{}", n.index()));
            }
            let _ = writeln!(o, "  e{}[\"{}\"]", n.index(), mermaid_lines(&lines));
        }
        for edge in self.graph.raw_edges() {
            let _ = writeln!(
                o,
                "  e{} --> e{}",
                edge.source().index(),
                edge.target().index()
            );
        }
        let mut owed = Vec::new();
        for (i, w) in self.owed.iter().enumerate() {
            let Some(from) = self.node_of(&w.event_id) else {
                continue;
            };
            let _ = writeln!(o, "  owed{i}[\"{}\"]", mermaid_lines(&owed_label(w)));
            let _ = writeln!(
                o,
                "  e{} -.->|\"{}\"| owed{i}",
                from.index(),
                mermaid_text(&w.service)
            );
            owed.push(format!("owed{i}"));
        }
        let _ = writeln!(
            o,
            "  classDef finding stroke:#c00,stroke-width:2px,color:#c00"
        );
        let _ = writeln!(
            o,
            "  classDef owed stroke:#e80,stroke-dasharray:5 5,color:#e80"
        );
        if !marked.is_empty() {
            let _ = writeln!(o, "  class {} finding", marked.join(","));
        }
        if !owed.is_empty() {
            let _ = writeln!(o, "  class {} owed", owed.join(","));
        }
        o
    }

    /// `flow ID (name) — status`, and the findings about no one event.
    fn title(&self) -> String {
        let mut t = format!(
            "flow {} ({}) — {}",
            self.correlation_id,
            self.flow.as_deref().unwrap_or("unknown flow"),
            self.status.as_str()
        );
        for f in self.findings.iter().filter(|f| f.event_id.is_none()) {
            t.push_str(&format!("\n✗ {}: {}", f.rule, f.message));
        }
        t
    }

    /// An event's lines: type, publisher and time, and each handling.
    fn event_lines(&self, e: &TracedEvent) -> Vec<String> {
        let mut lines = vec![
            e.event_type.to_string(),
            format!(
                "by {} · +{}",
                if e.source.is_empty() {
                    "?"
                } else {
                    e.source.as_str()
                },
                fmt_rel(e.time.micros_since(self.started))
            ),
        ];
        for h in &e.handled {
            lines.push(format!("{}: {}", h.service, h.outcome.as_str()));
        }
        lines
    }

    /// The rules of the findings about event `id`, each once.
    fn rules_at(&self, id: &EventId) -> Vec<String> {
        let mut rules: Vec<String> = Vec::new();
        for f in self
            .findings
            .iter()
            .filter(|f| f.event_id.as_ref() == Some(id))
        {
            let code = f.rule.code().to_owned();
            if !rules.contains(&code) {
                rules.push(code);
            }
        }
        rules
    }

    fn node_of(&self, id: &EventId) -> Option<NodeIndex> {
        self.graph.node_indices().find(|n| &self.graph[*n].id == id)
    }
}

/// A debt's lines: what is owed, by whom, since when.
fn owed_label(w: &Owed) -> Vec<String> {
    vec![
        format!(
            "owes {}{}",
            if w.one_of { "one of " } else { "" },
            if w.owes.is_empty() {
                "a receipt".to_owned()
            } else {
                w.owes.join(", ")
            }
        ),
        format!("{} since {}", w.service, w.since),
    ]
}

fn dot_quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            // A line break is DOT's `\n`; a backslash is escaped, so it stays one.
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

fn mermaid_lines(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| mermaid_text(l))
        .collect::<Vec<_>>()
        .join("<br/>")
}

fn fmt_rel(us: i64) -> String {
    if us < 0 {
        format!("-{}", format_micros(us.unsigned_abs()))
    } else {
        format_micros(us as u64)
    }
}
