//! The SDK's Prometheus metrics.

use std::sync::{Arc, OnceLock, RwLock};

use choreo_core::{Name, Outcome};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::identity::{self, IdentityCache};

/// Buckets for handler and queue durations, in seconds: 100 µs to 60 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Every metric the SDK and the in-process bus export: (name, type, labels, meaning).
/// The metric table of `docs/metrics.md` lists them all (a test checks it).
pub const METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "choreo_events_published_total",
        "counter",
        "service, topic, event_type",
        "events a service published (handler emissions and flow starts)",
    ),
    (
        "choreo_events_handled_total",
        "counter",
        "service, topic, event_type, outcome",
        "deliveries a service settled; outcome = acked, dead_lettered, duplicate, redelivered",
    ),
    (
        "choreo_handler_retries_total",
        "counter",
        "service, topic, event_type",
        "failed attempts that were retried",
    ),
    (
        "choreo_events_dead_lettered_total",
        "counter",
        "service, topic, event_type",
        "deliveries sent to the dead-letter topic",
    ),
    (
        "choreo_handler_duration_seconds",
        "histogram",
        "service, topic, event_type",
        "first attempt to settlement, retries included",
    ),
    (
        "choreo_event_queue_seconds",
        "histogram",
        "service, topic, event_type",
        "publication to the start of handling",
    ),
    (
        "choreo_handlers_in_flight",
        "gauge",
        "service",
        "deliveries being handled now, counted from their first wait (for I/O, a timer, a lock): a handling that never waits is not counted",
    ),
    (
        "choreo_deliveries_ignored_total",
        "counter",
        "service, topic, event_type",
        "deliveries a service does not route (a type it has no handler for, or no type at all): acked, with a receipt of outcome `ignored`",
    ),
    (
        "choreo_publish_failures_total",
        "counter",
        "service, topic",
        "publishes that failed (emissions: the delivery is redelivered, or dead-lettered when the backend refused them; receipts: logged)",
    ),
    (
        "choreo_receive_errors_total",
        "counter",
        "service",
        "errors the bus reported while receiving",
    ),
    (
        "choreo_bus_appended_total",
        "counter",
        "topic",
        "in-process bus: events appended",
    ),
    (
        "choreo_bus_retention_evicted_total",
        "counter",
        "topic",
        "in-process bus: settled events evicted to make room",
    ),
    (
        "choreo_bus_unread_evicted_total",
        "counter",
        "topic, group",
        "in-process bus: events evicted before a group read them (DropOldest, or a group without members)",
    ),
    (
        "choreo_bus_publish_waits_total",
        "counter",
        "topic",
        "in-process bus: publishes from outside handlers that waited for room in their partition, or for partitions past their bound to drain (WhenFull::Block)",
    ),
    (
        "choreo_bus_overflow_total",
        "counter",
        "topic",
        "in-process bus: events published while handling a delivery, appended past a full partition's bound instead of waiting (a handler waiting for room could wait for itself); new work waits until it drains",
    ),
    (
        "choreo_bus_publish_stalls_total",
        "counter",
        "topic, partition, group",
        "in-process bus: periods of Retention::stalled_after (10 s) in which a waiting publisher saw the group holding the room back settle nothing in this partition (a warning is logged each time)",
    ),
    (
        "choreo_bus_retained_events",
        "gauge",
        "topic, partition",
        "in-process bus: events retained",
    ),
    (
        "choreo_bus_consumer_lag",
        "gauge",
        "topic, partition, group",
        "in-process bus: events not yet settled by a group",
    ),
];

/// The SDK's metric families, registered once per registry and shared by
/// every service of the process. Cheap to clone.
///
/// | metric | type | labels |
/// |---|---|---|
/// | `choreo_events_published_total` | counter | service, topic, event_type |
/// | `choreo_events_handled_total` | counter | service, topic, event_type, outcome |
/// | `choreo_handler_retries_total` | counter | service, topic, event_type |
/// | `choreo_events_dead_lettered_total` | counter | service, topic, event_type |
/// | `choreo_handler_duration_seconds` | histogram | service, topic, event_type |
/// | `choreo_event_queue_seconds` | histogram | service, topic, event_type |
/// | `choreo_handlers_in_flight` | gauge | service |
/// | `choreo_deliveries_ignored_total` | counter | service, topic, event_type |
/// | `choreo_publish_failures_total` | counter | service, topic |
/// | `choreo_receive_errors_total` | counter | service |
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

