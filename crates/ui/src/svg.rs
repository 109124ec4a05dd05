//! One flow's causal graph as an SVG image, drawn on the server: events in columns by causal depth, owed events dashed, findings in red.
//!
//! Served as an image (`<img>`), so that nothing in it can run in the page
//! even if a name slipped through; every text from events is escaped all
//! the same.

use std::collections::HashMap;
use std::fmt::Write as _;

use choreo_core::Outcome;
use choreo_trace::{EdgeReport, FlowTrace, format_micros};
use petgraph::Direction;

const NODE_W: i64 = 230;
const NODE_H: i64 = 64;
const GAP_X: i64 = 60;
const GAP_Y: i64 = 18;
const MARGIN: i64 = 16;
const TITLE_H: i64 = 28;
/// Characters of a label line drawn at most.
const LINE_MAX: usize = 34;

/// Escapes text for XML content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' && c != '\r' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Cuts a label line to [`LINE_MAX`] characters.
fn clip(text: &str) -> String {
    if text.chars().count() <= LINE_MAX {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(LINE_MAX - 1).collect();
        s.push('…');
        s
    }
}

/// A box to draw: its column and row, its lines, its look.
struct Node {
    col: i64,
    row: i64,
    lines: Vec<String>,
    class: &'static str,
}

impl Node {
    fn x(&self) -> i64 {
        MARGIN + self.col * (NODE_W + GAP_X)
    }
    fn y(&self) -> i64 {
        MARGIN + TITLE_H + self.row * (NODE_H + GAP_Y)
    }
}

/// The flow's causal graph as an SVG document.
pub(crate) fn flow_graph(f: &FlowTrace) -> String {
    // Depth of each event: its cause's depth plus one (roots at 0), in time
    // order, so a cause is placed before its effects.
    let mut depth: HashMap<usize, i64> = HashMap::new();
    let mut rows: HashMap<i64, i64> = HashMap::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut node_of: HashMap<usize, usize> = HashMap::new();
    for n in f.graph.node_indices() {
        let cause_depth = f
            .graph
            .neighbors_directed(n, Direction::Incoming)
            .filter_map(|c| depth.get(&c.index()).copied())
            .max();
        let d = cause_depth.map_or(0, |d| d + 1);
        depth.insert(n.index(), d);
        let row = rows.entry(d).or_insert(0);
        let e = &f.graph[n];
        let mut lines = vec![
            clip(e.event_type.as_str()),
            clip(&format!(
                "by {} +{}",
                if e.source.is_empty() {
                    "?"
                } else {
                    e.source.as_str()
                },
                format_micros(e.time.micros_since(f.started).max(0) as u64)
            )),
        ];
        let handled: Vec<String> = e
            .handled
            .iter()
            .map(|h| {
                let mark = match h.outcome {
                    Outcome::Acked | Outcome::Duplicate => "✓",
                    Outcome::DeadLettered => "✗",
                    Outcome::Redelivered | Outcome::Ignored => "·",
                };
                format!("{mark} {}", h.service)
            })
            .collect();
        if !handled.is_empty() {
            lines.push(clip(&handled.join(" ")));
        }
        let mut rules: Vec<&str> = f
            .findings
            .iter()
            .filter(|x| x.event_id.as_ref() == Some(&e.id))
            .map(|x| x.rule.code())
            .collect();
        rules.dedup();
        let dead = e.handled.iter().any(|h| h.outcome == Outcome::DeadLettered);
        let class = if !rules.is_empty() || e.orphan {
            lines.push(clip(&format!(
                "✗ {}",
                if rules.is_empty() {
                    "orphan".to_owned()
                } else {
                    rules.join(", ")
                }
            )));
            "finding"
        } else if dead {
            "dead"
        } else {
            "event"
        };
        node_of.insert(n.index(), nodes.len());
        nodes.push(Node {
            col: d,
            row: *row,
            lines,
            class,
        });
        *row += 1;
    }
    let mut edges: Vec<(usize, usize, bool)> = f
        .graph
        .raw_edges()
        .iter()
        .filter_map(|e| {
            Some((
                *node_of.get(&e.source().index())?,
                *node_of.get(&e.target().index())?,
                false,
            ))
        })
        .collect();
    for o in &f.owed {
        let Some(from) = f
            .graph
            .node_indices()
            .find(|n| f.graph[*n].id == o.event_id)
            .and_then(|n| node_of.get(&n.index()).copied())
        else {
            continue;
        };
        let d = nodes[from].col + 1;
        let row = rows.entry(d).or_insert(0);
        let owes = if o.owes.is_empty() {
            "a receipt".to_owned()
        } else {
            format!(
                "{}{}",
                if o.one_of { "one of " } else { "" },
                o.owes.join(", ")
            )
        };
        edges.push((from, nodes.len(), true));
        nodes.push(Node {
            col: d,
            row: *row,
            lines: vec![
                clip(&format!("{} owes", o.service)),
                clip(&owes),
                clip(&format!("for {}", o.event_type)),
            ],
            class: "owed",
        });
        *row += 1;
    }
    render(f, &nodes, &edges)
}

