//! The partition worker: handles one partition's deliveries in order (or up
//! to `partition_concurrency` at once), routes each to its handler's stack,
//! acks the types the service has no handler for, and keeps the in-flight
//! gauge and the per-route tallies.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use choreo_core::{Bus, Delivery, MALFORMED_HEADER, Name, Outcome, ReceiptHead, Timestamp};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Semaphore, mpsc};

use super::dispatch::Run;
use super::metrics::{RouteMetrics, RouteTally};
use super::pipeline::Settled;
use super::running::Runtime;
use super::service::StackService;

/// A service's routes by event type. A handful, so a list: names are
/// compared by address first, with no hashing per delivery.
pub(super) type Routes = Vec<(Name, WorkerRoute)>;

/// The position of the route of `event_type`.
pub(super) fn route_index(routes: &Routes, event_type: &Name) -> Option<usize> {
    routes.iter().position(|(t, _)| t == event_type)
}

pin_project_lite::pin_project! {
    /// One handling, watched for its first wait: from then until it settles
    /// the in-flight gauge counts it, and the worker's gathered observations
    /// are flushed first, so none is held back while a handler waits. A
    /// handling that completes without waiting moves neither. Yields the
    /// handling's output and whether it waited. The worker passes the
    /// handling pinned where it was made (`Pin<&mut _>`): it is large, and
    /// moving it into this wrapper copied it.
    struct Tracked<'a, F> {
        #[pin]
        handling: F,
        in_flight: &'a prometheus::IntGauge,
        tallies: &'a mut [RouteTally],
        // Whether the gauge counts this handling now.
        waited: bool,
    }

    impl<F> PinnedDrop for Tracked<'_, F> {
        // Abandoned while waiting (a shutdown past its grace period).
        fn drop(this: Pin<&mut Self>) {
            if this.waited {
                this.in_flight.dec();
            }
        }
    }
}

impl<'a, F> Tracked<'a, F> {
    fn new(
        handling: F,
        in_flight: &'a prometheus::IntGauge,
        tallies: &'a mut [RouteTally],
    ) -> Self {
        Tracked {
            handling,
            in_flight,
            tallies,
            waited: false,
        }
    }
}

impl<F: Future> Future for Tracked<'_, F> {
    type Output = (F::Output, bool);

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        match this.handling.poll(cx) {
            std::task::Poll::Ready(out) => {
                let waited = std::mem::take(this.waited);
                if waited {
                    this.in_flight.dec();
                }
                std::task::Poll::Ready((out, waited))
            }
            std::task::Poll::Pending => {
                if !*this.waited {
                    *this.waited = true;
                    this.in_flight.inc();
                    this.tallies.iter_mut().for_each(RouteTally::flush);
                }
                std::task::Poll::Pending
            }
        }
    }
}

/// One handler's middleware stack and metrics, as a worker holds them.
#[derive(Clone)]
pub(super) struct WorkerRoute {
    pub(super) stack: StackService,
    pub(super) metrics: RouteMetrics,
    /// The beginning of this route's receipts (see [`ReceiptHead`]), made
    /// with the route when receipts are on.
    pub(super) receipt_head: Option<Arc<ReceiptHead>>,
}

impl<B: Bus> Runtime<B> {
    /// Handles one partition's deliveries, which come in runs on `rx`; each
    /// run taken off the queue gives its room back to `room`.
    pub(super) async fn worker(
        self: Arc<Self>,
        rx: mpsc::UnboundedReceiver<Run>,
        room: Arc<Semaphore>,
        routes: Routes,
    ) {
        if self.concurrency <= 1 {
            self.in_order(rx, room, routes).await
        } else {
            self.concurrent(rx, room, routes).await
        }
    }

    /// The worker with `partition_concurrency` 1: one delivery at a time, in
    /// the partition's order.
    async fn in_order(
        &self,
        mut rx: mpsc::UnboundedReceiver<Run>,
        room: Arc<Semaphore>,
        mut routes: Routes,
    ) {
        let mut ignored: HashMap<Name, prometheus::IntCounter> = HashMap::default();
        let mut tallies: Vec<RouteTally> = routes
            .iter()
            .map(|(_, r)| RouteTally::new(&r.metrics))
            .collect();
        // One run in hand at a time. Receiving takes tokio's task budget,
        // so a worker whose queue never empties still yields.
        while let Some(run) = rx.recv().await {
            // Until the run is handled and its receipts published.
            let _busy = self.activity.as_ref().map(|a| a.begin());
            room.add_permits(run.len());
            // The token once per run, the flag per delivery.
            self.stop_requested();
            // The reading that ended the last handling of this run, while
            // nothing has waited since: the next handling starts there.
            // (Every delivery of the run was published before it.)
            let mut clock: Option<Timestamp> = None;
            for d in run {
                if self.stopping() {
                    // Not started: give it back.
                    drop(d);
                    continue;
                }
                let started = clock.take().unwrap_or_else(Timestamp::now);
                match route_index(&routes, &d.envelope().event_type) {
                    Some(i) => {
                        // Pinned where it is made: the handling is
                        // large, and is not moved again.
                        let handling = std::pin::pin!(self.process(d, &mut routes[i].1, started));
                        let ((observed, ended), waited) =
                            Tracked::new(handling, &self.in_flight, &mut tallies).await;
                        tallies[i].record(&observed);
                        if !waited {
                            clock = ended;
                        }
                    }
                    None if is_malformed(&d) => {
                        let mut route = self.malformed_route(&d, &routes);
                        let handling = self.process(d, &mut route, started);
                        let ((observed, _), _) =
                            Tracked::new(handling, &self.in_flight, &mut tallies).await;
                        route.metrics.record(&observed);
                    }
                    // Not boxed: its future is smaller than a handling's,
                    // whose room in the worker's future it shares.
                    None => self.ignore(d, &mut ignored).await,
                }
            }
            // Before waiting for more.
            tallies.iter_mut().for_each(RouteTally::flush);
        }
    }

