//! The soak on a real broker: the order saga as separate processes on tansu
//! (sqlite storage, durable across `kill -9`), `payment` and `inventory` on
//! PostgreSQL with their outbox and inbox, orders placed at a steady rate;
//! every few seconds one service process is killed with `kill -9` and
//! started again, and once, mid-run, the broker itself. A live tracer
//! (`choreo trace --follow --group`) judges the flows as they go, and an
//! audit consumer in the test keeps every record. At the end:
//!
//! - every order placed reached an end (shipped or cancelled), and none both;
//! - nothing was lost: every event's cause was published, the ledger holds
//!   one charge or decline per order and one refund per order out of stock;
//! - the tracer judged every flow once, and its verdict is the truth of the
//!   run: completed, with `handled-twice` exactly where a killed service
//!   really handled an event again (a stateless service restarted after
//!   publishing but before committing its position) — found from the
//!   records by the test itself — and nothing else.
//!
//! Ignored by default (minutes); run in a release build:
//!
//! ```sh
//! cargo build --release -p choreo-cli -p order-saga
//! CHOREO_SOAK_ORDERS=100000 CHOREO_SOAK_RATE=100 \
//!   cargo test --release -p choreo-cli --test it -- --ignored --nocapture saga_on_tansu::
//! ```
//!
//! The figures of a run are in docs/reliability.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use choreo_core::{
    Bus, Envelope, Outcome, RECEIPTS_TOPIC, Receipt, SubscribeOptions, Subscription,
};
use choreo_kafka::{KafkaBus, KafkaConfig};
use choreo_testkit::postgres::Postgres;
use choreo_testkit::tansu::Tansu;

use crate::trace_restart::{TracerProcess, Verdict, verdict};

/// Options for every client: short fetch waits (tansu holds a fetch for the
/// whole wait), quick metadata.
const OPTIONS: &str = "fetch.wait.max.ms=50;topic.metadata.refresh.interval.ms=1000";
/// A killed member's partitions go to its successor once its session times
/// out; a member that joins while its dead predecessor's session is open
/// may get no partitions from tansu, so a killed service is started again
/// only after this.
const SESSION_MS: u64 = 3000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: a whole number"))
        })
        .unwrap_or(default)
}

