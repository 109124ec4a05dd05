//! Helpers shared by the runtime tests, beside the order flow (`flow.rs`).

use choreo_bus::{InProcessBus, InProcessConfig, Publisher};
use choreo_core::{Outcome, RECEIPTS_TOPIC, Receipt};

pub(crate) use crate::flow::*;

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

/// A bus of one partition holding orders `1..=n`, placed before any service
/// runs: a service started on it finds them all waiting, in one batch.
pub(crate) async fn orders_waiting(n: u64) -> InProcessBus {
    let bus = InProcessBus::with_config(InProcessConfig::default().partitions(1));
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
