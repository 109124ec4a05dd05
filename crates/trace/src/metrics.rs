//! Prometheus metrics: Grafana's service-graph series and the tracer's own `choreo_flow_*` / `choreo_trace_*`.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry,
};

use crate::config::TracerConfig;
use crate::finding::Rule;
use crate::flow::FlowStatus;
use crate::report::{Counters, EvictReason};
use crate::{Error, Result};

/// Latency buckets (seconds) for edges.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Buckets (seconds) for whole flows.
const FLOW_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];

/// Every metric family the tracer exports, with its type, labels and meaning:
/// the table in docs/metrics.md lists the same (the test
/// `every_metric_is_in_the_metrics_guides_table` in crates/cli checks it).
pub const METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "traces_service_graph_request_total",
        "counter",
        "client, server, connection_type",
        "deliveries from client (producer) to server (consumer) service, from receipts or, without one, causation",
    ),
    (
        "traces_service_graph_request_failed_total",
        "counter",
        "client, server, connection_type",
        "of those, dead-lettered or given back for redelivery",
    ),
    (
        "traces_service_graph_request_server_seconds",
        "histogram",
        "client, server, connection_type",
        "handler time on the consumer (receipt duration)",
    ),
    (
        "traces_service_graph_request_client_seconds",
        "histogram",
        "client, server, connection_type",
        "publish to handler done (queue + handler); without a receipt, publish to the consumer's first emission",
    ),
    (
        "choreo_flow_started_total",
        "counter",
        "flow",
        "flows first seen",
    ),
    (
        "choreo_flow_completed_total",
        "counter",
        "flow",
        "flows that reached a declared end (recovered ones, after a dead letter was replayed, included)",
    ),
    (
        "choreo_flow_failed_total",
        "counter",
        "flow",
        "flows dead-lettered or ended on a non-end",
    ),
    (
        "choreo_flow_stuck_total",
        "counter",
        "flow",
        "flows reported stuck (past a `within` with events owed)",
    ),
    (
        "choreo_flow_unfinished_total",
        "counter",
        "flow",
        "flows finished while still in progress (end of a batch, or evicted)",
    ),
    (
        "choreo_flow_in_flight",
        "gauge",
        "flow",
        "flows held in memory now",
    ),
    (
        "choreo_flow_duration_seconds",
        "histogram",
        "flow, status",
        "first event to end, for completed, recovered and failed flows",
    ),
    (
        "choreo_trace_edge_total",
        "counter",
        "producer, event_type, consumer",
        "deliveries per edge of the service graph",
    ),
    (
        "choreo_trace_edge_failed_total",
        "counter",
        "producer, event_type, consumer",
        "dead-lettered or redelivered deliveries per edge",
    ),
    (
        "choreo_trace_edge_queue_seconds",
        "histogram",
        "producer, event_type, consumer",
        "publish to handler start (receipts)",
    ),
    (
        "choreo_trace_edge_handler_seconds",
        "histogram",
        "producer, event_type, consumer",
        "handler time (receipts)",
    ),
    (
        "choreo_trace_violations_total",
        "counter",
        "rule, service",
        "conformance findings by rule code and service",
    ),
    (
        "choreo_trace_records_total",
        "counter",
        "kind",
        "records ingested: event, receipt, dead_letter, duplicate, unattributed, late",
    ),
    (
        "choreo_trace_evictions_total",
        "counter",
        "reason",
        "flows evicted before finishing: flow_cap, record_cap, flow_record_cap, stuck, idle",
    ),
    (
        "choreo_trace_cap",
        "gauge",
        "cap",
        "configured caps: flows, records, records_per_flow (+Inf when unbounded)",
    ),
    (
        "choreo_trace_records_in_flight",
        "gauge",
        "",
        "records (events, receipts, dead-letter copies) held in memory now",
    ),
    (
        "choreo_trace_lag_seconds",
        "gauge",
        "",
        "tracer clock (last tick) minus the latest event time seen",
    ),
    (
        "choreo_trace_latest_event_timestamp_seconds",
        "gauge",
        "",
        "the latest event time seen, Unix seconds",
    ),
];

/// The tracer's metric families on one registry.
#[derive(Clone)]
pub(crate) struct TraceMetrics {
    sg_total: IntCounterVec,
    sg_failed: IntCounterVec,
    sg_server: HistogramVec,
    sg_client: HistogramVec,
    flow_started: IntCounterVec,
    flow_completed: IntCounterVec,
    flow_failed: IntCounterVec,
    flow_stuck: IntCounterVec,
    flow_unfinished: IntCounterVec,
    flow_in_flight: IntGaugeVec,
    flow_duration: HistogramVec,
    edge_total: IntCounterVec,
    edge_failed: IntCounterVec,
    edge_queue: HistogramVec,
    edge_handler: HistogramVec,
    violations: IntCounterVec,
    records: IntCounterVec,
    evictions: IntCounterVec,
    caps: GaugeVec,
    in_flight: Gauge,
    lag: Gauge,
    latest: Gauge,
    synced: std::sync::Arc<std::sync::Mutex<Counters>>,
    flows: Vec<String>,
}

