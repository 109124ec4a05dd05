//! The corpus: captures shaped like production traffic (tests/corpus/*.jsonl,
//! written by tests/corpus/make.py), each with the verdict the tracer must
//! reach written by hand beside it (NAME.expected): every flow with its
//! status, every finding with its rule, service, event type and event — and
//! nothing else. The same must come out whatever the order of the records,
//! and with every record delivered twice.

use std::path::{Path, PathBuf};

use choreo_core::Timestamp;
use choreo_topology::Topology;
use choreo_trace::capture::Reader;
use choreo_trace::{Keep, Record, Tracer, TracerConfig};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::helpers::root;

fn corpus() -> PathBuf {
    root().join("crates/trace/tests/corpus")
}

/// What an `.expected` file says.
struct Expected {
    topology: Topology,
    now: Option<Timestamp>,
    unattributed: u64,
    /// The flows and findings, as [`verdict`] writes them.
    text: String,
}

fn expected(path: &Path) -> Expected {
    let text = std::fs::read_to_string(path).unwrap();
    let (mut topology, mut now, mut unattributed) = (None, None, 0);
    let mut body = String::new();
    for line in text.lines() {
        if let Some(header) = line.strip_prefix("# ") {
            if let Some(t) = header.strip_prefix("topology: ") {
                topology = Some(Topology::from_path(root().join(t)).unwrap());
            } else if let Some(t) = header.strip_prefix("now: ") {
                now = Some(Timestamp::parse_rfc3339(t).unwrap());
            } else if let Some(n) = header.strip_prefix("unattributed: ") {
                unattributed = n.parse().unwrap();
            }
        } else if !line.trim().is_empty() {
            body.push_str(line);
            body.push('\n');
        }
    }
    Expected {
        topology: topology.unwrap_or_else(|| panic!("{}: no '# topology:'", path.display())),
        now,
        unattributed,
        text: body,
    }
}

/// Every flow (by correlation id) with its status, then each finding
/// (rule, service, event type, event id), sorted.
fn verdict(t: &Tracer) -> String {
    let mut flows: Vec<(String, String)> = t
        .kept()
        .iter()
        .map(|f| {
            let mut findings: Vec<String> = f
                .findings
                .iter()
                .map(|x| {
                    format!(
                        "    {} {} {} {}\n",
                        x.rule,
                        if x.service.is_empty() {
                            "-"
                        } else {
                            &x.service
                        },
                        if x.event_type.is_empty() {
                            "-"
                        } else {
                            &x.event_type
                        },
                        x.event_id
                            .as_ref()
                            .map_or_else(|| "-".to_owned(), |id| id.to_string())
                    )
                })
                .collect();
            findings.sort();
            let id = f.correlation_id.to_string();
            (
                id.clone(),
                format!("{id} {}\n{}", f.status.as_str(), findings.concat()),
            )
        })
        .collect();
    flows.sort();
    flows.into_iter().map(|(_, text)| text).collect()
}

fn trace(e: &Expected, records: &[Record]) -> Tracer {
    let mut config = TracerConfig::batch();
    config.keep = Keep::All;
    let mut t = Tracer::new(config, Some(&e.topology));
    for r in records {
        t.ingest(r);
    }
    t.finish(e.now);
    t
}

#[test]
fn every_capture_of_the_corpus_gives_exactly_its_expected_verdict() {
    let mut names: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "expected"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 7, "the corpus: {names:?}");
    let mut failures = Vec::new();
    for path in &names {
        let e = expected(path);
        let capture = path.with_extension("jsonl");
        let records: Vec<Record> = Reader::open(&capture)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let name = capture.file_name().unwrap().to_string_lossy().into_owned();
        let t = trace(&e, &records);
        let got = verdict(&t);
        if got != e.text {
            failures.push(format!("{name}: expected\n{}got\n{got}", e.text));
            continue;
        }
        assert_eq!(
            t.report().input.unattributed,
            e.unattributed,
            "{name}: records without choreo metadata"
        );
        // Any order, and every record twice: the same verdict.
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let mut shuffled: Vec<Record> = records
            .iter()
            .flat_map(|r| [r.clone(), r.clone()])
            .collect();
        for round in 0..5 {
            shuffled.shuffle(&mut rng);
            let again = verdict(&trace(&e, &shuffled));
            assert_eq!(again, got, "{name}: shuffled and doubled, round {round}");
        }
        let mut reversed = records.clone();
        reversed.reverse();
        assert_eq!(verdict(&trace(&e, &reversed)), got, "{name}: reversed");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_flow_of_the_corpus_draws_with_graphviz() {
    let mut drawn = 0;
    for entry in std::fs::read_dir(corpus()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "expected") {
            continue;
        }
        let e = expected(&path);
        let records: Vec<Record> = Reader::open(path.with_extension("jsonl"))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for flow in trace(&e, &records).kept() {
            let dot = flow.to_dot();
            let Some(svg) = choreo_testkit::graphviz(&dot) else {
                return;
            };
            // Every event is drawn, and every debt.
            for ev in flow.events() {
                assert!(svg.contains(&format!(">{}</text>", ev.event_type)), "{dot}");
            }
            assert_eq!(svg.matches(">owes ").count(), flow.owed.len(), "{dot}");
            drawn += 1;
        }
    }
    assert!(drawn >= 30, "{drawn} flows drawn");
}
