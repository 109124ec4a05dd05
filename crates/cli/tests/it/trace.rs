//! `choreo trace` end to end: reports, formats, exports and exit codes.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use choreo_core::{Envelope, Name, Timestamp};
use choreo_trace::Record;
use choreo_trace::capture::{Format, Writer};
use predicates::prelude::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn choreo() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_choreo"));
    cmd.current_dir(root());
    cmd
}

const BASE: i64 = 1_764_000_000_000_000;

fn ev(ty: &str, topic: &str, source: &str, ms: i64, cause: Option<&Envelope>) -> Envelope {
    let mut e = Envelope::new(Name::from(ty), Name::from(topic), "{}").with_source(source);
    if let Some(c) = cause {
        e = e.caused_by(c);
    }
    e.time = Timestamp::from_micros(BASE + ms * 1000);
    e
}

/// Two flows: one shipped, one whose payment emitted both branches (and then
/// nothing happened: stuck once "now" is late enough).
fn capture(dir: &Path, format: Format) -> (PathBuf, Envelope, Envelope) {
    let ok = ev("OrderPlaced", "orders", "checkout", 0, None);
    let c = ev("PaymentCaptured", "payments", "payment", 10, Some(&ok));
    let r = ev("StockReserved", "inventory", "inventory", 20, Some(&c));
    let s = ev("OrderShipped", "shipping", "shipping", 30, Some(&r));
    let bad = ev("OrderPlaced", "orders", "checkout", 40, None);
    let b1 = ev("PaymentCaptured", "payments", "payment", 50, Some(&bad));
    let b2 = ev("PaymentFailed", "payments", "payment", 50, Some(&bad));
    let path = dir.join(match format {
        Format::Avro => "run.avro",
        Format::JsonLines => "run.jsonl",
    });
    let mut w = Writer::create(&path, format).unwrap();
    for (i, e) in [&ok, &c, &r, &s, &bad, &b1, &b2].into_iter().enumerate() {
        w.write(&Record::new(e.clone()).at(0, i as u64)).unwrap();
    }
    w.finish().unwrap();
    (path, ok, bad)
}

fn clean(dir: &Path) -> PathBuf {
    let ok = ev("OrderPlaced", "orders", "checkout", 0, None);
    let f = ev("PaymentFailed", "payments", "payment", 10, Some(&ok));
    let x = ev("OrderCancelled", "orders", "checkout", 20, Some(&f));
    let path = dir.join("clean.avro");
    let mut w = Writer::create(&path, Format::Avro).unwrap();
    for e in [ok, f, x] {
        w.write(&Record::new(e)).unwrap();
    }
    w.finish().unwrap();
    path
}

#[test]
fn a_conforming_capture_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = clean(dir.path());
    choreo()
        .args([
            "trace",
            path.to_str().unwrap(),
            "-t",
            "topologies/order-fulfillment.yaml",
        ])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "ok: 1 flow traced against 'order-fulfillment', no violations",
        ))
        .stdout(predicate::str::contains(
            "payment --PaymentFailed--> checkout",
        ));
}

#[test]
fn violations_exit_1_with_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    for format in [Format::Avro, Format::JsonLines] {
        let (path, _, _) = capture(dir.path(), format);
        choreo()
            .args([
                "trace",
                path.to_str().unwrap(),
                "--topology",
                "topologies/order-fulfillment.yaml",
            ])
            .assert()
            .code(1)
            .stdout(predicate::str::contains("both-branches"))
            .stdout(predicate::str::contains("payment/OrderPlaced ×1"))
            .stdout(predicate::str::contains(
                "NOT OK: 1 violation of 1 rule in 2 flows",
            ));
    }
}

