//! `choreo trace`: rebuild every flow of a capture, check it against a topology, report.

#[cfg(feature = "kafka")]
mod group;
mod output;

use std::path::PathBuf;
#[cfg(feature = "kafka")]
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use choreo_core::{EventId, Timestamp};
use choreo_trace::capture::Reader;
use choreo_trace::{
    FlowWriter, Keep, LogFormat, LogWriter, NowFrom, Query, Receipts, Rule, Source, Tracer,
    TracerConfig,
};

#[cfg(feature = "kafka")]
use choreo_kafka::{KafkaConfig, LookbackOptions, ReadFrom, ReaderOptions, RecordReader, Topics};
#[cfg(feature = "kafka")]
use choreo_trace::Record;

use super::kafka::KafkaArgs;
#[cfg(feature = "kafka")]
use super::kafka::trace_record;
use crate::{EXIT_FINDINGS, EXIT_INPUT, EXIT_OK};

/// Where `--follow` and `--ui` serve unless `--metrics-addr` says otherwise.
const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// Rebuild every flow from captured events and receipts, check them against a
/// topology, and report: flows by status, violations, the service graph.
///
/// Inputs are capture files — Avro object container files (`choreo capture`,
/// `choreo simulate --capture`) or JSON lines, told apart by content — or
/// Kafka (--brokers, or $CHOREO_KAFKA_BROKERS): by default the topology's
/// topics, their `.dlq` topics and `choreo.receipts` — those that exist; the
/// others are said to be absent, and waited for with --follow — from the
/// beginning to the end as of the start. "Now", which decides whether an owed
/// reaction is still in progress or late, is the wall clock on Kafka and the
/// newest record's time in a capture (the report says so when that is far
/// behind the capture's end or the clock), unless --now gives it.
///
/// Find a flow by what you know of it with --find (an event id, a record key,
/// or a payload field: `--find order_id=42`); show it with --flow (a
/// timeline, JSON, or its causal graph as DOT or Mermaid). --format
/// flows-jsonl writes every flow's verdict as a JSON line; --explain RULE
/// says what a rule means.
///
/// With --ui the flows can be browsed: a web page per flow (its causal graph,
/// timeline, receipts, what is owed and by whom), the flows list with search
/// and filters, the service graph, and the JSON behind each page; served
/// with the metrics on one port (loopback unless an address is given) —
/// live with --follow, or after the report for capture files.
///
/// With --follow the tracer runs live on Kafka: memory stays bounded
/// (completed flows are folded into the aggregates and dropped, stuck flows
/// reported and evicted, hard caps counted), metrics are served at
/// --metrics-addr (default 127.0.0.1:9464), and the report is printed when it
/// is interrupted (ctrl-c). With --group several tracers split the partitions;
/// topics keyed by correlation id give each whole flows. In a group, a tracer
/// given a partition (at its start, after a crash or a rebalance) first
/// replays it from --lookback before the group's last checkpoint, silently,
/// to rebuild the flows in flight: restarts and rebalances do not show in
/// what it reports; /health answers 503 "restoring" until it is ready.
///
/// Exit codes: 0 nothing found (no violations, no failed or stuck flow; with
/// --flow or --find, about those flows); 1 violations, or failed or stuck
/// flows; 2 usage or input error (unreadable, unknown or damaged capture — a
/// damaged capture is still reported up to the damage —, invalid topology,
/// --flow or --find not found, unknown rule).
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
    /// With --group: how far back a partition given to this tracer is
    /// replayed to rebuild the flows in flight (before the group's last
    /// checkpoint; flows begun earlier are marked before_horizon). Keep it
    /// at least as long as the longest flow.
    #[arg(
        long,
        value_name = "DURATION",
        requires = "group",
        default_value = "1h"
    )]
    lookback: String,
    /// With --follow: how long a flow that reached its end stays open after
    /// its last record before it is judged and dropped, so that late receipts
    /// and redeliveries (a service restarted, handling again what it had not
    /// committed) are judged with it. Longer than the longest restart of a
    /// service; records after it are counted as late.
    #[arg(
        long,
        value_name = "DURATION",
        requires = "follow",
        default_value = "5s"
    )]
    settle: String,
    /// The topology to check the flows against (without one only structure is
    /// checked: orphans, clock skew, loops, dead letters).
    #[arg(long, short)]
    topology: Option<PathBuf>,
    /// Show one flow, by correlation id: a timeline tree (--format human), JSON,
    /// its causal graph (dot, mermaid), or its verdict as a JSON line.
    #[arg(long, value_name = "CORRELATION_ID")]
    flow: Option<String>,
    /// Find flows by what you know: an event id, a record key, or a payload
    /// field (FIELD=VALUE, FIELD a dotted path: order_id=42, customer.id=c-7);
    /// lists them with their status.
    #[arg(long, value_name = "TERM", conflicts_with_all = ["flow", "follow"])]
    find: Option<String>,
    /// Say what a rule means (its trigger, whom it names, an example) and stop.
    #[arg(long, value_name = "RULE")]
    explain: Option<String>,
    /// Output: the human summary, the report as JSON, the service graph as DOT
    /// or Mermaid, or every flow's verdict as JSON lines (flows-jsonl).
    #[arg(long, short, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Also write, to -o: the event log for process-mining tools (xes, csv:
    /// case = correlation id, activity = event type, timestamp, resource =
    /// source service), or every flow's verdict as JSON lines (flows).
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
    /// Serve the flow viewer (web pages and their JSON API, docs/ui.md) with
    /// the metrics, at ADDR (default: --metrics-addr's, else 127.0.0.1:9464,
    /// loopback): live with --follow, or, for capture files, after the report
    /// until interrupted.
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        // No address: the metrics' (see `Config::from_args`).
        default_missing_value = "",
        conflicts_with_all = ["flow", "find", "explain"]
    )]
    ui: Option<String>,
    /// With --ui: show events' JSON payloads on a flow's page (those still in
    /// the tracer's search window). Off by default: payloads may hold
    /// personal data.
    #[arg(long, requires = "ui")]
    ui_show_payloads: bool,
    /// How often an event type may repeat along one causal path before `cycle-bound` is reported.
    #[arg(long, default_value_t = 3, value_name = "N")]
    cycle_bound: u32,
    /// Whether the input holds receipts: auto (once any is seen), expected
    /// (a sink owes one), absent (nothing is owed for lack of one; no
    /// never-handled).
    #[arg(long, value_enum, default_value_t = ReceiptsArg::Auto)]
    receipts: ReceiptsArg,
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
    /// Every flow's verdict, one JSON object per line: status, flow, start,
    /// end or owed-since, what is owed, every finding.
    FlowsJsonl,
}

