//! The flow viewer from the command line: `choreo demo` says how to open its
//! run, that command serves it (`choreo trace CAPTURE --ui`), and `choreo
//! trace --follow --ui` serves flows live from Kafka as they arrive.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use choreo_core::{Bus as _, Envelope};
use choreo_kafka::mock::MockKafka;
use choreo_kafka::{KafkaBus, KafkaConfig};
use choreo_testkit::{Running, free_port};

/// Long enough for a debug build to start and read a capture.
const PATIENCE: Duration = Duration::from_secs(90);

/// `GET path` on loopback: the status and the body, when something answered.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Waits for `check` on `GET path` to hold, with a deadline; the JSON that held.
fn wait_for(
    port: u16,
    path: &str,
    child: &mut Running,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + PATIENCE;
    let mut last = None;
    loop {
        if let Some((200, body)) = get(port, path)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
        {
            if check(&v) {
                return v;
            }
            last = Some(v);
        }
        if let Some(end) = child.exited() {
            panic!("{end} before {path} answered as expected (last: {last:?})");
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not answer as expected within {PATIENCE:?}; last: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_demo_says_how_to_browse_its_run_and_that_command_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("demo.avro");
    let out = Command::new(env!("CARGO_BIN_EXE_choreo"))
        .args(["demo", "--flows", "60", "--capture"])
        .arg(&capture)
        .output()
        .expect("choreo demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("choreo trace ") && l.ends_with("--ui"))
        .unwrap_or_else(|| panic!("no `choreo trace … --ui` in:\n{stdout}"));
    assert!(stdout.contains("http://127.0.0.1:9464/"), "{stdout}");
    assert!(line.contains(capture.to_str().unwrap()), "{line}");

    // The command as printed, on a free port instead of the default.
    let port = free_port();
    let mut args: Vec<String> = line.split_whitespace().skip(1).map(str::to_owned).collect();
    args.push(format!("127.0.0.1:{port}"));
    let mut child = Running::new(
        "choreo trace --ui",
        Command::new(env!("CARGO_BIN_EXE_choreo"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("choreo trace runs"),
    );
    let list = wait_for(port, "/api/flows?limit=1000", &mut child, |_| true);
    assert_eq!(list["live"], false);
    assert_eq!(list["totals"]["started"], 60, "{list}");
    assert_eq!(list["held"]["recent"], 60, "every flow of the run is held");
    // Judged as the demo judged it: with faults injected, some flows went wrong.
    let bad = wait_for(port, "/api/flows?status=stuck,failed", &mut child, |_| true);
    let bad = bad["flows"].as_array().unwrap();
    assert!(!bad.is_empty(), "the demo's faults show");
    let id = bad[0]["correlation_id"].as_str().unwrap();
    let flow = wait_for(port, &format!("/api/flows/{id}"), &mut child, |_| true);
    assert!(
        !flow["summary"]["owing"].as_array().unwrap().is_empty(),
        "{flow}"
    );
    let (status, page) = get(port, &format!("/flows/{id}")).unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("data-page=\"flow\""));
    let (status, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(status, 200, "the metrics share the port");
    assert!(metrics.contains("choreo_trace_"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tracer_serves_flows_as_they_arrive() {
    let kafka = MockKafka::start(1).unwrap();
    for t in ["orders", "payments"] {
        kafka.create_topic(t, 1).unwrap();
    }
    let config = KafkaConfig::new(kafka.bootstrap_servers())
        .set("fetch.wait.max.ms", "50")
        .set("topic.metadata.refresh.interval.ms", "1000");
    let bus = KafkaBus::new(config).unwrap();
    let port = free_port();
    let topology = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../topologies/order-fulfillment.yaml");
    let mut child = Running::new(
        "choreo trace --follow --ui",
        Command::new(env!("CARGO_BIN_EXE_choreo"))
            .args(["trace", "--brokers", &kafka.bootstrap_servers()])
            .args([
                "--topics",
                "orders,payments",
                "--follow",
                "--from-beginning",
                "-q",
            ])
            .arg("-t")
            .arg(&topology)
            .args(["--ui", &format!("127.0.0.1:{port}")])
            .env(
                "CHOREO_KAFKA_OPTIONS",
                "fetch.wait.max.ms=50;topic.metadata.refresh.interval.ms=1000",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("choreo trace runs"),
    );
    let list = tokio::task::block_in_place(|| wait_for(port, "/api/flows", &mut child, |_| true));
    assert_eq!(list["live"], true);

    let placed =
        Envelope::new("OrderPlaced", "orders", r#"{"order_id":42}"#).with_source("checkout");
    let captured = Envelope::new("PaymentCaptured", "payments", "{}")
        .with_source("payment")
        .caused_by(&placed);
    for e in [&placed, &captured] {
        bus.publish(e.clone()).await.unwrap();
    }
    let id = placed.correlation_id.to_string();
    let found = tokio::task::block_in_place(|| {
        wait_for(port, "/api/flows?q=order_id%3D42", &mut child, |v| {
            v["flows"][0]["events"] == 2
        })
    });
    let row = &found["flows"][0];
    assert_eq!(row["correlation_id"], id);
    assert_eq!(row["status"], "in_progress");
    assert_eq!(row["owing"], serde_json::json!(["inventory"]), "{row}");
    let (status, _) = get(port, &format!("/flows/{id}")).unwrap();
    assert_eq!(status, 200);
}
