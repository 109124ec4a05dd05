//! Handlers, the error they return, and what flows through the middleware stack.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use choreo_core::{Envelope, Event};

use super::context::{Context, ServiceShared};

/// The boxed error type that travels through tower middleware.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a handler returns when it fails.
///
/// Any error converts into it with `?` and counts as **transient**: the retry
/// middleware tries again. Return [`HandlerError::permanent`] for an event
/// that can never succeed (a business rule rejects it): it is dead-lettered
/// without further attempts. An event choreo refused
/// ([`Error::Refused`](choreo_core::Error::Refused): over the service's
/// [`Limits`](choreo_core::Limits), or over what the backend takes, such as
/// Kafka's `message.max.bytes`), from [`Context::emit`] or from a
/// [`Publisher`](crate::Publisher) the handler uses, is permanent too when the
/// error converts with `?`, wrapped or not: every attempt would build the same
/// event. (An encode error stays transient: the Avro codec's schema registry
/// may be down.)
pub struct HandlerError {
    permanent: bool,
    source: BoxError,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        HandlerError {
            permanent: false,
            source: source.into(),
        }
    }

    /// A failure that retrying cannot fix: dead-letter at once.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        HandlerError {
            permanent: true,
            source: source.into(),
        }
    }

    /// A transient failure with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        HandlerError::transient(message.to_string())
    }

    /// Whether retrying is pointless.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("permanent", &self.permanent)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&error_chain(&*self.source))
    }
}

impl<E> From<E> for HandlerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    /// Transient, except an event choreo refused to emit or publish
    /// ([`Error::Refused`](choreo_core::Error::Refused)), found anywhere in the
    /// error's chain of sources: the next attempt would build the same event,
    /// so it is permanent.
    fn from(e: E) -> Self {
        let source: BoxError = Box::new(e);
        let permanent = chain(&*source).any(|e| {
            e.downcast_ref::<choreo_core::Error>()
                .is_some_and(is_refused)
        });
        HandlerError { permanent, source }
    }
}

/// Whether choreo refused the event (over the limits, or over what the
/// backend takes): the same event would be refused again.
pub(crate) fn is_refused(e: &choreo_core::Error) -> bool {
    matches!(e, choreo_core::Error::Refused { .. })
}

/// An async function of a typed event and a [`Context`].
///
/// Implemented for every `Fn(E, Context) -> impl Future<Output = Result<(), HandlerError>>`,
/// so plain `async fn`s are handlers:
///
/// ```
/// use choreo_bus::{Context, HandlerError};
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
/// ```
pub trait Handler<E: Event>: Clone + Send + Sync + 'static {
    /// The handler's future.
    type Future: Future<Output = Result<(), HandlerError>> + Send + 'static;

    /// Handles one event.
    fn call(&self, event: E, ctx: Context) -> Self::Future;
}

impl<E, F, Fut> Handler<E> for F
where
    E: Event,
    F: Fn(E, Context) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    type Future = Fut;

    fn call(&self, event: E, ctx: Context) -> Fut {
        self(event, ctx)
    }
}

/// One attempt at handling a delivered event: the request type of the
/// middleware stack (a tower `Service<Invocation>`).
#[derive(Clone)]
pub struct Invocation {
    pub(crate) envelope: Arc<Envelope>,
    pub(crate) attempt: u32,
    pub(crate) shared: Arc<ServiceShared>,
}

impl Invocation {
    /// The event being handled.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The service handling it.
    pub fn service(&self) -> &str {
        &self.shared.name
    }
}

impl fmt::Debug for Invocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invocation")
            .field("service", &self.shared.name)
            .field("event", &self.envelope.id)
            .field("type", &self.envelope.event_type)
            .field("attempt", &self.attempt)
            .finish()
    }
}

/// A successful attempt: the events the handler emitted, not yet published.
#[derive(Debug, Default)]
pub struct Handled {
    pub(crate) emitted: super::context::Outbox,
    pub(crate) attempts: u32,
}

impl Handled {
    /// The events the handler emitted.
    pub fn emitted(&self) -> &[Arc<Envelope>] {
        &self.emitted
    }
}