/// What the gauges show, as the tracer has it now.
pub(crate) struct Gauges<'a> {
    pub(crate) counters: &'a Counters,
    pub(crate) records_in_flight: usize,
    /// Flows in flight per flow name.
    pub(crate) in_flight_by_flow: Vec<(String, usize)>,
    /// The latest event time seen.
    pub(crate) latest: Option<choreo_core::Timestamp>,
}

/// The series of one edge, looked up once.
pub(crate) struct EdgeMetrics {
    sg_total: IntCounter,
    sg_failed: IntCounter,
    sg_server: Histogram,
    sg_client: Histogram,
    edge_total: IntCounter,
    edge_failed: IntCounter,
    edge_queue: Histogram,
    edge_handler: Histogram,
}

impl EdgeMetrics {
    /// Records one delivery: queue (or, without a handler time, the whole
    /// latency) and handler time in µs.
    pub(crate) fn observe(&self, failed: bool, queue_us: Option<i64>, handler_us: Option<i64>) {
        self.sg_total.inc();
        self.edge_total.inc();
        if failed {
            self.sg_failed.inc();
            self.edge_failed.inc();
        }
        if let Some(h) = handler_us {
            let h = h.max(0) as f64 / 1e6;
            self.sg_server.observe(h);
            self.edge_handler.observe(h);
            if let Some(q) = queue_us {
                let q = q.max(0) as f64 / 1e6;
                self.edge_queue.observe(q);
                self.sg_client.observe(q + h);
            }
        } else if let Some(q) = queue_us {
            self.sg_client.observe(q.max(0) as f64 / 1e6);
        }
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    name: &str,
    c: C,
) -> Result<C> {
    r.register(Box::new(c.clone()))
        .map_err(|source| Error::Metrics {
            name: name.to_owned(),
            source,
        })?;
    Ok(c)
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels).map_err(|source| Error::Metrics {
        name: name.to_owned(),
        source,
    })?;
    register(r, name, c)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .map_err(|source| Error::Metrics {
        name: name.to_owned(),
        source,
    })?;
    register(r, name, h)
}

fn help(name: &str) -> &'static str {
    METRICS
        .iter()
        .find(|m| m.0 == name)
        .map_or("choreo tracer metric", |m| m.3)
}

impl TraceMetrics {
    pub(crate) fn new(r: &Registry) -> Result<TraceMetrics> {
        let sg = &["client", "server", "connection_type"];
        let edge = &["producer", "event_type", "consumer"];
        let c = |name: &str, labels: &[&str]| counter(r, name, help(name), labels);
        let h = |name: &str, labels: &[&str], b: &[f64]| histogram(r, name, help(name), labels, b);
        let gauge = |name: &str| -> Result<Gauge> {
            let g = Gauge::new(name, help(name)).map_err(|source| Error::Metrics {
                name: name.to_owned(),
                source,
            })?;
            register(r, name, g)
        };
        let caps = GaugeVec::new(
            Opts::new("choreo_trace_cap", help("choreo_trace_cap")),
            &["cap"],
        )
        .map_err(|source| Error::Metrics {
            name: "choreo_trace_cap".into(),
            source,
        })?;
        let in_flight_flows = IntGaugeVec::new(
            Opts::new("choreo_flow_in_flight", help("choreo_flow_in_flight")),
            &["flow"],
        )
        .map_err(|source| Error::Metrics {
            name: "choreo_flow_in_flight".into(),
            source,
        })?;
        Ok(TraceMetrics {
            sg_total: c("traces_service_graph_request_total", sg)?,
            sg_failed: c("traces_service_graph_request_failed_total", sg)?,
            sg_server: h(
                "traces_service_graph_request_server_seconds",
                sg,
                LATENCY_BUCKETS,
            )?,
            sg_client: h(
                "traces_service_graph_request_client_seconds",
                sg,
                LATENCY_BUCKETS,
            )?,
            flow_started: c("choreo_flow_started_total", &["flow"])?,
            flow_completed: c("choreo_flow_completed_total", &["flow"])?,
            flow_failed: c("choreo_flow_failed_total", &["flow"])?,
            flow_stuck: c("choreo_flow_stuck_total", &["flow"])?,
            flow_unfinished: c("choreo_flow_unfinished_total", &["flow"])?,
            flow_in_flight: register(r, "choreo_flow_in_flight", in_flight_flows)?,
            flow_duration: h(
                "choreo_flow_duration_seconds",
                &["flow", "status"],
                FLOW_BUCKETS,
            )?,
            edge_total: c("choreo_trace_edge_total", edge)?,
            edge_failed: c("choreo_trace_edge_failed_total", edge)?,
            edge_queue: h("choreo_trace_edge_queue_seconds", edge, LATENCY_BUCKETS)?,
            edge_handler: h("choreo_trace_edge_handler_seconds", edge, LATENCY_BUCKETS)?,
            violations: c("choreo_trace_violations_total", &["rule", "service"])?,
            records: c("choreo_trace_records_total", &["kind"])?,
            evictions: c("choreo_trace_evictions_total", &["reason"])?,
            caps: register(r, "choreo_trace_cap", caps)?,
            in_flight: gauge("choreo_trace_records_in_flight")?,
            lag: gauge("choreo_trace_lag_seconds")?,
            latest: gauge("choreo_trace_latest_event_timestamp_seconds")?,
            synced: Default::default(),
            flows: Vec::new(),
        })
    }

