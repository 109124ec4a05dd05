//! Pictures of a topology: the service graph as DOT, Mermaid or JSON.
//!
//! Services are nodes; each event type is an edge from a service that emits it
//! to each service that consumes it, labelled with the event. With
//! [`GraphOptions::topics`], topics become nodes between them. Flow starts are
//! drawn bold from the service that emits them on its own; `one_of` emissions
//! dashed. An event nobody emits comes from an `external` node; an event nobody
//! consumes goes to an `end` node when it ends a flow, else to `unconsumed`.
//!
//! ```
//! use choreo_topology::{Topology, render::{self, GraphOptions}};
//! let t = Topology::parse(
//!     "name: t\nevents: {A: {topic: a}}\nservices: {s: {emits: [A]}}\nflows: {f: {starts_with: A, ends_with: [A]}}\n",
//!     "t.yaml",
//! )?;
//! let dot = render::dot(&t, GraphOptions::default());
//! assert!(dot.contains(r#""service:s" -> "end" [label="A""#));
//! # Ok::<(), choreo_topology::Error>(())
//! ```

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

use crate::model::{Emit, Topology};

/// What to draw: [`GraphOptions::default`], then a setter per field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GraphOptions {
    /// Draw topics as nodes: emitter → topic → consumer.
    pub topics: bool,
}

impl GraphOptions {
    /// Sets whether topics are drawn as nodes.
    pub fn topics(self, topics: bool) -> Self {
        Self { topics }
    }
}

/// The kind of a node in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A service.
    Service,
    /// A topic (only with [`GraphOptions::topics`]).
    Topic,
    /// Where events nobody emits come from.
    External,
    /// Where events that end a flow and that nobody consumes go.
    End,
    /// Where events that nobody consumes and that end no flow go.
    Unconsumed,
}

/// How an edge's event is emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// Emitted by the service on its own: a flow start.
    Start,
    /// Emitted by a reaction, with the others in its list.
    Emit,
    /// Emitted by a reaction as one of a `one_of`.
    OneOf,
    /// Nobody emits it (from the `external` node), or a topic delivering it.
    Deliver,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Node {
    /// Unique id: `service:<name>`, `topic:<name>`, `external`, `end`, `unconsumed`.
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// The text to show.
    pub label: String,
}

/// An edge: `event` travels from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Edge {
    /// Source node id.
    pub from: String,
    /// Target node id.
    pub to: String,
    /// The event type.
    pub event: String,
    /// The event's topic.
    pub topic: String,
    /// How the event is emitted.
    pub kind: EdgeKind,
}

/// The graph all renderers draw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Graph {
    /// Nodes: services in declaration order, then topics, then special nodes.
    pub nodes: Vec<Node>,
    /// Edges, grouped by event in declaration order.
    pub edges: Vec<Edge>,
}

fn service_id(name: &str) -> String {
    format!("service:{name}")
}

fn topic_id(name: &str) -> String {
    format!("topic:{name}")
}

impl Graph {
    /// Builds the graph of `t`.
    pub fn of(t: &Topology, options: GraphOptions) -> Graph {
        let mut nodes: Vec<Node> = t
            .services()
            .map(|s| Node {
                id: service_id(&s.name),
                kind: NodeKind::Service,
                label: s.name.clone(),
            })
            .collect();
        if options.topics {
            nodes.extend(t.topics().iter().map(|topic| Node {
                id: topic_id(topic),
                kind: NodeKind::Topic,
                label: topic.clone(),
            }));
        }
        let mut edges: Vec<Edge> = Vec::new();
        let mut special = [false; 3]; // external, end, unconsumed
        let add =
            |edges: &mut Vec<Edge>, from: String, to: String, event: &str, topic: &str, kind| {
                let edge = Edge {
                    from,
                    to,
                    event: event.to_owned(),
                    topic: topic.to_owned(),
                    kind,
                };
                if !edges.contains(&edge) {
                    edges.push(edge);
                }
            };
        for event in t.events() {
            let mut sources: Vec<(String, EdgeKind)> = Vec::new();
            for e in t.emitters_of(&event.name) {
                let kind = match e.reaction.map(|r| &r.emit) {
                    None => EdgeKind::Start,
                    Some(Emit::OneOf(_)) => EdgeKind::OneOf,
                    Some(_) => EdgeKind::Emit,
                };
                let source = (service_id(&e.service.name), kind);
                if !sources.contains(&source) {
                    sources.push(source);
                }
            }
            let mut targets: Vec<String> = Vec::new();
            for (s, _) in t.consumers_of(&event.name) {
                let id = service_id(&s.name);
                if !targets.contains(&id) {
                    targets.push(id);
                }
            }
            let used = !sources.is_empty() || !targets.is_empty();
            if !used {
                continue;
            }
            if sources.is_empty() {
                special[0] = true;
                sources.push(("external".to_owned(), EdgeKind::Deliver));
            }
            if targets.is_empty() {
                if t.flows().any(|f| f.is_ended_by(&event.name)) {
                    special[1] = true;
                    targets.push("end".to_owned());
                } else {
                    special[2] = true;
                    targets.push("unconsumed".to_owned());
                }
            }
            if options.topics {
                let topic = topic_id(&event.topic);
                for (from, kind) in &sources {
                    add(
                        &mut edges,
                        from.clone(),
                        topic.clone(),
                        &event.name,
                        &event.topic,
                        *kind,
                    );
                }
                for to in &targets {
                    add(
                        &mut edges,
                        topic.clone(),
                        to.clone(),
                        &event.name,
                        &event.topic,
                        EdgeKind::Deliver,
                    );
                }
            } else {
                for (from, kind) in &sources {
                    for to in &targets {
                        add(
                            &mut edges,
                            from.clone(),
                            to.clone(),
                            &event.name,
                            &event.topic,
                            *kind,
                        );
                    }
                }
            }
        }
        for (on, (id, kind, label)) in special.iter().zip([
            ("external", NodeKind::External, "external"),
            ("end", NodeKind::End, "end"),
            ("unconsumed", NodeKind::Unconsumed, "unconsumed"),
        ]) {
            if *on {
                nodes.push(Node {
                    id: id.to_owned(),
                    kind,
                    label: label.to_owned(),
                });
            }
        }
        Graph { nodes, edges }
    }
}

