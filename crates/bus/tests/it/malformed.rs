//! A record the backend could only partly read (marked `choreo-malformed`)
//! is dead-lettered at once with the reason, whatever its type, and the
//! consumer goes on.

use crate::common::*;
use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Service};
use choreo_core::{Bus, Envelope, Event, MALFORMED_HEADER, Outcome, dlq_headers};
use choreo_testkit::wait_until;
use tokio_util::sync::CancellationToken;

async fn capture(o: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
    ctx.emit(&PaymentCaptured {
        order_id: o.order_id,
    })?;
    Ok(())
}

#[tokio::test]
async fn malformed_records_are_dead_lettered_with_the_reason_and_the_consumer_goes_on() {
    let bus = InProcessBus::new();
    let (registry, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(capture)
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    // A well-typed payload whose record had a broken ce_time…
    let mut typed = Envelope::new(OrderPlaced::TYPE, OrderPlaced::TOPIC, "{\"order_id\":1}");
    typed.headers.insert(
        MALFORMED_HEADER,
        "header 'ce_time' is not an RFC 3339 time: 'soon'",
    );
    // …and one whose type could not be read at all.
    let mut untyped = Envelope::new("unknown", OrderPlaced::TOPIC, "{\"order_id\":2}");
    untyped
        .headers
        .insert(MALFORMED_HEADER, "header 'ce_type' is not UTF-8");
    bus.publish(typed.clone()).await.unwrap();
    bus.publish(untyped.clone()).await.unwrap();
    let good = Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 3 })
        .await
        .unwrap();

    wait_until("three receipts", PATIENCE, || receipts(&bus).len() == 3).await;
    stop.cancel();
    svc.await.unwrap();

    let dead = bus.retained("orders.dlq");
    assert_eq!(dead.len(), 2);
    for (sent, problem) in [
        (
            &typed,
            "malformed record: header 'ce_time' is not an RFC 3339 time: 'soon'",
        ),
        (&untyped, "malformed record: header 'ce_type' is not UTF-8"),
    ] {
        let copy = dead
            .iter()
            .find(|e| e.id == sent.id)
            .expect("dead-lettered");
        assert_eq!(copy.headers.get_str(dlq_headers::REASON), Some(problem));
    }
    assert_eq!(receipts_with(&bus, Outcome::DeadLettered).len(), 2);
    let captured = events(&bus, "payments");
    assert_eq!(captured.len(), 1, "only the good order is handled");
    assert_eq!(captured[0].correlation_id, good);
    assert_eq!(
        metric(
            &registry,
            "choreo_events_dead_lettered_total",
            &[("service", "payment"), ("event_type", "unknown")]
        ),
        1.0
    );
}
