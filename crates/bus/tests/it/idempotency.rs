//! Idempotency: an event id already handled is acked without running the handler again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::common::*;
use choreo_bus::{
    Context, HandlerError, Idempotency, InProcessBus, InProcessConfig, Publisher, Retry, Service,
};
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

#[tokio::test]
async fn a_duplicate_arriving_while_the_first_is_handled_waits_and_is_not_handled_again() {
    // Three deliveries handled at once on one partition: order 5, the same
    // event again (same id), then order 6. Order 5's first handling holds on
    // until order 6's has begun — by then the duplicate, dispatched before
    // order 6, has reached the runtime. It must wait for the first to settle
    // and then be acked as a duplicate, not run the handler alongside it.
    let bus = InProcessBus::with_config(InProcessConfig::default().partitions(1));
    let (_registry, m) = metrics();
    let handled: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let (six_began, six_rx) = tokio::sync::watch::channel(false);
    let six_began = Arc::new(six_began);
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on({
            let handled = handled.clone();
            move |o: OrderPlaced, _ctx: Context| {
                let (handled, six_began, mut six_rx) =
                    (handled.clone(), six_began.clone(), six_rx.clone());
                async move {
                    handled.lock().unwrap().push(o.order_id);
                    if o.order_id == 6 {
                        six_began.send_replace(true);
                    } else {
                        tokio::time::timeout(PATIENCE, six_rx.wait_for(|began| *began))
                            .await
                            .expect("order 6 is handled while order 5 is")
                            .unwrap();
                    }
                    Ok::<(), HandlerError>(())
                }
            }
        })
        .partition_concurrency(3)
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let checkout = Publisher::new(&bus, "checkout");
    let five = checkout
        .envelope(&OrderPlaced { order_id: 5 }, None)
        .unwrap();
    let six = checkout
        .envelope(&OrderPlaced { order_id: 6 }, None)
        .unwrap();
    bus.publish(five.clone()).await.unwrap();
    bus.publish(five).await.unwrap();
    bus.publish(six).await.unwrap();
    wait_until("three receipts", PATIENCE, || receipts(&bus).len() == 3).await;
    stop.cancel();
    svc.await.unwrap();
    let mut handled = handled.lock().unwrap().clone();
    handled.sort();
    assert_eq!(handled, [5, 6], "order 5 handled once");
    assert_eq!(receipts_with(&bus, Outcome::Duplicate).len(), 1);
    assert_eq!(receipts_with(&bus, Outcome::Acked).len(), 2);
}
