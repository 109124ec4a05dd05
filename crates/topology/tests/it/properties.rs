//! Property tests: no input panics the loader, the verifier, the path
//! enumeration or the renderers; injected defects are always flagged.

use std::fmt::Write as _;

use choreo_topology::render::{self, GraphOptions};
use choreo_topology::{Code, PathLimits, Severity, Topology, asyncapi};
use proptest::prelude::*;

/// Everything a topology can be put through. Must not panic.
fn exercise(t: &Topology) {
    let findings = t.verify();
    for d in &findings {
        assert!(!d.message.is_empty());
        let _ = d.to_string();
    }
    let limits = PathLimits::default().max_listed(5).budget(5_000);
    for flow in t.paths(limits) {
        assert!(flow.listed.len() <= 5);
        assert!(flow.count >= flow.listed.len() as u64 || !flow.exact);
        for e in &flow.listed {
            let _ = e.to_string();
        }
    }
    for topics in [false, true] {
        let options = GraphOptions::default().topics(topics);
        let _ = render::dot(t, options);
        let _ = render::mermaid(t, options);
        let _ = render::json(t, options);
    }
    let doc = asyncapi::export(t, |_, _| Ok(serde_json::json!({"type": "object"}))).unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    for event in t.events() {
        let _ = t.consumers_of(&event.name).count();
        let _ = t.emitters_of(&event.name).count();
        let _ = t.flows_of(&event.name).count();
        let _ = t.flows_starting_with(&event.name).count();
    }
}

fn load_and_exercise(text: &str) {
    match Topology::parse(text, "prop.yaml") {
        Ok(t) => exercise(&t),
        Err(choreo_topology::Error::Invalid { diagnostics, .. }) => {
            assert!(
                !diagnostics.is_empty(),
                "an invalid topology names its problems"
            );
            for d in &diagnostics {
                assert_eq!(d.severity, Severity::Error);
                assert!(d.pos.line >= 1, "every load problem has a position: {d}");
            }
        }
        Err(other) => panic!("unexpected error kind: {other}"),
    }
}

/// Pieces of topology files, so random sequences of them hit the loader's
/// paths far more often than random characters would.
const TOKENS: &[&str] = &[
    "name: ",
    "events:",
    "services:",
    "flows:",
    "description: ",
    "topic: ",
    "schema: ",
    "emits: ",
    "on:",
    "emit: ",
    "one_of: ",
    "within: ",
    "starts_with: ",
    "ends_with: ",
    "A",
    "B",
    "C",
    "Abc",
    "orders",
    "5s",
    "1h30m",
    "0s",
    "12",
    "-3",
    "1.5",
    "true",
    "on",
    "yes",
    "null",
    "~",
    "\n",
    "\n  ",
    "\n    ",
    "\n      ",
    "  ",
    "{",
    "}",
    "[",
    "]",
    ", ",
    ": ",
    "- ",
    "&x ",
    "*x",
    "<<: ",
    "!!str ",
    "!tag ",
    "'",
    "\"",
    "# c",
    "---",
    "...",
    "? ",
    "|",
    ">",
    "\t",
    "0x1F",
    "99999999999999999999999",
    ".inf",
    "\u{feff}",
    "é",
    "\\",
];

fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..80).prop_map(|t| t.concat())
}

