//! The runtime's metrics while handlers run: a partition worker gathers its
//! observations while it handles deliveries back to back, and must publish
//! them before it waits for anything.

use std::sync::Arc;

use crate::common::*;
use choreo_bus::{Context, HandlerError, Service};
use choreo_testkit::wait_until;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_waiting_handler_is_in_flight_and_the_handlings_before_it_are_counted_meanwhile() {
    // Published before the service starts, so that its worker receives all
    // three in one batch and handles the first two without waiting.
    let bus = orders_waiting(3).await;
    let (registry, m) = metrics();
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(move |o: OrderPlaced, _ctx: Context| {
            let gate = g.clone();
            async move {
                if o.order_id == 3 {
                    gate.notified().await;
                }
                Ok::<(), HandlerError>(())
            }
        })
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();

    let gauge = || metric(&registry, "choreo_handlers_in_flight", &[]);
    let acked = || {
        metric(
            &registry,
            "choreo_events_handled_total",
            &[("outcome", "acked")],
        )
    };
    let timed = |name| metric(&registry, name, &[("service", "payment")]);
    wait_until("the third handler to wait", PATIENCE, || gauge() == 1.0).await;
    wait_until(
        "the two handlings before it to be counted while it waits",
        PATIENCE,
        || {
            acked() == 2.0
                && timed("choreo_handler_duration_seconds") == 2.0
                && timed("choreo_event_queue_seconds") == 2.0
        },
    )
    .await;

    gate.notify_one();
    wait_until("the third to be counted", PATIENCE, || {
        acked() == 3.0
            && timed("choreo_handler_duration_seconds") == 3.0
            && timed("choreo_event_queue_seconds") == 3.0
    })
    .await;
    wait_until("nothing to be in flight", PATIENCE, || gauge() == 0.0).await;
    stop.cancel();
    svc.await.unwrap();
}

#[tokio::test]
async fn handlings_that_never_wait_are_counted_once_the_worker_is_idle() {
    let bus = orders_waiting(200).await;
    let (registry, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(|_o: OrderPlaced, _ctx: Context| async { Ok::<(), HandlerError>(()) })
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    wait_until("every handling to be counted", PATIENCE, || {
        metric(
            &registry,
            "choreo_events_handled_total",
            &[("outcome", "acked")],
        ) == 200.0
            && metric(&registry, "choreo_handler_duration_seconds", &[]) == 200.0
    })
    .await;
    assert_eq!(
        metric(&registry, "choreo_handlers_in_flight", &[]),
        0.0,
        "no handling waited, so none was counted in flight"
    );
    stop.cancel();
    svc.await.unwrap();
}
