//! choreo: choreography for Rust services.
//!
//! Services subscribe to the events they care about, do their part and publish
//! new events; no controller runs the flow. choreo is the crate a service
//! depends on: it stamps every event with its flow (correlation id) and its
//! cause (causation id), so `choreo trace` can rebuild every flow and check it
//! against the declared topology.
//!
//! ```
//! use choreo::{Context, HandlerError, InProcessBus, Publisher, Service};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { order_id: u64 }
//! choreo::event!(OrderPlaced, topic = "orders");
//!
//! #[derive(Serialize, Deserialize)]
//! struct PaymentCaptured { order_id: u64 }
//! choreo::event!(PaymentCaptured, topic = "payments");
//!
//! async fn capture(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
//!     ctx.emit(&PaymentCaptured { order_id: order.order_id })?;
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = InProcessBus::new();
//! let shutdown = choreo::CancellationToken::new();
//! let payment = Service::new("payment").on(capture).start(&bus, shutdown.clone()).await?;
//! Publisher::new(&bus, "checkout").start_flow(&OrderPlaced { order_id: 1 }).await?;
//! # shutdown.cancel();
//! # payment.await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Concepts
//!
//! - [`Event`]: a Rust type with a type name and a topic ([`event!`]).
//! - [`Service`]: a name and one handler per event type, run against a [`Bus`]
//!   as a consumer group. Handlers are async functions of the event and a
//!   [`Context`]; what they emit through the context is stamped with the flow's
//!   ids and published only when the attempt succeeds.
//! - [`Publisher`]: starts flows from outside handlers.
//! - Every delivery ends acked, dead-lettered (with the reason), duplicate or
//!   redelivered; [`Service`] documents the steps and their order.
//!
//! # Backends
//!
//! - [`InProcessBus`], the default: partitions, consumer groups, redelivery and
//!   bounded retention inside one process, no broker needed.
//! - Kafka: the `choreo-kafka` crate (the `kafka` feature re-exports it).
//!
//! # Middleware
//!
//! [`Retry`] with exponential backoff and jitter, dead-lettering, [`Idempotency`],
//! a per-attempt timeout, and any tower layer ([`Service::layer`]).
//!
//! # Testing
//!
//! Run services against an [`InProcessBus`] in tests: same semantics as Kafka,
//! no broker. [`InProcessBus::retained`] shows what was published.
//!
//! # Feature flags
//!
//! - `otel`: OpenTelemetry PRODUCER and CONSUMER spans, W3C trace context in
//!   every envelope.
//! - `kafka`: the Kafka backend, as `choreo::kafka` (`KafkaBus`, its config,
//!   the record reader).
//! - `avro`: Avro payloads with a schema registry, as `choreo::avro`
//!   (`AvroCodec`, `MemoryRegistry`, `HttpRegistry`).

pub use choreo_bus::{
    BoxError, Context, Handled, Handler, HandlerError, Idempotency, IdempotencyStore, InProcessBus,
    InProcessConfig, Invocation, MemoryStore, Metrics, MetricsServer, Publisher, Render, Retention,
    Retry, RetryableError, Service, WhenFull, render,
};
pub use choreo_core::event;
pub use choreo_core::{
    Bus, Codec, Codecs, ContentType, Delivery, Envelope, Error, Event, EventId, Headers, JsonCodec,
    Name, Outcome, Receipt, StartFrom, SubscribeOptions, Subscription, Timestamp,
};
pub use tokio_util::sync::CancellationToken;

/// The Kafka backend (the `kafka` feature).
#[cfg(feature = "kafka")]
pub use choreo_kafka as kafka;

/// Avro payloads with a schema registry (the `avro` feature).
#[cfg(feature = "avro")]
pub use choreo_avro as avro;

/// The SDK's error types.
pub mod errors {
    pub use choreo_bus::Error as RuntimeError;
    pub use choreo_core::Error as BusError;
}