/// Why an attempt failed, as the runtime sees it after the middleware.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
    pub(crate) attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The handler returned an error (or a layer did, such as a timeout).
    Error,
    /// The handler returned a permanent error.
    Permanent,
    /// The payload did not decode as the handler's type.
    Decode,
    /// The handler panicked.
    Panic,
    /// Shutdown interrupted the retries: give the delivery back.
    Interrupted,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            attempts: 0,
        }
    }

    /// Whether the retry middleware may try again.
    pub(crate) fn retryable(&self) -> bool {
        matches!(self.kind, FailureKind::Error | FailureKind::Panic)
    }

    /// Turns whatever error came out of the stack into a `Failure`.
    pub(crate) fn from_box(e: BoxError) -> Failure {
        match e.downcast::<Failure>() {
            Ok(f) => *f,
            Err(e) => {
                if e.is::<tower::timeout::error::Elapsed>() {
                    Failure::new(FailureKind::Error, "timed out")
                } else {
                    Failure::new(FailureKind::Error, error_chain(&*e))
                }
            }
        }
    }

    /// The dead-letter reason.
    pub(crate) fn reason(&self) -> String {
        let n = self.attempts.max(1);
        let attempts = if n == 1 {
            "1 attempt".to_owned()
        } else {
            format!("{n} attempts")
        };
        match self.kind {
            FailureKind::Decode => self.message.clone(),
            FailureKind::Permanent => format!("permanent error after {attempts}: {}", self.message),
            FailureKind::Panic => format!("handler panicked after {attempts}: {}", self.message),
            FailureKind::Error | FailureKind::Interrupted => {
                format!("handler failed after {attempts}: {}", self.message)
            }
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error, then its sources, in order. Bounded: a chain of sources could
/// loop.
fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source()).take(32)
}

/// An error and its sources, joined with ": ".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    for c in chain(e).skip(1) {
        let text = c.to_string();
        // Many errors (choreo's own among them) already end their message
        // with their source's: said once.
        if s != text && !s.ends_with(&format!(": {text}")) {
            s.push_str(": ");
            s.push_str(&text);
        }
    }
    s
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// The innermost service: decodes the payload, runs the handler with a fresh
/// context, turns a panic into a failure.
pub(crate) struct HandlerService<E, H> {
    handler: H,
    _event: PhantomData<fn() -> E>,
}

impl<E, H: Clone> Clone for HandlerService<E, H> {
    fn clone(&self) -> Self {
        HandlerService {
            handler: self.handler.clone(),
            _event: PhantomData,
        }
    }
}

impl<E: Event, H: Handler<E>> HandlerService<E, H> {
    pub(crate) fn new(handler: H) -> Self {
        HandlerService {
            handler,
            _event: PhantomData,
        }
    }
}

impl<E: Event, H: Handler<E>> tower::Service<Invocation> for HandlerService<E, H> {
    type Response = Handled;
    type Error = BoxError;
    // Not boxed: the stack's type erasure boxes the whole stack's future once.
    type Future = HandlerFuture<H::Future>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inv: Invocation) -> Self::Future {
        let event: E = match inv
            .shared
            .codecs
            .decode(&inv.envelope.content_type, &inv.envelope.data)
        {
            Ok(e) => e,
            Err(e) => {
                return HandlerFuture::failed(Failure::new(FailureKind::Decode, e.to_string()));
            }
        };
        let attempt = inv.attempt;
        let ctx = Context::new(inv.shared, inv.envelope, attempt);
        let handler = &self.handler;
        // A handler that is a plain fn returning a future can panic before the future exists.
        match std::panic::catch_unwind(AssertUnwindSafe(|| handler.call(event, ctx.clone()))) {
            Ok(fut) => HandlerFuture::Running {
                fut,
                ctx: Some(ctx),
                attempt,
            },
            Err(p) => HandlerFuture::failed(Failure::new(FailureKind::Panic, panic_message(&*p))),
        }
    }
}

/// The innermost service of a raw-envelope handler ([`Service::on_envelope`](crate::Service::on_envelope)).
pub(crate) struct EnvelopeHandlerService<H> {
    handler: H,
}

impl<H: Clone> Clone for EnvelopeHandlerService<H> {
    fn clone(&self) -> Self {
        EnvelopeHandlerService {
            handler: self.handler.clone(),
        }
    }
}

impl<H> EnvelopeHandlerService<H> {
    pub(crate) fn new(handler: H) -> Self {
        EnvelopeHandlerService { handler }
    }
}

