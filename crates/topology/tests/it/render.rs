//! Renderer tests: the DOT goes through Graphviz, the Mermaid and JSON are
//! checked structurally (scripts/validate-renderings.sh also parses the
//! Mermaid with Mermaid's own parser).

use std::collections::HashSet;
use std::path::Path;

use choreo_topology::Topology;
use choreo_topology::render::{self, GraphOptions};

fn topologies() -> Vec<Topology> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topologies");
    [
        "order-fulfillment.yaml",
        "signup-kyc.yaml",
        "fixtures/broken.yaml",
    ]
    .iter()
    .map(|f| Topology::from_path(root.join(f)).unwrap())
    .collect()
}

fn options() -> [GraphOptions; 2] {
    [
        GraphOptions::default().topics(false),
        GraphOptions::default().topics(true),
    ]
}

#[test]
fn dot_renders_with_graphviz_and_shows_every_service_and_event() {
    for t in topologies() {
        for options in options() {
            let dot = render::dot(&t, options);
            let Some(svg) = choreo_testkit::graphviz(&dot) else {
                return;
            };
            assert!(svg.contains("<svg"), "{svg}");
            for s in t.services() {
                assert!(
                    svg.contains(&format!(">{}</text>", s.name)),
                    "{} missing",
                    s.name
                );
            }
            for e in t.events() {
                let used = t.consumers_of(&e.name).next().is_some()
                    || t.emitters_of(&e.name).next().is_some();
                if used {
                    assert!(
                        svg.contains(&format!(">{}</text>", e.name)),
                        "{} missing",
                        e.name
                    );
                }
            }
        }
    }
}

#[test]
fn dot_quotes_what_it_must() {
    let t = topologies().remove(0);
    let dot = render::dot(&t, GraphOptions::default());
    assert!(dot.starts_with("digraph \"order-fulfillment\" {"));
    assert!(
        dot.contains(
            r#""service:checkout" -> "service:payment" [label="OrderPlaced", style=bold];"#
        )
    );
    assert!(dot.contains(
        r#""service:payment" -> "service:inventory" [label="PaymentCaptured", style=dashed];"#
    ));
    assert!(dot.trim_end().ends_with('}'));
}

#[test]
fn mermaid_is_a_flowchart_with_declared_quoted_nodes() {
    for t in topologies() {
        for options in options() {
            let m = render::mermaid(&t, options);
            let mut lines = m.lines();
            assert_eq!(lines.next(), Some("flowchart LR"));
            let mut declared = HashSet::new();
            for line in lines {
                let line = line.trim();
                let id: String = line
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                assert!(!id.is_empty(), "line without an id: {line}");
                let rest = &line[id.len()..];
                if rest.starts_with(' ') {
                    // An edge: `a -->|"Event"| b`, between declared nodes.
                    assert!(declared.contains(&id), "edge from undeclared {id}: {line}");
                    let (arrow, tail) = rest.trim_start().split_once('|').unwrap();
                    assert!(["-->", "-.->", "==>"].contains(&arrow), "{line}");
                    let (label, to) = tail.split_once("| ").unwrap();
                    assert!(label.starts_with('"') && label.ends_with('"'), "{line}");
                    assert!(declared.contains(to), "edge to undeclared {to}: {line}");
                } else {
                    // A node: `id(...)` with a quoted label.
                    assert!(declared.insert(id.clone()), "{id} declared twice");
                    assert!(rest.contains('"'), "unquoted label: {line}");
                }
            }
        }
    }
}

#[test]
fn json_graph_edges_join_declared_nodes() {
    for t in topologies() {
        for options in options() {
            let g = render::json(&t, options);
            assert_eq!(g["format"], "choreo-graph");
            assert_eq!(g["version"], 1);
            let ids: HashSet<&str> = g["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_str().unwrap())
                .collect();
            for e in g["edges"].as_array().unwrap() {
                assert!(ids.contains(e["from"].as_str().unwrap()), "{e}");
                assert!(ids.contains(e["to"].as_str().unwrap()), "{e}");
                assert!(t.event(e["event"].as_str().unwrap()).is_some());
            }
        }
    }
}

#[test]
fn topic_mode_routes_events_through_topic_nodes() {
    let t = topologies().remove(0);
    let g = render::Graph::of(&t, GraphOptions::default().topics(true));
    let to_orders = g
        .edges
        .iter()
        .find(|e| e.event == "OrderPlaced" && e.to == "topic:orders")
        .expect("checkout -> orders");
    assert_eq!(to_orders.from, "service:checkout");
    assert!(
        g.edges
            .iter()
            .any(|e| e.from == "topic:orders" && e.to == "service:payment")
    );
    assert!(
        g.edges
            .iter()
            .all(|e| e.from.starts_with("topic:") || e.to.starts_with("topic:"))
    );
}

#[test]
fn broken_graph_shows_external_and_unconsumed_nodes() {
    let t = topologies().remove(2);
    let g = render::Graph::of(&t, GraphOptions::default());
    assert!(
        g.edges
            .iter()
            .any(|e| e.from == "external" && e.event == "Ghost")
    );
    assert!(
        g.edges
            .iter()
            .any(|e| e.to == "unconsumed" && e.event == "Shout")
    );
    assert!(
        g.edges
            .iter()
            .any(|e| e.to == "end" && e.event == "OrderDone")
    );
}
