//! The service runtime: handlers, middleware, receipts, metrics and spans over any [`Bus`](choreo_core::Bus).

mod context;
mod handler;
mod idempotency;
mod metrics;
mod publisher;
mod retry;
mod service;
mod trace;

pub use context::{Context, EmissionSink};
pub use handler::{BoxError, BoxFuture, Handled, Handler, HandlerError, Invocation};
pub use idempotency::{Idempotency, IdempotencyStore, MemoryStore};
pub use metrics::{DURATION_BUCKETS, METRICS, Metrics};
pub use publisher::Publisher;
pub use retry::{Retry, RetryPredicate, RetryableError};
pub use service::{DeadLetterNaming, Service, ServiceConfig, ServiceHandle, StackService};
