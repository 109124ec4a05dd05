//! Graceful shutdown: in-flight handlers finish within the grace period and
//! are settled; those that don't are abandoned and delivered again later.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::*;
use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Service};
use choreo_core::{Event, Outcome};
use choreo_testkit::wait_until;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn an_in_flight_handler_finishes_and_is_acked_during_shutdown() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let started = Arc::new(Notify::new());
    let s2 = started.clone();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(move |o: OrderPlaced, ctx: Context| {
            let started = s2.clone();
            async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(100)).await;
                ctx.emit(&PaymentCaptured {
                    order_id: o.order_id,
                })?;
                Ok::<(), HandlerError>(())
            }
        })
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    started.notified().await;
    stop.cancel();
    svc.await.unwrap();
    assert_eq!(
        events(&bus, PaymentCaptured::TOPIC).len(),
        1,
        "the in-flight handler finished"
    );
    assert_eq!(receipts_with(&bus, Outcome::Acked).len(), 1);
    let stats = bus.topic_stats(OrderPlaced::TOPIC).unwrap();
    let committed: u64 = stats
        .partitions
        .iter()
        .flat_map(|p| &p.groups)
        .map(|g| g.committed)
        .sum();
    assert_eq!(
        committed, 1,
        "and its delivery was settled before leaving the group"
    );
}

#[tokio::test]
async fn a_handler_still_running_after_the_grace_period_is_redelivered_to_the_next_run() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let calls = Arc::new(AtomicU32::new(0));
    let make = |calls: Arc<AtomicU32>, m| {
        Service::new("payment")
            .on(move |o: OrderPlaced, ctx: Context| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        // The first run hangs far beyond the grace period.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    ctx.emit(&PaymentCaptured {
                        order_id: o.order_id,
                    })?;
                    Ok::<(), HandlerError>(())
                }
            })
            .shutdown_grace(Duration::from_millis(50))
            .metrics(m)
    };
    let stop = CancellationToken::new();
    let first = make(calls.clone(), m.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    wait_until("the first attempt to start", PATIENCE, || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    stop.cancel();
    first.await.unwrap();
    assert!(events(&bus, PaymentCaptured::TOPIC).is_empty());

    let stop = CancellationToken::new();
    let second = make(calls.clone(), m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    wait_until("the redelivery to be handled", PATIENCE, || {
        events(&bus, PaymentCaptured::TOPIC).len() == 1
    })
    .await;
    stop.cancel();
    second.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_service_without_handlers_refuses_to_run() {
    let bus = InProcessBus::new();
    let err = Service::new("empty")
        .run_until(&bus, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "service 'empty' has no handlers: add one with Service::on before running it"
    );
}

#[tokio::test]
async fn receipts_can_be_switched_off() {
    let bus = InProcessBus::new();
    let (registry, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(|_o: OrderPlaced, _ctx: Context| async { Ok::<(), HandlerError>(()) })
        .receipts(None)
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    wait_until("the event to be handled", PATIENCE, || {
        metric(
            &registry,
            "choreo_events_handled_total",
            &[("outcome", "acked")],
        ) == 1.0
    })
    .await;
    stop.cancel();
    svc.await.unwrap();
    assert!(receipts(&bus).is_empty());
}
