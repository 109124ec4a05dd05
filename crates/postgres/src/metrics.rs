//! The outbox's and inbox's Prometheus metrics.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Buckets of the relay's lag, in seconds: 1 ms to 5 min.
pub const LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Every metric this crate exports: (name, type, labels, meaning).
/// docs/postgres.md lists them all (a test checks it).
pub const METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "choreo_outbox_backlog_rows",
        "gauge",
        "outbox",
        "committed outbox rows not yet relayed (refreshed by the relay every metrics_interval)",
    ),
    (
        "choreo_outbox_oldest_age_seconds",
        "gauge",
        "outbox",
        "age of the oldest committed row not yet relayed; 0 when none waits",
    ),
    (
        "choreo_outbox_relayed_total",
        "counter",
        "outbox, topic",
        "outbox rows the relay published to the bus and marked sent",
    ),
    (
        "choreo_outbox_relay_failures_total",
        "counter",
        "outbox, stage",
        "relay failures: stage = publish (the bus refused or failed; the row is retried) or database (a batch failed; retried after a backoff)",
    ),
    (
        "choreo_outbox_moved_aside_total",
        "counter",
        "outbox, reason",
        "rows moved to the dead table: reason = decode (the row no longer decodes) or refused (the bus refuses the event for good)",
    ),
    (
        "choreo_outbox_relay_lag_seconds",
        "histogram",
        "outbox",
        "from a row's insert to its publication by the relay",
    ),
    (
        "choreo_outbox_pruned_total",
        "counter",
        "table",
        "sent outbox rows and inbox entries deleted after their retention",
    ),
    (
        "choreo_inbox_hits_total",
        "counter",
        "service",
        "deliveries the inbox recognised as already handled (skipped)",
    ),
];

/// The crate's metric families, registered once per registry. Cheap to clone.
#[derive(Clone)]
pub struct PgMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    backlog: IntGaugeVec,
    oldest: GaugeVec,
    relayed: IntCounterVec,
    failures: IntCounterVec,
    moved_aside: IntCounterVec,
    lag: HistogramVec,
    pruned: IntCounterVec,
    inbox_hits: IntCounterVec,
}

impl std::fmt::Debug for PgMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgMetrics")
    }
}

impl PgMetrics {
    /// Creates the metric families and registers them with `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let backlog = IntGaugeVec::new(
            Opts::new(
                "choreo_outbox_backlog_rows",
                "Committed outbox rows not yet relayed.",
            ),
            &["outbox"],
        )?;
        registry.register(Box::new(backlog.clone()))?;
        let oldest = GaugeVec::new(
            Opts::new(
                "choreo_outbox_oldest_age_seconds",
                "Age of the oldest committed outbox row not yet relayed (0 when none waits).",
            ),
            &["outbox"],
        )?;
        registry.register(Box::new(oldest.clone()))?;
        let lag = HistogramVec::new(
            HistogramOpts::new(
                "choreo_outbox_relay_lag_seconds",
                "Time from an outbox row's insert to its publication by the relay.",
            )
            .buckets(LAG_BUCKETS.to_vec()),
            &["outbox"],
        )?;
        registry.register(Box::new(lag.clone()))?;
        Ok(PgMetrics {
            inner: Arc::new(Inner {
                backlog,
                oldest,
                relayed: counter(
                    "choreo_outbox_relayed_total",
                    "Outbox rows published to the bus and marked sent.",
                    &["outbox", "topic"],
                )?,
                failures: counter(
                    "choreo_outbox_relay_failures_total",
                    "Relay failures, by stage (publish, database).",
                    &["outbox", "stage"],
                )?,
                moved_aside: counter(
                    "choreo_outbox_moved_aside_total",
                    "Outbox rows moved to the dead table, by reason (decode, refused).",
                    &["outbox", "reason"],
                )?,
                lag,
                pruned: counter(
                    "choreo_outbox_pruned_total",
                    "Sent outbox rows and inbox entries deleted after their retention.",
                    &["table"],
                )?,
                inbox_hits: counter(
                    "choreo_inbox_hits_total",
                    "Deliveries the inbox recognised as already handled.",
                    &["service"],
                )?,
            }),
        })
    }

    /// The metrics on Prometheus' default registry, created on first use.
    pub fn global() -> &'static PgMetrics {
        static GLOBAL: OnceLock<PgMetrics> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            PgMetrics::new(prometheus::default_registry())
                .expect("choreo-postgres metrics are registered once on the default registry")
        })
    }

    pub(crate) fn outbox(&self, outbox: &str) -> OutboxMetrics {
        let m = &self.inner;
        OutboxMetrics {
            name: outbox.to_owned(),
            backlog: m.backlog.with_label_values(&[outbox]),
            oldest: m.oldest.with_label_values(&[outbox]),
            publish_failures: m.failures.with_label_values(&[outbox, "publish"]),
            database_failures: m.failures.with_label_values(&[outbox, "database"]),
            decode: m.moved_aside.with_label_values(&[outbox, "decode"]),
            refused: m.moved_aside.with_label_values(&[outbox, "refused"]),
            lag: m.lag.with_label_values(&[outbox]),
            metrics: self.clone(),
        }
    }

    pub(crate) fn inbox_hit(&self, service: &str) {
        self.inner.inbox_hits.with_label_values(&[service]).inc();
    }

    pub(crate) fn pruned(&self, table: &str, n: u64) {
        self.inner.pruned.with_label_values(&[table]).inc_by(n);
    }
}

/// One outbox's series.
#[derive(Clone)]
pub(crate) struct OutboxMetrics {
    name: String,
    pub(crate) backlog: IntGauge,
    pub(crate) oldest: Gauge,
    pub(crate) publish_failures: IntCounter,
    pub(crate) database_failures: IntCounter,
    pub(crate) decode: IntCounter,
    pub(crate) refused: IntCounter,
    pub(crate) lag: Histogram,
    metrics: PgMetrics,
}

impl OutboxMetrics {
    pub(crate) fn relayed(&self, topic: &str) {
        self.metrics
            .inner
            .relayed
            .with_label_values(&[&self.name, topic])
            .inc();
    }
}
