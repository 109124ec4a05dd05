//! Round trip: `choreo simulate --capture` with each kind of fault, then the
//! tracer on the capture; its findings must match the injected truth in the
//! sidecar — every fault found and attributed to the right service and event,
//! and nothing found in a clean run.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use choreo_core::Timestamp;
use choreo_sim::Truth;
use choreo_topology::Topology;
use choreo_trace::capture::Reader;
use choreo_trace::{FlowStatus, FlowTrace, Keep, Record, Report, Tracer, TracerConfig};

fn topology_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topologies/order-fulfillment.yaml")
}

struct Run {
    truth: Truth,
    report: Report,
    flows: Vec<FlowTrace>,
    records: Vec<Record>,
    _dir: tempfile::TempDir,
}

impl Run {
    /// (rule, service, event type, correlation id) of every finding.
    fn findings(&self, rule: &str) -> BTreeSet<(String, String, String)> {
        self.flows
            .iter()
            .flat_map(|f| &f.findings)
            .filter(|f| f.rule.to_string() == rule)
            .map(|f| {
                (
                    f.service.clone(),
                    f.event_type.clone(),
                    f.correlation_id.to_string(),
                )
            })
            .collect()
    }

    fn rules(&self) -> BTreeSet<String> {
        self.flows
            .iter()
            .flat_map(|f| &f.findings)
            .map(|f| f.rule.to_string())
            .collect()
    }

    /// (service, event type, correlation id) of every injected fault of `kind`.
    fn injected(&self, kind: &str) -> BTreeSet<(String, String, String)> {
        self.truth
            .of_kind(kind)
            .map(|i| {
                (
                    i.service.clone(),
                    i.event_type.clone(),
                    i.correlation_id.clone(),
                )
            })
            .collect()
    }
}

/// Simulates with `flags`, captures, and traces the capture as `choreo trace` would.
fn run(flags: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("run.avro");
    let out = Command::new(env!("CARGO_BIN_EXE_choreo"))
        .arg("simulate")
        .arg(topology_path())
        .args([
            "--seed",
            "11",
            "--latency",
            "0ms..2ms",
            "--quiet",
            "--capture",
        ])
        .arg(&capture)
        .args(flags)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "simulate failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let truth = Truth::read(&dir.path().join("run.truth.json"))
        .expect("the sidecar is written beside the capture");
    let topology = Topology::from_path(topology_path()).unwrap();
    let mut config = TracerConfig::batch();
    config.keep = Keep::All;
    let mut tracer = Tracer::new(config, Some(&topology));
    let mut records = Vec::new();
    let drained = choreo_trace::drive(
        Reader::open(&capture).unwrap(),
        &mut tracer,
        |r| records.push(r.clone()),
        |_| {},
    );
    assert!(drained.error.is_none(), "{:?}", drained.error);
    // As `choreo demo` does: the run is over, judge once every deadline has passed.
    tracer.finish(Some(judge_at(&topology, truth.finished)));
    let report = tracer.report();
    let flows = tracer.kept().to_vec();
    Run {
        truth,
        report,
        flows,
        records,
        _dir: dir,
    }
}

fn judge_at(topology: &Topology, finished: Timestamp) -> Timestamp {
    let mut longest = std::time::Duration::ZERO;
    for f in topology.flows() {
        longest = longest.max(f.within.unwrap_or_default());
    }
    for s in topology.services() {
        for r in s.reactions.values() {
            longest = longest.max(r.within.unwrap_or_default());
        }
    }
    finished.saturating_add(longest + std::time::Duration::from_millis(1))
}

#[test]
fn a_clean_run_reports_nothing() {
    let r = run(&["--flows", "120"]);
    assert!(r.truth.injected.is_empty());
    assert!(r.report.ok, "{}", r.report.summary());
    assert_eq!(r.report.flows.completed, 120);
    assert!(r.rules().is_empty());
}

#[test]
fn a_dropped_emission_is_found_at_the_service_and_event_that_dropped_it() {
    let r = run(&["--flows", "150", "--drop", "shipping=0.2"]);
    let injected = r.injected("drop");
    assert!(!injected.is_empty());
    assert_eq!(r.findings("missing-emit"), injected);
    for (_, _, flow) in &injected {
        let f = r
            .flows
            .iter()
            .find(|f| f.correlation_id.to_string() == *flow)
            .unwrap();
        assert_eq!(
            f.status,
            FlowStatus::Failed,
            "the flow came to rest without an end"
        );
    }
    assert_eq!(r.report.flows.failed as usize, injected.len());
}

