//! Middleware: per-attempt timeout (tower's), tower layers in the documented
//! order, tower's concurrency limit, partition concurrency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use crate::common::*;
use choreo_bus::{
    BoxError, Context, Handled, HandlerError, InProcessBus, Invocation, Publisher, Retry, Service,
};
use choreo_core::{Outcome, dlq_headers};
use choreo_testkit::wait_until;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn an_attempt_that_exceeds_the_timeout_fails_and_is_retried() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(|_o: OrderPlaced, ctx: Context| async move {
            if ctx.attempt() < 3 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok::<(), HandlerError>(())
        })
        .timeout(Duration::from_millis(20))
        .retry(Retry::default().backoff(Duration::from_millis(1), Duration::from_millis(1)))
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
    let r = &receipts(&bus)[0];
    assert_eq!((r.outcome, r.attempts), (Outcome::Acked, 3));
}

#[tokio::test]
async fn an_attempt_that_always_times_out_is_dead_lettered_saying_so() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let stop = CancellationToken::new();
    let svc = Service::new("payment")
        .on(|_o: OrderPlaced, _ctx: Context| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<(), HandlerError>(())
        })
        .timeout(Duration::from_millis(5))
        .retry(
            Retry::default()
                .max_attempts(2)
                .backoff(Duration::from_millis(1), Duration::from_millis(1)),
        )
        .metrics(m)
        .start(&bus, stop.clone())
        .await
        .unwrap();
    Publisher::new(&bus, "checkout")
        .start_flow(&OrderPlaced { order_id: 1 })
        .await
        .unwrap();
    wait_until("the dead letter", PATIENCE, || {
        !bus.retained("orders.dlq").is_empty()
    })
    .await;
    stop.cancel();
    svc.await.unwrap();
    let reason = bus.retained("orders.dlq")[0]
        .headers
        .get_str(dlq_headers::REASON)
        .unwrap()
        .to_owned();
    assert_eq!(reason, "handler failed after 2 attempts: timed out");
}

/// A layer that records the order in which invocations pass through it.
#[derive(Clone)]
struct Record {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl<S> tower::Layer<S> for Record {
    type Service = Recorded<S>;
    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            name: self.name,
            log: self.log.clone(),
        }
    }
}

#[derive(Clone)]
struct Recorded<S> {
    inner: S,
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl<S> tower::Service<Invocation> for Recorded<S>
where
    S: tower::Service<Invocation, Response = Handled, Error = BoxError>,
{
    type Response = Handled;
    type Error = BoxError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, inv: Invocation) -> S::Future {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}#{}", self.name, inv.attempt()));
        self.inner.call(inv)
    }
}

#[tokio::test]
async fn layers_see_each_attempt_in_the_order_they_were_added() {
    let bus = InProcessBus::new();
    let (_r, m) = metrics();
    let log = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let handler_log = log.clone();
    let svc = Service::new("payment")
        .on(move |_o: OrderPlaced, ctx: Context| {
            handler_log
                .lock()
                .unwrap()
                .push(format!("handler#{}", ctx.attempt()));
            let fail = ctx.attempt() == 1;
            async move {
                if fail {
                    Err(HandlerError::msg("once"))
                } else {
                    Ok(())
                }
            }
        })
        .layer(Record {
            name: "outer",
            log: log.clone(),
        })
        .layer(Record {
            name: "inner",
            log: log.clone(),
        })
        .retry(Retry::default().backoff(Duration::from_millis(1), Duration::from_millis(1)))
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
    assert_eq!(
        *log.lock().unwrap(),
        [
            "outer#1",
            "inner#1",
            "handler#1",
            "outer#2",
            "inner#2",
            "handler#2"
        ],
        "the first layer added sees each attempt first; layers sit inside retry"
    );
}

async fn track_concurrency(now: Arc<AtomicUsize>, peak: Arc<AtomicUsize>) {
    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
    peak.fetch_max(n, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(5)).await;
    now.fetch_sub(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_run_in_parallel_and_towers_concurrency_limit_caps_them() {
    for (limit, expect_max) in [(None, 4), (Some(2), 2)] {
        let bus = InProcessBus::new(); // 4 partitions
        let (_r, m) = metrics();
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n2, p2) = (now.clone(), peak.clone());
        let mut svc = Service::new("payment").on(move |_o: OrderPlaced, _ctx: Context| {
            let (n, p) = (n2.clone(), p2.clone());
            async move {
                track_concurrency(n, p).await;
                Ok::<(), HandlerError>(())
            }
        });
        if let Some(l) = limit {
            svc = svc.layer(tower::limit::ConcurrencyLimitLayer::new(l));
        }
        let stop = CancellationToken::new();
        let handle = svc.metrics(m).start(&bus, stop.clone()).await.unwrap();
        let p = Publisher::new(&bus, "checkout");
        for i in 0..80 {
            p.start_flow(&OrderPlaced { order_id: i }).await.unwrap();
        }
        wait_until("all handled", PATIENCE, || receipts(&bus).len() == 80).await;
        stop.cancel();
        handle.await.unwrap();
        let peak = peak.load(Ordering::SeqCst);
        assert!(peak <= expect_max, "limit {limit:?}: peak {peak}");
        assert!(
            peak >= 2,
            "limit {limit:?}: partitions should run in parallel, peak {peak}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partition_is_handled_in_order_unless_configured_otherwise() {
    for concurrency in [1usize, 4] {
        let bus = InProcessBus::with_config(choreo_bus::InProcessConfig::default().partitions(1));
        let (_r, m) = metrics();
        let order = Arc::new(Mutex::new(Vec::new()));
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (o2, n2, p2) = (order.clone(), now.clone(), peak.clone());
        let stop = CancellationToken::new();
        let handle = Service::new("payment")
            .on(move |o: OrderPlaced, _ctx: Context| {
                let (order, n, p) = (o2.clone(), n2.clone(), p2.clone());
                async move {
                    track_concurrency(n, p).await;
                    order.lock().unwrap().push(o.order_id);
                    Ok::<(), HandlerError>(())
                }
            })
            .partition_concurrency(concurrency)
            .metrics(m)
            .start(&bus, stop.clone())
            .await
            .unwrap();
        let p = Publisher::new(&bus, "checkout");
        for i in 0..40 {
            p.start_flow(&OrderPlaced { order_id: i }).await.unwrap();
        }
        wait_until("all handled", PATIENCE, || receipts(&bus).len() == 40).await;
        stop.cancel();
        handle.await.unwrap();
        let peak = peak.load(Ordering::SeqCst);
        if concurrency == 1 {
            assert_eq!(
                *order.lock().unwrap(),
                (0..40).collect::<Vec<_>>(),
                "one partition, one at a time: in order"
            );
            assert_eq!(peak, 1);
        } else {
            assert!(peak > 1 && peak <= concurrency, "peak {peak}");
        }
    }
}
