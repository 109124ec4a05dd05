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
//! # async fn main() -> choreo::Result<()> {
//! let bus = InProcessBus::new();
//! let shutdown = choreo::CancellationToken::new();
//! let payment = Service::new("payment").on(capture).start(&bus, shutdown.clone()).await?;
//! let flow = Publisher::new(&bus, "checkout").start_flow(&OrderPlaced { order_id: 1 }).await?;
//! bus.settled().await; // every event published so far is handled
//! assert_eq!(bus.retained("payments")[0].correlation_id, flow);
//! shutdown.cancel();
//! payment.await?;
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
//!   ids and published only when the attempt succeeds. Every delivery ends in
//!   one outcome, decided in one place: the [`service`] module lists the steps.
//! - [`Publisher`]: starts flows from outside handlers.
//! - [`Envelope`] and [`EventId`]: the metadata every event travels with.
//! - [`Error`] and [`Result`]: what starting, running and publishing return;
//!   the bus's own errors ([`bus::Error`]) convert into it with `?`.
//!
//! # The modules
//!
//! | module | what is in it |
//! |---|---|
//! | [`service`] | what happens to a delivery, configuring a service, its handle |
//! | [`middleware`] | retry, idempotency, tower layers, and what flows through them |
//! | [`in_process`] | the in-process bus's configuration, retention and statistics |
//! | [`metrics`] | the SDK's Prometheus metrics and the HTTP endpoint that serves them |
//! | [`codec`] | payload codecs: JSON built in, Avro with the `avro` feature |
//! | [`bus`] | the bus contract: subscriptions, deliveries, receipts, its error |
//! | [`dlq`] | reading and replaying dead letters |
//! | `topology`, `trace`, `testing` | topology files, recording and tracing a run, services checked against their topology (features of the same names) |
//!
//! # Backends
//!
//! - [`InProcessBus`], the default: partitions, consumer groups, redelivery and
//!   bounded retention inside one process, no broker needed ([`in_process`]).
//! - Kafka: the `kafka` feature, as `choreo::kafka`.
//!
//! # Testing
//!
//! Run services against an [`InProcessBus`] in tests: same semantics as Kafka,
//! no broker.
//!
//! - [`InProcessBus::settled`] waits until every event published so far has
//!   been handled (or dead-lettered) by every service still running — through
//!   chains of emitted events, retries and their backoff — so a test
//!   publishes, waits for `settled`, then asserts; no sleeps.
//!   [`InProcessBus::settled_within`] bounds the wait and names the service
//!   and partition holding it up; topics no running service reads (receipts,
//!   dead letters) hold nothing back, and the services' receipts are
//!   published (and read by whoever reads them) before it returns.
//! - [`InProcessBus::retained`] shows what was published to a topic.
//! - `choreo::testing::conforms` (the `testing` feature) fails a test when
//!   the services' handlers and topics differ from the topology file.
//! - `choreo::trace::record` (the `trace` feature) records a run for
//!   `choreo trace`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> choreo::Result<()> {
//! # use choreo::{Context, HandlerError, InProcessBus, Publisher, Service};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct OrderPlaced { order_id: u64 }
//! # choreo::event!(OrderPlaced, topic = "orders");
//! use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
//! use std::time::Duration;
//!
//! let bus = InProcessBus::new();
//! let shutdown = choreo::CancellationToken::new();
//! let charged = Arc::new(AtomicU64::new(0));
//! let counter = charged.clone();
//! let payment = Service::new("payment")
//!     .on(move |o: OrderPlaced, _: Context| {
//!         counter.fetch_add(o.order_id, Ordering::SeqCst);
//!         async { Ok::<_, HandlerError>(()) }
//!     })
//!     .start(&bus, shutdown.clone())
//!     .await?;
//! let checkout = Publisher::new(&bus, "checkout");
//! for order_id in 1..=10 {
//!     checkout.start_flow(&OrderPlaced { order_id }).await?;
//! }
//! bus.settled_within(Duration::from_secs(10)).await?;
//! assert_eq!(charged.load(Ordering::SeqCst), 55);
//! shutdown.cancel();
//! payment.await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! - `otel`: OpenTelemetry PRODUCER and CONSUMER spans, W3C trace context in
//!   every envelope.
//! - `kafka`: the Kafka backend, as `choreo::kafka` (`KafkaBus`, its config,
//!   the record reader).
//! - `avro`: Avro payloads with a schema registry, as `choreo::avro`
//!   (`AvroCodec`, `MemoryRegistry`, `HttpRegistry`).
//! - `postgres`: a transactional outbox and inbox on PostgreSQL, as
//!   `choreo::postgres` (`PgStore`, `Transaction`, `Relay`; see
//!   docs/postgres.md).
//! - `topology`: topology files, as `choreo::topology` (`Topology::from_path`,
//!   `verify`: what `choreo check` does).
//! - `trace`: recording a run and the tracer, as `choreo::trace`
//!   (`record` writes a capture file for `choreo trace`; `tap`, `capture::Writer`,
//!   `Tracer`). Turns on `topology`.
//! - `testing`: `choreo::testing::conforms`, the services checked against
//!   their topology in a test. Turns on `topology`.

