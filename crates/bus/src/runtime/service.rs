//! `Service`: a name and handlers, run against any [`Bus`].

use rustc_hash::FxHashMap as HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use choreo_core::{
    Bus, Codecs, DeadLetter, Delivery, Envelope, Event, EventId, Limits, MALFORMED_HEADER, Name,
    Outcome, RECEIPTS_TOPIC, Receipt, StartFrom, SubscribeOptions, Subscription, Timestamp,
    dead_letter_topic,
};
use futures_util::StreamExt;
use futures_util::future::Either;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

use super::context::{Context, ServiceShared};
use super::handler::{
    BoxError, EnvelopeHandlerService, Failure, FailureKind, Handled, Handler, HandlerError,
    HandlerService, Invocation, is_refused,
};
use super::idempotency::Idempotency;
use super::metrics::{Metrics, Observation, PublishedCounters, RouteMetrics, RouteTally};
use super::retry::Retry;
use super::trace::HandleSpan;
use crate::identity;
use crate::{Error, Result};

/// The type-erased middleware stack of one handler.
pub type StackService = BoxCloneService<Invocation, Handled, BoxError>;

type LayerFn = Arc<dyn Fn(StackService) -> StackService + Send + Sync>;

/// Deliveries the consumer loop takes from its subscription at a time.
const BATCH: usize = 64;

/// Builds a handler's stack with the service's timeout, once the service is
/// configured: the handler and tower's `Timeout` are erased together, so an
/// attempt allocates one boxed future, not one per layer.
type StackBuilder = Box<dyn FnOnce(Option<Duration>) -> StackService + Send + Sync>;

fn stack_builder<S>(handler: S) -> StackBuilder
where
    S: tower::Service<Invocation, Response = Handled, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    Box::new(move |timeout| match timeout {
        Some(t) => BoxCloneService::new(tower::timeout::TimeoutLayer::new(t).layer(handler)),
        None => BoxCloneService::new(handler),
    })
}

/// Names the dead-letter topic of a source topic.
pub type DeadLetterNaming = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// How a service consumes; every field has a default.
#[derive(Clone)]
pub struct ServiceConfig {
    /// Consumer group. Default: the service name, so replicas of a service
    /// split the partitions and different services each see every event.
    pub group: Option<String>,
    /// Where a new group starts. Default [`StartFrom::Earliest`].
    pub start: StartFrom,
    /// Deliveries of one partition handled at once. Default 1: in order.
    /// Above 1, a partition's events may be handled out of order.
    pub partition_concurrency: usize,
    /// Deliveries queued per partition ahead of its handler. Default 256.
    /// Bounded: a slow handler must not make the consumer buffer without limit.
    pub partition_queue: usize,
    /// How long shutdown waits for in-flight handlers. Default 30 s. Handlers
    /// still running after it are abandoned; their deliveries are not settled,
    /// so the bus delivers them again.
    pub shutdown_grace: Duration,
    /// Topic receipts are published to; `None` switches receipts off.
    /// Default `choreo.receipts`.
    pub receipts: Option<String>,
    /// Dead-letter topic of each source topic. Default `<topic>.dlq`.
    pub dead_letter_topic: DeadLetterNaming,
    /// Size limits: events over them are refused when emitted and
    /// dead-lettered when received. Default [`Limits::default`].
    pub limits: Limits,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            group: None,
            start: StartFrom::Earliest,
            partition_concurrency: 1,
            partition_queue: 256,
            shutdown_grace: Duration::from_secs(30),
            receipts: Some(RECEIPTS_TOPIC.to_owned()),
            dead_letter_topic: Arc::new(dead_letter_topic),
            limits: Limits::default(),
        }
    }
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("group", &self.group)
            .field("start", &self.start)
            .field("partition_concurrency", &self.partition_concurrency)
            .field("partition_queue", &self.partition_queue)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("receipts", &self.receipts)
            .finish_non_exhaustive()
    }
}

struct RouteSpec {
    event_type: Name,
    topic: Name,
    handler: StackBuilder,
}

