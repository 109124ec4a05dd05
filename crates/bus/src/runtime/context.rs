//! The handler's context: what it is handling, and how it emits follow-up events.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use choreo_core::{Codecs, Envelope, Event, EventId, Headers, Limits, Name, Result, Timestamp};

/// The events one attempt emitted, shared from the start: publishing them to
/// the in-process bus moves a pointer, not the envelope. Room for one inside:
/// most handlers emit one event, or none.
pub(crate) type Outbox = smallvec::SmallVec<[Arc<Envelope>; 1]>;

/// What every handler of one service shares.
pub(crate) struct ServiceShared {
    pub(crate) name: Name,
    pub(crate) codecs: Codecs,
    pub(crate) limits: Limits,
}

/// Passed to every handler call: the event being handled, and the way to emit
/// follow-up events.
///
/// Events emitted through the context are stamped automatically — `source` is
/// the service, `correlation_id` is inherited from the handled event,
/// `causation_id` is the handled event's id, the key is the flow's correlation
/// id and the trace context continues the handled event's trace — and are
/// **published only if the attempt succeeds**: an attempt that fails and is
/// retried publishes nothing, so retries never duplicate emissions.
///
/// Cheap to clone; clones share the emitted events.
#[derive(Clone)]
pub struct Context {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    shared: Arc<ServiceShared>,
    cause: Arc<Envelope>,
    attempt: u32,
    // std Mutex: never held across an await.
    state: Mutex<EmitState>,
}

/// What emitting changes: the events emitted so far, the flow's key once
/// it has been worked out, and where emissions go when not to the outbox.
#[derive(Default)]
struct EmitState {
    outbox: Outbox,
    flow_key: Option<Bytes>,
    sink: Option<Arc<dyn EmissionSink>>,
}

/// Somewhere else for a handler's emissions to go: while a sink is set on a
/// [`Context`] ([`Context::divert_emissions`]), each event the handler emits
/// is stamped and checked as usual, then handed to the sink **instead of**
/// being kept for the runtime to publish after the attempt succeeds.
///
/// This is the hook a transactional outbox uses (`choreo-postgres` writes the
/// stamped events to an outbox table in the handler's database transaction,
/// and a relay publishes them once committed): the events keep the id,
/// correlation, causation and trace context the context gave them, and the
/// sink decides when they become visible. The runtime neither publishes nor
/// lists diverted events (the handling's receipt names only what it
/// published itself).
pub trait EmissionSink: Send + Sync + 'static {
    /// Takes one stamped event. An error is returned to the handler by
    /// [`Context::emit`] (the event was not taken).
    fn accept(&self, event: Arc<Envelope>) -> Result<()>;
}

impl Context {
    pub(crate) fn new(shared: Arc<ServiceShared>, cause: Arc<Envelope>, attempt: u32) -> Self {
        Context {
            inner: Arc::new(ContextInner {
                shared,
                cause,
                attempt,
                state: Mutex::new(EmitState::default()),
            }),
        }
    }

    /// Emits a follow-up event, published when the handler returns `Ok`.
    /// Returns the new event's id. Fails if the event cannot be encoded or is
    /// over the service's [`Limits`](choreo_core::Limits).
    pub fn emit<E: Event>(&self, event: &E) -> Result<EventId> {
        let data = self.inner.shared.codecs.encode(event)?;
        let key = event.key().map(Bytes::from);
        self.push(
            Name::from_static(E::TYPE),
            Name::from_static(E::TOPIC),
            data,
            key,
        )
    }

    /// Emits a raw payload as an event of type `event_type` on `topic`, stamped
    /// like [`emit`](Context::emit). For payloads the service does not model as
    /// a Rust type (forwarding, adapters). Fails if it is over the service's limits.
    pub fn emit_raw(
        &self,
        event_type: impl Into<Name>,
        topic: impl Into<Name>,
        data: impl Into<Bytes>,
    ) -> Result<EventId> {
        self.push(event_type.into(), topic.into(), data.into(), None)
    }

    /// Stamps an event (keyed with `key`, or the flow's key), checks it
    /// against the limits and adds it to the outbox.
    fn push(
        &self,
        event_type: Name,
        topic: Name,
        data: Bytes,
        key: Option<Bytes>,
    ) -> Result<EventId> {
        let mut state = self.inner.state.lock().unwrap_or_else(|e| e.into_inner());
        let key = match key {
            Some(k) => k,
            None => state
                .flow_key
                .get_or_insert_with(|| self.flow_key())
                .clone(),
        };
        let env = self.stamp(event_type, topic, data, key);
        self.inner.shared.limits.check(&env)?;
        let id = env.id.clone();
        match &state.sink {
            Some(sink) => sink.accept(env)?,
            None => state.outbox.push(env),
        }
        Ok(id)
    }

    /// The envelope of an emitted event, built where it is shared (not built
    /// apart and then moved there).
    fn stamp(&self, event_type: Name, topic: Name, data: Bytes, key: Bytes) -> Arc<Envelope> {
        let cause = &self.inner.cause;
        let time = Timestamp::now();
        let id = EventId::generate(time);
        Arc::new(Envelope {
            id,
            event_type,
            source: self.inner.shared.name.clone(),
            topic,
            key: Some(key),
            correlation_id: cause.correlation_id.clone(),
            causation_id: Some(cause.id.clone()),
            time,
            // Inherited here; with the `otel` feature the runtime replaces it with
            // the context of the PRODUCER span that publishes the event.
            traceparent: cause.traceparent.clone(),
            tracestate: cause.tracestate.clone(),
            content_type: self.inner.shared.codecs.content_type(),
            data,
            headers: Headers::new(),
        })
    }

    /// The key of the flow: its correlation id, written afresh. The cause's
    /// key usually holds the same bytes, but reading them (to be sure) and
    /// sharing them would touch memory that has gone cold while the cause
    /// waited in its queue; the new key is in the cache already.
    fn flow_key(&self) -> Bytes {
        self.inner.cause.correlation_id.to_key()
    }

    /// The event being handled.
    pub fn event(&self) -> &Envelope {
        &self.inner.cause
    }

    /// The flow (correlation id) of the event being handled.
    pub fn correlation_id(&self) -> &EventId {
        &self.inner.cause.correlation_id
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The service handling the event.
    pub fn service(&self) -> &str {
        &self.inner.shared.name
    }

    /// From now on, hands this attempt's emissions to `sink` instead of
    /// publishing them after the attempt (see [`EmissionSink`]); events
    /// emitted before stay where they are. Returns the sink this replaces, if
    /// any. Clones of the context share the setting; the next attempt gets a
    /// fresh context without a sink.
    pub fn divert_emissions(&self, sink: Arc<dyn EmissionSink>) -> Option<Arc<dyn EmissionSink>> {
        self.lock().sink.replace(sink)
    }

    /// Stops diverting: later emissions are published after the attempt
    /// again. Returns the sink that was set, if any.
    pub fn restore_emissions(&self) -> Option<Arc<dyn EmissionSink>> {
        self.lock().sink.take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EmitState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The events emitted so far in this attempt and kept for the runtime to
    /// publish (not those handed to an [`EmissionSink`]).
    pub fn emitted(&self) -> usize {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .outbox
            .len()
    }

    pub(crate) fn take_outbox(&self) -> Outbox {
        std::mem::take(
            &mut self
                .inner
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .outbox,
        )
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("service", &self.inner.shared.name)
            .field("event", &self.inner.cause.id)
            .field("attempt", &self.inner.attempt)
            .finish()
    }
}