#[test]
fn now_decides_between_in_progress_and_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = capture(dir.path(), Format::Avro);
    let later = Timestamp::from_micros(BASE + 60_000_000).to_rfc3339();
    let out = choreo()
        .args([
            "trace",
            path.to_str().unwrap(),
            "-t",
            "topologies/order-fulfillment.yaml",
            "--now",
            &later,
            "-f",
            "json",
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["flows"]["stuck"], 1);
    assert_eq!(v["flows"]["completed"], 1);
    assert_eq!(v["listed"][0]["owed"][0]["service"], "inventory");
    assert!(v["edges"].as_array().unwrap().len() >= 3);
    // Times in the JSON are microseconds since the epoch.
    assert_eq!(v["now"], serde_json::json!(BASE + 60_000_000));
    choreo()
        .args(["trace", path.to_str().unwrap(), "--now", "soon"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--now 'soon' is not RFC 3339"));
}

#[test]
fn one_flow_as_a_timeline_and_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ok, bad) = capture(dir.path(), Format::Avro);
    choreo()
        .args([
            "trace",
            path.to_str().unwrap(),
            "-t",
            "topologies/order-fulfillment.yaml",
            "--flow",
            &ok.id.to_string(),
        ])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("(checkout) — completed"))
        .stdout(predicate::str::contains(
            "+0µs OrderPlaced by checkout on orders/0@0",
        ))
        .stdout(predicate::str::contains(
            "└─ +30.0ms OrderShipped by shipping on shipping/0@3",
        ));
    choreo()
        .args([
            "trace",
            path.to_str().unwrap(),
            "-t",
            "topologies/order-fulfillment.yaml",
            "--flow",
            &bad.id.to_string(),
        ])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("✗ violation[both-branches]"));
    let out = choreo()
        .args([
            "trace",
            path.to_str().unwrap(),
            "-t",
            "topologies/order-fulfillment.yaml",
            "--flow",
            &bad.id.to_string(),
            "-f",
            "json",
        ])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 3);
    assert_eq!(v["findings"][0]["rule"], "both-branches");
    choreo()
        .args(["trace", path.to_str().unwrap(), "--flow", "no-such-flow"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "flow no-such-flow is not in the capture",
        ));
}

#[test]
fn the_service_graph_as_dot_and_mermaid() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = capture(dir.path(), Format::Avro);
    choreo()
        .args(["trace", path.to_str().unwrap(), "-f", "dot"])
        .assert()
        .stdout(predicate::str::starts_with("digraph choreo_trace {"))
        .stdout(predicate::str::contains("\"checkout\" -> \"payment\""));
    choreo()
        .args(["trace", path.to_str().unwrap(), "-f", "mermaid"])
        .assert()
        .stdout(predicate::str::starts_with("flowchart LR"))
        .stdout(predicate::str::contains("OrderPlaced ×2"));
}

#[test]
fn export_writes_csv_and_xes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = capture(dir.path(), Format::Avro);
    let csv = dir.path().join("log.csv");
    choreo()
        .args([
            "trace",
            path.to_str().unwrap(),
            "--export",
            "csv",
            "-o",
            csv.to_str().unwrap(),
        ])
        .assert()
        .stderr(predicate::str::contains("wrote 7 events in 2 cases"));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("case:concept:name,concept:name,time:timestamp,org:resource"));
    assert_eq!(text.lines().count(), 8);
    let xes = dir.path().join("log.xes");
    choreo()
        .args([
            "trace",
            path.to_str().unwrap(),
            "--export",
            "xes",
            "-o",
            xes.to_str().unwrap(),
        ])
        .assert()
        .success();
    assert_eq!(
        std::fs::read_to_string(&xes)
            .unwrap()
            .matches("<event>")
            .count(),
        7
    );
    choreo()
        .args(["trace", path.to_str().unwrap(), "--export", "csv"])
        .assert()
        .code(2);
}

#[test]
fn a_damaged_capture_is_reported_up_to_the_damage_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = capture(dir.path(), Format::JsonLines);
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.len() - 30;
    std::fs::write(&path, &text[..cut]).unwrap();
    choreo()
        .args([
            "trace",
            path.to_str().unwrap(),
            "-t",
            "topologies/order-fulfillment.yaml",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("damaged at byte"))
        .stderr(predicate::str::contains("after 6 records"))
        .stdout(predicate::str::contains("read 6 records"));
}

#[test]
fn unreadable_input_exits_2() {
    choreo()
        .args(["trace", "no/such/capture.avro"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no/such/capture.avro"));
    choreo()
        .args(["trace", "README.md"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown format"));
}
