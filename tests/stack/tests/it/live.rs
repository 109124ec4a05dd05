//! Every PromQL expression of every dashboard panel and every alerting rule,
//! run through a real Prometheus scraping a live tracer.
//!
//! `choreo simulate --trace --metrics-addr` runs the order-fulfillment saga
//! on the in-process bus, with faults that make every series appear
//! (failures and so retries and dead letters, dropped emissions, a service
//! down to the end so flows get stuck and lag grows, undeclared emissions,
//! duplicates), and serves the SDK's, the bus's and the live tracer's metrics.
//! Prometheus scrapes it every second with the alerting rules loaded. The
//! test polls Prometheus until every expression returns data (with a
//! deadline) and then checks the rules' health, the metric names against the
//! live output, and the output itself with `promtool check metrics`.
//!
//! Beside it, a service on a throwaway PostgreSQL (choreo-postgres: outbox,
//! inbox, relay) handles a steady stream of events in this process — some
//! delivered twice, and now and then an outbox row that no longer decodes — and serves
//! the outbox's metrics, scraped as a second job, for the outbox panels and
//! alerts.
//!
//! An expression that is legitimately empty in this scenario is listed in
//! [`EMPTY`] with the reason, and must stay empty.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use choreo_bus::{
    Context, HandlerError, Idempotency, InProcessBus, Metrics, MetricsServer, Publisher, Render,
    Service, render,
};
use choreo_postgres::{PgConfig, PgMetrics, PgStore, RelayConfig};
use choreo_stack_tests::process::Running;
use choreo_stack_tests::prom::{self, Prometheus, Sample};
use choreo_stack_tests::{bins, promql, repo};
use choreo_testkit::postgres::Postgres;
use tokio_util::sync::CancellationToken;

/// The Prometheus job of the scenario (the Tracer health dashboard's `$job`).
const JOB: &str = "choreo-simulate";

/// The run: long enough that Prometheus sees every series before it ends
/// (the test stops it as soon as everything has data).
const SCENARIO: &[&str] = &[
    "simulate",
    "topologies/order-fulfillment.yaml",
    "--flows",
    "12000",
    "--rate",
    "200",
    "--seed",
    "7",
    "--trace",
    "--metrics-addr",
    "127.0.0.1:0",
    "--quiet",
    // Failed attempts: retries, and dead letters when three fail in a row.
    "--fail",
    "inventory=0.3",
    // Handled, nothing emitted: missing-emit, flows resting on a non-end.
    "--drop",
    "shipping=0.05",
    // Down to the end: flows stuck past shipping's `within`, evicted once
    // reported, and the shipping group's lag growing.
    "--down",
    "shipping=3s..",
    // Undeclared emissions, and duplicate deliveries.
    "--extra",
    "payment=0.01",
    "--duplicate",
    "0.01",
];

/// What the template variables are set to, when the variable offers it.
const CHOSEN: &[(&str, &str)] = &[
    // Retries, dead letters, ignored deliveries, lag: every panel has data.
    ("service", "inventory"),
    ("flow", "checkout"),
    ("job", JOB),
];

/// `$__rate_interval`: four scrape intervals and more, as Grafana computes
/// it, with room for late scrapes on a loaded machine.
const RATE_INTERVAL: &str = "10s";

/// Expressions that return nothing in this scenario, and why. Each must
/// still be empty (else remove it from here).
const EMPTY: &[(&str, &str)] = &[
    (
        "rule ChoreoOutboxLagging",
        "the relay keeps up: the oldest unsent row is milliseconds old, the threshold is 30 s \
         (without the threshold the age has data)",
    ),
    (
        "choreo-service / Publish and receive errors / A",
        "no publish fails on the in-process bus: choreo_publish_failures_total has no series",
    ),
    (
        "choreo-service / Publish and receive errors / B",
        "the in-process bus reports no receive error: choreo_receive_errors_total has no series",
    ),
    (
        "rule ChoreoTracerEvicting",
        "no cap is reached: the live tracer's caps are 100 000 flows and 2 000 000 records and \
         `choreo simulate` cannot lower them; stuck evictions (which the scenario has) are \
         excluded from the alert on purpose",
    ),
    (
        "rule ChoreoTracerEvicting without its threshold",
        "the same: only cap evictions are selected, and there are none",
    ),
    (
        "rule ChoreoTracerNearCap",
        "the tracer holds some thousands of records, far below 80% of its 2 000 000 cap \
         (without the threshold the ratio has data)",
    ),
    (
        "rule ChoreoTracerLagging",
        "the tracer keeps up: its lag stays under a second, the threshold is 60 s \
         (without the threshold the lag has data)",
    ),
];

