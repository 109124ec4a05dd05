//! Idempotency: an event id already handled is acked without running the handler again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::common::*;
use choreo_bus::{Context, HandlerError, Idempotency, InProcessBus, Publisher, Retry, Service};
use choreo_core::{Bus, Event, Outcome};
use choreo_testkit::wait_until;
use tokio_util::sync::CancellationToken;

fn counting(
    calls: Arc<AtomicU32>,
) -> impl Fn(OrderPlaced, Context) -> std::future::Ready<Result<(), HandlerError>> + Clone {
    move |o: OrderPlaced, ctx: Context| {
        calls.fetch_add(1, Ordering::SeqCst);
        ctx.emit(&PaymentCaptured {
            order_id: o.order_id,
        })
        .unwrap();
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn a_redelivered_duplicate_does_not_run_the_handler_twice() {
    let bus = InProcessBus::new();
    let (registry, m) = metrics();
    let calls = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(counting(calls.clone()))
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let env = Publisher::new(&bus, "checkout")
        .envelope(&OrderPlaced { order_id: 5 }, None)
        .unwrap();
    // At-least-once: the same event (same id) arrives twice.
    bus.publish(env.clone()).await.unwrap();
    bus.publish(env.clone()).await.unwrap();
    wait_until("two receipts", PATIENCE, || receipts(&bus).len() == 2).await;
    stop.cancel();
    svc.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        events(&bus, PaymentCaptured::TOPIC).len(),
        1,
        "the duplicate's effect is removed"
    );
    assert_eq!(receipts_with(&bus, Outcome::Duplicate).len(), 1);
    assert_eq!(receipts_with(&bus, Outcome::Duplicate)[0].attempts, 0);
    assert_eq!(
        metric(
            &registry,
            "choreo_events_handled_total",
            &[("outcome", "duplicate")]
        ),
        1.0
    );
}

#[tokio::test]
async fn with_idempotency_off_duplicates_run_again() {
    let bus = InProcessBus::new();
    let (_registry, m) = metrics();
    let calls = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(counting(calls.clone()))
        .idempotency(Idempotency::off())
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let env = Publisher::new(&bus, "checkout")
        .envelope(&OrderPlaced { order_id: 5 }, None)
        .unwrap();
    bus.publish(env.clone()).await.unwrap();
    bus.publish(env).await.unwrap();
    wait_until("two receipts", PATIENCE, || receipts(&bus).len() == 2).await;
    stop.cancel();
    svc.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_dead_lettered_event_is_not_remembered_as_handled() {
    let bus = InProcessBus::new();
    let (_registry, m) = metrics();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = fail.clone();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(move |_o: OrderPlaced, _ctx: Context| {
            let fail = f.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err(HandlerError::msg("down"))
                } else {
                    Ok(())
                }
            }
        })
        .retry(Retry::none())
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let env = Publisher::new(&bus, "checkout")
        .envelope(&OrderPlaced { order_id: 5 }, None)
        .unwrap();
    bus.publish(env.clone()).await.unwrap();
    wait_until("the dead letter", PATIENCE, || receipts(&bus).len() == 1).await;
    fail.store(false, Ordering::SeqCst);
    // Replaying it (same id) runs the handler: the first run did not succeed.
    bus.publish(env).await.unwrap();
    wait_until("the second receipt", PATIENCE, || receipts(&bus).len() == 2).await;
    stop.cancel();
    svc.await.unwrap();
    assert_eq!(receipts_with(&bus, Outcome::Acked).len(), 1);
    assert_eq!(OrderPlaced::TOPIC, "orders");
}