/// A syntactically valid topology with random (possibly dangling or cyclic)
/// references, reaction shapes and durations.
fn random_topology() -> impl Strategy<Value = String> {
    let reaction = (
        0usize..10,                              // on
        0u8..4,                                  // shape: nothing, all, one_of, empty map
        prop::collection::vec(0usize..10, 0..4), // emitted
        prop::option::of(prop::sample::select(
            &["5s", "1m", "250ms", "2h", "bad"][..],
        )),
    );
    let service = (
        prop::collection::vec(0usize..10, 0..3), // emits
        prop::collection::vec(reaction, 0..4),
    );
    let flow = (
        0usize..10,
        prop::collection::vec(0usize..10, 0..3),
        prop::option::of(prop::sample::select(&["1s", "30s", "1h"][..])),
    );
    (
        1usize..9,
        prop::collection::vec(0usize..4, 9), // topic of each event
        prop::collection::vec(service, 0..6),
        prop::collection::vec(flow, 0..3),
    )
        .prop_map(|(n_events, topics, services, flows)| {
            // Index n_events and above name undeclared events.
            let ev = |i: usize| format!("E{i}");
            let mut y = String::from("name: random\nevents:\n");
            for i in 0..n_events {
                let topic = ["alpha", "beta", "alpha.v1", "alpha_v1"][topics[i]];
                let _ = writeln!(y, "  {}: {{ topic: {topic} }}", ev(i));
            }
            y.push_str("services:\n");
            for (s, (emits, reactions)) in services.iter().enumerate() {
                let _ = writeln!(y, "  s{s}:");
                let list = |v: &[usize]| v.iter().map(|&i| ev(i)).collect::<Vec<_>>().join(", ");
                let _ = writeln!(y, "    emits: [{}]", list(emits));
                y.push_str("    on:\n");
                for (on, shape, emitted, within) in reactions {
                    let within = within.map(|w| format!(", within: {w}")).unwrap_or_default();
                    let body = match shape {
                        0 => format!("{{ {} }}", within.trim_start_matches(", ")),
                        1 => format!("{{ emit: [{}]{within} }}", list(emitted)),
                        2 => format!("{{ emit: {{ one_of: [{}] }}{within} }}", list(emitted)),
                        _ => "{}".to_owned(),
                    };
                    let _ = writeln!(y, "      {}: {body}", ev(*on));
                }
            }
            y.push_str("flows:\n");
            for (f, (start, ends, within)) in flows.iter().enumerate() {
                let ends = ends.iter().map(|&i| ev(i)).collect::<Vec<_>>().join(", ");
                let within = within.map(|w| format!(", within: {w}")).unwrap_or_default();
                let _ = writeln!(
                    y,
                    "  f{f}: {{ starts_with: {}, ends_with: [{ends}]{within} }}",
                    ev(*start)
                );
            }
            y
        })
}

/// A correct topology by construction: events in layers, each non-final event
/// consumed by its own service that emits (all-of or one_of) events of the next
/// layer, every event of a layer emitted by some reaction of the layer before,
/// and the final layer ending the flow. The first reaction is a `one_of`.
#[derive(Debug, Clone)]
struct Layered {
    /// layers[i] = number of events in layer i (layer 0 has the start only).
    layers: Vec<usize>,
    /// For each non-final event (in order): one_of?, and picks into the next layer.
    reactions: Vec<(bool, Vec<usize>)>,
}

fn layered() -> impl Strategy<Value = Layered> {
    prop::collection::vec(1usize..4, 1..5)
        .prop_flat_map(|mut middle| {
            let mut layers = vec![1];
            layers.append(&mut middle);
            layers.push(2); // the two ends
            let non_final: usize = layers[..layers.len() - 1].iter().sum();
            let reactions = prop::collection::vec(
                (any::<bool>(), prop::collection::vec(0usize..8, 1..3)),
                non_final,
            );
            (Just(layers), reactions)
        })
        .prop_map(|(layers, mut reactions)| {
            reactions[0].0 = true;
            Layered { layers, reactions }
        })
}

