//! The order flow the runtime tests run: its events, metrics on a private
//! registry, and what a topic holds. Also the OpenTelemetry test's
//! (`tests/otel.rs`), which includes this file alone.

use std::sync::Arc;
use std::time::Duration;

use choreo_bus::{InProcessBus, Metrics};
use choreo_core::Envelope;
use serde::{Deserialize, Serialize};

pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: u64,
}
choreo_core::event!(OrderPlaced, topic = "orders");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PaymentCaptured {
    pub(crate) order_id: u64,
}
choreo_core::event!(PaymentCaptured, topic = "payments");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OrderShipped {
    pub(crate) order_id: u64,
}
choreo_core::event!(OrderShipped, topic = "shipping");

/// Metrics on a private registry, so tests don't share counters.
pub(crate) fn metrics() -> (prometheus::Registry, Metrics) {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).expect("metrics");
    (registry, metrics)
}

pub(crate) fn events(bus: &InProcessBus, topic: &str) -> Vec<Arc<Envelope>> {
    bus.retained(topic)
}
