//! `choreo demo`: the whole idea in seconds, on the embedded in-process bus.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use choreo_sim::{Fault, Latency, SimConfig};
use choreo_topology::{PathLimits, Severity, Topology};
use choreo_trace::{FlowStatus, Keep, Report, Tracer};

use super::simulate::{Config, Outcome, injected_summary, simulate};
use crate::EXIT_OK;

/// The example topology, built into the binary so the demo runs from anywhere.
const TOPOLOGY: &str = include_str!("../../../../topologies/order-fulfillment.yaml");
const TOPOLOGY_FILE: &str = "topologies/order-fulfillment.yaml";

/// Run the order-fulfillment saga on the in-process bus with faults injected,
/// trace it against its topology, and show what the tracer finds.
///
/// Verifies the example topology, simulates its five services through the
/// real runtime (retries, dead letters, idempotency, receipts) while a few
/// faults are injected, traces the run, and prints the service graph, flows by
/// status, every kind of violation with who and where, and one stuck flow's
/// timeline. No broker needed; it takes a few seconds. The run is captured
/// (--capture), and the demo ends with the command that opens it in the flow
/// viewer (`choreo trace … --ui`).
///
/// Exit code 0 when the demo ran (the findings are the point of it).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Flows to run.
    #[arg(long, default_value_t = 400)]
    flows: u64,
    /// Seed of every random decision (the same seed, the same run).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Flows started per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Where to write the run's capture, and the topology beside it, to
    /// browse it afterwards (default: choreo-demo/run.avro in the temporary
    /// directory).
    #[arg(long, value_name = "FILE.avro")]
    capture: Option<PathBuf>,
}

/// The faults the demo injects, as `choreo simulate` flags.
const FAULTS: &[(&str, &str, &str)] = &[
    (
        "fail",
        "inventory=0.25",
        "inventory fails 25% of attempts (retried; dead-lettered after 3)",
    ),
    (
        "drop",
        "shipping=0.02",
        "shipping loses 2% of its shipments (handles, emits nothing)",
    ),
    (
        "down",
        "checkout=500ms..2600ms",
        "checkout is down from 0.5s to 2.6s of the run",
    ),
    (
        "down",
        "shipping=1700ms..",
        "shipping goes down at 1.7s and never comes back",
    ),
    (
        "wrong-branch",
        "inventory=0.01",
        "inventory sometimes emits both branches of its one_of",
    ),
    (
        "extra",
        "payment=0.01",
        "payment sometimes emits an event type nobody declared",
    ),
    (
        "duplicate",
        "0.02",
        "the bus delivers 2% of the events twice",
    ),
];

pub(crate) fn run(args: Args) -> anyhow::Result<u8> {
    let topology =
        Topology::parse(TOPOLOGY, TOPOLOGY_FILE).context("the embedded example topology")?;
    let mut out = String::new();
    let rule = "─".repeat(78);
    let _ = writeln!(
        out,
        "choreo demo: the order-fulfillment saga on the in-process bus\n{rule}"
    );
    checked(&topology, &mut out);
    let capture = match &args.capture {
        Some(path) => path.clone(),
        None => std::env::temp_dir().join("choreo-demo").join("run.avro"),
    };
    if let Some(dir) = capture.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create '{}' for the capture", dir.display()))?;
    }
    let outcome = faulty_run(&args, &topology, &capture, &mut out)?;
    let report = outcome.report.context("the demo always traces")?;
    traced(&report, &mut out);
    let tracer = outcome.tracer.context("the demo always traces")?;
    one_timeline(&tracer, &mut out);
    browse(&capture, &topology, outcome.truth.finished, &mut out)?;
    let _ = write!(out, "\n{rule}\n{TRY_NEXT}");
    super::emit(super::output(None)?, &out)?;
    Ok(EXIT_OK)
}

/// 1. The topology, verified before anything runs.
fn checked(topology: &Topology, out: &mut String) {
    let diagnostics = topology.verify();
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .count();
    let paths: u64 = topology
        .paths(PathLimits::default())
        .iter()
        .map(|p| p.count)
        .sum();
    let _ = writeln!(
        out,
        "1. The declared choreography ({TOPOLOGY_FILE}), checked before anything runs:\n   \
         {} events on {} topics, {} services, {} flow with {paths} possible executions — {}",
        topology.events().len(),
        topology.topics().len(),
        topology.services().len(),
        topology.flows().len(),
        if errors + warnings == 0 {
            "no findings".to_owned()
        } else {
            format!("{errors} errors, {warnings} warnings (run `choreo check {TOPOLOGY_FILE}`)")
        }
    );
}

