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
//! - [`export`] writes CSV or XES event logs for process-mining tools.
//!
//! # Sources
//!
//! - Capture files ([`capture`]): Avro object container (canonical) or JSON
//!   lines, detected by content; damaged files yield what precedes the damage.
//! - A bus, through [`tap`] (any [`choreo_core::Bus`]).
//! - Anything else: implement [`Source`] (or wrap an iterator in
//!   [`IterSource`]) and pass it to [`drive`], or call [`Tracer::ingest`].
//!
//! # Batch and live
//!
//! A capture file is one batch: ingest everything, then [`Tracer::finish`]
//! judges every flow as of "now" — the latest timestamp in the input unless
//! given. Live, call [`Tracer::tick`] with the wall clock every second or so:
//! flows that reached their end are folded and dropped once quiet for
//! [`TracerConfig::settle`], stuck ones are reported and evicted, and the caps
//! of [`TracerConfig::live`] bound memory (evictions are counted).
//!
//! # Metrics
//!
//! [`Tracer::register_metrics`] exports Grafana's service-graph series and
//! the tracer's own on a Prometheus registry; [`METRICS`] lists every family
//! with its type, labels and meaning. Serve them with
//! `choreo_bus::MetricsServer`.

pub mod capture;
mod config;
mod drive;
mod engine;
mod error;
pub mod export;
mod finding;
mod flow;
mod metrics;
mod model;
mod record;
mod report;
mod stats;
mod tap;
mod util;

pub use config::{Keep, Receipts, TracerConfig};
pub use drive::{Drained, drive};
pub use engine::Tracer;
pub use error::{Error, Result};
pub use export::{LogFormat, LogWriter};
pub use finding::{Finding, Rule};
pub use flow::{FlowStatus, FlowTrace, Handling, Owed, TracedEvent};
pub use metrics::METRICS;
pub use record::{IterSource, Progress, Record, Source};
pub use report::{
    Counters, EdgeReport, EvictReason, FlowBrief, FlowNameReport, FlowTotals, Report, RuleReport,
    RuleSite,
};
pub use stats::{Histogram, Quantiles, format_micros};
pub use tap::{tap, tap_topics};
