//! Back-pressure of the in-process bus: a full partition holds back the
//! publishers that start work, never a handler, so services in a cycle
//! cannot wait for each other (or for themselves), whatever the bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::*;
use choreo_bus::{
    Context, HandlerError, InProcessBus, InProcessConfig, Publisher, Retention, Service,
};
use choreo_core::{Bus, Envelope, SubscribeOptions};
use choreo_testkit::{metric, recv, wait_until};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderCancelled {
    order_id: u64,
}
choreo_core::event!(OrderCancelled, topic = "orders");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Countdown {
    n: u32,
}
choreo_core::event!(Countdown, topic = "countdown");

/// How long a run that can finish gets: far more than it needs. A run that
/// waits for itself never finishes, and fails here instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

fn small_bus(max_events_per_partition: usize) -> (InProcessBus, prometheus::Registry) {
    let retention = Retention::default().max_events_per_partition(max_events_per_partition);
    let bus = InProcessBus::with_config(
        InProcessConfig::default()
            .partitions(1)
            .retention(retention),
    );
    let registry = prometheus::Registry::new();
    bus.register_metrics(&registry).unwrap();
    (bus, registry)
}

/// The order saga's cycle, cut down: `payment` reads `orders` and writes
/// `payments`; `checkout` reads `payments` and writes `orders` again (the
/// cancellation); `notifications` reads the cancellations. Orders are placed
/// as fast as the bus takes them, far more than the bound. Before handlers'
/// publishes stopped waiting, `checkout` waited for room in `orders` (full of
/// new orders), `payment` for room in `payments` (which `checkout` no longer
/// drained), and the orders' publisher for `payment`: no one ever moved again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_in_a_cycle_never_wait_for_each_other() {
    let (bus, registry) = small_bus(8);
    let (_, metrics) = crate::common::metrics();
    let stop = CancellationToken::new();
    let done = Arc::new(AtomicU64::new(0));
    let payment = Service::new("payment")
        .on(|o: OrderPlaced, ctx: Context| async move {
            ctx.emit(&PaymentCaptured {
                order_id: o.order_id,
            })?;
            Ok::<(), HandlerError>(())
        })
        .metrics(metrics.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let checkout = Service::new("checkout")
        .on(|p: PaymentCaptured, ctx: Context| async move {
            ctx.emit(&OrderCancelled {
                order_id: p.order_id,
            })?;
            Ok::<(), HandlerError>(())
        })
        .metrics(metrics.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let seen = done.clone();
    let notifications = Service::new("notifications")
        .on(move |_: OrderCancelled, _: Context| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::Relaxed);
                Ok::<(), HandlerError>(())
            }
        })
        .metrics(metrics.clone())
        .start(&bus, stop.clone())
        .await
        .unwrap();

    const ORDERS: u64 = 2_000;
    let run = async {
        let shop = Publisher::new(&bus, "shop");
        for order_id in 0..ORDERS {
            shop.start_flow(&OrderPlaced { order_id }).await.unwrap();
        }
        while done.load(Ordering::Relaxed) < ORDERS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(DEADLINE, run).await.is_err() {
        panic!(
            "the cycle waited for itself: {} of {ORDERS} orders cancelled after {DEADLINE:?}\n{}",
            done.load(Ordering::Relaxed),
            choreo_bus::render(&[registry])
        );
    }
    stop.cancel();
    for s in [payment, checkout, notifications] {
        s.await.unwrap();
    }
}

/// A service that writes to the topic it reads: with a bound of 4 and 50
/// countdowns of 6 steps, its own unsettled events fill the partition it
/// publishes to. It must never wait for room only it could make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_feeds_itself_never_waits_for_itself() {
    let (bus, registry) = small_bus(4);
    let (_, metrics) = crate::common::metrics();
    let stop = CancellationToken::new();
    let handled = Arc::new(AtomicU64::new(0));
    let count = handled.clone();
    let svc = Service::new("countdown")
        .on(move |c: Countdown, ctx: Context| {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::Relaxed);
                if c.n > 0 {
                    ctx.emit(&Countdown { n: c.n - 1 })?;
                }
                Ok::<(), HandlerError>(())
            }
        })
        .partition_concurrency(8)
        .metrics(metrics)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    const FLOWS: u64 = 50;
    let run = async {
        let p = Publisher::new(&bus, "starter");
        for _ in 0..FLOWS {
            p.start_flow(&Countdown { n: 5 }).await.unwrap();
        }
        while handled.load(Ordering::Relaxed) < FLOWS * 6 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(DEADLINE, run).await.is_err() {
        panic!(
            "the service waited for itself: {} of {} countdown steps handled after {DEADLINE:?}\n{}",
            handled.load(Ordering::Relaxed),
            FLOWS * 6,
            choreo_bus::render(&[registry])
        );
    }
    stop.cancel();
    svc.await.unwrap();
}

