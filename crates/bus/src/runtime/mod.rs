//! The service runtime: handlers, middleware, receipts, metrics and spans over any [`Bus`](choreo_core::Bus).

mod context;
mod dead_letter;
mod dispatch;
mod emit;
mod handler;
mod idempotency;
mod metrics;
mod pipeline;
mod publisher;
mod receipt;
mod retry;
mod running;
mod service;
mod timeout;
mod trace;
mod worker;

pub use context::{Context, EmissionSink};
pub use handler::{BoxError, BoxFuture, Handled, Handler, HandlerError, Invocation};
pub use idempotency::{Idempotency, IdempotencyStore, MemoryStore};
pub use metrics::{DURATION_BUCKETS, METRICS, Metrics};
pub use publisher::Publisher;
pub use retry::{Retry, RetryPredicate, RetryableError};
pub use running::ServiceHandle;
pub use service::{Service, StackService};
