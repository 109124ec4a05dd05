//! The saga's services do what `topologies/order-fulfillment.yaml` declares:
//! `choreo::testing::conforms` finds their handlers and topics as declared
//! (and catches a wrong topic and a missing handler), and tracing a run
//! reports nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo::bus::SubscribeOptions;
use choreo::testing::conforms;
use choreo::topology::Topology;
use choreo::trace::{Tracer, TracerConfig, tap, tap_topics};
use choreo::{CancellationToken, Context, Event, HandlerError, InProcessBus, Publisher, Service};
use order_saga::events::*;

fn topology() -> Topology {
    Topology::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../topologies/order-fulfillment.yaml"
    ))
    .unwrap()
}

#[test]
fn the_services_handle_what_the_topology_gives_them_on_its_topics() {
    let t = topology();
    conforms(&t, &order_saga::services()).unwrap();
    let services: Vec<&str> = t.services().map(|s| s.name.as_str()).collect();
    assert_eq!(services, order_saga::SERVICES, "every service is checked");
    // The event types the services only emit are on the topology's topics too.
    for (ty, topic) in [
        (OrderPlaced::TYPE, OrderPlaced::TOPIC),
        (PaymentCaptured::TYPE, PaymentCaptured::TOPIC),
        (PaymentFailed::TYPE, PaymentFailed::TOPIC),
        (StockReserved::TYPE, StockReserved::TOPIC),
        (OutOfStock::TYPE, OutOfStock::TOPIC),
        (PaymentRefunded::TYPE, PaymentRefunded::TOPIC),
        (OrderShipped::TYPE, OrderShipped::TOPIC),
        (OrderCancelled::TYPE, OrderCancelled::TOPIC),
    ] {
        assert_eq!(t.topic_of(ty), Some(topic), "{ty}");
    }
}

/// `OrderPlaced` as a service that got its topic wrong would declare it.
mod misdeclared {
    #[derive(serde::Serialize, serde::Deserialize)]
    pub(crate) struct OrderPlaced {}
    choreo::event!(OrderPlaced, topic = "order");
}

#[test]
fn a_service_reading_an_event_from_the_wrong_topic_does_not_conform() {
    async fn charge(_: misdeclared::OrderPlaced, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
    async fn refund(_: OutOfStock, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
    let payment = Service::new("payment").on(charge).on(refund);
    let err = conforms(&topology(), &[payment]).unwrap_err();
    let lines: Vec<String> = err.mismatches.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].ends_with(
            "error[wrong-topic]: service 'payment' reads 'OrderPlaced' from topic 'order', but the topology puts 'OrderPlaced' on 'orders': make event!(OrderPlaced, topic = …) and the topology say the same topic"
        ),
        "{err}"
    );
    assert!(lines[0].starts_with("/"), "the line names the file: {err}");
    assert!(
        lines[0].contains("topologies/order-fulfillment.yaml:8:3: "),
        "{err}"
    );
}

#[test]
fn a_service_missing_a_handler_the_topology_gives_it_does_not_conform() {
    async fn refund(_: OutOfStock, _: Context) -> Result<(), HandlerError> {
        Ok(())
    }
    // payment without its OrderPlaced handler.
    let err = conforms(&topology(), &[Service::new("payment").on(refund)]).unwrap_err();
    assert_eq!(err.mismatches.len(), 1, "{err}");
    assert_eq!(err.mismatches[0].code, "missing-handler");
    assert!(
        err.to_string().contains(
            "error[missing-handler]: service 'payment' has no handler for 'OrderPlaced', which the topology says it reacts to"
        ),
        "{err}"
    );
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
    let stop_tap = CancellationToken::new();
    let feed = tracer.clone();
    let tap_task = tap(
        &bus,
        SubscribeOptions::new("test-tracer", tap_topics(&topology)),
        stop_tap.clone(),
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
    // Every order handled by every service, and read by the tap.
    bus.settled_within(Duration::from_secs(30)).await.unwrap();
    shutdown.cancel();
    for r in running {
        r.await.unwrap();
    }
    // The receipts of the last handlings, published as they settled, read too.
    bus.settled_within(Duration::from_secs(30)).await.unwrap();
    stop_tap.cancel();
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