/// What --export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Export {
    /// The event log in IEEE XES.
    Xes,
    /// The event log in CSV with XES attribute names as the header.
    Csv,
    /// Every flow's verdict as JSON lines (as --format flows-jsonl).
    Flows,
}

/// Whether receipts are expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReceiptsArg {
    /// Expected once any receipt is seen.
    Auto,
    /// Always expected.
    Expected,
    /// Not expected.
    Absent,
}

/// Where records come from. To add a source (Kafka, say), add a variant, open
/// it in [`Input::open`] as a `choreo_trace::Source`, and produce it in
/// [`Config::from_args`]; everything downstream is shared.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Input {
    /// A capture file.
    File(PathBuf),
    /// Kafka topics, from the beginning to the end as of the start.
    #[cfg(feature = "kafka")]
    Kafka(Box<KafkaConfig>, Topics),
}

/// Without the `kafka` feature nothing is followed.
#[cfg(not(feature = "kafka"))]
type Follow = std::convert::Infallible;

impl Input {
    /// The capture file's path, for a capture.
    fn capture_path(&self) -> Option<String> {
        match self {
            Input::File(path) => Some(path.display().to_string()),
            #[cfg(feature = "kafka")]
            Input::Kafka(..) => None,
        }
    }

    /// Opens the input; `lean`, a capture leaves out what only a search
    /// reads (keys and payloads).
    fn open(&self, lean: bool) -> anyhow::Result<Opened> {
        match self {
            Input::File(path) => {
                let reader = Reader::open(path)?;
                Ok(Opened::File(Box::new(if lean {
                    reader.lean()
                } else {
                    reader
                })))
            }
            #[cfg(feature = "kafka")]
            Input::Kafka(config, topics) => Ok(Opened::Other(Box::new(KafkaSource::open(
                config,
                topics.clone(),
            )?))),
        }
    }

