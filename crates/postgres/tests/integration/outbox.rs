//! The outbox: a handler's writes and emissions commit together, keep their
//! stamps, and reach the bus through the relay.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use choreo_bus::{Context, HandlerError, InProcessBus, Publisher, Retry, Service};
use choreo_core::{Bus, Envelope, EventId, SubscribeOptions, Subscription};
use choreo_testkit::recv;
use tokio_util::sync::CancellationToken;

use super::common::*;

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_emission_keeps_every_stamp_through_the_outbox() {
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

    let emitted: Arc<Mutex<Vec<EventId>>> = Arc::default();
    let seen = emitted.clone();
    let db2 = store.clone();
    let svc = Service::new("payment")
        .idempotency(store.inbox())
        .on(move |o: OrderPlaced, ctx: Context| {
            let (db, seen) = (db2.clone(), seen.clone());
            async move {
                let Some(tx) = db.begin(&ctx).await? else {
                    return Ok(());
                };
                tx.client()
                    .execute(
                        "INSERT INTO ledger (order_id, cents) VALUES ($1, $2)",
                        &[&o.order_id, &o.cents],
                    )
                    .await?;
                let id = ctx.emit(&PaymentCaptured {
                    order_id: o.order_id,
                    seq: 0,
                })?;
                assert_eq!(
                    ctx.emitted(),
                    0,
                    "diverted to the transaction, not kept for the runtime"
                );
                assert_eq!(tx.events(), 1);
                seen.lock().unwrap().push(id);
                tx.commit().await?;
                Ok::<(), HandlerError>(())
            }
        })
        .start(&bus, shutdown.clone())
        .await
        .unwrap();
    let mut payments = bus
        .subscribe(SubscribeOptions::new("test", ["payments"]))
        .await
        .unwrap();

    let mut cause = Envelope::new(
        "OrderPlaced",
        "orders",
        serde_json::to_vec(&OrderPlaced {
            order_id: 7,
            cents: 1999,
        })
        .unwrap(),
    )
    .with_source("checkout");
    cause.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
    cause.tracestate = Some("congo=t61rcWkgMzE".into());
    bus.publish(cause.clone()).await.unwrap();

    let d = recv(&mut payments, "the captured payment", PATIENCE).await;
    let got = d.envelope().clone();
    d.ack();
    assert_eq!(
        emitted.lock().unwrap().as_slice(),
        std::slice::from_ref(&got.id),
        "the id ctx.emit returned"
    );
    assert_eq!(got.event_type.as_str(), "PaymentCaptured");
    assert_eq!(got.source.as_str(), "payment");
    assert_eq!(got.topic.as_str(), "payments");
    assert_eq!(got.correlation_id, cause.correlation_id);
    assert_eq!(got.causation_id.as_ref(), Some(&cause.id));
    assert_eq!(
        got.key,
        Some(cause.correlation_id.to_key()),
        "keyed by the flow"
    );
    assert_eq!(got.traceparent, cause.traceparent, "the trace continues");
    assert_eq!(got.tracestate, cause.tracestate);
    let payload: PaymentCaptured = serde_json::from_slice(&got.data).unwrap();
    assert_eq!(payload.order_id, 7);

    // The row the relay published from: the same event, now marked sent.
    let row = client
        .query_one(
            "SELECT id, time_us, sent_at IS NOT NULL FROM choreo_outbox",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), got.id.to_string());
    assert_eq!(
        row.get::<_, i64>(1),
        got.time.as_micros(),
        "the stamped time, to the microsecond"
    );
    choreo_testkit::wait_until_async("the row marked sent", PATIENCE, || async {
        client
            .query_one("SELECT sent_at IS NOT NULL FROM choreo_outbox", &[])
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    assert_eq!(db.count(&client, "ledger").await, 1);
    assert_eq!(
        db.count(&client, "choreo_inbox WHERE service = 'payment'")
            .await,
        1
    );
    assert_eq!(
        db.metric(
            "choreo_outbox_relayed_total",
            &[("outbox", "choreo_outbox"), ("topic", "payments")]
        ),
        1.0
    );
    assert!(db.metric("choreo_outbox_relay_lag_seconds", &[]) >= 1.0);

    shutdown.cancel();
    svc.await.unwrap();
    relay.await.unwrap();
    payments.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_rolls_back_its_writes_and_its_events() {
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

    let attempts = Arc::new(AtomicU32::new(0));
    let (db2, n) = (store.clone(), attempts.clone());
    let svc = Service::new("payment")
        .retry(Retry::default().backoff(Duration::from_millis(5), Duration::from_millis(50)))
        .on(move |o: OrderPlaced, ctx: Context| {
            let (db, n) = (db2.clone(), n.clone());
            async move {
                let Some(tx) = db.begin(&ctx).await? else {
                    return Ok(());
                };
                tx.client()
                    .execute(
                        "INSERT INTO ledger (order_id, cents) VALUES ($1, $2)",
                        &[&o.order_id, &o.cents],
                    )
                    .await?;
                ctx.emit(&PaymentCaptured {
                    order_id: o.order_id,
                    seq: ctx.attempt() as i64,
                })?;
                if n.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Dropped without commit: rolled back, the event with it.
                    return Err(HandlerError::msg("the card network timed out"));
                }
                tx.commit().await?;
                Ok(())
            }
        })
        .start(&bus, shutdown.clone())
        .await
        .unwrap();
    let mut payments = bus
        .subscribe(SubscribeOptions::new("test", ["payments"]))
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced {
            order_id: 1,
            cents: 500,
        })
        .await
        .unwrap();
    let d = recv(&mut payments, "the payment", PATIENCE).await;
    let p: PaymentCaptured = serde_json::from_slice(&d.envelope().data).unwrap();
    assert_eq!(p.seq, 2, "only the second attempt's event");
    d.ack();
    assert!(
        choreo_testkit::try_recv(&mut payments, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(
        db.count(&client, "ledger").await,
        1,
        "the first attempt's row rolled back"
    );
    assert_eq!(db.count(&client, "choreo_outbox").await, 1);
    assert_eq!(db.count(&client, "choreo_inbox").await, 1);
    shutdown.cancel();
    svc.await.unwrap();
    relay.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_handlers_a_transaction_publishes_what_it_commits_and_nothing_it_rolls_back() {
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
    let mut orders = bus
        .subscribe(SubscribeOptions::new("test", ["orders", "payments"]))
        .await
        .unwrap();
    let checkout = Publisher::new(&bus, "checkout");

    let tx = store.transaction().await.unwrap();
    tx.start_flow(
        &checkout,
        &OrderPlaced {
            order_id: 1,
            cents: 1,
        },
    )
    .unwrap();
    tx.rollback().await.unwrap();
    {
        let tx = store.transaction().await.unwrap();
        tx.start_flow(
            &checkout,
            &OrderPlaced {
                order_id: 2,
                cents: 2,
            },
        )
        .unwrap();
        // dropped: rolled back
    }

    let tx = store.transaction().await.unwrap();
    tx.client()
        .execute("INSERT INTO ledger (order_id, cents) VALUES (3, 3)", &[])
        .await
        .unwrap();
    let flow = tx
        .start_flow(
            &checkout,
            &OrderPlaced {
                order_id: 3,
                cents: 3,
            },
        )
        .unwrap();
    let first = Envelope::new("OrderPlaced", "orders", Bytes::from_static(b"{}"));
    let caused = tx
        .publish_caused_by(
            &checkout,
            &PaymentCaptured {
                order_id: 3,
                seq: 1,
            },
            &first,
        )
        .unwrap();
    tx.commit().await.unwrap();

    // Two topics: no order between them.
    let mut got = std::collections::HashMap::new();
    for _ in 0..2 {
        let d = recv(&mut orders, "the two committed events", PATIENCE).await;
        got.insert(d.envelope().id.clone(), d.envelope().clone());
        d.ack();
    }
    let a = &got[&flow];
    assert_eq!(a.correlation_id, flow);
    assert_eq!(a.source.as_str(), "checkout");
    let b = &got[&caused];
    assert_eq!(b.causation_id.as_ref(), Some(&first.id));
    assert_eq!(b.correlation_id, first.correlation_id);
    assert!(
        choreo_testkit::try_recv(&mut orders, Duration::from_millis(300))
            .await
            .is_none(),
        "nothing rolled back is published"
    );
    assert_eq!(db.count(&client, "ledger").await, 1);
    shutdown.cancel();
    relay.await.unwrap();
    orders.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emissions_before_and_after_the_transaction_go_to_the_runtime() {
    let db = Db::start();
    let store = db.store().await;
    let bus = InProcessBus::new();
    let shutdown = CancellationToken::new();
    let relay = store
        .relay(&bus)
        .config(quick_relay())
        .start(shutdown.clone());
    let db2 = store.clone();
    let svc = Service::new("payment")
        .on(move |o: OrderPlaced, ctx: Context| {
            let db = db2.clone();
            async move {
                ctx.emit(&PaymentCaptured {
                    order_id: o.order_id,
                    seq: 1,
                })?;
                let Some(tx) = db.begin(&ctx).await? else {
                    return Ok(());
                };
                // A second transaction on the same handling is refused.
                let again = db.begin(&ctx).await;
                assert!(
                    matches!(again, Err(choreo_postgres::Error::AlreadyOpen { .. })),
                    "{again:?}"
                );
                ctx.emit(&PaymentCaptured {
                    order_id: o.order_id,
                    seq: 2,
                })?;
                tx.commit().await?;
                ctx.emit(&PaymentCaptured {
                    order_id: o.order_id,
                    seq: 3,
                })?;
                assert_eq!(ctx.emitted(), 2, "the first and the third");
                Ok::<(), HandlerError>(())
            }
        })
        .start(&bus, shutdown.clone())
        .await
        .unwrap();
    let mut payments = bus
        .subscribe(SubscribeOptions::new("test", ["payments"]))
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced {
            order_id: 1,
            cents: 1,
        })
        .await
        .unwrap();
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let d = recv(&mut payments, "the three payments", PATIENCE).await;
        seqs.push(
            serde_json::from_slice::<PaymentCaptured>(&d.envelope().data)
                .unwrap()
                .seq,
        );
        d.ack();
    }
    seqs.sort();
    assert_eq!(seqs, [1, 2, 3]);
    let client = db.client().await;
    assert_eq!(
        db.count(&client, "choreo_outbox").await,
        1,
        "only the second went through the outbox"
    );
    shutdown.cancel();
    svc.await.unwrap();
    relay.await.unwrap();
}
