//! `choreo` on Kafka (librdkafka's mock cluster, reached over loopback by the
//! binary): tracing topics directly, capturing them, dead letters, and the
//! tracer scaling out as a consumer group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use choreo_core::{Bus, dlq_headers};
use choreo_kafka::mock::MockKafka;
use choreo_kafka::{KafkaBus, KafkaConfig, ReaderOptions, RecordReader, Topics};
use choreo_topology::Topology;
use choreo_trace::capture::Reader;
use choreo_trace::{Record, Report, Tracer, TracerConfig};

fn topology_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topologies/order-fulfillment.yaml")
}

fn choreo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_choreo"))
        .args(args)
        .env(
            "CHOREO_KAFKA_OPTIONS",
            "fetch.wait.max.ms=50;topic.metadata.refresh.interval.ms=1000",
        )
        .output()
        .expect("choreo runs")
}

fn config(brokers: &str) -> KafkaConfig {
    KafkaConfig::new(brokers)
        .set("fetch.wait.max.ms", "50")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .session_timeout(Duration::from_secs(6))
}

/// A simulated run with failures and lost emissions, captured to a file.
fn simulate(dir: &Path) -> (PathBuf, Vec<Record>) {
    let capture = dir.join("run.avro");
    let out = choreo(&[
        "simulate",
        topology_path().to_str().unwrap(),
        "--flows",
        "200",
        "--seed",
        "5",
        "--latency",
        "0ms",
        "--fail",
        "inventory=0.4",
        "--drop",
        "shipping=0.05",
        "--quiet",
        "--capture",
        capture.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<Record> = Reader::open(&capture)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    (capture, records)
}

/// A mock cluster holding the records of a run, every topic with 4 partitions.
async fn kafka_with(records: &[Record]) -> (MockKafka, KafkaBus) {
    let kafka = MockKafka::start(1).unwrap();
    let topology = Topology::from_path(topology_path()).unwrap();
    for t in choreo_trace::tap_topics(&topology) {
        kafka.create_topic(&t, 4).unwrap();
    }
    let bus = KafkaBus::new(config(&kafka.bootstrap_servers())).unwrap();
    for r in records {
        bus.publish(r.envelope.clone()).await.unwrap();
    }
    (kafka, bus)
}

fn report_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// What must agree between two traces of the same events, wherever they were read.
fn essentials(v: &serde_json::Value) -> serde_json::Value {
    let rules: BTreeMap<String, u64> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_owned(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    serde_json::json!({
        "flows": v["flows"],
        "events": v["input"]["events"],
        "receipts": v["input"]["receipts"],
        "dead_letters": v["input"]["dead_letters"],
        "rules": rules,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_capture_and_dead_letters_on_kafka_agree_with_the_capture_file() {
    let dir = tempfile::tempdir().unwrap();
    let (capture, records) = simulate(dir.path());
    let (kafka, bus) = kafka_with(&records).await;
    let brokers = kafka.bootstrap_servers();
    let t = topology_path();
    let topology = t.to_str().unwrap();

    // `choreo trace SOURCE… -t TOPOLOGY -f json -q`, judged at one "now" (a
    // file's default is its newest record, Kafka's the wall clock).
    let newest = records.iter().map(|r| r.envelope.time).max().unwrap();
    let now = newest.saturating_add(Duration::from_secs(120)).to_rfc3339();
    let trace_json = |source: &[&str]| {
        choreo(
            &[
                &["trace"],
                source,
                &["-t", topology, "-f", "json", "-q", "--now", &now],
            ]
            .concat(),
        )
    };

    // choreo trace straight from Kafka finds what it finds in the file.
    let from_file = trace_json(&[capture.to_str().unwrap()]);
    let from_kafka = trace_json(&["--brokers", &brokers]);
    assert_eq!(
        from_kafka.status.code(),
        Some(1),
        "violations exit 1: {}",
        String::from_utf8_lossy(&from_kafka.stderr)
    );
    assert_eq!(
        essentials(&report_json(&from_kafka)),
        essentials(&report_json(&from_file))
    );

    // choreo capture records the topics into a file that traces the same.
    let recaptured = dir.path().join("kafka.avro");
    let pattern = r"(orders|payments|inventory|shipping|choreo\.receipts|.*\.dlq)";
    let out = choreo(&[
        "capture",
        "--brokers",
        &brokers,
        "--pattern",
        pattern,
        "-o",
        recaptured.to_str().unwrap(),
        "-q",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(Reader::open(&recaptured).unwrap().count(), records.len());
    let again = trace_json(&[recaptured.to_str().unwrap()]);
    assert_eq!(
        essentials(&report_json(&again)),
        essentials(&report_json(&from_file))
    );

    // choreo dlq list sees every dead letter, grouped by reason.
    let dead: Vec<&Record> = records
        .iter()
        .filter(|r| r.envelope.headers.get(dlq_headers::REASON).is_some())
        .collect();
    assert!(!dead.is_empty());
    let out = choreo(&["dlq", "list", "--brokers", &brokers, "-f", "json"]);
    assert_eq!(out.status.code(), Some(1), "dead letters found: exit 1");
    let listed = report_json(&out);
    assert_eq!(listed["count"].as_u64(), Some(dead.len() as u64));
    assert_eq!(
        listed["by_reason"][0]["reason"],
        "handler failed: injected failure (attempt 3)"
    );
    let from_file = report_json(&choreo(&[
        "dlq",
        "list",
        "--capture",
        capture.to_str().unwrap(),
        "-f",
        "json",
    ]));
    assert_eq!(from_file["count"], listed["count"]);

    // show one, then replay them all: back on their topic, same id, a replay count.
    let id = dead[0].envelope.id.to_string();
    let out = choreo(&["dlq", "show", &id, "--brokers", &brokers]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("reason        handler failed after 3 attempts"),
        "{shown}"
    );
    assert!(shown.contains("service       inventory"), "{shown}");
    // The record's own headers as received, then choreo's, apart.
    let (own, ours) = shown
        .split_once("choreo's headers")
        .expect("choreo's headers apart");
    let own = own
        .split_once("headers as received")
        .expect("the record's headers")
        .1;
    assert!(
        own.contains("ce_id: ") && !own.contains("choreo-dlq-"),
        "{shown}"
    );
    assert!(
        ours.contains("choreo-dlq-reason: handler failed"),
        "{shown}"
    );
    let out = choreo(&["dlq", "replay", "--brokers", &brokers, "--all", "--dry-run"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("would replay")
            .count(),
        dead.len()
    );
    let out = choreo(&[
        "dlq",
        "replay",
        "--brokers",
        &brokers,
        "--service",
        "inventory",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reader = RecordReader::open(
        &config(&brokers),
        ReaderOptions::new(Topics::names(["payments"])),
    )
    .await
    .unwrap();
    let mut replayed = Vec::new();
    while let Some(r) = reader.next().await {
        let r = r.unwrap();
        if r.envelope.headers.get_str(dlq_headers::REPLAYS) == Some("1") {
            replayed.push(r.envelope.id.to_string());
        }
    }
    replayed.sort();
    let mut expected: Vec<String> = dead.iter().map(|r| r.envelope.id.to_string()).collect();
    expected.sort();
    assert_eq!(replayed, expected);
    drop(bus);
}

/// Everything two tracers say, added up, against what one says.
fn totals(reports: &[&Report]) -> serde_json::Value {
    let mut rules: BTreeMap<String, u64> = BTreeMap::new();
    let mut edges: BTreeMap<String, u64> = BTreeMap::new();
    let (mut started, mut completed, mut failed, mut stuck, mut progress) = (0, 0, 0, 0, 0);
    for r in reports {
        started += r.flows.started;
        completed += r.flows.completed;
        failed += r.flows.failed;
        stuck += r.flows.stuck;
        progress += r.flows.in_progress;
        for f in &r.findings {
            *rules.entry(f.rule.to_string()).or_default() += f.count;
        }
        for e in &r.edges {
            *edges
                .entry(format!(
                    "{} --{}--> {}",
                    e.producer, e.event_type, e.consumer
                ))
                .or_default() += e.count;
        }
    }
    serde_json::json!({"started": started, "completed": completed, "failed": failed, "stuck": stuck,
        "in_progress": progress, "rules": rules, "edges": edges})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tracers_in_one_group_split_the_flows_and_together_report_what_one_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (_, records) = simulate(dir.path());
    let topology = Topology::from_path(topology_path()).unwrap();
    let kafka = MockKafka::start(1).unwrap();
    for t in choreo_trace::tap_topics(&topology) {
        kafka.create_topic(&t, 4).unwrap();
    }
    let brokers = kafka.bootstrap_servers();
    let topics = || Topics::names(choreo_trace::tap_topics(&topology));

    // Two members of one group, joined before anything is published.
    let group = |name: &str| ReaderOptions::new(topics()).follow().group(name);
    let mut a = RecordReader::open(&config(&brokers), group("tracers"))
        .await
        .unwrap();
    let mut b = RecordReader::open(&config(&brokers), group("tracers"))
        .await
        .unwrap();
    let all = choreo_trace::tap_topics(&topology).len() * 4;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Poll both so they take part in the rebalance.
        let _ = tokio::time::timeout(Duration::from_millis(100), a.next()).await;
        let _ = tokio::time::timeout(Duration::from_millis(100), b.next()).await;
        let (sa, sb) = (a.assignment(), b.assignment());
        if !sa.is_empty()
            && !sb.is_empty()
            && sa.len() + sb.len() == all
            && sa.iter().all(|p| !sb.contains(p))
        {
            // Co-partitioning: a member holds the same partition numbers of every topic.
            let parts = |s: &[(String, i32)]| {
                s.iter()
                    .map(|(_, p)| *p)
                    .collect::<std::collections::BTreeSet<_>>()
            };
            assert!(
                parts(&sa).is_disjoint(&parts(&sb)),
                "range assignment keeps partition numbers together: {sa:?} {sb:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle: {:?} / {:?}",
            a.assignment(),
            b.assignment()
        );
    }

    let bus = KafkaBus::new(config(&brokers)).unwrap();
    for r in &records {
        bus.publish(r.envelope.clone()).await.unwrap();
    }

    let total = records.len();
    let (mut ta, mut tb) = (
        Tracer::new(TracerConfig::batch(), Some(&topology)),
        Tracer::new(TracerConfig::batch(), Some(&topology)),
    );
    let (mut na, mut nb) = (0usize, 0usize);
    while na + nb < total {
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "read {} of {total}",
            na + nb
        );
        tokio::select! {
            Some(r) = a.next() => { let r = r.unwrap(); ta.ingest(&Record::new(r.envelope).at(r.partition as u32, r.offset as u64)); na += 1; }
            Some(r) = b.next() => { let r = r.unwrap(); tb.ingest(&Record::new(r.envelope).at(r.partition as u32, r.offset as u64)); nb += 1; }
        }
    }
    assert!(na > 0 && nb > 0, "both tracers got a share: {na} / {nb}");
    let now = ta.latest().max(tb.latest());
    ta.finish(now);
    tb.finish(now);

    // One tracer reading everything.
    let mut one = Tracer::new(TracerConfig::batch(), Some(&topology));
    let mut reader = RecordReader::open(&config(&brokers), ReaderOptions::new(topics()))
        .await
        .unwrap();
    while let Some(r) = reader.next().await {
        let r = r.unwrap();
        one.ingest(&Record::new(r.envelope).at(r.partition as u32, r.offset as u64));
    }
    one.finish(now);

    let (ra, rb, r1) = (ta.report(), tb.report(), one.report());
    assert!(ra.flows.started > 0 && rb.flows.started > 0);
    assert_eq!(
        totals(&[&ra, &rb]),
        totals(&[&r1]),
        "the union of the two reports is the one report"
    );
    assert_eq!(r1.flows.started, 200);
    assert_eq!(
        ra.input.orphans + rb.input.orphans,
        0,
        "each tracer saw whole flows"
    );
}

/// The body of `GET /metrics` on `port`, once it answers.
fn scrape(port: u16) -> Option<String> {
    choreo_testkit::http_get(port, "/metrics", Duration::from_secs(10))
}

/// The sum of the samples of `name` in a scrape.
fn sample_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `choreo trace --brokers` on a fresh cluster — a real broker (tansu) on
/// which the saga ran but nothing has failed yet, so no `.dlq` topic and no
/// `choreo.receipts` exist: the batch trace reads what exists and says what
/// is absent; the live one waits for the rest and reads them once they
/// appear; a topic named with --topics that does not exist is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_on_a_fresh_cluster_reads_the_topics_that_exist_and_waits_for_the_rest() {
    use choreo_core::{Envelope, Outcome, Receipt, Timestamp};
    let tansu = choreo_testkit::tansu::Tansu::start();
    let brokers = tansu.brokers();
    for t in ["orders", "payments", "inventory", "shipping"] {
        tansu.create_topic(t, 1);
    }
    // One whole flow, as the saga's services publish it.
    let bus = KafkaBus::new(config(&brokers)).unwrap();
    let placed =
        Envelope::new("OrderPlaced", "orders", r#"{"order_id":1}"#).with_source("checkout");
    let captured = Envelope::new("PaymentCaptured", "payments", "{}")
        .with_source("payment")
        .caused_by(&placed);
    let reserved = Envelope::new("StockReserved", "inventory", "{}")
        .with_source("inventory")
        .caused_by(&captured);
    let shipped = Envelope::new("OrderShipped", "shipping", "{}")
        .with_source("shipping")
        .caused_by(&reserved);
    for e in [&placed, &captured, &reserved, &shipped] {
        bus.publish(e.clone()).await.unwrap();
    }
    let t = topology_path();
    let topology = t.to_str().unwrap();

    let out = choreo(&[
        "trace",
        "--brokers",
        &brokers,
        "-t",
        topology,
        "-f",
        "json",
        "-q",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a completed flow, nothing wrong: {stderr}"
    );
    let report = report_json(&out);
    assert_eq!(report["input"]["events"], 4, "{report}");
    assert_eq!(report["flows"]["completed"], 1, "{report}");
    for absent in ["orders.dlq", "payments.dlq", "choreo.receipts"] {
        assert!(stderr.contains(absent), "says {absent} is absent: {stderr}");
    }

    // Named explicitly, a missing topic is the user's mistake.
    let out = choreo(&[
        "trace",
        "--brokers",
        &brokers,
        "--topics",
        "orders,orders.dlq",
        "-q",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'orders.dlq'") && stderr.contains("does not exist"),
        "{stderr}"
    );

    // Live: starts on the fresh cluster, picks up the dead-letter topic and
    // the receipts once the first dead letter and receipt make them.
    let port = choreo_testkit::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_choreo"))
        .args([
            "trace",
            "--brokers",
            &brokers,
            "-t",
            topology,
            "--follow",
            "--from-beginning",
        ])
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "-f",
            "json",
            "-q",
        ])
        .env(
            "CHOREO_KAFKA_OPTIONS",
            "fetch.wait.max.ms=50;topic.metadata.refresh.interval.ms=1000",
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let records = |want: f64, what: &str| {
        let what = what.to_owned();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let seen =
                    scrape(port).map_or(0.0, |m| sample_sum(&m, "choreo_trace_records_total"));
                if seen >= want {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: the live tracer read {seen} records of {want}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    records(4.0, "the flow").await;
    // A second order fails: its dead letter and its receipt make the topics.
    let second =
        Envelope::new("OrderPlaced", "orders", r#"{"order_id":2}"#).with_source("checkout");
    bus.publish(second.clone()).await.unwrap();
    let mut dead = second.clone();
    dead.topic = "orders.dlq".into();
    for (n, v) in [
        (
            dlq_headers::REASON,
            "handler failed after 3 attempts: card declined",
        ),
        (dlq_headers::SERVICE, "payment"),
        (dlq_headers::ATTEMPTS, "3"),
        (dlq_headers::TOPIC, "orders"),
    ] {
        dead.headers.insert(n, v);
    }
    bus.publish(dead).await.unwrap();
    let receipt = Receipt {
        service: "payment".into(),
        event_id: second.id.clone(),
        event_type: second.event_type.clone(),
        correlation_id: second.correlation_id.clone(),
        topic: second.topic.clone(),
        partition: 0,
        offset: 1,
        outcome: Outcome::DeadLettered,
        attempts: 3,
        reason: Some("handler failed after 3 attempts: card declined".into()),
        started: Timestamp::now(),
        duration_us: 10,
        emitted: vec![],
    };
    bus.publish(receipt.to_envelope("choreo.receipts".into(), &second))
        .await
        .unwrap();
    records(7.0, "the dead letter and the receipt on their new topics").await;
    let stopped = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("waiting for topics not on the cluster yet"),
        "{stderr}"
    );
    let report = report_json(&out);
    assert_eq!(report["input"]["dead_letters"], 1, "{report}");
    assert_eq!(report["input"]["receipts"], 1, "{report}");
    assert_eq!(report["input"]["events"], 5, "{report}");
}

/// `choreo dlq show` and `replay` on a dead letter that is a broken record as
/// received: show prints its headers as they arrived (the bytes that are not
/// UTF-8 escaped) and choreo's apart; replay publishes the original again,
/// byte for byte, with a replay count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_show_and_replay_keep_a_broken_record_as_it_was_received() {
    use bytes::Bytes;
    use choreo_kafka::RawRecord;
    let kafka = MockKafka::start(1).unwrap();
    for t in ["orders", "orders.dlq"] {
        kafka.create_topic(t, 1).unwrap();
    }
    let brokers = kafka.bootstrap_servers();
    let bus = KafkaBus::new(config(&brokers)).unwrap();
    let original = RawRecord::new(
        Some(Bytes::from_static(b"order-6")),
        Some(Bytes::from_static(br#"{"order_id": 6}"#)),
        Some(1_764_104_835_123),
    )
    .with_header("ce_specversion", Some(b"1.0"))
    .with_header("ce_id", Some(b"\xff\xfe"))
    .with_header("ce_type", Some(b"OrderPlaced"))
    .with_header("ce_time", Some(b"yesterday"))
    .with_header("x-null", None);
    let mut dead = original.clone();
    for (n, v) in [
        (
            dlq_headers::REASON,
            "malformed record: header 'ce_id' is not UTF-8",
        ),
        (dlq_headers::SERVICE, "payment"),
        (dlq_headers::ATTEMPTS, "0"),
        (dlq_headers::TOPIC, "orders"),
        (dlq_headers::PARTITION, "0"),
        (dlq_headers::OFFSET, "41"),
        (dlq_headers::TIME, "2026-01-31T12:00:00Z"),
        (dlq_headers::MALFORMED, "header 'ce_id' is not UTF-8"),
    ] {
        dead.push_header(n, Some(v.as_bytes()));
    }
    bus.publish_record("orders.dlq", &dead, 0).await.unwrap();

    // Its id is derived from where it was read, as it was when delivered.
    let out = choreo(&["dlq", "show", "orders/0/41", "--brokers", &brokers]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (own, ours) = shown.split_once("choreo's headers").expect("apart");
    let own = own
        .split_once("headers as received")
        .expect("as received")
        .1;
    assert!(own.contains("ce_id: \\xff\\xfe"), "{shown}");
    assert!(
        own.contains("ce_time: yesterday") && own.contains("x-null: (null)"),
        "{shown}"
    );
    assert!(
        ours.contains("choreo-dlq-malformed: header 'ce_id' is not UTF-8"),
        "{shown}"
    );
    let out = choreo(&[
        "dlq",
        "show",
        "orders/0/41",
        "--brokers",
        &brokers,
        "-f",
        "json",
    ]);
    let doc = report_json(&out);
    assert_eq!(doc["record"]["key"], "order-6");
    assert_eq!(
        doc["record"]["headers"].as_array().unwrap().len(),
        5,
        "{doc}"
    );

    let out = choreo(&["dlq", "replay", "orders/0/41", "--brokers", &brokers]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reader = RecordReader::open(
        &config(&brokers),
        ReaderOptions::new(Topics::names(["orders"])),
    )
    .await
    .unwrap();
    let replayed = reader.next().await.expect("the replay").unwrap();
    let expected = original.with_header(dlq_headers::REPLAYS, Some(b"1"));
    assert_eq!(
        *replayed.original, expected,
        "the original, byte for byte, with its count"
    );
}
