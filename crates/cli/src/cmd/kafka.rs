//! What the Kafka-facing commands share: the connection flags and reading records.

#[cfg(feature = "kafka")]
use choreo_kafka::{KafkaConfig, ReadRecord};
#[cfg(feature = "kafka")]
use choreo_trace::Record;

/// How to reach Kafka: `--brokers`, and everything else from the
/// `CHOREO_KAFKA_*` environment variables (TLS, SASL, timeouts; see docs/kafka.md).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct KafkaArgs {
    /// Kafka bootstrap servers, host:port[,host:port…] (default: $CHOREO_KAFKA_BROKERS).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) brokers: Option<String>,
}

impl KafkaArgs {
    /// Whether Kafka was asked for, by flag or environment.
    pub(crate) fn wanted(&self) -> bool {
        self.brokers.is_some() || std::env::var_os("CHOREO_KAFKA_BROKERS").is_some()
    }

    /// The configuration: the `CHOREO_KAFKA_*` variables, with `--brokers` over them.
    #[cfg(feature = "kafka")]
    pub(crate) fn config(&self) -> anyhow::Result<KafkaConfig> {
        if !self.wanted() {
            anyhow::bail!("no Kafka brokers: pass --brokers host:port or set CHOREO_KAFKA_BROKERS");
        }
        Ok(KafkaConfig::from_env_with_brokers(self.brokers.as_deref())?)
    }
}

/// A record read from Kafka as the tracer's record: with its position, and
/// unattributed when the producer knew nothing of choreo (no `ce_source`).
#[cfg(feature = "kafka")]
pub(crate) fn trace_record(r: ReadRecord) -> Record {
    let (partition, offset) = (r.partition.max(0) as u32, r.offset.max(0) as u64);
    let record = if r.envelope.source.is_empty() {
        Record::unattributed(r.envelope)
    } else {
        Record::new(r.envelope)
    };
    record.at(partition, offset)
}
