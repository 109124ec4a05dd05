//! choreo's tracer: rebuilds flows from captured events and receipts, checks them against a topology, reports.
//!
//! ```
//! use choreo_core::Envelope;
//! use choreo_topology::Topology;
//! use choreo_trace::{Record, Rule, Tracer, TracerConfig};
//!
//! let topology = Topology::from_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../../topologies/order-fulfillment.yaml")).unwrap();
//! let mut tracer = Tracer::new(TracerConfig::batch(), Some(&topology));
//!
//! let placed = Envelope::new("OrderPlaced", "orders", "{}").with_source("checkout");
//! // payment emits both branches of its one_of: a broken contract.
//! let captured = Envelope::new("PaymentCaptured", "payments", "{}").with_source("payment").caused_by(&placed);
//! let failed = Envelope::new("PaymentFailed", "payments", "{}").with_source("payment").caused_by(&placed);
//! for e in [placed, captured, failed] {
//!     tracer.ingest(&Record::new(e));
//! }
//! tracer.finish(None);
//! let report = tracer.report();
//! assert_eq!(report.findings[0].rule, Rule::BothBranches);
//! println!("{}", report.summary());
//! ```
//!
//! # Concepts
//!
//! - A [`Record`] is an envelope (event, receipt or dead-letter copy) as a
//!   [`Source`] read it, with its partition and offset when known.
//! - The [`Tracer`] groups records by correlation id into flows and, when a
//!   flow finishes, rebuilds it as a causal graph (petgraph; events are nodes,
//!   causation links are edges, receipts are attached to the events they
//!   handled), decides its [`FlowStatus`], checks it against the topology
//!   ([`Rule`] lists the checks, with stable codes), and folds it into the
//!   aggregates: flows by status and name, findings by rule and service, and
//!   the service graph `producer --EventType--> consumer` with latency
//!   distributions ([`Histogram`]: quantiles within 1/64).
//! - A [`Report`] says all that: [`Report::summary`] for people, JSON (serde)
//!   for tools, the graph as DOT or Mermaid; [`FlowTrace::timeline`] draws
//!   one flow.
//! - [`export`] writes CSV or XES event logs for process-mining tools, and
//!   every flow's verdict as JSON lines ([`FlowSummary`], [`FlowWriter`],
//!   [`Tracer::export_flows`]).
//! - [`Query`] finds flows by what a user knows of them (an event id, a
//!   record key, `order_id=42`); [`Tracer::keep_flows`] keeps them whole.
//! - [`FlowTrace::to_dot`] and [`FlowTrace::to_mermaid`] draw one flow.
//!
//! # Flow status
//!
//! | status | when |
//! |---|---|
//! | `completed` | it reached one of its flow's `ends_with` events, and nothing was dead-lettered |
//! | `recovered` | it completed after an event dead-lettered on the way was replayed and handled |
//! | `failed` | an event was dead-lettered (and not recovered), or it came to rest (nothing owed) on events that end nothing |
//! | `in_progress` | services still owe events and no `within` has passed |
//! | `stuck` | past the flow's `within` or a reaction's `within` with events owed; the report names each service, what it owes, for which event, since when |
//!
//! A reaction is *owed* from the moment its cause was published until it is
//! emitted — a handler may ack and emit later, through
//! `Publisher::publish_caused_by` — and a finding about it (`missing-emit`,
//! `stuck`, `never-handled`) comes only once the tightest bound (the
//! reaction's `within` or the flow's) has passed relative to "now". Without
//! any bound, an owed reaction is never late. Statuses and findings do not
//! depend on the order of the records, nor on duplicates of them.
//!
//! Without a topology a flow is `failed` when dead-lettered and `completed`
//! otherwise: ends and deadlines come from the topology.
//!
//! # Rules
//!
//! Every finding names its flow, the service at fault, the event type (and
//! event id where there is one) and a [`Rule`] with a stable code. What
//! triggers each rule, whom it names and an example are in the rules'
//! reference, `docs/rules.md` (the docs of [`Rule`], [`Rule::explain`],
//! `choreo trace --explain RULE`).
//!
//! # Sources
//!
//! - Capture files ([`capture`]): Avro object container (canonical) or JSON
//!   lines, detected by content; damaged files yield what precedes the damage.
//!   [`drive_capture`] reads one into a tracer on every core, decoding
//!   straight into what the tracer keeps (the same report as [`drive`]).
//! - A bus, through [`tap`] (any [`choreo_core::Bus`]); [`record`] taps one
//!   into a capture file.
//! - Anything else: implement [`Source`] (or wrap an iterator in
//!   [`IterSource`]) and pass it to [`drive`], or call [`Tracer::ingest`].
//!
//! A Kafka source, say, yields each record as
//! `Record::new(envelope).at(partition, offset)` (or
//! [`Record::unattributed`] for a record without CloudEvents headers) and
//! ends (`None`) at the partitions' end for a batch; following live, a loop
//! feeds [`Tracer::ingest`] and calls [`Tracer::tick`] on a timer instead.
//! Capturing to a file is [`capture::Writer::write`] on the same records.
//!
//! # Reports in JSON
//!
//! `serde_json::to_value(report)` is the stable JSON of `choreo trace
//! --format json`: `input` (counts), `flows` and `by_flow` (statuses,
//! durations), `findings` (per rule: count, sites, examples), `services` and
//! `edges` (the service graph with counts and p50/p95/p99 of queue, handler
//! and end-to-end latency), `listed` (stuck and failed flows with what is
//! owed), `now` and `now_from` (where "now" came from), `notes`, `ok` and
//! `verdict`. Times are microseconds since the Unix epoch.
//!
//! # Batch and live
//!
//! A capture file is one batch: ingest everything, then [`Tracer::finish`]
//! judges every flow as of "now" — the latest timestamp in the input unless
//! given (a batch read from a live source passes the wall clock;
//! [`Report::note_clock`] says where "now" came from). Live, call
//! [`Tracer::tick`] with the wall clock every second or so: flows that
//! reached their end are folded and dropped once quiet for
//! [`TracerConfig::settle`] (and once nothing they still owe within a bound,
//! a sink's receipt say, may come), stuck ones are reported and evicted, and
//! the caps of [`TracerConfig::live`] bound memory (evictions are counted).
//!
//! A live tracer that shares the work with others (a consumer-group member)
//! rebuilds the flows of a partition it is given from records read again
//! ([`Tracer::ingest_replayed`]: nothing counted, nothing judged), then
//! [`Tracer::restored`] drops, unsaid, the flows the previous owner had
//! judged as of its clock and adopts the rest; [`Tracer::hand_over`] gives up
//! the flows of partitions it loses. `choreo trace --follow --group` does
//! this on Kafka (docs/tracing.md).
//!
//! # Metrics
//!
//! [`Tracer::register_metrics`] exports Grafana's service-graph series and
//! the tracer's own on a Prometheus registry; [`METRICS`] lists every family
//! with its type, labels and meaning. Serve them with
//! `choreo_bus::MetricsServer`.
//!
//! # Accuracy
//!
//! Latency quantiles in reports come from [`Histogram`]: exact below 128 µs,
//! within 1/64 (≈ 1.6 %) above, maxima exact. Prometheus histograms use
//! fixed buckets (0.5 ms … 60 s for edges, 10 ms … 1 h for flows).

mod aggregate;
mod analysis;
mod assemble;
pub mod capture;
mod compact;
mod config;
mod drive;
mod error;
pub mod export;
mod find;
mod finding;
mod flow;
mod fold;
mod metrics;
mod model;
mod receipt;
mod recent;
mod record;
mod recording;
mod report;
mod stats;
mod store;
mod tap;
mod tracer;
mod util;

pub use config::{Keep, Receipts, TracerConfig};
pub use drive::{Drained, drive, drive_capture};
pub use error::{Error, Result};
pub use export::{FlowWriter, LogFormat, LogWriter};
pub use find::Query;
pub use finding::{Finding, Rule};
pub use flow::{FlowStatus, FlowSummary, FlowTrace, Handling, Owed, TracedEvent};
pub use metrics::METRICS;
pub use record::{IterSource, Progress, Record, Source};
pub use recording::{RECORDER_GROUP, Recording, record};
pub use report::{
    Counters, EdgeReport, EvictReason, FlowBrief, FlowNameReport, FlowTotals, NowFrom,
    OutboxReport, Report, RuleReport, RuleSite,
};
pub use stats::{Histogram, Quantiles, format_micros};
pub use tap::{tap, tap_topics};
pub use tracer::{Horizon, Restored, Tracer};