    /// The worker with `partition_concurrency` above 1: up to that many
    /// deliveries of the partition at once, started in order.
    async fn concurrent(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Run>,
        room: Arc<Semaphore>,
        routes: Routes,
    ) {
        let mut ignored: HashMap<Name, prometheus::IntCounter> = HashMap::default();
        let mut running = FuturesUnordered::new();
        // Received, not started yet: the rest of the last run.
        let mut received = Run::new().into_iter();
        // Held while anything received is not yet handled, receipts included.
        let mut busy = None;
        loop {
            // Start what was received, up to the limit.
            while running.len() < self.concurrency {
                let Some(d) = received.next() else { break };
                if self.stop_requested() {
                    drop(d);
                    continue;
                }
                let route = match route_index(&routes, &d.envelope().event_type) {
                    Some(i) => Some(routes[i].1.clone()),
                    None if is_malformed(&d) => Some(self.malformed_route(&d, &routes)),
                    None => None,
                };
                match route {
                    Some(mut route) => {
                        let rt = self.clone();
                        running.push(async move {
                            let ((observed, _), _) = {
                                let handling =
                                    std::pin::pin!(rt.process(d, &mut route, Timestamp::now()));
                                Tracked::new(handling, &rt.in_flight, &mut []).await
                            };
                            route.metrics.record(&observed);
                        });
                    }
                    // Not boxed: its future is smaller than a handling's,
                    // whose room in the worker's future it shares.
                    None => self.ignore(d, &mut ignored).await,
                }
            }
            if running.is_empty() && received.len() == 0 {
                busy = None;
            }
            tokio::select! {
                // Below the limit, everything received has started.
                run = rx.recv(), if running.len() < self.concurrency => {
                    let Some(run) = run else { break };
                    room.add_permits(run.len());
                    received = run.into_iter();
                    if busy.is_none() {
                        busy = self.activity.as_ref().map(|a| a.begin());
                    }
                }
                Some(()) = running.next(), if !running.is_empty() => {}
            }
        }
        while running.next().await.is_some() {}
        drop(busy);
    }

    /// A delivery the service does not route: acked, counted, and with
    /// receipts on recorded with the outcome `ignored`, so that an event
    /// which reached the service and was passed over can be told from one
    /// that never arrived.
    async fn ignore(&self, d: Delivery, counters: &mut HashMap<Name, prometheus::IntCounter>) {
        let started = Timestamp::now();
        let env = d.envelope().clone();
        let place = (d.partition(), d.offset());
        counters
            .entry(env.event_type.clone())
            .or_insert_with(|| {
                self.metrics
                    .ignored(&self.shared.name, &env.topic, &env.event_type)
            })
            .inc();
        d.ack();
        let Some(topic) = &self.receipts else { return };
        let reason = format!("no handler for event type '{}'", env.event_type);
        let settled = Settled::new(Outcome::Ignored, 0, Some(reason));
        let envelope = self.receipt(topic, &env, place, settled, (started, started), None);
        if let Err(e) = self.bus.publish_shared(envelope).await {
            self.receipt_lost(topic, &e);
        }
    }

    /// A route for a malformed delivery of a type the service has no handler
    /// for (its type could not be read): [`handle`](Self::handle)
    /// dead-letters it before any handler runs, so the stack is never called.
    fn malformed_route(&self, d: &Delivery, routes: &Routes) -> WorkerRoute {
        let env = d.envelope();
        let stack = routes
            .first()
            .expect("a service has at least one handler")
            .1
            .stack
            .clone();
        WorkerRoute {
            stack,
            metrics: self
                .metrics
                .route(&self.shared.name, &env.topic, &env.event_type),
            receipt_head: None,
        }
    }
}

/// Whether the backend marked the delivery as only partly readable.
pub(super) fn is_malformed(d: &Delivery) -> bool {
    d.envelope().headers.get(MALFORMED_HEADER).is_some()
}
