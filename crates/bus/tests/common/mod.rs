//! Events and helpers shared by the runtime tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use choreo_bus::{InProcessBus, InProcessConfig, Metrics, Publisher};
use choreo_core::{Envelope, Outcome, RECEIPTS_TOPIC, Receipt};
use serde::{Deserialize, Serialize};

pub const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order_id: u64,
}
choreo_core::event!(OrderPlaced, topic = "orders");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub order_id: u64,
}
choreo_core::event!(PaymentCaptured, topic = "payments");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderShipped {
    pub order_id: u64,
}
choreo_core::event!(OrderShipped, topic = "shipping");

/// Metrics on a private registry, so tests don't share counters.
pub fn metrics() -> (prometheus::Registry, Metrics) {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).expect("metrics");
    (registry, metrics)
}

pub fn receipts(bus: &InProcessBus) -> Vec<Receipt> {
    bus.retained(RECEIPTS_TOPIC)
        .iter()
        .filter_map(|e| Receipt::from_envelope(e))
        .collect()
}

pub fn receipts_with(bus: &InProcessBus, outcome: Outcome) -> Vec<Receipt> {
    receipts(bus)
        .into_iter()
        .filter(|r| r.outcome == outcome)
        .collect()
}

pub fn events(bus: &InProcessBus, topic: &str) -> Vec<Arc<Envelope>> {
    bus.retained(topic)
}

/// A bus of one partition holding orders `1..=n`, placed before any service
/// runs: a service started on it finds them all waiting, in one batch.
pub async fn orders_waiting(n: u64) -> InProcessBus {
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
pub use choreo_testkit::metric;
