//! `choreo simulate`: run a topology as simulated services on the in-process bus.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use choreo_bus::{InProcessBus, InProcessConfig, Metrics};
use choreo_core::{SubscribeOptions, Timestamp};
use choreo_sim::{Fault, Latency, SimConfig, SimProgress, Simulation, Truth};
use choreo_topology::Topology;
use choreo_trace::capture::{Format as CaptureFormat, Writer};
use choreo_trace::{Keep, Report, Tracer, TracerConfig};
use tokio_util::sync::CancellationToken;

use crate::{EXIT_FINDINGS, EXIT_OK};

/// Run every service of a topology as simulated handlers on the in-process
/// bus, through the real runtime (retries, dead letters, idempotency,
/// receipts, metrics), with optional faults.
///
/// Each reaction emits per its contract after a simulated latency: all of a
/// list, one branch of a `one_of` (by --weight), or nothing. Runs are
/// reproducible: every decision is a function of --seed and the flow.
///
/// --deferred SERVICE[:EVENT]=DELAY completes a reaction after its handler:
/// the handler acks at once and the reaction's events are published DELAY
/// later as caused by the event (what `Publisher::publish_caused_by` does for
/// a payment provider's callback or a customer's upload).
///
/// Faults (repeatable): --drop SERVICE[:EVENT]=P (handles, emits nothing);
/// --fail SERVICE[:EVENT]=P (an attempt fails; retried, dead-lettered after
/// --max-attempts); --down SERVICE=FROM..UNTIL (stopped in that window of the
/// run); --extra SERVICE=P (also emits an undeclared event type);
/// --wrong-branch SERVICE=P (emits two branches of a one_of); --duplicate P
/// (the bus delivers an event twice). What was injected is written beside
/// the capture as `<capture>.truth.json`.
///
/// Exit codes: 0 the simulation ran (and, with --trace, the tracer found
/// nothing); 1 with --trace, the tracer found violations or failed or stuck
/// flows; 2 usage or input error.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The topology to simulate.
    topology: PathBuf,
    /// Flows to start.
    #[arg(long, default_value_t = 200)]
    flows: u64,
    /// Flows started per second (default: as fast as the bus takes them).
    #[arg(long)]
    rate: Option<f64>,
    /// Deliveries each service handles at once per partition.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seed of every random decision.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Handler latency: a duration (5ms) or a uniform range (1ms..20ms).
    #[arg(long, default_value = "1ms..10ms")]
    latency: String,
    /// Latency of one reaction or of all of a service's, SERVICE[:EVENT]=LATENCY (repeatable).
    #[arg(long = "latency-of", value_name = "SERVICE[:EVENT]=LATENCY")]
    latencies: Vec<String>,
    /// A reaction completed after its handler, SERVICE[:EVENT]=DELAY
    /// (a duration or a range): acked at once, its events published DELAY
    /// later, caused by the event (repeatable).
    #[arg(long = "deferred", value_name = "SERVICE[:EVENT]=DELAY")]
    deferred: Vec<String>,
    /// Weight of a one_of branch, EVENT=WEIGHT (default 1 each; repeatable).
    #[arg(long = "weight", value_name = "EVENT=WEIGHT")]
    weights: Vec<String>,
    /// Attempts per delivery before it is dead-lettered.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Fault: SERVICE[:EVENT]=P — the service handles the event but emits nothing.
    #[arg(long = "drop", value_name = "SERVICE[:EVENT]=P")]
    drops: Vec<String>,
    /// Fault: SERVICE[:EVENT]=P — an attempt fails.
    #[arg(long = "fail", value_name = "SERVICE[:EVENT]=P")]
    fails: Vec<String>,
    /// Fault: SERVICE=FROM..UNTIL — the service is down in that window of the run.
    #[arg(long = "down", value_name = "SERVICE=FROM..UNTIL")]
    downs: Vec<String>,
    /// Fault: SERVICE=P — the service also emits an undeclared event type.
    #[arg(long = "extra", value_name = "SERVICE=P")]
    extras: Vec<String>,
    /// Fault: SERVICE=P — the service emits two branches of a one_of.
    #[arg(long = "wrong-branch", value_name = "SERVICE=P")]
    wrong_branches: Vec<String>,
    /// Fault: P — the bus delivers a published event twice.
    #[arg(long, value_name = "P")]
    duplicate: Option<String>,
    /// Write every event and receipt to this capture file (.avro or .jsonl).
    #[arg(long, value_name = "FILE")]
    capture: Option<PathBuf>,
    /// At the end, trace the run against the topology and print the report.
    #[arg(long)]
    trace: bool,
    /// Serve the SDK's, the bus's and (with --trace) the tracer's metrics here while running.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// The validated form of [`Args`].
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) topology: PathBuf,
    pub(crate) sim: SimConfig,
    pub(crate) capture: Option<PathBuf>,
    pub(crate) trace: bool,
    pub(crate) metrics_addr: Option<String>,
    pub(crate) progress: bool,
}