impl<H, Fut> tower::Service<Invocation> for EnvelopeHandlerService<H>
where
    H: Fn(Arc<Envelope>, Context) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    type Response = Handled;
    type Error = BoxError;
    type Future = HandlerFuture<Fut>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inv: Invocation) -> Self::Future {
        let attempt = inv.attempt;
        let envelope = inv.envelope.clone();
        let ctx = Context::new(inv.shared, inv.envelope, attempt);
        let handler = &self.handler;
        match std::panic::catch_unwind(AssertUnwindSafe(|| handler(envelope, ctx.clone()))) {
            Ok(fut) => HandlerFuture::Running {
                fut,
                ctx: Some(ctx),
                attempt,
            },
            Err(p) => HandlerFuture::failed(Failure::new(FailureKind::Panic, panic_message(&*p))),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of one handler attempt: polls the handler with panics
    /// caught, then collects what it emitted.
    #[project = HandlerFutureProj]
    pub(crate) enum HandlerFuture<F> {
        /// Failed before the handler ran (decode error, panic while creating the future).
        Done { result: Option<Result<Handled, BoxError>> },
        /// The handler is running.
        Running { #[pin] fut: F, ctx: Option<Context>, attempt: u32 },
    }
}

impl<F> HandlerFuture<F> {
    fn failed(f: Failure) -> Self {
        HandlerFuture::Done {
            result: Some(Err(Box::new(f))),
        }
    }
}

impl<F: Future<Output = Result<(), HandlerError>>> Future for HandlerFuture<F> {
    type Output = Result<Handled, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project() {
            HandlerFutureProj::Done { result } => Poll::Ready(
                result
                    .take()
                    .unwrap_or_else(|| Err("handler future polled after completion".into())),
            ),
            HandlerFutureProj::Running { fut, ctx, attempt } => {
                let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(Ok(()))) => {
                        let emitted = ctx.take().map(|c| c.take_outbox()).unwrap_or_default();
                        return Poll::Ready(Ok(Handled {
                            emitted,
                            attempts: *attempt,
                        }));
                    }
                    Ok(Poll::Ready(Err(e))) => {
                        let kind = if e.permanent {
                            FailureKind::Permanent
                        } else {
                            FailureKind::Error
                        };
                        Failure::new(kind, e.to_string())
                    }
                    Err(p) => Failure::new(FailureKind::Panic, panic_message(&*p)),
                };
                ctx.take();
                Poll::Ready(Err(Box::new(outcome)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapping(&'static str, Option<std::io::Error>);

    impl fmt::Display for Wrapping {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_ref().map(|e| e as _)
        }
    }

    #[test]
    fn a_chain_says_a_source_once_but_never_drops_one() {
        let repeated = Wrapping(
            "binding failed: port taken",
            Some(std::io::Error::other("port taken")),
        );
        assert_eq!(error_chain(&repeated), "binding failed: port taken");
        // Ends with the source's text, but not as its own part.
        let distinct = Wrapping("listening on port 80", Some(std::io::Error::other("0")));
        assert_eq!(error_chain(&distinct), "listening on port 80: 0");
    }

    #[test]
    fn only_a_refused_emission_converts_into_a_permanent_error() {
        let refused = choreo_core::Error::Refused {
            event_type: "Scan".into(),
            topic: "scans".into(),
            reason: "payload of 100 bytes is over the limit of 64 bytes".into(),
        };
        assert!(HandlerError::from(refused).is_permanent());
        // The Avro codec reports a schema registry it cannot reach this way.
        let encode = choreo_core::Error::Encode {
            event_type: "Scan".into(),
            content_type: "application/avro".into(),
            reason: "registry unreachable".into(),
        };
        assert!(!HandlerError::from(encode).is_permanent());
        assert!(!HandlerError::from(std::io::Error::other("card declined")).is_permanent());
        // Wrapped, as a Publisher used in a handler returns it.
        let wrapped = crate::Error::Publish {
            source: choreo_core::Error::Refused {
                event_type: "Scan".into(),
                topic: "scans".into(),
                reason: "too large".into(),
            },
        };
        let wrapped = HandlerError::from(wrapped);
        assert!(wrapped.is_permanent());
        assert_eq!(
            wrapped.to_string(),
            "publishing failed: event 'Scan' on 'scans' is refused: too large",
            "the source's message, which the wrapper's repeats, is said once"
        );
    }
}