/// 2. A run of the saga with every kind of fault injected.
fn faulty_run(
    args: &Args,
    topology: &Topology,
    capture: &Path,
    out: &mut String,
) -> anyhow::Result<Outcome> {
    let mut faults = Vec::new();
    let _ = writeln!(
        out,
        "\n2. A run of {} flows with faults injected:",
        args.flows
    );
    for (kind, arg, what) in FAULTS {
        faults.push(Fault::parse(kind, arg)?);
        let flag = format!("--{kind} {arg}");
        let _ = writeln!(out, "   {flag:<34} {what}");
    }
    let config = Config {
        topology: TOPOLOGY_FILE.into(),
        sim: SimConfig {
            flows: args.flows,
            rate: Some(args.rate),
            concurrency: 32,
            seed: args.seed,
            latency: Latency::Uniform(Duration::from_millis(1), Duration::from_millis(8)),
            latencies: Default::default(),
            weights: Default::default(),
            faults,
            max_attempts: 3,
            partitions: 4,
            deferred: Default::default(),
        },
        capture: Some(capture.to_owned()),
        trace: true,
        metrics_addr: None,
        progress: false,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let outcome = rt.block_on(simulate(topology.clone(), &config, Keep::All))?;
    let truth = &outcome.truth;
    let secs = truth.finished.micros_since(truth.started).max(1) as f64 / 1e6;
    let _ = writeln!(
        out,
        "   ran in {secs:.1}s: {} events published by 5 services; {}",
        truth.events_published,
        injected_summary(truth)
    );

    Ok(outcome)
}

/// 3. What the tracer rebuilt: the service graph and the summary.
fn traced(report: &Report, out: &mut String) {
    let _ = writeln!(
        out,
        "\n3. What `choreo trace` rebuilt from the events and receipts alone, judged once every\n   \
         deadline of the topology has passed (the run is over: nothing more can arrive):\n"
    );
    let _ = writeln!(
        out,
        "   The service graph the events drew (handled deliveries, queue and handler time p50 / p99):"
    );
    let mut edges = report.edges.clone();
    edges.sort_by(|a, b| {
        (&a.producer, &a.event_type, &a.consumer).cmp(&(&b.producer, &b.event_type, &b.consumer))
    });
    for e in &edges {
        let mut extra = String::new();
        if e.failed > 0 {
            let _ = write!(extra, ", {} dead-lettered", e.failed);
        }
        if e.duplicates > 0 {
            let _ = write!(extra, ", {} duplicates skipped", e.duplicates);
        }
        if e.inferred > 0 {
            let _ = write!(extra, ", {} without a receipt", e.inferred);
        }
        let _ = writeln!(
            out,
            "     {:<44} {:>5}   queue {:>8} / {:>8}   handler {:>8} / {:>8}{extra}",
            format!("{} --{}--> {}", e.producer, e.event_type, e.consumer),
            e.count,
            choreo_trace::format_micros(e.queue.p50_us),
            choreo_trace::format_micros(e.queue.p99_us),
            choreo_trace::format_micros(e.handler.p50_us),
            choreo_trace::format_micros(e.handler.p99_us),
        );
    }
    out.push('\n');
    out.push_str(&indent(&report.summary(), "   "));
}

/// 4. One stuck flow (or failed, when none is stuck), as a timeline.
fn one_timeline(tracer: &Tracer, out: &mut String) {
    let stuck = tracer.kept().iter().find(|f| f.status == FlowStatus::Stuck);
    let failed = tracer
        .kept()
        .iter()
        .find(|f| f.status == FlowStatus::Failed);
    match stuck.or(failed) {
        Some(flow) => {
            let what = if stuck.is_some() { "stuck" } else { "failed" };
            let _ = writeln!(
                out,
                "\n4. One {what} flow, as `choreo trace --flow {}` shows it:\n",
                flow.correlation_id
            );
            out.push_str(&indent(&flow.timeline(), "   "));
        }
        None => {
            let _ = writeln!(
                out,
                "\n4. No stuck or failed flow in this run (try another --seed)."
            );
        }
    }
}

/// 5. How to browse the run in the flow viewer: the capture, the topology
///    written beside it, and "now" past every deadline, as the demo judged it.
fn browse(
    capture: &Path,
    topology: &Topology,
    finished: choreo_core::Timestamp,
    out: &mut String,
) -> anyhow::Result<()> {
    let topology_path = capture.with_file_name("order-fulfillment.yaml");
    std::fs::write(&topology_path, TOPOLOGY)
        .with_context(|| format!("cannot write '{}'", topology_path.display()))?;
    let now = super::simulate::judge_at(topology, finished);
    let _ = writeln!(
        out,
        "\n5. Browse this run — every flow, its causal graph, who owes what, the service graph:\n\n   \
         choreo trace {} --topology {} --now {} --ui\n\n   \
         then open http://127.0.0.1:9464/ (ctrl-c stops it; `--ui ADDR` serves elsewhere).",
        capture.display(),
        topology_path.display(),
        now.to_rfc3339()
    );
    Ok(())
}

/// 6. What to try next.
const TRY_NEXT: &str = "Try next:\n\
     \x20 choreo check topologies/*.yaml --paths          verify topologies, list each flow's executions\n\
     \x20 choreo simulate topologies/order-fulfillment.yaml --fail payment=0.2 --capture run.avro\n\
     \x20 choreo trace run.avro --topology topologies/order-fulfillment.yaml   trace your own capture\n\
     \x20 choreo trace run.avro --flow <correlation-id>   one flow as a timeline\n\
     \x20 cargo run -p order-saga                         the saga as real services written with the SDK\n\
     \x20 docker compose -f docker/compose.yaml up        Kafka, the saga, the tracer, Prometheus and Grafana\n\
     The README walks from here to writing your own service and running it on Kafka.\n";

fn indent(text: &str, prefix: &str) -> String {
    let mut s = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        if line.is_empty() {
            s.push('\n');
        } else {
            s.push_str(prefix);
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}