/// A service: a name and the handlers of the events it reacts to.
///
/// ```no_run
/// use choreo_bus::{Context, HandlerError, InProcessBus, Retry, Service};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct OrderPlaced { order_id: u64 }
/// # choreo_core::event!(OrderPlaced, topic = "orders");
/// # #[derive(Serialize, Deserialize)] struct PaymentCaptured { order_id: u64 }
/// # choreo_core::event!(PaymentCaptured, topic = "payments");
///
/// async fn capture(order: OrderPlaced, ctx: Context) -> Result<(), HandlerError> {
///     ctx.emit(&PaymentCaptured { order_id: order.order_id })?;
///     Ok(())
/// }
///
/// # async fn run() -> Result<(), choreo_bus::Error> {
/// let bus = InProcessBus::new();
/// Service::new("payment")
///     .on(capture)
///     .retry(Retry::default().max_attempts(3))
///     .run(&bus) // until ctrl-c
///     .await
/// # }
/// ```
///
/// # What happens to a delivery
///
/// Every delivery goes through the same steps, in this order, and ends in
/// exactly one [`Outcome`], decided in one place:
///
/// 1. **Routing**: an event type the service has no handler for (or a record
///    that names no type) is acked and counted in
///    `choreo_deliveries_ignored_total` → `ignored`. A
///    **malformed** record (the backend could only partly read it and set
///    [`MALFORMED_HEADER`](choreo_core::MALFORMED_HEADER)) is dead-lettered at
///    once with reason `malformed record: …`, whatever its type → `dead_lettered`.
/// 2. **Idempotency** ([`Service::idempotency`]): an id this service already
///    handled is acked without running the handler → `duplicate`.
/// 3. **Retry** ([`Service::retry`]) around each attempt, which passes through
/// 4. the **layers** added with [`Service::layer`], the first added outermost
///    (it sees each attempt first), then
/// 5. the **timeout** ([`Service::timeout`]), then
/// 6. **decoding** the payload into the handler's type (a payload that does
///    not decode is dead-lettered at once with reason `decode error: …`) and
///    the **handler**, with panics caught and treated as errors.
/// 7. **Decision**: success → the emitted events are published, then the
///    delivery is acked → `acked` (if publishing fails, the delivery is given
///    back → `redelivered`, unless the backend refused the events, as the
///    Kafka producer does a record over its `message.max.bytes`: the next
///    delivery would emit the same, so → `dead_lettered`); failure after the
///    last attempt, or a permanent error → the event goes to the dead-letter
///    topic with the reason, attempts, origin and service in its headers,
///    then is acked → `dead_lettered`;
///    shutdown during retries → given back → `redelivered`.
/// 8. **Receipt** published (unless switched off), metrics and spans recorded.
pub struct Service {
    name: Name,
    routes: Vec<RouteSpec>,
    config: ServiceConfig,
    retry: Retry,
    timeout: Option<Duration>,
    idempotency: Idempotency,
    layers: Vec<LayerFn>,
    codecs: Codecs,
    metrics: Option<Metrics>,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field(
                "handles",
                &self
                    .routes
                    .iter()
                    .map(|r| r.event_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("idempotency", &self.idempotency)
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl Service {
    /// A service called `name` with no handlers yet. Defaults: retry 5 attempts
    /// with backoff from 100 ms, a 30 s timeout per attempt, in-memory
    /// idempotency, JSON, receipts on, metrics on Prometheus' default registry.
    pub fn new(name: impl Into<Name>) -> Self {
        Service {
            name: name.into(),
            routes: Vec::new(),
            config: ServiceConfig::default(),
            retry: Retry::default(),
            timeout: Some(Duration::from_secs(30)),
            idempotency: Idempotency::default(),
            layers: Vec::new(),
            codecs: Codecs::json(),
            metrics: None,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Handles events of type `E` with `handler`. One handler per event type.
    ///
    /// # Panics
    /// If `E` already has a handler in this service.
    pub fn on<E: Event, H: Handler<E>>(self, handler: H) -> Self {
        self.route(
            Name::from_static(E::TYPE),
            Name::from_static(E::TOPIC),
            stack_builder(HandlerService::<E, H>::new(handler)),
        )
    }

    /// Handles events of type `event_type` on `topic` as raw envelopes: for
    /// events the service does not model as Rust types (adapters, forwarders,
    /// simulated services). Emit through the context with
    /// [`Context::emit_raw`](crate::Context::emit_raw).
    ///
    /// # Panics
    /// If `event_type` already has a handler in this service.
    pub fn on_envelope<H, Fut>(
        self,
        event_type: impl Into<Name>,
        topic: impl Into<Name>,
        handler: H,
    ) -> Self
    where
        H: Fn(Arc<Envelope>, Context) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.route(
            event_type.into(),
            topic.into(),
            stack_builder(EnvelopeHandlerService::new(handler)),
        )
    }

    fn route(mut self, event_type: Name, topic: Name, handler: StackBuilder) -> Self {
        assert!(
            !self.routes.iter().any(|r| r.event_type == event_type),
            "service '{}' already has a handler for '{}'",
            self.name,
            event_type
        );
        self.routes.push(RouteSpec {
            event_type,
            topic,
            handler,
        });
        self
    }

    /// The event types handled, with their topics.
    pub fn handles(&self) -> Vec<(&str, &str)> {
        self.routes
            .iter()
            .map(|r| (r.event_type.as_str(), r.topic.as_str()))
            .collect()
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the timeout of each attempt (tower's `Timeout`); `None` for none.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into();
        self
    }

    /// Sets how deliveries are deduplicated.
    pub fn idempotency(mut self, idempotency: Idempotency) -> Self {
        self.idempotency = idempotency;
        self
    }

    /// Adds a tower layer around each attempt of every handler, inside retry
    /// and outside the timeout. The first layer added is the outermost: it
    /// sees each attempt first. Use tower's own layers
    /// (`tower::limit::ConcurrencyLimitLayer`, `RateLimitLayer`, …) or yours;
    /// errors a layer returns count as transient handler failures.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<StackService> + Send + Sync + 'static,
        L::Service: tower::Service<Invocation, Response = Handled> + Clone + Send + 'static,
        <L::Service as tower::Service<Invocation>>::Error: Into<BoxError> + 'static,
        <L::Service as tower::Service<Invocation>>::Future: Send + 'static,
    {
        self.layers.push(Arc::new(move |inner: StackService| {
            BoxCloneService::new(layer.layer(inner).map_err(Into::into))
        }));
        self
    }

    /// Sets the codecs (JSON by default).
    pub fn codecs(mut self, codecs: Codecs) -> Self {
        self.codecs = codecs;
        self
    }

    /// Uses these metric families instead of the ones on the default registry.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sets the whole consumer configuration.
    pub fn config(mut self, config: ServiceConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the consumer group (default: the service name).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = Some(group.into());
        self
    }

    /// Sets where a new consumer group starts.
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.config.start = start;
        self
    }

    /// Sets how many deliveries of one partition run at once (1 keeps order).
    pub fn partition_concurrency(mut self, n: usize) -> Self {
        self.config.partition_concurrency = n.max(1);
        self
    }

    /// Sets the receipts topic, or `None` to switch receipts off.
    pub fn receipts(mut self, topic: Option<&str>) -> Self {
        self.config.receipts = topic.map(str::to_owned);
        self
    }

    /// Sets the size limits of emitted and received events.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
        self
    }

    /// Sets how long shutdown waits for in-flight handlers.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Runs until ctrl-c (SIGINT), then shuts down gracefully.
    pub async fn run<B: Bus>(self, bus: &B) -> Result<()> {
        let token = CancellationToken::new();
        let on_signal = token.clone();
        let signal = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("ctrl-c: shutting down");
                on_signal.cancel();
            }
        });
        let result = self.run_until(bus, token).await;
        signal.abort();
        result
    }

