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

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Orders with payloads and keys: 41 shipped; 42 paid and waiting for
/// inventory (stuck once its 3 s pass); 43 cancelled.
fn orders(dir: &Path) -> (PathBuf, [Envelope; 3]) {
    orders_as(dir, Format::JsonLines)
}

/// [`orders`] written in `format`.
fn orders_as(dir: &Path, format: Format) -> (PathBuf, [Envelope; 3]) {
    let order = |n: u64, ms: i64| {
        let mut e = Envelope::new(
            Name::from("OrderPlaced"),
            Name::from("orders"),
            format!("{{\"order_id\":{n},\"customer\":{{\"id\":\"c-{n}\"}}}}"),
        )
        .with_source("checkout");
        e.key = Some(format!("order-{n}").into_bytes().into());
        e.time = Timestamp::from_micros(BASE + ms * 1000);
        e
    };
    let o41 = order(41, 0);
    let c41 = ev("PaymentCaptured", "payments", "payment", 10, Some(&o41));
    let r41 = ev("StockReserved", "inventory", "inventory", 20, Some(&c41));
    let s41 = ev("OrderShipped", "shipping", "shipping", 30, Some(&r41));
    let o42 = order(42, 100);
    let c42 = ev("PaymentCaptured", "payments", "payment", 110, Some(&o42));
    let o43 = order(43, 200);
    let f43 = ev("PaymentFailed", "payments", "payment", 210, Some(&o43));
    let x43 = ev("OrderCancelled", "orders", "checkout", 220, Some(&f43));
    let path = dir.join(match format {
        Format::Avro => "orders.avro",
        _ => "orders.jsonl",
    });
    let mut w = Writer::create(&path, format).unwrap();
    for e in [&o41, &c41, &r41, &s41, &o42, &c42, &o43, &f43, &x43] {
        w.write(&Record::new(e.clone())).unwrap();
    }
    w.finish().unwrap();
    (path, [o41, o42, o43])
}

#[test]
fn every_flow_as_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, [o41, o42, o43]) = orders(dir.path());
    let later = Timestamp::from_micros(BASE + 60_000_000).to_rfc3339();
    let out = choreo()
        .args([
            "trace",
            path.to_str().unwrap(),
            "-t",
            "topologies/order-fulfillment.yaml",
        ])
        .args(["--now", &later, "-f", "flows-jsonl"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", stdout(&out));
    let of = |id: &Envelope| {
        lines
            .iter()
            .find(|l| l["correlation_id"] == id.id.to_string())
            .unwrap()
            .clone()
    };
    assert_eq!(of(&o41)["status"], "completed");
    assert_eq!(of(&o43)["status"], "completed");
    let stuck = of(&o42);
    assert_eq!(stuck["status"], "stuck");
    assert_eq!(stuck["flow"], "checkout");
    assert_eq!(stuck["ended"], serde_json::Value::Null);
    assert_eq!(stuck["owed_since"], serde_json::json!(BASE + 110_000));
    assert_eq!(stuck["findings"][0]["rule"], "stuck");
    assert_eq!(stuck["findings"][0]["service"], "inventory");
    assert_eq!(stuck["findings"][0]["event_type"], "PaymentCaptured");
    assert!(
        stuck["findings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("owes one of")
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT OK"),
        "the verdict goes to stderr"
    );
    // The same lines to a file, beside the summary.
    let file = dir.path().join("flows.jsonl");
    choreo()
        .args([
            "trace",
            path.to_str().unwrap(),
            "-t",
            "topologies/order-fulfillment.yaml",
        ])
        .args([
            "--now",
            &later,
            "--export",
            "flows",
            "-o",
            file.to_str().unwrap(),
        ])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("NOT OK"))
        .stderr(predicate::str::contains("wrote 3 flows"));
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);
}

#[test]
fn flows_are_found_by_id_key_or_payload_field() {
    // In either capture format: a search reads keys and payloads, which a
    // plain trace of an Avro capture skips.
    for format in [Format::JsonLines, Format::Avro] {
        found_by_id_key_or_payload_field(format);
    }
}

