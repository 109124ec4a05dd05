//! The outbox lag: how long a service's events waited in its transactional
//! outbox, from the relay's `choreo-relayed-at` header.

use choreo_core::{Envelope, RELAYED_AT_HEADER};

use crate::helpers::*;

/// `e` as a relay publishes it, `after_ms` after its handler wrote it.
fn relayed(mut e: Envelope, after_ms: i64) -> Envelope {
    let at = e.time.as_micros() + after_ms * 1000;
    e.headers.insert(
        RELAYED_AT_HEADER,
        choreo_core::Timestamp::from_micros(at).to_rfc3339(),
    );
    e
}

#[test]
fn the_report_says_how_long_each_service_s_events_waited_in_its_outbox() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    // payment writes its answer at 10 ms; its relay publishes it 40 ms later.
    let captured = relayed(h.after(&placed, "PaymentCaptured", "payment", 10), 40);
    // A crashed relay's successor publishes it again later: a duplicate,
    // not a second wait.
    let again = relayed(h.after(&placed, "PaymentCaptured", "payment", 10), 900);
    let mut again = again;
    again.id = captured.id.clone();
    let reserved = relayed(h.after(&captured, "StockReserved", "inventory", 60), 4);
    let shipped = h.after(&reserved, "OrderShipped", "shipping", 80);
    let t = trace(
        Some(&order_fulfillment()),
        &records(&[&placed, &captured, &again, &reserved, &shipped]),
        None,
    );
    let report = t.report();
    let lag: Vec<(&str, u64, u64)> = report
        .outbox
        .iter()
        .map(|o| (o.service.as_str(), o.lag.count, o.lag.max_us))
        .collect();
    assert_eq!(
        lag,
        [("inventory", 1, 4_000), ("payment", 1, 40_000)],
        "{report:#?}"
    );
    let text = report.summary();
    assert!(
        text.contains("outbox lag") && text.contains("payment: 40.0ms"),
        "{text}"
    );
    assert!(report.findings.is_empty(), "{text}");
}

#[test]
fn without_an_outbox_the_report_says_nothing_of_one() {
    let h = Hand::default();
    let placed = h.start("OrderPlaced", "checkout", 0);
    let captured = h.after(&placed, "PaymentCaptured", "payment", 10);
    let report = trace(
        Some(&order_fulfillment()),
        &records(&[&placed, &captured]),
        None,
    )
    .report();
    assert!(report.outbox.is_empty());
    assert!(!report.summary().contains("outbox"));
}