    /// Joins the consumer group, then runs in a background task until
    /// `shutdown` is cancelled. When this returns the service is subscribed:
    /// events published from now on reach it (and, for a new group starting
    /// at the earliest event, those retained before too). Await the handle to
    /// wait for the shutdown to finish.
    pub async fn start<B: Bus>(
        self,
        bus: &B,
        shutdown: CancellationToken,
    ) -> Result<ServiceHandle> {
        let joined = self.join(bus, shutdown).await?;
        let name = joined.runtime.shared.name.to_string();
        Ok(ServiceHandle {
            name,
            task: tokio::spawn(joined.run()),
        })
    }

    /// Runs until `shutdown` is cancelled, then: stops taking deliveries, lets
    /// in-flight handlers finish within [`ServiceConfig::shutdown_grace`] and
    /// settles them, gives back deliveries that had not started, and leaves
    /// the consumer group.
    pub async fn run_until<B: Bus>(self, bus: &B, shutdown: CancellationToken) -> Result<()> {
        self.join(bus, shutdown).await?.run().await
    }

    /// Builds the middleware stacks and joins the consumer group.
    async fn join<B: Bus>(self, bus: &B, shutdown: CancellationToken) -> Result<Joined<B>> {
        if self.routes.is_empty() {
            return Err(Error::NoHandlers {
                service: self.name.to_string(),
            });
        }
        let metrics = self
            .metrics
            .clone()
            .unwrap_or_else(|| Metrics::global().clone());
        let group = self
            .config
            .group
            .clone()
            .unwrap_or_else(|| self.name.to_string());
        let shared = Arc::new(ServiceShared {
            name: self.name.clone(),
            codecs: self.codecs.clone(),
            limits: self.config.limits,
        });
        let retry = Arc::new(self.retry.clone());
        let mut routes = Routes::new();
        let mut topics: Vec<String> = Vec::new();
        for r in self.routes {
            let route_metrics = metrics.route(&self.name, &r.topic, &r.event_type);
            let mut svc = (r.handler)(self.timeout);
            for layer in self.layers.iter().rev() {
                svc = layer(svc);
            }
            routes.push((
                r.event_type.clone(),
                WorkerRoute {
                    stack: svc,
                    metrics: route_metrics,
                },
            ));
            if !topics.iter().any(|t| *t == *r.topic) {
                topics.push(r.topic.to_string());
            }
        }
        let options = SubscribeOptions {
            group: group.clone(),
            topics,
            start: self.config.start,
        };
        let sub = bus
            .subscribe(options)
            .await
            .map_err(|source| Error::Subscribe {
                service: self.name.to_string(),
                group: group.clone(),
                source: Box::new(source),
            })?;
        tracing::info!(service = %self.name, group, "service started");
        let runtime = Arc::new(Runtime {
            bus: bus.clone(),
            in_flight: metrics.in_flight(&self.name),
            shared,
            group,
            idempotency: self.idempotency,
            retry,
            published: PublishedCounters::new(self.name.clone(), metrics.clone()),
            metrics,
            receipts: self.config.receipts.clone().map(Name::from),
            dead_letter_topic: self.config.dead_letter_topic.clone(),
            dead_letter_topics: Mutex::default(),
            shutdown: shutdown.clone(),
            stopping: AtomicBool::new(false),
            concurrency: self.config.partition_concurrency.max(1),
        });
        Ok(Joined {
            sub,
            runtime,
            routes,
            partition_queue: self.config.partition_queue.max(1),
            shutdown_grace: self.config.shutdown_grace,
        })
    }
}

