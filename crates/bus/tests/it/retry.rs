//! Retry with exponential backoff: failed attempts publish nothing, the
//! successful one publishes once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::*;
use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Retry, Service};
use choreo_core::{Event, Outcome};
use choreo_testkit::wait_until;
use tokio_util::sync::CancellationToken;

fn flaky(
    fail_times: u32,
    calls: Arc<AtomicU32>,
) -> impl Fn(OrderPlaced, Context) -> std::future::Ready<Result<(), HandlerError>> + Clone {
    move |o: OrderPlaced, ctx: Context| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        assert_eq!(ctx.attempt(), n, "the context says which attempt this is");
        // Emit before failing: a failed attempt's emissions must not be published.
        ctx.emit(&PaymentCaptured {
            order_id: o.order_id,
        })
        .unwrap();
        std::future::ready(if n <= fail_times {
            Err(HandlerError::msg(format!("flake {n}")))
        } else {
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_handler_that_fails_twice_succeeds_on_the_third_attempt_and_emits_once() {
    let bus = InProcessBus::new();
    let (registry, m) = metrics();
    let calls = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(flaky(2, calls.clone()))
        .retry(Retry::default().backoff(Duration::from_millis(1), Duration::from_millis(5)))
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    wait_until("the receipt", PATIENCE, || !receipts(&bus).is_empty()).await;
    stop.cancel();
    svc.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        events(&bus, PaymentCaptured::TOPIC).len(),
        1,
        "only the successful attempt publishes"
    );
    let r = &receipts(&bus)[0];
    assert_eq!((r.outcome, r.attempts), (Outcome::Acked, 3));
    assert_eq!(r.emitted.len(), 1);
    assert_eq!(r.emitted[0], events(&bus, PaymentCaptured::TOPIC)[0].id);
    assert_eq!(
        metric(
            &registry,
            "choreo_handler_retries_total",
            &[("service", "payment")]
        ),
        2.0
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_waits_grow_exponentially() {
    let bus = InProcessBus::new();
    let (_registry, m) = metrics();
    let calls = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let retry = Retry::default()
        .jitter(0.0)
        .backoff(Duration::from_secs(1), Duration::from_secs(60));
    let svc = Service::new("payment")
        .on(flaky(3, calls.clone()))
        .retry(retry)
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    while receipts(&bus).is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 1 s + 2 s + 4 s of backoff before the fourth attempt (virtual time).
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(7) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    stop.cancel();
    svc.await.unwrap();
    assert_eq!(receipts(&bus)[0].attempts, 4);
}

#[tokio::test]
async fn a_retry_predicate_can_refuse_to_retry() {
    let bus = InProcessBus::new();
    let (_registry, m) = metrics();
    let calls = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(flaky(10, calls.clone()))
        .retry(
            Retry::default()
                .backoff(Duration::from_millis(1), Duration::from_millis(1))
                .retry_if(|e| !e.message.contains("flake")),
        )
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    wait_until("the receipt", PATIENCE, || !receipts(&bus).is_empty()).await;
    stop.cancel();
    svc.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(receipts(&bus)[0].outcome, Outcome::DeadLettered);
}