/// Metric names the dashboards and rules read that the scenario does not
/// export, and why. Each must be absent (else remove it from here).
const ABSENT: &[(&str, &str)] = &[
    (
        "choreo_kafka_consumer_lag",
        "the Kafka backend's gauge; the scenario runs on the in-process bus, whose lag is \
         choreo_bus_consumer_lag (the lag panels and alert read both, `A or B`)",
    ),
    (
        "choreo_publish_failures_total",
        "no publish fails on the in-process bus",
    ),
    (
        "choreo_receive_errors_total",
        "the in-process bus reports no receive error",
    ),
];

/// How long the scenario may take to produce every series.
const DEADLINE: Duration = Duration::from_secs(100);

/// `choreo simulate`, with its stderr collected and the metrics address it
/// printed.
struct Simulation {
    process: Running,
    addr: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Simulation {
    fn start() -> Simulation {
        let choreo = bins::binary("choreo");
        let mut child = Command::new(&choreo)
            .args(SCENARIO)
            .current_dir(repo::root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", choreo.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let process = Running::new("choreo simulate", child);
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .strip_prefix("choreo: metrics at http://")
                    .and_then(|l| l.strip_suffix("/metrics"))
                {
                    let _ = tx.send(addr.to_owned());
                }
                keep.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "choreo simulate did not say where it serves metrics:\n{}",
                    lines.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
                )
            });
        Simulation {
            process,
            addr,
            stderr: lines,
        }
    }

    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let from = lines.len().saturating_sub(20);
        format!("choreo simulate stderr:\n{}", lines[from..].join("\n"))
    }
}

/// The event the outbox scenario's service handles, and the one it emits.
#[derive(serde::Serialize, serde::Deserialize)]
struct Tick {
    n: u64,
}
choreo_core::event!(Tick, topic = "stack.ticks");

#[derive(serde::Serialize, serde::Deserialize)]
struct Tock {
    n: u64,
}
choreo_core::event!(Tock, topic = "stack.tocks");

/// A service named like the one the dashboards are checked for
/// (`inventory`), on a throwaway PostgreSQL, emitting through the outbox on
/// an in-process bus of its own, with its relay; it serves only
/// choreo-postgres's metrics. Every tenth event is delivered twice (an inbox
/// hit), and every 5 s an outbox row does not decode (moved aside).
struct OutboxScenario {
    addr: String,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    _pg: Postgres,
}

