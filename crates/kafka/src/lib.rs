//! choreo's Kafka backend: the [`Bus`](choreo_core::Bus) contract on Kafka, over rdkafka.
//!
//! ```no_run
//! use choreo_bus::{Context, HandlerError, Publisher, Service};
//! use choreo_kafka::{KafkaBus, KafkaConfig};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { order_id: u64 }
//! choreo_core::event!(OrderPlaced, topic = "orders");
//!
//! async fn audit(order: OrderPlaced, _ctx: Context) -> Result<(), HandlerError> {
//!     println!("order {}", order.order_id);
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Or KafkaBus::from_env(), reading CHOREO_KAFKA_BROKERS and friends.
//! let bus = KafkaBus::new(KafkaConfig::new("localhost:9092"))?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let service = Service::new("audit").on(audit).start(&bus, shutdown.clone()).await?;
//! Publisher::new(&bus, "checkout").start_flow(&OrderPlaced { order_id: 1 }).await?;
//! shutdown.cancel();
//! service.await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Concepts
//!
//! - [`KafkaBus`]: one idempotent producer (`acks=all`) shared by every clone;
//!   [`publish`](choreo_core::Bus::publish) returns once every in-sync replica
//!   has the record. Missing topics are created with the configured partition
//!   count through the admin API; where the broker refuses, its own
//!   auto-creation is tried, and failing that the error says which topic to
//!   create.
//! - [`KafkaSubscription`]: one consumer-group member. Offsets are committed
//!   only for settled deliveries and never past an unsettled earlier offset of
//!   the same partition; a rebalance commits what was settled and gives the
//!   rest up to the new owner; closing commits and leaves the group.
//! - [`record`]: the CloudEvents 1.0 binary-mode mapping between envelopes and
//!   records, pure and fuzzable. Records from producers that know nothing of
//!   choreo are delivered with what can be derived, never dropped.
//! - [`dlq`]: dead letters keep the record as it was received, byte for
//!   byte, with choreo's `choreo-dlq-*` headers after its own; a replay
//!   publishes that original again ([`KafkaBus::publish_record`]).
//! - [`KafkaConfig`]: typed configuration (brokers, TLS, SASL, timeouts,
//!   topic creation) with a raw librdkafka escape hatch that refuses options
//!   contradicting a typed field; also from `CHOREO_KAFKA_*` variables.
//! - [`RecordReader`]: reads topics record by record for tools (the tracer,
//!   `choreo capture`), without joining a group unless asked.
//! - [`LookbackReader`]: a group member for a stateful reader (the tracer's
//!   `--follow --group`): each partition it is given is replayed from a
//!   look-back up to the group's committed offset, so that its state can be
//!   rebuilt, and checkpoints commit a position with the reader's clock.
//! - [`KafkaMetrics`]: consumer lag per group/topic/partition and the
//!   backend's counters, in Prometheus.
//!
//! # Retries and ordering
//!
//! - **Publishing**: the producer is idempotent, so librdkafka's retries of a
//!   failed send neither duplicate nor reorder records within a partition.
//!   `publish` fails only once `delivery_timeout` is spent.
//! - **Handling**: the runtime retries a failing handler in place (its
//!   `Retry` middleware), so with the default partition concurrency of 1 the
//!   partition waits while the event is retried, and later events of that
//!   partition are handled after it: order is kept. After the last attempt
//!   the event is dead-lettered and the partition moves on; a failing event
//!   holds its partition for at most the retry budget, never forever.
//! - **Redelivery** ([`Delivery::redeliver`](choreo_core::Delivery::redeliver),
//!   or a dropped delivery) puts the event back in the partition's local
//!   queue, ahead of the records not yet handed out; records handed out
//!   before the redelivery may be handled before it.
//! - **Commits** never pass an unsettled record, so a crash redelivers from
//!   the oldest unsettled one, including later records that had been settled
//!   (at least once). At most `max_window_per_partition` records are fetched
//!   past an unsettled one; then the partition pauses until it settles.
//!
//! # Testing
//!
//! The crate's tests run the bus conformance suite on librdkafka's mock
//! cluster (inside `cargo test`) and on tansu, a Kafka-compatible broker
//! started as a separate process; see `tests/`.

mod bus;
mod client;
mod config;
mod consumer;
pub mod dlq;
mod error;
pub mod lookback;
mod metrics;
#[cfg(feature = "mock")]
pub mod mock;
pub mod reader;
pub mod record;
mod topics;
mod watch;
mod window;

pub use bus::KafkaBus;
pub use config::{KafkaConfig, SaslConfig, SaslMechanism, Secret, TlsConfig};
pub use consumer::KafkaSubscription;
pub use dlq::RawRecord;
pub use error::{Error, Result};
pub use lookback::{LookbackEvent, LookbackOptions, LookbackReader, Restore};
pub use metrics::{KafkaMetrics, METRICS};
pub use reader::{ReadFrom, ReadRecord, ReaderOptions, RecordReader, Topics};