fn found_by_id_key_or_payload_field(format: Format) {
    let dir = tempfile::tempdir().unwrap();
    let (path, [o41, o42, _]) = orders_as(dir.path(), format);
    let find = |term: &str| {
        choreo()
            .args([
                "trace",
                path.to_str().unwrap(),
                "-t",
                "topologies/order-fulfillment.yaml",
            ])
            .args([
                "--now",
                &Timestamp::from_micros(BASE + 60_000_000).to_rfc3339(),
            ])
            .args(["--find", term])
            .assert()
    };
    // "Where is order 42?" — stuck, and who owes what.
    let out = find("order_id=42").code(1).get_output().clone();
    let text = stdout(&out);
    assert!(text.starts_with("1 flow match 'order_id=42':"), "{text}");
    assert!(text.contains(&o42.id.to_string()), "{text}");
    assert!(text.contains("stuck"), "{text}");
    assert!(
        text.contains("'inventory' owes one of StockReserved, OutOfStock"),
        "{text}"
    );
    // A nested field, a record key, an event id (not the first one) — exit 0: all is well there.
    for term in [
        "customer.id=c-41".to_owned(),
        "order-41".to_owned(),
        o41.id.to_string(),
    ] {
        let out = find(&term).code(0).get_output().clone();
        assert!(stdout(&out).contains(&o41.id.to_string()), "{term}");
        assert!(stdout(&out).contains("completed"), "{term}");
    }
    // As JSON, for scripts.
    let out = choreo()
        .args([
            "trace",
            path.to_str().unwrap(),
            "-t",
            "topologies/order-fulfillment.yaml",
        ])
        .args(["--find", "order_id=42", "-f", "json"])
        .assert()
        .code(0)
        .get_output()
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["status"], "in_progress", "judged at the newest record");
    find("order_id=99")
        .code(2)
        .stderr(predicate::str::contains("no flow has 'order_id=99'"));
}

#[test]
fn one_flow_as_a_graph_that_graphviz_and_mermaid_draw() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, bad) = capture(dir.path(), Format::Avro);
    let later = Timestamp::from_micros(BASE + 60_000_000).to_rfc3339();
    let draw = |format: &str| {
        let out = choreo()
            .args([
                "trace",
                path.to_str().unwrap(),
                "-t",
                "topologies/order-fulfillment.yaml",
            ])
            .args(["--now", &later, "--flow", &bad.id.to_string(), "-f", format])
            .assert()
            .code(1)
            .get_output()
            .clone();
        stdout(&out)
    };
    let dot = draw("dot");
    assert!(
        dot.starts_with(&format!("digraph \"flow {}\" {{", bad.id)),
        "{dot}"
    );
    // both-branches marked at OrderPlaced; two owed events hanging off the branches.
    assert!(dot.contains("✗ both-branches\", color=red"), "{dot}");
    assert_eq!(dot.matches("style=\"rounded,dashed\"").count(), 2, "{dot}");
    if let Some(svg) = choreo_testkit::graphviz(&dot) {
        // (SVG writes '-' as an entity.)
        for text in [
            "OrderPlaced",
            "PaymentCaptured",
            "PaymentFailed",
            "✗ both&#45;branches",
        ] {
            assert!(svg.contains(text), "{text} not drawn: {svg}");
        }
        assert!(
            svg.contains("owes one of StockReserved, OutOfStock"),
            "{svg}"
        );
    }
    let mermaid = draw("mermaid");
    let mut lines = mermaid.lines();
    assert_eq!(lines.next(), Some("flowchart LR"));
    // Nodes declared before edges use them; the classes exist.
    let mut declared = std::collections::HashSet::new();
    for line in lines {
        let line = line.trim();
        if let Some((id, _)) = line.split_once("[\"") {
            declared.insert(id.to_owned());
        } else if let Some((from, to)) = line.split_once(" --> ") {
            assert!(declared.contains(from) && declared.contains(to), "{line}");
        } else if let Some((from, rest)) = line.split_once(" -.->|") {
            let to = rest.rsplit("| ").next().unwrap();
            assert!(declared.contains(from) && declared.contains(to), "{line}");
        } else {
            assert!(
                line.starts_with("classDef ") || line.starts_with("class "),
                "{line}"
            );
        }
    }
    assert!(mermaid.contains("class e0,e1,e2 finding"), "{mermaid}");
    assert!(mermaid.contains("class owed0,owed1 owed"), "{mermaid}");
    let line = draw("flows-jsonl");
    assert_eq!(line.lines().count(), 1);
}

