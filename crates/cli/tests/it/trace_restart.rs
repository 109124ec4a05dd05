//! `choreo trace --follow --group` on a real broker (tansu), killed with
//! `kill -9` and started again mid-run, or joined and left by other members:
//! the union of what its incarnations wrote is the truth of the run — every
//! flow judged once, with the status and findings the run gave it, as one
//! tracer that never stopped judges them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use choreo_core::{Bus, Envelope};
use choreo_kafka::{KafkaBus, KafkaConfig};
use choreo_testkit::tansu::Tansu;

fn topology() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topologies/order-fulfillment.yaml")
}

/// Options for every client: short fetch waits, quick metadata, and a
/// short session (a member restarted while its dead predecessor's session
/// is open waits for that session to end before it gets partitions).
const OPTIONS: &str = "fetch.wait.max.ms=50;topic.metadata.refresh.interval.ms=1000";
const SESSION_MS: &str = "6000";

/// One incarnation of the live tracer: its verdicts (flows-jsonl) and its
/// log in files, killed with SIGKILL when dropped.
pub(crate) struct TracerProcess {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl TracerProcess {
    fn start(dir: &Path, n: usize, brokers: &str, group: &str) -> TracerProcess {
        TracerProcess::start_with(dir, n, brokers, group, &topology(), &[])
    }

