//! The saga on Kafka, each service in its own process: every order reaches
//! an end, tracing the topics against the topology reports nothing, and every
//! process shuts down cleanly on SIGTERM.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use choreo_kafka::mock::MockKafka;
use choreo_kafka::{KafkaConfig, ReaderOptions, RecordReader, Topics};
use choreo_topology::Topology;
use choreo_trace::{Record, Report, Tracer, TracerConfig};

const ORDERS: u64 = 30;

fn topology() -> Topology {
    Topology::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../topologies/order-fulfillment.yaml"
    ))
    .unwrap()
}

struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(brokers: &str, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_order-saga"))
        .args(["--brokers", brokers])
        .args(args)
        .env("CHOREO_KAFKA_SESSION_TIMEOUT_MS", "6000")
        .env(
            "CHOREO_KAFKA_OPTIONS",
            "fetch.wait.max.ms=50;topic.metadata.refresh.interval.ms=1000",
        )
        .stderr(Stdio::piped())
        .spawn()
        .expect("order-saga starts")
}

/// Passes `child`'s stderr through, and returns a receiver that gets a
/// message once the process says its services run (their groups are joined).
fn watch_started(name: &str, child: &mut Child) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr is piped");
    let name = name.to_owned();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{name}] {line}");
            if line.starts_with("order-saga: running ") {
                let _ = tx.send(());
            }
        }
    });
    rx
}

/// Reads every topic of the topology to its end and traces it.
async fn trace(brokers: &str, topology: &Topology) -> Report {
    let config = KafkaConfig::new(brokers).set("fetch.wait.max.ms", "50");
    let mut reader = RecordReader::open(
        &config,
        ReaderOptions::new(Topics::names(choreo_trace::tap_topics(topology))),
    )
    .await
    .expect("reader");
    let mut tracer = Tracer::new(TracerConfig::batch(), Some(topology));
    while let Some(r) = reader.next().await {
        let r = r.expect("record");
        tracer.ingest(&Record::new(r.envelope).at(r.partition as u32, r.offset as u64));
    }
    tracer.finish(None);
    tracer.report()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_in_its_own_process_on_kafka() {
    let kafka = MockKafka::start(1).unwrap();
    let brokers = kafka.bootstrap_servers();
    let topology = topology();
    for t in choreo_trace::tap_topics(&topology) {
        kafka.create_topic(&t, 4).unwrap();
    }
    let mut procs = Procs(Vec::new());
    let mut started = Vec::new();
    for s in ["payment", "inventory", "shipping", "notifications"] {
        let mut child = spawn(&brokers, &["--service", s]);
        started.push((s, watch_started(s, &mut child)));
        procs.0.push((s.to_owned(), child));
    }
    // Orders are placed once every consumer has joined its group, so no
    // reaction's time includes another process's start-up.
    let joined_by = Instant::now() + Duration::from_secs(60);
    for (s, rx) in started {
        let left = joined_by.saturating_duration_since(Instant::now());
        rx.recv_timeout(left)
            .unwrap_or_else(|e| panic!("{s} did not start its services within 60 s: {e}"));
    }
    let orders = ORDERS.to_string();
    let mut checkout = spawn(
        &brokers,
        &["--service", "checkout", "--orders", &orders, "--rate", "50"],
    );
    drop(watch_started("checkout", &mut checkout));
    procs.0.push(("checkout".into(), checkout));

    let deadline = Instant::now() + Duration::from_secs(120);
    let report = loop {
        let report = trace(&brokers, &topology).await;
        if report.flows.completed == ORDERS {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {ORDERS} orders completed:\n{}",
            report.flows.completed,
            report.summary()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(report.flows.started, ORDERS);
    assert!(report.ok, "{}", report.summary());

    for (name, child) in &mut procs.0 {
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline + Duration::from_secs(60),
                "{name} did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{name} exited with {status}");
    }
}