#[test]
fn explain_prints_a_rules_reference() {
    choreo()
        .args(["trace", "--explain", "never-handled"])
        .assert()
        .code(0)
        .stdout(predicate::str::starts_with("## `never-handled`"))
        .stdout(predicate::str::contains("**Names:** the consumer"));
    choreo()
        .args(["trace", "--explain", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("the rules are unknown-event, "));
}

#[test]
fn a_capture_cut_from_a_running_system_reads_in_progress_and_says_how_old_now_is() {
    let dir = tempfile::tempdir().unwrap();
    // Paid a moment ago; inventory's 3 s have not passed at the newest record.
    let placed = ev("OrderPlaced", "orders", "checkout", 0, None);
    let captured = ev("PaymentCaptured", "payments", "payment", 10, Some(&placed));
    let path = dir.path().join("cut.avro");
    let mut w = Writer::create(&path, Format::Avro).unwrap();
    for e in [&placed, &captured] {
        w.write(&Record::new(e.clone())).unwrap();
    }
    w.finish().unwrap();
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
            "judged at 2025-11-24T16:00:00.010000Z (the newest record's time)",
        ))
        .stdout(predicate::str::contains("note: the newest record is"))
        .stdout(predicate::str::contains("before the capture's end"))
        .stdout(predicate::str::contains(
            "1 flow in progress then may have stopped since",
        ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_is_judged_as_of_the_wall_clock() {
    use choreo_core::Bus as _;
    let kafka = choreo_kafka::mock::MockKafka::start(1).unwrap();
    let topology =
        choreo_topology::Topology::from_path(root().join("topologies/order-fulfillment.yaml"))
            .unwrap();
    for t in choreo_trace::tap_topics(&topology) {
        kafka.create_topic(&t, 1).unwrap();
    }
    let brokers = kafka.bootstrap_servers();
    let bus = choreo_kafka::KafkaBus::new(choreo_kafka::KafkaConfig::new(&brokers)).unwrap();
    // An order placed a minute ago; payment (5 s) never answered, and no
    // event has come since.
    let mut placed = Envelope::new(Name::from("OrderPlaced"), Name::from("orders"), "{}")
        .with_source("checkout");
    placed.time = Timestamp::from_micros(Timestamp::now().as_micros() - 60_000_000);
    bus.publish(placed.clone()).await.unwrap();
    let trace = |extra: &[&str]| {
        let brokers = brokers.clone();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_choreo"));
                cmd.current_dir(root())
                    .args([
                        "trace",
                        "--brokers",
                        &brokers,
                        "-t",
                        "topologies/order-fulfillment.yaml",
                    ])
                    .args(["-f", "json", "-q"])
                    .args(&extra)
                    .env(
                        "CHOREO_KAFKA_OPTIONS",
                        "fetch.wait.max.ms=50;topic.metadata.refresh.interval.ms=1000",
                    );
                cmd.output().unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = trace(&[]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["now_from"], "wall_clock");
    assert_eq!(v["flows"]["stuck"], 1, "{v:#}");
    assert_eq!(v["listed"][0]["owed"][0]["service"], "payment");
    // --now still decides.
    let at = placed
        .time
        .saturating_add(std::time::Duration::from_secs(1))
        .to_rfc3339();
    let out = trace(&["--now", &at]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["now_from"], "given");
    assert_eq!(v["flows"]["in_progress"], 1);
}

#[test]
fn the_corpus_capture_of_a_running_system_exits_0() {
    choreo()
        .args([
            "trace",
            "crates/trace/tests/corpus/in-flight.jsonl",
            "-t",
            "topologies/order-fulfillment.yaml",
        ])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "ok: 6 flows traced against 'order-fulfillment', no violations",
        ));
}
