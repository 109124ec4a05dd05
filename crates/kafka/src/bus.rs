//! `KafkaBus`: the [`Bus`] contract on Kafka — publishing and subscribing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use choreo_core::{Bus, DeadLetter, Delivery, Envelope, EventId, Name, SubscribeOptions};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureRecord, Producer};

use crate::client::Inner;
use crate::config::KafkaConfig;
use crate::consumer::KafkaSubscription;
use crate::metrics::KafkaMetrics;
use crate::record::each_record_header;
use crate::watch::Watch;
use crate::{Error, Result};

/// The Kafka backend: a cheap-to-clone handle on one idempotent producer,
/// shared by every clone, that also starts consumers ([`Bus::subscribe`]).
///
/// See the [crate docs](crate) for the record format, the consumer's
/// guarantees and how retries interact with ordering.
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
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
        Ok(KafkaBus {
            inner: Arc::new(Inner::connect(config, metrics)?),
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

impl Bus for KafkaBus {
    type Subscription = KafkaSubscription;

    /// Publishes `envelope` as a CloudEvents binary-mode record (see
    /// [`record`](crate::record)) and waits for the acknowledgement of every
    /// in-sync replica. The record is handed to the producer on the first
    /// poll, so publishes awaited together are sent together.
    ///
    /// The future is kept small (432 bytes; it was 1 232): callers box
    /// it or hold it in theirs, and a box over 1 KiB takes glibc's slow path
    /// on every publish. The rare paths (a topic's first publish, a full
    /// producer queue) are boxed apart, and the envelope is dropped once the
    /// record is handed over.
    fn publish(
        &self,
        envelope: Envelope,
    ) -> impl std::future::Future<Output = choreo_core::Result<()>> + Send {
        let inner = self.inner.clone();
        async move {
            let started = Instant::now();
            let partitions = match inner.known_partitions(&envelope.topic) {
                Some(n) => n,
                None => Box::pin(inner.ensure_topic(&envelope.topic, None)).await?,
            };
            let delivery = loop {
                match send(&inner, &envelope, partitions, started) {
                    Ok(delivery) => break delivery,
                    // Bounded queue: wait for room rather than grow memory.
                    Err(Unsent::QueueFull) => {
                        Box::pin(tokio::time::sleep(Duration::from_millis(5))).await;
                    }
                    Err(Unsent::Failed(e)) => return Err(e),
                }
            };
            let sent = Sent::of(envelope);
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((source, _))) => {
                    if matches!(
                        source.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::UnknownTopicOrPartition)
                    ) {
                        // The topic went away: look it up again next time.
                        inner.topics.write().remove(sent.topic.as_str());
                    }
                    Err(publish_error(&inner.watch, started, &sent, source))
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

/// Why [`send`] did not hand a record to the producer.
enum Unsent {
    /// The producer's queue is full: try again shortly.
    QueueFull,
    /// It never will.
    Failed(choreo_core::Error),
}

/// Hands the record of `env` to the producer: its headers are copied
/// straight into the producer's, the ids' text written on the stack.
fn send(
    inner: &Inner,
    env: &Envelope,
    partitions: u32,
    started: Instant,
) -> std::result::Result<DeliveryFuture, Unsent> {
    // `insert` takes the headers and gives them back.
    let mut headers = Some(OwnedHeaders::new_with_capacity(10 + env.headers.len()));
    each_record_header(env, |name, value| {
        headers = headers.take().map(|h| {
            h.insert(Header {
                key: name,
                value: Some(value.bytes()),
            })
        });
    })
    .map_err(Unsent::Failed)?;
    let headers = headers.unwrap_or_default();
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
    match inner.producer.send_result(record) {
        Ok(delivery) => Ok(delivery),
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
            Err(Unsent::QueueFull)
        }
        // The producer's own size check: the same record would fail again.
        // (The broker's size refusal, in the delivery report, fails a whole
        // batch: it stays a backend error.)
        Err((source, _))
            if source.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) =>
        {
            Err(Unsent::Failed(too_large(env)))
        }
        Err((source, _)) => Err(Unsent::Failed(publish_error(
            &inner.watch,
            started,
            &Sent::of_ref(env),
            source,
        ))),
    }
}

/// What a publish's error names of its envelope, kept while the
/// acknowledgement is awaited (the envelope itself is dropped by then).
struct Sent {
    id: EventId,
    event_type: Name,
    topic: Name,
}

impl Sent {
    fn of(env: Envelope) -> Sent {
        Sent {
            id: env.id,
            event_type: env.event_type,
            topic: env.topic,
        }
    }

    fn of_ref(env: &Envelope) -> Sent {
        Sent {
            id: env.id.clone(),
            event_type: env.event_type.clone(),
            topic: env.topic.clone(),
        }
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
    sent: &Sent,
    source: KafkaError,
) -> choreo_core::Error {
    let context = format!(
        "publishing '{}' (id {}) to kafka topic '{}'",
        sent.event_type, sent.id, sent.topic
    );
    match watch.cause(started) {
        Some(cause) => choreo_core::Error::backend(context, cause),
        None => choreo_core::Error::backend(context, source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers box a publish or hold it in their own futures: it must stay
    /// well under glibc's 1 KiB threshold, past which every box takes the
    /// allocator's slow path (it was 1 232 bytes; 432 when this was
    /// written).
    #[test]
    fn a_publish_future_stays_under_half_a_kibibyte() {
        let bus = KafkaBus::new(KafkaConfig::new("127.0.0.1:9")).expect("bus");
        let publish = bus.publish(Envelope::new("Sized", "sized", bytes::Bytes::new()));
        let size = std::mem::size_of_val(&publish);
        assert!(
            size <= 512,
            "a publish future is {size} bytes: box the rare paths' futures (see `publish`)"
        );
    }
}