impl Layered {
    /// The YAML, plus a defect hook: `extra_events`, `extra_services`.
    fn yaml(&self, defect: Defect) -> String {
        let name = |layer: usize, i: usize| format!("L{layer}E{i}");
        let last = self.layers.len() - 1;
        // Which events each reaction emits, making sure every event of the next
        // layer is emitted by someone.
        let mut emits: Vec<Vec<Vec<usize>>> = Vec::new();
        let mut k = 0;
        for layer in 0..last {
            let next = self.layers[layer + 1];
            let mut lists: Vec<Vec<usize>> = (0..self.layers[layer])
                .map(|_| {
                    let (_, picks) = &self.reactions[k];
                    k += 1;
                    let mut l: Vec<usize> = picks.iter().map(|p| p % next).collect();
                    l.sort_unstable();
                    l.dedup();
                    l
                })
                .collect();
            for target in 0..next {
                if !lists.iter().any(|l| l.contains(&target)) {
                    let n = lists.len();
                    lists[target % n].push(target);
                }
            }
            emits.push(lists);
        }
        let mut y = String::from("name: layered\nevents:\n");
        for (layer, &n) in self.layers.iter().enumerate() {
            for i in 0..n {
                let _ = writeln!(y, "  {}: {{ topic: t{layer} }}", name(layer, i));
            }
        }
        if defect != Defect::None {
            y.push_str("  Defect: { topic: defects }\n");
        }
        y.push_str("services:\n  starter:\n    emits: [L0E0]\n");
        let mut k = 0;
        let mut dead_end_written = false;
        for (layer, lists) in emits.iter().enumerate() {
            for (i, targets) in lists.iter().enumerate() {
                let (one_of, _) = self.reactions[k];
                k += 1;
                let mut list: Vec<String> = targets.iter().map(|&j| name(layer + 1, j)).collect();
                if defect == Defect::DeadBranch && one_of && !dead_end_written {
                    // The first one_of reached gets an alternative that goes nowhere.
                    list.push("Defect".to_owned());
                    dead_end_written = true;
                }
                let emit = if one_of {
                    format!("{{ one_of: [{}] }}", list.join(", "))
                } else {
                    format!("[{}]", list.join(", "))
                };
                let _ = writeln!(
                    y,
                    "  s{layer}x{i}:\n    on:\n      {}: {{ emit: {emit}, within: 1s }}",
                    name(layer, i)
                );
            }
        }
        y.push_str("  sink:\n    on:\n");
        for i in 0..self.layers[last] {
            let _ = writeln!(y, "      {}: {{}}", name(last, i));
        }
        match defect {
            Defect::DeadBranch => y.push_str("      Defect: {}\n"),
            Defect::NeverEmitted => {
                y.push_str("  ghost:\n    on:\n      Defect: { emit: [L1E0] }\n")
            }
            Defect::None => {}
        }
        let ends: Vec<String> = (0..self.layers[last]).map(|i| name(last, i)).collect();
        let _ = writeln!(
            y,
            "flows:\n  main:\n    starts_with: L0E0\n    ends_with: [{}]\n    within: 1h",
            ends.join(", ")
        );
        y
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defect {
    None,
    DeadBranch,
    NeverEmitted,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        load_and_exercise(&text);
    }

    #[test]
    fn yaml_like_text_never_panics(text in yamlish()) {
        load_and_exercise(&text);
    }

    #[test]
    fn random_topologies_never_panic(text in random_topology()) {
        load_and_exercise(&text);
    }

    #[test]
    fn correct_layered_topologies_have_no_errors_or_warnings(l in layered()) {
        let t = Topology::parse(&l.yaml(Defect::None), "layered.yaml").unwrap();
        let bad: Vec<String> = t.verify().iter()
            .filter(|d| d.severity >= Severity::Warning)
            .map(ToString::to_string)
            .collect();
        prop_assert!(bad.is_empty(), "{}\n{}", l.yaml(Defect::None), bad.join("\n"));
        for flow in t.paths(PathLimits::default()) {
            for e in &flow.listed {
                prop_assert_eq!(e.outcome, choreo_topology::Outcome::Ended);
            }
        }
    }

    #[test]
    fn a_one_of_branch_with_no_way_to_an_end_is_flagged(l in layered()) {
        let yaml = l.yaml(Defect::DeadBranch);
        let t = Topology::parse(&yaml, "layered.yaml").unwrap();
        let found = t.verify();
        let flagged = found.iter().any(|d| {
            d.code == Code::UnreachableEnd
                && d.severity == Severity::Error
                && d.message.contains("picks 'Defect'")
        });
        prop_assert!(flagged, "{yaml}\n{found:#?}");
    }

    #[test]
    fn a_consumed_event_nobody_emits_is_flagged(l in layered()) {
        let yaml = l.yaml(Defect::NeverEmitted);
        let t = Topology::parse(&yaml, "layered.yaml").unwrap();
        let defect_pos = t.event("Defect").unwrap().pos;
        let found = t.verify();
        let flagged = found.iter().any(|d| {
            d.code == Code::NeverEmitted && d.severity == Severity::Error && d.pos == defect_pos
        });
        prop_assert!(flagged, "{yaml}\n{found:#?}");
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!(
        "name: x\nevents: {}{}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    load_and_exercise(&deep);
    let deep_map = format!(
        "name: x\nevents: {}1{}",
        "{a: ".repeat(10_000),
        "}".repeat(10_000)
    );
    load_and_exercise(&deep_map);
}

#[test]
fn alias_bombs_are_refused() {
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let prev = i - 1;
        let _ = writeln!(
            bomb,
            "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]"
        );
    }
    load_and_exercise(&bomb);
}

#[test]
fn a_long_chain_does_not_overflow_the_stack() {
    let n = 5_000;
    let mut y = String::from("name: chain\nevents:\n");
    for i in 0..=n {
        let _ = writeln!(y, "  E{i}: {{ topic: t }}");
    }
    y.push_str("services:\n  s:\n    emits: [E0]\n    on:\n");
    for i in 0..n {
        let _ = writeln!(y, "      E{i}: {{ emit: [E{}], within: 1s }}", i + 1);
    }
    let _ = writeln!(
        y,
        "flows:\n  f: {{ starts_with: E0, ends_with: [E{n}], within: 1m }}"
    );
    let t = Topology::parse(&y, "chain.yaml").unwrap();
    let found = t.verify();
    assert!(
        found.iter().any(|d| d.code == Code::WithinTooShort),
        "{found:?}"
    );
    let paths = t.paths(PathLimits::default());
    assert!(
        !paths[0].exact,
        "the chain is deeper than the enumeration follows"
    );
}