    /// Whether the input is read live (its "now" is the wall clock's).
    fn is_live(&self) -> bool {
        match self {
            Input::File(_) => false,
            #[cfg(feature = "kafka")]
            Input::Kafka(..) => true,
        }
    }
}

/// An opened input: a capture file (which the tracer can read on every
/// core), or any other source.
enum Opened {
    File(Box<Reader>),
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    Other(Box<dyn Source + Send>),
}

impl Opened {
    fn source(&self) -> &dyn Source {
        match self {
            Opened::File(r) => r.as_ref(),
            Opened::Other(s) => s.as_ref(),
        }
    }
}

/// Kafka topics as a tracer [`Source`], read on the tracer's reading thread.
#[cfg(feature = "kafka")]
struct KafkaSource {
    rt: tokio::runtime::Runtime,
    reader: RecordReader,
    name: String,
    records: u64,
}

#[cfg(feature = "kafka")]
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

#[cfg(feature = "kafka")]
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

/// Where --export writes what.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExportTo {
    /// The event log.
    Log(LogFormat, PathBuf),
    /// Every flow's verdict as JSON lines.
    Flows(PathBuf),
}

/// The validated form of [`Args`].
#[derive(Debug)]
pub(crate) struct Config {
    inputs: Vec<Input>,
    topology: Option<PathBuf>,
    flow: Option<EventId>,
    find: Option<Query>,
    /// --explain: the rule to explain (nothing is read).
    explain: Option<Rule>,
    format: Format,
    export: Option<ExportTo>,
    now: Option<Timestamp>,
    metrics_addr: Option<String>,
    /// Serve the flow viewer with the metrics, at `metrics_addr`.
    ui: bool,
    /// The viewer shows payloads.
    ui_show_payloads: bool,
    tracer: TracerConfig,
    progress: bool,
    /// Live on Kafka.
    follow: Option<Follow>,
}

/// How `--follow` reads Kafka.
#[cfg(feature = "kafka")]
#[derive(Debug)]
pub(crate) enum Follow {
    /// Alone, with a record reader.
    Alone(KafkaConfig, ReaderOptions),
    /// As a member of a consumer group, restoring each partition it is given.
    Group(KafkaConfig, LookbackOptions),
}

