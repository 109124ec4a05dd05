//! `choreo trace`: rebuild every flow of a capture, check it against a topology, report.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use choreo_core::{EventId, Timestamp};
use choreo_trace::capture::Reader;
use choreo_trace::{Keep, LogFormat, LogWriter, Source, Tracer, TracerConfig};

use choreo_kafka::{KafkaConfig, ReadFrom, ReaderOptions, RecordReader, Topics};
use choreo_trace::Record;

use super::kafka::{KafkaArgs, trace_record};
use crate::{EXIT_FINDINGS, EXIT_INPUT, EXIT_OK};

/// Where `--follow` serves its metrics unless `--metrics-addr` says otherwise.
const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// Rebuild every flow from captured events and receipts, check them against a
/// topology, and report: flows by status, violations, the service graph.
///
/// Inputs are capture files — Avro object container files (`choreo capture`,
/// `choreo simulate --capture`) or JSON lines, told apart by content — or
/// Kafka (--brokers, or $CHOREO_KAFKA_BROKERS): by default the topology's
/// topics, their `.dlq` topics and `choreo.receipts` — those that exist; the
/// others are said to be absent, and waited for with --follow — from the
/// beginning to the end as of the start. "Now", which decides whether an unfinished flow is
/// stuck or still in progress, is the latest timestamp in the input unless
/// --now gives it.
///
/// With --follow the tracer runs live on Kafka: memory stays bounded
/// (completed flows are folded into the aggregates and dropped, stuck flows
/// reported and evicted, hard caps counted), metrics are served at
/// --metrics-addr (default 127.0.0.1:9464), and the report is printed when it
/// is interrupted (ctrl-c). With --group several tracers split the partitions;
/// topics keyed by correlation id give each whole flows.
///
/// Exit codes: 0 nothing found (no violations, no failed or stuck flow; with
/// --flow, about that flow); 1 violations, or failed or stuck flows; 2 usage
/// or input error (unreadable, unknown or damaged capture — a damaged capture
/// is still reported up to the damage —, invalid topology, --flow not found).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Capture files (.avro or .jsonl), read in order.
    #[arg(value_name = "CAPTURE")]
    captures: Vec<PathBuf>,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Kafka topics to read, comma separated (default: the topology's topics,
    /// their .dlq topics and choreo.receipts; without a topology, every topic).
    #[arg(long, value_delimiter = ',', conflicts_with = "pattern")]
    topics: Vec<String>,
    /// Read every Kafka topic whose whole name matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    pattern: Option<String>,
    /// Keep reading Kafka and trace live until interrupted.
    #[arg(long)]
    follow: bool,
    /// With --follow: start at the oldest retained record, not at new ones.
    #[arg(long, requires = "follow")]
    from_beginning: bool,
    /// With --follow: read as a member of this consumer group (several tracers split the partitions).
    #[arg(long, requires = "follow")]
    group: Option<String>,
    /// The topology to check the flows against (without one only structure is
    /// checked: orphans, clock skew, loops, dead letters).
    #[arg(long, short)]
    topology: Option<PathBuf>,
    /// Show one flow, by correlation id, as a timeline tree (or JSON with --format json).
    #[arg(long, value_name = "CORRELATION_ID")]
    flow: Option<String>,
    /// Output: the human summary, the report as JSON, or the service graph as DOT or Mermaid.
    #[arg(long, short, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Also write the event log for process-mining tools (case = correlation
    /// id, activity = event type, timestamp, resource = source service) to -o.
    #[arg(long, value_enum, requires = "output")]
    export: Option<Export>,
    /// Where --export writes.
    #[arg(long, short, requires = "export")]
    output: Option<PathBuf>,
    /// Judge flows as of this time (RFC 3339) instead of the latest timestamp in the input.
    #[arg(long, value_name = "RFC3339")]
    now: Option<String>,
    /// After reading, serve the tracer's Prometheus metrics at this address
    /// (e.g. 127.0.0.1:9464) until interrupted.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// How often an event type may repeat along one causal path before `cycle-bound` is reported.
    #[arg(long, default_value_t = 3, value_name = "N")]
    cycle_bound: u32,
    /// No progress bar, even on a terminal.
    #[arg(long, short)]
    quiet: bool,
}