/// A DOT string literal: quoted, with `"` and `\` escaped and newlines as `\n`.
fn dot_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The graph in Graphviz DOT (render with `dot -Tsvg`).
pub fn dot(t: &Topology, options: GraphOptions) -> String {
    let g = Graph::of(t, options);
    let mut out = String::new();
    let _ = writeln!(out, "digraph {} {{", dot_quote(t.name()));
    out.push_str("  rankdir=LR;\n");
    out.push_str("  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n");
    out.push_str("  edge [fontname=\"Helvetica\", fontsize=10];\n");
    for n in &g.nodes {
        let attrs = match n.kind {
            NodeKind::Service => String::new(),
            NodeKind::Topic => ", shape=cylinder, style=\"\"".to_owned(),
            NodeKind::External => ", shape=plaintext, style=\"\"".to_owned(),
            NodeKind::End => ", shape=doublecircle, style=\"\"".to_owned(),
            NodeKind::Unconsumed => ", shape=circle, style=dashed".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {} [label={}{attrs}];",
            dot_quote(&n.id),
            dot_quote(&n.label)
        );
    }
    for e in &g.edges {
        let style = match e.kind {
            EdgeKind::Start => ", style=bold",
            EdgeKind::OneOf => ", style=dashed",
            EdgeKind::Emit | EdgeKind::Deliver => "",
        };
        let _ = writeln!(
            out,
            "  {} -> {} [label={}{style}];",
            dot_quote(&e.from),
            dot_quote(&e.to),
            dot_quote(&e.event)
        );
    }
    out.push_str("}\n");
    out
}

/// Mermaid text for a label: inside `"…"`, with `"` and the characters Mermaid
/// treats specially written as entity codes.
fn mermaid_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '#' => out.push_str("#35;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The graph as a Mermaid flowchart (renders on GitHub in a ```` ```mermaid ```` block).
///
/// Node ids are generated (`s0`, `t0`, …) so that no name can collide with
/// Mermaid syntax; names appear only in quoted labels.
pub fn mermaid(t: &Topology, options: GraphOptions) -> String {
    let g = Graph::of(t, options);
    let ids: Vec<String> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| match n.kind {
            NodeKind::Service => format!("s{i}"),
            NodeKind::Topic => format!("t{i}"),
            NodeKind::External => "ext".to_owned(),
            NodeKind::End => "done".to_owned(),
            NodeKind::Unconsumed => "lost".to_owned(),
        })
        .collect();
    let id_of = |node: &str| -> &str {
        g.nodes
            .iter()
            .position(|n| n.id == node)
            .map_or("ext", |i| ids[i].as_str())
    };
    let mut out = String::from("flowchart LR\n");
    for (n, id) in g.nodes.iter().zip(&ids) {
        let label = mermaid_text(&n.label);
        let shape = match n.kind {
            NodeKind::Service => format!("{id}({label})"),
            NodeKind::Topic => format!("{id}[({label})]"),
            NodeKind::External => format!("{id}>{label}]"),
            NodeKind::End => format!("{id}(({label}))"),
            NodeKind::Unconsumed => format!("{id}{{{{{label}}}}}"),
        };
        let _ = writeln!(out, "  {shape}");
    }
    for e in &g.edges {
        let arrow = match e.kind {
            EdgeKind::Start => "==>",
            EdgeKind::OneOf => "-.->",
            EdgeKind::Emit | EdgeKind::Deliver => "-->",
        };
        let _ = writeln!(
            out,
            "  {} {arrow}|{}| {}",
            id_of(&e.from),
            mermaid_text(&e.event),
            id_of(&e.to)
        );
    }
    out
}

/// The graph as JSON: `{"format": "choreo-graph", "version": 1, "topology",
/// "topics": bool, "nodes": [{id, kind, label}], "edges": [{from, to, event,
/// topic, kind}]}`; documented in `docs/topology.md`. Field order and meaning
/// are stable; new fields may be added.
pub fn json(t: &Topology, options: GraphOptions) -> Value {
    let g = Graph::of(t, options);
    json!({
        "format": "choreo-graph",
        "version": 1,
        "topology": t.name(),
        "topics": options.topics,
        "nodes": g.nodes,
        "edges": g.edges,
    })
}
