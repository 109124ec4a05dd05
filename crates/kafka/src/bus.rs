//! `KafkaBus`: the [`Bus`] contract on Kafka — publishing, topics, subscribing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use choreo_core::{Bus, DeadLetter, Delivery, Envelope, SubscribeOptions};
use parking_lot::RwLock;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::OnceCell;

use crate::config::{KafkaConfig, Role};
use crate::consumer::KafkaSubscription;
use crate::metrics::KafkaMetrics;
use crate::record::record_headers;
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

/// The Kafka backend: a cheap-to-clone handle on one idempotent producer,
/// shared by every clone, that also starts consumers ([`Bus::subscribe`]).
///
/// See the [crate docs](crate) for the record format, the consumer's
/// guarantees and how retries interact with ordering.
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: KafkaConfig,
    /// Connection failures and secrets, shared by every client of the bus.
    pub(crate) watch: Arc<Watch>,
    producer: FutureProducer<LogContext>,
    admin: OnceCell<AdminClient<LogContext>>,
    /// Partition counts of topics known to exist. parking_lot RwLock: never
    /// held across an await.
    topics: RwLock<HashMap<String, u32>>,
    /// One topic creation at a time, so concurrent publishes to a new topic
    /// create it once.
    creating: tokio::sync::Mutex<()>,
    pub(crate) metrics: KafkaMetrics,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// Connects a producer with `config` (after [`KafkaConfig::validate`]).
    /// Nothing is sent until the first publish or subscription.
    pub fn new(config: KafkaConfig) -> Result<KafkaBus> {
        KafkaBus::with_metrics(config, KafkaMetrics::new())
    }

    /// Like [`KafkaBus::new`], recording into existing metric families (so
    /// several buses in one process can share one registration).
    pub fn with_metrics(config: KafkaConfig, metrics: KafkaMetrics) -> Result<KafkaBus> {
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
        Ok(KafkaBus {
            inner: Arc::new(Inner {
                config,
                watch,
                producer,
                admin: OnceCell::new(),
                topics: RwLock::new(HashMap::new()),
                creating: tokio::sync::Mutex::new(()),
                metrics,
            }),
        })
    }

    /// A bus configured from `CHOREO_KAFKA_*` environment variables
    /// ([`KafkaConfig::from_env`]).
    pub fn from_env() -> Result<KafkaBus> {
        KafkaBus::new(KafkaConfig::from_env()?)
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// The backend's metric families (shared by every clone).
    pub fn metrics(&self) -> &KafkaMetrics {
        &self.inner.metrics
    }

    /// Registers the backend's metrics (`choreo_kafka_*`) with `registry`.
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        self.inner.metrics.register(registry)
    }

    /// Makes sure `topic` exists, creating it with `partitions` partitions if
    /// it does not (whatever `create_topics` says). Returns its partition count.
    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<u32> {
        self.inner.ensure_topic(topic, Some(partitions)).await
    }

    /// Makes sure every topic exists, creating missing ones as configured
    /// (`create_topics`, `partitions`, `topic_partitions`).
    pub async fn ensure_topics<I, T>(&self, topics: I) -> Result<()>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        for t in topics {
            self.inner.ensure_topic(t.as_ref(), None).await?;
        }
        Ok(())
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Waits until every publish so far is acknowledged or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let inner = self.inner.clone();
        let started = Instant::now();
        let flushed = tokio::task::spawn_blocking(move || inner.producer.flush(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled));
        flushed.map_err(|source| {
            self.inner.watch.explain(
                started,
                Error::Kafka {
                    context: "flushing the producer".into(),
                    source,
                },
            )
        })
    }
}

impl Inner {
    pub(crate) fn producer(&self) -> &FutureProducer<LogContext> {
        &self.producer
    }

    fn known_partitions(&self, topic: &str) -> Option<u32> {
        self.topics.read().get(topic).copied()
    }