/// What to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// A summary for people.
    Human,
    /// The whole report (or, with --flow, the flow) as JSON.
    Json,
    /// The service graph in Graphviz DOT.
    Dot,
    /// The service graph as a Mermaid flowchart.
    Mermaid,
}

/// An event log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Export {
    /// IEEE XES.
    Xes,
    /// CSV with XES attribute names as the header.
    Csv,
}

/// Where records come from. To add a source (Kafka, say), add a variant, open
/// it in [`Input::open`] as a `choreo_trace::Source`, and produce it in
/// [`Config::from_args`]; everything downstream is shared.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Input {
    /// A capture file.
    File(PathBuf),
    /// Kafka topics, from the beginning to the end as of the start.
    Kafka(Box<KafkaConfig>, Topics),
}

impl Input {
    fn open(&self) -> anyhow::Result<Box<dyn Source + Send>> {
        match self {
            Input::File(path) => Ok(Box::new(Reader::open(path)?.lean())),
            Input::Kafka(config, topics) => {
                Ok(Box::new(KafkaSource::open(config, topics.clone())?))
            }
        }
    }
}

/// Kafka topics as a tracer [`Source`], read on the tracer's reading thread.
struct KafkaSource {
    rt: tokio::runtime::Runtime,
    reader: RecordReader,
    name: String,
    records: u64,
}

impl KafkaSource {
    fn open(config: &KafkaConfig, topics: Topics) -> anyhow::Result<KafkaSource> {
        let name = match &topics {
            Topics::Names(n) | Topics::Optional(n) => format!("kafka:{}", n.join(",")),
            Topics::Pattern(p) => format!("kafka:/{p}/"),
        };
        let rt = super::runtime()?;
        let reader = rt
            .block_on(RecordReader::open(config, ReaderOptions::new(topics)))
            .with_context(|| format!("cannot read {name}"))?;
        let absent = reader.absent();
        if !absent.is_empty() {
            eprintln!(
                "choreo: not on the cluster (yet), read as empty: {} (dead-letter topics appear with the first dead letter, choreo.receipts with the first receipt)",
                absent.join(", ")
            );
        }
        Ok(KafkaSource {
            rt,
            reader,
            name,
            records: 0,
        })
    }

    fn read_error(&self, e: choreo_kafka::Error) -> choreo_trace::Error {
        choreo_trace::Error::Io {
            path: self.name.clone().into(),
            action: "read",
            source: std::io::Error::other(e),
        }
    }
}

impl Source for KafkaSource {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn next_record(&mut self) -> Option<choreo_trace::Result<Record>> {
        let mut one = Vec::with_capacity(1);
        match self.fill(&mut one, 1) {
            Ok(_) => one.pop().map(Ok),
            Err(e) => Some(Err(e)),
        }
    }

    /// A batch per entry into the runtime, not a record: the source reads the
    /// topics to their current end, so waiting for a full batch never holds
    /// records back for long.
    fn fill(&mut self, out: &mut Vec<Record>, max: usize) -> choreo_trace::Result<usize> {
        let reader = &mut self.reader;
        let (n, error) = self.rt.block_on(async {
            let mut n = 0;
            while n < max {
                match reader.next().await {
                    None => break,
                    Some(Ok(r)) => {
                        out.push(trace_record(r));
                        n += 1;
                    }
                    Some(Err(e)) => return (n, Some(e)),
                }
            }
            (n, None)
        });
        self.records += n as u64;
        match error {
            // The records before the error are in `out`, as `fill` promises.
            Some(e) => Err(self.read_error(e)),
            None => Ok(n),
        }
    }

    fn progress(&self) -> choreo_trace::Progress {
        choreo_trace::Progress {
            records: self.records,
            ..Default::default()
        }
    }
}

/// The validated form of [`Args`].
#[derive(Debug)]
pub(crate) struct Config {
    inputs: Vec<Input>,
    topology: Option<PathBuf>,
    flow: Option<EventId>,
    format: Format,
    export: Option<(LogFormat, PathBuf)>,
    now: Option<Timestamp>,
    metrics_addr: Option<String>,
    tracer: TracerConfig,
    progress: bool,
    /// Live on Kafka: the reader's options.
    follow: Option<(KafkaConfig, ReaderOptions)>,
}