    /// Creates every flow's series at zero, so dashboards see the flows
    /// before anything happens in them.
    pub(crate) fn init_flows(&mut self, flows: Vec<String>) {
        for f in &flows {
            for c in [
                &self.flow_started,
                &self.flow_completed,
                &self.flow_failed,
                &self.flow_stuck,
                &self.flow_unfinished,
            ] {
                c.with_label_values(&[f.as_str()]);
            }
            self.flow_in_flight.with_label_values(&[f.as_str()]).set(0);
        }
        self.flows = flows;
    }

    pub(crate) fn set_caps(&self, c: &TracerConfig) {
        let v = |n: usize| {
            if n == usize::MAX {
                f64::INFINITY
            } else {
                n as f64
            }
        };
        self.caps.with_label_values(&["flows"]).set(v(c.max_flows));
        self.caps
            .with_label_values(&["records"])
            .set(v(c.max_records));
        self.caps
            .with_label_values(&["records_per_flow"])
            .set(v(c.max_records_per_flow));
    }

    pub(crate) fn edge(&self, client: &str, event_type: &str, server: &str) -> EdgeMetrics {
        let sg = [client, server, "messaging_system"];
        let e = [client, event_type, server];
        EdgeMetrics {
            sg_total: self.sg_total.with_label_values(&sg),
            sg_failed: self.sg_failed.with_label_values(&sg),
            sg_server: self.sg_server.with_label_values(&sg),
            sg_client: self.sg_client.with_label_values(&sg),
            edge_total: self.edge_total.with_label_values(&e),
            edge_failed: self.edge_failed.with_label_values(&e),
            edge_queue: self.edge_queue.with_label_values(&e),
            edge_handler: self.edge_handler.with_label_values(&e),
        }
    }

    pub(crate) fn flow_started(&self, flow: Option<&str>) {
        self.flow_started
            .with_label_values(&[flow.unwrap_or("unknown")])
            .inc();
    }

    pub(crate) fn flow_finished(
        &self,
        flow: Option<&str>,
        status: FlowStatus,
        duration_us: Option<i64>,
    ) {
        let flow = flow.unwrap_or("unknown");
        let c = match status {
            // Recovered flows did reach their end; the duration's label tells them apart.
            FlowStatus::Completed | FlowStatus::Recovered => &self.flow_completed,
            FlowStatus::Failed => &self.flow_failed,
            FlowStatus::Stuck => &self.flow_stuck,
            FlowStatus::InProgress => &self.flow_unfinished,
        };
        c.with_label_values(&[flow]).inc();
        if let Some(d) = duration_us {
            self.flow_duration
                .with_label_values(&[flow, status.as_str()])
                .observe(d.max(0) as f64 / 1e6);
        }
    }

    pub(crate) fn violation(&self, rule: Rule, service: &str) {
        self.violations
            .with_label_values(&[
                rule.code(),
                if service.is_empty() {
                    "unknown"
                } else {
                    service
                },
            ])
            .inc();
    }

    pub(crate) fn evicted(&self, reason: EvictReason) {
        self.evictions.with_label_values(&[reason.as_str()]).inc();
    }

    /// Syncs the counters and gauges that are cheaper to set now and then
    /// than on every record.
    pub(crate) fn gauges(&self, g: &Gauges<'_>, now_us: i64) {
        let c = g.counters;
        if let Ok(mut last) = self.synced.lock() {
            // std Mutex: held only for these additions, never across an await.
            let kinds = [
                ("event", c.events, last.events),
                ("receipt", c.receipts, last.receipts),
                ("dead_letter", c.dead_letters, last.dead_letters),
                ("duplicate", c.duplicates, last.duplicates),
                ("unattributed", c.unattributed, last.unattributed),
                ("late", c.late, last.late),
            ];
            for (kind, now, before) in kinds {
                self.records
                    .with_label_values(&[kind])
                    .inc_by(now.saturating_sub(before));
            }
            *last = c.clone();
        }
        self.in_flight.set(g.records_in_flight as f64);
        self.flow_in_flight.reset();
        for f in &self.flows {
            self.flow_in_flight.with_label_values(&[f.as_str()]).set(0);
        }
        for (name, n) in &g.in_flight_by_flow {
            self.flow_in_flight
                .with_label_values(&[name.as_str()])
                .set(*n as i64);
        }
        if let Some(latest) = g.latest {
            let latest = latest.as_micros();
            self.latest.set(latest as f64 / 1e6);
            self.lag
                .set(now_us.saturating_sub(latest).max(0) as f64 / 1e6);
        }
    }
}
