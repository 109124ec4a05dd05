//! `Service`: the builder of a service — its name, handlers, middleware and
//! how it consumes — and the calls that run it against any [`Bus`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use choreo_core::{
    Bus, Codecs, Envelope, Event, Limits, Name, RECEIPTS_TOPIC, StartFrom, dead_letter_topic,
};
use tokio_util::sync::CancellationToken;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};

use super::context::Context;
use super::handler::{
    BoxError, EnvelopeHandlerService, Handled, Handler, HandlerError, HandlerService, Invocation,
};
use super::idempotency::Idempotency;
use super::metrics::Metrics;
use super::retry::Retry;
use super::running::ServiceHandle;
use super::timeout::AttemptTimeout;
use crate::Result;

/// The type-erased middleware stack of one handler.
pub type StackService = BoxCloneService<Invocation, Handled, BoxError>;

pub(super) type LayerFn = Arc<dyn Fn(StackService) -> StackService + Send + Sync>;

/// Builds a handler's stack with the service's timeout, once the service is
/// configured: the handler and the timeout ([`AttemptTimeout`]) are erased together, so an
/// attempt allocates one boxed future, not one per layer.
pub(super) type StackBuilder = Box<dyn FnOnce(Option<Duration>) -> StackService + Send + Sync>;

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
        Some(t) => BoxCloneService::new(AttemptTimeout::new(handler, t)),
        None => BoxCloneService::new(handler),
    })
}

/// Names the dead-letter topic of a source topic.
pub(super) type DeadLetterNaming = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// How a service consumes: the values its setters set (documented there),
/// kept together.
#[derive(Clone)]
pub(super) struct Consuming {
    pub(super) group: Option<String>,
    pub(super) start: StartFrom,
    pub(super) partition_concurrency: usize,
    pub(super) partition_queue: usize,
    pub(super) shutdown_grace: Duration,
    pub(super) receipts: Option<String>,
    pub(super) dead_letter_topic: DeadLetterNaming,
    pub(super) limits: Limits,
}

impl Default for Consuming {
    fn default() -> Self {
        Consuming {
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

impl fmt::Debug for Consuming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consuming")
            .field("group", &self.group)
            .field("start", &self.start)
            .field("partition_concurrency", &self.partition_concurrency)
            .field("partition_queue", &self.partition_queue)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("receipts", &self.receipts)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

pub(super) struct RouteSpec {
    pub(super) event_type: Name,
    pub(super) topic: Name,
    pub(super) handler: StackBuilder,
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
/// exactly one [`Outcome`](choreo_core::Outcome), decided in one place:
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
    pub(super) name: Name,
    pub(super) routes: Vec<RouteSpec>,
    pub(super) config: Consuming,
    pub(super) retry: Retry,
    pub(super) timeout: Option<Duration>,
    pub(super) idempotency: Idempotency,
    pub(super) layers: Vec<LayerFn>,
    pub(super) codecs: Codecs,
    pub(super) metrics: Option<Metrics>,
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
            config: Consuming::default(),
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

    /// Sets the retry policy. Default [`Retry::default`]: 5 attempts, the
    /// first wait 100 ms.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the timeout of each attempt, measured from the attempt's call as
    /// tower's `Timeout` does (and failing with its `Elapsed` error); `None`
    /// for none. Default 30 s.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into();
        self
    }

    /// Sets how deliveries are deduplicated. Default
    /// [`Idempotency::default`]: the ids of the last 100 000 events handled,
    /// in memory.
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

    /// Sets the codecs. Default: JSON.
    pub fn codecs(mut self, codecs: Codecs) -> Self {
        self.codecs = codecs;
        self
    }

    /// Uses these metric families. Default: the ones on Prometheus' default
    /// registry ([`Metrics::global`]).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sets the consumer group. Default: the service name, so replicas of a
    /// service split the partitions and different services each see every
    /// event.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.config.group = Some(group.into());
        self
    }

    /// Sets where a new consumer group starts. Default
    /// [`StartFrom::Earliest`].
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.config.start = start;
        self
    }

    /// Sets how many deliveries of one partition are handled at once.
    /// Default 1: in order. Above 1, a partition's events may be handled out
    /// of order.
    pub fn partition_concurrency(mut self, n: usize) -> Self {
        self.config.partition_concurrency = n.max(1);
        self
    }

    /// Sets how many deliveries are queued per partition ahead of its
    /// handler. Default 256. Bounded: a slow handler must not make the
    /// consumer buffer without limit.
    pub fn partition_queue(mut self, n: usize) -> Self {
        self.config.partition_queue = n.max(1);
        self
    }

    /// Sets how long shutdown waits for in-flight handlers. Default 30 s.
    /// Handlers still running after it are abandoned; their deliveries are
    /// not settled, so the bus delivers them again.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// Sets the topic receipts are published to, or `None` to switch
    /// receipts off. Default `choreo.receipts`.
    pub fn receipts(mut self, topic: Option<&str>) -> Self {
        self.config.receipts = topic.map(str::to_owned);
        self
    }

    /// Sets how the dead-letter topic of each source topic is named.
    /// Default `<topic>.dlq` ([`dead_letter_topic`]).
    pub fn dead_letter_topic(
        mut self,
        naming: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> Self {
        self.config.dead_letter_topic = Arc::new(naming);
        self
    }

    /// Sets the size limits: events over them are refused when emitted and
    /// dead-lettered when received. Default [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.config.limits = limits;
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
    /// in-flight handlers finish within [`shutdown_grace`](Self::shutdown_grace) and
    /// settles them, gives back deliveries that had not started, and leaves
    /// the consumer group.
    pub async fn run_until<B: Bus>(self, bus: &B, shutdown: CancellationToken) -> Result<()> {
        self.join(bus, shutdown).await?.run().await
    }
}