impl Config {
    fn from_args(args: Args) -> anyhow::Result<Config> {
        let now = match &args.now {
            Some(text) => Some(Timestamp::parse_rfc3339(text).with_context(|| {
                format!("--now '{text}' is not RFC 3339 time; write it like 2026-01-31T12:00:00Z")
            })?),
            None => None,
        };
        let flow = match &args.flow {
            Some(text) => Some(
                EventId::parse(text.trim())
                    .context("--flow needs a correlation id (the id of the flow's first event)")?,
            ),
            None => None,
        };
        if matches!(args.format, Format::Dot | Format::Mermaid) && flow.is_some() {
            bail!(
                "--flow shows one flow as a timeline (human) or JSON; --format dot and mermaid draw the whole service graph"
            );
        }
        let kafka = args.kafka.wanted();
        if kafka && !args.captures.is_empty() {
            bail!("read either capture files or Kafka (--brokers), not both");
        }
        if !kafka && args.captures.is_empty() {
            bail!("give capture files to trace, or --brokers host:port to read Kafka");
        }
        if !kafka && (args.follow || !args.topics.is_empty() || args.pattern.is_some()) {
            bail!("--follow, --topics and --pattern read Kafka: add --brokers host:port");
        }
        let mut inputs: Vec<Input> = args.captures.into_iter().map(Input::File).collect();
        let mut follow = None;
        let mut metrics_addr = args.metrics_addr;
        if kafka {
            let kconfig = args.kafka.config()?;
            let topics = match (&args.pattern, args.topics.is_empty(), &args.topology) {
                (Some(p), _, _) => Topics::pattern(p.clone()),
                (None, false, _) => Topics::names(args.topics.clone()),
                // Topics that appear with use (dead-letter topics, receipts)
                // may not exist yet: read those that do, wait for the rest.
                (None, true, Some(path)) => {
                    Topics::optional(choreo_trace::tap_topics(&super::load(path)?))
                }
                (None, true, None) => Topics::pattern(".*"),
            };
            if args.follow {
                let mut options = ReaderOptions::new(topics);
                if !args.from_beginning {
                    options = options.from(ReadFrom::End);
                }
                options = options.follow();
                if let Some(g) = &args.group {
                    options = options.group(g.clone());
                }
                follow = Some((kconfig, options));
                metrics_addr.get_or_insert_with(|| DEFAULT_METRICS_ADDR.to_owned());
            } else {
                inputs.push(Input::Kafka(Box::new(kconfig), topics));
            }
        }
        let mut tracer = if follow.is_some() {
            TracerConfig::live()
        } else {
            TracerConfig::batch()
        };
        tracer.cycle_bound = args.cycle_bound;
        if let Some(id) = &flow {
            tracer.keep = Keep::One(id.clone());
        }
        let export = match (args.export, args.output) {
            (Some(Export::Csv), Some(o)) => Some((LogFormat::Csv, o)),
            (Some(Export::Xes), Some(o)) => Some((LogFormat::Xes, o)),
            _ => None,
        };
        Ok(Config {
            inputs,
            topology: args.topology,
            flow,
            format: args.format,
            export,
            now,
            metrics_addr,
            tracer,
            progress: !args.quiet,
            follow,
        })
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<u8> {
    let config = Config::from_args(args)?;
    let topology = match &config.topology {
        Some(path) => Some(super::load(path)?),
        None => None,
    };
    let mut tracer = Tracer::new(config.tracer.clone(), topology.as_ref());
    let registry = prometheus::Registry::new();
    if config.metrics_addr.is_some() {
        tracer.register_metrics(&registry)?;
    }
    if let Some((format, path)) = &config.export {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create the event log '{}'", path.display()))?;
        let log = LogWriter::new(std::io::BufWriter::with_capacity(1 << 20, file), *format)
            .with_context(|| format!("cannot write the event log '{}'", path.display()))?;
        tracer.export_log(log);
    }

    // CHOREO_TRACE_TIMING=1 prints where the time went (the benchmark script uses it).
    let timing = std::env::var_os("CHOREO_TRACE_TIMING").is_some();
    let t0 = std::time::Instant::now();
    let mut damaged = false;
    if let Some((kconfig, options)) = &config.follow {
        let addr = config
            .metrics_addr
            .as_deref()
            .unwrap_or(DEFAULT_METRICS_ADDR);
        // The tracer's own consumer lag, next to its metrics.
        let kafka_metrics = choreo_kafka::KafkaMetrics::new();
        kafka_metrics.register(&registry)?;
        let options = options.clone().metrics(kafka_metrics);
        follow(&mut tracer, kconfig, options, addr, &registry)?;
    }
    for input in &config.inputs {
        let source = input.open()?;
        let name = source.name();
        // A bar for files over 8 MiB (their size is known).
        let bar = source.progress().total_bytes.and_then(|total| {
            super::progress_bar(
                config.progress,
                total,
                8 << 20,
                "{spinner} tracing [{bar:30}] {bytes}/{total_bytes} {msg} ({eta})",
            )
        });
        let drained = choreo_trace::drive(
            source,
            &mut tracer,
            |_| {},
            |p| {
                if let Some(bar) = &bar {
                    bar.set_position(p.bytes);
                    bar.set_message(format!("{} records", p.records));
                }
            },
        );
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if let Some(err) = drained.error {
            damaged = true;
            eprintln!("choreo: {err} ({name}: {} records traced)", drained.records);
        }
    }
    let t1 = std::time::Instant::now();
    tracer.finish(config.now);
    let t2 = std::time::Instant::now();
    if let Some(done) = tracer.finish_log() {
        let (cases, events) = done.context("cannot write the event log")?;
        if let Some((_, path)) = &config.export {
            eprintln!(
                "choreo: wrote {events} events in {cases} cases to '{}'",
                path.display()
            );
        }
    }
    let report = tracer.report();
    if timing {
        eprintln!(
            "choreo: timing: read+ingest {:.3}s, finish {:.3}s, report {:.3}s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            t2.elapsed().as_secs_f64()
        );
    }
    let mut code = if report.ok { EXIT_OK } else { EXIT_FINDINGS };
    let text = match (&config.flow, config.format) {
        (Some(id), format) => match tracer.kept().first() {
            Some(flow) => {
                // One flow's verdict: its findings, or a failed or stuck status.
                let bad = !flow.findings.is_empty()
                    || matches!(
                        flow.status,
                        choreo_trace::FlowStatus::Failed | choreo_trace::FlowStatus::Stuck
                    );
                code = if bad { EXIT_FINDINGS } else { EXIT_OK };
                match format {
                    Format::Json => pretty(&flow.to_json())?,
                    _ => flow.timeline(),
                }
            }
            None => bail!(
                "flow {id} is not in the capture: no event has it as correlation id (try `choreo trace <capture> --format json` to list stuck and failed flows)"
            ),
        },
        (None, Format::Human) => report.summary(),
        (None, Format::Json) => pretty(&serde_json::to_value(&report)?)?,
        (None, Format::Dot) => report.graph_dot(),
        (None, Format::Mermaid) => report.graph_mermaid(),
    };
    super::emit(super::output(None)?, &text)?;
    if let (Some(addr), None) = (&config.metrics_addr, &config.follow) {
        serve_metrics(addr, registry)?;
    }
    if damaged {
        code = EXIT_INPUT;
    }
    Ok(code)
}

fn pretty(v: &serde_json::Value) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}

/// Traces Kafka live until interrupted (ctrl-c or SIGTERM) or the topics
/// end: ingests every record, ticks the tracer every second (folding settled
/// flows, reporting stuck ones), and serves its metrics.
fn follow(
    tracer: &mut Tracer,
    kconfig: &KafkaConfig,
    options: ReaderOptions,
    addr: &str,
    registry: &prometheus::Registry,
) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = super::serve_registry(addr, registry.clone(), shutdown.clone()).await?;
        let mut reader = RecordReader::open(kconfig, options).await.context("cannot read Kafka")?;
        eprintln!(
            "choreo: tracing Kafka live; metrics at http://{}/metrics; ctrl-c prints the report and stops",
            server.local_addr()
        );
        let absent = reader.absent();
        if !absent.is_empty() {
            eprintln!("choreo: waiting for topics not on the cluster yet: {}", absent.join(", "));
        }
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch for SIGTERM")?;
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
        let result = loop {
            tokio::select! {
                _ = &mut interrupted => break Ok(()),
                _ = terminate.recv() => break Ok(()),
                _ = every.tick() => tracer.tick(Timestamp::now()),
                r = reader.next() => match r {
                    None => break Ok(()),
                    Some(Ok(r)) => tracer.ingest(&trace_record(r)),
                    Some(Err(e)) => break Err(anyhow::Error::new(e).context("reading Kafka")),
                },
            }
        };
        shutdown.cancel();
        server.stop();
        result
    })
}

