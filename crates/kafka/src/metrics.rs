//! Prometheus metrics of the Kafka backend (`choreo_kafka_*`), listed on [`KafkaMetrics`].

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// Every metric of the Kafka backend: (name, type, labels, meaning). The
/// metric table of docs/metrics.md lists them all (a test checks it).
pub const METRICS: &[(&str, &str, &str, &str)] = &[
    (
        "choreo_kafka_consumer_lag",
        "gauge",
        "group, topic, partition",
        "records after the group's committed offset (the log end minus committed, as librdkafka counts it; before its first commit, from the first record not settled), refreshed every lag_interval",
    ),
    (
        "choreo_kafka_malformed_records_total",
        "counter",
        "topic",
        "records whose CloudEvents headers could not be read (dead-lettered by the runtime)",
    ),
    (
        "choreo_kafka_commit_failures_total",
        "counter",
        "group",
        "offset commits the broker refused (retried with the next commit)",
    ),
    (
        "choreo_kafka_rebalances_total",
        "counter",
        "group, kind",
        "partition assignments (assign) and revocations (revoke, lost) of this process's members",
    ),
    (
        "choreo_kafka_stale_settlements_total",
        "counter",
        "group",
        "settlements of deliveries whose partition had been revoked (the new owner gets them again)",
    ),
    (
        "choreo_avro_decode_failures_total",
        "counter",
        "topic, reason",
        "Avro payloads that did not decode: wire_format, unknown_schema, datum (choreo-avro)",
    ),
];

/// The Kafka backend's metric families. Cheap to clone; register them with
/// [`KafkaBus::register_metrics`](crate::KafkaBus::register_metrics).
///
/// | metric | type | labels | meaning |
/// |---|---|---|---|
/// | `choreo_kafka_consumer_lag` | gauge | `group`, `topic`, `partition` | records after the group's committed offset (the log end minus committed, as librdkafka counts it; before its first commit, from the first record not settled), refreshed every `lag_interval` |
/// | `choreo_kafka_malformed_records_total` | counter | `topic` | records whose CloudEvents headers could not be read; delivered with `choreo-malformed` for the runtime to dead-letter |
/// | `choreo_kafka_commit_failures_total` | counter | `group` | offset commits the broker refused (retried with the next commit) |
/// | `choreo_kafka_rebalances_total` | counter | `group`, `kind` | partition assignments (`assign`) and revocations (`revoke`, `lost`) of this process's members |
/// | `choreo_kafka_stale_settlements_total` | counter | `group` | settlements of deliveries whose partition had been revoked: the new owner gets them again |
#[derive(Clone, Debug)]
pub struct KafkaMetrics {
    pub(crate) lag: IntGaugeVec,
    pub(crate) malformed: IntCounterVec,
    pub(crate) commit_failures: IntCounterVec,
    pub(crate) rebalances: IntCounterVec,
    pub(crate) stale_settlements: IntCounterVec,
}

impl Default for KafkaMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl KafkaMetrics {
    /// Unregistered metric families; see [`KafkaMetrics::register`].
    pub fn new() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
        };
        KafkaMetrics {
            lag: IntGaugeVec::new(
                Opts::new(
                    "choreo_kafka_consumer_lag",
                    "Records in a partition after the consumer group's committed offset.",
                ),
                &["group", "topic", "partition"],
            )
            .expect("valid metric definition"),
            malformed: counter(
                "choreo_kafka_malformed_records_total",
                "Records whose CloudEvents headers could not be read (delivered marked malformed, for the runtime to dead-letter).",
                &["topic"],
            ),
            commit_failures: counter(
                "choreo_kafka_commit_failures_total",
                "Offset commits that failed (retried with the next commit).",
                &["group"],
            ),
            rebalances: counter(
                "choreo_kafka_rebalances_total",
                "Partition assignments and revocations of this process's consumers.",
                &["group", "kind"],
            ),
            stale_settlements: counter(
                "choreo_kafka_stale_settlements_total",
                "Settlements of deliveries whose partition had been revoked (delivered again to the new owner).",
                &["group"],
            ),
        }
    }

    /// Registers every family with `registry`.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.lag.clone()))?;
        registry.register(Box::new(self.malformed.clone()))?;
        registry.register(Box::new(self.commit_failures.clone()))?;
        registry.register(Box::new(self.rebalances.clone()))?;
        registry.register(Box::new(self.stale_settlements.clone()))?;
        Ok(())
    }

    /// The lag gauge of one partition, as last refreshed; `None` before the
    /// first refresh or after the partition was revoked.
    pub fn lag(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        use prometheus::core::Collector;
        let partition = partition.to_string();
        self.lag.collect().iter().find_map(|family| {
            family.get_metric().iter().find_map(|m| {
                let value = |n: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == n)
                        .map(|l| l.value())
                };
                (value("group") == Some(group)
                    && value("topic") == Some(topic)
                    && value("partition") == Some(partition.as_str()))
                .then(|| m.get_gauge().get_value() as i64)
            })
        })
    }

    /// Malformed records counted on `topic`.
    pub fn malformed(&self, topic: &str) -> u64 {
        self.malformed.with_label_values(&[topic]).get()
    }

    /// Settlements of revoked deliveries counted for `group`.
    pub fn stale_settlements(&self, group: &str) -> u64 {
        self.stale_settlements.with_label_values(&[group]).get()
    }

    /// Commit failures counted for `group`.
    pub fn commit_failures(&self, group: &str) -> u64 {
        self.commit_failures.with_label_values(&[group]).get()
    }
}