impl Config {
    fn from_args(args: Args) -> anyhow::Result<Config> {
        if let Some(code) = &args.explain {
            let Some(rule) = Rule::from_code(code.trim()) else {
                let codes: Vec<&str> = Rule::ALL.iter().map(|r| r.code()).collect();
                bail!(
                    "--explain: there is no rule '{code}'; the rules are {}",
                    codes.join(", ")
                );
            };
            return Ok(Config {
                inputs: Vec::new(),
                topology: None,
                flow: None,
                find: None,
                explain: Some(rule),
                format: args.format,
                export: None,
                now: None,
                metrics_addr: None,
                ui: false,
                ui_show_payloads: false,
                tracer: TracerConfig::batch(),
                progress: false,
                follow: None,
            });
        }
        // `--ui run.avro` takes the capture for the address.
        if let Some(ui) = &args.ui
            && !ui.is_empty()
            && !ui.contains(':')
        {
            bail!(
                "--ui '{ui}' is not an address (HOST:PORT, such as 127.0.0.1:9464); to serve at the default, put --ui after the capture files"
            );
        }
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
        let find = args.find.as_deref().map(Query::parse).transpose()?;
        let kafka = args.kafka.wanted();
        #[cfg(not(feature = "kafka"))]
        if kafka || args.follow || !args.topics.is_empty() || args.pattern.is_some() {
            bail!(
                "this choreo was built without Kafka (--no-default-features): it traces capture files; build it with its default features to read Kafka"
            );
        }
        if kafka && !args.captures.is_empty() {
            bail!("read either capture files or Kafka (--brokers), not both");
        }
        if !kafka && args.captures.is_empty() {
            bail!("give capture files to trace, or --brokers host:port to read Kafka");
        }
        if !kafka && (args.follow || !args.topics.is_empty() || args.pattern.is_some()) {
            bail!("--follow, --topics and --pattern read Kafka: add --brokers host:port");
        }
        #[cfg_attr(not(feature = "kafka"), allow(unused_mut))]
        let mut inputs: Vec<Input> = args.captures.into_iter().map(Input::File).collect();
        #[cfg_attr(not(feature = "kafka"), allow(unused_mut))]
        let mut follow: Option<Follow> = None;
        let metrics_given = args.metrics_addr.is_some();
        #[cfg_attr(not(feature = "kafka"), allow(unused_mut))]
        let mut metrics_addr = args.metrics_addr;
        #[cfg(feature = "kafka")]
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
                let from = if args.from_beginning {
                    ReadFrom::Beginning
                } else {
                    ReadFrom::End
                };
                follow = Some(match &args.group {
                    Some(g) => {
                        let lookback =
                            choreo_topology::parse_duration(&args.lookback).map_err(|e| {
                                anyhow::anyhow!(
                                    "--lookback '{}': {e}; write it like 30m or 2h",
                                    args.lookback
                                )
                            })?;
                        Follow::Group(
                            kconfig,
                            LookbackOptions::new(topics, g.clone())
                                .lookback(lookback)
                                .from(from),
                        )
                    }
                    None => Follow::Alone(kconfig, ReaderOptions::new(topics).from(from).follow()),
                });
                metrics_addr.get_or_insert_with(|| DEFAULT_METRICS_ADDR.to_owned());
            } else {
                inputs.push(Input::Kafka(Box::new(kconfig), topics));
            }
        }
        // One server, one port: the viewer's address is the metrics'.
        if let Some(ui) = &args.ui {
            match &metrics_addr {
                // `--ui` alone: where the metrics are, or the default.
                _ if ui.is_empty() => {
                    metrics_addr.get_or_insert_with(|| DEFAULT_METRICS_ADDR.to_owned());
                }
                Some(m) if m != ui && metrics_given => bail!(
                    "--ui {ui} and --metrics-addr {m}: the viewer is served with the metrics on one port; give one address (--ui ADDR serves both)"
                ),
                _ => metrics_addr = Some(ui.clone()),
            }
        }
        let mut tracer = if follow.is_some() {
            TracerConfig::live()
        } else {
            TracerConfig::batch()
        };
        if args.ui.is_some() {
            choreo_ui::Viewer::prepare(&mut tracer);
        }
        if follow.is_some() {
            tracer.settle = choreo_topology::parse_duration(&args.settle).map_err(|e| {
                anyhow::anyhow!("--settle '{}': {e}; write it like 5s or 1m", args.settle)
            })?;
        }
        tracer.cycle_bound = args.cycle_bound;
        tracer.receipts = match args.receipts {
            ReceiptsArg::Auto => Receipts::Auto,
            ReceiptsArg::Expected => Receipts::Expected,
            ReceiptsArg::Absent => Receipts::Absent,
        };
        if let Some(id) = &flow {
            tracer.keep = Keep::One(id.clone());
        }
        let export = match (args.export, args.output) {
            (Some(Export::Csv), Some(o)) => Some(ExportTo::Log(LogFormat::Csv, o)),
            (Some(Export::Xes), Some(o)) => Some(ExportTo::Log(LogFormat::Xes, o)),
            (Some(Export::Flows), Some(o)) => Some(ExportTo::Flows(o)),
            _ => None,
        };
        Ok(Config {
            inputs,
            topology: args.topology,
            flow,
            find,
            explain: None,
            format: args.format,
            export,
            now,
            metrics_addr,
            ui: args.ui.is_some(),
            ui_show_payloads: args.ui_show_payloads,
            tracer,
            progress: !args.quiet,
            follow,
        })
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<u8> {
    let config = Config::from_args(args)?;
    if let Some(rule) = config.explain {
        super::emit(super::output(None)?, &format!("{}\n", rule.explain()))?;
        return Ok(EXIT_OK);
    }
    let topology = match &config.topology {
        Some(path) => Some(super::load(path)?),
        None => None,
    };
    let mut tracer = Tracer::new(config.tracer.clone(), topology.as_ref());
    let registry = prometheus::Registry::new();
    if config.metrics_addr.is_some() {
        tracer.register_metrics(&registry)?;
    }
    match &config.export {
        Some(ExportTo::Log(format, path)) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create the event log '{}'", path.display()))?;
            let log = LogWriter::new(std::io::BufWriter::with_capacity(1 << 20, file), *format)
                .with_context(|| format!("cannot write the event log '{}'", path.display()))?;
            tracer.export_log(log);
        }
        Some(ExportTo::Flows(path)) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create '{}'", path.display()))?;
            tracer.export_flows(FlowWriter::new(std::io::BufWriter::with_capacity(
                1 << 20,
                file,
            )));
        }
        None => {}
    }
    // Every flow's line on standard output, as the flows finish (live too).
    let lines_to_stdout =
        config.format == Format::FlowsJsonl && config.flow.is_none() && config.find.is_none();
    if lines_to_stdout {
        if matches!(config.export, Some(ExportTo::Flows(_))) {
            bail!(
                "--format flows-jsonl writes the flows' lines to standard output; --export flows writes them to -o: choose one"
            );
        }
        // Live, each line as its flow finishes (standard output writes out
        // each line); a batch, in large writes.
        tracer.export_flows(if config.follow.is_some() {
            FlowWriter::new(std::io::stdout())
        } else {
            FlowWriter::new(std::io::BufWriter::with_capacity(
                1 << 16,
                std::io::stdout(),
            ))
        });
    }

    // CHOREO_TRACE_TIMING=1 prints where the time went (the benchmark script uses it).
    let timing = std::env::var_os("CHOREO_TRACE_TIMING").is_some();
    let t0 = std::time::Instant::now();
    let mut damaged = false;
    #[cfg(feature = "kafka")]
    if let Some(how) = &config.follow {
        let addr = config
            .metrics_addr
            .as_deref()
            .unwrap_or(DEFAULT_METRICS_ADDR);
        // The tracer's own consumer lag, next to its metrics.
        let kafka_metrics = choreo_kafka::KafkaMetrics::new();
        kafka_metrics.register(&registry)?;
        let shared = Arc::new(Mutex::new(tracer));
        let viewer = config.ui.then(|| {
            choreo_ui::Viewer::new(shared.clone())
                .live(true)
                .show_payloads(config.ui_show_payloads)
        });
        match how {
            Follow::Alone(kconfig, options) => {
                let options = options.clone().metrics(kafka_metrics);
                follow(&shared, kconfig, options, addr, &registry, viewer)?;
            }
            Follow::Group(kconfig, options) => {
                let options = options.clone().metrics(kafka_metrics);
                group::follow(&shared, kconfig, options, addr, &registry, viewer)?;
            }
        }
        // The runtime that served the viewer is gone, and its handlers with it.
        tracer = Arc::try_unwrap(shared)
            .map_err(|_| anyhow::anyhow!("the flow viewer still holds the tracer"))?
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
    }
    // --find: the flows of the records that match, kept whole as they finish.
    let mut found: Vec<EventId> = Vec::new();
    for input in &config.inputs {
        // --find and the viewer's search read keys and payloads.
        let opened = input.open(config.find.is_none() && !config.ui)?;
        let name = opened.source().name();
        // A bar for files over 8 MiB (their size is known).
        let bar = opened.source().progress().total_bytes.and_then(|total| {
            super::progress_bar(
                config.progress,
                total,
                8 << 20,
                "{spinner} tracing [{bar:30}] {bytes}/{total_bytes} {msg} ({eta})",
            )
        });
        let show = |p: choreo_trace::Progress| {
            if let Some(bar) = &bar {
                bar.set_position(p.bytes);
                bar.set_message(format!("{} records", p.records));
            }
        };
        let drained = match opened {
            // A file, nothing to look at per record (no --find, no viewer
            // searching payloads): decoded on every core straight into
            // what the tracer keeps.
            Opened::File(reader) if config.find.is_none() && !config.ui => {
                choreo_trace::drive_capture(*reader, &mut tracer, show)
            }
            opened => {
                let source = match opened {
                    Opened::File(reader) => reader as Box<dyn Source + Send>,
                    Opened::Other(source) => source,
                };
                choreo_trace::drive(
                    source,
                    &mut tracer,
                    |r| {
                        if let Some(q) = &config.find
                            && r.attributed
                            && q.matches(r)
                            && found.last() != Some(&r.envelope.correlation_id)
                        {
                            found.push(r.envelope.correlation_id.clone());
                        }
                    },
                    show,
                )
            }
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if let Some(err) = drained.error {
            damaged = true;
            eprintln!("choreo: {err} ({name}: {} records traced)", drained.records);
        }
    }
    found.sort();
    found.dedup();
    tracer.keep_flows(found.iter().cloned());
    let t1 = std::time::Instant::now();
    // "Now": given, the wall clock for a live source, else the newest record's time.
    let live = config.follow.is_some() || config.inputs.iter().any(Input::is_live);
    let wall = Timestamp::now();
    let (now, now_from) = match config.now {
        Some(t) => (Some(t), NowFrom::Given),
        None if live => (Some(wall), NowFrom::WallClock),
        None => (None, NowFrom::LatestRecord),
    };
    tracer.finish(now);
    let t2 = std::time::Instant::now();
    if let Some(done) = tracer.finish_log() {
        let (cases, events) = done.context("cannot write the event log")?;
        if let Some(ExportTo::Log(_, path)) = &config.export {
            eprintln!(
                "choreo: wrote {events} events in {cases} cases to '{}'",
                path.display()
            );
        }
    }
    if let Some(done) = tracer.finish_flows() {
        let flows = done.context("cannot write the flows' lines")?;
        if let Some(ExportTo::Flows(path)) = &config.export {
            eprintln!("choreo: wrote {flows} flows to '{}'", path.display());
        }
    }
    let mut report = tracer.report();
    report.note_clock(now_from, wall, capture_end(&config.inputs));
    if timing {
        eprintln!(
            "choreo: timing: read+ingest {:.3}s, finish {:.3}s, report {:.3}s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            t2.elapsed().as_secs_f64()
        );
    }
    let mut code = if report.ok { EXIT_OK } else { EXIT_FINDINGS };
    let text = if let Some(id) = &config.flow {
        match tracer.kept().first() {
            Some(flow) => {
                // One flow's verdict: its violations, or a failed or stuck status.
                code = if output::is_bad(flow) {
                    EXIT_FINDINGS
                } else {
                    EXIT_OK
                };
                Some(output::flow(flow, config.format)?)
            }
            None => bail!(
                "flow {id} is not in the capture: no event has it as correlation id (try `choreo trace <capture> --find ID`, or `--format json` to list stuck and failed flows)"
            ),
        }
    } else if let Some(query) = &config.find {
        let flows: Vec<&choreo_trace::FlowTrace> = tracer.kept().iter().collect();
        if flows.is_empty() {
            bail!(
                "no flow has '{}': no event id, correlation id or record key is that{}",
                query.as_str(),
                if query.as_str().contains('=') {
                    ", and no JSON payload has that field with that value"
                } else {
                    " (for a payload field, write FIELD=VALUE)"
                }
            );
        }
        code = if flows.iter().any(|f| output::is_bad(f)) {
            EXIT_FINDINGS
        } else {
            EXIT_OK
        };
        Some(output::found(query.as_str(), &flows, config.format)?)
    } else {
        output::report(&report, config.format)?
    };
    if let Some(text) = text {
        super::emit(super::output(None)?, &text)?;
    } else {
        // The lines went to standard output as flows finished; the verdict
        // goes to standard error.
        eprintln!("choreo: {}", report.verdict);
        for note in &report.notes {
            eprintln!("choreo: note: {note}");
        }
    }
    if let (Some(addr), None) = (&config.metrics_addr, &config.follow) {
        let captures: Vec<String> = config
            .inputs
            .iter()
            .filter_map(Input::capture_path)
            .collect();
        let viewer = config.ui.then(|| {
            choreo_ui::Viewer::new(Arc::new(Mutex::new(tracer)))
                .captures(captures)
                .show_payloads(config.ui_show_payloads)
        });
        serve_metrics(addr, registry, viewer)?;
    }
    if damaged {
        code = EXIT_INPUT;
    }
    Ok(code)
}