/// A service that has joined its consumer group and is ready to run.
struct Joined<B: Bus> {
    sub: B::Subscription,
    runtime: Arc<Runtime<B>>,
    routes: Routes,
    partition_queue: usize,
    shutdown_grace: Duration,
}

impl<B: Bus> Joined<B> {
    async fn run(self) -> Result<()> {
        let Joined {
            mut sub,
            runtime,
            routes,
            partition_queue,
            shutdown_grace,
        } = self;
        let shutdown = runtime.shutdown.clone();
        let mut workers = Workers::new(runtime.clone(), routes, partition_queue);
        // Mirrors the token in a flag that costs one load to read (reading the
        // token takes a lock), for the checks made per delivery.
        let _watcher = {
            let runtime = runtime.clone();
            AbortOnDrop(tokio::spawn(async move {
                runtime.shutdown.cancelled().await;
                runtime.stopping.store(true, Ordering::Release);
            }))
        };
        // One wait for the whole loop: registered once, not per delivery.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        // A run never needs more room than a worker's queue has.
        let max_run = BATCH.min(partition_queue);
        // Deliveries come in batches of those ready at once.
        let mut batch = Vec::with_capacity(BATCH);
        'consume: loop {
            if runtime.stopping() {
                break;
            }
            // The next deliveries first: the token is only polled (a lock, and
            // another for its waiter) when there are none to take. While
            // deliveries keep coming, the flag above ends the loop.
            let open = tokio::select! {
                biased;
                open = sub.next_batch(&mut batch, BATCH) => open,
                _ = &mut cancelled => break,
            };
            if !open {
                break;
            }
            // Consecutive deliveries of one partition go to its worker as one
            // run: one hand-over per run, not per delivery. Leaving early
            // drops the rest, not started: given back to the bus.
            let mut run = Run::new();
            for next in batch.drain(..) {
                let delivery = match next {
                    Ok(d) => d,
                    Err(e) => {
                        runtime.metrics.receive_error(&runtime.shared.name);
                        tracing::warn!(service = %runtime.shared.name, error = %e, "receiving failed");
                        continue;
                    }
                };
                let joins = run.first().is_some_and(|first| {
                    first.partition() == delivery.partition()
                        && identity::same(&first.envelope().topic, &delivery.envelope().topic)
                });
                if !run.is_empty() && (!joins || run.len() >= max_run) {
                    let full = std::mem::take(&mut run);
                    if !workers.hand_over(full, cancelled.as_mut()).await {
                        break 'consume;
                    }
                }
                run.push(delivery);
            }
            if !run.is_empty() && !workers.hand_over(run, cancelled.as_mut()).await {
                break 'consume;
            }
        }
        drop(batch);

        // Shutdown: no new deliveries; workers finish what they started (and,
        // when the subscription ended without a shutdown, what they were given).
        if shutdown.is_cancelled() {
            runtime.stopping.store(true, Ordering::Release);
        }
        // Every sender gone: each worker ends once its queue is empty.
        let mut tasks = workers.close();
        let grace = shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            while let Some(r) = tasks.join_next().await {
                if let Err(e) = r
                    && e.is_panic()
                {
                    tracing::error!(service = %runtime.shared.name, "a partition worker panicked");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                service = %runtime.shared.name, grace = ?grace,
                "handlers still running after the shutdown grace period were abandoned; their events will be delivered again"
            );
            tasks.shutdown().await;
        }
        let closed = sub.close().await;
        tracing::info!(service = %runtime.shared.name, "service stopped");
        closed.map_err(|source| Error::Close {
            service: runtime.shared.name.to_string(),
            source: Box::new(source),
        })
    }
}

/// A running service, from [`Service::start`]. Await it to wait until the
/// service has shut down (after its shutdown token was cancelled).
#[derive(Debug)]
pub struct ServiceHandle {
    name: String,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl ServiceHandle {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the service has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl std::future::Future for ServiceHandle {
    type Output = Result<()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        match std::pin::Pin::new(&mut self.task).poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Ok(r)) => std::task::Poll::Ready(r),
            std::task::Poll::Ready(Err(e)) if e.is_panic() => {
                std::panic::resume_unwind(e.into_panic())
            }
            std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(Err(Error::Aborted {
                service: self.name.clone(),
            })),
        }
    }
}

/// A service's routes by event type. A handful, so a list: names are
/// compared by address first, with no hashing per delivery.
type Routes = Vec<(Name, WorkerRoute)>;