#[test]
fn a_handler_that_fails_every_attempt_is_found_dead_lettered() {
    let r = run(&["--flows", "150", "--fail", "inventory=0.5"]);
    let last: BTreeSet<_> = r
        .truth
        .of_kind("fail")
        .filter(|i| i.dead_lettered)
        .map(|i| {
            (
                i.service.clone(),
                i.event_type.clone(),
                i.correlation_id.clone(),
            )
        })
        .collect();
    assert!(!last.is_empty());
    assert_eq!(r.findings("dead-lettered"), last);
    // Failures that a retry overcame are not violations.
    assert!(r.truth.of_kind("fail").count() > last.len() * 3);
    assert_eq!(r.rules(), BTreeSet::from(["dead-lettered".to_owned()]));
}

#[test]
fn an_undeclared_event_is_found_where_it_was_emitted() {
    let r = run(&["--flows", "120", "--extra", "payment=0.2"]);
    let injected: BTreeSet<_> = r
        .truth
        .of_kind("extra")
        .map(|i| (i.emitted[0].clone(), i.correlation_id.clone()))
        .collect();
    assert!(!injected.is_empty());
    let found: BTreeSet<_> = r
        .findings("unknown-event")
        .into_iter()
        .map(|(_, e, flow)| (e, flow))
        .collect();
    assert_eq!(found, injected);
    for f in r.flows.iter().flat_map(|f| &f.findings) {
        if f.rule.to_string() == "unknown-event" {
            assert!(f.message.contains("PaymentUndeclared"), "{}", f.message);
        }
    }
}

#[test]
fn both_branches_of_a_one_of_are_found_at_the_reaction() {
    let r = run(&["--flows", "150", "--wrong-branch", "inventory=0.2"]);
    let injected = r.injected("wrong-branch");
    assert!(!injected.is_empty());
    assert_eq!(r.findings("both-branches"), injected);
}

#[test]
fn duplicate_deliveries_are_collapsed_not_reported() {
    // One delivery at a time per partition: a duplicate arrives after its
    // original was handled, so idempotency removes it.
    let r = run(&["--flows", "150", "--duplicate", "0.2", "--concurrency", "1"]);
    let injected = r.truth.of_kind("duplicate").count() as u64;
    assert!(injected > 0);
    assert_eq!(r.report.input.duplicates, injected);
    assert!(r.report.ok, "{}", r.report.summary());
}

#[test]
fn a_service_down_past_a_deadline_is_found_late() {
    // checkout reacts within 2s; down from 0.1s to 2.5s, what it received
    // before 0.5s is handled more than 2s after it was published.
    let r = run(&[
        "--flows",
        "200",
        "--rate",
        "200",
        "--down",
        "checkout=100ms..2500ms",
    ]);
    assert_eq!(r.truth.of_kind("down").count(), 1);
    let late = r.findings("reaction-late");
    assert!(!late.is_empty());
    assert!(late.iter().all(|(s, _, _)| s == "checkout"), "{late:?}");
    assert_eq!(r.rules(), BTreeSet::from(["reaction-late".to_owned()]));
    assert_eq!(r.report.flows.completed, 200, "late, but every flow ends");
}

#[test]
fn a_service_down_for_good_leaves_its_flows_stuck_owing_its_events() {
    let r = run(&[
        "--flows",
        "200",
        "--rate",
        "200",
        "--down",
        "shipping=400ms..",
    ]);
    let stuck = r.findings("stuck");
    assert!(!stuck.is_empty());
    assert!(
        stuck
            .iter()
            .all(|(s, e, _)| s == "shipping" && e == "StockReserved"),
        "{stuck:?}"
    );
    let stuck_flows: HashSet<&str> = stuck.iter().map(|(_, _, f)| f.as_str()).collect();
    // Exactly the flows whose StockReserved shipping never handled.
    let unshipped: HashSet<String> = r
        .flows
        .iter()
        .filter(|f| f.status == FlowStatus::Stuck)
        .map(|f| f.correlation_id.to_string())
        .collect();
    assert_eq!(stuck_flows.len(), unshipped.len());
    assert_eq!(r.report.flows.stuck as usize, unshipped.len());
}