/// When the capture files were last written: the end of what they recorded.
fn capture_end(inputs: &[Input]) -> Option<Timestamp> {
    inputs
        .iter()
        .filter_map(|i| match i {
            Input::File(path) => std::fs::metadata(path).ok()?.modified().ok(),
            #[cfg(feature = "kafka")]
            Input::Kafka(..) => None,
        })
        .max()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| Timestamp::from_micros(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
}

/// Traces Kafka live until interrupted (ctrl-c or SIGTERM) or the topics
/// end: ingests every record, ticks the tracer every second (folding settled
/// flows, reporting stuck ones), and serves its metrics.
#[cfg(feature = "kafka")]
fn follow(
    tracer: &Arc<Mutex<Tracer>>,
    kconfig: &KafkaConfig,
    options: ReaderOptions,
    addr: &str,
    registry: &prometheus::Registry,
    viewer: Option<choreo_ui::Viewer>,
) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    // The tracer, locked for each record or tick: the viewer locks it
    // between them, for a request at a time (std Mutex: no await is held
    // across it).
    let lock = || tracer.lock().unwrap_or_else(PoisonError::into_inner);
    rt.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server =
            super::serve_registry(addr, registry.clone(), viewer.as_ref(), shutdown.clone()).await?;
        let mut reader = RecordReader::open(kconfig, options).await.context("cannot read Kafka")?;
        eprintln!(
            "choreo: tracing Kafka live; metrics at http://{}/metrics{}; ctrl-c prints the report and stops",
            server.local_addr(),
            if viewer.is_some() {
                format!(", flow viewer at http://{}/", server.local_addr())
            } else {
                String::new()
            }
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
                _ = every.tick() => lock().tick(Timestamp::now()),
                r = reader.next() => match r {
                    None => break Ok(()),
                    Some(Ok(r)) => lock().ingest(&trace_record(r)),
                    Some(Err(e)) => break Err(anyhow::Error::new(e).context("reading Kafka")),
                },
            }
        };
        shutdown.cancel();
        server.stop();
        result
    })
}