/// A binary built beside this test's (`target/<profile>/NAME`).
fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build {}-p order-saga` first",
        path.display(),
        if cfg!(debug_assertions) {
            ""
        } else {
            "--release "
        }
    );
    path
}

/// The topology with every `within` widened: a service killed holds its
/// partitions' events until its session times out and its successor starts
/// (seconds), and the broker's restart holds everything; that lateness is
/// real, and not what this soak is about.
fn topology(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topologies");
    let text = std::fs::read_to_string(root.join("order-fulfillment.yaml")).unwrap();
    let mut widened = String::new();
    for line in text.lines() {
        match line.find("within: ") {
            Some(at) => {
                let rest = &line[at + "within: ".len()..];
                let end = rest
                    .find(|c: char| !c.is_ascii_alphanumeric())
                    .unwrap_or(rest.len());
                widened.push_str(&line[..at]);
                widened.push_str("within: 10m");
                widened.push_str(&rest[end..]);
            }
            None => widened.push_str(line),
        }
        widened.push('\n');
    }
    // The schemas the topology names, beside it.
    let schemas = dir.join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    for f in std::fs::read_dir(root.join("schemas")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), schemas.join(f.file_name())).unwrap();
    }
    let path = dir.join("order-fulfillment.yaml");
    std::fs::write(&path, widened).unwrap();
    path
}

/// One process of the saga, started again after each kill.
struct Service {
    name: &'static str,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    kills: u32,
    /// Times tansu gave it no partitions after a restart.
    stranded: usize,
    /// Where the current incarnation's output begins in the log.
    log_from: usize,
    /// Where its metrics are served.
    port: u16,
}

impl Service {
    fn start(&mut self, brokers: &str) {
        self.log_from = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(sibling("order-saga"))
            .args(["--brokers", brokers])
            .args(&self.args)
            .args(["--metrics-addr", &format!("127.0.0.1:{}", self.port)])
            .env("CHOREO_KAFKA_SESSION_TIMEOUT_MS", SESSION_MS.to_string())
            .env("CHOREO_KAFKA_OPTIONS", OPTIONS)
            .env("CHOREO_KAFKA_JOIN_TIMEOUT_MS", "20000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("order-saga starts");
        self.child = Some(child);
    }

    /// `kill -9`, and reaped.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        self.kills += 1;
    }

    /// Its consumer's lag and rebalances, from its metrics: what a stall
    /// report shows.
    fn consuming(&self) -> String {
        match choreo_testkit::http_get(self.port, "/metrics", Duration::from_secs(5)) {
            Some(text) => text
                .lines()
                .filter(|l| {
                    l.starts_with("choreo_kafka_consumer_lag")
                        || l.starts_with("choreo_kafka_rebalances_total")
                })
                .collect::<Vec<_>>()
                .join("\n"),
            None => "(no metrics)".to_owned(),
        }
    }

    /// Fails the test, with its log, when the process exited by itself —
    /// unless tansu left it without partitions (its bug: a member joining
    /// soon after its predecessor died may wait for an assignment forever;
    /// the service gives up after its join timeout and says so): then it is
    /// started again, and counted.
    fn check_alive(&mut self, brokers: &str) {
        let Some(child) = &mut self.child else {
            return;
        };
        let Some(status) = child.try_wait().unwrap() else {
            return;
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        // What this incarnation wrote.
        let own = log.get(self.log_from..).unwrap_or_default();
        if own.contains("gave this member no partition assignment") {
            self.stranded += 1;
            eprintln!(
                "soak: {} got no partitions from tansu; started again",
                self.name
            );
            self.start(brokers);
            return;
        }
        panic!("{} exited by itself ({status}): {own}", self.name);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every record the audit consumer received, each id once (a redelivery
/// after a restart of the broker brings some again).
#[derive(Default)]
struct Audit {
    ids: HashSet<String>,
    events: Vec<Envelope>,
    receipts: Vec<Receipt>,
    /// Order ids with an OrderPlaced, and with an end.
    placed: HashMap<u64, u32>,
    shipped: HashMap<u64, u32>,
    cancelled: HashMap<u64, u32>,
}

impl Audit {
    fn take(&mut self, env: &Envelope) {
        if !self.ids.insert(env.id.to_string()) {
            return;
        }
        if env.topic.as_str() == RECEIPTS_TOPIC {
            let r = Receipt::from_envelope(env).expect("a receipt decodes");
            self.receipts.push(r);
            return;
        }
        let order = || {
            serde_json::from_slice::<serde_json::Value>(&env.data).unwrap()["order_id"]
                .as_u64()
                .expect("an order id")
        };
        match env.event_type.as_str() {
            "OrderPlaced" => *self.placed.entry(order()).or_default() += 1,
            "OrderShipped" => *self.shipped.entry(order()).or_default() += 1,
            "OrderCancelled" => *self.cancelled.entry(order()).or_default() += 1,
            _ => {}
        }
        self.events.push(env.clone());
    }

    fn ended(&self) -> usize {
        let mut ended: HashSet<u64> = self.shipped.keys().copied().collect();
        ended.extend(self.cancelled.keys());
        ended.len()
    }

    /// The truth of the run, per flow (correlation id): how many times some
    /// service handled one event more than once — two acked receipts with
    /// different starts for one event id, or one reaction emitted twice under
    /// new ids.
    fn handled_twice(&self) -> HashMap<String, usize> {
        let flow_of: HashMap<String, String> = self
            .events
            .iter()
            .map(|e| (e.id.to_string(), e.correlation_id.to_string()))
            .collect();
        // (service, event id) → distinct starts of acked handlings.
        let mut acked: HashMap<(String, String), HashSet<i64>> = HashMap::new();
        for r in &self.receipts {
            if r.outcome == Outcome::Acked {
                acked
                    .entry((r.service.to_string(), r.event_id.to_string()))
                    .or_default()
                    .insert(r.started.as_micros());
            }
        }
        // (service, cause id, type) → emitted ids.
        let mut emitted: HashMap<(String, String, String), usize> = HashMap::new();
        for e in &self.events {
            if let Some(cause) = &e.causation_id {
                *emitted
                    .entry((
                        e.source.to_string(),
                        cause.to_string(),
                        e.event_type.to_string(),
                    ))
                    .or_default() += 1;
            }
        }
        let mut twice: HashSet<(String, String)> = acked
            .into_iter()
            .filter(|(_, starts)| starts.len() > 1)
            .map(|(k, _)| k)
            .collect();
        twice.extend(
            emitted
                .into_iter()
                .filter(|(_, n)| *n > 1)
                .map(|((service, cause, _), _)| (service, cause)),
        );
        let mut per_flow: HashMap<String, usize> = HashMap::new();
        for (_, event) in twice {
            let flow = flow_of
                .get(&event)
                .unwrap_or_else(|| panic!("event {event} handled twice was never read"));
            *per_flow.entry(flow.clone()).or_default() += 1;
        }
        per_flow
    }
}

/// Subscribes as group `soak-audit` to every topic the tracer reads, and
/// keeps what arrives in `audit` until `stop`.
async fn audit(
    brokers: String,
    topics: Vec<String>,
    audit: Arc<Mutex<Audit>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let config = KafkaConfig::new(&brokers)
        .set("fetch.wait.max.ms", "50")
        .set("session.timeout.ms", "6000");
    let bus = KafkaBus::new(config).unwrap();
    let mut sub = bus
        .subscribe(SubscribeOptions::new("soak-audit", topics))
        .await
        .expect("the audit subscribes");
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            next = sub.next() => match next {
                Some(Ok(d)) => {
                    audit.lock().unwrap().take(d.envelope());
                    d.ack();
                }
                Some(Err(e)) => eprintln!("audit: {e}"),
                None => break,
            }
        }
    }
    let _ = sub.close().await;
}

/// Every verdict the tracer wrote: correlation id → (status, rules).
fn verdicts(path: &Path) -> HashMap<String, Vec<Verdict>> {
    let mut all: HashMap<String, Vec<Verdict>> = HashMap::new();
    let text = std::fs::read_to_string(path).unwrap();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            // The last line may be cut while it is written.
            continue;
        };
        all.entry(v["correlation_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(verdict(&v));
    }
    all
}

fn count(out: &str) -> u64 {
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("a count: {out}"))
}

#[test]
#[ignore]
fn the_saga_on_tansu_with_services_and_the_broker_killed_loses_nothing_and_is_traced_right() {
    let orders = env_or("CHOREO_SOAK_ORDERS", 100_000);
    let rate = env_or("CHOREO_SOAK_RATE", 100);
    let kill_every = Duration::from_millis(env_or("CHOREO_SOAK_KILL_EVERY_MS", 4000));
    let started = Instant::now();

    let pg = Postgres::start();
    pg.create_database("saga");
    let url = pg.url("saga");
    // sqlite survives the broker's kill -9 but is slow (a produce takes
    // tens of milliseconds and it slows as it grows); memory is fast and
    // loses everything with the broker, which is then not killed.
    let durable = match std::env::var("CHOREO_SOAK_STORAGE").as_deref() {
        Ok("memory") => false,
        Ok("sqlite") | Err(_) => true,
        Ok(other) => panic!("CHOREO_SOAK_STORAGE={other}: sqlite or memory"),
    };
    let partitions = env_or("CHOREO_SOAK_PARTITIONS", 8) as u32;
    let mut tansu = if durable {
        Tansu::start()
    } else {
        Tansu::in_memory()
    };
    let brokers = tansu.brokers();
    let dir = tempfile::tempdir().unwrap();
    let topology_path = topology(dir.path());
    let topology = choreo_topology::Topology::parse(
        &std::fs::read_to_string(&topology_path).unwrap(),
        "order-fulfillment.yaml",
    )
    .unwrap();
    let topics = choreo_trace::tap_topics(&topology);
    for t in &topics {
        tansu.create_topic(t, partitions);
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let records = Arc::new(Mutex::new(Audit::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let auditing = rt.spawn(audit(
        brokers.clone(),
        topics.clone(),
        records.clone(),
        stop.clone(),
    ));

    let mut tracer = TracerProcess::start_with(
        dir.path(),
        0,
        &brokers,
        "soak-tracer",
        &topology_path,
        &["--settle", "30s"],
    );
    tracer.wait_ready();

    let service = |name: &'static str, args: &[&str]| Service {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
        child: None,
        log: dir.path().join(format!("{name}.log")),
        kills: 0,
        stranded: 0,
        log_from: 0,
        port: choreo_testkit::free_port(),
    };
    let pg_args = ["--postgres", url.as_str()];
    let mut services = vec![
        service("checkout", &["--service", "checkout", "--rate", "0"]),
        service("payment", &["--service", "payment", pg_args[0], pg_args[1]]),
        service(
            "inventory",
            &["--service", "inventory", pg_args[0], pg_args[1]],
        ),
        service("shipping", &["--service", "shipping"]),
        service("notifications", &["--service", "notifications"]),
    ];
    for s in &mut services {
        s.start(&brokers);
    }
    // The placer is never killed: a restarted one would place order 1 again.
    let orders_arg = orders.to_string();
    let rate_arg = rate.to_string();
    let mut placer = service(
        "placer",
        &[
            "--service",
            "checkout",
            "--orders",
            &orders_arg,
            "--rate",
            &rate_arg,
        ],
    );
    placer.start(&brokers);

    let placing = Duration::from_secs_f64(orders as f64 / rate as f64);
    let broker_kill_at = placing / 2;
    let mut broker_killed = if durable { None } else { Some(0) };
    let mut next_kill = Instant::now() + kill_every;
    let mut turn = 0;
    let mut progress = Instant::now();
    // Services are killed while orders are being placed.
    while started.elapsed() < placing || broker_killed.is_none() {
        for s in services.iter_mut().chain([&mut placer]) {
            s.check_alive(&brokers);
        }
        if broker_killed.is_none() && started.elapsed() >= broker_kill_at {
            let placed = records.lock().unwrap().placed.len();
            tansu.kill();
            let down = Instant::now();
            tansu.restart();
            eprintln!(
                "soak: broker killed with kill -9 after {placed} orders, listening again after {:?}",
                down.elapsed()
            );
            broker_killed = Some(placed);
        }
        if Instant::now() >= next_kill {
            let s = &mut services[turn % 5];
            turn += 1;
            s.kill();
            std::thread::sleep(Duration::from_millis(SESSION_MS + 500));
            s.start(&brokers);
            next_kill = Instant::now() + kill_every;
        }
        if progress.elapsed() > Duration::from_secs(30) {
            let a = records.lock().unwrap();
            eprintln!(
                "soak: {:?}: {} placed, {} ended, {} records",
                started.elapsed(),
                a.placed.len(),
                a.ended(),
                a.ids.len()
            );
            progress = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "soak: {} service kills in {:?}",
        services.iter().map(|s| s.kills).sum::<u32>(),
        started.elapsed()
    );

    // Every order placed and ended, then the outboxes drained and every
    // flow judged. Failing when nothing moved for two minutes.
    let mut last = (0, 0);
    let mut moved = Instant::now();
    loop {
        let (placed, ended) = {
            let a = records.lock().unwrap();
            (a.placed.len() as u64, a.ended() as u64)
        };
        if placed == orders && ended == orders {
            break;
        }
        for s in services.iter_mut().chain([&mut placer]) {
            s.check_alive(&brokers);
        }
        if (placed, ended) != last {
            last = (placed, ended);
            moved = Instant::now();
        }
        if moved.elapsed() > Duration::from_secs(120) {
            let a = records.lock().unwrap();
            let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
            for e in &a.events {
                *by_type.entry(e.event_type.to_string()).or_default() += 1;
            }
            let mut receipts: BTreeMap<(String, String), usize> = BTreeMap::new();
            for r in &a.receipts {
                *receipts
                    .entry((r.service.to_string(), r.outcome.as_str().to_owned()))
                    .or_default() += 1;
            }
            let consuming: Vec<String> = services
                .iter()
                .chain([&placer])
                .map(|s| format!("{}:\n{}", s.name, s.consuming()))
                .collect();
            let kept = dir.keep();
            panic!(
                "{placed} of {orders} orders placed and {ended} ended, nothing moving for two minutes; events by type {by_type:?}; receipts by service and outcome {receipts:?}; the processes' logs are in {}; their consumers:\n{}",
                kept.display(),
                consuming.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let drained = Instant::now() + Duration::from_secs(120);
    while count(&pg.psql(
        "saga",
        "SELECT (SELECT count(*) FROM payment_outbox WHERE sent_at IS NULL) + (SELECT count(*) FROM inventory_outbox WHERE sent_at IS NULL)",
    )) > 0
    {
        assert!(Instant::now() < drained, "the outboxes did not drain");
        std::thread::sleep(Duration::from_millis(500));
    }
    let flows_file = dir.path().join("tracer-0.jsonl");
    let judged_by = Instant::now() + Duration::from_secs(300);
    while (verdicts(&flows_file).len() as u64) < orders {
        assert!(
            Instant::now() < judged_by,
            "{} of {orders} flows judged: {}",
            verdicts(&flows_file).len(),
            tracer.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let elapsed = started.elapsed();
    let log = tracer.stop();
    stop.cancel();
    rt.block_on(auditing).unwrap();
    let a = records.lock().unwrap();

    // Every order once, one end each.
    assert!(
        (1..=orders).all(|n| a.placed.get(&n) == Some(&1)),
        "every order placed once"
    );
    let both: Vec<u64> = a
        .shipped
        .keys()
        .filter(|n| a.cancelled.contains_key(n))
        .copied()
        .collect();
    assert!(
        both.is_empty(),
        "orders both shipped and cancelled: {both:?}"
    );

    // Nothing lost: every cause was published.
    let missing: Vec<&Envelope> = a
        .events
        .iter()
        .filter(|e| {
            e.causation_id
                .as_ref()
                .is_some_and(|c| !a.ids.contains(&c.to_string()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} events whose cause was never read: {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );

    // The ledger: one charge or decline per order, one refund per order
    // that ran out of stock (only the inbox keeps a redelivery from charging
    // again).
    let out_of_stock: HashSet<u64> = a
        .events
        .iter()
        .filter(|e| e.event_type.as_str() == "OutOfStock")
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.data).unwrap()["order_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let ledger = pg.psql(
        "saga",
        "SELECT order_id, kind, count(*) FROM payment_ledger GROUP BY 1, 2 ORDER BY 1, 2",
    );
    let mut by_order: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
    for line in ledger.lines() {
        let f: Vec<&str> = line.split('|').collect();
        by_order
            .entry(f[0].parse().unwrap())
            .or_default()
            .push((f[1].to_owned(), f[2].parse().unwrap()));
    }
    assert_eq!(by_order.len() as u64, orders, "a ledger entry per order");
    for (order, rows) in &by_order {
        for (kind, n) in rows {
            assert_eq!(*n, 1, "order {order}: {n} {kind} rows");
        }
        let refunded = rows.iter().any(|(k, _)| k == "refund");
        assert_eq!(
            refunded,
            out_of_stock.contains(order),
            "order {order}: {rows:?}"
        );
    }

    // The tracer: every flow judged once, as the run's truth says.
    let verdicts = verdicts(&flows_file);
    let twice: Vec<_> = verdicts.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} flows judged more than once: {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let truth = a.handled_twice();
    let flows: HashSet<String> = a
        .events
        .iter()
        .filter(|e| e.event_type.as_str() == "OrderPlaced")
        .map(|e| e.correlation_id.to_string())
        .collect();
    assert_eq!(
        verdicts.len(),
        flows.len(),
        "a verdict per flow, none for a flow the run did not make"
    );
    let mut differ = Vec::new();
    for flow in &flows {
        let want = (
            "completed".to_owned(),
            vec!["handled-twice".to_owned(); truth.get(flow).copied().unwrap_or(0)],
        );
        let got = &verdicts.get(flow).expect("judged")[0];
        if *got != want {
            differ.push((flow, want, got.clone()));
        }
    }
    let shipped = a.shipped.len();
    eprintln!(
        "soak: {orders} orders ({shipped} shipped, {} cancelled) at {rate}/s in {elapsed:?}; {} records; {} service kills; broker killed {}; {} services started again after tansu gave them no partitions; {} flows with a service handling an event twice after its kill",
        orders as usize - shipped,
        a.ids.len(),
        services.iter().map(|s| s.kills).sum::<u32>(),
        if durable {
            format!("after {} orders", broker_killed.unwrap())
        } else {
            "never (memory storage)".to_owned()
        },
        services.iter().map(|s| s.stranded).sum::<usize>(),
        truth.len()
    );
    assert!(
        differ.is_empty(),
        "{} of {} flows judged other than the truth (flow, truth, verdict): {:?}\n{log}",
        differ.len(),
        flows.len(),
        &differ[..differ.len().min(10)]
    );
}