#[test]
fn reactions_completed_after_their_handler_are_no_fault() {
    // payment acks each order at once and answers up to 400 ms later (a
    // provider's callback), well within its 5 s.
    let r = run(&[
        "--flows",
        "120",
        "--rate",
        "400",
        "--deferred",
        "payment:OrderPlaced=100ms..400ms",
    ]);
    assert!(r.truth.injected.is_empty());
    assert!(r.report.ok, "{}", r.report.summary());
    assert_eq!(r.report.flows.completed, 120);
    assert!(r.rules().is_empty(), "{:?}", r.rules());

    // The same traffic cut while it ran: the flows waiting for payment are
    // in progress, owed by payment, and nothing is wrong.
    let topology = Topology::from_path(topology_path()).unwrap();
    let start = r.records.iter().map(|x| x.envelope.time).min().unwrap();
    let cut = start.saturating_add(std::time::Duration::from_millis(250));
    let mut config = TracerConfig::batch();
    config.keep = Keep::All;
    let mut tracer = Tracer::new(config, Some(&topology));
    for rec in r.records.iter().filter(|x| x.envelope.time <= cut) {
        tracer.ingest(rec);
    }
    tracer.finish(None);
    let report = tracer.report();
    assert!(report.ok, "{}", report.summary());
    assert!(report.findings.is_empty(), "{}", report.summary());
    assert!(report.flows.in_progress > 0, "{}", report.summary());
    assert_eq!(report.flows.failed + report.flows.stuck, 0);
    let waiting = tracer
        .kept()
        .iter()
        .filter(|f| f.owed.iter().any(|o| o.service == "payment"))
        .count();
    assert!(waiting > 0, "some flows wait for payment's answer");
}

#[test]
fn a_reaction_completed_after_its_bound_is_late_not_missing() {
    // inventory answers 3.1–3.3 s after the payment: past its 3 s.
    let r = run(&[
        "--flows",
        "30",
        "--rate",
        "100",
        "--deferred",
        "inventory=3100ms..3300ms",
    ]);
    let late = r.findings("reaction-late");
    assert!(!late.is_empty());
    assert!(
        late.iter()
            .all(|(s, e, _)| s == "inventory" && e == "PaymentCaptured"),
        "{late:?}"
    );
    assert_eq!(r.rules(), BTreeSet::from(["reaction-late".to_owned()]));
    // Every flow that was paid went through inventory, late.
    let paid = r
        .flows
        .iter()
        .filter(|f| f.events().any(|e| e.event_type == "PaymentCaptured"))
        .count();
    assert_eq!(late.len(), paid);
    assert_eq!(r.report.flows.completed, 30, "late, but every flow ends");
}

#[test]
fn a_sink_down_for_good_is_found_never_handling_what_it_reacts_to() {
    // notifications stops after 300 ms; every flow still ends, but the
    // customers of the later ones were never told.
    let r = run(&[
        "--flows",
        "120",
        "--rate",
        "200",
        "--down",
        "notifications=300ms..",
    ]);
    let found = r.findings("never-handled");
    assert!(!found.is_empty());
    // Exactly the end events notifications has no receipt for.
    let told: HashSet<String> = r
        .flows
        .iter()
        .flat_map(|f| f.events())
        .filter(|e| e.handled.iter().any(|h| h.service == "notifications"))
        .map(|e| e.id.to_string())
        .collect();
    let untold: BTreeSet<(String, String, String)> = r
        .flows
        .iter()
        .flat_map(|f| f.events().map(move |e| (f, e)))
        .filter(|(_, e)| {
            matches!(e.event_type.as_str(), "OrderShipped" | "OrderCancelled")
                && !told.contains(&e.id.to_string())
        })
        .map(|(f, e)| {
            (
                "notifications".to_owned(),
                e.event_type.to_string(),
                f.correlation_id.to_string(),
            )
        })
        .collect();
    assert_eq!(found, untold);
    assert_eq!(r.rules(), BTreeSet::from(["never-handled".to_owned()]));
    assert_eq!(r.report.flows.completed, 120, "the flows themselves ended");
}