fn serve_metrics(
    addr: &str,
    registry: prometheus::Registry,
    viewer: Option<choreo_ui::Viewer>,
) -> anyhow::Result<()> {
    let rt = super::runtime()?;
    rt.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server =
            super::serve_registry(addr, registry, viewer.as_ref(), shutdown.clone()).await?;
        match viewer {
            Some(_) => eprintln!(
                "choreo: flow viewer at http://{0}/ (metrics at http://{0}/metrics; ctrl-c to stop)",
                server.local_addr()
            ),
            None => eprintln!(
                "choreo: serving the tracer's metrics at http://{}/metrics (ctrl-c to stop)",
                server.local_addr()
            ),
        }
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
        assert_eq!(
            c.export,
            Some(ExportTo::Log(LogFormat::Csv, PathBuf::from("log.csv")))
        );
        assert_eq!(c.now, Timestamp::parse_rfc3339("2026-01-31T12:00:00Z"));
        assert_eq!(c.tracer.cycle_bound, 5);
        assert!(matches!(c.tracer.keep, Keep::One(_)));
        assert!(!c.progress);
    }

    #[test]
    fn finding_explaining_and_the_flows_lines_convert() {
        let c = config(&["--explain", "never-handled"]).unwrap();
        assert_eq!(c.explain, Some(Rule::NeverHandled));
        assert!(c.inputs.is_empty(), "explaining reads nothing");
        let c = config(&["a.avro", "--find", "order_id=42", "-f", "flows-jsonl"]).unwrap();
        assert_eq!(c.find, Some(Query::parse("order_id=42").unwrap()));
        assert_eq!(c.format, Format::FlowsJsonl);
        let c = config(&[
            "a.avro",
            "--export",
            "flows",
            "-o",
            "f.jsonl",
            "--receipts",
            "absent",
        ])
        .unwrap();
        assert_eq!(c.export, Some(ExportTo::Flows(PathBuf::from("f.jsonl"))));
        assert_eq!(c.tracer.receipts, Receipts::Absent);
        let c = config(&[
            "a.avro",
            "--flow",
            "0190b3c4-1d2e-7a8b-9c0d-1e2f3a4b5c6d",
            "-f",
            "mermaid",
        ])
        .unwrap();
        assert_eq!(c.format, Format::Mermaid, "one flow's causal graph");
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn kafka_flags_convert() {
        let c = config(&["--brokers", "k:9092", "--follow", "--group", "tracers"]).unwrap();
        let Some(Follow::Group(kafka, options)) = c.follow.as_ref() else {
            panic!("follow mode in a group");
        };
        assert_eq!(kafka.brokers, "k:9092");
        assert_eq!(options.lookback, std::time::Duration::from_secs(3600));
        assert_eq!(options.from, ReadFrom::End);
        let c = config(&[
            "--brokers",
            "k:9092",
            "--follow",
            "--group",
            "g",
            "--lookback",
            "10m",
            "--from-beginning",
        ])
        .unwrap();
        let Some(Follow::Group(_, options)) = c.follow.as_ref() else {
            panic!("follow mode in a group");
        };
        assert_eq!(options.lookback, std::time::Duration::from_secs(600));
        assert_eq!(options.from, ReadFrom::Beginning);
        assert!(
            config(&[
                "--brokers",
                "k:9092",
                "--follow",
                "--group",
                "g",
                "--lookback",
                "soon"
            ])
            .is_err(),
            "a duration"
        );
        assert!(
            config(&["--brokers", "k:9092", "--follow", "--lookback", "1h"]).is_err(),
            "--lookback needs --group"
        );
        assert_eq!(
            c.metrics_addr.as_deref(),
            Some("127.0.0.1:9464"),
            "live tracing serves metrics on loopback"
        );
        assert_eq!(c.tracer, TracerConfig::live());
        let c = config(&["--brokers", "k:9092", "--follow", "--settle", "30s"]).unwrap();
        assert_eq!(c.tracer.settle, std::time::Duration::from_secs(30));
        assert!(
            config(&["--brokers", "k:9092", "--follow", "--settle", "later"]).is_err(),
            "a duration"
        );
        assert!(
            config(&["--brokers", "k:9092", "--settle", "30s"]).is_err(),
            "--settle needs --follow"
        );
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
    fn the_viewer_shares_the_metrics_port_on_loopback() {
        let c = config(&["run.avro", "--ui"]).unwrap();
        assert!(c.ui);
        assert_eq!(c.metrics_addr.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(c.tracer.recent_flows, choreo_ui::Viewer::RECENT_FLOWS);
        assert_eq!(c.tracer.search_bytes, choreo_ui::Viewer::SEARCH_BYTES);
        let c = config(&["run.avro", "--ui", "0.0.0.0:8080"]).unwrap();
        assert_eq!(c.metrics_addr.as_deref(), Some("0.0.0.0:8080"));
        let c = config(&["--brokers", "k:9092", "--follow", "--ui", "127.0.0.1:9500"]).unwrap();
        assert_eq!(
            c.metrics_addr.as_deref(),
            Some("127.0.0.1:9500"),
            "--ui moves the metrics too: one server"
        );
        let c = config(&["run.avro", "--metrics-addr", "0.0.0.0:9464", "--ui"]).unwrap();
        assert_eq!(
            c.metrics_addr.as_deref(),
            Some("0.0.0.0:9464"),
            "--ui alone serves where the metrics are"
        );
        let c = config(&[
            "run.avro",
            "--ui",
            "127.0.0.1:1",
            "--metrics-addr",
            "127.0.0.1:1",
        ]);
        assert!(c.is_ok(), "the same address twice is one server");
        let e = config(&[
            "run.avro",
            "--ui",
            "127.0.0.1:1",
            "--metrics-addr",
            "127.0.0.1:2",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("one port"), "{e}");
        let c = config(&["run.avro"]).unwrap();
        assert!(!c.ui);
        assert_eq!(c.tracer.recent_flows, 0, "nothing held without a viewer");
        assert!(config(&["run.avro", "--ui", "--find", "order_id=42"]).is_err());
        assert!(config(&["run.avro", "--ui", "--flow", "x"]).is_err());
        let e = config(&["--ui", "run.avro"]).unwrap_err();
        assert!(e.to_string().contains("after the capture files"), "{e}");
        assert!(!config(&["run.avro", "--ui"]).unwrap().ui_show_payloads);
        assert!(
            config(&["run.avro", "--ui", "--ui-show-payloads"])
                .unwrap()
                .ui_show_payloads
        );
        assert!(
            config(&["run.avro", "--ui-show-payloads"]).is_err(),
            "--ui-show-payloads needs --ui"
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
        assert!(config(&[]).is_err(), "a capture is required");
        assert!(
            config(&["--explain", "stuck-ish"]).is_err(),
            "an unknown rule"
        );
        assert!(
            config(&["a.avro", "--find", "=42"]).is_err(),
            "a field to find"
        );
        assert!(
            config(&["a.avro", "--find", "x", "--flow", "y"]).is_err(),
            "--find or --flow"
        );
        assert!(config(&["a.avro", "--receipts", "maybe"]).is_err());
    }
}
