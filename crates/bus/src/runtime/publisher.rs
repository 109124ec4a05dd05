//! `Publisher`: publishing outside a handler, such as the first event of a flow.

use bytes::Bytes;
use choreo_core::{Bus, Codecs, Envelope, Event, EventId, Headers, Limits, Name, Timestamp};

use std::sync::Arc;

use super::metrics::{Metrics, PublishedCounters};
use super::trace::ProduceSpan;
use crate::{Error, Result};

/// Publishes events on behalf of a service outside any handler — typically the
/// first event of a flow (an HTTP request placed an order). Inside handlers use
/// the [`Context`](crate::Context) instead, which links the event to its cause.
///
/// Cheap to clone.
#[derive(Clone)]
pub struct Publisher<B> {
    bus: B,
    source: Name,
    codecs: Codecs,
    /// Published and failed counts for `source`.
    published: Arc<PublishedCounters>,
    limits: Limits,
}

impl<B: Bus> std::fmt::Debug for Publisher<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("source", &self.source)
            .field("backend", &self.bus.backend_name())
            .finish()
    }
}

impl<B: Bus> Publisher<B> {
    /// A publisher for service `source`, with JSON and the default metrics.
    pub fn new(bus: &B, source: impl Into<Name>) -> Self {
        let source = source.into();
        Publisher {
            bus: bus.clone(),
            source: source.clone(),
            codecs: Codecs::json(),
            published: Arc::new(PublishedCounters::new(
                source.clone(),
                Metrics::global().clone(),
            )),
            limits: Limits::default(),
        }
    }

    /// Sets the codecs.
    pub fn codecs(mut self, codecs: Codecs) -> Self {
        self.codecs = codecs;
        self
    }

    /// Sets the size limits (events over them are refused).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the metric families.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.published = Arc::new(PublishedCounters::new(self.source.clone(), metrics));
        self
    }

    /// The bus.
    pub fn bus(&self) -> &B {
        &self.bus
    }

    /// Starts a new flow with `event`: its id becomes the flow's correlation id.
    pub async fn start_flow<E: Event>(&self, event: &E) -> Result<EventId> {
        self.publish_event(event, None).await
    }

    /// Publishes `event` as a consequence of `cause` (same flow), for work done
    /// outside a handler that still belongs to a flow (a callback from a
    /// payment provider, say).
    pub async fn publish_caused_by<E: Event>(
        &self,
        event: &E,
        cause: &Envelope,
    ) -> Result<EventId> {
        self.publish_event(event, Some(cause)).await
    }

    /// Publishes `event`, a flow's first or caused by `cause`; returns its id.
    async fn publish_event<E: Event>(
        &self,
        event: &E,
        cause: Option<&Envelope>,
    ) -> Result<EventId> {
        tokio::task::coop::consume_budget().await;
        let (env, span) = self.share(self.envelope(event, cause)?)?;
        let id = env.id.clone();
        self.send(env, span).await?;
        Ok(id)
    }

    /// The envelope `start_flow` or `publish_caused_by` would publish, without publishing it.
    pub fn envelope<E: Event>(&self, event: &E, cause: Option<&Envelope>) -> Result<Envelope> {
        let data = self
            .codecs
            .encode(event)
            .map_err(|source| Error::Publish { source })?;
        let time = Timestamp::now();
        let id = EventId::generate(time);
        let (correlation_id, causation_id, traceparent, tracestate) = match cause {
            Some(c) => (
                c.correlation_id.clone(),
                Some(c.id.clone()),
                c.traceparent.clone(),
                c.tracestate.clone(),
            ),
            None => (id.clone(), None, None, None),
        };
        let key = match event.key() {
            Some(k) => Bytes::from(k),
            None => correlation_id.to_key(),
        };
        Ok(Envelope {
            id,
            event_type: Name::from_static(E::TYPE),
            source: self.source.clone(),
            topic: Name::from_static(E::TOPIC),
            key: Some(key),
            correlation_id,
            causation_id,
            time,
            traceparent,
            tracestate,
            content_type: self.codecs.content_type(),
            data,
            headers: Headers::new(),
        })
    }

    /// Publishes a ready envelope as is (its source, ids and time are kept),
    /// with a PRODUCER span and the published counter.
    ///
    /// Each publish takes a unit of the task's tokio budget and yields once
    /// the budget is spent, as tokio's own channels do: the in-process bus
    /// accepts an event without waiting while the partition has room, so a
    /// publishing loop would otherwise keep a current-thread runtime from its
    /// services until the partition is full (and the services would then read
    /// thousands of events that have gone cold in the meantime).
    pub async fn publish(&self, env: Envelope) -> Result<()> {
        tokio::task::coop::consume_budget().await;
        let (env, span) = self.share(env)?;
        self.send(env, span).await
    }

    /// Checks `env` against the limits, starts its PRODUCER span and shares
    /// it: the publishing futures then hold a pointer, not the envelope, and
    /// do not copy it along with them.
    fn share(&self, mut env: Envelope) -> Result<(Arc<Envelope>, ProduceSpan)> {
        self.limits
            .check(&env)
            .map_err(|source| Error::Publish { source })?;
        let span = ProduceSpan::root(&mut env, &self.source);
        Ok((Arc::new(env), span))
    }

    /// Publishes a shared envelope and counts it.
    async fn send(&self, env: Arc<Envelope>, span: ProduceSpan) -> Result<()> {
        let (topic, event_type) = (env.topic.clone(), env.event_type.clone());
        match self.bus.publish_shared(env).await {
            Ok(()) => {
                span.end(None);
                self.published.inc(&topic, &event_type);
                Ok(())
            }
            Err(source) => {
                span.end(Some(&source.to_string()));
                self.published.failed(&topic);
                Err(Error::Publish { source })
            }
        }
    }
}