/// The position of the route of `event_type`.
fn route_index(routes: &Routes, event_type: &Name) -> Option<usize> {
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

#[derive(Clone)]
struct WorkerRoute {
    stack: StackService,
    metrics: RouteMetrics,
}

struct Runtime<B> {
    bus: B,
    shared: Arc<ServiceShared>,
    group: String,
    idempotency: Idempotency,
    retry: Arc<Retry>,
    metrics: Metrics,
    published: PublishedCounters,
    in_flight: prometheus::IntGauge,
    receipts: Option<Name>,
    dead_letter_topic: DeadLetterNaming,
    /// The dead-letter topic of each source topic, named once: one name per
    /// topic, not one per dead letter (the bus caches topics by name).
    dead_letter_topics: Mutex<HashMap<Name, Name>>,
    shutdown: CancellationToken,
    /// Set once `shutdown` is cancelled (by the watcher, or by whoever reads
    /// the token first).
    stopping: AtomicBool,
    concurrency: usize,
}

/// How one delivery was settled.
struct Settled {
    outcome: Outcome,
    attempts: u32,
    reason: Option<String>,
    emitted: Vec<EventId>,
}

impl Settled {
    fn new(outcome: Outcome, attempts: u32, reason: Option<String>) -> Self {
        Settled {
            outcome,
            attempts,
            reason,
            emitted: Vec::new(),
        }
    }
}

impl<B: Bus> Runtime<B> {
    /// Whether the service is shutting down: deliveries not started yet are
    /// given back. Reads the flag the watcher sets.
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// [`stopping`](Self::stopping), reading the token itself (a lock): the
    /// watcher that sets the flag may not have run yet.
    fn stop_requested(&self) -> bool {
        if self.stopping() {
            return true;
        }
        let cancelled = self.shutdown.is_cancelled();
        if cancelled {
            self.stopping.store(true, Ordering::Release);
        }
        cancelled
    }

    /// Handles one partition's deliveries, which come in runs on `rx`; each
    /// run taken off the queue gives its room back to `room`.
    async fn worker(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Run>,
        room: Arc<Semaphore>,
        mut routes: Routes,
    ) {
        let mut ignored: HashMap<Name, prometheus::IntCounter> = HashMap::default();
        if self.concurrency <= 1 {
            let mut tallies: Vec<RouteTally> = routes
                .iter()
                .map(|(_, r)| RouteTally::new(&r.metrics))
                .collect();
            // One run in hand at a time. Receiving takes tokio's task budget,
            // so a worker whose queue never empties still yields.
            while let Some(run) = rx.recv().await {
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
                            let handling =
                                std::pin::pin!(self.process(d, &mut routes[i].1, started));
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
            return;
        }
        let mut running = FuturesUnordered::new();
        // Received, not started yet: the rest of the last run.
        let mut received = Run::new().into_iter();
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
                    None => self.ignore(d, &mut ignored).await,
                }
            }
            tokio::select! {
                // Below the limit, everything received has started.
                run = rx.recv(), if running.len() < self.concurrency => {
                    let Some(run) = run else { break };
                    room.add_permits(run.len());
                    received = run.into_iter();
                }
                Some(()) = running.next(), if !running.is_empty() => {}
            }
        }
        while running.next().await.is_some() {}
    }

    /// A delivery the service does not route: acked, counted, and with
    /// receipts on recorded with the outcome `ignored`, so that an event
    /// which reached the service and was passed over can be told from one
    /// that never arrived.
    async fn ignore(&self, d: Delivery, counters: &mut HashMap<Name, prometheus::IntCounter>) {
        let started = Timestamp::now();
        let env = d.envelope().clone();
        let (partition, offset) = (d.partition(), d.offset());
        counters
            .entry(env.event_type.clone())
            .or_insert_with(|| {
                self.metrics
                    .ignored(&self.shared.name, &env.topic, &env.event_type)
            })
            .inc();
        d.ack();
        let Some(topic) = &self.receipts else { return };
        let receipt = Receipt {
            service: self.shared.name.clone(),
            event_id: env.id.clone(),
            event_type: env.event_type.clone(),
            correlation_id: env.correlation_id.clone(),
            topic: env.topic.clone(),
            partition,
            offset,
            outcome: Outcome::Ignored,
            attempts: 0,
            reason: Some(format!("no handler for event type '{}'", env.event_type)),
            started,
            duration_us: 0,
            emitted: Vec::new(),
        };
        let id = EventId::generate(started);
        let envelope = receipt.to_envelope_with_id(id, topic.clone(), &env);
        if let Err(e) = self.bus.publish(envelope).await {
            self.published.failed(topic);
            tracing::warn!(service = %self.shared.name, error = %e, "publishing a receipt failed");
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
        }
    }

    /// Handles one delivery inside its spans (see [`handle`](Self::handle)).
    ///
    /// Not an `async fn`: an async fn's future holds the futures it awaits,
    /// and each awaited future is copied whole when it starts, so every level
    /// of nesting adds to what each delivery copies. This returns the
    /// handling's future itself, boxed only when spans are recorded.
    fn process<'a>(
        &'a self,
        d: Delivery,
        route: &'a mut WorkerRoute,
        started: Timestamp,
    ) -> impl Future<Output = (Observation, Option<Timestamp>)> + Send + 'a {
        let span = HandleSpan::start(
            d.envelope(),
            &self.shared.name,
            &self.group,
            d.partition(),
            d.offset(),
        );
        if span.is_quiet() {
            Either::Left(self.handle(d, route, span, started))
        } else {
            let spans = span.clone();
            Either::Right(Box::pin(
                spans.instrument(self.handle(d, route, span, started)),
            ))
        }
    }

    /// The one place where a delivery's outcome is decided. See [`Service`].
    ///
    /// One function from start to settlement, for the reason given at
    /// [`process`](Self::process); the paths off the common one (dead-letters,
    /// retries, several emitted events) are boxed, so their futures take no
    /// room in this one.
    ///
    /// `started` is a clock reading taken just before. Returns what the
    /// handling measured, for the caller to record, and the reading that
    /// ended it when nothing followed that reading (the next handling may
    /// start there); with receipts on, publishing the receipt follows it.
    async fn handle(
        &self,
        d: Delivery,
        route: &mut WorkerRoute,
        span: HandleSpan,
        started: Timestamp,
    ) -> (Observation, Option<Timestamp>) {
        let env = d.envelope().clone();
        let (partition, offset) = (d.partition(), d.offset());
        let name = &self.shared.name;
        let refused = if let Some(problem) = env.headers.get_str(MALFORMED_HEADER) {
            // The backend could only partly read the record: no handler can
            // be trusted with it.
            Some(format!("malformed record: {problem}"))
        } else {
            // Too large to trust a handler with (its producer ignored the limits).
            self.shared
                .limits
                .violation(&env)
                .map(|problem| format!("refused: {problem}"))
        };
        let settled = match refused {
            Some(reason) => Box::pin(self.dead_letter(d, &env, route, reason, 0)).await,
            None if self.idempotency.contains(name, &env.id).await => {
                d.ack();
                Settled::new(Outcome::Duplicate, 0, None)
            }
            None => match self.attempts(&env, route).await {
                Ok(handled) => {
                    let attempts = handled.attempts;
                    let published = if handled.emitted.len() <= 1 {
                        match handled.emitted.into_iter().next() {
                            // The ids are for the receipt.
                            Some(e) => self.publish_one(e, &span).await.map(|id| {
                                if self.receipts.is_some() {
                                    vec![id]
                                } else {
                                    Vec::new()
                                }
                            }),
                            None => Ok(Vec::new()),
                        }
                    } else {
                        Box::pin(self.publish_all(handled.emitted, &span)).await
                    };
                    match published {
                        Ok(ids) => {
                            d.ack();
                            self.idempotency.insert(name, &env.id).await;
                            let mut settled = Settled::new(Outcome::Acked, attempts, None);
                            settled.emitted = ids;
                            settled
                        }
                        // Refused (too large for the backend, say): the
                        // next delivery would emit the same, forever.
                        Err(e) if is_refused(&e) => {
                            let reason = format!("publishing the handler's events failed: {e}");
                            Box::pin(self.dead_letter(d, &env, route, reason, attempts)).await
                        }
                        Err(e) => {
                            d.redeliver();
                            let reason = format!("publishing the handler's events failed: {e}");
                            Settled::new(Outcome::Redelivered, attempts, Some(reason))
                        }
                    }
                }
                Err(failure) if failure.kind == FailureKind::Interrupted => {
                    d.redeliver();
                    let reason = format!("shutdown during retries: {}", failure.reason());
                    Settled::new(Outcome::Redelivered, failure.attempts.max(1), Some(reason))
                }
                Err(failure) => {
                    let (reason, attempts) = (failure.reason(), failure.attempts.max(1));
                    Box::pin(self.dead_letter(d, &env, route, reason, attempts)).await
                }
            },
        };
        let ended = Timestamp::now();
        let elapsed_us = ended.micros_since(started).max(0) as u64;
        let observation = Observation {
            outcome: settled.outcome,
            queue: started.micros_since(env.time).max(0) as f64 / 1e6,
            duration: elapsed_us as f64 / 1e6,
        };
        span.finish(settled.outcome.as_str(), settled.reason.as_deref());
        if let Some(topic) = &self.receipts {
            let receipt = Receipt {
                service: name.clone(),
                event_id: env.id.clone(),
                event_type: env.event_type.clone(),
                correlation_id: env.correlation_id.clone(),
                topic: env.topic.clone(),
                partition,
                offset,
                outcome: settled.outcome,
                attempts: settled.attempts,
                reason: settled.reason,
                started,
                duration_us: elapsed_us,
                emitted: settled.emitted,
            };
            // Its id from the clock reading just made; only the envelope is
            // kept across the await.
            let id = EventId::generate(ended);
            let envelope = Arc::new(receipt.to_envelope_with_id(id, topic.clone(), &env));
            drop(receipt);
            if let Err(e) = self.bus.publish_shared(envelope).await {
                // Receipts are observability: losing one must not redeliver the event.
                self.published.failed(topic);
                tracing::warn!(service = %name, error = %e, "publishing a receipt failed");
            }
            return (observation, None);
        }
        (observation, Some(ended))
    }

    /// Sends a delivery to its dead-letter topic with `reason`.
    async fn dead_letter(
        &self,
        d: Delivery,
        env: &Arc<Envelope>,
        route: &mut WorkerRoute,
        reason: String,
        attempts: u32,
    ) -> Settled {
        let name = &self.shared.name;
        tracing::warn!(
            service = %name, event_type = %env.event_type, event_id = %env.id,
            correlation_id = %env.correlation_id, reason, "dead-lettering"
        );
        let topic = self
            .dead_letter_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(env.topic.clone())
            .or_insert_with(|| Name::from((self.dead_letter_topic)(&env.topic)))
            .clone();
        let info = DeadLetter {
            topic,
            reason: reason.clone(),
            attempts,
            service: name.clone(),
        };
        // Boxed: the cold path must not grow every delivery's future.
        match Box::pin(self.bus.dead_letter(d, info)).await {
            Ok(()) => {
                route.metrics.dead_lettered.inc();
                Settled {
                    outcome: Outcome::DeadLettered,
                    attempts,
                    reason: Some(reason),
                    emitted: Vec::new(),
                }
            }
            Err(e) => Settled {
                outcome: Outcome::Redelivered,
                attempts,
                reason: Some(format!(
                    "{reason}; publishing to the dead-letter topic failed: {e}"
                )),
                emitted: Vec::new(),
            },
        }
    }

    /// Runs attempts through the middleware stack until one succeeds or the
    /// retry policy gives up. Retries happen in place, so later events of the
    /// partition wait and ordering is kept.
    async fn attempts(
        &self,
        env: &Arc<Envelope>,
        route: &mut WorkerRoute,
    ) -> Result<Handled, Failure> {
        let mut attempt = 1;
        loop {
            let invocation = Invocation {
                envelope: env.clone(),
                attempt,
                shared: self.shared.clone(),
            };
            let result = match route.stack.ready().await {
                Ok(svc) => tower::Service::call(svc, invocation).await,
                Err(e) => Err(e),
            };
            let mut failure = match result {
                Ok(handled) => return Ok(handled),
                Err(e) => Failure::from_box(e),
            };
            failure.attempts = attempt;
            if !self.retry.allows(&failure, attempt) {
                return Err(failure);
            }
            if self.shutdown.is_cancelled() {
                failure.kind = FailureKind::Interrupted;
                return Err(failure);
            }
            tracing::debug!(
                service = %self.shared.name, event_id = %env.id, attempt,
                error = %failure.message, "handler failed; retrying"
            );
            route.metrics.retries.inc();
            let delay = self.retry.delay(attempt);
            // Shutdown cuts the wait short; the next attempt then runs at
            // once, and if it fails too the delivery is given back. Boxed: the
            // wait takes no room in the future of a first attempt.
            Box::pin(async {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.shutdown.cancelled() => {}
                }
            })
            .await;
            attempt += 1;
        }
    }

    /// Publishes one emitted event, in a PRODUCER span, and counts it.
    /// Returns its id.
    async fn publish_one(
        &self,
        mut env: Arc<Envelope>,
        span: &HandleSpan,
    ) -> Result<EventId, choreo_core::Error> {
        let name = &self.shared.name;
        let produce = span.produce(&mut env, name);
        let id = env.id.clone();
        let (topic, event_type) = (env.topic.clone(), env.event_type.clone());
        match self.bus.publish_shared(env).await {
            Ok(()) => {
                produce.end(None);
                self.published.inc(&topic, &event_type);
                Ok(id)
            }
            Err(e) => {
                produce.end(Some(&e.to_string()));
                self.published.failed(&topic);
                Err(e)
            }
        }
    }

    /// Publishes several emitted events at once (a backend that pipelines
    /// sends them together). Returns their ids, or the error that decides the
    /// delivery: a refusal if there is one (the next delivery would meet it
    /// again), saying how many of the others were published; else the first.
    async fn publish_all(
        &self,
        emitted: super::context::Outbox,
        span: &HandleSpan,
    ) -> Result<Vec<EventId>, choreo_core::Error> {
        let n = emitted.len();
        let futures = emitted.into_iter().map(|env| self.publish_one(env, span));
        let mut ids = Vec::with_capacity(n);
        let mut failed: Option<choreo_core::Error> = None;
        for result in futures_util::future::join_all(futures).await {
            match result {
                Ok(id) => ids.push(id),
                Err(e) => {
                    if failed
                        .as_ref()
                        .is_none_or(|f| is_refused(&e) && !is_refused(f))
                    {
                        failed = Some(e);
                    }
                }
            }
        }
        match failed {
            None => Ok(ids),
            Some(choreo_core::Error::Refused {
                event_type,
                topic,
                reason,
            }) if !ids.is_empty() => Err(choreo_core::Error::Refused {
                event_type,
                topic,
                reason: format!(
                    "{reason} ({} of the {n} events emitted with it were published)",
                    ids.len()
                ),
            }),
            Some(e) => Err(e),
        }
    }
}