fn serve_metrics(addr: &str, registry: prometheus::Registry) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = super::serve_registry(addr, registry, shutdown.clone()).await?;
        eprintln!(
            "choreo: serving the tracer's metrics at http://{}/metrics (ctrl-c to stop)",
            server.local_addr()
        );
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
        server.stop();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(argv: &[&str]) -> anyhow::Result<Config> {
        Config::from_args(super::super::parse_args("trace", argv)?)
    }

    #[test]
    fn defaults() {
        let c = config(&["run.avro"]).unwrap();
        assert_eq!(c.inputs, vec![Input::File("run.avro".into())]);
        assert_eq!(c.format, Format::Human);
        assert_eq!(c.export, None);
        assert_eq!(c.now, None);
        assert_eq!(c.tracer.cycle_bound, 3);
        assert_eq!(c.tracer.keep, Keep::None);
        assert!(c.progress);
    }

    #[test]
    fn flags_convert() {
        let c = config(&[
            "a.avro",
            "b.jsonl",
            "-t",
            "t.yaml",
            "--format",
            "json",
            "--export",
            "csv",
            "-o",
            "log.csv",
            "--now",
            "2026-01-31T12:00:00Z",
            "--cycle-bound",
            "5",
            "-q",
            "--flow",
            "0190b3c4-1d2e-7a8b-9c0d-1e2f3a4b5c6d",
        ])
        .unwrap();
        assert_eq!(c.inputs.len(), 2);
        assert_eq!(c.topology, Some(PathBuf::from("t.yaml")));
        assert_eq!(c.format, Format::Json);
        assert_eq!(c.export, Some((LogFormat::Csv, PathBuf::from("log.csv"))));
        assert_eq!(c.now, Timestamp::parse_rfc3339("2026-01-31T12:00:00Z"));
        assert_eq!(c.tracer.cycle_bound, 5);
        assert!(matches!(c.tracer.keep, Keep::One(_)));
        assert!(!c.progress);
    }

    #[test]
    fn kafka_flags_convert() {
        let c = config(&["--brokers", "k:9092", "--follow", "--group", "tracers"]).unwrap();
        let (kafka, _) = c.follow.as_ref().expect("follow mode");
        assert_eq!(kafka.brokers, "k:9092");
        assert_eq!(
            c.metrics_addr.as_deref(),
            Some("127.0.0.1:9464"),
            "live tracing serves metrics on loopback"
        );
        assert_eq!(c.tracer, TracerConfig::live());
        let c = config(&["--brokers", "k:9092", "--topics", "orders,payments"]).unwrap();
        assert!(c.follow.is_none());
        assert!(
            matches!(&c.inputs[..], [Input::Kafka(_, Topics::Names(t))] if t == &["orders", "payments"])
        );
        assert!(
            config(&["--brokers", "k:9092", "run.avro"]).is_err(),
            "files or Kafka, not both"
        );
        assert!(
            config(&["run.avro", "--follow"]).is_err(),
            "--follow needs Kafka"
        );
        assert!(
            config(&["--brokers", "k:9092", "--group", "g"]).is_err(),
            "--group needs --follow"
        );
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(config(&["a.avro", "--now", "yesterday"]).is_err());
        assert!(
            config(&["a.avro", "--export", "csv"]).is_err(),
            "--export needs -o"
        );
        assert!(
            config(&["a.avro", "-o", "x.csv"]).is_err(),
            "-o needs --export"
        );
        assert!(config(&["a.avro", "--format", "svg"]).is_err());
        assert!(config(&["a.avro", "--flow", "x", "--format", "dot"]).is_err());
        assert!(config(&[]).is_err(), "a capture is required");
    }
}