impl Config {
    fn from_args(a: Args) -> anyhow::Result<Config> {
        let mut faults = Vec::new();
        for (kind, list) in [
            ("drop", &a.drops),
            ("fail", &a.fails),
            ("down", &a.downs),
            ("extra", &a.extras),
            ("wrong-branch", &a.wrong_branches),
        ] {
            for arg in list {
                faults.push(Fault::parse(kind, arg)?);
            }
        }
        if let Some(p) = &a.duplicate {
            faults.push(Fault::parse("duplicate", p)?);
        }
        let mut weights = std::collections::HashMap::new();
        for w in &a.weights {
            let (event, weight) = choreo_sim::parse_weight(w)?;
            weights.insert(event, weight);
        }
        let latency: Latency = a.latency.parse()?;
        let mut latencies = std::collections::HashMap::new();
        for l in &a.latencies {
            let (target, latency) = choreo_sim::parse_latency(l)?;
            latencies.insert(target, latency);
        }
        let mut deferred = std::collections::HashMap::new();
        for d in &a.deferred {
            let (target, delay) = choreo_sim::parse_deferred(d)?;
            deferred.insert(target, delay);
        }
        if a.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if a.max_attempts == 0 {
            bail!("--max-attempts must be at least 1");
        }
        if a.partitions == 0 {
            bail!("--partitions must be at least 1");
        }
        if let Some(c) = &a.capture {
            check_capture_path(c)?;
        }
        Ok(Config {
            topology: a.topology,
            sim: SimConfig {
                flows: a.flows,
                rate: a.rate,
                concurrency: a.concurrency,
                seed: a.seed,
                latency,
                latencies,
                weights,
                faults,
                max_attempts: a.max_attempts,
                partitions: a.partitions,
                deferred,
            },
            capture: a.capture,
            trace: a.trace,
            metrics_addr: a.metrics_addr,
            progress: !a.quiet,
        })
    }
}

fn check_capture_path(path: &Path) -> anyhow::Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("avro" | "jsonl" | "ndjson" | "json") => Ok(()),
        _ => bail!(
            "--capture '{}': name the file .avro (Avro object container) or .jsonl (JSON lines)",
            path.display()
        ),
    }
}

/// Where the truth sidecar of a capture goes: `run.avro` → `run.truth.json`.
pub(crate) fn sidecar_path(capture: &Path) -> PathBuf {
    capture.with_extension("truth.json")
}

/// What a run produced.
pub(crate) struct Outcome {
    pub(crate) truth: Truth,
    pub(crate) report: Option<Report>,
    pub(crate) tracer: Option<Tracer>,
    pub(crate) records: u64,
}

/// The "now" a finished simulation is judged at: once every deadline in the
/// topology has passed. The run is over and nothing is in flight, so a flow
/// that has not ended by then never will.
pub(crate) fn judge_at(topology: &Topology, finished: Timestamp) -> Timestamp {
    let mut longest = Duration::ZERO;
    for f in topology.flows() {
        longest = longest.max(f.within.unwrap_or_default());
    }
    for s in topology.services() {
        for r in s.reactions.values() {
            longest = longest.max(r.within.unwrap_or_default());
        }
    }
    finished.saturating_add(longest + Duration::from_millis(1))
}

