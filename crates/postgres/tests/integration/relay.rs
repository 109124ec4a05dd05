//! The relay: order per key with several relays, a crashed relay's rows
//! taken over, LISTEN/NOTIFY and polling, rows moved aside, pruning.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use choreo_bus::{InProcessBus, Publisher};
use choreo_core::{Bus, Envelope, SubscribeOptions};
use choreo_postgres::{PgStore, RelayConfig};
use choreo_testkit::{recv, try_recv, wait_until_async};
use tokio_util::sync::CancellationToken;

use super::common::*;

const PATIENCE: Duration = Duration::from_secs(30);

/// Commits `n` events of `keys` keys, in `txs` concurrent transactions;
/// each event's payload is (key, its number within the key).
async fn commit_events(store: &PgStore, keys: usize, per_key: usize) {
    let publisher = Publisher::new(&InProcessBus::new(), "writer");
    let mut tasks = Vec::new();
    for k in 0..keys {
        let store = store.clone();
        let publisher = publisher.clone();
        tasks.push(tokio::spawn(async move {
            // Each key's events in several transactions, one after another.
            for chunk in 0..(per_key / 5) {
                let tx = store.transaction().await.unwrap();
                for i in 0..5 {
                    let n = chunk * 5 + i;
                    let mut env = publisher
                        .envelope(
                            &OrderPlaced {
                                order_id: k as i64,
                                cents: n as i64,
                            },
                            None,
                        )
                        .unwrap();
                    env.key = Some(Bytes::from(format!("key-{k}")));
                    tx.publish(env);
                }
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_relays_keep_each_keys_order_and_lose_nothing() {
    let db = Db::start();
    let store = db.store().await;
    let bus = InProcessBus::new();
    bus.create_topic("orders", 4);
    let mut sub = bus
        .subscribe(SubscribeOptions::new("test", ["orders"]))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let mut relays = Vec::new();
    for _ in 0..3 {
        let s = db.store().await;
        let config = quick_relay().lanes_per_batch(4).batch_size(16);
        relays.push(s.relay(&bus).config(config).start(shutdown.clone()));
    }
    const KEYS: usize = 40;
    const PER_KEY: usize = 25;
    let writing = tokio::spawn({
        let store = store.clone();
        async move { commit_events(&store, KEYS, PER_KEY).await }
    });
    let mut next: HashMap<i64, i64> = HashMap::new();
    let mut ids = HashSet::new();
    while ids.len() < KEYS * PER_KEY {
        let d = recv(&mut sub, "every committed event", PATIENCE).await;
        let o: OrderPlaced = serde_json::from_slice(&d.envelope().data).unwrap();
        assert!(
            ids.insert(d.envelope().id.clone()),
            "published once each with healthy relays"
        );
        let want = next.entry(o.order_id).or_default();
        assert_eq!(o.cents, *want, "key {} out of order", o.order_id);
        *want += 1;
        d.ack();
    }
    writing.await.unwrap();
    assert!(
        try_recv(&mut sub, Duration::from_millis(300))
            .await
            .is_none()
    );
    let client = db.client().await;
    assert_eq!(
        db.count(&client, "choreo_outbox WHERE sent_at IS NULL")
            .await,
        0
    );
    shutdown.cancel();
    for r in relays {
        r.await.unwrap();
    }
}

/// A bus whose publishes hang once `stuck` is set: a relay caught in the
/// middle of a batch.
#[derive(Clone)]
struct Hanging {
    inner: InProcessBus,
    stuck: Arc<AtomicBool>,
}

impl Bus for Hanging {
    type Subscription = <InProcessBus as Bus>::Subscription;

    async fn publish(&self, envelope: Envelope) -> choreo_core::Result<()> {
        if self.stuck.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.publish(envelope).await
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> choreo_core::Result<Self::Subscription> {
        self.inner.subscribe(options).await
    }

    fn backend_name(&self) -> &'static str {
        "hanging"
    }
}

#[test]
fn a_crashed_relays_rows_are_published_by_another() {
    let db = Db::start();
    let bus = InProcessBus::new();
    let stuck = Arc::new(AtomicBool::new(false));
    // The relay that will crash runs on a runtime of its own, torn down at
    // once (every task dropped where it stands, its connections cut).
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hanging = Hanging {
        inner: bus.clone(),
        stuck: stuck.clone(),
    };
    let url_store = doomed.block_on(db.store());
    let relay = url_store
        .relay(&hanging)
        .config(quick_relay().batch_size(1000));
    doomed.spawn(relay.run(CancellationToken::new()));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = db.store().await;
        let mut sub = bus.subscribe(SubscribeOptions::new("test", ["orders"])).await.unwrap();
        commit_events(&store, 4, 10).await;
        let mut first = HashMap::new();
        while first.len() < 40 {
            let d = recv(&mut sub, "the first 40", PATIENCE).await;
            first.insert(d.envelope().id.clone(), d.envelope().data.clone());
            d.ack();
        }
        // Now the relay hangs in the middle of its next batch, holding the
        // lanes of everything committed (in one transaction, so that its
        // batch takes them all).
        stuck.store(true, Ordering::SeqCst);
        let publisher = Publisher::new(&bus, "writer");
        let tx = store.transaction().await.unwrap();
        for n in 0..40 {
            let mut env = publisher.envelope(&OrderPlaced { order_id: n % 4, cents: 100 + n }, None).unwrap();
            env.key = Some(Bytes::from(format!("key-{}", n % 4)));
            tx.publish(env);
        }
        tx.commit().await.unwrap();
        let client = db.client().await;
        wait_until_async("the doomed relay holding its lanes", PATIENCE, || async {
            let locked: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'choreo_outbox_lanes' AND l.mode = 'RowShareLock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            locked > 0
        })
        .await;
        // A second relay meanwhile finds every lane taken.
        let second = store.relay(&bus).config(quick_relay());
        let report = second.relay_batch().await.unwrap();
        assert_eq!((report.lanes, report.published), (0, 0), "{report:?}");
        assert_eq!(db.count(&client, "choreo_outbox WHERE sent_at IS NULL").await, 40);

        // Crash.
        doomed.shutdown_background();
        let shutdown = CancellationToken::new();
        let taken_over = second.start(shutdown.clone());
        let mut second_half = HashMap::new();
        while second_half.len() < 40 {
            let d = recv(&mut sub, "the crashed relay's rows", PATIENCE).await;
            let (id, data) = (d.envelope().id.clone(), d.envelope().data.clone());
            assert!(!first.contains_key(&id));
            if let Some(before) = second_half.insert(id, data.clone()) {
                assert_eq!(before, data, "a duplicate is the same event");
            }
            d.ack();
        }
        wait_until_async("nothing left unsent", PATIENCE, || async {
            db.count(&client, "choreo_outbox WHERE sent_at IS NULL").await == 0
        })
        .await;
        shutdown.cancel();
        taken_over.await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_the_relay_and_polling_finds_rows_without_it() {
    let db = Db::start();
    let store = db.store().await;
    let bus = InProcessBus::new();
    let mut sub = bus
        .subscribe(SubscribeOptions::new("test", ["orders"]))
        .await
        .unwrap();
    let publisher = Publisher::new(&bus, "checkout");

    // Listening, with a poll interval far beyond the test's patience: only
    // the NOTIFY can wake it.
    let shutdown = CancellationToken::new();
    let relay = store
        .relay(&bus)
        .config(RelayConfig::default().poll_interval(Duration::from_secs(3600)))
        .start(shutdown.clone());
    // The first batch ran at start (nothing to do); let the LISTEN happen,
    // then commit.
    let client = db.client().await;
    wait_until_async("the relay listening", PATIENCE, || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"choreo_outbox\"'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    for n in 0..3 {
        let tx = store.transaction().await.unwrap();
        tx.start_flow(
            &publisher,
            &OrderPlaced {
                order_id: n,
                cents: 0,
            },
        )
        .unwrap();
        tx.commit().await.unwrap();
        recv(
            &mut sub,
            "the event, woken by NOTIFY",
            Duration::from_secs(20),
        )
        .await
        .ack();
    }
    shutdown.cancel();
    relay.await.unwrap();

    // Not listening: polling alone.
    let shutdown = CancellationToken::new();
    let relay = store
        .relay(&bus)
        .config(
            RelayConfig::default()
                .listen(false)
                .poll_interval(Duration::from_millis(50)),
        )
        .start(shutdown.clone());
    let tx = store.transaction().await.unwrap();
    tx.start_flow(
        &publisher,
        &OrderPlaced {
            order_id: 9,
            cents: 0,
        },
    )
    .unwrap();
    tx.commit().await.unwrap();
    recv(&mut sub, "the event, found by polling", PATIENCE)
        .await
        .ack();
    shutdown.cancel();
    relay.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_no_longer_decodes_is_moved_aside_with_the_reason() {
    let db = Db::start();
    let store = db.store().await;
    let bus = InProcessBus::new();
    let mut sub = bus
        .subscribe(SubscribeOptions::new("test", ["orders"]))
        .await
        .unwrap();
    let publisher = Publisher::new(&bus, "checkout");
    let client = db.client().await;
    let commit = |n: i64| {
        let store = store.clone();
        let publisher = publisher.clone();
        async move {
            let tx = store.transaction().await.unwrap();
            let mut env = publisher
                .envelope(
                    &OrderPlaced {
                        order_id: n,
                        cents: 0,
                    },
                    None,
                )
                .unwrap();
            env.key = Some(Bytes::from_static(b"one-key"));
            tx.publish(env);
            tx.commit().await.unwrap();
        }
    };
    commit(1).await;
    // Two rows of the same key that no longer decode: one written by a newer
    // format, one whose headers were damaged by hand.
    client
        .batch_execute(
            "INSERT INTO choreo_outbox (lane, id, event_type, source, topic, key, correlation_id, time_us, content_type, data, format)
               SELECT lane, id || '-v2', event_type, source, topic, key, correlation_id, time_us, content_type, data, 2 FROM choreo_outbox WHERE seq = 1;
             INSERT INTO choreo_outbox (lane, id, event_type, source, topic, key, correlation_id, time_us, content_type, data, header_names, header_values)
               SELECT lane, id || '-hdr', event_type, source, topic, key, correlation_id, time_us, content_type, data, ARRAY['a', 'b'], ARRAY['\\x01'::bytea] FROM choreo_outbox WHERE seq = 1;",
        )
        .await
        .unwrap();
    commit(2).await;
    let relay = store.relay(&bus).config(quick_relay());
    let report = relay.relay_batch().await.unwrap();
    assert_eq!(
        (report.published, report.moved_aside, report.failure.clone()),
        (2, 2, None),
        "{report:?}"
    );
    for want in [1, 2] {
        let d = recv(&mut sub, "the good rows, in order", PATIENCE).await;
        assert_eq!(
            serde_json::from_slice::<OrderPlaced>(&d.envelope().data)
                .unwrap()
                .order_id,
            want
        );
        d.ack();
    }
    let dead = client
        .query(
            "SELECT id, reason FROM choreo_outbox_dead ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    let reasons: Vec<(String, String)> = dead.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(reasons.len(), 2);
    assert!(
        reasons[0].0.ends_with("-v2") && reasons[0].1.contains("format 2"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].0.ends_with("-hdr")
            && reasons[1].1.contains("2 header names but 1 header values"),
        "{reasons:?}"
    );
    assert_eq!(
        db.metric("choreo_outbox_moved_aside_total", &[("reason", "decode")]),
        2.0
    );
    // Never retried: nothing left, nothing more published.
    assert_eq!(
        db.count(&client, "choreo_outbox WHERE sent_at IS NULL")
            .await,
        0
    );
    let again = relay.relay_batch().await.unwrap();
    assert_eq!((again.published, again.moved_aside), (0, 0));
    assert!(
        try_recv(&mut sub, Duration::from_millis(200))
            .await
            .is_none()
    );
}

/// A bus that refuses one event type for good, as Kafka refuses a record over
/// its `message.max.bytes`, and fails everything while `down`.
#[derive(Clone)]
struct Refusing(InProcessBus, Arc<AtomicBool>);

impl Bus for Refusing {
    type Subscription = <InProcessBus as Bus>::Subscription;

    async fn publish(&self, envelope: Envelope) -> choreo_core::Result<()> {
        if self.1.load(Ordering::SeqCst) {
            return Err(choreo_core::Error::Closed);
        }
        if envelope.event_type.as_str() == "PaymentCaptured" {
            return Err(choreo_core::Error::Refused {
                event_type: envelope.event_type.to_string(),
                topic: envelope.topic.to_string(),
                reason: "2000000 bytes, over the broker's 1000000".into(),
            });
        }
        self.0.publish(envelope).await
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> choreo_core::Result<Self::Subscription> {
        self.0.subscribe(options).await
    }

    fn backend_name(&self) -> &'static str {
        "refusing"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_bus_refuses_for_good_is_moved_aside_and_a_passing_failure_is_retried() {
    let db = Db::start();
    let store = db.store().await;
    let bus = InProcessBus::new();
    let mut sub = bus
        .subscribe(SubscribeOptions::new("test", ["orders"]))
        .await
        .unwrap();
    let publisher = Publisher::new(&bus, "checkout");
    let tx = store.transaction().await.unwrap();
    tx.start_flow(
        &publisher,
        &PaymentCaptured {
            order_id: 1,
            seq: 1,
        },
    )
    .unwrap();
    tx.start_flow(
        &publisher,
        &OrderPlaced {
            order_id: 2,
            cents: 0,
        },
    )
    .unwrap();
    tx.commit().await.unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let refusing = Refusing(bus.clone(), down.clone());
    let report = store.relay(&refusing).relay_batch().await.unwrap();
    assert_eq!((report.published, report.moved_aside), (1, 1), "{report:?}");
    recv(&mut sub, "the other event", PATIENCE).await.ack();
    let client = db.client().await;
    let reason: String = client
        .query_one("SELECT reason FROM choreo_outbox_dead", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        reason.starts_with("refused by the bus:") && reason.contains("over the broker's"),
        "{reason}"
    );
    assert_eq!(
        db.metric("choreo_outbox_moved_aside_total", &[("reason", "refused")]),
        1.0
    );

    // A failure that may pass (the bus closed): the row stays, and the
    // lane stops there so that order holds.
    let tx = store.transaction().await.unwrap();
    tx.start_flow(
        &publisher,
        &OrderPlaced {
            order_id: 3,
            cents: 0,
        },
    )
    .unwrap();
    tx.commit().await.unwrap();
    down.store(true, Ordering::SeqCst);
    let report = store.relay(&refusing).relay_batch().await.unwrap();
    assert_eq!(report.published, 0);
    assert!(
        report
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("OrderPlaced")),
        "{report:?}"
    );
    assert_eq!(
        db.count(&client, "choreo_outbox WHERE sent_at IS NULL")
            .await,
        1
    );
    assert_eq!(
        db.metric(
            "choreo_outbox_relay_failures_total",
            &[("stage", "publish")]
        ),
        1.0
    );
    down.store(false, Ordering::SeqCst);
    let report = store.relay(&refusing).relay_batch().await.unwrap();
    assert_eq!(report.published, 1);
    recv(&mut sub, "the event, once the bus is back", PATIENCE)
        .await
        .ack();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_rows_and_old_inbox_rows_are_pruned_after_their_retention() {
    let db = Db::start();
    let store = db.store().await;
    let bus = InProcessBus::new();
    let publisher = Publisher::new(&bus, "checkout");
    let client = db.client().await;
    for n in 0..10 {
        let tx = store.transaction().await.unwrap();
        tx.start_flow(
            &publisher,
            &OrderPlaced {
                order_id: n,
                cents: 0,
            },
        )
        .unwrap();
        tx.commit().await.unwrap();
    }
    client
        .batch_execute(
            "INSERT INTO choreo_inbox (service, event_id, handled_at) VALUES ('payment', 'old', now() - interval '8 days'), ('payment', 'new', now())",
        )
        .await
        .unwrap();
    let relay = store
        .relay(&bus)
        .config(quick_relay().retention(Duration::from_secs(3600)));
    assert_eq!(relay.relay_batch().await.unwrap().published, 10);
    // Within the retention: kept.
    assert_eq!(
        relay.prune().await.unwrap(),
        choreo_postgres::Pruned {
            outbox: 0,
            inbox: 1
        }
    );
    client
        .batch_execute(
            "UPDATE choreo_outbox SET sent_at = sent_at - interval '2 hours' WHERE seq <= 4",
        )
        .await
        .unwrap();
    let pruned = relay.prune().await.unwrap();
    assert_eq!((pruned.outbox, pruned.inbox), (4, 0));
    assert_eq!(db.count(&client, "choreo_outbox").await, 6);
    assert_eq!(db.count(&client, "choreo_inbox").await, 1);
    assert_eq!(db.metric("choreo_outbox_pruned_total", &[]), 5.0);
    // Unsent rows are never pruned, however old.
    let tx = store.transaction().await.unwrap();
    tx.start_flow(
        &publisher,
        &OrderPlaced {
            order_id: 99,
            cents: 0,
        },
    )
    .unwrap();
    tx.commit().await.unwrap();
    client
        .batch_execute("UPDATE choreo_outbox SET created_at = now() - interval '30 days' WHERE sent_at IS NULL")
        .await
        .unwrap();
    relay.prune().await.unwrap();
    assert_eq!(
        db.count(&client, "choreo_outbox WHERE sent_at IS NULL")
            .await,
        1
    );
    let backlog = store.backlog().await.unwrap();
    assert_eq!(backlog.rows, 1);
    assert!(
        backlog.oldest >= Duration::from_secs(29 * 24 * 3600),
        "{backlog:?}"
    );
}