pub use choreo_bus::{Context, Error, HandlerError, InProcessBus, Publisher, Result, Service};
pub use choreo_core::{Bus, Envelope, Event, EventId, event};
pub use tokio_util::sync::CancellationToken;

pub mod service {
    #![doc = include_str!("docs/service.md")]

    pub use choreo_bus::{Handler, ServiceHandle};
    pub use choreo_core::Limits;
}

pub mod middleware {
    #![doc = include_str!("docs/middleware.md")]

    pub use choreo_bus::{
        BoxError, BoxFuture, EmissionSink, Handled, Idempotency, IdempotencyStore, Invocation,
        MemoryStore, Retry, RetryPredicate, RetryableError, StackService,
    };
}

pub mod in_process {
    #![doc = include_str!("docs/in_process.md")]

    pub use choreo_bus::memory::{
        GroupPosition, InProcessConfig, InProcessSubscription, PartitionStats, Retention,
        TopicStats, Unsettled, WhenFull,
    };
}

pub mod metrics {
    #![doc = include_str!("docs/metrics.md")]

    pub use choreo_bus::{
        DURATION_BUCKETS, METRICS, Metrics, MetricsServer, Render, ServerBuilder, render,
    };
}

pub mod codec {
    //! Payload codecs: how an event's data is encoded. JSON is built in
    //! ([`Codecs::json`]); the `avro` feature adds Avro with a schema registry
    //! (`choreo::avro::AvroCodec`, used through [`Codecs::encode_with`]).

    pub use choreo_core::{Codec, Codecs, ContentType, JsonCodec, PayloadMeta};
}

pub mod bus {
    //! The bus contract every backend implements ([`Bus`](crate::Bus),
    //! [`Subscription`], [`Delivery`]) and the types that travel through it:
    //! headers, names, times, receipts, dead letters. [`Error`] is the
    //! contract's error (codecs and backends); it converts into
    //! [`choreo::Error`](crate::Error) with `?`. The contract is written out
    //! on [`Bus`](crate::Bus).

    pub use choreo_core::{
        DeadLetter, Delivery, EmptyId, Error, Headers, MALFORMED_HEADER, Name, Outcome,
        PartitionKey, RECEIPTS_TOPIC, RELAYED_AT_HEADER, Receipt, ReceiptHead, ReceiptRef, Result,
        Settle, Settlement, StartFrom, SubscribeOptions, Subscription, Timestamp,
        dead_letter_envelope, dead_letter_topic, dlq_headers,
    };
}

pub use choreo_bus::dlq;

/// The Kafka backend (the `kafka` feature).
#[cfg(feature = "kafka")]
pub use choreo_kafka as kafka;

/// Avro payloads with a schema registry (the `avro` feature).
#[cfg(feature = "avro")]
pub use choreo_avro as avro;

/// Transactional outbox and inbox on PostgreSQL (the `postgres` feature).
#[cfg(feature = "postgres")]
pub use choreo_postgres as postgres;

/// Topology files: loading, verifying, rendering (the `topology` feature).
#[cfg(feature = "topology")]
pub use choreo_topology as topology;

/// Recording a run for `choreo trace` ([`trace::record`]), tapping a bus
/// ([`trace::tap`]), capture files ([`trace::capture::Writer`]) and the
/// tracer itself (the `trace` feature).
#[cfg(feature = "trace")]
pub use choreo_trace as trace;

#[cfg(feature = "testing")]
pub mod testing;

#[cfg(test)]
mod tests {
    #[test]
    fn the_bus_contracts_errors_convert_into_the_facades_with_a_question_mark() {
        fn publish() -> crate::Result<()> {
            Err(crate::bus::Error::Closed)?;
            Ok(())
        }
        let e = publish().unwrap_err();
        assert!(matches!(
            e,
            crate::Error::Bus {
                source: crate::bus::Error::Closed
            }
        ));
        assert_eq!(e.to_string(), "the bus is closed");
    }
}