impl OutboxScenario {
    fn start() -> OutboxScenario {
        let pg = Postgres::start();
        pg.create_database("stack");
        let url = pg.url("stack");
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::channel();
        let running = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let registry = prometheus::Registry::new();
                let store = PgStore::connect(
                    PgConfig::new(&url).metrics(PgMetrics::new(&registry).expect("metrics")),
                )
                .await
                .expect("the outbox scenario's database");
                let bus = InProcessBus::new();
                let relay = store
                    .relay(&bus)
                    .config(RelayConfig::default().metrics_interval(Duration::from_millis(500)))
                    .start(running.clone());
                let db = store.clone();
                let service = Service::new("inventory")
                    .metrics(Metrics::new(&prometheus::Registry::new()).expect("metrics"))
                    .receipts(None)
                    // Only the inbox row stands between a redelivery and a second handling.
                    .idempotency(Idempotency::off())
                    .on(move |t: Tick, ctx: Context| {
                        let db = db.clone();
                        async move {
                            let Some(tx) = db.begin(&ctx).await? else {
                                return Ok(());
                            };
                            ctx.emit(&Tock { n: t.n })?;
                            tx.commit().await?;
                            Ok::<(), HandlerError>(())
                        }
                    })
                    .start(&bus, running.clone())
                    .await
                    .expect("the outbox scenario's service");
                let registries = Arc::new(vec![registry]);
                let render: Render = Arc::new(move || render(&registries));
                let server = MetricsServer::start("127.0.0.1:0", render, running.clone())
                    .await
                    .expect("the outbox scenario's /metrics");
                let _ = tx.send(server.local_addr().to_string());
                let checkout = Publisher::new(&bus, "checkout")
                    .metrics(Metrics::new(&prometheus::Registry::new()).expect("metrics"));
                let mut every = tokio::time::interval(Duration::from_millis(20));
                let mut n = 0;
                while !running.is_cancelled() {
                    tokio::select! {
                        _ = every.tick() => {}
                        _ = running.cancelled() => break,
                    }
                    n += 1;
                    if n % 250 == 0 {
                        // Every 5 s, a row written by a format this relay does
                        // not know: the alert sees its counter grow, whenever
                        // Prometheus started scraping.
                        let client = store.pool().get().await.expect("a connection");
                        client
                            .execute(
                                "INSERT INTO choreo_outbox (lane, id, event_type, source, topic, correlation_id, time_us, content_type, data, format) \
                                 VALUES (0, $1, 'Tock', 'inventory', 'stack.tocks', $1, 0, 'application/json', '\\x7b7d', 2)",
                                &[&format!("from-the-future-{n}")],
                            )
                            .await
                            .expect("a row that does not decode");
                    }
                    let env = checkout.envelope(&Tick { n }, None).expect("an envelope");
                    let again = (n % 10 == 0).then(|| env.clone());
                    checkout.publish(env).await.expect("published");
                    if let Some(env) = again {
                        checkout.publish(env).await.expect("published again");
                    }
                }
                let _ = service.await;
                let _ = relay.await;
            });
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the outbox scenario serves its metrics");
        OutboxScenario {
            addr,
            stop,
            thread: Some(thread),
            _pg: pg,
        }
    }
}