/// Runs a simulation with what the options ask for around it: a capture, a
/// tracer, a metrics endpoint, a progress bar.
pub(crate) async fn simulate(
    topology: Topology,
    config: &Config,
    keep: Keep,
) -> anyhow::Result<Outcome> {
    let sim = Simulation::new(topology.clone(), config.sim.clone())?;
    let bus =
        InProcessBus::with_config(InProcessConfig::default().partitions(config.sim.partitions));
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;
    bus.register_metrics(&registry)?;

    // Serving metrics, the tracer runs live (bounded memory, flows folded as
    // they settle, stuck flows reported as their deadlines pass) and is
    // ticked while the run goes; otherwise it is one batch judged at the end.
    let live = config.metrics_addr.is_some();
    let tracer = if config.trace {
        let mut cfg = if live {
            TracerConfig::live()
        } else {
            TracerConfig::batch()
        };
        cfg.keep = keep;
        let mut t = Tracer::new(cfg, Some(&topology));
        if config.metrics_addr.is_some() {
            t.register_metrics(&registry)?;
        }
        Some(Arc::new(Mutex::new(t)))
    } else {
        None
    };
    let writer = match &config.capture {
        Some(path) => {
            let format = CaptureFormat::from_path(path);
            let w = Writer::create(path, format)
                .with_context(|| format!("cannot create the capture '{}'", path.display()))?;
            Some(Arc::new(Mutex::new(w)))
        }
        None => None,
    };

    let shutdown = CancellationToken::new();
    let server = match &config.metrics_addr {
        Some(addr) => {
            let server =
                super::serve_registry(addr, registry.clone(), None, shutdown.clone()).await?;
            eprintln!("choreo: metrics at http://{}/metrics", server.local_addr());
            Some(server)
        }
        None => None,
    };

    const TAP: &str = "choreo-simulate";
    let tap = if tracer.is_some() || writer.is_some() {
        let (t, w) = (tracer.clone(), writer.clone());
        let write_error: Arc<Mutex<Option<String>>> = Arc::default();
        let werr = write_error.clone();
        let task = choreo_trace::tap(
            &bus,
            SubscribeOptions::new(TAP, sim.topics()),
            shutdown.clone(),
            move |record| {
                if let Some(t) = &t {
                    t.lock().unwrap_or_else(|e| e.into_inner()).ingest(&record);
                }
                if let Some(w) = &w
                    && let Err(e) = w.lock().unwrap_or_else(|e| e.into_inner()).write(&record)
                {
                    werr.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e.to_string());
                }
            },
        )
        .await?;
        Some((task, write_error))
    } else {
        None
    };

    let ticker = match (&tracer, live) {
        (Some(t), true) => {
            let (t, stop) = (t.clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(500));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = every.tick() => t.lock().unwrap_or_else(|e| e.into_inner()).tick(Timestamp::now()),
                    }
                }
            }))
        }
        _ => None,
    };

    let bar = super::progress_bar(
        config.progress,
        config.sim.flows,
        500,
        "{spinner} simulating [{bar:30}] {pos}/{len} flows {msg} ({eta})",
    );
    let progress = {
        let bar = bar.clone();
        move |p: SimProgress| {
            if let Some(bar) = &bar {
                bar.set_position(p.flows_started);
                if p.draining {
                    bar.set_message("waiting for every flow to settle");
                }
            }
        }
    };
    let truth = sim.run(&bus, &metrics, &progress).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    let mut records = 0;
    if let Some((task, write_error)) = tap {
        choreo_sim::wait_quiet(&bus, &[TAP.to_owned()]).await;
        shutdown.cancel();
        records = task
            .await
            .context("the capture tap stopped unexpectedly")??;
        if let Some(e) = write_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bail!("cannot write the capture: {e}");
        }
    }
    shutdown.cancel();
    if let Some(t) = ticker {
        let _ = t.await;
    }
    if let Some(s) = server {
        s.stop();
    }
    if let (Some(w), Some(path)) = (writer, &config.capture) {
        let w = Arc::try_unwrap(w)
            .map_err(|_| anyhow::anyhow!("the capture writer is still in use"))?
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        w.finish()
            .with_context(|| format!("cannot finish the capture '{}'", path.display()))?;
        truth
            .write(&sidecar_path(path))
            .with_context(|| format!("cannot write the sidecar of '{}'", path.display()))?;
    }
    let (report, tracer) = match tracer {
        Some(t) => {
            let mut t = Arc::try_unwrap(t)
                .map_err(|_| anyhow::anyhow!("the tracer is still in use"))?
                .into_inner()
                .unwrap_or_else(|e| e.into_inner());
            t.finish(Some(judge_at(&topology, truth.finished)));
            (Some(t.report()), Some(t))
        }
        None => (None, None),
    };
    Ok(Outcome {
        truth,
        report,
        tracer,
        records,
    })
}

