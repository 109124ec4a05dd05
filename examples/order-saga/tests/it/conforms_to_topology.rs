//! The saga's services do what `topologies/order-fulfillment.yaml` declares:
//! their event types and topics match it, and tracing a run reports nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo::bus::SubscribeOptions;
use choreo::{CancellationToken, Event, InProcessBus, Publisher};
use choreo_topology::Topology;
use choreo_trace::{Tracer, TracerConfig, tap, tap_topics};
use order_saga::events::*;

fn topology() -> Topology {
    Topology::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../topologies/order-fulfillment.yaml"
    ))
    .unwrap()
}

#[test]
fn every_event_type_is_declared_on_its_topic() {
    let t = topology();
    let declared = [
        (OrderPlaced::TYPE, OrderPlaced::TOPIC),
        (PaymentCaptured::TYPE, PaymentCaptured::TOPIC),
        (PaymentFailed::TYPE, PaymentFailed::TOPIC),
        (StockReserved::TYPE, StockReserved::TOPIC),
        (OutOfStock::TYPE, OutOfStock::TOPIC),
        (PaymentRefunded::TYPE, PaymentRefunded::TOPIC),
        (OrderShipped::TYPE, OrderShipped::TOPIC),
        (OrderCancelled::TYPE, OrderCancelled::TOPIC),
    ];
    for (ty, topic) in declared {
        assert_eq!(t.topic_of(ty), Some(topic), "{ty}");
    }
    assert_eq!(t.events().len(), declared.len());
    let services: Vec<&str> = t.services().map(|s| s.name.as_str()).collect();
    assert_eq!(services, order_saga::SERVICES);
    for s in order_saga::services() {
        let decl = t.service(s.name()).unwrap();
        let mut handled: Vec<&str> = s.handles().into_iter().map(|(e, _)| e).collect();
        let mut declared: Vec<&str> = decl.reactions.keys().map(String::as_str).collect();
        handled.sort();
        declared.sort();
        assert_eq!(handled, declared, "service {}", s.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_a_run_against_the_topology_reports_no_violation() {
    let topology = topology();
    let bus = InProcessBus::new();
    let tracer = Arc::new(Mutex::new(Tracer::new(
        TracerConfig::batch(),
        Some(&topology),
    )));
    let shutdown = CancellationToken::new();
    let feed = tracer.clone();
    let tap_task = tap(
        &bus,
        SubscribeOptions::new("test-tracer", tap_topics(&topology)),
        shutdown.clone(),
        move |r| feed.lock().unwrap().ingest(&r),
    )
    .await
    .unwrap();
    let registry = prometheus::Registry::new();
    let metrics = choreo::metrics::Metrics::new(&registry).unwrap();
    let mut running = Vec::new();
    for s in order_saga::services() {
        running.push(
            s.metrics(metrics.clone())
                .start(&bus, shutdown.clone())
                .await
                .unwrap(),
        );
    }
    let checkout = Publisher::new(&bus, "checkout").metrics(metrics.clone());
    const ORDERS: u64 = 60;
    for n in 1..=ORDERS {
        order_saga::place_order(&checkout, &order_saga::demo_order(n))
            .await
            .unwrap();
    }
    choreo_testkit_wait(&bus, ORDERS).await;
    shutdown.cancel();
    for r in running {
        r.await.unwrap();
    }
    tap_task.await.unwrap().unwrap();
    let mut tracer = tracer.lock().unwrap();
    tracer.finish(None);
    let report = tracer.report();
    assert!(report.ok, "{}\n{:#?}", report.verdict, report.findings);
    assert_eq!(report.flows.started, ORDERS);
    assert_eq!(report.flows.completed, ORDERS);
    // Every path of the saga was exercised.
    let shipped = bus.retained(OrderShipped::TOPIC).len();
    let cancelled = bus
        .retained(OrderCancelled::TOPIC)
        .iter()
        .filter(|e| e.event_type == OrderCancelled::TYPE)
        .count();
    let refunded = bus
        .retained(PaymentRefunded::TOPIC)
        .iter()
        .filter(|e| e.event_type == PaymentRefunded::TYPE)
        .count();
    assert!(
        shipped > 0 && cancelled > 0 && refunded > 0,
        "{shipped} {cancelled} {refunded}"
    );
}

/// Waits until every order is shipped or cancelled (and a little settling).
async fn choreo_testkit_wait(bus: &InProcessBus, orders: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ended = bus.retained(OrderShipped::TOPIC).len()
            + bus
                .retained(OrderCancelled::TOPIC)
                .iter()
                .filter(|e| e.event_type == OrderCancelled::TYPE)
                .count();
        if ended as u64 >= orders {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {ended} of {orders} orders ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    choreo_sim_quiet(bus).await;
}

async fn choreo_sim_quiet(bus: &InProcessBus) {
    // The notifications and the tap must have settled what was published.
    let groups: Vec<String> = order_saga::SERVICES
        .iter()
        .map(|s| s.to_string())
        .chain(["test-tracer".to_owned()])
        .collect();
    tokio::time::timeout(
        Duration::from_secs(30),
        choreo_sim::wait_quiet(bus, &groups),
    )
    .await
    .expect("quiet");
}
