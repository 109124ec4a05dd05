//! choreo's service runtime and its in-process bus.
//!
//! ```
//! use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Service};
//! use serde::{Deserialize, Serialize};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { order_id: u64 }
//! choreo_core::event!(OrderPlaced, topic = "orders");
//!
//! #[derive(Serialize, Deserialize)]
//! struct PaymentCaptured { order_id: u64 }
//! choreo_core::event!(PaymentCaptured, topic = "payments");
//!
//! async fn capture(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
//!     // stamped: source "payment", same flow, caused by the OrderPlaced event
//!     ctx.emit(&PaymentCaptured { order_id: order.order_id })?;
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = InProcessBus::new();
//! let shutdown = CancellationToken::new();
//! let payment = Service::new("payment").on(capture).start(&bus, shutdown.clone()).await?;
//!
//! let flow = Publisher::new(&bus, "checkout").start_flow(&OrderPlaced { order_id: 42 }).await?;
//! bus.settled().await; // every event published so far is handled
//! let captured = &bus.retained("payments")[0];
//! assert_eq!(captured.correlation_id, flow);
//! assert_eq!(captured.source, "payment");
//!
//! shutdown.cancel();
//! payment.await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Concepts
//!
//! - A [`Service`] is a name plus handlers, one per event type; it runs
//!   against any [`Bus`](choreo_core::Bus) as one consumer group.
//! - A handler is an async function of the typed event and a [`Context`];
//!   events emitted through the context are stamped with the flow's ids and
//!   published only when the attempt succeeds.
//! - Every delivery ends in one outcome — acked, dead-lettered, duplicate,
//!   redelivered, or ignored (no handler for its type) — decided in one
//!   place; [`Service`] documents the steps.
//! - A [`Publisher`] starts flows from outside any handler.
//!
//! # Backends
//!
//! [`InProcessBus`] (this crate, the default): Kafka's semantics inside one
//! process — partitions, consumer groups, redelivery, bounded retention. The
//! Kafka backend lives in `choreo-kafka`.
//!
//! # Middleware
//!
//! [`Retry`] (exponential backoff with jitter), dead-lettering after the last
//! attempt, [`Idempotency`], a per-attempt timeout (tower's `Timeout`), and
//! any tower layer through [`Service::layer`] (tower's `ConcurrencyLimit`,
//! `RateLimit`, …). The order is documented on [`Service`].
//!
//! # Observability
//!
//! [`Metrics`] (Prometheus, on a registry you choose), receipts on
//! `choreo.receipts`, `tracing` spans, and with the `otel` feature
//! OpenTelemetry PRODUCER/CONSUMER spans joined across hops through the
//! envelope's W3C trace context. [`MetricsServer`] serves `/metrics`.
//!
//! # Feature flags
//!
//! - `otel`: OpenTelemetry spans and context propagation.

pub mod dlq;
mod error;
mod identity;
pub mod memory;
mod runtime;
mod serve;

pub use error::{Error, Result};
pub use memory::{
    InProcessBus, InProcessConfig, InProcessSubscription, Retention, Unsettled, WhenFull,
};
pub use runtime::*;
pub use serve::{Health, MetricsServer, Render, ServerBuilder, render};