struct MetricsInner {
    published: IntCounterVec,
    handled: IntCounterVec,
    retries: IntCounterVec,
    dead_lettered: IntCounterVec,
    duration: HistogramVec,
    queue: HistogramVec,
    in_flight: IntGaugeVec,
    ignored: IntCounterVec,
    publish_failures: IntCounterVec,
    receive_errors: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Creates the metric families and registers them with `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let labels = &["service", "topic", "event_type"];
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram = |name: &str, help: &str| -> prometheus::Result<HistogramVec> {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
                labels,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "choreo_handlers_in_flight",
                "Deliveries a service is handling right now (counted from the handling's first wait).",
            ),
            &["service"],
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(Metrics {
            inner: Arc::new(MetricsInner {
                published: counter(
                    "choreo_events_published_total",
                    "Events a service published.",
                    labels,
                )?,
                handled: counter(
                    "choreo_events_handled_total",
                    "Deliveries a service settled, by outcome (acked, dead_lettered, duplicate, redelivered).",
                    &["service", "topic", "event_type", "outcome"],
                )?,
                retries: counter(
                    "choreo_handler_retries_total",
                    "Handler attempts that failed and were retried.",
                    labels,
                )?,
                dead_lettered: counter(
                    "choreo_events_dead_lettered_total",
                    "Deliveries a service sent to a dead-letter topic.",
                    labels,
                )?,
                duration: histogram(
                    "choreo_handler_duration_seconds",
                    "Time from a delivery's first attempt to its settlement, retries included.",
                )?,
                queue: histogram(
                    "choreo_event_queue_seconds",
                    "Time from an event's publication to the start of its handling.",
                )?,
                in_flight,
                ignored: counter(
                    "choreo_deliveries_ignored_total",
                    "Deliveries of event types a service has no handler for (acked, not handled).",
                    labels,
                )?,
                publish_failures: counter(
                    "choreo_publish_failures_total",
                    "Publishes that failed (the delivery that caused them is redelivered).",
                    &["service", "topic"],
                )?,
                receive_errors: counter(
                    "choreo_receive_errors_total",
                    "Errors reported by the bus while receiving.",
                    &["service"],
                )?,
            }),
        })
    }

    /// The metrics on Prometheus' default registry, created on first use.
    pub fn global() -> &'static Metrics {
        static GLOBAL: OnceLock<Metrics> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            Metrics::new(prometheus::default_registry())
                .expect("choreo metrics are registered once on the default registry")
        })
    }

    pub(crate) fn route(&self, service: &str, topic: &str, event_type: &str) -> RouteMetrics {
        let m = &self.inner;
        let l = &[service, topic, event_type];
        let handled = |o: Outcome| {
            m.handled
                .with_label_values(&[service, topic, event_type, o.as_str()])
        };
        RouteMetrics {
            acked: handled(Outcome::Acked),
            dead_lettered_outcome: handled(Outcome::DeadLettered),
            duplicate: handled(Outcome::Duplicate),
            redelivered: handled(Outcome::Redelivered),
            retries: m.retries.with_label_values(l),
            dead_lettered: m.dead_lettered.with_label_values(l),
            duration: m.duration.with_label_values(l),
            queue: m.queue.with_label_values(l),
        }
    }

    pub(crate) fn in_flight(&self, service: &str) -> IntGauge {
        self.inner.in_flight.with_label_values(&[service])
    }

    pub(crate) fn ignored(&self, service: &str, topic: &str, event_type: &str) -> IntCounter {
        self.inner
            .ignored
            .with_label_values(&[service, topic, event_type])
    }

    pub(crate) fn receive_error(&self, service: &str) {
        self.inner
            .receive_errors
            .with_label_values(&[service])
            .inc();
    }

    pub(crate) fn publish_failed(&self, service: &str, topic: &str) {
        self.inner
            .publish_failures
            .with_label_values(&[service, topic])
            .inc();
    }

    /// The `published` counter of one label set.
    pub(crate) fn published_counter(
        &self,
        service: &str,
        topic: &str,
        event_type: &str,
    ) -> IntCounter {
        self.inner
            .published
            .with_label_values(&[service, topic, event_type])
    }
}

/// The `published` counters of one service, resolved once per (topic,
/// event type): publishing must not hash label values every time.
pub(crate) struct PublishedCounters {
    service: Name,
    metrics: Metrics,
    /// By the names' identity: read without a lock.
    fast: IdentityCache<(Name, Name), IntCounter, 32>,
    /// By topic and event type: the table of record, read when `fast` misses.
    // std RwLock: never held across an await.
    cache: RwLock<rustc_hash::FxHashMap<(Name, Name), IntCounter>>,
}

impl PublishedCounters {
    pub(crate) fn new(service: Name, metrics: Metrics) -> Self {
        PublishedCounters {
            service,
            metrics,
            fast: IdentityCache::new(),
            cache: RwLock::default(),
        }
    }

    /// Counts one event published to `topic`.
    pub(crate) fn inc(&self, topic: &Name, event_type: &Name) {
        let identity = identity::of_pair(topic, event_type);
        let is_key =
            |k: &(Name, Name)| identity::same(&k.0, topic) && identity::same(&k.1, event_type);
        if let Some(c) = self.fast.get(identity, is_key) {
            c.inc();
            return;
        }
        let c = self.counter(topic, event_type);
        c.inc();
        self.fast
            .insert(identity, (topic.clone(), event_type.clone()), c, is_key);
    }

    /// The counter of `topic` and `event_type`, from the table of record.
    fn counter(&self, topic: &Name, event_type: &Name) -> IntCounter {
        let key = (topic.clone(), event_type.clone());
        if let Some(c) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return c.clone();
        }
        let c = self
            .metrics
            .published_counter(&self.service, topic, event_type);
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, c.clone());
        c
    }

    /// Counts one failed publish to `topic`.
    pub(crate) fn failed(&self, topic: &str) {
        self.metrics.publish_failed(&self.service, topic);
    }
}

/// Label sets of one (service, topic, event type), resolved once.
#[derive(Clone)]
pub(crate) struct RouteMetrics {
    pub(crate) acked: IntCounter,
    pub(crate) dead_lettered_outcome: IntCounter,
    pub(crate) duplicate: IntCounter,
    pub(crate) redelivered: IntCounter,
    pub(crate) retries: IntCounter,
    pub(crate) dead_lettered: IntCounter,
    pub(crate) duration: prometheus::Histogram,
    pub(crate) queue: prometheus::Histogram,
}

impl RouteMetrics {
    pub(crate) fn outcome(&self, o: Outcome) -> &IntCounter {
        match o {
            Outcome::Acked => &self.acked,
            Outcome::DeadLettered => &self.dead_lettered_outcome,
            Outcome::Duplicate => &self.duplicate,
            Outcome::Redelivered => &self.redelivered,
            // Counted apart, in `choreo_deliveries_ignored_total`: a
            // delivery is ignored because no route takes it.
            Outcome::Ignored => unreachable!("an ignored delivery has no route"),
        }
    }
}

/// What one handling measured, recorded once it has settled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation {
    pub(crate) outcome: Outcome,
    /// Publication to the start of handling, in seconds.
    pub(crate) queue: f64,
    /// Start of handling to settlement, in seconds.
    pub(crate) duration: f64,
}

impl RouteMetrics {
    /// Records a handling in the shared metrics at once.
    pub(crate) fn record(&self, o: &Observation) {
        self.outcome(o.outcome).inc();
        self.queue.observe(o.queue);
        self.duration.observe(o.duration);
    }
}

/// One route's observations gathered by a partition worker while it handles
/// deliveries back to back, and added to the shared metrics together
/// ([`flush`](RouteTally::flush)) before the worker waits for anything: the
/// shared metrics are atomics, and the dozen atomic updates a handling would
/// otherwise make cost more than the rest of its bookkeeping. The worker
/// flushes after each run of deliveries (at most 64) and at a handler's first
/// wait, so no observation stays here while the worker is idle or waits.
pub(crate) struct RouteTally {
    metrics: RouteMetrics,
    handled: [u64; 4],
    queue: prometheus::local::LocalHistogram,
    duration: prometheus::local::LocalHistogram,
}

impl RouteTally {
    pub(crate) fn new(metrics: &RouteMetrics) -> Self {
        RouteTally {
            metrics: metrics.clone(),
            handled: [0; 4],
            queue: metrics.queue.local(),
            duration: metrics.duration.local(),
        }
    }

    pub(crate) fn record(&mut self, o: &Observation) {
        let slot = OUTCOMES
            .iter()
            .position(|&outcome| outcome == o.outcome)
            .expect("every outcome is listed");
        self.handled[slot] += 1;
        self.queue.observe(o.queue);
        self.duration.observe(o.duration);
    }

    /// Adds what was gathered to the shared metrics.
    pub(crate) fn flush(&mut self) {
        for (outcome, n) in OUTCOMES.iter().zip(&mut self.handled) {
            if *n > 0 {
                self.metrics.outcome(*outcome).inc_by(std::mem::take(n));
            }
        }
        self.queue.flush();
        self.duration.flush();
    }
}

/// A worker that ends (by a panic, too) leaves nothing unpublished.
impl Drop for RouteTally {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Every outcome, in the order of `RouteTally::handled`.
const OUTCOMES: [Outcome; 4] = [
    Outcome::Acked,
    Outcome::DeadLettered,
    Outcome::Duplicate,
    Outcome::Redelivered,
];