/// Consecutive deliveries of one partition, handed to its worker at once.
type Run = Vec<Delivery>;

/// The way to one partition worker: its queue of runs, and the room that
/// bounds how many deliveries wait in it (`partition_queue`). The queue
/// itself is unbounded: the room is counted in deliveries, whatever the
/// sizes of the runs.
#[derive(Clone)]
struct WorkerQueue {
    runs: mpsc::UnboundedSender<Run>,
    room: Arc<Semaphore>,
}

/// The partition workers of a consumer loop, by partition, and their tasks.
/// Most runs go to the same worker as the one before: its queue is kept at
/// hand, found without hashing.
struct Workers<B: Bus> {
    runtime: Arc<Runtime<B>>,
    /// What each new worker starts with.
    routes: Routes,
    partition_queue: usize,
    by_partition: HashMap<(Name, u32), WorkerQueue>,
    last: Option<(Name, u32, WorkerQueue)>,
    tasks: JoinSet<()>,
}

impl<B: Bus> Workers<B> {
    fn new(runtime: Arc<Runtime<B>>, routes: Routes, partition_queue: usize) -> Self {
        Workers {
            runtime,
            routes,
            partition_queue,
            by_partition: HashMap::default(),
            last: None,
            tasks: JoinSet::new(),
        }
    }