/// Handlers' events go past a full partition's bound; then the door is
/// closed: a flow started anywhere on the bus waits until that partition is
/// back under its bound. A consumer that drains it slowly but steadily is not
/// reported as stalled, however long the publisher waits.
#[tokio::test(start_paused = true)]
async fn events_past_the_bound_hold_new_work_back_until_they_drain() {
    let (bus, registry) = small_bus(1);
    let (_, metrics) = crate::common::metrics();
    let mut reader = bus
        .subscribe(SubscribeOptions::new("reader", ["payments"]))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    // One order, six payments (more than the bound of 1, all at once).
    let fan_out = Service::new("fan-out")
        .on(|o: OrderPlaced, ctx: Context| async move {
            for _ in 0..6 {
                ctx.emit(&PaymentCaptured {
                    order_id: o.order_id,
                })?;
            }
            Ok::<(), HandlerError>(())
        })
        .receipts(None)
        .metrics(metrics)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    let shop = Publisher::new(&bus, "shop");
    shop.start_flow(&OrderPlaced { order_id: 1 }).await.unwrap();
    wait_until("the handler to publish past the bound", PATIENCE, || {
        bus.retained("payments").len() == 6
    })
    .await;
    assert_eq!(
        metric(
            &registry,
            "choreo_bus_overflow_total",
            &[("topic", "payments")]
        ),
        5.0,
        "five of the six went past the bound of 1"
    );

    // A new flow, on a topic with room: it waits for `payments` to drain.
    let b = bus.clone();
    let waiting = tokio::spawn(async move {
        Publisher::new(&b, "shop")
            .start_flow(&OrderShipped { order_id: 2 })
            .await
    });
    wait_until("the new flow to wait", PATIENCE, || {
        metric(
            &registry,
            "choreo_bus_publish_waits_total",
            &[("topic", "shipping")],
        ) == 1.0
    })
    .await;
    // The reader takes 4 s per event: 20 s until `payments` is back at its
    // bound, longer than the 10 s after which a publisher looks for a
    // consumer that settles nothing.
    for past in (1..=5).rev() {
        let d = recv(&mut reader, "a payment", PATIENCE).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(
            !waiting.is_finished(),
            "started while payments held {past} past the bound"
        );
        d.ack();
    }
    tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the door opens once payments is back at its bound")
        .unwrap()
        .unwrap();
    // Nothing was lost on the way.
    recv(&mut reader, "the last payment", PATIENCE).await.ack();
    assert_eq!(bus.retained("shipping").len(), 1);
    assert_eq!(
        metric(&registry, "choreo_bus_publish_stalls_total", &[]),
        0.0,
        "the reader made progress throughout"
    );
    assert_eq!(
        metric(&registry, "choreo_bus_unread_evicted_total", &[]),
        0.0
    );
    stop.cancel();
    fan_out.await.unwrap();
}

/// Captures what the bus logs, for one test on the current thread.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A group that reads nothing holds a publisher back: the wait is never
/// silent. Each period the group settles nothing is a warning naming the
/// topic, the partition and the group, and a count in
/// `choreo_bus_publish_stalls_total`; once it settles, the publish goes on.
#[test]
fn a_publisher_held_back_by_a_group_that_settles_nothing_says_so() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let (bus, registry) = small_bus(1);
            let mut stuck = bus
                .subscribe(SubscribeOptions::new("stuck", ["t"]))
                .await
                .unwrap();
            bus.publish(Envelope::new("Tick", "t", "{}")).await.unwrap();
            let b = bus.clone();
            let waiting =
                tokio::spawn(async move { b.publish(Envelope::new("Tick", "t", "{}")).await });
            // Two periods of 10 s (the default) with nothing settled.
            tokio::time::sleep(Duration::from_secs(25)).await;
            assert!(!waiting.is_finished());
            let stalls = [("topic", "t"), ("partition", "0"), ("group", "stuck")];
            assert_eq!(
                metric(&registry, "choreo_bus_publish_stalls_total", &stalls),
                2.0
            );
            let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
            assert!(
                text.contains("WARN")
                    && text.contains("group 'stuck' settled nothing in partition 0 of 't' for 10s"),
                "{text}"
            );
            recv(&mut stuck, "the oldest event", PATIENCE).await.ack();
            tokio::time::timeout(PATIENCE, waiting)
                .await
                .expect("the publish goes on once the group settles")
                .unwrap()
                .unwrap();
            assert_eq!(
                metric(&registry, "choreo_bus_publish_stalls_total", &stalls),
                2.0
            );
        })
    });
}
