//! Failure: the database unreachable at start, and lost while running.

use std::time::{Duration, Instant};

use choreo_bus::{InProcessBus, Metrics, Publisher, Retry};
use choreo_core::{Bus, SubscribeOptions};
use choreo_postgres::{Error, PgConfig, PgStore};
use choreo_testkit::recv;
use tokio_util::sync::CancellationToken;

use super::common::*;

#[tokio::test]
async fn an_unreachable_database_at_start_is_a_clear_error_naming_the_url() {
    let port = choreo_testkit::free_port();
    let url = format!("postgres://payment:hunter2@127.0.0.1:{port}/payment");
    let started = Instant::now();
    let e = PgStore::connect(PgConfig::new(&url).connect_timeout(Duration::from_secs(3)))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Connect { .. }), "{text}");
    assert!(
        text.contains(&format!("postgres://payment:***@127.0.0.1:{port}/payment")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.to_lowercase().contains("refused"), "says why: {text}");
    assert!(
        text.contains("check that the server runs"),
        "says what to do: {text}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_lost_while_running_delays_but_loses_nothing() {
    let mut db = Db::start();
    let store = PgStore::connect(db.config().connect_timeout(Duration::from_secs(2)))
        .await
        .unwrap();
    let client = db.client().await;
    create_ledger(&client).await;
    drop(client);
    let bus = InProcessBus::new();
    let shutdown = CancellationToken::new();
    let relay = store
        .relay(&bus)
        .config(quick_relay())
        .start(shutdown.clone());
    let svc = payment(store.clone())
        .idempotency(store.inbox())
        // Enough attempts to outlast the outage (about 2 s).
        .retry(
            Retry::default()
                .max_attempts(40)
                .backoff(Duration::from_millis(50), Duration::from_millis(500)),
        )
        .metrics(Metrics::new(&prometheus::Registry::new()).unwrap())
        .start(&bus, shutdown.clone())
        .await
        .unwrap();
    let mut payments = bus
        .subscribe(SubscribeOptions::new("test", ["payments"]))
        .await
        .unwrap();
    let checkout = Publisher::new(&bus, "checkout");
    for n in 0..20 {
        checkout
            .start_flow(&OrderPlaced {
                order_id: n,
                cents: 1,
            })
            .await
            .unwrap();
    }
    let mut paid = std::collections::BTreeSet::new();
    while paid.len() < 20 {
        let d = recv(
            &mut payments,
            "the first 20 payments",
            Duration::from_secs(30),
        )
        .await;
        paid.insert(
            serde_json::from_slice::<PaymentCaptured>(&d.envelope().data)
                .unwrap()
                .order_id,
        );
        d.ack();
    }

    // The database goes away, orders keep coming, the database comes back.
    db.pg.stop_immediately();
    for n in 20..60 {
        checkout
            .start_flow(&OrderPlaced {
                order_id: n,
                cents: 1,
            })
            .await
            .unwrap();
    }
    choreo_testkit::wait_until(
        "the relay and the handlers failing",
        Duration::from_secs(20),
        || {
            db.metric(
                "choreo_outbox_relay_failures_total",
                &[("stage", "database")],
            ) >= 1.0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the outage lasts a while
    db.pg.restart();

    while paid.len() < 60 {
        let d = recv(
            &mut payments,
            "every payment after the outage",
            Duration::from_secs(60),
        )
        .await;
        paid.insert(
            serde_json::from_slice::<PaymentCaptured>(&d.envelope().data)
                .unwrap()
                .order_id,
        );
        d.ack();
    }
    let client = db.client().await;
    assert_eq!(
        db.count(&client, "ledger").await,
        60,
        "one charge per order"
    );
    assert_eq!(
        db.count(
            &client,
            "(SELECT order_id FROM ledger GROUP BY order_id HAVING count(*) > 1) d"
        )
        .await,
        0
    );
    choreo_testkit::wait_until_async("the outbox drained", Duration::from_secs(30), || async {
        db.count(&client, "choreo_outbox WHERE sent_at IS NULL")
            .await
            == 0
    })
    .await;
    shutdown.cancel();
    svc.await.unwrap();
    relay.await.unwrap();
}