    /// Starts a partition worker.
    fn start(&mut self) -> WorkerQueue {
        let (runs, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(self.partition_queue));
        let (rt, routes, r) = (self.runtime.clone(), self.routes.clone(), room.clone());
        // In a `handling` scope: what its handlers publish to the in-process
        // bus never waits for room, which they may themselves hold back.
        self.tasks.spawn(crate::memory::handling(async move {
            // However the worker ends (a panic included), its room closes:
            // a sender waiting for room learns the worker is gone.
            let _closed = CloseOnDrop(r.clone());
            rt.worker(rx, r, routes).await
        }));
        WorkerQueue { runs, room }
    }

    /// Hands `run` (not empty) to the worker of its partition, started if
    /// there is none yet: at once when its queue has room for the
    /// run, else once it has. Returns false, dropping the run (not started,
    /// so given back to the bus), if the service is shut down while it waits.
    async fn hand_over(
        &mut self,
        run: Run,
        cancelled: std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
    ) -> bool {
        let first = &run[0];
        let (topic, partition) = (&first.envelope().topic, first.partition());
        let hit =
            matches!(&self.last, Some((t, p, _)) if *p == partition && identity::same(t, topic));
        if !hit {
            let queue = match self.by_partition.get(&(topic.clone(), partition)) {
                Some(q) => q.clone(),
                None => {
                    let q = self.start();
                    self.by_partition
                        .insert((topic.clone(), partition), q.clone());
                    q
                }
            };
            self.last = Some((topic.clone(), partition, queue));
        }
        let queue = &self.last.as_ref().expect("set when missed").2;
        let n = u32::try_from(run.len()).expect("a run is at most a batch");
        // The room taken is given back by the worker when it takes the run;
        // a closed room means the worker is gone.
        let permit = match queue.room.try_acquire_many(n) {
            Err(TryAcquireError::NoPermits) => tokio::select! {
                biased;
                _ = cancelled => return false,
                permit = queue.room.acquire_many(n) => permit.ok(),
            },
            taken => taken.ok(),
        };
        let has_room = permit.map(SemaphorePermit::forget).is_some();
        if !has_room {
            self.stopped(run);
            // Yield: a worker that stops at once, every time (the runtime is
            // shutting down and drops new tasks unpolled), must not make the
            // consumer loop spin without ever letting that runtime drop it.
            tokio::task::yield_now().await;
            return true;
        }
        if let Err(mpsc::error::SendError(run)) = queue.runs.send(run) {
            self.stopped(run);
            tokio::task::yield_now().await;
        }
        true
    }

    /// A partition worker stopped unexpectedly (it panicked): forget it, so
    /// the partition's next delivery starts a new one, and give `run` back to
    /// the bus.
    fn stopped(&mut self, run: Run) {
        let first = &run[0];
        tracing::error!(service = %self.runtime.shared.name, partition = first.partition(), "a partition worker stopped unexpectedly; starting a new one");
        self.last = None;
        self.by_partition
            .remove(&(first.envelope().topic.clone(), first.partition()));
        drop(run);
    }

    /// Drops every queue, so that each worker ends once it has handled what
    /// it was given, and returns their tasks.
    fn close(self) -> JoinSet<()> {
        self.tasks
    }
}

/// Closes a partition worker's room when the worker ends.
struct CloseOnDrop(Arc<Semaphore>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Aborts a task when dropped: the loop that spawned it may itself be dropped
/// before it returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether the backend marked the delivery as only partly readable.
fn is_malformed(d: &Delivery) -> bool {
    d.envelope().headers.get(MALFORMED_HEADER).is_some()
}