impl Drop for OutboxScenario {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One expression to run, where it comes from, and what it returned.
#[derive(Debug)]
struct Check {
    location: String,
    expr: String,
    panel_type: String,
    result: Vec<Sample>,
}

/// The dashboard queries (variables set) and the rules' expressions, with
/// their threshold and without it.
fn checks(prometheus: &Prometheus, range: &str) -> Result<Vec<Check>, String> {
    let mut out = Vec::new();
    for d in repo::dashboards() {
        let mut vars: BTreeMap<String, String> = BTreeMap::from([
            ("__rate_interval".to_owned(), RATE_INTERVAL.to_owned()),
            ("__interval".to_owned(), "1s".to_owned()),
            ("__range".to_owned(), range.to_owned()),
        ]);
        for v in d.variables() {
            let values = prometheus.label_values(&v.label, &v.matcher)?;
            let chosen = CHOSEN
                .iter()
                .find(|(name, _)| *name == v.name)
                .map(|(_, value)| (*value).to_owned())
                .or_else(|| values.first().cloned());
            let Some(chosen) = chosen.filter(|c| values.contains(c)) else {
                return Err(format!(
                    "{}: variable '{}' (label_values({}, {})) offers {values:?}",
                    d.file, v.name, v.matcher, v.label
                ));
            };
            vars.insert(v.name.clone(), regex_quote(&chosen));
        }
        for q in d.queries() {
            out.push(Check {
                location: q.location(),
                expr: promql::substitute(&q.expr, &vars)?,
                panel_type: q.panel_type,
                result: Vec::new(),
            });
        }
    }
    for r in repo::rules() {
        out.push(Check {
            location: format!("rule {}", r.name),
            expr: r.expr.clone(),
            panel_type: String::new(),
            result: Vec::new(),
        });
        if let Some((base, _)) = promql::split_threshold(&r.expr) {
            out.push(Check {
                location: format!("rule {} without its threshold", r.name),
                expr: base.to_owned(),
                panel_type: String::new(),
                result: Vec::new(),
            });
        }
    }
    Ok(out)
}

/// A value as Grafana puts a single-valued variable into `=~"..."`.
fn regex_quote(value: &str) -> String {
    value
        .chars()
        .flat_map(|c| {
            let escape = "\\.+*?()|[]{}^$".contains(c);
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

/// Fails the test with `msg` and what the two processes said.
fn fail(sim: &Simulation, prometheus: &Prometheus, msg: String) -> ! {
    panic!(
        "{msg}\n\n{}\n\n{}",
        sim.stderr_tail(),
        prometheus.log_tail()
    )
}

fn empty_reason(location: &str) -> Option<&'static str> {
    EMPTY.iter().find(|(l, _)| *l == location).map(|(_, r)| *r)
}

#[test]
fn every_dashboard_query_and_alert_expression_returns_data_from_a_live_tracer() {
    let outbox = OutboxScenario::start();
    let sim = Simulation::start();
    let started = Instant::now();
    let rules_glob = repo::root().join("docker/prometheus/rules/*.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{}\"]\n\
         \x20 - job_name: choreo-outbox\n    static_configs:\n      - targets: [\"{}\"]\n",
        rules_glob.display(),
        sim.addr,
        outbox.addr
    );
    let mut prometheus = Prometheus::start(&config).unwrap_or_else(|e| panic!("{e}"));
    let mut sim = sim;
    let checks = every_expression_with_data(&mut sim, &mut prometheus, started);
    eprintln!(
        "every expression had data {:.1}s after the scenario started",
        started.elapsed().as_secs_f64()
    );

    // The scenario is still running: its metrics, as Prometheus scraped them.
    let mut metrics = prom::get(&prom::agent(), &format!("http://{}/metrics", sim.addr), &[])
        .unwrap_or_else(|e| fail(&sim, &prometheus, format!("the scenario's /metrics: {e}")));
    metrics.push_str(
        &prom::get(
            &prom::agent(),
            &format!("http://{}/metrics", outbox.addr),
            &[],
        )
        .unwrap_or_else(|e| {
            fail(
                &sim,
                &prometheus,
                format!("the outbox scenario's /metrics: {e}"),
            )
        }),
    );
    let mut problems = Vec::new();
    empty_ones_are_the_listed_ones(&checks, &mut problems);
    the_node_graph_is_whole(&checks, &mut problems);
    if let Err(e) = every_rule_evaluates(&prometheus, &mut problems) {
        fail(&sim, &prometheus, e);
    }
    // promtool's lint of the SDK's, the bus's and the tracer's exposition.
    if let Err(e) = prom::promtool(&["check", "metrics"], Some(&metrics), &repo::root()) {
        problems.push(e);
    }
    every_metric_read_is_exported(&checks, &metrics, &mut problems);
    if !problems.is_empty() {
        fail(&sim, &prometheus, problems.join("\n"));
    }
}

/// Polls until every expression not listed in EMPTY has data, all
/// evaluated at one instant per round; fails the test when the scenario ends
/// or the deadline passes first.
fn every_expression_with_data(
    sim: &mut Simulation,
    prometheus: &mut Prometheus,
    started: Instant,
) -> Vec<Check> {
    let deadline = Instant::now() + DEADLINE;
    // What the last round before the scenario ended missed: once it ends,
    // its gauges go stale and would hide the real culprits.
    let mut missing_while_running: Vec<String> = Vec::new();
    loop {
        if let Err(e) = prometheus.check_running() {
            fail(sim, prometheus, e);
        }
        let ended = sim.process.exited();
        let time = Prometheus::now();
        let range = format!("{}s", started.elapsed().as_secs() + 5);
        let round = checks(prometheus, &range).and_then(|mut checks| {
            for c in &mut checks {
                c.result = prometheus.query(&c.expr, time)?;
            }
            Ok(checks)
        });
        let missing: Vec<String> = match &round {
            // Variables have no values before the first scrapes.
            Err(e) => vec![e.clone()],
            Ok(checks) => checks
                .iter()
                .filter(|c| c.result.is_empty() && empty_reason(&c.location).is_none())
                .map(|c| format!("{}\n    {}", c.location, c.expr))
                .collect(),
        };
        if ended.is_none() {
            missing_while_running.clone_from(&missing);
        }
        match round {
            Ok(checks) if missing.is_empty() => return checks,
            _ if ended.is_some() || Instant::now() > deadline => fail(
                sim,
                prometheus,
                format!(
                    "{}, these still return nothing (list one in EMPTY only if it is \
                     legitimately empty in this scenario, with the reason):\n  {}",
                    match ended {
                        Some(how) => format!("the scenario ended ({how}) and, while it ran"),
                        None => format!("after {DEADLINE:?}"),
                    },
                    missing_while_running.join("\n  ")
                ),
            ),
            _ => std::thread::sleep(Duration::from_millis(1000)),
        }
    }
}

/// The listed exceptions are exact: each is a real check, and empty.
fn empty_ones_are_the_listed_ones(checks: &[Check], problems: &mut Vec<String>) {
    for (location, _) in EMPTY {
        match checks.iter().find(|c| c.location == *location) {
            None => problems.push(format!("EMPTY lists '{location}', which is no check")),
            Some(c) if !c.result.is_empty() => problems.push(format!(
                "EMPTY lists '{location}', but it returned data: remove it from EMPTY\n    {}",
                c.expr
            )),
            Some(_) => {}
        }
    }
}

/// The node graph's frames: nodes with an id, edges between them.
fn the_node_graph_is_whole(checks: &[Check], problems: &mut Vec<String>) {
    for c in checks.iter().filter(|c| c.panel_type == "nodeGraph") {
        let need: &[&str] = if c.location.ends_with("/ nodes") {
            &["id", "title"]
        } else {
            &["id", "source", "target"]
        };
        for s in &c.result {
            if need.iter().any(|l| !s.labels.contains_key(*l)) {
                problems.push(format!("{}: a row without {need:?}: {s:?}", c.location));
            }
        }
    }
    let node_ids: BTreeSet<&String> = checks
        .iter()
        .filter(|c| c.panel_type == "nodeGraph" && c.location.ends_with("/ nodes"))
        .flat_map(|c| c.result.iter().filter_map(|s| s.labels.get("id")))
        .collect();
    for c in checks
        .iter()
        .filter(|c| c.panel_type == "nodeGraph" && c.location.ends_with("/ edges"))
    {
        for s in &c.result {
            for end in ["source", "target"] {
                if !s.labels.get(end).is_some_and(|id| node_ids.contains(id)) {
                    problems.push(format!("{}: edge {end} is not a node: {s:?}", c.location));
                }
            }
        }
    }
    if node_ids.len() < 5 {
        problems.push(format!("the service graph has only the nodes {node_ids:?}"));
    }
}

/// Prometheus loaded every rule and evaluated it without error.
fn every_rule_evaluates(prometheus: &Prometheus, problems: &mut Vec<String>) -> Result<(), String> {
    let loaded = prometheus.api("/api/v1/rules", &[])?;
    let mut evaluated = BTreeSet::new();
    for g in loaded["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or_default().to_owned();
            if r["health"] != "ok" {
                problems.push(format!(
                    "rule {name}: health {} {}",
                    r["health"], r["lastError"]
                ));
            }
            evaluated.insert(name);
        }
    }
    let defined: BTreeSet<String> = repo::rules().into_iter().map(|r| r.name).collect();
    if evaluated != defined {
        problems.push(format!(
            "Prometheus evaluates {evaluated:?}, the rule files define {defined:?}"
        ));
    }
    Ok(())
}

/// Every metric a dashboard or a rule reads is in the live output, but
/// those listed in ABSENT (which must be absent).
fn every_metric_read_is_exported(checks: &[Check], metrics: &str, problems: &mut Vec<String>) {
    let live: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let mut used = BTreeSet::new();
    for c in checks {
        used.extend(promql::metric_names(&c.expr));
    }
    for name in &used {
        let absent = ABSENT.iter().any(|(n, _)| n == name);
        match (live.contains(name.as_str()), absent) {
            (false, false) => problems.push(format!(
                "'{name}' is read by a dashboard or rule but not exported by the scenario"
            )),
            (true, true) => problems.push(format!(
                "ABSENT lists '{name}', but the scenario exports it: remove it from ABSENT"
            )),
            _ => {}
        }
    }
    for (name, _) in ABSENT {
        if !used.contains(*name) {
            problems.push(format!("ABSENT lists '{name}', which nothing reads"));
        }
    }
}
