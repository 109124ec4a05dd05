//! `InProcessBus::settled`: it returns once every published event is handled
//! or dead-lettered by every group with members — through chains of emitted
//! events, retries and backoff — and not before; topics nobody reads and
//! stopped services hold nothing back; receipts are out (and read) when it
//! returns; `settled_within` names who does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::*;
use choreo_bus::{Context, Error, HandlerError, InProcessBus, Publisher, Retry, Service};
use choreo_core::{
    Bus, Envelope, Event, RECEIPTS_TOPIC, SubscribeOptions, Subscription, dead_letter_topic,
};
use tokio_util::sync::CancellationToken;

/// payment (OrderPlaced → PaymentCaptured) and shipping (PaymentCaptured →
/// OrderShipped), shipping counting what it handled.
async fn chain(
    bus: &InProcessBus,
    stop: &CancellationToken,
    concurrency: usize,
) -> (Arc<AtomicU32>, Vec<choreo_bus::ServiceHandle>) {
    let shipped = Arc::new(AtomicU32::new(0));
    let payment = Service::new("payment")
        .on(|o: OrderPlaced, ctx: Context| async move {
            // Let other handlings run in between.
            tokio::task::yield_now().await;
            ctx.emit(&PaymentCaptured {
                order_id: o.order_id,
            })?;
            Ok::<_, HandlerError>(())
        })
        .partition_concurrency(concurrency)
        .metrics(metrics().1)
        .start(bus, stop.clone())
        .await
        .unwrap();
    let counted = shipped.clone();
    let shipping = Service::new("shipping")
        .on(move |p: PaymentCaptured, ctx: Context| {
            let counted = counted.clone();
            async move {
                tokio::task::yield_now().await;
                ctx.emit(&OrderShipped {
                    order_id: p.order_id,
                })?;
                counted.fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            }
        })
        .partition_concurrency(concurrency)
        .metrics(metrics().1)
        .start(bus, stop.clone())
        .await
        .unwrap();
    (shipped, vec![payment, shipping])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_returns_once_the_last_service_of_a_chain_has_handled_every_flow() {
    for concurrency in [1, 4] {
        let bus = InProcessBus::new();
        let stop = CancellationToken::new();
        let (shipped, services) = chain(&bus, &stop, concurrency).await;
        // A reader of the receipts, as a tracer's tap is.
        let read = Arc::new(AtomicU32::new(0));
        let mut audit = bus
            .subscribe(SubscribeOptions::new("audit", [RECEIPTS_TOPIC]))
            .await
            .unwrap();
        let counted = read.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(d)) = audit.next().await {
                counted.fetch_add(1, Ordering::SeqCst);
                d.ack();
            }
        });
        let checkout = Publisher::new(&bus, "checkout");
        for round in 0..5u64 {
            for order_id in 0..100 {
                checkout
                    .start_flow(&OrderPlaced {
                        order_id: round * 100 + order_id,
                    })
                    .await
                    .unwrap();
            }
            bus.settled_within(PATIENCE).await.unwrap();
            // Counted before its delivery was acked: every flow of the
            // round went through both services.
            assert_eq!(shipped.load(Ordering::SeqCst) as u64, (round + 1) * 100);
            assert_eq!(
                events(&bus, OrderShipped::TOPIC).len() as u64,
                (round + 1) * 100
            );
            assert!(bus.unsettled().is_empty(), "{:?}", bus.unsettled());
            // Each handling's receipt is published, and read, before
            // `settled` returns, though it follows the ack.
            assert_eq!(receipts(&bus).len() as u64, (round + 1) * 200);
            assert_eq!(read.load(Ordering::SeqCst) as u64, (round + 1) * 200);
        }
        reader.abort();
        stop.cancel();
        for s in services {
            s.await.unwrap();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn settled_waits_through_retries_and_their_backoff() {
    let bus = InProcessBus::new();
    let calls = Arc::new(AtomicU32::new(0));
    let stop = CancellationToken::new();
    let counted = calls.clone();
    let svc = Service::new("payment")
        .on(move |_: OrderPlaced, _: Context| {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(if n < 3 {
                Err(HandlerError::msg(format!("flake {n}")))
            } else {
                Ok(())
            })
        })
        .retry(
            Retry::default()
                .backoff(Duration::from_secs(2), Duration::from_secs(2))
                .jitter(0.0),
        )
        .metrics(metrics().1)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    bus.settled().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the third attempt succeeded"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "two backoffs of 2 s were waited through: {:?}",
        started.elapsed()
    );
    stop.cancel();
    svc.await.unwrap();
}

#[tokio::test]
async fn a_dead_lettered_event_is_settled_and_the_dead_letter_and_receipt_topics_nobody_reads_hold_nothing_back()
 {
    let bus = InProcessBus::new();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(|_: OrderPlaced, _: Context| async { Err::<(), _>(HandlerError::msg("card declined")) })
        .retry(Retry::none())
        .metrics(metrics().1)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    bus.settled_within(PATIENCE).await.unwrap();
    assert_eq!(
        events(&bus, &dead_letter_topic(OrderPlaced::TOPIC)).len(),
        1,
        "dead-lettered before settled returned"
    );
    assert_eq!(receipts(&bus).len(), 1, "and its receipt published");
    stop.cancel();
    svc.await.unwrap();
}

#[tokio::test]
async fn events_nobody_consumes_and_groups_without_members_hold_nothing_back() {
    let bus = InProcessBus::new();
    bus.publish(Envelope::new("Audited", "audit", "{}"))
        .await
        .unwrap();
    bus.settled_within(PATIENCE).await.unwrap();

    // A service that stopped leaves its group without members: what is
    // published to its topic afterwards waits for its restart, not `settled`.
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(|_: OrderPlaced, _: Context| async { Ok::<_, HandlerError>(()) })
        .metrics(metrics().1)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    stop.cancel();
    svc.await.unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    bus.settled_within(PATIENCE).await.unwrap();
}

#[tokio::test]
async fn settled_waits_for_a_handler_in_flight_and_settled_within_names_the_group_holding_it() {
    let bus = InProcessBus::with_config(choreo_bus::InProcessConfig::default().partitions(1));
    let stop = CancellationToken::new();
    let release = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(AtomicU32::new(0));
    let (r, e) = (release.clone(), entered.clone());
    let svc = Service::new("payment")
        .on(move |_: OrderPlaced, _: Context| {
            let (r, e) = (r.clone(), e.clone());
            async move {
                e.fetch_add(1, Ordering::SeqCst);
                r.notified().await;
                Ok::<_, HandlerError>(())
            }
        })
        .metrics(metrics().1)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    choreo_testkit::wait_until("the handler to start", PATIENCE, || {
        entered.load(Ordering::SeqCst) == 1
    })
    .await;

    let err = bus
        .settled_within(Duration::from_millis(50))
        .await
        .unwrap_err();
    let Error::NotSettled { unsettled, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(unsettled.len(), 1, "{err}");
    assert_eq!(
        (
            unsettled[0].group.as_str(),
            unsettled[0].topic.as_str(),
            unsettled[0].committed,
            unsettled[0].end
        ),
        ("payment", "orders", 0, 1)
    );
    let message = err.to_string();
    assert!(
        message.starts_with(
            "the in-process bus did not settle within 50ms: group 'payment' has 1 unsettled event(s) in orders/0 from offset 0;"
        ),
        "{message}"
    );

    let waiting = tokio::spawn({
        let bus = bus.clone();
        async move { bus.settled().await }
    });
    release.notify_one();
    tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("settled once the handler finished")
        .unwrap();
    stop.cancel();
    svc.await.unwrap();
}
