//! Events and helpers shared by the runtime tests.

use std::sync::Arc;
use std::time::Duration;

use choreo_bus::{InProcessBus, InProcessConfig, Metrics, Publisher};
use choreo_core::{Envelope, Outcome, RECEIPTS_TOPIC, Receipt};
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

pub(crate) fn receipts(bus: &InProcessBus) -> Vec<Receipt> {
    bus.retained(RECEIPTS_TOPIC)
        .iter()
        .filter_map(|e| Receipt::from_envelope(e))
        .collect()
}

pub(crate) fn receipts_with(bus: &InProcessBus, outcome: Outcome) -> Vec<Receipt> {
    receipts(bus)
        .into_iter()
        .filter(|r| r.outcome == outcome)
        .collect()
}

pub(crate) fn events(bus: &InProcessBus, topic: &str) -> Vec<Arc<Envelope>> {
    bus.retained(topic)
}

/// A bus of one partition holding orders `1..=n`, placed before any service
/// runs: a service started on it finds them all waiting, in one batch.
pub(crate) async fn orders_waiting(n: u64) -> InProcessBus {
    let bus = InProcessBus::with_config(InProcessConfig {
        partitions: 1,
        ..Default::default()
    });
    let checkout = Publisher::new(&bus, "checkout");
    for order_id in 1..=n {
        checkout
            .start_flow(&OrderPlaced { order_id })
            .await
            .expect("publish");
    }
    bus
}

#[allow(unused_imports)] // not every test binary reads metrics
pub(crate) use choreo_testkit::metric;
