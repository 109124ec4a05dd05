//! The librdkafka clients a bus shares, and their logging: librdkafka's log
//! lines and client errors go to `tracing` without the configuration's
//! secrets, and connection failures are told to the [`Watch`].

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka::config::{FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use tokio::sync::OnceCell;

use crate::config::{KafkaConfig, Role};
use crate::metrics::KafkaMetrics;
use crate::watch::Watch;
use crate::{Error, Result};

/// Sends librdkafka's logs and client errors to `tracing`, without the
/// configuration's secrets, and tells the [`Watch`] about connection failures.
#[derive(Clone)]
pub(crate) struct LogContext {
    pub(crate) watch: Arc<Watch>,
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(&self.watch, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(&self.watch, None, error, reason);
    }
}

impl ConsumerContext for LogContext {}

/// A librdkafka error event: observed, then logged without secrets.
pub(crate) fn client_error(watch: &Watch, group: Option<&str>, error: KafkaError, reason: &str) {
    watch.observe_error(&error, reason);
    let reason = watch.scrub(reason);
    let error = watch.redact(error);
    match group {
        Some(group) => {
            tracing::warn!(target: "choreo_kafka::librdkafka", group, %error, %reason, "kafka client error")
        }
        None => {
            tracing::warn!(target: "choreo_kafka::librdkafka", %error, %reason, "kafka client error")
        }
    }
}

/// A librdkafka log line: observed, then logged without secrets.
pub(crate) fn log_librdkafka(watch: &Watch, level: RDKafkaLogLevel, fac: &str, message: &str) {
    watch.observe_log(level, fac, message);
    let message = watch.scrub(message);
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "choreo_kafka::librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "choreo_kafka::librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "choreo_kafka::librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "choreo_kafka::librdkafka", fac, "{message}")
        }
    }
}

/// What every clone of a bus shares: its configuration, one idempotent
/// producer, the admin client once needed, and the topics known to exist
/// (`topics.rs` keeps those).
pub(crate) struct Inner {
    pub(crate) config: KafkaConfig,
    /// Connection failures and secrets, shared by every client of the bus.
    pub(crate) watch: Arc<Watch>,
    pub(crate) producer: FutureProducer<LogContext>,
    pub(crate) admin: OnceCell<AdminClient<LogContext>>,
    /// Partition counts of topics known to exist. parking_lot RwLock: never
    /// held across an await.
    pub(crate) topics: RwLock<HashMap<String, u32>>,
    /// One topic creation at a time, so concurrent publishes to a new topic
    /// create it once.
    pub(crate) creating: tokio::sync::Mutex<()>,
    pub(crate) metrics: KafkaMetrics,
}

impl Inner {
    pub(crate) fn producer(&self) -> &FutureProducer<LogContext> {
        &self.producer
    }

    /// Validates `config` and connects the producer (nothing is sent yet).
    pub(crate) fn connect(config: KafkaConfig, metrics: KafkaMetrics) -> Result<Inner> {
        config.validate()?;
        let watch = Arc::new(Watch::new(&config));
        let client_config = config.client_config(Role::Producer, None)?;
        let producer = FutureProducer::from_config_and_context(
            &client_config,
            LogContext {
                watch: watch.clone(),
            },
        )
        .map_err(|source| Error::Client {
            role: "producer",
            brokers: config.brokers.clone(),
            source: watch.redact(source),
        })?;
        Ok(Inner {
            config,
            watch,
            producer,
            admin: OnceCell::new(),
            topics: RwLock::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{KafkaConfig, SaslConfig, SaslMechanism, Secret};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn forwarded_librdkafka_lines_and_errors_lose_the_secrets() {
        let config = KafkaConfig::new("b:9092").sasl(SaslConfig {
            mechanism: SaslMechanism::Plain,
            username: "svc".into(),
            password: Secret::new("hunter2-xyz"),
        });
        let watch = Watch::new(&config);
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            log_librdkafka(
                &watch,
                RDKafkaLogLevel::Debug,
                "SASL",
                "sending PLAIN frame for svc/hunter2-xyz",
            );
            client_error(
                &watch,
                Some("billing"),
                KafkaError::ClientCreation("bad password hunter2-xyz".into()),
                "reason: hunter2-xyz",
            );
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("hunter2-xyz"), "{text}");
        assert_eq!(text.matches("<redacted>").count(), 3, "{text}");
        assert!(text.contains("sending PLAIN frame for svc/"), "{text}");
    }
}
