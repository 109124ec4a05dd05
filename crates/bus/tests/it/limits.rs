//! Size limits: an oversize event is refused at publish with a clear error,
//! and one that arrives anyway is dead-lettered with the reason.

use crate::common::*;
use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Retry, Service};
use choreo_core::{Bus, Envelope, Event, Limits, Outcome, dlq_headers};
use choreo_testkit::wait_until;
use tokio_util::sync::CancellationToken;

fn small() -> Limits {
    Limits::default()
        .max_payload_bytes(64)
        .max_headers(4)
        .max_header_bytes(256)
}

#[tokio::test]
async fn the_publisher_refuses_an_oversize_event() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let p = Publisher::new(&bus, "checkout").metrics(m).limits(small());
    let mut env = Envelope::new("OrderPlaced", "orders", vec![b'x'; 65]);
    env.source = "checkout".into();
    let err = p.publish(env).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "publishing failed: event 'OrderPlaced' on 'orders' is refused: payload of 65 bytes is over the limit of 64 bytes (Limits::max_payload_bytes)"
    );
    assert!(bus.retained("orders").is_empty(), "nothing was published");
}

#[tokio::test]
async fn a_handler_cannot_emit_an_oversize_event() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(|o: OrderPlaced, ctx: Context| async move {
            ctx.emit_raw("PaymentCaptured", "payments", vec![b'x'; 100])?;
            let _ = o;
            Ok::<(), HandlerError>(())
        })
        .limits(small())
        .retry(Retry::none())
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    wait_until("the dead letter", PATIENCE, || {
        !bus.retained("orders.dlq").is_empty()
    })
    .await;
    stop.cancel();
    svc.await.unwrap();
    assert!(bus.retained("payments").is_empty());
    let reason = bus.retained("orders.dlq")[0]
        .headers
        .get_str(dlq_headers::REASON)
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("is refused: payload of 100 bytes"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_oversize_event_received_is_dead_lettered_at_once_and_the_consumer_goes_on() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(|_o: OrderPlaced, _ctx: Context| async { Ok::<(), HandlerError>(()) })
        .limits(small())
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    // Another producer ignored the limits.
    let mut big = Envelope::new(
        OrderPlaced::TYPE,
        OrderPlaced::TOPIC,
        format!("{{\"order_id\":1,\"pad\":\"{}\"}}", "y".repeat(80)),
    );
    big.source = "legacy".into();
    let mut headers = Envelope::new(OrderPlaced::TYPE, OrderPlaced::TOPIC, "{\"order_id\":2}");
    for i in 0..5 {
        headers.headers.insert(format!("x-{i}"), "v");
    }
    bus.publish(big.clone()).await.unwrap();
    bus.publish(headers.clone()).await.unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 3 })
        .await
        .unwrap();
    wait_until("three receipts", PATIENCE, || receipts(&bus).len() == 3).await;
    stop.cancel();
    svc.await.unwrap();
    let dead = bus.retained("orders.dlq");
    assert_eq!(dead.len(), 2);
    let reason = |id| {
        dead.iter()
            .find(|e| &e.id == id)
            .unwrap()
            .headers
            .get_str(dlq_headers::REASON)
            .unwrap()
            .to_owned()
    };
    assert!(
        reason(&big.id).starts_with("refused: payload of "),
        "{}",
        reason(&big.id)
    );
    assert!(
        reason(&headers.id).contains("Limits::max_headers"),
        "{}",
        reason(&headers.id)
    );
    assert_eq!(
        receipts_with(&bus, Outcome::Acked).len(),
        1,
        "the consumer went on"
    );
    assert!(
        receipts_with(&bus, Outcome::DeadLettered)
            .iter()
            .all(|r| r.attempts == 0),
        "no handler ran"
    );
}