    /// The partition count of `topic`, creating it when missing. `partitions`
    /// forces creation with that count.
    pub(crate) async fn ensure_topic(&self, topic: &str, partitions: Option<u32>) -> Result<u32> {
        if let Some(n) = self.known_partitions(topic) {
            return Ok(n);
        }
        let _one_at_a_time = self.creating.lock().await;
        if let Some(n) = self.known_partitions(topic) {
            return Ok(n);
        }
        let n = match self.lookup(topic, false).await? {
            Some(n) => n,
            None if partitions.is_none() && !self.config.create_topics => {
                return Err(Error::Topic {
                    topic: topic.to_owned(),
                    reason: format!(
                        "does not exist and `create_topics` is off: create it (with {} partitions) or switch `create_topics` on",
                        self.config.partitions_of(topic)
                    ),
                });
            }
            None => {
                let want = partitions.unwrap_or_else(|| self.config.partitions_of(topic));
                self.create(topic, want).await?
            }
        };
        self.topics.write().insert(topic.to_owned(), n);
        Ok(n)
    }

    /// The partition count of `topic` from the cluster's metadata; `None` when
    /// it does not exist. With `auto_create`, asks the broker to create it
    /// (brokers that allow auto-creation do, with their default partition count).
    pub(crate) async fn lookup(&self, topic: &str, auto_create: bool) -> Result<Option<u32>> {
        let config = self.config.clone();
        let watch = self.watch.clone();
        let topic_owned = topic.to_owned();
        let timeout = self.config.admin_timeout;
        let started = Instant::now();
        let run = move || -> Result<Option<u32>> {
            let mut client_config = config.client_config(Role::Admin, None)?;
            if auto_create {
                client_config.set("allow.auto.create.topics", "true");
            }
            // A short-lived client: its metadata requests carry the
            // auto-creation flag as configured, the producer's never does.
            let context = LogContext {
                watch: watch.clone(),
            };
            let client: BaseConsumer<LogContext> =
                BaseConsumer::from_config_and_context(&client_config, context).map_err(
                    |source| Error::Client {
                        role: "metadata client",
                        brokers: config.brokers.clone(),
                        source: watch.redact(source),
                    },
                )?;
            let md = client
                .fetch_metadata(Some(&topic_owned), timeout)
                .map_err(|source| {
                    watch.explain(
                        started,
                        Error::Kafka {
                            context: format!(
                                "looking up topic '{topic_owned}' on brokers '{}'",
                                config.brokers
                            ),
                            source,
                        },
                    )
                })?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == topic_owned)
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().len() as u32))
        };
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|_| Error::Topic {
                topic: topic.to_owned(),
                reason: "the metadata lookup was cancelled".into(),
            })?
    }

    async fn admin(&self) -> Result<&AdminClient<LogContext>> {
        self.admin
            .get_or_try_init(|| async {
                let c = self.config.client_config(Role::Admin, None)?;
                let context = LogContext {
                    watch: self.watch.clone(),
                };
                AdminClient::from_config_and_context(&c, context).map_err(|source| Error::Client {
                    role: "admin client",
                    brokers: self.config.brokers.clone(),
                    source: self.watch.redact(source),
                })
            })
            .await
    }

    /// Creates `topic` with the admin API, falling back to the broker's
    /// auto-creation when the broker does not support CreateTopics.
    async fn create(&self, topic: &str, partitions: u32) -> Result<u32> {
        let admin = self.admin().await?;
        let replication =
            TopicReplication::Fixed(self.config.replication_factor.map_or(-1, i32::from));
        let new = NewTopic::new(topic, partitions as i32, replication);
        let options = AdminOptions::new()
            .request_timeout(Some(self.config.admin_timeout))
            .operation_timeout(Some(self.config.admin_timeout));
        let refused = match admin.create_topics([&new], &options).await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) | None => None,
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => None,
                Some(Err((_, code))) => Some(code.to_string()),
            },
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = refused {
            tracing::debug!(topic, %reason, "CreateTopics failed; trying the broker's auto-creation");
            if let Some(n) = self.lookup(topic, true).await? {
                if n != partitions {
                    tracing::warn!(
                        topic,
                        partitions = n,
                        wanted = partitions,
                        "the broker auto-created the topic with its own partition count"
                    );
                }
                return Ok(n);
            }
            return Err(Error::Topic {
                topic: topic.to_owned(),
                reason: format!(
                    "does not exist and the broker refused to create it ({reason}) and does not auto-create topics: create it with {partitions} partitions"
                ),
            });
        }
        // Wait until the new topic shows in the metadata.
        let start = Instant::now();
        loop {
            if let Some(n) = self.lookup(topic, false).await? {
                return Ok(n);
            }
            if start.elapsed() > self.config.admin_timeout {
                return Err(Error::Topic {
                    topic: topic.to_owned(),
                    reason: format!(
                        "was created but did not appear in the metadata within {:?}",
                        self.config.admin_timeout
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Bus for KafkaBus {
    type Subscription = KafkaSubscription;

    /// Publishes `envelope` as a CloudEvents binary-mode record (see
    /// [`record`](crate::record)) and waits for the acknowledgement of every
    /// in-sync replica. The record is handed to the producer on the first
    /// poll, so publishes awaited together are sent together.
    fn publish(
        &self,
        envelope: Envelope,
    ) -> impl std::future::Future<Output = choreo_core::Result<()>> + Send {
        let inner = self.inner.clone();
        async move {
            let started = Instant::now();
            let env = envelope;
            let partitions = match inner.known_partitions(&env.topic) {
                Some(n) => n,
                None => inner.ensure_topic(&env.topic, None).await?,
            };
            let mut headers = OwnedHeaders::new_with_capacity(10 + env.headers.len());
            for (name, value) in record_headers(&env)? {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(&value[..]),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&env.topic)
                .payload(&env.data[..])
                .headers(headers)
                .timestamp(env.time.as_millis());
            match &env.key {
                Some(k) => record = record.key(&k[..]),
                // No key: the correlation id chooses the partition, as on the
                // in-process bus, and the record stays keyless.
                None => record = record.partition(env.partition_key().partition(partitions) as i32),
            }
            let delivery = loop {
                match inner.producer.send_result(record) {
                    Ok(d) => break d,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        // Bounded queue: wait for room rather than grow memory.
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // The producer's own size check: the same record would
                    // fail again. (The broker's size refusal, in the delivery
                    // report, fails a whole batch: it stays a backend error.)
                    Err((source, _))
                        if source.rdkafka_error_code()
                            == Some(RDKafkaErrorCode::MessageSizeTooLarge) =>
                    {
                        return Err(too_large(&env));
                    }
                    Err((source, _)) => {
                        return Err(publish_error(&inner.watch, started, &env, source));
                    }
                }
            };
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((source, _))) => {
                    if matches!(
                        source.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::UnknownTopicOrPartition)
                    ) {
                        // The topic went away: look it up again next time.
                        inner.topics.write().remove(env.topic.as_str());
                    }
                    Err(publish_error(&inner.watch, started, &env, source))
                }
                Err(_) => Err(choreo_core::Error::Closed),
            }
        }
    }

    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> impl std::future::Future<Output = choreo_core::Result<KafkaSubscription>> + Send {
        let bus = self.clone();
        async move {
            bus.ensure_topics(&options.topics).await?;
            Ok(KafkaSubscription::start(bus.inner.clone(), options).await?)
        }
    }

    fn backend_name(&self) -> &'static str {
        "kafka"
    }

    /// Dead-letters a delivery with the record as it was received — key,
    /// value, timestamp and headers byte for byte — plus the `choreo-dlq-*`
    /// headers (see [`dlq`](crate::dlq)), then acks it. If the copy cannot
    /// be published the delivery is given back and the error returned.
    fn dead_letter(
        &self,
        delivery: Delivery,
        info: DeadLetter,
    ) -> impl std::future::Future<Output = choreo_core::Result<()>> + Send {
        let bus = self.clone();
        async move { crate::dlq::dead_letter(&bus, delivery, info).await }
    }
}

/// A record the producer finds over its `message.max.bytes`:
/// [`Refused`](choreo_core::Error::Refused).
fn too_large(env: &Envelope) -> choreo_core::Error {
    choreo_core::Error::Refused {
        event_type: env.event_type.to_string(),
        topic: env.topic.to_string(),
        reason: format!(
            "the record (a payload of {} bytes, with its headers) is over the producer's \
             message.max.bytes: raise it (and the broker's and the topic's limits), or lower \
             Limits::max_payload_bytes below it",
            env.data.len()
        ),
    }
}

/// A failed publish; when a SASL or TLS failure was seen meanwhile, that is
/// the error's source.
fn publish_error(
    watch: &Watch,
    started: Instant,
    env: &Envelope,
    source: KafkaError,
) -> choreo_core::Error {
    let context = format!(
        "publishing '{}' (id {}) to kafka topic '{}'",
        env.event_type, env.id, env.topic
    );
    match watch.cause(started) {
        Some(cause) => choreo_core::Error::backend(context, cause),
        None => choreo_core::Error::backend(context, source),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{SaslConfig, SaslMechanism, Secret};

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