    /// Incarnation `n` in `group`, checking against the topology file
    /// `topology`, with `extra` arguments.
    pub(crate) fn start_with(
        dir: &Path,
        n: usize,
        brokers: &str,
        group: &str,
        topology: &Path,
        extra: &[&str],
    ) -> TracerProcess {
        let port = choreo_testkit::free_port();
        let out = std::fs::File::create(dir.join(format!("tracer-{n}.jsonl"))).unwrap();
        let log = dir.join(format!("tracer-{n}.log"));
        let err = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_choreo"))
            .args(["trace", "--brokers", brokers, "-t"])
            .arg(topology)
            .args(["--follow", "--group", group, "--lookback", "10m"])
            .args(extra)
            .args(["--format", "flows-jsonl", "-q"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .env("CHOREO_KAFKA_OPTIONS", OPTIONS)
            .env("CHOREO_KAFKA_SESSION_TIMEOUT_MS", SESSION_MS)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("choreo runs");
        TracerProcess { child, port, log }
    }

    /// `GET path`: the whole answer, once it answers.
    pub(crate) fn get(&self, path: &str) -> Option<String> {
        choreo_testkit::http_get(self.port, path, Duration::from_secs(5))
    }

    /// `GET /health`: the status code, once it answers.
    pub(crate) fn health(&self) -> Option<u16> {
        self.get("/health")?.split_whitespace().nth(1)?.parse().ok()
    }

    /// The value of the sample `series` (name and labels as written) in
    /// `/metrics`.
    pub(crate) fn sample(&self, series: &str) -> Option<f64> {
        let text = self.get("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits until `/health` says 200 (ready): the tracer joined and restored.
    pub(crate) fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.health() != Some(200) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the tracer exited ({status}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the tracer was not ready within 60 s: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub(crate) fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and waits for it to checkpoint, hand over and exit.
    pub(crate) fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = self.log_text();
                // 1: it judged stuck flows.
                assert!(
                    matches!(status.code(), Some(0 | 1)),
                    "the tracer failed: {status}: {log}"
                );
                return log;
            }
            assert!(Instant::now() < deadline, "the tracer did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TracerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One flow's verdict: its status and its findings' rule codes, sorted.
pub(crate) type Verdict = (String, Vec<String>);

/// The verdict of one line of `choreo trace --format jsonl` output.
pub(crate) fn verdict(line: &serde_json::Value) -> Verdict {
    let mut rules: Vec<String> = line["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap().to_owned())
        .collect();
    rules.sort();
    (line["status"].as_str().unwrap().to_owned(), rules)
}

/// Every verdict the incarnations wrote, by correlation id (a flow judged
/// twice has two).
fn union(dir: &Path, incarnations: usize) -> BTreeMap<String, Vec<(usize, Verdict)>> {
    let mut all: BTreeMap<String, Vec<(usize, Verdict)>> = BTreeMap::new();
    for n in 0..incarnations {
        let text = std::fs::read_to_string(dir.join(format!("tracer-{n}.jsonl"))).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("tracer {n} wrote a line that is not JSON ({e}): {line}")
            });
            assert!(
                v.get("before_horizon").is_none(),
                "a 10 min look-back covers every flow of the run: {line}"
            );
            all.entry(v["correlation_id"].as_str().unwrap().to_owned())
                .or_default()
                .push((n, verdict(&v)));
        }
    }
    all
}

/// The steps of flow `i`: shipped, cancelled after a failed payment, or (one
/// in eight) left waiting by shipping, which never emits: stuck once its
/// 10 s `within` passes.
fn steps(i: usize) -> Vec<(&'static str, &'static str, &'static str)> {
    let placed = ("OrderPlaced", "orders", "checkout");
    match i % 8 {
        0 => vec![
            placed,
            ("PaymentCaptured", "payments", "payment"),
            ("StockReserved", "inventory", "inventory"),
        ],
        3 | 6 => vec![
            placed,
            ("PaymentFailed", "payments", "payment"),
            ("OrderCancelled", "orders", "checkout"),
        ],
        _ => vec![
            placed,
            ("PaymentCaptured", "payments", "payment"),
            ("StockReserved", "inventory", "inventory"),
            ("OrderShipped", "shipping", "shipping"),
        ],
    }
}

/// The topology's `within` of the reaction that emits `ty`, µs.
fn within_us(ty: &str) -> i64 {
    let seconds = match ty {
        "PaymentCaptured" | "PaymentFailed" => 5,
        "StockReserved" => 3,
        "OrderShipped" => 10,
        "OrderCancelled" => 2,
        other => panic!("no reaction emits {other}"),
    };
    seconds * 1_000_000
}

/// Publishes `flows` flows at a steady rate, a new one every `every`; each
/// flow advances one step every 4 ticks, so that many are mid-way at any
/// moment. Returns, when the last step of the last flow is published, the
/// truth of the run: each flow's correlation id and the verdict it must get
/// — completed without findings, or (shipping never emits) stuck for `stuck`.
async fn publish(bus: KafkaBus, flows: usize, every: Duration) -> BTreeMap<String, Verdict> {
    let mut truth: BTreeMap<String, Verdict> = BTreeMap::new();
    let mut active: Vec<(usize, usize, Option<Envelope>)> = Vec::new();
    let mut next = 0;
    let mut tick = tokio::time::interval(every);
    let mut n = 0u64;
    let mut publishing = tokio::task::JoinSet::new();
    while next < flows || !active.is_empty() {
        tick.tick().await;
        n += 1;
        if next < flows {
            active.push((next, 0, None));
            next += 1;
        }
        for (i, step, last) in active.iter_mut() {
            if *step > 0 && n % 4 != (*i as u64) % 4 {
                continue;
            }
            let (ty, topic, source) = steps(*i)[*step];
            let payload = format!(r#"{{"order_id":{i}}}"#);
            let mut env = Envelope::new(ty, topic, payload).with_source(source);
            if let Some(cause) = last {
                env = env.caused_by(cause);
                // A machine too busy to keep the pace makes a reaction late
                // for real: the truth says so too.
                let gap = env.time.as_micros() - cause.time.as_micros();
                if gap > within_us(ty) {
                    let rules = &mut truth
                        .get_mut(&env.correlation_id.to_string())
                        .expect("the flow's first event was published")
                        .1;
                    rules.push("reaction-late".to_owned());
                    rules.sort();
                }
            } else {
                let verdict = if *i % 8 == 0 {
                    ("stuck".to_owned(), vec!["stuck".to_owned()])
                } else {
                    ("completed".to_owned(), Vec::new())
                };
                truth.insert(env.correlation_id.to_string(), verdict);
            }
            let bus = bus.clone();
            let sent = env.clone();
            publishing.spawn(async move { bus.publish(sent).await });
            *last = Some(env);
            *step += 1;
        }
        // This tick's records are on the broker before the next tick's
        // (their effects) are sent.
        while let Some(sent) = publishing.join_next().await {
            sent.unwrap().unwrap();
        }
        active.retain(|(i, step, _)| *step < steps(*i).len());
    }
    truth
}

/// Waits until the incarnations together judged `flows` flows.
fn wait_judged(dir: &Path, incarnations: usize, flows: usize, live: &TracerProcess) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let judged = union(dir, incarnations).len();
        if judged >= flows {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{judged} of {flows} flows judged: {}",
            live.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The incarnations' verdicts against the run's truth: every flow judged
/// once, each as it must be.
fn compare(dir: &Path, incarnations: usize, truth: &BTreeMap<String, Verdict>) {
    let union = union(dir, incarnations);
    let twice: Vec<_> = union.iter().filter(|(_, v)| v.len() > 1).collect();
    if !twice.is_empty() {
        // Which incarnations said them, and what each said of its
        // checkpoints, restores and hand-overs: the why of a repeat.
        let logs: String = (0..incarnations)
            .map(|n| {
                let log = std::fs::read_to_string(dir.join(format!("tracer-{n}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        [
                            "checkpoint",
                            "assigned",
                            "ready:",
                            "handed",
                            "partitions went",
                        ]
                        .iter()
                        .any(|w| l.contains(w))
                    })
                    .collect();
                format!("\ntracer {n}:\n{}", lines.join("\n"))
            })
            .collect();
        panic!(
            "{} flows judged more than once (id, [(tracer, verdict)]): {twice:?}{logs}",
            twice.len()
        );
    }
    let union: BTreeMap<String, Verdict> = union
        .into_iter()
        .map(|(k, mut v)| (k, v.remove(0).1))
        .collect();
    let differ: Vec<_> = truth
        .iter()
        .filter(|(k, v)| union.get(*k) != Some(v))
        .map(|(k, v)| (k, v, union.get(k)))
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} flows differ from the truth (id, truth, the tracers' verdict): {:?}",
        differ.len(),
        truth.len(),
        &differ[..differ.len().min(10)]
    );
    assert_eq!(union.len(), truth.len(), "no flow the run did not make");
}

fn create_topics(tansu: &Tansu, partitions: u32) {
    for t in ["orders", "payments", "inventory", "shipping"] {
        tansu.create_topic(t, partitions);
    }
}

fn bus(brokers: &str) -> KafkaBus {
    KafkaBus::new(KafkaConfig::new(brokers).set("linger.ms", "0")).unwrap()
}

/// A single tracer killed with `kill -9` twice mid-run and started again
/// with the same group: its incarnations together judge every flow once,
/// as the whole run's trace does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracer_killed_and_restarted_mid_run_judges_every_flow_once_and_right() {
    let tansu = Tansu::start();
    create_topics(&tansu, 2);
    killed_and_restarted(&tansu.brokers(), 2, 240, Duration::from_millis(50)).await;
}

/// The same, ten times over ten thousand flows (about two minutes: run it
/// with `cargo test --release -p choreo-cli --test it -- --ignored
/// trace_restart::`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn a_tracer_killed_ten_times_over_ten_thousand_flows_judges_each_once() {
    // In memory: sqlite falls behind a steady 450 records/s on a busy machine.
    let tansu = Tansu::in_memory();
    create_topics(&tansu, 2);
    killed_and_restarted(&tansu.brokers(), 10, 10_000, Duration::from_millis(8)).await;
}

/// Runs `flows` flows, one every `every`, through a tracer killed with
/// `kill -9` and started again `kills` times, and compares.
async fn killed_and_restarted(brokers: &str, kills: usize, flows: usize, every: Duration) {
    let brokers = brokers.to_owned();
    let dir = tempfile::tempdir().unwrap();
    let group = "tracers";

    let mut tracer = TracerProcess::start(dir.path(), 0, &brokers, group);
    tracer.wait_ready();
    let publisher = tokio::spawn(publish(bus(&brokers), flows, every));
    let mut incarnations = 1;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_secs(4)).await;
        tracer.kill();
        tracer = TracerProcess::start(dir.path(), incarnations, &brokers, group);
        incarnations += 1;
        let started = Instant::now();
        tokio::task::block_in_place(|| tracer.wait_ready());
        eprintln!(
            "incarnation {incarnations} ready in {:?}",
            started.elapsed()
        );
    }
    let truth = publisher.await.unwrap();
    tokio::task::block_in_place(|| wait_judged(dir.path(), incarnations, flows, &tracer));
    // The last incarnation's restore and lag, as its metrics say them.
    assert_eq!(tracer.sample("choreo_trace_restoring"), Some(0.0));
    assert!(
        tracer.sample("choreo_trace_restore_seconds_count") >= Some(1.0),
        "{:?}",
        tracer.get("/metrics")
    );
    let replayed = tracer.sample("choreo_trace_restore_records_total");
    assert!(replayed > Some(0.0), "{replayed:?}");
    let lag_deadline = Instant::now() + Duration::from_secs(30);
    while tracer
        .get("/metrics")
        .is_none_or(|m| !m.contains("choreo_kafka_consumer_lag{group=\"tracers\""))
    {
        assert!(
            Instant::now() < lag_deadline,
            "no consumer lag: {:?}",
            tracer.get("/metrics")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = tokio::task::block_in_place(|| tracer.stop());
    assert!(log.contains("ready:"), "{log}");
    compare(dir.path(), incarnations, &truth);
}

/// Two tracers in one group; mid-run one is killed with `kill -9` and
/// started again, a third joins, and one of the first two stops gracefully:
/// partitions move at each step, and every flow is still judged once, as the
/// whole run's trace judges it — no orphan, stuck or missing-emit from a
/// rebalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracers_joining_leaving_and_crashing_in_one_group_judge_every_flow_once() {
    let tansu = Tansu::start();
    create_topics(&tansu, 4);
    let brokers = tansu.brokers();
    let dir = tempfile::tempdir().unwrap();
    let group = "tracers";
    let flows = 400;

    let mut a = TracerProcess::start(dir.path(), 0, &brokers, group);
    let mut b = TracerProcess::start(dir.path(), 1, &brokers, group);
    tokio::task::block_in_place(|| {
        a.wait_ready();
        b.wait_ready();
    });
    let publisher = tokio::spawn(publish(bus(&brokers), flows, Duration::from_millis(40)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.kill();
    let mut a = TracerProcess::start(dir.path(), 2, &brokers, group);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut c = TracerProcess::start(dir.path(), 3, &brokers, group);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log_b = tokio::task::block_in_place(|| b.stop());
    assert!(log_b.contains("assigned"), "{log_b}");
    let truth = publisher.await.unwrap();
    tokio::task::block_in_place(|| {
        a.wait_ready();
        c.wait_ready();
        wait_judged(dir.path(), 4, flows, &c);
    });
    let log_a = tokio::task::block_in_place(|| a.stop());
    let log_c = tokio::task::block_in_place(|| c.stop());
    for log in [&log_a, &log_c] {
        assert!(log.contains("ready:"), "{log}");
    }
    compare(dir.path(), 4, &truth);
    // Partitions moved: the crashed member's went to others, which restored
    // them, and the one that left handed its flows over.
    let restored = |log: &str| log.matches("ready:").count();
    assert!(restored(&log_a) + restored(&log_c) >= 2, "{log_a}\n{log_c}");
    assert!(log_b.contains("handed over"), "{log_b}");
}
