//! A record no service can read, through the real runtime: every service
//! subscribed to its topic dead-letters it, and the tracer makes that one
//! finding, at its producer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo_bus::{InProcessBus, Service};
use choreo_core::{Bus, Envelope, MALFORMED_HEADER, SubscribeOptions};
use choreo_trace::{FlowStatus, Record, Rule, tap, tap_topics};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_record_dead_lettered_by_every_group_is_one_finding() {
    let topology = order_fulfillment();
    let bus = InProcessBus::new();
    let shutdown = CancellationToken::new();
    let captured: Arc<Mutex<Vec<Record>>> = Arc::default();
    let sink = captured.clone();
    let tapped = tap(
        &bus,
        SubscribeOptions::new("test-tracer", tap_topics(&topology)),
        shutdown.clone(),
        move |r| sink.lock().unwrap().push(r),
    )
    .await
    .unwrap();
    // Two groups read `orders`: payment (for OrderPlaced) and notifications
    // (for OrderCancelled).
    let mut services = Vec::new();
    for svc in [
        Service::new("payment").on(|_: OrderPlaced, _| async { Ok(()) }),
        Service::new("notifications").on(|_: OrderCancelled, _| async { Ok(()) }),
    ] {
        services.push(svc.start(&bus, shutdown.clone()).await.unwrap());
    }
    // What a Kafka source delivers for a record whose `ce_time` is broken.
    let mut placed = Envelope::new("OrderPlaced", "orders", "{\"order_id\":1,\"scenario\":0}")
        .with_source("checkout");
    placed.headers.insert(
        MALFORMED_HEADER,
        "header 'ce_time' is not RFC 3339: 'yesterday'",
    );
    bus.publish(placed.clone()).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let records = captured.lock().unwrap().clone();
        let receipts = records
            .iter()
            .filter(|r| r.envelope.event_type == choreo_core::RECEIPT_TYPE)
            .count();
        let copies = records
            .iter()
            .filter(|r| r.envelope.topic.ends_with(".dlq"))
            .count();
        if receipts >= 2 && copies >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{receipts} receipts, {copies} dead-letter copies"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    for s in services {
        s.await.unwrap();
    }
    tapped.await.unwrap().unwrap();

    let records = captured.lock().unwrap().clone();
    let t = trace(Some(&topology), &records, Some(h_later(&placed)));
    let flow = &t.kept()[0];
    let found: Vec<(Rule, &str, &str)> = flow
        .findings
        .iter()
        .map(|f| (f.rule, f.service.as_str(), f.event_type.as_str()))
        .collect();
    assert_eq!(found, [(Rule::MalformedRecord, "checkout", "OrderPlaced")]);
    let message = &flow.findings[0].message;
    assert!(message.contains("ce_time"), "{message}");
    assert!(
        message.contains("dead-lettered by 'notifications', 'payment'"),
        "{message}"
    );
    assert_eq!(flow.status, FlowStatus::Failed);
    assert!(flow.owed.is_empty(), "{:#?}", flow.owed);
}

/// Well after every bound of the topology.
fn h_later(e: &Envelope) -> choreo_core::Timestamp {
    e.time.saturating_add(Duration::from_secs(3600))
}