fn render(f: &FlowTrace, nodes: &[Node], edges: &[(usize, usize, bool)]) -> String {
    let cols = nodes.iter().map(|n| n.col + 1).max().unwrap_or(1);
    let rows = nodes.iter().map(|n| n.row + 1).max().unwrap_or(1);
    let width = (2 * MARGIN + cols * (NODE_W + GAP_X) - GAP_X).max(420);
    let height = 2 * MARGIN + TITLE_H + rows * (NODE_H + GAP_Y) - GAP_Y;
    let mut o = String::new();
    let _ = write!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>
<style>
.event rect {{ fill: #eef4ff; stroke: #4a6fa5; }}
.dead rect {{ fill: #fff1e6; stroke: #c2410c; }}
.finding rect {{ fill: #fdecec; stroke: #c00; }}
.owed rect {{ fill: #fff8e6; stroke: #d97706; stroke-dasharray: 6 4; }}
.finding text, .dead text {{ fill: #7f1d1d; }}
.owed text {{ fill: #92400e; }}
text.first {{ font-weight: bold; }}
</style>
<text x="{MARGIN}" y="{}" font-size="14" font-weight="bold">{}</text>
"##,
        MARGIN + 16,
        escape(&format!(
            "flow {} ({}) — {}",
            f.correlation_id,
            f.flow.as_deref().unwrap_or("unknown flow"),
            f.status.as_str()
        ))
    );
    for &(a, b, owed) in edges {
        let (a, b) = (&nodes[a], &nodes[b]);
        let (x1, y1) = (a.x() + NODE_W, a.y() + NODE_H / 2);
        let (x2, y2) = (b.x(), b.y() + NODE_H / 2);
        let mid = (x1 + x2) / 2;
        let _ = writeln!(
            o,
            r##"<path d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" fill="none" stroke="{}" {}marker-end="url(#arrow)"/>"##,
            if owed { "#d97706" } else { "#555" },
            if owed {
                r#"stroke-dasharray="6 4" "#
            } else {
                ""
            }
        );
    }
    for n in nodes {
        let _ = writeln!(
            o,
            r#"<g class="{}"><rect x="{}" y="{}" width="{NODE_W}" height="{NODE_H}" rx="6"/>"#,
            n.class,
            n.x(),
            n.y()
        );
        for (i, line) in n.lines.iter().enumerate() {
            let _ = writeln!(
                o,
                r#"<text x="{}" y="{}"{}>{}</text>"#,
                n.x() + 8,
                n.y() + 15 + 15 * i as i64,
                if i == 0 { r#" class="first""# } else { "" },
                escape(line)
            );
        }
        o.push_str("</g>\n");
    }
    o.push_str("</svg>\n");
    o
}

/// The service graph as an SVG document: services in columns by how far
/// downstream they are, an edge per (producer, event type, consumer) with
/// its count, failures and p99 end-to-end latency.
pub(crate) fn service_graph(services: &[String], edges: &[EdgeReport]) -> String {
    let index = |name: &str| services.iter().position(|s| s == name);
    // Columns: the distance from the most upstream service (the one that
    // publishes most beyond what it handles), breadth first, so that a
    // cycle (a reply, a compensation) draws as an edge going back.
    let n = services.len();
    let mut score = vec![0i64; n];
    for e in edges {
        if let (Some(p), Some(c)) = (index(&e.producer), index(&e.consumer)) {
            score[p] += e.count as i64;
            score[c] -= e.count as i64;
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (-score[i], i));
    let mut col: Vec<Option<i64>> = vec![None; n];
    for &root in &order {
        if col[root].is_some() {
            continue;
        }
        col[root] = Some(0);
        let mut queue = std::collections::VecDeque::from([root]);
        while let Some(p) = queue.pop_front() {
            let next = col[p].unwrap_or(0) + 1;
            for e in edges.iter().filter(|e| index(&e.producer) == Some(p)) {
                if let Some(c) = index(&e.consumer)
                    && col[c].is_none()
                {
                    col[c] = Some(next);
                    queue.push_back(c);
                }
            }
        }
    }
    let mut col: Vec<i64> = col.into_iter().map(Option::unwrap_or_default).collect();
    // Services that only consume (notifications, say) go last.
    let last = col.iter().copied().max().unwrap_or(0);
    for (i, c) in col.iter_mut().enumerate() {
        let publishes = edges.iter().any(|e| index(&e.producer) == Some(i));
        let consumes = edges.iter().any(|e| index(&e.consumer) == Some(i));
        if consumes && !publishes {
            *c = last + 1;
        }
    }
    let mut rows: HashMap<i64, i64> = HashMap::new();
    let nodes: Vec<Node> = services
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let row = rows.entry(col[i]).or_insert(0);
            let n = Node {
                col: col[i],
                row: *row,
                lines: vec![clip(if name.is_empty() { "?" } else { name })],
                class: "event",
            };
            *row += 1;
            n
        })
        .collect();
    // Wider gaps than a flow's: the edges carry their numbers. Room above
    // the boxes for edges that skip columns, below for those going back.
    const W: i64 = 130;
    const GAP: i64 = 210;
    const ABOVE: i64 = 70;
    const BELOW: i64 = 110;
    const ROW: i64 = NODE_H + ABOVE + BELOW;
    let x = |n: &Node| MARGIN + n.col * (W + GAP);
    let y = |n: &Node| MARGIN + TITLE_H + ABOVE + n.row * ROW;
    let cols = nodes.iter().map(|n| n.col + 1).max().unwrap_or(1);
    let rows_n = nodes.iter().map(|n| n.row + 1).max().unwrap_or(1);
    let width = (2 * MARGIN + cols * (W + GAP) - GAP).max(420);
    let height = 2 * MARGIN + TITLE_H + rows_n * ROW;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>
<style>.event rect {{ fill: #eef4ff; stroke: #4a6fa5; }} text.first {{ font-weight: bold; font-size: 13px; }} .failed {{ fill: #c00; }} .label {{ text-anchor: middle; paint-order: stroke; stroke: #fff; stroke-width: 3px; }}</style>
<text x="{MARGIN}" y="{}" font-size="14" font-weight="bold">service graph</text>"##,
        MARGIN + 16
    );
    // Labels go on top of everything, boxes included.
    let mut labels = String::new();
    // Edges of one kind leaving one service are spread apart.
    let mut spread: HashMap<(usize, u8), i64> = HashMap::new();
    for e in edges {
        let (Some(p), Some(c)) = (index(&e.producer), index(&e.consumer)) else {
            continue;
        };
        let (a, b) = (&nodes[p], &nodes[c]);
        let step = b.col - a.col;
        // 0: to the next column, straight across; 1: further on, an arc
        // above; 2: back (or within a column), an arc below.
        let kind: u8 = match step {
            1 => 0,
            s if s > 1 => 1,
            _ => 2,
        };
        let k = spread.entry((p, kind)).or_insert(0);
        let i = *k % 4;
        *k += 1;
        let (d, lx, ly) = match kind {
            0 => {
                let (x1, y1) = (x(a) + W, y(a) + 12 + i * 13);
                let (x2, y2) = (x(b), y(b) + NODE_H / 2);
                let bend = (x1 + x2) / 2;
                (
                    format!("M{x1},{y1} C{bend},{y1} {bend},{y2} {x2},{y2}"),
                    bend,
                    (y1 + y2) / 2 - 3,
                )
            }
            1 => {
                let (x1, y1) = (x(a) + W / 2 + i * 12, y(a));
                let (x2, y2) = (x(b) + W / 2 - 12, y(b));
                let top = y1.min(y2) - 30 - i * 12;
                (
                    format!("M{x1},{y1} C{x1},{top} {x2},{top} {x2},{y2}"),
                    (x1 + x2) / 2,
                    (y1 + 3 * top) / 4 - 2,
                )
            }
            _ => {
                let (x1, y1) = (x(a) + W / 2 - i * 12, y(a) + NODE_H);
                let (x2, y2) = (x(b) + W / 2 + 12, y(b) + NODE_H);
                let bottom = y1.max(y2) + 40 + i * 16;
                (
                    format!("M{x1},{y1} C{x1},{bottom} {x2},{bottom} {x2},{y2}"),
                    (x1 + x2) / 2,
                    (y1 + 3 * bottom) / 4 + 4,
                )
            }
        };
        let _ = writeln!(
            o,
            r##"<path d="{d}" fill="none" stroke="{}" marker-end="url(#arrow)"/>"##,
            if e.failed > 0 { "#c00" } else { "#555" }
        );
        let label = format!(
            "{} ×{}{} p99 {}",
            e.event_type,
            e.count,
            if e.failed > 0 {
                format!(" ✗{}", e.failed)
            } else {
                String::new()
            },
            format_micros(e.latency.p99_us)
        );
        let _ = writeln!(
            labels,
            r#"<text class="label{}" x="{lx}" y="{ly}">{}</text>"#,
            if e.failed > 0 { " failed" } else { "" },
            escape(&label)
        );
    }
    for n in &nodes {
        let _ = writeln!(
            o,
            r#"<g class="{}"><rect x="{}" y="{}" width="{W}" height="{NODE_H}" rx="6"/><text class="first" x="{}" y="{}">{}</text></g>"#,
            n.class,
            x(n),
            y(n),
            x(n) + 10,
            y(n) + NODE_H / 2 + 4,
            escape(&n.lines[0])
        );
    }
    o.push_str(&labels);
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(escape("a\u{1}b"), "a\u{fffd}b");
    }

    #[test]
    fn long_lines_are_clipped() {
        let long = "x".repeat(100);
        assert_eq!(clip(&long).chars().count(), LINE_MAX);
        assert_eq!(clip("short"), "short");
    }
}