/// One line per kind of injected fault.
pub(crate) fn injected_summary(truth: &Truth) -> String {
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for i in &truth.injected {
        match kinds.iter_mut().find(|(k, _)| *k == i.kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((&i.kind, 1)),
        }
    }
    if kinds.is_empty() {
        return "no faults injected".to_owned();
    }
    let parts: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
    format!("faults injected: {}", parts.join(", "))
}

pub(crate) fn run(args: Args) -> anyhow::Result<u8> {
    let config = Config::from_args(args)?;
    let topology = super::load(&config.topology)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let outcome = rt.block_on(simulate(topology, &config, Keep::None))?;
    let t = &outcome.truth;
    let secs = t.finished.micros_since(t.started).max(1) as f64 / 1e6;
    let mut text = format!(
        "simulated {} flows of '{}' in {:.2}s: {} events published, {}\n",
        t.flows_started,
        t.topology,
        secs,
        t.events_published,
        injected_summary(t)
    );
    if let Some(path) = &config.capture {
        text.push_str(&format!(
            "capture: {} ({} records), truth: {}\n",
            path.display(),
            outcome.records,
            sidecar_path(path).display()
        ));
    }
    let mut code = EXIT_OK;
    if let Some(report) = &outcome.report {
        text.push('\n');
        text.push_str(&report.summary());
        if !report.ok {
            code = EXIT_FINDINGS;
        }
    }
    super::emit(super::output(None)?, &text)?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(argv: &[&str]) -> anyhow::Result<Config> {
        Config::from_args(super::super::parse_args("simulate", argv)?)
    }

    #[test]
    fn defaults() {
        let c = config(&["t.yaml"]).unwrap();
        assert_eq!(c.sim.flows, 200);
        assert_eq!(c.sim.seed, 1);
        assert!(c.sim.faults.is_empty());
        assert!(!c.trace);
        assert!(c.capture.is_none());
    }

    #[test]
    fn faults_and_options_convert() {
        let c = config(&[
            "t.yaml",
            "--flows",
            "50",
            "--seed",
            "9",
            "--latency",
            "2ms",
            "--drop",
            "shipping=0.1",
            "--fail",
            "payment:OrderPlaced=0.2",
            "--down",
            "inventory=1s..2s",
            "--extra",
            "checkout=0.01",
            "--wrong-branch",
            "payment=0.05",
            "--duplicate",
            "0.02",
            "--weight",
            "PaymentCaptured=9",
            "--capture",
            "run.avro",
            "--trace",
            "--latency-of",
            "payment:OrderPlaced=20ms..40ms",
            "--latency-of",
            "shipping=1s",
            "--deferred",
            "payment:OrderPlaced=1s..2s",
        ])
        .unwrap();
        assert_eq!(
            c.sim.deferred_of("payment", "OrderPlaced"),
            Some(Latency::Uniform(
                Duration::from_secs(1),
                Duration::from_secs(2)
            ))
        );
        assert_eq!(c.sim.flows, 50);
        assert_eq!(c.sim.latency, Latency::Fixed(Duration::from_millis(2)));
        assert_eq!(c.sim.faults.len(), 6);
        assert_eq!(c.sim.weights["PaymentCaptured"], 9.0);
        assert_eq!(
            c.sim.latency_of("payment", "OrderPlaced"),
            Latency::Uniform(Duration::from_millis(20), Duration::from_millis(40))
        );
        assert_eq!(
            c.sim.latency_of("shipping", "StockReserved"),
            Latency::Fixed(Duration::from_secs(1))
        );
        assert_eq!(
            c.sim.latency_of("payment", "OutOfStock"),
            Latency::Fixed(Duration::from_millis(2))
        );
        assert!(c.trace);
        assert_eq!(
            sidecar_path(c.capture.as_deref().unwrap()),
            PathBuf::from("run.truth.json")
        );
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(config(&["t.yaml", "--drop", "shipping"]).is_err());
        assert!(config(&["t.yaml", "--fail", "payment=2"]).is_err());
        assert!(config(&["t.yaml", "--latency", "fast"]).is_err());
        assert!(config(&["t.yaml", "--concurrency", "0"]).is_err());
        assert!(config(&["t.yaml", "--weight", "X"]).is_err());
        assert!(config(&["t.yaml", "--latency-of", "payment"]).is_err());
        assert!(config(&["t.yaml", "--latency-of", "payment=soon"]).is_err());
        assert!(config(&["t.yaml", "--capture", "run.txt"]).is_err());
        assert!(config(&["t.yaml", "--deferred", "payment"]).is_err());
    }
}
