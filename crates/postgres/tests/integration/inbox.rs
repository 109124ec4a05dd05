//! The inbox: "this event was handled" commits with the handler's writes,
//! so a redelivery neither repeats the effects nor loses them.

use std::time::Duration;

use choreo_bus::{Idempotency, InProcessBus, Metrics};
use choreo_core::{Bus, Envelope, SubscribeOptions};
use choreo_testkit::{recv, try_recv, wait_until_async};
use tokio_util::sync::CancellationToken;

use super::common::*;

const PATIENCE: Duration = Duration::from_secs(20);

fn order(id: i64) -> Envelope {
    Envelope::new(
        "OrderPlaced",
        "orders",
        serde_json::to_vec(&OrderPlaced {
            order_id: id,
            cents: 100,
        })
        .unwrap(),
    )
    .with_source("checkout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_again_after_its_commit_is_not_handled_twice() {
    let db = Db::start();
    let store = db.store().await;
    let client = db.client().await;
    create_ledger(&client).await;
    let bus = InProcessBus::new();
    let shutdown = CancellationToken::new();
    let relay = store
        .relay(&bus)
        .config(quick_relay())
        .start(shutdown.clone());
    // The runtime's own deduplication off: only the transaction's inbox row
    // stands between a redelivery and a second charge.
    let svc = payment(store.clone())
        .idempotency(Idempotency::off())
        .metrics(Metrics::new(&prometheus::Registry::new()).unwrap())
        .start(&bus, shutdown.clone())
        .await
        .unwrap();
    let mut payments = bus
        .subscribe(SubscribeOptions::new("test", ["payments"]))
        .await
        .unwrap();
    let first = order(1);
    for _ in 0..3 {
        bus.publish(first.clone()).await.unwrap(); // the same id three times
    }
    bus.publish(order(2)).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = recv(&mut payments, "one payment per order", PATIENCE).await;
        got.push(
            serde_json::from_slice::<PaymentCaptured>(&d.envelope().data)
                .unwrap()
                .order_id,
        );
        d.ack();
    }
    got.sort();
    assert_eq!(got, [1, 2]);
    assert!(
        try_recv(&mut payments, Duration::from_millis(300))
            .await
            .is_none(),
        "no second payment"
    );
    assert_eq!(db.count(&client, "ledger").await, 2, "one charge per order");
    assert_eq!(
        db.metric("choreo_inbox_hits_total", &[("service", "payment")]),
        2.0
    );
    shutdown.cancel();
    svc.await.unwrap();
    relay.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_as_idempotency_store_skips_handled_events_before_the_handler() {
    let db = Db::start();
    let store = db.store().await;
    let client = db.client().await;
    create_ledger(&client).await;
    let bus = InProcessBus::new();
    let shutdown = CancellationToken::new();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let svc = payment(store.clone())
        .idempotency(store.inbox())
        .metrics(metrics)
        .start(&bus, shutdown.clone())
        .await
        .unwrap();
    let first = order(1);
    bus.publish(first.clone()).await.unwrap();
    wait_until_async("the first charge", PATIENCE, || async {
        db.count(&client, "ledger").await == 1
    })
    .await;
    shutdown.cancel();
    svc.await.unwrap();

    // Another process of the service (a fresh store: nothing cached) gets
    // the same event again.
    let other = db.store().await;
    let shutdown = CancellationToken::new();
    let registry = prometheus::Registry::new();
    let svc = payment(other.clone())
        .idempotency(other.inbox())
        .metrics(Metrics::new(&registry).unwrap())
        .start(&bus, shutdown.clone())
        .await
        .unwrap();
    bus.publish(first).await.unwrap();
    let handled = || {
        choreo_testkit::metric(
            &registry,
            "choreo_events_handled_total",
            &[("outcome", "duplicate")],
        )
    };
    choreo_testkit::wait_until("the redelivery settled as a duplicate", PATIENCE, || {
        handled() == 1.0
    })
    .await;
    assert_eq!(db.count(&client, "ledger").await, 1);
    shutdown.cancel();
    svc.await.unwrap();
    // Nothing is relayed in this test; the outbox holds the one payment.
    assert_eq!(
        db.count(&client, "choreo_outbox WHERE sent_at IS NULL")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_handling_one_event_at_once_charge_once() {
    let db = Db::start();
    let store = db.store().await;
    let client = db.client().await;
    create_ledger(&client).await;
    // Two groups on one bus stand for two replicas to which a rebalance
    // handed the same event: both run the handler at the same moment.
    let bus = InProcessBus::new();
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for group in ["payment-a", "payment-b"] {
        let s = db.store().await;
        let svc = payment(s)
            .idempotency(Idempotency::off())
            .group(group)
            .metrics(Metrics::new(&prometheus::Registry::new()).unwrap())
            .start(&bus, shutdown.clone())
            .await
            .unwrap();
        handles.push(svc);
    }
    for n in 0..50 {
        bus.publish(order(n)).await.unwrap();
    }
    wait_until_async("both replicas handled all 50", PATIENCE, || async {
        db.count(&client, "choreo_inbox").await == 50
            && db.metric("choreo_inbox_hits_total", &[("service", "payment")]) == 50.0
    })
    .await;
    assert_eq!(db.count(&client, "ledger").await, 50);
    assert_eq!(
        db.count(
            &client,
            "(SELECT order_id FROM ledger GROUP BY order_id HAVING count(*) > 1) d"
        )
        .await,
        0
    );
    drop(store);
    shutdown.cancel();
    for h in handles {
        h.await.unwrap();
    }
}
