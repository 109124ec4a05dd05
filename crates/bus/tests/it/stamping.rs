//! Publishing through the context stamps source, flow, causation, key and trace context.

use crate::common::*;
use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Service};
use choreo_core::{Event, Outcome};
use choreo_testkit::wait_until;
use tokio_util::sync::CancellationToken;

async fn pay(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ctx.emit(&PaymentCaptured {
        order_id: order.order_id,
    })?;
    Ok(())
}

async fn ship(p: PaymentCaptured, ctx: Context) -> Result<(), HandlerError> {
    ctx.emit(&OrderShipped {
        order_id: p.order_id,
    })?;
    Ok(())
}

#[tokio::test]
async fn a_chain_of_handlers_keeps_one_flow_with_causation_links() {
    let bus = InProcessBus::new();
    let (registry, m) = metrics();
    let stop = CancellationToken::new();
    let payment = Service::new("payment")
        .on(pay)
        .metrics(m.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let shipping = Service::new("shipping")
        .on(ship)
        .metrics(m.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();

    let publisher = Publisher::new(&bus, "checkout").metrics(m.clone());
    let mut first = publisher
        .envelope(&OrderPlaced { order_id: 1 }, None)
        .unwrap();
    first.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    publisher.publish(first.clone()).await.unwrap();
    let second_flow = publisher
        .start_flow(&OrderPlaced { order_id: 2 })
        .await
        .unwrap();

    wait_until("both flows to be shipped", PATIENCE, || {
        events(&bus, OrderShipped::TOPIC).len() == 2
    })
    .await;
    stop.cancel();
    payment.await.unwrap();
    shipping.await.unwrap();

    assert_eq!(
        first.correlation_id, first.id,
        "a flow's first event names the flow"
    );
    assert!(first.causation_id.is_none());
    assert_eq!(first.source, "checkout");
    assert_eq!(first.key.as_deref(), Some(first.id.to_string().as_bytes()));

    let captured = events(&bus, PaymentCaptured::TOPIC);
    let shipped = events(&bus, OrderShipped::TOPIC);
    let c1 = captured
        .iter()
        .find(|e| e.correlation_id == first.id)
        .expect("payment of flow 1");
    let s1 = shipped
        .iter()
        .find(|e| e.correlation_id == first.id)
        .expect("shipment of flow 1");
    assert_eq!(c1.source, "payment");
    assert_eq!(c1.event_type, "PaymentCaptured");
    assert_eq!(c1.causation_id.as_ref(), Some(&first.id));
    assert_eq!(c1.key, first.key, "the key stays the flow's correlation id");
    assert_eq!(
        c1.traceparent, first.traceparent,
        "trace context continues across hops"
    );
    assert_eq!(s1.source, "shipping");
    assert_eq!(s1.causation_id.as_ref(), Some(&c1.id));
    assert_eq!(s1.traceparent, first.traceparent);
    assert_eq!(c1.id.as_uuid().unwrap().get_version_num(), 7);
    assert!(c1.time >= first.time && s1.time >= c1.time);

    let s2 = shipped
        .iter()
        .find(|e| e.correlation_id == second_flow)
        .expect("shipment of flow 2");
    assert_ne!(s2.correlation_id, s1.correlation_id);

    assert_eq!(
        metric(
            &registry,
            "choreo_events_published_total",
            &[("service", "payment"), ("event_type", "PaymentCaptured")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &registry,
            "choreo_events_handled_total",
            &[("service", "shipping"), ("outcome", "acked")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &registry,
            "choreo_events_published_total",
            &[("service", "checkout"), ("event_type", "OrderPlaced")]
        ),
        2.0
    );
}

#[tokio::test]
async fn an_unhandled_event_type_on_a_subscribed_topic_is_counted_and_receipted_not_handled() {
    let bus = InProcessBus::new();
    let (registry, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(pay)
        .metrics(m.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();
    // Another type on the same topic.
    let other = choreo_core::Envelope::new("OrderAmended", OrderPlaced::TOPIC, "{}")
        .with_source("checkout");
    bus_publish(&bus, other).await;
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 9 })
        .await
        .unwrap();
    wait_until("the payment", PATIENCE, || {
        events(&bus, PaymentCaptured::TOPIC).len() == 1
    })
    .await;
    wait_until("the ignored count", PATIENCE, || {
        metric(
            &registry,
            "choreo_deliveries_ignored_total",
            &[("event_type", "OrderAmended")],
        ) == 1.0
    })
    .await;
    wait_until("the ignored receipt", PATIENCE, || {
        !receipts_with(&bus, Outcome::Ignored).is_empty()
    })
    .await;
    stop.cancel();
    svc.await.unwrap();
    // The passed-over event is visible: one receipt says so, and it is the
    // only receipt of its type; the handled one is acked.
    let ignored = receipts_with(&bus, Outcome::Ignored);
    assert_eq!(ignored.len(), 1, "{ignored:?}");
    let r = &ignored[0];
    assert_eq!(
        (r.service.as_str(), r.event_type.as_str(), r.attempts),
        ("payment", "OrderAmended", 0)
    );
    assert_eq!(
        r.reason.as_deref(),
        Some("no handler for event type 'OrderAmended'")
    );
    assert!(r.emitted.is_empty());
    for r in receipts(&bus) {
        let expected = if r.event_type == "OrderPlaced" {
            Outcome::Acked
        } else {
            Outcome::Ignored
        };
        assert_eq!(r.outcome, expected, "{r:?}");
    }
    // Not counted as handled.
    assert_eq!(
        metric(
            &registry,
            "choreo_events_handled_total",
            &[("service", "payment"), ("event_type", "OrderAmended")]
        ),
        0.0
    );
}

async fn bus_publish(bus: &InProcessBus, env: choreo_core::Envelope) {
    use choreo_core::Bus;
    bus.publish(env).await.unwrap();
}

#[tokio::test]
async fn a_raw_envelope_handler_emits_stamped_events_too() {
    let bus = InProcessBus::new();
    let (_registry, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("forwarder")
        .on_envelope(
            "OrderPlaced",
            "orders",
            |env: std::sync::Arc<choreo_core::Envelope>, ctx: Context| async move {
                ctx.emit_raw("OrderForwarded", "forwarded", env.data.clone())?;
                Ok::<(), HandlerError>(())
            },
        )
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let first = Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 3 })
        .await
        .unwrap();
    wait_until("the forwarded event", PATIENCE, || {
        events(&bus, "forwarded").len() == 1
    })
    .await;
    stop.cancel();
    svc.await.unwrap();
    let fwd = &events(&bus, "forwarded")[0];
    assert_eq!(fwd.event_type, "OrderForwarded");
    assert_eq!(fwd.source, "forwarder");
    assert_eq!(fwd.correlation_id, first);
    assert_eq!(fwd.causation_id.as_ref(), Some(&first));
    assert_eq!(&fwd.data[..], br#"{"order_id":3}"#);
}
