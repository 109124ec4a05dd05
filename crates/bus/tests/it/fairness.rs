//! A publishing loop shares its thread: `Publisher` yields on tokio's task
//! budget, so services on the same current-thread runtime keep up instead of
//! waiting until the partition is full.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::*;
use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Service};
use choreo_testkit::wait_until;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_publishing_loop_lets_the_services_on_its_thread_run() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let stop = CancellationToken::new();
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let svc = Service::new("payment")
        .on(move |_: OrderPlaced, _: Context| {
            counter.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok::<(), HandlerError>(()))
        })
        .receipts(None)
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let publisher = Publisher::new(&bus, "checkout");
    // Far below the partition's bound: the bus never makes this loop wait.
    let mut handled_while_publishing = 0;
    for order_id in 0..1_000 {
        publisher
            .start_flow(&OrderPlaced { order_id })
            .await
            .unwrap();
        handled_while_publishing = handled.load(Ordering::Relaxed);
    }
    assert!(
        handled_while_publishing > 0,
        "the service ran while the loop published"
    );
    wait_until("every order handled", PATIENCE, || {
        handled.load(Ordering::Relaxed) == 1_000
    })
    .await;
    stop.cancel();
    svc.await.unwrap();
}
